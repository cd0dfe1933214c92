"""trpc's server over its gRPC wire, called by grpc.aio: the ``trpc-grpc`` system of
bench/grpc_wire.py (see _common.py for the commands and workloads).

    trpc_grpc_peer.py serve
    trpc_grpc_peer.py client HOST:PORT w1|w2|w3|w4 [...]

The server is an ordinary ``trpc.Server`` serving a service named like grpc_aio_peer's
(``bench.Bench`` with ``Greet``, ``Count``, ``Echo``); the client is grpc_aio_peer's, whose
requests go as trpc's arguments message ``[[request]]`` (docs/PROTOCOL.md section 14: grpcio
sends ``application/grpc``, which is CBOR for a method with no protobuf mapping).
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import trio

import trpc

import _common
import grpc_aio_peer


class Bench(trpc.Service, name=_common.GRPC_SERVICE):
    @trpc.unary
    async def Greet(self, request):
        return _common.greet(request)

    @trpc.server_stream
    async def Count(self, n):
        for i in range(n):
            yield {"i": i}

    @trpc.unary
    async def Echo(self, data):
        return data


async def serve() -> None:
    server = trpc.Server(Bench(), max_message_size=_common.MAX_MESSAGE)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve_tcp, 0, _common.HOST)
        _common.listening(host, port)


def arguments(request) -> bytes:
    return _common.cbor_dumps([[request]])


class Ops(grpc_aio_peer.Ops):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        kwargs = dict(request_serializer=arguments, response_deserializer=_common.cbor_loads)
        self.greet = channel.unary_unary(_common.GREET_PATH, **kwargs)
        self.echo = channel.unary_unary(_common.ECHO_PATH, **kwargs)
        self._count = channel.unary_stream(_common.COUNT_PATH, **kwargs)


async def measure(args) -> dict:
    async with grpc.aio.insecure_channel(args.address, options=grpc_aio_peer.OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        return await _common.drive(args, Ops(channel), grpc_aio_peer.run_all)


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "serve":
        trio.run(serve)
        return 0
    return _common.run_client(__doc__.splitlines()[0], rest, lambda args: asyncio.run(measure(args)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
