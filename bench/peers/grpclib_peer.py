"""grpclib (pure-Python gRPC on asyncio and h2) peer of bench/compare.py.

    grpclib_peer.py serve
    grpclib_peer.py client HOST:PORT w1|w2|w3|w4 [...]

No protoc: a small CBOR codec (``grpclib.encoding.base.CodecBase``, content type
``application/grpc+cbor``) on both sides, and a handler object whose ``__mapping__`` gives the
three methods as ``grpclib.const.Handler`` entries.  The client uses grpclib's
``UnaryUnaryMethod`` / ``UnaryStreamMethod`` on one ``Channel``; W2 runs 64 asyncio tasks on it.
grpclib has no message size limit to raise (it accepts any size).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from grpclib.client import Channel, UnaryStreamMethod, UnaryUnaryMethod
from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase
from grpclib.server import Server

import _common


class CBORCodec(CodecBase):
    __content_subtype__ = "cbor"

    def encode(self, message, message_type) -> bytes:
        return _common.cbor_dumps(message)

    def decode(self, data: bytes, message_type):
        return _common.cbor_loads(data)


class Bench:
    async def greet(self, stream) -> None:
        request = await stream.recv_message()
        await stream.send_message(_common.greet(request))

    async def count(self, stream) -> None:
        n = await stream.recv_message()
        for i in range(n):
            await stream.send_message({"i": i})

    async def echo(self, stream) -> None:
        await stream.send_message(await stream.recv_message())

    def __mapping__(self) -> dict:
        return {
            _common.GREET_PATH: Handler(self.greet, Cardinality.UNARY_UNARY, None, None),
            _common.COUNT_PATH: Handler(self.count, Cardinality.UNARY_STREAM, None, None),
            _common.ECHO_PATH: Handler(self.echo, Cardinality.UNARY_UNARY, None, None),
        }


async def serve() -> None:
    server = Server([Bench()], codec=CBORCodec())
    await server.start(_common.HOST, 0)
    port = server._server.sockets[0].getsockname()[1]
    _common.listening(_common.HOST, port)
    await server.wait_closed()


class Ops:
    def __init__(self, channel: Channel) -> None:
        self._greet = UnaryUnaryMethod(channel, _common.GREET_PATH, None, None)
        self._echo = UnaryUnaryMethod(channel, _common.ECHO_PATH, None, None)
        self._count = UnaryStreamMethod(channel, _common.COUNT_PATH, None, None)

    async def greet(self, request):
        return await self._greet(request)

    async def echo(self, data):
        return await self._echo(data)

    @contextlib.asynccontextmanager
    async def count(self, n: int):
        async with self._count.open() as stream:
            await stream.send_message(n, end=True)

            finished = False

            async def items():
                nonlocal finished
                while True:
                    item = await stream.recv_message()
                    if item is None:
                        finished = True
                        return
                    yield item

            yield items()
            if not finished:  # stopped early (the time cap)
                await stream.cancel()


async def run_all(functions) -> None:
    await asyncio.gather(*(function() for function in functions))


async def measure(args: argparse.Namespace) -> dict:
    host, port = _common.parse_address(args.address)
    channel = Channel(host, port, codec=CBORCodec())
    try:
        return await _common.drive(args, Ops(channel), run_all)
    finally:
        channel.close()


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "serve":
        asyncio.run(serve())
        return 0
    return _common.run_client(__doc__.splitlines()[0], rest, lambda args: asyncio.run(measure(args)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
