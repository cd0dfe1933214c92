"""A service for the tests that run servers as separate processes (tests/test_channel_processes.py).

Every call carries a unique id chosen by the test.  Each handler appends to the file named by
``TRPC_TEST_RECORDS`` a line when it starts, ``B pid method id attempt``, and one when it is about
to return, ``E pid method id``: the test reads them back to count how many times each call ran,
on which process, and which calls were running when a process was killed.  Lines are written with
one ``os.write`` on a file opened with ``O_APPEND``, so the lines of several processes never mix
and a SIGKILL loses none that was written (nothing is buffered in the process).

``read`` is declared idempotent (the server says so in its INFO frame, and the client may retry
it after any UNAVAILABLE); ``write`` is not (the client may retry it only when the server said it
never ran it).  Both sleep ``seconds`` before answering, so that calls are in flight when a test
kills or restarts a server, and both return the server's pid.
"""

from __future__ import annotations

import os

import trio

import trpc
from trpc._client import ATTEMPT_KEY

RECORDS_VARIABLE = "TRPC_TEST_RECORDS"


def _record(line: str) -> None:
    fd = os.open(os.environ[RECORDS_VARIABLE], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


async def _run(method: str, call_id: str, seconds: float) -> int:
    attempt = trpc.current_call().metadata.get(ATTEMPT_KEY, "1")
    pid = os.getpid()
    _record(f"B {pid} {method} {call_id} {attempt}")
    await trio.sleep(seconds)
    _record(f"E {pid} {method} {call_id}")
    return pid


class Recorder(trpc.Service):
    """Records each run of each call (see the module's docstring)."""

    @trpc.unary(idempotent=True)
    async def read(self, call_id: str, seconds: float = 0.0) -> int:
        return await _run("read", call_id, seconds)

    @trpc.unary
    async def write(self, call_id: str, seconds: float = 0.0) -> int:
        return await _run("write", call_id, seconds)


class Record:
    """The lines of a records file, by call: ``runs[(method, id)]`` is the list of
    ``(pid, attempt)`` that began it; ``ended`` holds the ``(pid, method, id)`` that returned."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.runs: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self.ended: set[tuple[int, str, str]] = set()
        try:
            with open(path) as file:
                text = file.read()
        except FileNotFoundError:
            text = ""
        # Complete lines only: a reader may see a backend's line half written (a write to a
        # file is not atomic for its readers), which the next read will have whole.
        lines = text.split("\n")[:-1]
        for line in lines:
            kind, pid, method, call_id, *rest = line.split()
            if kind == "B":
                self.runs.setdefault((method, call_id), []).append((int(pid), int(rest[0])))
            else:
                self.ended.add((int(pid), method, call_id))

    def pids(self) -> set[int]:
        """Every process that began a call."""
        return {pid for runs in self.runs.values() for pid, _attempt in runs}

    def running_on(self, pid: int) -> list[tuple[str, str]]:
        """The calls that began on ``pid`` and did not end there, as (method, id)."""
        return [
            key for key, runs in self.runs.items()
            for run_pid, _attempt in runs
            if run_pid == pid and (pid, *key) not in self.ended
        ]
