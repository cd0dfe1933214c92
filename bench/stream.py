"""Streaming throughput, server and client in separate processes, per framer, side by side.

    python bench/stream.py [--repeat 3] [--quick] [--json]

Against ``trpc serve trpc.examples:Greeter`` in a child process on a free loopback port:

- server-streaming: one call ``count(100000)``, the server yields 0..99999: messages/s;
- bidi echo of small messages: one ``echo`` stream, the client sends 100,000 small maps from
  one task while it receives the echoes: messages/s each way;
- 1 MiB echo: ``echo`` of 1 MiB ``bytes`` messages, 64 of them (128 MiB moved): MB/s
  (request and response bytes counted once each way, i.e. payload MiB echoed per second).

Framers alternate run by run; each cell is the median of ``--repeat`` runs.  Every loop is
bounded in count and time; the server is stopped by the pid this script started.

Besides the rates, it reports the CPU time the *client* process spent per message (``cpu
us/msg``, from ``time.process_time()``): on a 2-core machine where the two processes share the
cores, the rates move with scheduling (how the wake-ups fall), while the receiving side's CPU
per message is what the framer changes, and varies far less from run to run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import trio

import trpc
from unary import FRAMERS, machine, start_server

WORKLOADS = ("server_stream", "bidi_echo", "echo_1mib")
UNITS = {"server_stream": "msgs/s", "bidi_echo": "msgs/s", "echo_1mib": "MB/s"}
TIME_LIMIT = 60  # seconds: any one measurement that takes longer fails instead of hanging


async def server_stream(client, n: int) -> tuple[float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    count = 0
    async for i in client.count(n):
        count += 1
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert count == n and i == n - 1
    return n / elapsed, cpu / n * 1e6


async def _echo(client, message, n: int) -> tuple[int, int, float, float]:
    """Send ``message`` n times on one echo stream from a task while receiving the echoes;
    returns (messages received, bytes-like length received, seconds, CPU seconds)."""
    started, cpu = time.perf_counter(), time.process_time()
    count = total = 0
    async with client.echo.open() as stream:

        async def sender():
            for _ in range(n):
                await stream.send(message)
            await stream.done_sending()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            async for echoed in stream:
                count += 1
                if type(echoed) is bytes:
                    total += len(echoed)
    return count, total, time.perf_counter() - started, time.process_time() - cpu


async def bidi_echo(client, n: int) -> tuple[float, float]:
    count, _, elapsed, cpu = await _echo(client, {"i": 0}, n)
    assert count == n
    return n / elapsed, cpu / n * 1e6


async def echo_1mib(client, n: int) -> tuple[float, float]:
    count, total, elapsed, cpu = await _echo(client, bytes(1 << 20), n)
    assert count == n and total == n << 20
    return total / elapsed / 1e6, cpu / n * 1e6


async def measure(address: str, framer: str, sizes: dict) -> dict:
    async with trpc.open_client(address, framer=framer) as client:
        await server_stream(client, 1000)  # warm up
        results: dict[str, tuple[float, float]] = {}
        for name, function in (("server_stream", server_stream), ("bidi_echo", bidi_echo), ("echo_1mib", echo_1mib)):
            with trio.fail_after(TIME_LIMIT):
                results[name] = await function(client, sizes[name])
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 run, smaller workloads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = {"server_stream": 100_000, "bidi_echo": 100_000, "echo_1mib": 64}
    if args.quick:
        args.repeat = 1
        sizes = {"server_stream": 30_000, "bidi_echo": 20_000, "echo_1mib": 16}

    runs = {f: {w: [] for w in WORKLOADS} for f in FRAMERS}
    cpu_runs = {f: {w: [] for w in WORKLOADS} for f in FRAMERS}
    for rep in range(args.repeat):
        for framer in FRAMERS if rep % 2 == 0 else FRAMERS[::-1]:
            process, address = start_server(framer)
            try:
                result = trio.run(measure, address, framer, sizes)
            finally:
                process.terminate()
                process.wait(timeout=10)
            for name, (value, cpu) in result.items():
                runs[framer][name].append(value)
                cpu_runs[framer][name].append(cpu)
            if not args.json:
                print(f"  run {rep + 1}/{args.repeat} {framer:>6}: " +
                      ", ".join(f"{w} {result[w][0]:,.0f}" for w in WORKLOADS), file=sys.stderr)

    summary = {f: {w: statistics.median(v) for w, v in by_w.items()} for f, by_w in runs.items()}
    cpu = {f: {w: statistics.median(v) for w, v in by_w.items()} for f, by_w in cpu_runs.items()}
    if args.json:
        print(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"), "sizes": sizes,
                          "results": summary, "client_cpu_us_per_msg": cpu}))
        return
    print("\nstreaming, client and server in separate processes, loopback")
    print(f"{machine()}; {time.strftime('%Y-%m-%d')}; median of {args.repeat}\n")
    print(f"{'workload':<16}{'unit':>8}{'c':>12}{'python':>12}{'c/python':>10}"
          f"{'cpu us/msg c':>15}{'python':>9}{'py/c':>7}")
    for w in WORKLOADS:
        c, p = summary["c"][w], summary["python"][w]
        cc, cp = cpu["c"][w], cpu["python"][w]
        print(f"{w:<16}{UNITS[w]:>8}{c:>12,.0f}{p:>12,.0f}{c / p:>9.2f}x{cc:>15.2f}{cp:>9.2f}{cp / cc:>6.2f}x")


if __name__ == "__main__":
    main()
