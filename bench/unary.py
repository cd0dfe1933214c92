"""Unary call throughput and latency, server and client in separate processes, per framer.

    python bench/unary.py [--duration 3] [--repeat 3] [--quick] [--json]

For each framer (C and Python) it starts ``trpc serve trpc.examples:Greeter`` in a child process
on a free loopback port, connects one client, and measures ``greet("Ada")``:

- with 1 call in flight: calls/s, p50 and p99 latency;
- with 64 calls in flight on the one connection: calls/s, p50 and p99 latency.

Framers alternate run by run and each cell is the median of ``--repeat`` runs (the machine is
shared and noisy: compare the ratios within one run).  Every loop is bounded in time and stops
by itself; the server is stopped by the pid this script started.  ``--json`` prints one JSON
object instead of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import trio

import trpc
from _machine import machine  # noqa: E402  (bench/ is the script's directory)

FRAMERS = ("c", "python")


def start_server(framer: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, TRPC_FRAMER=framer)
    process = subprocess.Popen(
        [sys.executable, "-m", "trpc", "serve", "trpc.examples:Greeter", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        process.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return process, line.split()[2]


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


async def measure(address: str, framer: str, concurrency: int, duration: float) -> dict:
    latencies: list[int] = []
    async with trpc.open_client(address, framer=framer) as client:
        greet = client.greet
        for _ in range(200):  # warm up
            await greet("Ada")
        stop_at = time.perf_counter() + duration
        clock = time.perf_counter_ns

        async def worker() -> None:
            record = latencies.append
            while time.perf_counter() < stop_at:
                start = clock()
                result = await greet("Ada")
                record(clock() - start)
                assert result == "Hello Ada"

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "calls_per_s": len(latencies) / elapsed,
        "p50_us": percentile(latencies, 0.50) / 1000,
        "p99_us": percentile(latencies, 0.99) / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (median reported)")
    parser.add_argument("--quick", action="store_true", help="1 s x 1 run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeat = 1.0, 1

    runs: dict[str, dict[int, list[dict]]] = {f: {1: [], 64: []} for f in FRAMERS}
    for rep in range(args.repeat):
        order = FRAMERS if rep % 2 == 0 else FRAMERS[::-1]
        for framer in order:
            process, address = start_server(framer)
            try:
                for concurrency in (1, 64):
                    result = trio.run(measure, address, framer, concurrency, args.duration)
                    runs[framer][concurrency].append(result)
                    if not args.json:
                        print(f"  run {rep + 1}/{args.repeat} {framer:>6} x{concurrency:<3} "
                              f"{result['calls_per_s']:>9.0f} calls/s", file=sys.stderr)
            finally:
                process.terminate()
                process.wait(timeout=10)

    summary = {
        framer: {
            str(concurrency): {
                key: statistics.median(r[key] for r in results)
                for key in ("calls_per_s", "p50_us", "p99_us")
            }
            for concurrency, results in by_concurrency.items()
        }
        for framer, by_concurrency in runs.items()
    }
    if args.json:
        print(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"), "results": summary}))
        return
    print("\nunary greet('Ada'), client and server in separate processes, loopback")
    print(f"{machine()}; {time.strftime('%Y-%m-%d')}; median of {args.repeat} x {args.duration:g} s\n")
    print(f"{'framer':<8}{'in flight':>10}{'calls/s':>12}{'p50 us':>10}{'p99 us':>10}")
    for framer in FRAMERS:
        for concurrency in ("1", "64"):
            cell = summary[framer][concurrency]
            print(f"{framer:<8}{concurrency:>10}{cell['calls_per_s']:>12.0f}{cell['p50_us']:>10.0f}{cell['p99_us']:>10.0f}")
    for concurrency in ("1", "64"):
        ratio = summary["c"][concurrency]["calls_per_s"] / summary["python"][concurrency]["calls_per_s"]
        print(f"C / Python calls/s with {concurrency} in flight: {ratio:.2f}x")


if __name__ == "__main__":
    main()
