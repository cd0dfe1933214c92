"""The channel client against the single-connection client it replaced, and over two backends.

    python bench/channel.py                              # about 3 minutes; table on stdout
    python bench/channel.py --repeat 5 --json results.json
    python bench/channel.py --baseline-commit 01ba428    # the client of another commit
    python bench/channel.py --parts backends             # or single; --instructions adds callgrind

Three parts, each with the workloads and the peer of ``bench/compare.py`` (``peers/trpc_peer.py``,
C framer), server and clients in separate processes on loopback:

- ``single``: W1 (one call in flight: calls/s, p50, p99) and W2 (64 in flight: calls/s) through
  a one-address channel (this tree) and through the client of ``--baseline-commit`` (default
  01ba428, the last commit before channels: one connection, no balancer), against the same
  server process of this tree.  Per repetition one server; the two clients take turns, the
  order flipped every repetition.  Ratios are channel over baseline, of the medians.
- ``backends``: W2 through one channel to two server processes (``"127.0.0.1:p1,127.0.0.1:p2"``)
  with ``pick_first`` (all calls to one backend: the reference), ``round_robin`` and
  ``least_loaded``, the order rotated every repetition.  Each server counts the calls it
  answers (``serve --count-calls``) and the client reads the counts around its measurement, so
  the table shows how the measured calls split.  The harness also reads the CPU time of the
  three processes over each client run (the servers' from ``/proc/PID/stat``, the client's from
  ``getrusage(RUSAGE_CHILDREN)``) and shows it as cores in use: on a 2-core machine the client
  and the two servers share them.
- ``--instructions`` (off by default; minutes): the client's instructions per unary call,
  baseline and this tree, under callgrind: ``bench/percall.py --side client`` (64 in flight,
  a raw server in the same process) at two call counts, the difference of the totals over the
  difference of the counts, so start-up and warm-up cancel out.

The baseline client: ``git archive`` of the commit, a venv with it installed
(``TRPC_REQUIRE_C=1 pip install``), made once and kept in ``bench/.baseline/<commit>/``
(git-ignored; delete the folder to make it again).  That venv's Python runs this tree's peer
script, so only the trpc package differs; every result names the package that ran, and a run
that imported the wrong one counts as failed.

Bounded: every measurement is ``--warmup`` + ``--duration`` seconds with a time limit on its
process, ``--repeat`` is at most 20, every child is stopped by the pid the harness started.
Progress goes to stderr, the table to stdout; ``--json PATH`` writes one JSON object.  The
machine is shared and noisy: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _machine import machine  # noqa: E402  (bench/ is the script's directory)
from compare import (
    ROOT,
    Progress,
    Server,
    ServerFailed,
    System,
    fmt,
    run_client,
    source_revision,
    versions,
)

HERE = Path(__file__).resolve().parent
BASELINE_HOME = HERE / ".baseline"
DEFAULT_BASELINE = "01ba428"
POLICIES = ("pick_first", "round_robin", "least_loaded")
PARTS = ("single", "backends")
MAX_REPEAT = 20
#: Time limits of the baseline's preparation (a venv and a build of the C extensions).
VENV_TIMEOUT = 300
INSTALL_TIMEOUT = 900
#: Call counts of the two callgrind runs (``--instructions``); their difference is what counts.
CALLGRIND_CALLS = (2_000, 6_000)
#: Calls in flight in the callgrind runs: W2's 64, and W1's one (a lone call's direct write).
CALLGRIND_CONCURRENCY = (64, 1)
CALLGRIND_TIMEOUT = 1800

SERVER = System("trpc server (this tree)", "trpc_peer.py", ("--framer", "c"), (), (("TRPC_REQUIRE_C", "1"),))
COUNTING_SERVER = System(
    "trpc server counting its calls", "trpc_peer.py", ("--framer", "c", "--count-calls"), (),
    (("TRPC_REQUIRE_C", "1"),),
)


def client_system(label: str, python: str = "", *extra: str) -> System:
    return System(label, "trpc_peer.py", (), ("--framer", "c", *extra), (("TRPC_REQUIRE_C", "1"),), python)


# ------------------------------------------------------------------------------ the baseline


def prepare_baseline(commit: str) -> tuple[str, str]:
    """The Python of a venv with ``commit``'s trpc installed (made once), and the full hash."""
    try:
        full = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{commit}^{{commit}}"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
    except subprocess.CalledProcessError:
        raise SystemExit(f"channel.py: {commit!r} is not a commit of this repository") from None
    home = BASELINE_HOME / full[:12]
    python = home / "venv" / "bin" / "python"
    stamp = home / "installed"
    if stamp.exists() and python.exists():
        return str(python), full
    if home.exists():  # an earlier attempt stopped half-way
        shutil.rmtree(home)
    print(f"channel.py: preparing the baseline {full[:12]} in {home} (once; a minute or two)", file=sys.stderr)
    source = home / "src"
    source.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", full], capture_output=True, timeout=120, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True, timeout=VENV_TIMEOUT)
    env = {**os.environ, "TRPC_REQUIRE_C": "1"}
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(source)],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env, cwd=home,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-10:])
        raise SystemExit(f"channel.py: installing {full[:12]} failed:\n{tail}")
    check = subprocess.run(
        [str(python), "-c", "import trpc, trpc._framer_c; print(trpc.__file__)"],
        capture_output=True, text=True, timeout=60, env=env, cwd=home,
    )
    if check.returncode != 0 or not check.stdout.strip().startswith(str(home / "venv")):
        raise SystemExit(f"channel.py: the baseline venv does not import its own trpc: {check.stdout}{check.stderr}")
    stamp.write_text(full + "\n", encoding="utf-8")
    return str(python), full


def check_package(result: dict, expected: Path) -> dict:
    """A result whose trpc came from elsewhere than ``expected`` is a failure."""
    if result.get("ok") and not Path(result.get("trpc_path", "")).is_relative_to(expected):
        return {"ok": False, "error": f"ran trpc from {result.get('trpc_path')}, not from {expected}"}
    return result


# ------------------------------------------------------------------------------ CPU accounting


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------------ the parts


def run_single(settings: dict, baseline_python: str, baseline_commit: str, progress: Progress) -> dict:
    """W1 and W2: the baseline client and the channel, in turns, against one server."""
    clients = {
        "baseline": (client_system(f"client of {baseline_commit[:7]}", baseline_python),
                     Path(baseline_python).parent.parent),
        "channel": (client_system("one-address channel (this tree)"), ROOT / "src"),
    }
    runs: dict = {name: {"w1": [], "w2": []} for name in clients}
    for rep in range(settings["repeat"]):
        order = list(clients) if rep % 2 == 0 else list(clients)[::-1]
        try:
            server = Server("server", SERVER)
        except ServerFailed as exc:
            for name in clients:
                for workload in ("w1", "w2"):
                    runs[name][workload].append({"ok": False, "error": str(exc)})
                    progress.finished(f"rep {rep + 1} {name:<9} {workload.upper()}  FAILED: {exc}")
            continue
        try:
            for workload in ("w1", "w2"):
                for name in order:
                    system, home = clients[name]
                    progress.running(f"rep {rep + 1} {name:<9} {workload.upper()}")
                    result = check_package(run_client(system, server.address, workload, settings), home)
                    runs[name][workload].append(result)
                    progress.finished(f"rep {rep + 1} {name:<9} {workload.upper()}  {describe(result)}")
        finally:
            server.stop()
    return runs


def run_backends(settings: dict, progress: Progress) -> dict:
    """W2 over one channel to two servers, per balancer, with the split and the CPU used."""
    runs: dict = {policy: [] for policy in POLICIES}
    for rep in range(settings["repeat"]):
        shift = rep % len(POLICIES)
        order = POLICIES[shift:] + POLICIES[:shift]
        servers: list[Server] = []
        try:
            for index in range(2):
                servers.append(Server(f"backend {index + 1}", COUNTING_SERVER))
        except ServerFailed as exc:
            for server in servers:
                server.stop()
            for policy in POLICIES:
                runs[policy].append({"ok": False, "error": str(exc)})
                progress.finished(f"rep {rep + 1} {policy:<12} W2  FAILED: {exc}")
            continue
        try:
            target = ",".join(server.address for server in servers)
            for policy in order:
                system = client_system(f"channel, {policy}", "", "--load-balancing", policy)
                progress.running(f"rep {rep + 1} {policy:<12} W2")
                servers_before = [process_cpu(server.process.pid) for server in servers]
                client_before, started = children_cpu(), time.monotonic()
                result = run_client(system, target, "w2", settings)
                wall = time.monotonic() - started
                client_cpu = children_cpu() - client_before
                servers_cpu = [process_cpu(s.process.pid) - b for s, b in zip(servers, servers_before)]
                result = check_package(result, ROOT / "src")
                if result.get("ok"):
                    total = sum(b["calls"] for b in result["backends"])
                    result["share_first"] = result["backends"][0]["calls"] / total if total else None
                    result["cores"] = {
                        "wall_s": wall,
                        "client": client_cpu / wall,
                        "servers": [cpu / wall for cpu in servers_cpu],
                    }
                runs[policy].append(result)
                progress.finished(f"rep {rep + 1} {policy:<12} W2  {describe(result)}")
        finally:
            for server in servers:
                server.stop()
    return runs


def describe(result: dict) -> str:
    if not result.get("ok"):
        return f"FAILED: {result.get('error')}"
    text = f"{fmt(result['calls_per_s'])} calls/s, p50 {fmt(result['p50_us'])} us"
    if "backends" in result:
        calls = "/".join(str(b["calls"]) for b in result["backends"])
        cores = result["cores"]
        text += (f", calls per backend {calls}, cores: client {cores['client']:.2f},"
                 f" servers {' + '.join(f'{c:.2f}' for c in cores['servers'])}")
    return text


def count_instructions(python: str, calls: int, concurrency: int) -> tuple[int, int]:
    """Instructions of one ``percall.py --side client`` run under callgrind, and the calls it
    made (warm-up included)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": "0", "TRPC_REQUIRE_C": "1"}
        env.pop("TRPC_FRAMER", None)
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, str(HERE / "percall.py"),
             "--side", "client", "--calls", str(calls), "--concurrency", str(concurrency), "--repeat", "1",
             "--json"],
            capture_output=True, text=True, timeout=CALLGRIND_TIMEOUT, env=env, cwd=HERE,
        )
        if done.returncode != 0:
            raise SystemExit(f"channel.py: callgrind run failed: {done.stderr.strip().splitlines()[-3:]}")
        made = json.loads(done.stdout.strip().splitlines()[-1])["results"]["client"]["calls_made"]
        totals = None
        for line in out.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(("totals:", "summary:")):
                totals = int(line.split()[1])
        if totals is None:
            raise SystemExit("channel.py: no instruction total in the callgrind output")
        return totals, made


def run_instructions(builds: dict[str, str], progress: Progress) -> dict:
    """Instructions per client call, per concurrency and build: (total_b - total_a) / (calls_b -
    calls_a) of two runs."""
    found: dict = {}
    for concurrency in CALLGRIND_CONCURRENCY:
        row = found[str(concurrency)] = {}
        for name, python in builds.items():
            progress.running(f"callgrind {name}, {concurrency} in flight")
            (small, n_small), (large, n_large) = (
                count_instructions(python, calls, concurrency) for calls in CALLGRIND_CALLS
            )
            row[name] = {"per_call": (large - small) / (n_large - n_small), "totals": [small, large],
                         "calls": [n_small, n_large]}
            progress.finished(f"callgrind {name}, {concurrency} in flight:"
                              f" {row[name]['per_call'] / 1000:.1f}k instructions per call")
        row["ratio"] = row["channel"]["per_call"] / row["baseline"]["per_call"]
    return found


# ------------------------------------------------------------------------------ summary


def cell(results: list[dict], key: str) -> dict:
    values = [r[key] for r in results if r.get("ok") and r.get(key) is not None]
    return {
        "median": statistics.median(values) if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "runs": values,
        "failed": sum(1 for r in results if not r.get("ok")),
    }


def ratio(a: dict, b: dict) -> float | None:
    return a["median"] / b["median"] if a["median"] is not None and b["median"] else None


def summarize(single: dict | None, backends: dict | None, instructions: dict | None) -> dict:
    summary: dict = {}
    if single is not None:
        table = {
            name: {
                "w1_calls_per_s": cell(runs["w1"], "calls_per_s"),
                "w1_p50_us": cell(runs["w1"], "p50_us"),
                "w1_p99_us": cell(runs["w1"], "p99_us"),
                "w2_calls_per_s": cell(runs["w2"], "calls_per_s"),
            }
            for name, runs in single.items()
        }
        summary["single"] = {
            "results": table,
            "ratios": {key: ratio(table["channel"][key], table["baseline"][key]) for key in table["channel"]},
        }
    if backends is not None:
        table = {}
        for policy, runs in backends.items():
            good = [r for r in runs if r.get("ok")]
            table[policy] = {
                "w2_calls_per_s": cell(runs, "calls_per_s"),
                "share_first": cell(runs, "share_first"),
                "cores_client": cell([{"ok": True, "v": r["cores"]["client"]} for r in good], "v"),
                "cores_servers": cell([{"ok": True, "v": sum(r["cores"]["servers"])} for r in good], "v"),
            }
        summary["backends"] = {"results": table}
    if instructions is not None:
        summary["instructions"] = instructions
    return summary


def spread(c: dict, text=fmt) -> str:
    if c["median"] is None:
        return "FAILED"
    if len(c["runs"]) > 1:
        return f"{text(c['median'])} [{text(c['min'])}-{text(c['max'])}]"
    return text(c["median"])


def percent(value: float | None) -> str:
    return "-" if value is None else f"{(value - 1) * 100:+.1f}%"


def print_table(out, summary: dict, info: dict) -> None:
    s = info["settings"]
    print(file=out)
    print("trpc's channel client against the single-connection client; W2 over two backends", file=out)
    load = info["load_average"]
    print(f"{info['machine']}; {info['date']}; load average {load['start']:.2f} at start, {load['end']:.2f} at end",
          file=out)
    print(f"this tree {info['source_revision']}; baseline {info['baseline_commit'][:7] or '-'}", file=out)
    if "single" in summary or "backends" in summary:
        print(f"median [min-max] of {s['repeat']} repetition(s), {s['duration']:g} s each after {s['warmup']:g} s"
              " of warm-up", file=out)
    if "single" in summary:
        part = summary["single"]
        rows = (("w1_calls_per_s", "W1 calls/s"), ("w1_p50_us", "W1 p50 us"), ("w1_p99_us", "W1 p99 us"),
                ("w2_calls_per_s", "W2 calls/s"))
        print(f"\none server; client of {info['baseline_commit'][:7]} against a one-address channel", file=out)
        print(f"{'':<14}{'baseline':>24}{'channel':>24}{'channel/baseline':>18}", file=out)
        for key, title in rows:
            print(f"{title:<14}{spread(part['results']['baseline'][key]):>24}"
                  f"{spread(part['results']['channel'][key]):>24}{percent(part['ratios'][key]):>18}", file=out)
    if "backends" in summary:
        part = summary["backends"]
        print("\nW2 (64 in flight) through one channel to two server processes", file=out)
        print(f"{'balancer':<14}{'calls/s':>24}{'share of backend 1':>22}{'cores: client':>16}{'servers':>10}",
              file=out)
        for policy, row in part["results"].items():
            share = spread(row["share_first"], lambda v: f"{v * 100:.0f}%")
            cores = [row[key]["median"] for key in ("cores_client", "cores_servers")]
            print(f"{policy:<14}{spread(row['w2_calls_per_s']):>24}{share:>22}"
                  + "".join(f"{'-' if v is None else f'{v:.2f}':>{w}}" for v, w in zip(cores, (16, 10))), file=out)
        print("(cores: CPU seconds over the client process's lifetime, start-up and warm-up included;"
              " servers: both together)", file=out)
    if "instructions" in summary:
        print("\nclient instructions per unary call (callgrind, percall.py --side client, raw server)", file=out)
        for concurrency, row in summary["instructions"].items():
            print(f"{concurrency:>3} in flight: baseline {row['baseline']['per_call'] / 1000:.1f}k,"
                  f" channel {row['channel']['per_call'] / 1000:.1f}k ({percent(row['ratio'])})", file=out)


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help=f"repetitions (default 3, at most {MAX_REPEAT})")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per run (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up first (default 1)")
    parser.add_argument("--baseline-commit", default=DEFAULT_BASELINE,
                        help=f"the commit whose client is the baseline (default {DEFAULT_BASELINE})")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated subset of single,backends (empty: only --instructions)")
    parser.add_argument("--instructions", action="store_true",
                        help="also count the client's instructions per call under callgrind (minutes)")
    parser.add_argument("--json", metavar="PATH", help="write one JSON object to PATH")
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= MAX_REPEAT:
        parser.error(f"--repeat must be between 1 and {MAX_REPEAT}")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    if any(part not in PARTS for part in parts) or not (parts or args.instructions):
        parser.error(f"--parts: choose from {', '.join(PARTS)} (none: only with --instructions)")
    if args.instructions and shutil.which("valgrind") is None:
        parser.error("--instructions needs valgrind (apt-get install valgrind)")

    settings = {"repeat": args.repeat, "duration": args.duration, "warmup": args.warmup,
                "messages": 0, "cap": 0.0}  # messages and cap: W3's, unused here
    total = args.repeat * ((4 if "single" in parts else 0) + (len(POLICIES) if "backends" in parts else 0))
    baseline_python, baseline_commit = "", ""
    if "single" in parts or args.instructions:
        baseline_python, baseline_commit = prepare_baseline(args.baseline_commit)
    progress = Progress(total + (2 * len(CALLGRIND_CONCURRENCY) if args.instructions else 0))
    info = {
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "versions": versions(),
        "source_revision": source_revision(),
        "baseline_commit": baseline_commit,
        "settings": settings,
        "cpu_count": os.cpu_count(),
        "command": " ".join(["python bench/channel.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    load_start = os.getloadavg()[0]
    single = run_single(settings, baseline_python, baseline_commit, progress) if "single" in parts else None
    backends = run_backends(settings, progress) if "backends" in parts else None
    instructions = None
    if args.instructions:
        instructions = run_instructions({"baseline": baseline_python, "channel": sys.executable}, progress)
    info["load_average"] = {"start": load_start, "end": os.getloadavg()[0]}
    summary = summarize(single, backends, instructions)
    failures = [
        {"part": part, "name": name, "error": r.get("error")}
        for part, runs in (("single", single), ("backends", backends)) if runs
        for name, value in runs.items()
        for r in (value if isinstance(value, list) else [x for w in value.values() for x in w])
        if not r.get("ok")
    ]
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {**info, "summary": summary, "runs": {"single": single, "backends": backends}, "errors": failures}
        path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        progress.note(f"wrote {path}")
    print_table(sys.stdout, summary, info)
    if failures:
        progress.note(f"channel.py: {len(failures)} measurement(s) failed; see above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
