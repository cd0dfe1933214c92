"""A channel that outlives its servers (issue 11), against real server processes.

Each backend is a ``python -m trpc serve tests.chproc_service:Recorder`` process; the client
channel runs in the test process (in a network namespace of its own, in a subprocess, for the
test whose backends are separate hosts).  Every call carries a unique id, and the servers record
each run of each call in a file (tests/chproc_service.py), so the tests count from the servers'
side how many times every call ran: a non-idempotent call may run once at most, whatever
happened to its server.  The load is tests/chproc_client.py: callers that alternate the
idempotent ``read`` and the non-idempotent ``write`` back to back.

The tests:

- one of three backends is SIGKILLed under load: no idempotent call fails, non-idempotent ones
  fail only with UNAVAILABLE, none runs twice, and the balancer never picks a lost connection;
- the three backends are restarted one after the other (SIGTERM: ``trpc serve`` shuts down
  gracefully, then a new process on the same port): no call fails at all;
- no backend is up when the client opens: calls that wait for ready succeed once one comes up,
  calls that do not fail at once with UNAVAILABLE naming the connection error;
- three hosts (network namespaces joined by a bridge) and one loses its link: keepalive notices,
  and the calls move to the others without a failed idempotent call.

They run with both framers (the servers and the client take ``TRPC_FRAMER`` from the ``framer``
fixture): the framer decides how the connections that break here are read.  Real processes
and real time: nothing here can use ``autojump_clock``; every wait is bounded, and every
process a test starts is killed by its pid and waited for when the test ends.  The connection
backoff is shortened (``baseDelay`` 0.1 s instead of 1 s) where a test waits for reconnects,
so that the file runs in seconds.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import pytest
import trio

import trpc
from trpc import RpcError, Status

from .chproc_client import Load
from .chproc_service import RECORDS_VARIABLE, Record

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "tests.chproc_service:Recorder"
#: Reconnect soon after a backend went away (gRPC's default first backoff is 1 s).
FAST_BACKOFF = {"connectionBackoff": {"baseDelay": "0.1s", "maxDelay": "0.5s"}}


class Backend:
    """One ``trpc serve`` process, listening on ``host``:``port``."""

    def __init__(self, process: trio.Process, host: str, port: int, log: Path) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class Processes:
    """Starts processes and, on exit, SIGKILLs by its pid each one still running and waits for it."""

    def __init__(self, directory: Path, records: Path) -> None:
        self.directory = directory
        self.records = records
        self.started: list[trio.Process] = []
        self._unread: dict[trio.Process, bytes] = {}

    def _env(self) -> dict[str, str]:
        return {**os.environ, RECORDS_VARIABLE: str(self.records)}

    async def serve(self, host: str = "127.0.0.1", port: int = 0, *, netns: str | None = None,
                    options: tuple[str, ...] = ()) -> Backend:
        """Start a backend and wait (10 s at most) for its ``listening on HOST:PORT`` line."""
        log = self.directory / f"server-{len(self.started)}.log"
        command = [sys.executable, "-m", "trpc", "serve", SERVICE, "--host", host, "--port", str(port),
                   "--grace", "5", *options]
        if netns is not None:
            command = ["ip", "netns", "exec", netns, *command]
        with open(log, "wb") as stderr:
            process = await trio.lowlevel.open_process(
                command, stdout=subprocess.PIPE, stderr=stderr, env=self._env(), cwd=ROOT
            )
        self.started.append(process)
        line = await self.read_line(process, 10)
        if not line.startswith("listening on "):
            raise AssertionError(f"the server said {line!r}; its log: {log.read_text()}")
        where = line.split()[2]
        return Backend(process, host, int(where.rpartition(":")[2]), log)

    async def run(self, command: list[str]) -> tuple[trio.Process, Path]:
        """Start ``command`` with pipes for its standard input and output; its log file."""
        log = self.directory / f"process-{len(self.started)}.log"
        with open(log, "wb") as stderr:
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=self._env(), cwd=ROOT
            )
        self.started.append(process)
        return process, log

    async def read_line(self, process: trio.Process, seconds: float) -> str:
        """The next line of the process's standard output (bounded in time and size); what
        came after it in the same read is kept for the next call."""
        data = self._unread.pop(process, b"")
        with trio.fail_after(seconds):
            while b"\n" not in data:
                chunk = await process.stdout.receive_some()
                if not chunk:
                    break
                data += chunk
                if len(data) > 10_000_000:
                    raise AssertionError("no end of line in 10 MB of output")
        line, _, rest = data.partition(b"\n")
        if rest:
            self._unread[process] = rest
        return line.decode().strip()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for process in self.started:
                if process.returncode is None:
                    process.kill()
                with trio.move_on_after(10):
                    await process.wait()
                for stream in (process.stdin, process.stdout):
                    if stream is not None:
                        await stream.aclose()


@asynccontextmanager
async def processes(tmp_path: Path) -> AsyncIterator[Processes]:
    started = Processes(tmp_path, tmp_path / "records")
    try:
        yield started
    finally:
        await started.aclose()


async def serve_several(started: Processes, count: int, **kwargs) -> list[Backend]:
    """``count`` backends, started side by side."""
    backends: list[Backend] = []

    async def one() -> None:
        backends.append(await started.serve(**kwargs))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return backends


async def wait_for_record(records: Path, predicate, seconds: float, what: str) -> Record:
    """Read the records until ``predicate(record)`` holds (polls every 10 ms, for ``seconds``)."""
    deadline = trio.current_time() + seconds
    while True:
        record = Record(records)
        if predicate(record):
            return record
        if trio.current_time() > deadline:
            raise AssertionError(f"not seen within {seconds} s: {what}")
        await trio.sleep(0.01)


def watch_picks(client: trpc.Client) -> list[tuple[float, str, bool]]:
    """Note every connection the balancer picks: (time, peer, whether it could take calls then)."""
    channel = client._channel
    pick = channel.pick
    picks: list[tuple[float, str, bool]] = []

    def watched():
        connection = pick()
        if connection is not None:
            picks.append((trio.current_time(), connection.peer, connection.usable and connection.broken is None))
        return connection

    channel.pick = watched
    return picks


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_writes_ran_at_most_once(load: Load, record: Record) -> None:
    """No write ran twice; each one that succeeded ran exactly once, where it said."""
    for outcome in load.outcomes:
        if outcome.method != "write":
            continue
        runs = record.runs.get(("write", outcome.call_id), [])
        assert len(runs) <= 1, f"write {outcome.call_id} ran {len(runs)} times: {runs}"
        if outcome.pid is not None:
            assert [pid for pid, _attempt in runs] == [outcome.pid], (outcome, runs)


# ---------------------------------------------------------------------------- the tests
async def test_a_backend_killed_under_load_fails_no_idempotent_call_and_runs_no_call_twice(tmp_path):
    async with processes(tmp_path) as started:
        backends = await serve_several(started, 3)
        victim = backends[0]
        with trio.fail_after(30):
            async with trpc.open_client([b.address for b in backends], load_balancing="round_robin") as client:
                picks = watch_picks(client)
                load = Load(client, callers=8, seconds=0.03)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(load.run, 10)
                    await trio.sleep(0.5)  # every backend has answered calls by now
                    # Kill it while it runs a call of each kind (the handlers sleep 30 ms).
                    await wait_for_record(
                        started.records,
                        lambda r: {m for m, _ in r.running_on(victim.pid)} == {"read", "write"},
                        5,
                        "the victim running a read and a write",
                    )
                    victim.process.kill()
                    await victim.process.wait()
                    killed_at = trio.current_time()
                    await trio.sleep(1.5)
                    load.stop.set()
                ready_peers = {connection.peer for connection in client._channel.ready}

    record = Record(started.records)
    interrupted = record.running_on(victim.pid)
    assert {method for method, _ in interrupted} == {"read", "write"}
    outcomes = {(o.method, o.call_id): o for o in load.outcomes}
    for key in interrupted:
        if key[0] == "read":
            # Retried on another backend, as its second attempt (or later), and answered there.
            assert outcomes[key].pid not in (None, victim.pid), outcomes[key]
            assert any(pid != victim.pid and attempt >= 2 for pid, attempt in record.runs[key]), record.runs[key]
        else:
            assert outcomes[key].status == "UNAVAILABLE", outcomes[key]

    assert load.failures("read") == []
    assert {o.status for o in load.failures("write")} <= {"UNAVAILABLE"}
    assert len(load.failures("write")) <= load.callers  # only calls that were on the lost connection
    check_writes_ran_at_most_once(load, record)
    assert len(load.outcomes) > 100
    assert load.answered_by() == {b.pid for b in backends}

    # The balancer never handed out a connection that could not take calls, and nothing went to
    # the dead backend once the loss was seen (1 s is ample on loopback) or at the end.
    assert all(usable for _when, _peer, usable in picks), [p for p in picks if not p[2]][:5]
    assert [p for p in picks if p[1] == victim.address and p[0] > killed_at + 1.0] == []
    assert ready_peers == {b.address for b in backends[1:]}


async def test_a_rolling_restart_of_every_backend_under_load_fails_no_call(tmp_path):
    async with processes(tmp_path) as started:
        backends = await serve_several(started, 3)
        with trio.fail_after(40):
            async with trpc.open_client(
                [b.address for b in backends], load_balancing="round_robin", config=FAST_BACKOFF
            ) as client:
                load = Load(client, callers=8, seconds=0.02)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(load.run, 30)
                    await trio.sleep(0.3)
                    old_pids = [b.pid for b in backends]
                    for index, old in enumerate(list(backends)):
                        old.process.send_signal(signal.SIGTERM)
                        with trio.fail_after(10):
                            await old.process.wait()
                        assert old.process.returncode == 0, old.log.read_text()
                        new = await started.serve(port=old.port)
                        backends[index] = new
                        # The channel found it again before the next backend goes down.
                        await wait_for_record(
                            started.records, lambda r: new.pid in r.pids(), 5, f"a call on the new backend {index}"
                        )
                    await trio.sleep(0.2)
                    load.stop.set()

    assert load.failures("read") == [] and load.failures("write") == []
    record = Record(started.records)
    check_writes_ran_at_most_once(load, record)
    # Each old process drained: every call it began, it finished.
    assert all(record.running_on(pid) == [] for pid in old_pids)
    # Every backend, old and new, answered.
    assert len(load.answered_by()) == 6


async def test_calls_wait_for_a_backend_that_comes_up_and_those_that_do_not_wait_fail_at_once(tmp_path):
    port = free_port()
    async with processes(tmp_path) as started:
        with trio.fail_after(20):
            opened = trio.current_time()
            async with trpc.open_client(f"127.0.0.1:{port}", wait_for_ready=True, config=FAST_BACKOFF) as client:
                assert trio.current_time() - opened < 0.5  # open_client did not wait for a connection
                outcomes: list[tuple[str, float, object]] = []

                async def call(method: str, call_id: str) -> None:
                    result = await getattr(client, method)(call_id)
                    outcomes.append((call_id, trio.current_time(), result))

                async with trio.open_nursery() as nursery:
                    for number in range(4):
                        nursery.start_soon(call, ("read", "write")[number % 2], f"waiting.{number}")

                    asked = trio.current_time()
                    with pytest.raises(RpcError) as failed:
                        await client.read.with_options(wait_for_ready=False)("not-waiting")
                    assert trio.current_time() - asked < 1.0
                    assert failed.value.status is Status.UNAVAILABLE
                    assert failed.value.message == f"cannot connect to 127.0.0.1:{port}: Connection refused"

                    await trio.sleep(0.3)
                    assert outcomes == []  # still waiting: there is no backend yet
                    up = trio.current_time()
                    backend = await started.serve(port=port)
                # The nursery returned: every waiting call has its answer.

    assert sorted(call_id for call_id, _, _ in outcomes) == [f"waiting.{n}" for n in range(4)]
    assert all(result == backend.pid and when > up for _, when, result in outcomes)
    record = Record(started.records)
    assert ("read", "not-waiting") not in record.runs
    assert all(len(record.runs[(m, f"waiting.{n}")]) == 1 for n, m in enumerate(["read", "write"] * 2))


# ----------------------------------------------------------------- hosts: network namespaces
def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Hosts:
    """A client namespace holding a bridge, and three backend namespaces, each joined to the bridge
    by a veth pair: ``10.213.N.1`` is the client, ``10.213.N.11`` to ``.13`` the backends."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.client = f"trpc-{tag}-c"
        self.backends = [f"trpc-{tag}-{i}" for i in range(3)]
        self.subnet = f"10.213.{secrets.randbelow(250) + 1}"
        self.created: list[str] = []

    def address(self, index: int) -> str:
        return f"{self.subnet}.{11 + index}"

    def create(self) -> None:
        for name in [self.client, *self.backends]:
            _ip("netns", "add", name)
            self.created.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", self.client, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.client, "addr", "add", f"{self.subnet}.1/24", "dev", "br0")
        _ip("-n", self.client, "link", "set", "br0", "up")
        for index, name in enumerate(self.backends):
            _ip("-n", self.client, "link", "add", f"v{index}", "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("-n", self.client, "link", "set", f"v{index}", "master", "br0")
            _ip("-n", self.client, "link", "set", f"v{index}", "up")
            _ip("-n", name, "addr", "add", f"{self.address(index)}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")

    def delete(self) -> None:
        for name in self.created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _can_make_namespaces() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"trpc-probe-{secrets.token_hex(3)}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, timeout=10)
    if result.returncode != 0:
        return f"ip netns add failed: {result.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


async def serve_several_in(started: Processes, hosts: Hosts) -> list[Backend]:
    backends: list[Backend | None] = [None] * 3

    async def one(index: int) -> None:
        backends[index] = await started.serve(
            hosts.address(index), 7001, netns=hosts.backends[index],
            options=("--keepalive-min-ping-interval", "0.5"),
        )

    async with trio.open_nursery() as nursery:
        for index in range(3):
            nursery.start_soon(one, index)
    return backends


async def test_calls_move_to_the_other_hosts_when_one_loses_its_link(tmp_path):
    reason = _can_make_namespaces()
    if reason is not None:
        pytest.skip(reason)
    hosts = Hosts()
    try:
        hosts.create()
        async with processes(tmp_path) as started:
            # Pings every second are fine with these servers (the client pings a silent
            # connection after 1 s and gives up on it after 1 s more).
            backends = await serve_several_in(started, hosts)
            with trio.fail_after(30):
                client, log = await started.run([
                    "ip", "netns", "exec", hosts.client, sys.executable, "-m", "tests.chproc_client",
                    ",".join(b.address for b in backends), "--keepalive", "1", "--after", "4",
                ])
                assert await started.read_line(client, 15) == "loaded", log.read_text()
                _ip("-n", hosts.backends[0], "link", "set", "eth0", "down")
                await client.stdin.send_all(b"down\n")
                result = json.loads(await started.read_line(client, 15))
                await client.wait()
            assert client.returncode == 0
    finally:
        hosts.delete()

    down = result["down"]
    outcomes = result["outcomes"]
    victim = backends[0].pid
    reads = [o for o in outcomes if o["method"] == "read"]
    writes = [o for o in outcomes if o["method"] == "write"]
    failed_reads = [(o["call_id"], o["status"], o["message"]) for o in reads if o["pid"] is None]
    assert failed_reads == []
    assert {o["status"] for o in writes if o["pid"] is None} <= {"UNAVAILABLE"}
    record = Record(started.records)
    for outcome in writes:
        runs = record.runs.get(("write", outcome["call_id"]), [])
        assert len(runs) <= 1, (outcome, runs)
        if outcome["pid"] is not None:
            assert [pid for pid, _attempt in runs] == [outcome["pid"]], (outcome, runs)
    # Calls were in flight to the lost host when its link went down, and more were sent there
    # until keepalive noticed (whether they reached it or not): the reads among them were
    # answered elsewhere, as later attempts, after the keepalive's two seconds.
    retried = [o for o in reads if any(attempt >= 2 for _pid, attempt in record.runs[("read", o["call_id"])])]
    assert retried, "no read was retried"
    assert all(o["pid"] != victim and o["ended"] - o["started"] > 1.5 for o in retried), retried
    # Calls went on during the outage, on the two others only; none waited more than the
    # keepalive's two seconds and the retry's backoff.
    late = [o for o in outcomes if o["started"] > down + 2.5]
    assert len(late) > 50
    assert {o["pid"] for o in late} == {b.pid for b in backends[1:]}
    assert max(o["ended"] - o["started"] for o in outcomes) < 3.5

