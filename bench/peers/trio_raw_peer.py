"""Hand-written Trio length-prefix peer of bench/compare.py: the ceiling for any Trio framework.

    trio_raw_peer.py serve [--mode task|inline]
    trio_raw_peer.py client HOST:PORT w1|w2|w3|w4 [...]

The wire is the least an RPC over one connection needs: every frame is a 4-byte payload length,
a 4-byte request id (both big-endian) and a CBOR payload.  A request's payload is
``[method, argument]``; a unary reply is one frame with the same id; a stream is one frame per
item and then an empty frame (a CBOR item is never empty).  Nothing else: no preface, no
deadlines, no cancellation, no flow control beyond TCP's, no error statuses, no limits.

Both sides have one reader task (parse every complete frame of each chunk read, dispatch by id)
and one coalescing writer task (frames are appended to one buffer; the writer sends whatever has
accumulated in one ``send_all``; a streaming handler waits while more than 64 KiB are queued).

Server modes:

- ``task`` (the default): every request gets its own task, as any real framework must do (a
  handler may block); this is the realistic ceiling.
- ``inline``: unary handlers run inside the reader loop, no task at all (streams still get one):
  the absolute floor of per-call cost, which no framework with concurrent handlers can reach.
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections import deque

import trio

import _common

HEADER = struct.Struct(">II")
HEADER_SIZE = HEADER.size
READ_SIZE = 65536
#: A streaming sender waits while more than this is queued for the writer.
HIGH_WATER = 65536
_dumps = _common.cbor_dumps
_loads = _common.cbor_loads
_pack = HEADER.pack
_unpack_from = HEADER.unpack_from


class FramedConnection:
    """A stream plus the coalescing writer and the frame parser both sides share."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.out = bytearray()
        self.wake = trio.Event()
        self.space = trio.Event()

    def send(self, rid: int, payload: bytes) -> None:
        out = self.out
        out += _pack(len(payload), rid)
        out += payload
        self.wake.set()

    async def wait_space(self) -> None:
        while len(self.out) > HIGH_WATER:
            await self.space.wait()

    async def writer(self) -> None:
        stream = self.stream
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            data = self.out
            if data:
                self.out = bytearray()
                await stream.send_all(data)
            self.space.set()
            self.space = trio.Event()

    async def frames(self):
        """Yield lists of (rid, payload) of the complete frames of each read, until EOF."""
        stream = self.stream
        buffer = bytearray()
        want = READ_SIZE
        while True:
            data = await stream.receive_some(want)
            if not data:
                return
            buffer += data
            frames = []
            pos = 0
            size = len(buffer)
            want = READ_SIZE
            while size - pos >= HEADER_SIZE:
                length, rid = _unpack_from(buffer, pos)
                end = pos + HEADER_SIZE + length
                if end > size:
                    want = max(READ_SIZE, end - size)  # the rest of a large frame in one read
                    break
                frames.append((rid, buffer[pos + HEADER_SIZE : end]))
                pos = end
            if pos:
                del buffer[:pos]
            if frames:
                yield frames


# ------------------------------------------------------------------------------------- server


async def _stream_count(conn: FramedConnection, rid: int, n: int) -> None:
    send = conn.send
    for i in range(n):
        send(rid, _dumps({"i": i}))
        if len(conn.out) > HIGH_WATER:
            await conn.wait_space()
    send(rid, b"")


async def _unary_task(conn: FramedConnection, rid: int, method: str, argument) -> None:
    if method == "greet":
        result = _common.greet(argument)
    else:
        result = argument
    conn.send(rid, _dumps(result))


async def serve_connection(stream: trio.SocketStream, inline: bool) -> None:
    conn = FramedConnection(stream)
    send = conn.send
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.writer)
        start = nursery.start_soon
        async for frames in conn.frames():
            for rid, payload in frames:
                method, argument = _loads(payload)
                if method == "count":
                    start(_stream_count, conn, rid, argument)
                elif not inline:
                    start(_unary_task, conn, rid, method, argument)
                elif method == "greet":
                    send(rid, _dumps(_common.greet(argument)))
                else:
                    send(rid, _dumps(argument))
        nursery.cancel_scope.cancel()


async def serve(inline: bool) -> None:
    listeners = await trio.open_tcp_listeners(0, host=_common.HOST)
    host, port = listeners[0].socket.getsockname()[:2]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, lambda s: serve_connection(s, inline), listeners)
        _common.listening(host, port)


# ------------------------------------------------------------------------------------- client


class _Pending:
    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value = None


class _Items:
    """The items of one stream, as the reader delivers them."""

    __slots__ = ("queue", "event", "done")

    def __init__(self) -> None:
        self.queue: deque = deque()
        self.event = trio.Event()
        self.done = False

    async def __aiter__(self):
        queue = self.queue
        while True:
            while queue:
                yield queue.popleft()
            if self.done:
                return
            await self.event.wait()
            self.event = trio.Event()


class Client:
    def __init__(self, conn: FramedConnection) -> None:
        self.conn = conn
        self.pending: dict[int, object] = {}
        self.next_rid = 1

    async def reader(self) -> None:
        pending = self.pending
        async for frames in self.conn.frames():
            for rid, payload in frames:
                slot = pending.get(rid)
                if type(slot) is _Pending:
                    del pending[rid]
                    slot.value = _loads(payload)
                    slot.event.set()
                elif payload:
                    slot.queue.append(_loads(payload))
                    slot.event.set()
                else:
                    del pending[rid]
                    slot.done = True
                    slot.event.set()

    async def call(self, method: str, argument):
        rid = self.next_rid
        self.next_rid = rid + 1
        slot = self.pending[rid] = _Pending()
        self.conn.send(rid, _dumps([method, argument]))
        await slot.event.wait()
        return slot.value

    async def greet(self, request):
        return await self.call("greet", request)

    async def echo(self, data):
        return await self.call("echo", data)

    def count(self, n: int):
        client = self

        class _Open:
            async def __aenter__(self):
                rid = client.next_rid
                client.next_rid = rid + 1
                items = client.pending[rid] = _Items()
                client.conn.send(rid, _dumps(["count", n]))
                return items

            async def __aexit__(self, *exc_info):
                return False

        return _Open()


async def run_all(functions) -> None:
    async with trio.open_nursery() as nursery:
        for function in functions:
            nursery.start_soon(function)


async def measure(args: argparse.Namespace) -> dict:
    host, port = _common.parse_address(args.address)
    stream = await trio.open_tcp_stream(host, port)
    conn = FramedConnection(stream)
    client = Client(conn)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.writer)
        nursery.start_soon(client.reader)
        result = await _common.drive(args, client, run_all)
        nursery.cancel_scope.cancel()
    await stream.aclose()
    return result


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "serve":
        parser = argparse.ArgumentParser()
        parser.add_argument("--mode", choices=("task", "inline"), default="task")
        args = parser.parse_args(rest)
        trio.run(serve, args.mode == "inline")
        return 0
    return _common.run_client(__doc__.splitlines()[0], rest, lambda args: trio.run(measure, args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
