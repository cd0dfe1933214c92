"""trpc peer of bench/compare.py (see _common.py for the commands and workloads).

    trpc_peer.py serve --framer c|python [--count-calls] [--compression zlib|zstd]
    trpc_peer.py client HOST:PORT[,HOST:PORT...] w1|w2|w3|w4|w4z --framer c|python
                 [--load-balancing POLICY] [--compression zlib|zstd] [...]

The service is an ordinary ``trpc.Service``; the client calls it as ``client.greet(request)``,
``client.echo(data)`` and ``async with client.count(n) as items``.

For ``bench/channel.py``: ``serve --count-calls`` counts the greet calls it answers and serves
``stats()`` (its pid and that count); a client given several addresses opens one channel to all
of them (with ``--load-balancing``, passed to ``open_client`` only when given, so that a client
from before channels runs this script too) and reports how the measured calls split between the
backends, read from each one's ``stats()`` over a connection of its own between the warm-up and
the measurement and after it.  Every result names the trpc package that ran (``trpc_path``).
"""

from __future__ import annotations

import argparse
import os
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


class CountingBench(Bench):
    """Bench that counts its greet calls (one integer add per call), for channel.py's split."""

    def __init__(self) -> None:
        self.greets = 0

    @trpc.unary
    async def greet(self, request):
        self.greets += 1
        return _common.greet(request)

    @trpc.unary
    async def stats(self):
        return {"pid": os.getpid(), "greets": self.greets}


async def serve(framer: str, count_calls: bool, compression: str | None) -> None:
    service = CountingBench() if count_calls else Bench()
    # compression= only when asked, so that a trpc from before it runs this script too
    options = {} if compression is None else {"compression": compression}
    server = trpc.Server(service, framer=framer, max_message_size=_common.MAX_MESSAGE, **options)
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


async def backend_stats(addresses: list[str]) -> list[dict]:
    """Each backend's ``stats()``, over a connection of its own (not the measured channel)."""
    found = []
    for address in addresses:
        async with trpc.open_client(_common.parse_address(address)) as client:
            found.append(await client.stats())
    return found


async def measure(args: argparse.Namespace) -> dict:
    addresses = args.address.split(",")
    target = _common.parse_address(addresses[0]) if len(addresses) == 1 else args.address
    options = {} if args.load_balancing is None else {"load_balancing": args.load_balancing}
    if args.compression is not None:
        options["compression"] = args.compression
    snapshots = []

    async def run_all_counted(functions) -> None:
        await run_all(functions)  # drive() calls this twice: the warm-up, then the measurement
        snapshots.append(await backend_stats(addresses))

    counted = len(addresses) > 1
    async with trpc.open_client(
        target, framer=args.framer, max_message_size=_common.MAX_MESSAGE, **options
    ) as client:
        result = await _common.drive(args, Ops(client), run_all_counted if counted else run_all)
        result["framer"] = client.framer_name
    if counted:
        before, after = snapshots
        result["backends"] = [
            {"address": address, "pid": a["pid"], "calls": a["greets"] - b["greets"]}
            for address, b, a in zip(addresses, before, after)
        ]
    result["trpc_path"] = os.path.dirname(os.path.abspath(trpc.__file__))
    return result


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    framer = _pop_option(rest, "--framer", "c")
    load_balancing = _pop_option(rest, "--load-balancing", None)
    compression = _pop_option(rest, "--compression", None)
    if command == "serve":
        trio.run(serve, framer, "--count-calls" in rest, compression)
        return 0

    def run(args: argparse.Namespace) -> dict:
        args.framer = framer
        args.load_balancing = load_balancing
        args.compression = compression
        return trio.run(measure, args)

    return _common.run_client(__doc__.splitlines()[0], rest, run)


def _pop_option(rest: list[str], name: str, default: str | None) -> str | None:
    """Remove ``name VALUE`` from ``rest``; the value, or ``default`` when absent."""
    if name not in rest:
        return default
    i = rest.index(name)
    value = rest[i + 1]
    del rest[i : i + 2]
    return value


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
