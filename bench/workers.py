"""``trpc serve --workers N``: W2 from several client processes against 1 and 2 workers.

    python bench/workers.py                          # workers 1 and 2, 8 connections, 2 client processes
    python bench/workers.py --workers 1,2 --connections 8 --client-processes 2 --duration 5 --repeat 3
    python bench/workers.py --json results.json

The workload is bench/compare.py's W2 (``{"name": "Ada"}`` -> ``{"message": "Hello Ada"}``, 64
calls in flight per connection, every answer checked; bench/peers/_common.py), over
``--connections`` connections (one ``trpc.open_client`` each) spread evenly over
``--client-processes`` processes, against ``trpc serve trpc_peer:Bench --workers N`` (the
service of bench/peers/trpc_peer.py, C framer).  The clients start together, warm up, and count
the calls answered within one wall-clock window that the harness chose for all of them.

Over that window the harness also reads, from /proc, the CPU time of every worker process and of
the supervisor, and each client reports its own: so the table gives the server's and the
clients' CPU per call, and the cores each side used.  On a machine whose cores the clients
share, the calls/s say how the cores were split, not what the server can do; the server's CPU
per call does not depend on that split, and gives the model: with K cores for workers alone
(clients elsewhere), K workers answer at most K / (CPU per call) calls/s, as the workers share
nothing but the kernel's listening sockets.  The model leaves out what one host cannot scale
for ever (memory bandwidth, the NIC, softirq time, which /proc charges to no worker): read it as
a ceiling.

Every child has a time limit and is stopped by the pid this harness started (the supervisor
drains its workers on SIGTERM).  Loopback only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import machine  # noqa: E402  (bench/ is the script's directory)
from compare import fmt, source_revision, versions  # noqa: E402

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
START_TIMEOUT = 30.0
#: Cores of the modelled hosts.
MODEL_CORES = (16, 64)


# ---------------------------------------------------------------------------- the client
def client_main(argv: list[str]) -> int:
    """One client process: ``--connections`` connections, W2 on each; prints one JSON line."""
    sys.path.insert(0, str(PEERS))
    import trio

    import _common
    import trpc

    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--start-at", type=float, required=True, help="time.time() of the window's start")
    parser.add_argument("--duration", type=float, required=True)
    args = parser.parse_args(argv)
    host, port = _common.parse_address(args.address)
    window_end = args.start_at + args.duration
    counted = [0]
    cpu: dict[str, float] = {}

    async def caller(client: trpc.Client) -> None:
        greet = client.greet
        while time.time() < window_end:
            reply = await greet(_common.GREET_REQUEST)
            _common.check_greet(reply)
            if args.start_at <= time.time() < window_end:
                counted[0] += 1

    async def window() -> None:
        await trio.sleep(max(0.0, args.start_at - time.time()))
        cpu["start"] = time.process_time()
        await trio.sleep(max(0.0, window_end - time.time()))
        cpu["end"] = time.process_time()

    async def main() -> None:
        async with trio.open_nursery() as clients:
            opened = []
            for _ in range(args.connections):
                opened.append(await clients.start(_hold_client, trpc, (host, port)))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(window)
                for client in opened:
                    for _ in range(_common.CONCURRENCY):
                        nursery.start_soon(caller, client)
            clients.cancel_scope.cancel()

    try:
        trio.run(main)
    except BaseException as exc:  # one line, whatever went wrong
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"ok": True, "calls": counted[0], "cpu_s": cpu["end"] - cpu["start"]}), flush=True)
    return 0


async def _hold_client(trpc, address, task_status):
    import trio

    async with trpc.open_client(address) as client:
        task_status.started(client)
        await trio.sleep_forever()


# ---------------------------------------------------------------------------- the harness
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/PID/stat), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(name))
    return found


def measure(workers: int, settings: dict) -> dict:
    """One run: a supervisor with ``workers`` workers, the client processes, the figures."""
    server = subprocess.Popen(
        [sys.executable, "-m", "trpc", "--framer", "c", "serve", "trpc_peer:Bench", "--port", "0",
         "--workers", str(workers), "--grace", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=PEERS,
        env={**os.environ, "TRPC_REQUIRE_C": "1"},
    )
    clients: list[subprocess.Popen] = []
    try:
        line = _read_line(server, START_TIMEOUT)
        if not line.startswith("listening on "):
            server.kill()
            return {"ok": False, "error": f"the server said {line!r}: {server.stderr.read()[-500:]}"}
        address = line.split()[2]
        worker_pids = children(server.pid)
        start_at = time.time() + 1.0 + settings["warmup"]  # the clients' start-up, then the warm-up
        per_process = _spread(settings["connections"], settings["client_processes"])
        for connections in per_process:
            clients.append(subprocess.Popen(
                [sys.executable, str(Path(__file__)), "client", address, "--connections", str(connections),
                 "--start-at", str(start_at), "--duration", str(settings["duration"])],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            ))
        time.sleep(max(0.0, start_at - time.time()))
        before = {pid: cpu_seconds(pid) for pid in [server.pid, *worker_pids]}
        time.sleep(max(0.0, start_at + settings["duration"] - time.time()))
        after = {pid: cpu_seconds(pid) for pid in before}
        results = []
        for client in clients:
            out, err = client.communicate(timeout=settings["duration"] + settings["warmup"] + 60)
            try:
                results.append(json.loads(out.strip().splitlines()[-1]))
            except (IndexError, ValueError):
                results.append({"ok": False, "error": f"no result: {err.strip()[-300:]}"})
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait(timeout=10)
        if server.poll() is None:
            server.terminate()  # the supervisor drains its workers
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
    failed = [r["error"] for r in results if not r.get("ok")]
    if failed:
        return {"ok": False, "error": "; ".join(failed)}
    calls = sum(r["calls"] for r in results)
    duration = settings["duration"]
    worker_cpu = sum(after[pid] - before[pid] for pid in worker_pids)
    client_cpu = sum(r["cpu_s"] for r in results)
    return {
        "ok": True,
        "workers": workers,
        "calls": calls,
        "calls_per_s": calls / duration,
        "worker_cpu_us_per_call": worker_cpu / calls * 1e6,
        "client_cpu_us_per_call": client_cpu / calls * 1e6,
        "worker_cores": worker_cpu / duration,
        "supervisor_cores": (after[server.pid] - before[server.pid]) / duration,
        "client_cores": client_cpu / duration,
        "per_worker_cores": [round((after[pid] - before[pid]) / duration, 3) for pid in worker_pids],
    }


def _spread(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts) if total // parts or index < total]


def _read_line(process: subprocess.Popen, seconds: float) -> str:
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(seconds):
            return f"(nothing in {seconds:g} s)"
    return process.stdout.readline().strip()


def main(argv: list[str]) -> int:
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--connections", type=int, default=8, help="client connections in all (default 8)")
    parser.add_argument("--client-processes", type=int, default=2, help="processes the connections are spread over")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up first (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each worker count, alternating (default 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as one JSON object")
    args = parser.parse_args(argv)
    counts = [int(text) for text in args.workers.split(",")]
    settings = {"connections": args.connections, "client_processes": args.client_processes,
                "duration": args.duration, "warmup": args.warmup, "repeat": args.repeat}
    runs: dict[int, list[dict]] = {count: [] for count in counts}
    load_start = os.getloadavg()[0]
    for rep in range(args.repeat):
        for count in counts if rep % 2 == 0 else counts[::-1]:
            result = measure(count, settings)
            runs[count].append(result)
            text = (f"{fmt(result['calls_per_s'])} calls/s; workers {result['worker_cores']:.2f} cores"
                    f" {result['per_worker_cores']}, clients {result['client_cores']:.2f}"
                    if result.get("ok") else f"FAILED: {result['error']}")
            print(f"[rep {rep + 1}/{args.repeat}] {count} worker(s): {text}", file=sys.stderr, flush=True)
    summary = {}
    for count, results in runs.items():
        good = [r for r in results if r.get("ok")]
        if not good:
            continue
        summary[count] = {key: statistics.median(r[key] for r in good) for key in
                          ("calls_per_s", "worker_cpu_us_per_call", "client_cpu_us_per_call", "worker_cores",
                           "client_cores", "supervisor_cores")}
    info = {
        "machine": machine(), "date": datetime.date.today().isoformat(), "versions": versions(),
        "source_revision": source_revision(), "settings": settings,
        "command": " ".join(["python bench/workers.py", *argv]),
        "load_average": {"start": load_start, "end": os.getloadavg()[0]},
    }
    print(f"\ntrpc serve --workers N: W2 (64 in flight per connection), {args.connections} connections over"
          f" {args.client_processes} client processes, loopback")
    print(f"{info['machine']}; {info['date']}; median of {args.repeat}; {args.duration:g} s each;"
          f" load average {load_start:.2f} at start")
    print(f"\n{'workers':>8}{'calls/s':>12}{'server CPU/call':>18}{'client CPU/call':>18}"
          f"{'server cores':>14}{'client cores':>14}")
    for count, cell in summary.items():
        print(f"{count:>8}{fmt(cell['calls_per_s']):>12}{cell['worker_cpu_us_per_call']:>15.1f} us"
              f"{cell['client_cpu_us_per_call']:>15.1f} us{cell['worker_cores']:>14.2f}{cell['client_cores']:>14.2f}")
    model = {}
    if summary:
        per_call = statistics.median(cell["worker_cpu_us_per_call"] for cell in summary.values()) / 1e6
        model = {cores: cores / per_call for cores in MODEL_CORES}
        print(f"\nmodel: K workers on K cores of their own, clients elsewhere, at {per_call * 1e6:.1f} us of"
              f" server CPU per call (median above): " + ", ".join(f"{k} cores ~{fmt(v)} calls/s" for k, v in model.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({**info, "runs": runs, "summary": summary, "model": model}, indent=1) + "\n")
    return 0 if all(r.get("ok") for results in runs.values() for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
