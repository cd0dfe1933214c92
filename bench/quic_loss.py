"""Head-of-line blocking under packet loss: small-call latency over TCP and over QUIC, in one run.

    sudo python bench/quic_loss.py                     # 0%, 1% and 5% loss, 8 s each
    sudo python bench/quic_loss.py --loss 1 --duration 4 --json

Each loss rate runs in a fresh network namespace (``unshare -n``, so root, or a user namespace
that allows it) whose loopback drops that share of incoming packets at random (iptables'
``statistic`` match: tc netem is not in every kernel).  In it, a server process serves one
service over plain TCP and over QUIC; this script's child is the client, which for each
transport in turn (TCP, then QUIC, the same way) opens one connection and keeps an 8 MiB echo
in flight on it while it starts a 64-byte call every 10 ms, and reports the small calls'
latency (p50, p99, in ms).  Over TCP the small calls wait behind every lost segment and behind
the echo's bytes ahead of them; over QUIC each call has its own stream.

The small calls are started on schedule, whether or not the ones before have returned, and
each is timed from when it was due (an open loop, as a load generator that avoids coordinated
omission does).  A loop that made the next call only once the last had returned would take
one sample during a stall where twenty calls were due, and so leave out most of what
head-of-line blocking does: with it, TCP's p99 over 6 s at 1% loss was 14 to 210 ms from one
run to the next, depending on whether its few retransmission timeouts reached the top 1% of
samples.  docs/PERFORMANCE.md ("QUIC") has the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import ssl
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

import trpc

_BIG = 8 << 20
_SMALL = b"x" * 64
_INTERVAL = 0.01
#: How long the calls still running when the last is due may take to return: past it they are
#: cancelled and count with their wait so far (a transport that lost its way still ends the run).
_DRAIN = 5.0


class Echo(trpc.Service):
    @trpc.unary
    async def echo(self, payload: bytes) -> bytes:
        return payload


def available() -> str | None:
    """None if this machine can run the measurement, else why not."""
    if sys.platform != "linux":
        return "network namespaces are Linux's"
    for tool in ("unshare", "ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up && iptables -A INPUT -i lo -m statistic"
                            " --mode random --probability 0.01 -j DROP"], capture_output=True)
    if probe.returncode != 0:
        return f"cannot make a network namespace that drops packets: {probe.stderr.decode().strip()}"
    return None


async def _serve(folder: str) -> None:
    server = trpc.Server(Echo(), max_message_size=16 << 20)
    async with trio.open_nursery() as nursery:
        tcp = await nursery.start(server.serve_tcp, 0, "127.0.0.1")
        quic = await nursery.start(lambda task_status: server.serve_quic(
            0, "127.0.0.1", certfile=f"{folder}/cert.pem", keyfile=f"{folder}/key.pem", task_status=task_status))
        print(json.dumps({"tcp": f"127.0.0.1:{tcp[1]}", "quic": f"quic://127.0.0.1:{quic[1]}"}), flush=True)


async def _latencies(target: str, context: ssl.SSLContext | None, duration: float) -> list[float]:
    """Small-call latencies (s) with an 8 MiB echo always in flight on the same connection.

    The calls are started on a fixed schedule, one every ``_INTERVAL``, each in its own task,
    whether or not the ones before have returned, and each is timed from when it was due: a
    stall of the connection then delays every call due during it, as it would an
    application's.  (Calls made one after another would make a single call during a stall,
    and count a 200 ms wait once where twenty calls waited: the stalls head-of-line blocking
    causes are what this measures.)"""
    latencies: list[float] = []
    async with trpc.open_client(target, ssl_context=context, max_message_size=16 << 20) as client:
        big = bytes(_BIG)
        await client.echo(_SMALL)
        async with trio.open_nursery() as nursery:
            async def bulk() -> None:
                while True:
                    await client.echo(big)

            async def small(due: float) -> None:
                try:
                    await client.echo(_SMALL)
                finally:  # one still running when the measurement ends counts with its wait so far
                    latencies.append(trio.current_time() - due)

            nursery.start_soon(bulk)
            await trio.sleep(0.2)  # the echo is under way
            with trio.move_on_after(duration + _DRAIN):
                async with trio.open_nursery() as calls:
                    start = trio.current_time()
                    for i in range(round(duration / _INTERVAL)):
                        due = start + i * _INTERVAL
                        await trio.sleep_until(due)
                        calls.start_soon(small, due)
            nursery.cancel_scope.cancel()
    return latencies


def _percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"p50_ms": 1e3 * statistics.median(ordered),
            "p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "calls": len(ordered)}


def _inside(loss: float, duration: float) -> dict[str, Any]:
    """In the namespace: drop ``loss`` percent on loopback, serve, measure both transports."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if loss:
        subprocess.run(["iptables", "-A", "INPUT", "-i", "lo", "-m", "statistic", "--mode", "random",
                        "--probability", str(loss / 100), "-j", "DROP"], check=True)
    from _child_server import child_server  # (here: bench/ is on the path of this script's runs)

    with child_server(str(Path(__file__).resolve())) as (targets, context):
        return {name: _percentiles(trio.run(_latencies, targets[name], context if name == "quic" else None,
                                            duration))
                for name in ("tcp", "quic")}


def measure(loss: float, duration: float) -> dict[str, Any]:
    """Both transports' small-call latency at ``loss`` percent, measured in a new namespace."""
    result = subprocess.run(
        ["unshare", "-n", sys.executable, str(Path(__file__).resolve()), "--inside", str(loss),
         "--duration", str(duration)],
        capture_output=True, check=True)
    return dict(json.loads(result.stdout.splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--loss", type=float, nargs="+", default=[0, 1, 5], help="percent of packets dropped")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of small calls per transport")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--inside", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(_serve, args.serve)
        return
    if args.inside is not None:
        print(json.dumps(_inside(args.inside, args.duration)))
        return
    why = available()
    if why is not None:
        sys.exit(f"cannot measure: {why}")
    rows = {loss: measure(loss, args.duration) for loss in args.loss}
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'loss':>5s}  {'TCP p50/p99 ms':>16s}  {'QUIC p50/p99 ms':>16s}")
    for loss, row in rows.items():
        tcp, quic = row["tcp"], row["quic"]
        print(f"{loss:4g}%  {tcp['p50_ms']:7.1f}/{tcp['p99_ms']:<7.1f}  {quic['p50_ms']:7.1f}/{quic['p99_ms']:<7.1f}")


if __name__ == "__main__":
    main()
