"""trpc peer of bench/compare.py (see _common.py for the commands and workloads).

    trpc_peer.py serve --framer c|python
    trpc_peer.py client HOST:PORT w1|w2|w3|w4 --framer c|python [...]

The service is an ordinary ``trpc.Service``; the client calls it as ``client.greet(request)``,
``client.echo(data)`` and ``async with client.count(n) as items``.
"""

from __future__ import annotations

import argparse
import sys

import trio

import trpc

import _common


class Bench(trpc.Service):
    @trpc.unary
    async def greet(self, request):
        return _common.greet(request)

    @trpc.server_stream
    async def count(self, n):
        for i in range(n):
            yield {"i": i}

    @trpc.unary
    async def echo(self, data):
        return data


async def serve(framer: str) -> None:
    server = trpc.Server(Bench(), framer=framer, max_message_size=_common.MAX_MESSAGE)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve_tcp, 0, _common.HOST)
        _common.listening(host, port)


class Ops:
    def __init__(self, client: trpc.Client) -> None:
        self.greet = client.greet
        self.echo = client.echo
        self.count = client.count


async def run_all(functions) -> None:
    async with trio.open_nursery() as nursery:
        for function in functions:
            nursery.start_soon(function)


async def measure(args: argparse.Namespace) -> dict:
    async with trpc.open_client(
        _common.parse_address(args.address), framer=args.framer, max_message_size=_common.MAX_MESSAGE
    ) as client:
        result = await _common.drive(args, Ops(client), run_all)
        result["framer"] = client.framer_name
    return result


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    framer = "c"
    if "--framer" in rest:
        i = rest.index("--framer")
        framer = rest[i + 1]
        del rest[i : i + 2]
    if command == "serve":
        trio.run(serve, framer)
        return 0

    def run(args: argparse.Namespace) -> dict:
        args.framer = framer
        return trio.run(measure, args)

    return _common.run_client(__doc__.splitlines()[0], rest, run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
