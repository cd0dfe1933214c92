"""What every peer of ``bench/compare.py`` shares: the workloads, the answers, the result lines.

A peer is a script with two commands:

- ``PEER serve [options]`` listens on 127.0.0.1, port 0, prints ``listening on HOST:PORT`` on
  stdout once it accepts connections, and serves until it is terminated (by the pid that
  started it).
- ``PEER client HOST:PORT WORKLOAD [--duration S] [--warmup S] [--messages N] [--cap S]``
  connects once, warms up, measures one workload and prints ONE JSON line on stdout:
  ``{"ok": true, ...figures...}`` or ``{"ok": false, "error": "..."}`` (exit status 1).

The four workloads (the same for every system; CBOR payloads everywhere, and the same CBOR
codec everywhere: :data:`cbor_dumps` and :data:`cbor_loads`, trpc's, which is cbor2 with a C fast
path for plain values, so that the comparison measures the frameworks, not their serializers):

- ``w1``: unary ``{"name": "Ada"}`` -> ``{"message": "Hello Ada"}``, one call in flight, for
  ``--duration`` seconds: calls/s, p50 and p99 latency.
- ``w2``: the same call, ``CONCURRENCY`` (64) calls in flight on ONE connection/channel, for
  ``--duration`` seconds: calls/s (p50 and p99 too).
- ``w3``: one server-streaming call that sends ``--messages`` (100,000) ``{"i": n}``; the client
  checks every item, stops at ``--cap`` seconds: messages/s.
- ``w4``: unary echo of 1 MiB of bytes, one call in flight, for ``--duration`` seconds: MB/s,
  counting the payload once per call (1,048,576 bytes; 1 MB = 10^6 bytes).
- ``w4z``: W4 with a compressible payload (:data:`TEXT_PAYLOAD`, 1 MiB of words, which zlib
  shrinks about threefold, where W4's repeated byte ramp would shrink by orders of magnitude);
  for the compressing trpc systems of ``bench/compare.py`` (any peer runs it uncompressed).

Every answer is checked (``Hello Ada``, each streamed ``i`` in order and their count, the echoed
bytes); a wrong one ends the measurement with an error.  Every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from typing import Any, Callable

# The one CBOR codec of every peer (see the module docstring): trpc's own (cbor2 behind a C fast
# path for plain values), given to the gRPC peers as their (de)serializers.
from trpc._codec import _dumps as cbor_dumps  # noqa: F401  (used by the peers)
from trpc._codec import _loads as cbor_loads  # noqa: F401

GREET_REQUEST = {"name": "Ada"}
GREET_REPLY = {"message": "Hello Ada"}
PAYLOAD_SIZE = 1 << 20
PAYLOAD = bytes(range(256)) * (PAYLOAD_SIZE // 256)


def _text_payload(size: int) -> bytes:
    """``size`` bytes of text: words drawn from a small vocabulary by a seeded generator, so
    every run sends the same bytes, which compress as prose and logs do (not as a repeat)."""
    import random

    draw = random.Random(4).choice
    words = [
        "call", "stream", "deadline", "metadata", "server", "client", "message", "window", "credit",
        "frame", "status", "trailers", "headers", "retry", "balancer", "channel", "ok", "unavailable",
    ] + [f"id{n}" for n in range(200)]
    text = bytearray()
    while len(text) < size:
        text += " ".join(draw(words) for _ in range(64)).encode() + b"\n"
    return bytes(text[:size])


#: W4z's payload: 1 MiB of text (see _text_payload).
TEXT_PAYLOAD = _text_payload(PAYLOAD_SIZE)
#: Every peer raises its message size limits to this (W4 sends 1 MiB plus a few bytes of CBOR).
MAX_MESSAGE = 8 << 20
CONCURRENCY = 64
HOST = "127.0.0.1"
#: gRPC method paths (grpcio, grpc.aio, grpclib); trpc and the raw Trio peer use the short names.
GRPC_SERVICE = "bench.Bench"
GREET_PATH = f"/{GRPC_SERVICE}/Greet"
COUNT_PATH = f"/{GRPC_SERVICE}/Count"
ECHO_PATH = f"/{GRPC_SERVICE}/Echo"
WORKLOADS = ("w1", "w2", "w3", "w4", "w4z")

clock_ns = time.perf_counter_ns
clock = time.perf_counter


class WrongAnswer(Exception):
    """A peer answered something other than what the workload expects."""


def greet(request: dict) -> dict:
    """The unary handler of every peer."""
    return {"message": "Hello " + request["name"]}


def check_greet(reply: Any) -> None:
    if reply != GREET_REPLY:
        raise WrongAnswer(f"greet answered {reply!r}")


def check_echo(reply: Any, payload: bytes = PAYLOAD) -> None:
    if reply != payload:
        size = len(reply) if isinstance(reply, (bytes, bytearray, memoryview)) else "?"
        raise WrongAnswer(f"echo answered {type(reply).__name__} of {size} bytes, not the 1 MiB sent")


def listening(host: str, port: int) -> None:
    """What a server prints once it accepts connections (the harness reads the port here)."""
    print(f"listening on {host}:{port}", flush=True)


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def percentile(sorted_values: list, fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def unary_result(latencies_ns: list[int], elapsed: float) -> dict:
    latencies_ns.sort()
    return {
        "calls": len(latencies_ns),
        "elapsed_s": elapsed,
        "calls_per_s": len(latencies_ns) / elapsed,
        "p50_us": percentile(latencies_ns, 0.50) / 1000,
        "p99_us": percentile(latencies_ns, 0.99) / 1000,
    }


def stream_result(received: int, expected: int, elapsed: float, capped: bool) -> dict:
    if received != expected and not capped:
        raise WrongAnswer(f"the stream ended after {received} of {expected} messages")
    return {
        "messages": received,
        "expected": expected,
        "elapsed_s": elapsed,
        "msgs_per_s": received / elapsed,
        "capped": capped,
    }


def echo_result(latencies_ns: list[int], elapsed: float) -> dict:
    result = unary_result(latencies_ns, elapsed)
    result["mb_per_s"] = result["calls"] * PAYLOAD_SIZE / elapsed / 1e6
    return result


def check_item(item: Any, expected: int) -> None:
    if type(item) is not dict or item.get("i") != expected:
        raise WrongAnswer(f"stream item {expected} was {item!r}")


def client_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("address", help="HOST:PORT of the server")
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured (w1, w2, w4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up first (w1, w2, w4)")
    parser.add_argument("--messages", type=int, default=100_000, help="messages streamed (w3)")
    parser.add_argument("--cap", type=float, default=60.0, help="seconds at most for the stream (w3)")
    return parser


def run_client(description: str, argv: list[str], measure: Callable[[argparse.Namespace], dict]) -> int:
    """Parse the client arguments, run ``measure(args)`` and print its one JSON line."""
    args = client_parser(description).parse_args(argv)
    try:
        result = measure(args)
    except BaseException as exc:  # report anything, including a wrong answer, as one line
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        print(traceback.format_exc(), file=sys.stderr)
        print(json.dumps({"ok": False, "workload": args.workload, "error": detail}), flush=True)
        return 1
    result = {"ok": True, "workload": args.workload, **result}
    print(json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# One driver for every async client (Trio and asyncio alike): the peer gives it the three calls
# and a way to run coroutines concurrently.


async def drive(args: argparse.Namespace, ops: Any, run_all: Callable) -> dict:
    """Measure ``args.workload`` with ``ops``:

    - ``await ops.greet(request)`` -> reply; ``await ops.echo(data)`` -> data;
    - ``ops.count(n)`` -> an async context manager yielding an async iterator of the items;
    - ``await run_all(coroutine_functions)`` runs them concurrently until all return.
    """
    workload = args.workload
    if workload == "w3":
        return await _drive_stream(args, ops)
    if workload == "w4":
        call, request, check, concurrency = ops.echo, PAYLOAD, check_echo, 1
    elif workload == "w4z":
        call, request, concurrency = ops.echo, TEXT_PAYLOAD, 1

        def check(reply: Any) -> None:
            check_echo(reply, TEXT_PAYLOAD)
    else:
        call, request, check = ops.greet, GREET_REQUEST, check_greet
        concurrency = CONCURRENCY if workload == "w2" else 1
    latencies: list[int] = []

    def worker_for(stop_at: float, record: Callable) -> Callable:
        async def worker() -> None:
            while clock() < stop_at:
                start = clock_ns()
                reply = await call(request)
                record(clock_ns() - start)
                check(reply)

        return worker

    warm: list[int] = []
    stop_at = clock() + args.warmup
    await run_all([worker_for(stop_at, warm.append) for _ in range(concurrency)])
    started = clock()
    stop_at = started + args.duration
    await run_all([worker_for(stop_at, latencies.append) for _ in range(concurrency)])
    elapsed = clock() - started
    return echo_result(latencies, elapsed) if workload in ("w4", "w4z") else unary_result(latencies, elapsed)


async def _consume(ops: Any, n: int, cap_at: float) -> tuple[int, bool]:
    received = 0
    async with ops.count(n) as items:
        async for item in items:
            if type(item) is not dict or item.get("i") != received:
                check_item(item, received)
            received += 1
            if not received & 1023 and clock() > cap_at:
                return received, received < n
    return received, False


async def _drive_stream(args: argparse.Namespace, ops: Any) -> dict:
    warm = min(1000, args.messages)
    got, _ = await _consume(ops, warm, clock() + args.cap)
    if got != warm:
        raise WrongAnswer(f"the warm-up stream ended after {got} of {warm} messages")
    started = clock()
    received, capped = await _consume(ops, args.messages, started + args.cap)
    elapsed = clock() - started
    return stream_result(received, args.messages, elapsed, capped)
