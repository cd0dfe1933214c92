"""Steady load on a channel of :class:`tests.chproc_service.Recorder` backends, for
tests/test_channel_processes.py; also a script that runs that load from inside a network
namespace (the test that takes a host's link down).

:class:`Load` runs ``callers`` tasks; each makes calls one after the other, alternating the
idempotent ``read`` and the non-idempotent ``write``, each with a unique id, until told to stop
or until its bound of calls.  Every call's outcome is kept as a :class:`Outcome`.

As a script (``python -m tests.chproc_client TARGET,...``): it opens a round-robin channel with
short keepalive settings, runs the load, prints ``loaded`` once every backend has answered,
then waits for a line on standard input (the test took a link down), notes the time, keeps the
load going for ``--after`` seconds more and prints the outcomes as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass

import trio

import trpc
from trpc import RpcError

#: A caller never makes more calls than this, whatever the test asked for: every loop is bounded.
MAX_CALLS_PER_CALLER = 2000


@dataclass
class Outcome:
    method: str
    call_id: str
    started: float
    ended: float
    #: The pid of the server that answered, or None if the call failed.
    pid: int | None
    #: The failure's status name and message, or None.
    status: str | None = None
    message: str = ""


class Load:
    """See the module's docstring."""

    def __init__(self, client: trpc.Client, *, callers: int, seconds: float) -> None:
        self.client = client
        self.callers = callers
        self.seconds = seconds
        self.outcomes: list[Outcome] = []
        self.stop = trio.Event()

    async def run(self, max_duration: float) -> None:
        """Run until ``stop`` is set, at most ``max_duration`` seconds."""
        with trio.move_on_after(max_duration):
            async with trio.open_nursery() as nursery:
                for number in range(self.callers):
                    nursery.start_soon(self._caller, number)
                await self.stop.wait()
                nursery.cancel_scope.cancel()

    async def _caller(self, number: int) -> None:
        for count in range(MAX_CALLS_PER_CALLER):
            if self.stop.is_set():
                return
            method = ("read", "write")[(number + count) % 2]
            call_id = f"{number}.{count}"
            started = trio.current_time()
            try:
                pid = await getattr(self.client, method)(call_id, self.seconds)
            except RpcError as exc:
                ended = trio.current_time()
                self.outcomes.append(Outcome(method, call_id, started, ended, None, exc.status.name, exc.message))
            else:
                self.outcomes.append(Outcome(method, call_id, started, trio.current_time(), pid))

    def failures(self, method: str) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.method == method and outcome.pid is None]

    def answered_by(self) -> set[int]:
        return {outcome.pid for outcome in self.outcomes if outcome.pid is not None}


async def _main(args: argparse.Namespace) -> None:
    config = {"connectionBackoff": {"baseDelay": "0.2s", "maxDelay": "1s"}}
    async with trpc.open_client(
        args.targets.split(","), load_balancing="round_robin", config=config,
        keepalive_time=args.keepalive, keepalive_timeout=args.keepalive,
    ) as client:
        load = Load(client, callers=args.callers, seconds=args.seconds)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(load.run, args.max_duration)
            with trio.fail_after(10):
                while len(load.answered_by()) < len(args.targets.split(",")):
                    await trio.sleep(0.05)
            print("loaded", flush=True)
            with trio.fail_after(10):
                await stdin.receive_some()
            down = trio.current_time()
            await trio.sleep(args.after)
            load.stop.set()
        await stdin.aclose()
    print(json.dumps({"down": down, "outcomes": [asdict(outcome) for outcome in load.outcomes]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", help="HOST:PORT,HOST:PORT,...")
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.02, help="how long each call runs on the server")
    parser.add_argument("--keepalive", type=float, default=1.0, help="keepalive_time and keepalive_timeout")
    parser.add_argument("--after", type=float, default=4.0, help="seconds of load after the link went down")
    parser.add_argument("--max-duration", type=float, default=30.0)
    trio.run(_main, parser.parse_args())


if __name__ == "__main__":
    main()
