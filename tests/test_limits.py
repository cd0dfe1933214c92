"""What one peer can make a server hold, and how many calls it runs: the limits of the issue
"No peer can exhaust a server", each shown against a hostile peer that would have grown the
server's memory or task count without bound, for both framers.

- Messages still arriving (split over DATA frames, the last never sent) count against
  ``max_incomplete_bytes`` per connection; the call that goes beyond ends RESOURCE_EXHAUSTED.
- ``max_concurrent_calls`` bounds the calls of the whole server, all connections together.
- A peer that grants huge windows and never reads its socket cannot make a streaming handler
  queue without bound: producers wait for the socket (``SEND_HIGH_WATER``).
"""

from __future__ import annotations

import socket

import cbor2
import pytest
import trio
import trio.testing

import trpc
from trpc import RpcError, Status
from trpc._events import CallCancelled, CallOpened, MessagesReceived
from trpc._transport import SEND_HIGH_WATER
from trpc.wire import Connection, Flags, FrameType

from .helpers import frame, preface, types

MORE = Flags.MORE.value
END_STREAM = Flags.END_STREAM.value
MAX_WINDOW = (1 << 31) - 1


def partial_call(stream_id: int, frames: int, size: int = 16 << 10) -> bytes:
    """HEADERS and ``frames`` DATA frames of ``size`` bytes, each with MORE: a message never
    finished."""
    data = frame(FrameType.HEADERS, 0, stream_id, cbor2.dumps({1: "upload"}))
    return data + frame(FrameType.DATA, MORE, stream_id, bytes(size)) * frames


# ----------------------------------------------------------------------- incomplete messages
def test_messages_never_finished_hold_at_most_the_connection_budget(framer_cls):
    """100 streams each send 48 KiB of a 64 KiB-limit message and never the rest: the server
    holds at most max_incomplete_bytes; the calls beyond end RESOURCE_EXHAUSTED; a complete
    call is still served; what the ended calls held is released."""
    limit = 256 << 10
    server = Connection(
        "server", framer=framer_cls, max_message_size=64 << 10, max_incomplete_bytes=limit, max_frame_size=16 << 10
    )
    server.initiate()
    server.receive_data(preface(max_frame=16 << 10))
    refused = []
    for sid in range(1, 201, 2):
        for event in server.receive_data(partial_call(sid, 3)):
            if isinstance(event, CallCancelled):
                assert event.reason is Status.RESOURCE_EXHAUSTED and "still arriving" in event.message
                refused.append(sid)
        assert server._ledger.incomplete <= limit
    assert len(refused) == 100 - limit // (48 << 10)
    assert server._ledger.incomplete == (limit // (48 << 10)) * (48 << 10)
    # Someone else's complete call is served.
    call = frame(FrameType.HEADERS, 0, 201, cbor2.dumps({1: "greet"}))
    call += frame(FrameType.DATA, END_STREAM, 201, cbor2.dumps([["Ada"]]))
    assert types(server.receive_data(call))[:2] == [CallOpened, MessagesReceived]
    # Cancelling the unfinished calls gives back what they held.
    for sid in range(1, 201, 2):
        if sid not in refused:
            server.receive_data(frame(FrameType.CANCEL, 0, sid, cbor2.dumps({1: 1})))
    assert server._ledger.incomplete == 0


def test_a_message_that_completes_gives_its_bytes_back_to_the_budget(framer_cls):
    server = Connection("server", framer=framer_cls, max_message_size=64 << 10, max_incomplete_bytes=64 << 10,
                        max_frame_size=16 << 10)
    server.initiate()
    server.receive_data(preface(max_frame=16 << 10))
    for sid in range(1, 41, 2):  # 20 messages of 48 KiB, one after the other, all within 64 KiB
        data = partial_call(sid, 2) + frame(FrameType.DATA, END_STREAM, sid, bytes(16 << 10))
        events = server.receive_data(data)
        assert [len(e.payloads[0]) for e in events if isinstance(e, MessagesReceived)] == [48 << 10]
        assert server._ledger.incomplete == 0


def test_max_incomplete_bytes_is_never_below_one_message(framer_cls):
    with pytest.raises(ValueError):
        Connection("server", framer=framer_cls, max_message_size=1 << 20, max_incomplete_bytes=1 << 19)
    conn = Connection("server", framer=framer_cls, max_message_size=64 << 20)
    assert conn.max_incomplete_bytes == 64 << 20


class Uploads(trpc.Service):
    def __init__(self):
        self.release = trio.Event()
        self.running = 0

    @trpc.unary
    async def upload(self, data: bytes) -> int:
        return len(data)

    @trpc.unary
    async def wait(self) -> str:
        self.running += 1
        await self.release.wait()
        return "done"

    @trpc.server_stream
    async def flood(self, size: int):
        self.produced = 0
        item = bytes(size)
        for _ in range(10_000_000):
            self.produced += 1
            yield item

    @trpc.unary
    async def greet(self, name: str) -> str:
        return f"Hello {name}"

    @trpc.client_stream
    async def hoard(self, items) -> int:
        """Reads nothing until released: what the client sends waits in the server."""
        await self.release.wait()
        return sum([len(item) async for item in items])


async def test_a_peer_that_never_finishes_its_messages_is_refused_over_tcp(nursery):
    service = Uploads()
    server = trpc.Server(service, max_message_size=64 << 10, max_incomplete_bytes=256 << 10, max_frame_size=16 << 10)
    address = await nursery.start(server.serve_tcp, 0)
    raw = await trio.open_tcp_stream(*address)
    await raw.send_all(preface(max_frame=16 << 10) + b"".join(partial_call(sid, 3) for sid in range(1, 41, 2)))
    async with trpc.open_client(address) as client:  # someone else is served meanwhile
        assert await client.greet("Ada") == "Hello Ada"
        with trio.fail_after(5):  # until the raw peer's frames are all in
            while max(c.conn.last_stream_id for c in server._connections) < 39:
                await trio.sleep(0.01)
        for connection in server._connections:
            assert connection.conn._ledger.incomplete <= 256 << 10
        with pytest.raises(RpcError) as info:  # the budget is the raw peer's, not this client's
            await client.upload(bytes(100 << 10))
        assert info.value.status is Status.RESOURCE_EXHAUSTED  # over the max message size
        assert await client.upload(bytes(60 << 10)) == 60 << 10
    await raw.aclose()


# ----------------------------------------------------------------------- calls, server-wide
async def test_the_server_runs_at_most_max_concurrent_calls_across_connections(nursery):
    service = Uploads()
    server = trpc.Server(service, max_concurrent_calls=4)
    address = await nursery.start(server.serve_tcp, 0)
    async with trpc.open_client(address) as first, trpc.open_client(address) as second:
        async with trio.open_nursery() as calls:
            for client in (first, first, second, second):
                calls.start_soon(client.wait)
            with trio.fail_after(5):
                while service.running < 4:
                    await trio.sleep(0.001)
            for client in (first, second):
                with pytest.raises(RpcError) as info:
                    await client.greet("x")
                assert info.value.status is Status.RESOURCE_EXHAUSTED
                assert "at most 4 calls" in info.value.message
            service.release.set()
        assert await second.greet("again") == "Hello again"
    assert server._open_calls == 0


async def test_request_messages_waiting_for_handlers_are_bounded_server_wide(nursery):
    service = Uploads()
    server = trpc.Server(service, max_buffered_bytes=1 << 20)
    address = await nursery.start(server.serve_tcp, 0)
    async with trpc.open_client(address) as client:
        async with client.hoard.open() as stream:
            with pytest.raises(RpcError) as info:
                for _ in range(30):  # 3 MiB, within the 2 MiB stream window only in part
                    if not await stream.send(bytes(100_000)):
                        break
                await stream.done_sending()
                await stream.receive_one()
            assert info.value.status is Status.RESOURCE_EXHAUSTED
            assert "unread request messages" in info.value.message
        assert server._buffered == 0
        assert await client.greet("Ada") == "Hello Ada"  # the server carries on
        service.release.set()
        async with client.hoard.open() as stream:  # a handler that reads is never refused
            for _ in range(30):
                assert await stream.send(bytes(100_000))
            await stream.done_sending()
            assert await stream.receive_one() == 3_000_000
    assert server._buffered == 0


@pytest.mark.parametrize("option", ["max_concurrent_calls", "max_buffered_bytes"])
def test_the_server_wide_limits_are_checked(option):
    with pytest.raises(ValueError, match=option):
        trpc.Server(Uploads(), **{option: 0})


# ----------------------------------------------------------------------- a peer that never reads
@pytest.mark.parametrize("size", [100, 10_000])  # the batch path, and messages one by one
async def test_a_peer_that_grants_credit_but_never_reads_cannot_make_the_server_buffer(nursery, size):
    """The raw client announces the largest windows, calls a method that streams without end,
    and never reads its socket: the handler stops producing once SEND_HIGH_WATER bytes wait
    for the socket; the server serves others meanwhile; closing frees the call."""
    service = Uploads()
    server = trpc.Server(service)
    address = await nursery.start(server.serve_tcp, 0)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(address)
    raw = trio.SocketStream(sock)
    call = frame(FrameType.HEADERS, 0, 1, cbor2.dumps({1: "flood"}))
    call += frame(FrameType.DATA, END_STREAM, 1, cbor2.dumps([[size]]))
    await raw.send_all(preface(stream_window=MAX_WINDOW, connection_window=MAX_WINDOW) + call)
    with trio.fail_after(20):
        while not server._connections:
            await trio.sleep(0.01)
    (connection,) = server._connections
    with trio.fail_after(20):  # until the handler has stopped producing
        before = -1
        while getattr(service, "produced", 0) != before:
            before = getattr(service, "produced", 0)
            await trio.sleep(0.2)
    unsent = connection._in_writer + connection.conn.output_size
    assert unsent <= SEND_HIGH_WATER + (1 << 20), unsent
    async with trpc.open_client(address) as client:
        assert await client.greet("Ada") == "Hello Ada"
    await raw.aclose()
    with trio.fail_after(5):
        while server._open_calls:
            await trio.sleep(0.01)


# ----------------------------------------------------------------------- memory back at close
@pytest.fixture
def no_gc():
    """The garbage collector off: what a closed connection held must be freed by reference
    counting alone (no reference cycles), so that it goes back at once, not at some later
    collection."""
    import gc

    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _connections_of(server, count: int) -> list:
    import weakref

    with trio.fail_after(5):
        while len(server._connections) < count:
            await trio.sleep(0.001)
    return [(weakref.ref(c), weakref.ref(c.conn)) for c in server._connections]


async def _all_closed(server) -> None:
    with trio.fail_after(5):
        while server._connections:
            await trio.sleep(0.001)
    await trio.sleep(0.01)  # let the connection's tasks finish


async def test_a_closed_connection_is_freed_without_the_garbage_collector(nursery, no_gc):
    """Each way a connection can end, with calls of every shape and cancels on it first:
    once it is closed, nothing of it stays alive on either side (weak references are dead,
    gc off)."""
    import weakref

    service = Uploads()
    server = trpc.Server(service, max_message_size=64 << 10, max_incomplete_bytes=256 << 10, max_frame_size=16 << 10)
    address = await nursery.start(server.serve_tcp, 0)

    # 1. A client that makes calls of every shape, cancels some, and closes.
    async with trpc.open_client(address) as client:
        refs = await _connections_of(server, 1)
        refs.append((weakref.ref(client._connection), weakref.ref(client._connection.conn)))
        assert await client.greet("Ada") == "Hello Ada"
        async with client.flood(10) as stream:
            await stream.receive()  # then leave: the call is cancelled
        with trio.move_on_after(0.01):
            await client.wait()
        with pytest.raises(RpcError):
            await client.upload(bytes(100 << 10))
    await _all_closed(server)
    del client, stream  # the test's own references
    assert [r() for pair in refs for r in pair] == [None, None, None, None]

    # 2. A hostile peer that never finishes its messages, then closes.
    raw = await trio.open_tcp_stream(*address)
    await raw.send_all(preface(max_frame=16 << 10) + b"".join(partial_call(sid, 3) for sid in range(1, 41, 2)))
    refs = await _connections_of(server, 1)
    await raw.aclose()
    await _all_closed(server)
    assert [r() for pair in refs for r in pair] == [None, None]

    # 3. A peer that breaks the protocol.
    raw = await trio.open_tcp_stream(*address)
    await raw.send_all(preface())  # the server serves a connection once its first bytes arrive
    refs = await _connections_of(server, 1)
    await raw.send_all(frame(0x42, 0, 0))
    await _all_closed(server)
    await raw.aclose()
    assert [r() for pair in refs for r in pair] == [None, None]


async def test_flushing_after_the_writer_has_ended_returns_at_once():
    """Output queued after the writer task was cancelled: flush returns instead of spinning."""
    from trpc._server import _ServerConnection

    server = trpc.Server(Uploads())
    client_stream, server_stream = trio.testing.memory_stream_pair()
    conn = Connection("server")
    connection = _ServerConnection(server, server_stream, conn, "memory")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.writer)
        await trio.sleep(0)
        nursery.cancel_scope.cancel()
    conn.initiate()  # queued, with no writer left to send it
    with trio.fail_after(1):
        await connection.flush()
