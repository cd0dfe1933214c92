"""CPU per unary call of one side of trpc, against a raw peer, in one process.

    python bench/percall.py [--side server|client|both] [--concurrency 64] [--repeat 5] [--json]

The cross-process benchmarks (``unary.py``, ``compare.py``) move with how the two processes'
wake-ups fall on this kind of machine, by ±15% from run to run.  This one measures one side
only, without a second process: that side (a real ``trpc.Server`` or ``trpc`` client) runs on
one end of a socketpair, and a raw peer on the other end, in the same Trio run, speaks the wire
with canned bytes and the C framer (it costs well under a microsecond per call):

- ``server``: the raw client sends ``--concurrency`` calls of ``greet("Ada")`` at a time
  (HEADERS + DATA with END_STREAM each, prepared before timing) and waits for all their
  TRAILERS before the next batch.
- ``client``: ``--concurrency`` tasks call ``client.greet("Ada")`` in a loop; the raw server
  answers each request with a canned DATA + TRAILERS.

It reports calls/s and the process's CPU time per call (``time.process_time``), the median
of ``--repeat`` runs, so it suits A/B comparisons of changes to the per-call path (alternate
the two builds run by run).  Every run is bounded in calls (``--calls``) and time (60 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import time

import cbor2
import trio
import trio.socket

import trpc
from trpc._framer_c import CFramer
from trpc.wire import PREFACE, PREFACE_MAGIC
from trpc.examples.greeter import Greeter

from _machine import machine

HEADER = struct.Struct(">IBBI")
DATA, HEADERS, TRAILERS = 0, 1, 2
END_STREAM = 1
GREET_HEADERS = cbor2.dumps({1: "greet"})
GREET_ARGUMENTS = cbor2.dumps([["Ada"]])
REPLY = cbor2.dumps("Hello Ada")
OK_TRAILERS = cbor2.dumps({1: 0})
TIME_LIMIT = 60  # seconds: a run that takes longer fails instead of hanging


def raw_preface() -> bytes:
    # max frame 1 MiB, max message 4 MiB, stream window 2 MiB, connection window 1 GiB, 1000 streams
    return PREFACE.pack(PREFACE_MAGIC, 1, 0, 0, 1 << 20, 4 << 20, 2 << 20, 1 << 30, 1000)


async def read_preface(stream: trio.SocketStream, framer: CFramer) -> list:
    """Read the peer's preface; return the frames that came after it in the same reads."""
    data = b""
    while len(data) < PREFACE.size:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise SystemExit("the peer closed the connection during the preface")
        data += chunk
    rest = data[PREFACE.size :]
    return framer.feed(rest) if rest else []


async def measure_server(calls: int, concurrency: int) -> tuple[float, float, int]:
    """A real server, a raw client sending ``concurrency`` calls at a time.  Returns calls/s and
    CPU us per measured call, and the calls made, warm-up included."""
    rounds = max(2, calls // concurrency)

    def batch(first: int) -> bytes:
        return b"".join(
            HEADER.pack(len(GREET_HEADERS), HEADERS, 0, sid) + GREET_HEADERS
            + HEADER.pack(len(GREET_ARGUMENTS), DATA, END_STREAM, sid) + GREET_ARGUMENTS
            for sid in range(first, first + concurrency)
        )

    warmup = max(1, rounds // 5)
    batches = [batch(1 + r * concurrency) for r in range(warmup + rounds)]
    a, b = trio.socket.socketpair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trpc.Server(Greeter()).serve_stream, trio.SocketStream(a))
        client = trio.SocketStream(b)
        await client.send_all(raw_preface())
        framer = CFramer()
        pending = await read_preface(client, framer)
        for r, data in enumerate(batches):
            if r == warmup:
                started, cpu = time.perf_counter(), time.process_time()
            await client.send_all(data)
            ended = 0
            while True:
                ended += sum(1 for frame in pending if frame[0] == TRAILERS)
                if ended >= concurrency:
                    break
                pending = framer.feed(await client.receive_some(65536))
            pending = []
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        nursery.cancel_scope.cancel()
    done = rounds * concurrency
    return done / elapsed, cpu / done * 1e6, (warmup + rounds) * concurrency


async def measure_client(calls: int, concurrency: int) -> tuple[float, float, int]:
    """A real client, ``concurrency`` tasks calling; a raw server answering.  Returns as
    :func:`measure_server` does."""

    async def raw_server(stream: trio.SocketStream) -> None:
        await stream.send_all(raw_preface())
        framer = CFramer()
        frames = await read_preface(stream, framer)
        while True:
            replies = [
                HEADER.pack(len(REPLY), DATA, 0, sid) + REPLY + HEADER.pack(len(OK_TRAILERS), TRAILERS, 0, sid) + OK_TRAILERS
                for ftype, flags, sid, _ in frames
                if ftype == DATA and flags & END_STREAM
            ]
            if replies:
                await stream.send_all(b"".join(replies))
            data = await stream.receive_some(65536)
            if not data:
                return
            frames = framer.feed(data)

    a, b = trio.socket.socketpair()
    per_task = max(2, calls // concurrency)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw_server, trio.SocketStream(a))
        async with trpc.open_client(trio.SocketStream(b)) as client:
            greet = client.greet
            warm = max(100, per_task // 5)
            for _ in range(warm):  # warm up
                await greet("Ada")
            done = 0

            async def caller() -> None:
                nonlocal done
                for _ in range(per_task):
                    if await greet("Ada") != "Hello Ada":
                        raise SystemExit("wrong answer")
                    done += 1

            started, cpu = time.perf_counter(), time.process_time()
            async with trio.open_nursery() as callers:
                for _ in range(concurrency):
                    callers.start_soon(caller)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        nursery.cancel_scope.cancel()
    return done / elapsed, cpu / done * 1e6, warm + done


async def run(side: str, calls: int, concurrency: int) -> tuple[float, float, int]:
    with trio.fail_after(TIME_LIMIT):
        if side == "server":
            return await measure_server(calls, concurrency)
        return await measure_client(calls, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=["server", "client", "both"], default="both")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (default 64)")
    parser.add_argument("--calls", type=int, default=30_000, help="calls measured per run (default 30,000)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 runs of 5,000 calls")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.calls = 3, 5_000
    sides = ["server", "client"] if args.side == "both" else [args.side]
    results = {}
    for side in sides:
        runs = [trio.run(run, side, args.calls, args.concurrency) for _ in range(args.repeat)]
        results[side] = {
            "calls_per_s": statistics.median(r[0] for r in runs),
            "cpu_us_per_call": statistics.median(r[1] for r in runs),
            "cpu_us_per_call_runs": [round(r[1], 2) for r in runs],
            # Warm-up included, as in an instruction count of the whole process; the same every run.
            "calls_made": runs[0][2],
        }
        if not args.json:
            print(f"  {side}: " + ", ".join(f"{r[1]:.1f}" for r in runs) + " us/call", file=sys.stderr)
    if args.json:
        print(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                          "concurrency": args.concurrency, "calls": args.calls, "results": results}))
        return
    print(f"\nCPU per unary call of one side, against a raw peer in the same process; "
          f"{args.concurrency} in flight")
    print(f"{machine()}; {time.strftime('%Y-%m-%d')}; median of {args.repeat}\n")
    print(f"{'side':<10}{'calls/s':>12}{'cpu us/call':>14}")
    for side, r in results.items():
        print(f"{side:<10}{r['calls_per_s']:>12,.0f}{r['cpu_us_per_call']:>14.2f}")


if __name__ == "__main__":
    main()
