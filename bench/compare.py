"""trpc against gRPC for Python (grpcio, grpc.aio, grpclib) and a hand-written Trio loop.

    pip install '.[bench]'
    python bench/compare.py                      # full run: minutes; table, docs/compare.png
    python bench/compare.py --quick              # well under a minute; no chart unless --chart
    python bench/compare.py --json results.json  # also write one JSON object (--json alone: stdout)
    python bench/compare.py --systems trpc-c,grpc-aio --workloads w1,w3 --repeat 5

Four workloads, the same for every system, CBOR payloads everywhere (the gRPC peers use generic
handlers or a CBOR codec, no protobuf), and the serializer is the same for all: trpc's CBOR
codec (cbor2 behind a C fast path for plain values), which every peer imports
(``bench/peers/_common.py``), so the figures compare the frameworks, not their serializers:

- W1 unary latency: ``{"name": "Ada"}`` -> ``{"message": "Hello Ada"}``, one call in flight:
  calls/s, p50 and p99 latency.
- W2 unary throughput: the same call, 64 in flight on ONE connection/channel: calls/s.
- W3 server streaming: one call streaming 100,000 ``{"i": n}``: messages/s.
- W4 large payload: unary echo of 1 MiB of bytes, one in flight: MB/s (payload counted once per
  call, 1 MB = 10^6 bytes).
- W4z: W4 with a compressible payload, 1 MiB of text (``bench/peers/_common.py``), for the
  compressing trpc systems below (every system runs it; only those compress).

Systems (``--systems``; the peers are in ``bench/peers/``, each a script with ``serve`` and
``client`` commands):

- ``trpc-c``, ``trpc-py``: trpc with the C framer / the pure-Python framer.
- ``trpc-c-zlib``, ``trpc-c-zstd``: trpc-c with per-message compression on both sides
  (``compression=`` on the client and the server; zstd needs the zstandard package).
- ``grpcio-sync``: grpcio's synchronous API; server on a 16-thread pool; W2's 64 calls in flight
  are futures on one channel (``multicallable.future``), not threads.
- ``grpc-aio``: grpcio's asyncio API, the baseline of every ratio.
- ``grpclib``: the pure-Python gRPC on asyncio and h2.
- ``trio-raw``: a minimal hand-written Trio client/server, 4-byte length + 4-byte request id +
  CBOR, one reader task, one coalescing writer task, a task per request on the server: the
  realistic ceiling for any Trio framework.
- ``trio-raw-inline``: the same with unary handlers run inline in the server's reader loop (no
  task per request): a floor no framework with concurrent handlers can reach.

How it measures: for each repetition and each system (the order alternates, repetition by
repetition), the harness starts the system's server in a child process (it prints its port),
then runs each workload's client in another child process, which connects, warms up, measures
and prints one JSON line; the harness only waits.  Every answer is checked (``Hello Ada``, every
streamed item and their count, the echoed bytes).  Every measurement is bounded in time (W1, W2,
W4: ``--duration`` seconds after ``--warmup``; W3: ``--messages`` messages or ``--cap`` seconds,
whichever comes first, a capped stream being flagged), every child has a time limit, and every
child is stopped by the pid the harness started.  Loopback (127.0.0.1) only.

Each figure is the median of ``--repeat`` repetitions, with the min-max spread; ratios are to
grpc.aio's median (for latency: the system's p50 over grpc.aio's, lower is better).  The machine
is shared and noisy: compare ratios measured in one run.  Progress goes to stderr, the table to
stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from _machine import machine  # noqa: E402  (bench/ is the script's directory)

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
ROOT = HERE.parent
DEFAULT_CHART = ROOT / "docs" / "compare.png"
BASELINE = "grpc-aio"
WORKLOADS = ("w1", "w2", "w3", "w4", "w4z")
WORKLOAD_NAMES = {
    "w1": "W1 unary latency (1 in flight)",
    "w2": "W2 unary throughput (64 in flight, one connection)",
    "w3": "W3 server streaming",
    "w4": "W4 1 MiB echo",
    "w4z": "W4z 1 MiB echo, compressible text",
}
SERVER_START_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class System:
    label: str
    peer: str
    serve_args: tuple[str, ...] = ()
    client_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    #: The interpreter that runs the peer (default: this one); ``bench/channel.py`` gives the
    #: venv of an older commit's trpc here.
    python: str = ""


SYSTEMS: dict[str, System] = {
    "trpc-c": System(
        "trpc, C framer", "trpc_peer.py", ("--framer", "c"), ("--framer", "c"), (("TRPC_REQUIRE_C", "1"),)
    ),
    "trpc-py": System("trpc, Python framer", "trpc_peer.py", ("--framer", "python"), ("--framer", "python")),
    "trpc-c-zlib": System(
        "trpc, C framer, zlib both ways", "trpc_peer.py", ("--framer", "c", "--compression", "zlib"),
        ("--framer", "c", "--compression", "zlib"), (("TRPC_REQUIRE_C", "1"),),
    ),
    "trpc-c-zstd": System(
        "trpc, C framer, zstd both ways", "trpc_peer.py", ("--framer", "c", "--compression", "zstd"),
        ("--framer", "c", "--compression", "zstd"), (("TRPC_REQUIRE_C", "1"),),
    ),
    "grpcio-sync": System("grpcio sync (16-thread server; W2: 64 futures on one channel)", "grpc_sync_peer.py"),
    "grpc-aio": System("grpc.aio (baseline)", "grpc_aio_peer.py"),
    "grpclib": System("grpclib (CBOR codec)", "grpclib_peer.py"),
    "trio-raw": System("hand-written Trio, task per request", "trio_raw_peer.py", ("--mode", "task")),
    "trio-raw-inline": System("hand-written Trio, inline handlers", "trio_raw_peer.py", ("--mode", "inline")),
}


def default_systems() -> list[str]:
    """Every system, but trpc-c-zstd where the zstandard package is missing."""
    import importlib.util

    have_zstd = importlib.util.find_spec("zstandard") is not None
    return [name for name in SYSTEMS if have_zstd or name != "trpc-c-zstd"]


@dataclasses.dataclass(frozen=True)
class Metric:
    workload: str
    key: str
    title: str
    unit: str
    higher_is_better: bool
    #: trpc's target as a ratio to grpc.aio (a floor when higher is better, else a ceiling).
    target: float | None


METRICS = (
    Metric("w1", "calls_per_s", "W1 calls/s", "calls/s", True, 3.0),
    Metric("w1", "p50_us", "W1 p50", "us", False, 1 / 3),
    Metric("w1", "p99_us", "W1 p99", "us", False, None),
    Metric("w2", "calls_per_s", "W2 calls/s", "calls/s", True, 10.0),
    Metric("w3", "msgs_per_s", "W3 msgs/s", "msgs/s", True, 15.0),
    Metric("w4", "mb_per_s", "W4 MB/s", "MB/s", True, 1.5),
    Metric("w4z", "mb_per_s", "W4z MB/s", "MB/s", True, None),
)
TARGET_SYSTEMS = ("trpc-c", "trpc-py")


# ------------------------------------------------------------------------------ environment


def source_revision() -> str:
    """The commit of this checkout, ``+changes`` if trpc's sources differ from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "csrc", "setup.py", "build_ffi.py"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("+changes" if dirty else "")


def versions() -> dict[str, str]:
    """The versions of the packages measured, by import name (trpc's distribution is
    trpc-trio)."""
    found = {}
    for name, distribution in (("trpc", "trpc-trio"), ("trio", "trio"), ("cbor2", "cbor2"), ("grpcio", "grpcio"),
                               ("grpclib", "grpclib"), ("h2", "h2"), ("zstandard", "zstandard")):
        try:
            found[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


# ------------------------------------------------------------------------------ progress


class Progress:
    """One line per finished measurement on stderr (a live line while one runs, on a terminal)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()

    def _prefix(self) -> str:
        elapsed = time.monotonic() - self.started
        if self.done:
            left = elapsed / self.done * (self.total - self.done)
            eta = f", ~{_clock(left)} left"
        else:
            eta = ""
        return f"[{self.done:>3}/{self.total} {_clock(elapsed)}{eta}]"

    def running(self, text: str) -> None:
        if self.tty:
            sys.stderr.write(f"\r\033[K{self._prefix()} {text} ...")
            sys.stderr.flush()

    def finished(self, text: str) -> None:
        self.done += 1
        sys.stderr.write(("\r\033[K" if self.tty else "") + f"{self._prefix()} {text}\n")
        sys.stderr.flush()

    def note(self, text: str) -> None:
        sys.stderr.write(("\r\033[K" if self.tty else "") + text + "\n")
        sys.stderr.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


# ------------------------------------------------------------------------------ children


class ServerFailed(Exception):
    pass


class Server:
    """A system's server in a child process; ``address`` is what it printed."""

    def __init__(self, name: str, system: System) -> None:
        self.name = name
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [system.python or sys.executable, str(PEERS / system.peer), "serve", *system.serve_args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=PEERS,
            env=child_env(system),
        )
        try:
            self.address = self._read_address()
        except BaseException:
            self.stop()
            raise

    def _read_address(self) -> str:
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(SERVER_START_TIMEOUT):
                raise ServerFailed(f"{self.name}: the server printed nothing in {SERVER_START_TIMEOUT:g} s")
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.process.wait(timeout=5) if self.process.poll() is None else None
            raise ServerFailed(f"{self.name}: the server did not start: {line!r} {self.log_tail()}")
        return line.split()[2]

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 4) -> str:
        try:
            self.log.seek(0)
            return " | ".join(self.log.read().strip().splitlines()[-lines:])
        except (OSError, ValueError):
            return ""

    def stop(self) -> None:
        process = self.process
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()
        self.log.close()


def child_env(system: System) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRPC_FRAMER", None)  # each trpc peer names its framer
    env["PYTHONUNBUFFERED"] = "1"
    env.update(system.env)
    return env


def run_client(system: System, address: str, workload: str, settings: dict) -> dict:
    """Run one measurement in a child process; its JSON line, or {"ok": False, "error": ...}."""
    command = [
        system.python or sys.executable,
        str(PEERS / system.peer),
        "client",
        address,
        workload,
        *system.client_args,
        "--duration",
        str(settings["duration"]),
        "--warmup",
        str(settings["warmup"]),
        "--messages",
        str(settings["messages"]),
        "--cap",
        str(settings["cap"]),
    ]
    if workload == "w3":
        limit = 2 * settings["cap"] + 60
    else:
        limit = settings["warmup"] + settings["duration"] + 90
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=limit,
            cwd=PEERS,
            env=child_env(system),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:  # subprocess.run has killed the child
        return {"ok": False, "error": f"the client did not finish in {limit:g} s"}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = " | ".join(done.stderr.strip().splitlines()[-6:])
        return {"ok": False, "error": f"exit status {done.returncode}, no result line: {tail}"}
    if done.returncode != 0 and result.get("ok"):
        result = {"ok": False, "error": f"exit status {done.returncode}"}
    return result


# ------------------------------------------------------------------------------ formatting


def fmt(value: float | None) -> str:
    """Three significant digits, k/M suffixes: 906, 3.16k, 48.9k, 421k, 1.25M."""
    if value is None or value != value:
        return "-"
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            scaled = value / scale
            break
    else:
        scaled, suffix = value, ""
    if abs(scaled) >= 100:
        return f"{scaled:.0f}{suffix}"
    if abs(scaled) >= 10:
        return f"{scaled:.1f}{suffix}"
    return f"{scaled:.2f}{suffix}"


def fmt_ratio(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    if value >= 10:
        return f"{value:.0f}x"
    if value >= 1:
        return f"{value:.1f}x"
    return f"{value:.2f}x"


def describe(result: dict, workload: str) -> str:
    if not result.get("ok"):
        return f"FAILED: {result.get('error')}"
    if workload == "w1":
        return f"{fmt(result['calls_per_s'])} calls/s, p50 {fmt(result['p50_us'])} us, p99 {fmt(result['p99_us'])} us"
    if workload == "w2":
        return f"{fmt(result['calls_per_s'])} calls/s, p50 {fmt(result['p50_us'])} us"
    if workload == "w3":
        capped = f" (capped at {result['messages']:,} messages)" if result.get("capped") else ""
        return f"{fmt(result['msgs_per_s'])} msgs/s{capped}"
    return f"{fmt(result['mb_per_s'])} MB/s ({fmt(result['calls_per_s'])} calls/s)"


# ------------------------------------------------------------------------------ summary


def summarize(runs: dict, systems: list[str], workloads: list[str]) -> tuple[dict, dict]:
    """Per system and metric: median, min, max, the runs; ratios to the baseline's median."""
    summary: dict = {}
    for name in systems:
        summary[name] = {}
        for metric in METRICS:
            if metric.workload not in workloads:
                continue
            good = [r for r in runs[name][metric.workload] if r.get("ok")]
            values = [r[metric.key] for r in good]
            cell = {
                "median": statistics.median(values) if values else None,
                "min": min(values) if values else None,
                "max": max(values) if values else None,
                "runs": values,
                "failed": len(runs[name][metric.workload]) - len(good),
            }
            if metric.workload == "w3":
                cell["capped"] = sum(1 for r in good if r.get("capped"))
            summary[name][f"{metric.workload}_{metric.key}"] = cell
    ratios: dict = {}
    if BASELINE in summary:
        base = summary[BASELINE]
        for name in systems:
            ratios[name] = {}
            for key, cell in summary[name].items():
                b = base[key]["median"]
                ratios[name][key] = cell["median"] / b if cell["median"] is not None and b else None
    return summary, ratios


def print_table(out, summary: dict, ratios: dict, systems: list[str], workloads: list[str], info: dict) -> None:
    metrics = [m for m in METRICS if m.workload in workloads]
    s = info["settings"]
    w = lambda text, width: f"{text:>{width}}"  # noqa: E731
    print(file=out)
    print("trpc vs gRPC for Python: client and server in separate processes, loopback, CBOR everywhere", file=out)
    load = info.get("load_average")
    load_text = f"; load average {load['start']:.2f} at start, {load['end']:.2f} at end" if load else ""
    print(f"{info['machine']}; {info['date']}{load_text}", file=out)
    print(
        f"median [min-max] of {s['repeat']} repetition(s); W1, W2, W4: {s['duration']:g} s each after"
        f" {s['warmup']:g} s warm-up; W3: {s['messages']:,} messages (cap {s['cap']:g} s)",
        file=out,
    )
    print(file=out)
    name_width = max(len(n) for n in systems) + 2
    widths = [22 for _ in metrics]
    print(f"{'system':<{name_width}}" + "".join(w(f"{m.title} ({m.unit})" if m.unit == 'us' else m.title, wd) for m, wd in zip(metrics, widths)), file=out)
    for name in systems:
        row = f"{name:<{name_width}}"
        for metric, width in zip(metrics, widths):
            cell = summary[name][f"{metric.workload}_{metric.key}"]
            if cell["median"] is None:
                text = "FAILED"
            else:
                text = fmt(cell["median"])
                if len(cell["runs"]) > 1:
                    text += f" [{fmt(cell['min'])}-{fmt(cell['max'])}]"
                if cell.get("capped"):
                    text += "*"
            row += w(text, width)
        print(row, file=out)
    if any(summary[n].get("w3_msgs_per_s", {}).get("capped") for n in systems):
        print("* a W3 stream hit the time cap: the rate is over the messages received", file=out)
    if not ratios:
        print(f"\n(no ratios: {BASELINE} was not measured)", file=out)
        return
    print(f"\nratio to {BASELINE} (median over median; for p50/p99 lower is better)", file=out)
    print(f"{'system':<{name_width}}" + "".join(w(m.title, 13) for m in metrics), file=out)
    for name in systems:
        row = f"{name:<{name_width}}"
        for metric in metrics:
            row += w(fmt_ratio(ratios[name][f"{metric.workload}_{metric.key}"]), 13)
        print(row, file=out)
    targets = [m for m in metrics if m.target is not None]
    shown = [n for n in TARGET_SYSTEMS if n in systems]
    if shown and targets:
        print(
            f"\ntrpc's targets vs {BASELINE}: W1 calls/s >= 3x and p50 <= 1/3; W2 >= 10x; W3 >= 15x; W4 >= 1.5x",
            file=out,
        )
        for name in shown:
            parts = []
            for metric in targets:
                ratio = ratios[name][f"{metric.workload}_{metric.key}"]
                if ratio is None:
                    parts.append(f"{metric.title} -")
                    continue
                met = ratio >= metric.target if metric.higher_is_better else ratio <= metric.target
                goal = f">={fmt_ratio(metric.target)}" if metric.higher_is_better else f"<={fmt_ratio(metric.target)}"
                parts.append(f"{metric.title} {fmt_ratio(ratio)} ({goal}: {'met' if met else 'NOT met'})")
            print(f"  {name}: " + "; ".join(parts), file=out)
    print("\nsystems:", file=out)
    for name in systems:
        print(f"  {name:<{name_width}}{SYSTEMS[name].label}", file=out)


# ------------------------------------------------------------------------------ chart


def write_chart(path: Path, summary: dict, systems: list[str], workloads: list[str], info: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if m.workload in workloads and m.key != "p99_us"]
    shown = [n for n in systems if n != BASELINE]
    base = summary[BASELINE]
    fig, ax = plt.subplots(figsize=(13, 6.5), dpi=110)
    group_width = 0.84
    bar = group_width / max(1, len(shown))
    colors = {
        "trpc-c": "#1f5fbf",
        "trpc-py": "#6fa0e8",
        "trpc-c-zlib": "#173f7a",
        "trpc-c-zstd": "#3d2b8f",
        "grpcio-sync": "#b0b0b0",
        "grpclib": "#8c8c8c",
        "trio-raw": "#2e9e5b",
        "trio-raw-inline": "#a6d9b4",
    }
    values_seen = [1.0]
    for index, name in enumerate(shown):
        xs, heights, lows, highs = [], [], [], []
        for group, metric in enumerate(metrics):
            cell = summary[name][f"{metric.workload}_{metric.key}"]
            b = base[f"{metric.workload}_{metric.key}"]["median"]
            if cell["median"] is None or not b:
                continue
            if metric.higher_is_better:
                mid, lo, hi = cell["median"] / b, cell["min"] / b, cell["max"] / b
            else:  # latency: grpc.aio's over the system's, so that higher is better here too
                mid, lo, hi = b / cell["median"], b / cell["max"], b / cell["min"]
            xs.append(group - group_width / 2 + bar * (index + 0.5))
            heights.append(mid)
            lows.append(mid - lo)
            highs.append(hi - mid)
            values_seen += [lo, hi]
        bars = ax.bar(
            xs, heights, bar * 0.92, label=f"{name}: {SYSTEMS[name].label}", color=colors.get(name),
            yerr=[lows, highs], capsize=2, error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
        )
        for rect, height, high in zip(bars, heights, highs):
            ax.annotate(
                fmt_ratio(height), (rect.get_x() + rect.get_width() / 2, height + high), xytext=(0, 3),
                textcoords="offset points", ha="center", va="bottom", fontsize=7, rotation=90,
            )
    # trpc's targets, one dashed segment per group
    for group, metric in enumerate(metrics):
        if metric.target is None:
            continue
        target = metric.target if metric.higher_is_better else 1 / metric.target
        ax.hlines(target, group - group_width / 2, group + group_width / 2, colors="#d62728", linestyles="--",
                  linewidth=1.2, label="trpc's target" if group == 0 else None)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    top = max(values_seen) * 4
    bottom = min(min(values_seen) / 1.5, 0.5)
    ax.set_ylim(bottom, top)
    labels = []
    for metric in metrics:
        b = base[f"{metric.workload}_{metric.key}"]["median"]
        if metric.higher_is_better:
            labels.append(f"{metric.title}\n(grpc.aio: {fmt(b)} {metric.unit})")
        else:
            labels.append(f"W1 p50 latency, grpc.aio's / system's\n(grpc.aio: {fmt(b)} us)")
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(labels, fontsize=9)
    ax.set_ylabel(f"ratio to {BASELINE} (log scale; higher is better; 1 = {BASELINE})")
    repeat = info["settings"]["repeat"]
    runs = f"median of {repeat} runs, whiskers min-max" if repeat > 1 else "1 run"
    ax.set_title(
        f"trpc vs gRPC for Python: each system's figure over grpc.aio's ({runs})\n"
        f"{info['machine']}; measured {info['date']}",
        fontsize=10,
    )
    ax.grid(axis="y", which="both", alpha=0.25)
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------ main


def parse_list(text: str, allowed, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise SystemExit(f"compare.py: unknown {what} {', '.join(unknown) or text!r}; choose from {', '.join(allowed)}")
    return [item for item in allowed if item in items]  # canonical order


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="systems: " + ", ".join(SYSTEMS),
    )
    parser.add_argument("--quick", action="store_true",
                        help="reduced run, well under a minute: 0.5 s per measurement, 1 repetition, W3 10,000 messages")
    parser.add_argument("--repeat", type=int, help="repetitions (default 3; --quick 1)")
    parser.add_argument("--duration", type=float, help="seconds measured for W1, W2, W4 (default 3; --quick 0.5)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before W1, W2, W4 (default 1; --quick 0.2)")
    parser.add_argument("--messages", type=int, help="messages streamed in W3 (default 100,000; --quick 10,000)")
    parser.add_argument("--cap", type=float, help="time cap of a W3 stream, seconds (default 60; --quick 10)")
    parser.add_argument("--systems", default=",".join(default_systems()),
                        help="comma-separated subset (default: all; trpc-c-zstd only with zstandard installed)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of w1,w2,w3,w4,w4z")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="write one JSON object to PATH (no PATH: to stdout, and the table to stderr)")
    parser.add_argument("--chart", metavar="PNG",
                        help=f"write a bar chart of the ratios (default for a full run: {DEFAULT_CHART.relative_to(ROOT)})")
    parser.add_argument("--no-chart", action="store_true", help="write no chart")
    args = parser.parse_args(argv)

    quick = args.quick
    settings = {
        "repeat": args.repeat or (1 if quick else 3),
        "duration": args.duration or (0.5 if quick else 3.0),
        "warmup": args.warmup if args.warmup is not None else (0.2 if quick else 1.0),
        "messages": args.messages or (10_000 if quick else 100_000),
        "cap": args.cap or (10.0 if quick else 60.0),
        "quick": quick,
    }
    systems = parse_list(args.systems, list(SYSTEMS), "system")
    workloads = parse_list(args.workloads, list(WORKLOADS), "workload")
    chart = None
    if not args.no_chart:
        if args.chart:
            chart = Path(args.chart)
        elif not quick:
            chart = DEFAULT_CHART
    if chart is not None and BASELINE not in systems:
        print(f"compare.py: no chart without {BASELINE}, the baseline of the ratios", file=sys.stderr)
        chart = None

    info = {
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "versions": versions(),
        "source_revision": source_revision(),
        "settings": settings,
        "command": " ".join(["python bench/compare.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    runs: dict = {name: {w: [] for w in workloads} for name in systems}
    progress = Progress(settings["repeat"] * len(systems) * len(workloads))
    progress.note(
        f"compare.py: {len(systems)} systems x {len(workloads)} workloads x {settings['repeat']} repetition(s);"
        f" {info['machine']}"
    )
    failures = 0
    load_start = os.getloadavg()[0]  # 1-minute load: other work on the machine skews the figures
    for rep in range(settings["repeat"]):
        order = systems if rep % 2 == 0 else systems[::-1]
        for name in order:
            system = SYSTEMS[name]
            tag = f"rep {rep + 1}/{settings['repeat']} {name:<16}"
            try:
                server = Server(name, system)
            except ServerFailed as exc:
                for workload in workloads:
                    runs[name][workload].append({"ok": False, "error": str(exc)})
                    failures += 1
                    progress.finished(f"{tag} {workload.upper()}  FAILED: {exc}")
                continue
            try:
                for workload in workloads:
                    progress.running(f"{tag} {workload.upper()}")
                    if server.alive():
                        result = run_client(system, server.address, workload, settings)
                    else:
                        result = {"ok": False, "error": f"the server exited: {server.log_tail()}"}
                    if not result.get("ok"):
                        failures += 1
                    runs[name][workload].append(result)
                    progress.finished(f"{tag} {workload.upper()}  {describe(result, workload)}")
            finally:
                server.stop()

    info["load_average"] = {"start": load_start, "end": os.getloadavg()[0]}
    summary, ratios = summarize(runs, systems, workloads)
    document = {
        **info,
        "baseline": BASELINE,
        "systems": {name: SYSTEMS[name].label for name in systems},
        "workloads": {w: WORKLOAD_NAMES[w] for w in workloads},
        "results": summary,
        "ratios": ratios,
        "targets": {
            f"{m.workload}_{m.key}": {"ratio": m.target, "higher_is_better": m.higher_is_better}
            for m in METRICS if m.target is not None and m.workload in workloads
        },
        "errors": [
            {"system": name, "workload": w, "repetition": i + 1, "error": r.get("error")}
            for name in systems for w in workloads for i, r in enumerate(runs[name][w]) if not r.get("ok")
        ],
    }
    table_out = sys.stdout
    if args.json == "-":
        table_out = sys.stderr
        print(json.dumps(document), flush=True)
    elif args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        progress.note(f"wrote {path}")
    print_table(table_out, summary, ratios, systems, workloads, info)
    if chart is not None and ratios:
        write_chart(chart, summary, systems, workloads, info)
        progress.note(f"wrote {chart}")
    if failures:
        progress.note(f"compare.py: {failures} measurement(s) failed; see above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
