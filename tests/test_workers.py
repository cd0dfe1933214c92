"""Every core of a host (issue 13): ``trpc serve --workers N`` and ``trpc.serve_workers``, against
real processes on loopback.

The supervisor runs as ``python -m trpc serve tests.chproc_service:Recorder --workers 2`` (or,
for the Python API, in the test process itself); its handlers return their process's pid and
record each run of each call (tests/chproc_service.py), so a test knows which worker answered
and which calls were running on a worker when it was killed.  Worker processes are found in the
process table: children of the supervisor (their parent pid), and, once the supervisor is gone,
any process whose command line names it (``supervisor=PID``, see trpc._workers).

Real processes and real time: no ``autojump_clock`` here (only the restart policy, a pure
function, is tested without processes).  Every wait is bounded; every process a test starts,
supervisor and workers, is killed by its pid and waited for when the test ends.
"""

from __future__ import annotations

import os
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
from trpc._health import CHECK_METHOD
from trpc._workers import RESTART_BACKOFF, RESTART_BACKOFF_MAX, STABLE_AFTER, RestartPolicy

from .chproc_client import Load
from .chproc_service import RECORDS_VARIABLE, Record

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "tests.chproc_service:Recorder"
#: Reconnect soon after a worker went away (gRPC's default first backoff is 1 s).
FAST_BACKOFF = {"connectionBackoff": {"baseDelay": "0.1s", "maxDelay": "0.5s"}}


# ---------------------------------------------------------------------------- the process table
def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return int(fields[1]), fields[0]


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children_of(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = set()
    for child in _all_pids():
        stat = _stat(child)
        if stat is not None and stat[0] == pid and stat[1] != "Z":
            found.add(child)
    return found


def workers_named_for(pid: int) -> set[int]:
    """Live processes whose command line says they are workers of supervisor ``pid``, whoever
    their parent is now (an orphan's is init)."""
    marker = f"supervisor={pid}".encode()
    found = set()
    for candidate in _all_pids():
        try:
            words = Path(f"/proc/{candidate}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        stat = _stat(candidate)
        if marker in words and b"trpc-worker" in words and stat is not None and stat[1] != "Z":
            found.add(candidate)
    return found


def kill_by_pid(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------- a supervisor
class Supervisor:
    """A ``trpc serve --workers`` process listening on 127.0.0.1:``port``."""

    def __init__(self, process: trio.Process, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def workers(self) -> set[int]:
        return children_of(self.pid)


async def read_line(process: trio.Process, seconds: float) -> str:
    """The next line of the process's standard output (bounded in time and size); "" at its end."""
    data = b""
    with trio.fail_after(seconds):
        while b"\n" not in data:
            chunk = await process.stdout.receive_some()
            if not chunk:
                break
            data += chunk
            assert len(data) < 1_000_000, "no end of line in 1 MB of output"
    return data.decode().strip()


@asynccontextmanager
async def supervisor(tmp_path: Path, framer: str, *options: str, workers: int = 2,
                     grace: float = 5) -> AsyncIterator[Supervisor]:
    """Start ``trpc serve --workers``, wait (15 s at most) for its ``listening on`` line; on exit
    kill it and every worker it started, by pid, and wait for it."""
    log = tmp_path / "supervisor.log"
    command = [sys.executable, "-m", "trpc", "--framer", framer, "--log-level", "info", "serve", SERVICE,
               "--port", "0", "--workers", str(workers), "--grace", str(grace), *options]
    env = {**os.environ, RECORDS_VARIABLE: str(tmp_path / "records")}
    with open(log, "wb") as stderr:
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=ROOT)
    try:
        line = await read_line(process, 15)
        assert line.startswith("listening on 127.0.0.1:"), f"the supervisor said {line!r}; {log.read_text()}"
        yield Supervisor(process, int(line.split()[2].rpartition(":")[2]), log)
    finally:
        with trio.CancelScope(shield=True):
            workers = children_of(process.pid) | workers_named_for(process.pid)
            process.kill()
            kill_by_pid(workers | workers_named_for(process.pid))
            with trio.move_on_after(10):
                await process.wait()
            await process.stdout.aclose()
            with trio.move_on_after(5):
                while workers_named_for(process.pid):
                    await trio.sleep(0.02)


async def wait_until(predicate, seconds: float, what: str, every: float = 0.02):
    """Poll ``predicate()`` until it is true (returns its value), for ``seconds`` at most."""
    deadline = trio.current_time() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if trio.current_time() > deadline:
            raise AssertionError(f"not seen within {seconds} s: {what}")
        await trio.sleep(every)


async def pid_over_a_new_connection(address: str, call_id: str) -> int:
    async with trpc.open_client(address) as client:
        return await client.read(call_id)


# ---------------------------------------------------------------------------- the tests
async def test_calls_from_many_connections_land_on_every_worker_and_each_serves_health(tmp_path, framer):
    async with supervisor(tmp_path, framer) as sup:
        workers = sup.workers()
        assert len(workers) == 2
        answered: set[int] = set()
        with trio.fail_after(20):
            for number in range(24):  # the kernel hashes each connection: both within 24 but by 2^-23
                async with trpc.open_client(sup.address) as client:
                    answered.add(await client.read(f"conn.{number}"))
                    assert await client.method(CHECK_METHOD)("") == "SERVING"
                if len(answered) == 2 and number >= 3:
                    break
        assert answered == workers
        # Each worker's log lines name it.
        log = sup.log.read_text()
        assert all(f"[worker {pid}] trpc: listening on {sup.address}" in log for pid in workers), log


async def test_a_killed_worker_fails_only_the_calls_on_its_connections_and_is_back_within_two_seconds(
    tmp_path, framer
):
    async with supervisor(tmp_path, framer) as sup:
        records = tmp_path / "records"
        with trio.fail_after(40):
            async with trio.open_nursery() as nursery:
                clients: list[trpc.Client] = []
                worker_of: list[int] = []
                for number in range(24):  # until both workers hold connections (6 at least)
                    client = await nursery.start(_client_task, sup.address)
                    clients.append(client)
                    worker_of.append(await client.read(f"probe.{number}"))
                    if number >= 5 and len(set(worker_of)) == 2:
                        break
                assert set(worker_of) == sup.workers()
                victim = worker_of[0]
                #: (client index, call id, started, pid or None, failure status or None)
                outcomes: list[tuple[int, str, float, int | None, str | None]] = []
                stop = trio.Event()

                async def caller(index: int, caller_number: int) -> None:
                    # Bounded, and far above what 5 s allows even when calls fail at once (about
                    # 1,000 in 70 ms on a client whose reconnection was reset).
                    for count in range(200_000):
                        if stop.is_set():
                            return
                        started = trio.current_time()
                        call_id = f"{index}.{caller_number}.{count}"
                        try:
                            pid = await clients[index].write(call_id, 0.05)
                        except RpcError as exc:
                            outcomes.append((index, call_id, started, None, exc.status.name))
                        else:
                            outcomes.append((index, call_id, started, pid, None))

                async with trio.open_nursery() as load:
                    for index in range(len(clients)):
                        for caller_number in range(2):
                            load.start_soon(caller, index, caller_number)
                    await trio.sleep(0.3)
                    running = await wait_until(lambda: Record(records).running_on(victim), 5, "calls on the victim")
                    os.kill(victim, signal.SIGKILL)
                    killed_at = trio.current_time()
                    # Back: a new worker answers on a new connection (the kernel picks its listener
                    # for half of them).
                    resets = 0
                    for attempt in range(80):  # 4 s at most
                        try:
                            pid = await pid_over_a_new_connection(sup.address, f"after.{attempt}")
                        except RpcError as exc:
                            # A connection the kernel queued on the dying worker's listener is reset
                            # when that listener closes (trpc._workers: "Sockets").
                            assert exc.status is Status.UNAVAILABLE, exc
                            resets += 1
                            continue
                        if pid not in worker_of:
                            break
                        await trio.sleep(0.05)
                    back_after = trio.current_time() - killed_at
                    assert pid not in worker_of and pid in sup.workers()
                    # Each client of the victim is answered again (a reset reconnection waits out
                    # its connection backoff: 1 s, then 1.6 s).
                    await wait_until(lambda: all(
                        any(o[0] == index and o[3] is not None and o[2] > killed_at for o in outcomes)
                        for index, pid in enumerate(worker_of) if pid == victim
                    ), 6, "every client of the killed worker answered again", every=0.1)
                    stop.set()
                nursery.cancel_scope.cancel()

    on_victim = {index for index, pid in enumerate(worker_of) if pid == victim}
    failures = [outcome for outcome in outcomes if outcome[3] is None]
    assert failures, "no call failed: nothing was running on the killed worker"
    assert {status for *_, status in failures} == {"UNAVAILABLE"}
    assert {index for index, *_ in failures} <= on_victim
    # Each client of the victim reconnected and was answered again.  (Most fail only the calls
    # they had in flight; a client whose reconnection the kernel queued on the dying worker's
    # listener is reset, and its calls fail at once until its connection backoff ends: see
    # trpc._workers, "Sockets".)
    for index in on_victim:
        assert any(o[0] == index and o[3] is not None and o[2] > killed_at for o in outcomes)
    # The calls running on the victim just before it died are among the failures.
    assert {call_id for _method, call_id in running} <= {call_id for _, call_id, *_ in failures}
    assert back_after < 2.0, f"the new worker answered {back_after:.2f} s after the kill"
    log = sup.log.read_text()
    assert f"trpc: worker 1/2 (pid {victim}) died (killed by SIGKILL); starting another now" in log or \
        f"trpc: worker 2/2 (pid {victim}) died (killed by SIGKILL); starting another now" in log, log


async def _client_task(address: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """One client (one connection) kept open until cancelled."""
    async with trpc.open_client(address) as client:
        task_status.started(client)
        await trio.sleep_forever()


async def test_sighup_under_steady_load_fails_no_call_and_replaces_every_worker(tmp_path, framer):
    async with supervisor(tmp_path, framer) as sup:
        old = sup.workers()
        with trio.fail_after(40):
            # One channel, six connections to the one address (a list target, one subchannel each).
            async with trpc.open_client([sup.address] * 6, load_balancing="round_robin", config=FAST_BACKOFF) as client:
                assert len(client._channel.subchannels) == 6
                load = Load(client, callers=8, seconds=0.02)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(load.run, 30)
                    await wait_until(lambda: load.answered_by() & old, 5, "calls answered")
                    sup.process.send_signal(signal.SIGHUP)

                    def replaced() -> set[int] | None:
                        now = sup.workers()
                        return now if len(now) == 2 and not now & old else None

                    new = await wait_until(replaced, 20, "two new workers")
                    # The kernel spreads connections over the workers by a hash, so the six may
                    # all land on one of the new ones: what must hold is that new workers answer.
                    await wait_until(lambda: load.answered_by() & new, 5, "calls on the new workers")
                    load.stop.set()

    assert load.failures("read") == [] and load.failures("write") == []
    assert len(load.outcomes) > 100
    record = Record(tmp_path / "records")
    for outcome in load.outcomes:  # a write ran once, where it said
        if outcome.method == "write":
            assert [pid for pid, _ in record.runs[("write", outcome.call_id)]] == [outcome.pid]
    assert all(record.running_on(pid) == [] for pid in old)  # each old worker finished what it began
    log = sup.log.read_text()
    assert log.count("trpc: SIGHUP: restarting 2 workers one at a time") == 1
    assert all(f"exited (exit status 0)" in line for line in log.splitlines() if "exited (" in line)


@pytest.mark.parametrize("trouble", ["a bad service path", "a port in use"])
async def test_workers_that_cannot_start_end_the_supervisor_in_one_line_with_no_process_left(
    tmp_path, framer, trouble
):
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if trouble == "a port in use":
            service, port, expected = SERVICE, taken.getsockname()[1], "Address already in use"
        else:
            service, port, expected = "tests.no_such_module:Service", 0, "cannot import tests.no_such_module"
        command = [sys.executable, "-m", "trpc", "--framer", framer, "serve", service, "--port", str(port),
                   "--workers", "2"]
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        try:
            with trio.fail_after(20):
                stdout = await process.stdout.receive_some(100_000)
                stderr = b""
                while chunk := await process.stderr.receive_some(100_000):
                    stderr += chunk
                await process.wait()
            assert process.returncode == 1
            assert stdout == b""
            lines = stderr.decode().splitlines()
            assert len(lines) == 1 and lines[0].startswith("trpc: ") and expected in lines[0], lines
            assert workers_named_for(process.pid) == set()
        finally:
            with trio.CancelScope(shield=True):
                kill_by_pid(workers_named_for(process.pid))
                process.kill()
                await process.wait()
                await process.stdout.aclose()
                await process.stderr.aclose()
    finally:
        taken.close()


async def test_sigterm_lets_a_long_call_finish_within_the_grace_then_every_worker_exits(tmp_path, framer):
    async with supervisor(tmp_path, framer, grace=5) as sup:
        workers = sup.workers()
        with trio.fail_after(20):
            async with trpc.open_client(sup.address) as client:
                result: list = []

                async def long_call() -> None:
                    result.append(await client.write("long", 1.5))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(long_call)
                    await wait_until(lambda: ("write", "long") in Record(tmp_path / "records").runs, 5,
                                     "the long call running")
                    asked = trio.current_time()
                    sup.process.send_signal(signal.SIGTERM)
                await sup.process.wait()
                stopped = trio.current_time() - asked
    assert result and result[0] in workers
    assert sup.process.returncode == 0
    assert stopped < 5, stopped  # the call's 1.5 s, well within the 5 s grace
    assert workers_named_for(sup.pid) == set()


async def test_serve_workers_from_python_shares_an_inherited_listener_and_drains_when_cancelled(tmp_path, monkeypatch):
    monkeypatch.setenv(RECORDS_VARIABLE, str(tmp_path / "records"))
    monkeypatch.chdir(ROOT)
    from .chproc_service import Recorder

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(_serve_two, Recorder)
            workers = children_of(os.getpid()) & workers_named_for(os.getpid())
            assert len(workers) == 2
            answered = set()
            for number in range(8):
                async with trpc.open_client(f"{host}:{port}") as client:
                    answered.add(await client.read(f"py.{number}"))
            assert answered <= workers and answered
            nursery.cancel_scope.cancel()
    assert workers_named_for(os.getpid()) == set()


async def _serve_two(factory, task_status=trio.TASK_STATUS_IGNORED) -> None:
    await trpc.serve_workers(factory, port=0, workers=2, grace=1, reuse_port=False, task_status=task_status)


def test_a_worker_that_keeps_dying_waits_longer_each_time_and_one_that_served_a_while_starts_at_once():
    policy = RestartPolicy()
    delays = [policy.next_delay(1.0) for _ in range(9)]
    assert delays == [0, RESTART_BACKOFF, 2 * RESTART_BACKOFF, 4 * RESTART_BACKOFF, 8 * RESTART_BACKOFF,
                      16 * RESTART_BACKOFF, 32 * RESTART_BACKOFF, RESTART_BACKOFF_MAX, RESTART_BACKOFF_MAX]
    assert policy.next_delay(None) == RESTART_BACKOFF_MAX  # a failed start counts as a death
    assert policy.next_delay(STABLE_AFTER) == 0  # it had served long enough: afresh
    assert policy.next_delay(0.1) == RESTART_BACKOFF
