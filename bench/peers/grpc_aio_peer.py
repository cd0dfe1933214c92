"""grpc.aio (grpcio's asyncio API) peer of bench/compare.py: the baseline of the ratios.

    grpc_aio_peer.py serve
    grpc_aio_peer.py client HOST:PORT w1|w2|w3|w4 [...]

No protoc: the server registers generic handlers (``grpc.method_handlers_generic_handler``) whose
(de)serializers are the common CBOR codec (``_common.cbor_dumps`` / ``cbor_loads``); the client
makes multi-callables on the channel with the same functions.  Handlers are ``async def`` functions and an async generator.  Both sides
raise the message size limits to 8 MiB.  W2 runs 64 asyncio tasks on one channel.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import grpc

import _common

OPTIONS = [
    ("grpc.max_send_message_length", _common.MAX_MESSAGE),
    ("grpc.max_receive_message_length", _common.MAX_MESSAGE),
]


async def greet(request, context):
    return _common.greet(request)


async def count(n, context):
    for i in range(n):
        yield {"i": i}


async def echo(data, context):
    return data


def handlers() -> grpc.GenericRpcHandler:
    kwargs = dict(request_deserializer=_common.cbor_loads, response_serializer=_common.cbor_dumps)
    return grpc.method_handlers_generic_handler(
        _common.GRPC_SERVICE,
        {
            "Greet": grpc.unary_unary_rpc_method_handler(greet, **kwargs),
            "Count": grpc.unary_stream_rpc_method_handler(count, **kwargs),
            "Echo": grpc.unary_unary_rpc_method_handler(echo, **kwargs),
        },
    )


async def serve() -> None:
    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((handlers(),))
    port = server.add_insecure_port(f"{_common.HOST}:0")
    await server.start()
    _common.listening(_common.HOST, port)
    await server.wait_for_termination()


class Ops:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        kwargs = dict(request_serializer=_common.cbor_dumps, response_deserializer=_common.cbor_loads)
        self.greet = channel.unary_unary(_common.GREET_PATH, **kwargs)
        self.echo = channel.unary_unary(_common.ECHO_PATH, **kwargs)
        self._count = channel.unary_stream(_common.COUNT_PATH, **kwargs)

    @contextlib.asynccontextmanager
    async def count(self, n: int):
        call = self._count(n)
        try:
            yield call
        finally:
            call.cancel()


async def run_all(functions) -> None:
    await asyncio.gather(*(function() for function in functions))


async def measure(args: argparse.Namespace) -> dict:
    async with grpc.aio.insecure_channel(args.address, options=OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        return await _common.drive(args, Ops(channel), run_all)


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "serve":
        asyncio.run(serve())
        return 0
    return _common.run_client(__doc__.splitlines()[0], rest, lambda args: asyncio.run(measure(args)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
