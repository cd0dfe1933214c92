"""A soak run: honest clients of every call shape and hostile peers against one server, for minutes.

    pip install '.[bench]'
    python bench/soak.py                       # 5 minutes; writes bench/results/soak-<date>.json/.png
    python bench/soak.py --minutes 30 --json out.json --chart out.png

The server runs in a child process (``python bench/soak.py --serve``, which prints its port);
this process runs, all at once and on loopback only:

- honest clients (``--clients``, default 4), each in a loop: a unary call, a server stream
  read to its end, a client stream, a bidirectional exchange, a call with a deadline shorter
  than its handler (DEADLINE_EXCEEDED expected), and a call cancelled mid-way.  Every answer is
  checked; any other outcome counts as a failure, and a call that neither returns nor raises
  within 30 s counts as lost;
- hostile peers, one of each, reconnecting every few seconds: messages never finished on many
  streams; idle connections and half a preface; a flood of pings; a streaming call whose
  client grants the largest windows and never reads; garbage bytes.

Every ``--every`` seconds (default 5) it samples the server's resident memory and open
descriptors (``/proc/PID``), and the honest calls and failures since the last sample.  At the
end it prints a table and the verdict: after the warm-up (the first fifth of the run), RSS and
descriptors must stay within a band (``--rss-band``, default 64 MiB; descriptors within 64), and
there must be no failure and no lost call.  Exit status 0 when it passes.  Every loop is bounded
by the run's duration; every child is stopped by the pid this process started.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cbor2
import trio

import trpc
from trpc.wire import PREFACE, PREFACE_MAGIC, Flags, FrameType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _machine import machine  # noqa: E402

HEADER = ">IBBI"
MAX_WINDOW = (1 << 31) - 1


class Soak(trpc.Service):
    @trpc.unary
    async def echo(self, value):
        return value

    @trpc.unary
    async def slow(self, seconds: float) -> str:
        await trio.sleep(seconds)
        return "done"

    @trpc.server_stream
    async def count(self, n: int):
        for i in range(n):
            yield i

    @trpc.server_stream
    async def flood(self, size: int):
        item = bytes(size)
        for _ in range(100_000_000):
            yield item

    @trpc.client_stream
    async def total(self, items) -> int:
        return sum([item async for item in items])

    @trpc.bidi_stream
    async def double(self, items):
        async for item in items:
            yield item * 2


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    import struct

    return struct.pack(HEADER, len(payload), ftype, flags, stream_id) + payload


def preface(stream_window: int = 1 << 20, connection_window: int = 16 << 20) -> bytes:
    return PREFACE.pack(PREFACE_MAGIC, 1, 0, 0, 1 << 20, 4 << 20, stream_window, connection_window, 100)


# ------------------------------------------------------------------------- the server
def serve() -> None:
    import logging

    # Each hostile peer makes the server log a warning; the soak counts outcomes, not lines.
    logging.getLogger("trpc").setLevel(logging.ERROR)

    async def main() -> None:
        server = trpc.Server(Soak())
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.serve_tcp, 0)
            print(port, flush=True)

    trio.run(main)


# ------------------------------------------------------------------------- honest clients
class Counters:
    def __init__(self) -> None:
        self.calls = 0
        self.failures: list[str] = []
        self.lost = 0


async def honest(address, counters: Counters, stop_at: float) -> None:
    async with trpc.open_client(address) as client:
        round_ = 0
        while trio.current_time() < stop_at:
            round_ += 1
            try:
                with trio.fail_after(30):
                    await one_round(client, round_)
                counters.calls += 6
            except trio.TooSlowError:
                counters.lost += 1
            except Exception as exc:  # noqa: BLE001 - every other outcome is a failure, recorded
                counters.failures.append(f"{type(exc).__name__}: {exc}")


async def one_round(client, n: int) -> None:
    assert await client.echo({"n": n}) == {"n": n}
    assert [i async for i in client.count(50)] == list(range(50))

    async def numbers():
        for i in range(20):
            yield i

    assert await client.total(numbers()) == 190
    async with client.double.open() as stream:
        for i in range(5):
            await stream.send(i)
            assert await stream.receive() == 2 * i
        await stream.done_sending()
    try:
        await client.slow.with_options(timeout=0.01)(1.0)
    except trpc.RpcError as exc:
        assert exc.status is trpc.Status.DEADLINE_EXCEEDED, exc
    else:
        raise AssertionError("a call past its deadline returned")
    with trio.move_on_after(0.005):
        await client.slow(1.0)


# ------------------------------------------------------------------------- hostile peers
async def hostile(address, name: str, stop_at: float) -> None:
    while trio.current_time() < stop_at:
        try:
            with trio.move_on_after(3):
                sock = trio.socket.socket()
                if name == "never reads":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                await sock.connect(address)
                stream = trio.SocketStream(sock)
                try:
                    await misbehave(stream, name)
                finally:
                    await trio.aclose_forcefully(stream)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server closed it: what it should do to such a peer
        await trio.sleep(0.5)


async def misbehave(stream, name: str) -> None:
    if name == "unfinished messages":
        data = preface()
        for sid in range(1, 201, 2):
            data += frame(FrameType.HEADERS, 0, sid, cbor2.dumps({1: "total"}))
            data += frame(FrameType.DATA, Flags.MORE, sid, bytes(64 << 10))
        await stream.send_all(data)
    elif name == "idle":
        await stream.send_all(preface()[:10])
    elif name == "pings":
        ping = frame(FrameType.PING, 0, 0, b"12345678") * 256
        await stream.send_all(preface())
        while True:
            await stream.send_all(ping)
    elif name == "never reads":
        call = frame(FrameType.HEADERS, 0, 1, cbor2.dumps({1: "flood"}))
        call += frame(FrameType.DATA, Flags.END_STREAM, 1, cbor2.dumps([[1000]]))
        await stream.send_all(preface(MAX_WINDOW, MAX_WINDOW) + call)
    elif name == "garbage":
        await stream.send_all(os.urandom(4096))
    await trio.sleep_forever()


HOSTILE = ("unfinished messages", "idle", "pings", "never reads", "garbage")


# ------------------------------------------------------------------------- sampling
def server_figures(pid: int) -> tuple[int, int]:
    rss = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def sample(pid: int, counters: Counters, every: float, stop_at: float, samples: list) -> None:
    start = trio.current_time()
    calls = failures = 0
    while trio.current_time() < stop_at:
        await trio.sleep(every)
        rss, fds = server_figures(pid)
        now = trio.current_time()
        row = {
            "t": round(now - start, 1),
            "rss": rss,
            "fds": fds,
            "calls_per_s": round((counters.calls - calls) / every, 1),
            "failures": len(counters.failures) - failures,
            "lost": counters.lost,
        }
        calls, failures = counters.calls, len(counters.failures)
        samples.append(row)
        print(f"  {row['t']:>7.1f} s  rss {rss / 2**20:7.1f} MiB  fds {fds:4d}  "
              f"{row['calls_per_s']:>8.1f} calls/s  failures {row['failures']}  lost {row['lost']}",
              file=sys.stderr, flush=True)


def verdict(samples: list, counters: Counters, rss_band: int, fd_band: int) -> dict:
    steady = samples[max(1, len(samples) // 5):] or samples
    rss = [s["rss"] for s in steady]
    fds = [s["fds"] for s in steady]
    result = {
        "rss_min": min(rss), "rss_max": max(rss), "fds_min": min(fds), "fds_max": max(fds),
        "calls": counters.calls, "failures": len(counters.failures), "lost": counters.lost,
        "first_failures": counters.failures[:10],
        "calls_per_s_median": statistics.median(s["calls_per_s"] for s in steady),
    }
    result["passed"] = (
        max(rss) - min(rss) <= rss_band and max(fds) - min(fds) <= fd_band
        and not counters.failures and not counters.lost
    )
    return result


def chart(samples: list, path: str, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no chart: matplotlib is not installed (pip install '.[bench]')", file=sys.stderr)
        return
    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    axes[0].plot(t, [s["rss"] / 2**20 for s in samples])
    axes[0].set_ylabel("server RSS (MiB)")
    axes[0].set_ylim(bottom=0)
    axes[1].plot(t, [s["fds"] for s in samples], color="tab:orange")
    axes[1].set_ylabel("open descriptors")
    axes[1].set_ylim(bottom=0)
    axes[2].plot(t, [s["calls_per_s"] for s in samples], color="tab:green")
    axes[2].set_ylabel("honest calls/s")
    axes[2].set_xlabel("minutes")
    axes[2].set_ylim(bottom=0)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def soak(args) -> dict:
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        address = ("127.0.0.1", port)
        counters = Counters()
        samples: list = []
        stop_at = trio.current_time() + args.minutes * 60
        async with trio.open_nursery() as nursery:
            for _ in range(args.clients):
                nursery.start_soon(honest, address, counters, stop_at)
            for name in HOSTILE:
                nursery.start_soon(hostile, address, name, stop_at)
            nursery.start_soon(sample, server.pid, counters, args.every, stop_at, samples)
        return {"samples": samples, **verdict(samples, counters, args.rss_band << 20, args.fd_band)}
    finally:
        server.kill()
        server.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4, help="honest clients (default 4)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--rss-band", type=int, default=64, help="MiB the RSS may move after warm-up")
    parser.add_argument("--fd-band", type=int, default=64, help="descriptors they may move after warm-up")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--chart", metavar="PNG")
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0
    today = datetime.date.today().isoformat()
    result = trio.run(soak, args)
    result.update(machine=machine(), date=today, minutes=args.minutes, command=" ".join(sys.argv))
    print(f"\nsoak, {args.minutes} min, {machine()}, {today}")
    print(f"  RSS after warm-up   {result['rss_min'] / 2**20:.1f} - {result['rss_max'] / 2**20:.1f} MiB")
    print(f"  descriptors         {result['fds_min']} - {result['fds_max']}")
    print(f"  honest calls        {result['calls']} ({result['calls_per_s_median']} calls/s median)")
    print(f"  failures, lost      {result['failures']}, {result['lost']}")
    for failure in result["first_failures"]:
        print(f"    {failure}")
    print("  PASSED" if result["passed"] else "  FAILED")
    results = HERE / "results"
    json_path = args.json or str(results / f"soak-{today}.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    chart(result["samples"], args.chart or str(results / f"soak-{today}.png"),
          f"bench/soak.py, {args.minutes} min, {today}, {machine()}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
