"""trpc's server over its gRPC wire against grpc.aio's server, both called by the same grpc.aio
client: calls/s and the server's CPU per call, W1, W2 and W4 (bench/compare.py's workloads).

    python bench/grpc_wire.py                  # 3 repetitions, 3 s per measurement
    python bench/grpc_wire.py --quick          # 1 repetition, 1 s
    python bench/grpc_wire.py --repeat 5 --duration 5 --workloads w2

Systems: ``grpc-aio`` (bench/peers/grpc_aio_peer.py, the baseline) and ``trpc-grpc``
(bench/peers/trpc_grpc_peer.py: a ``trpc.Server``, gRPC with CBOR).  Each server runs in a
child process (compare.py's ``Server``), each measurement in another (compare.py's
``run_client``); the server's CPU time (user + system, from /proc) is read before and after the
client process, so it covers the warm-up too: CPU per call divides it by the calls measured
scaled by (warm-up + duration) / duration, assuming the warm-up ran at the measured rate.
Figures are medians of the repetitions, ratios to grpc.aio's; the systems alternate order.
Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402

SYSTEMS = {
    "grpc-aio": compare.SYSTEMS["grpc-aio"],
    "trpc-grpc": compare.System("trpc server, gRPC wire (grpc+cbor)", "trpc_grpc_peer.py"),
}
WORKLOADS = ("w1", "w2", "w4")
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--warmup", type=float)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args(argv)
    settings = {
        "duration": args.duration or (1.0 if args.quick else 3.0),
        "warmup": args.warmup or (0.3 if args.quick else 1.0),
        "messages": 1, "cap": 1.0,
    }
    repeat = args.repeat or (1 if args.quick else 3)
    workloads = [w for w in args.workloads.split(",") if w in WORKLOADS]
    runs: dict = {(name, w): [] for name in SYSTEMS for w in workloads}
    for rep in range(repeat):
        order = list(SYSTEMS) if rep % 2 == 0 else list(reversed(SYSTEMS))
        for name in order:
            server = compare.Server(name, SYSTEMS[name])
            try:
                for workload in workloads:
                    before = cpu_seconds(server.process.pid)
                    result = compare.run_client(SYSTEMS[name], server.address, workload, settings)
                    cpu = cpu_seconds(server.process.pid) - before
                    if not result.get("ok"):
                        print(f"{name} {workload}: {result.get('error')}", file=sys.stderr)
                        continue
                    calls = result["calls"] * (settings["warmup"] + settings["duration"]) / settings["duration"]
                    result["server_cpu_us_per_call"] = cpu / calls * 1e6
                    runs[(name, workload)].append(result)
                    print(f"rep {rep + 1} {name} {workload}: {result['calls_per_s']:.0f} calls/s,"
                          f" server {result['server_cpu_us_per_call']:.0f} us CPU/call", file=sys.stderr)
            finally:
                server.stop()
    print(f"median of {repeat}; {settings['duration']:g} s per measurement after {settings['warmup']:g} s warm-up")
    print(f"{'workload':<9}{'system':<11}{'calls/s':>10}{'p50 us':>9}{'server CPU us/call':>20}"
          f"{'calls/s vs aio':>16}{'CPU vs aio':>12}")
    for workload in workloads:
        base = {}
        for name in SYSTEMS:
            results = runs[(name, workload)]
            if not results:
                continue
            rate = statistics.median(r["calls_per_s"] for r in results)
            p50 = statistics.median(r["p50_us"] for r in results)
            cpu = statistics.median(r["server_cpu_us_per_call"] for r in results)
            base.setdefault("rate", rate)
            base.setdefault("cpu", cpu)
            print(f"{workload:<9}{name:<11}{rate:>10.0f}{p50:>9.0f}{cpu:>20.0f}"
                  f"{rate / base['rate']:>15.2f}x{cpu / base['cpu']:>11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
