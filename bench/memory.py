"""Flow control keeps memory bounded: a server streams N MiB to a client that reads slowly.

    python bench/memory.py [--total-mib 1024] [--message-kib 64] [--framer c] [--json]

The server and the client run in two child processes of this script.  The server's handler
yields ``--message-kib`` byte messages as fast as it can; the client pauses 10 ms after every
4 MiB it reads, so the server always produces faster than the client consumes.  Each child
reports its resident memory before the stream (baseline) and its peak resident memory (VmHWM)
after it; the growth is what the stream cost.

The bound flow control promises, per side, for one stream: the stream window (2 MiB by default)
plus one message being sent or received, plus the socket buffers and the receive chunk: a few
MiB whatever the total.  tests/test_flow_control.py runs this with 256 MiB and checks the bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import trio

import trpc


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


class Firehose(trpc.Service):
    def __init__(self, done: trio.Event) -> None:
        self.done = done

    @trpc.server_stream
    async def stream(self, total: int, size: int):
        message = bytes(size)
        try:
            for _ in range(total // size):
                yield message
        finally:
            self.done.set()


async def serve(framer: str) -> None:
    done = trio.Event()
    server = trpc.Server(Firehose(done), framer=framer)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve_tcp, 0)
        print(json.dumps({"address": f"{host}:{port}", "baseline_kib": rss_kib("VmRSS")}), flush=True)
        await done.wait()
        await trio.sleep(0.2)
        print(json.dumps({"peak_kib": rss_kib("VmHWM")}), flush=True)
        nursery.cancel_scope.cancel()


async def client(address: str, framer: str, total: int, size: int) -> None:
    async with trpc.open_client(address, framer=framer) as c:
        baseline = rss_kib("VmRSS")
        received = 0
        since_pause = 0
        started = time.perf_counter()
        async for message in c.stream(total, size):
            received += len(message)
            since_pause += len(message)
            if since_pause >= 4 << 20:
                since_pause = 0
                await trio.sleep(0.01)  # the slow reader
        elapsed = time.perf_counter() - started
    print(json.dumps({
        "received": received, "seconds": elapsed, "baseline_kib": baseline, "peak_kib": rss_kib("VmHWM"),
    }), flush=True)


def run(total_mib: int, message_kib: int, framer: str, timeout: float = 300) -> dict:
    me = os.path.abspath(__file__)
    server = subprocess.Popen([sys.executable, me, "--role", "server", "--framer", framer],
                              stdout=subprocess.PIPE, text=True)
    try:
        hello = json.loads(server.stdout.readline())
        result = subprocess.run(
            [sys.executable, me, "--role", "client", "--framer", framer, "--address", hello["address"],
             "--total-mib", str(total_mib), "--message-kib", str(message_kib)],
            capture_output=True, text=True, timeout=timeout,
        )
        if result.returncode:
            raise RuntimeError(result.stderr)
        client_report = json.loads(result.stdout)
        server_report = json.loads(server.stdout.readline())
    finally:
        server.terminate()
        server.wait(timeout=10)
    total = total_mib << 20
    assert client_report["received"] == total - total % (message_kib << 10), client_report
    return {
        "framer": framer,
        "total_mib": total_mib,
        "message_kib": message_kib,
        "seconds": client_report["seconds"],
        "server_growth_mib": (server_report["peak_kib"] - hello["baseline_kib"]) / 1024,
        "client_growth_mib": (client_report["peak_kib"] - client_report["baseline_kib"]) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["harness", "server", "client"], default="harness")
    parser.add_argument("--framer", default="c")
    parser.add_argument("--address")
    parser.add_argument("--total-mib", type=int, default=1024)
    parser.add_argument("--message-kib", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.role == "server":
        trio.run(serve, args.framer)
        return
    if args.role == "client":
        trio.run(client, args.address, args.framer, args.total_mib << 20, args.message_kib << 10)
        return
    report = run(args.total_mib, args.message_kib, args.framer)
    if args.json:
        print(json.dumps(report))
        return
    print(f"{report['total_mib']} MiB streamed in {report['message_kib']} KiB messages to a slow reader "
          f"({report['framer']} framer) in {report['seconds']:.1f} s "
          f"({report['total_mib'] / report['seconds']:.0f} MiB/s)")
    print(f"peak RSS growth: server {report['server_growth_mib']:.1f} MiB, client {report['client_growth_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
