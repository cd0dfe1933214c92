"""trpc over QUIC (trpc.quic) next to trpc over TCP, in one run: W1, W2, W4 and the handshake.

    python bench/quic.py                 # 3 s per measurement
    python bench/quic.py --duration 1    # quicker

One server process (``serve``, below) serves the same service three ways: plain TCP, TCP with
TLS, and QUIC (always TLS 1.3), on loopback.  This process is the client, one transport at a
time, so the two never compete for the machine's two cores.  Workloads (bench/compare.py's):

- W1: ``greet("Ada")``, one call in flight: calls/s;
- W2: the same, 64 in flight on one connection: calls/s;
- W4: unary echo of 1 MiB of bytes, one in flight: MB/s (payload counted once per call);
- handshake: ``open_client`` until the connection is ready, then one call (the median of 50): ms.

Ratios are to plain TCP.  docs/PERFORMANCE.md ("QUIC") has the figures.
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import time
from pathlib import Path
from typing import Any

import trio

import trpc

from _child_server import child_server  # noqa: E402  (bench/ is the script's directory)


class Bench(trpc.Service):
    # (trpc's decorators are not annotated yet: mypy --strict would call the methods untyped.)
    @trpc.unary  # type: ignore[untyped-decorator]
    async def greet(self, name: str) -> dict[str, str]:
        return {"message": f"Hello {name}"}

    @trpc.unary  # type: ignore[untyped-decorator]
    async def echo(self, payload: bytes) -> bytes:
        return payload


async def _serve(folder: str) -> None:
    server = trpc.Server(Bench())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(f"{folder}/cert.pem", f"{folder}/key.pem")
    async with trio.open_nursery() as nursery:
        tcp = await nursery.start(server.serve_tcp, 0, "127.0.0.1")
        tls = await nursery.start(lambda task_status: server.serve_tcp(0, "127.0.0.1", ssl_context=context,
                                                                       task_status=task_status))
        quic = await nursery.start(lambda task_status: server.serve_quic(
            0, "127.0.0.1", certfile=f"{folder}/cert.pem", keyfile=f"{folder}/key.pem", task_status=task_status))
        print(json.dumps({"tcp": f"127.0.0.1:{tcp[1]}", "tls": f"127.0.0.1:{tls[1]}",
                          "quic": f"quic://127.0.0.1:{quic[1]}"}), flush=True)


async def _rate(duration: float, in_flight: int, call: Any) -> int:
    """Calls completed in ``duration`` seconds with ``in_flight`` callers."""
    done = 0
    deadline = trio.current_time() + duration

    async def caller() -> None:
        nonlocal done
        while trio.current_time() < deadline:
            await call()
            done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(in_flight):
            nursery.start_soon(caller)
    return done


async def _measure(target: str, context: ssl.SSLContext | None, duration: float) -> dict[str, float]:
    result: dict[str, float] = {}
    handshakes = []
    for _ in range(50):
        start = time.perf_counter()
        async with trpc.open_client(target, ssl_context=context) as client:
            await client.greet("Ada")
            handshakes.append(time.perf_counter() - start)
    result["handshake_ms"] = 1e3 * statistics.median(handshakes)
    async with trpc.open_client(target, ssl_context=context) as client:
        await _rate(0.3, 1, lambda: client.greet("Ada"))  # warm-up
        result["w1"] = await _rate(duration, 1, lambda: client.greet("Ada")) / duration
        result["w2"] = await _rate(duration, 64, lambda: client.greet("Ada")) / duration
        payload = bytes(1 << 20)
        calls = await _rate(duration, 1, lambda: client.echo(payload))
        result["w4"] = calls * len(payload) / duration / 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--serve", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(_serve, args.serve)
        return
    with child_server(str(Path(__file__).resolve())) as (targets, context):
        rows = {name: trio.run(_measure, targets[name], None if name == "tcp" else context, args.duration)
                for name in ("tcp", "tls", "quic")}
    base = rows["tcp"]
    print(f"{'transport':10s} {'W1 calls/s':>16s} {'W2 calls/s':>16s} {'W4 MB/s':>14s} {'handshake ms':>14s}")
    for name, row in rows.items():
        print(f"{name:10s} {row['w1']:9.0f} ({row['w1'] / base['w1']:.2f}x) {row['w2']:9.0f} "
              f"({row['w2'] / base['w2']:.2f}x) {row['w4']:7.1f} ({row['w4'] / base['w4']:.2f}x) "
              f"{row['handshake_ms']:8.2f}")


if __name__ == "__main__":
    main()
