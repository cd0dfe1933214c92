"""Handler tasks are reused within a connection (starting a Trio task per call costs several
times handing the call to a waiting task), but each call still runs in a context of its own,
with its own cancel scope and deadline, as it would in a task of its own."""

from __future__ import annotations

import contextvars

import pytest
import trio

import trpc
from trpc import RpcError, Status

from .helpers import serve_and_connect

_request_tag: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_tag", default=None)


class Probe(trpc.Service):
    def __init__(self) -> None:
        self.release = trio.Event()

    @trpc.unary
    async def tag(self, value: str) -> list:
        """What this call's context held on arrival, and the task it runs in; then sets a
        context variable, which no later call may see."""
        seen = _request_tag.get()
        _request_tag.set(value)
        await trio.sleep(0)
        return [seen, id(trio.lowlevel.current_task()), _request_tag.get()]

    @trpc.unary
    async def deadline(self) -> float:
        return trio.current_effective_deadline() - trio.current_time()

    @trpc.unary
    async def wait(self) -> None:
        await self.release.wait()

    @trpc.unary
    async def stubborn(self) -> str:
        """Swallows its cancellation (bad manners, but handlers do it) and returns."""
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            return "swallowed"


async def test_each_call_has_a_context_of_its_own_even_in_a_reused_task(nursery):
    async with serve_and_connect(nursery, Probe()) as client:
        results = [await client.tag(f"call {i}") for i in range(20)]
    assert [seen for seen, _, _ in results] == [None] * 20  # nothing leaked from the call before
    assert [own for _, _, own in results] == [f"call {i}" for i in range(20)]
    # The calls were one after another on one connection: the tasks were reused (else this
    # test would prove nothing about isolation).
    assert len({task for _, task, _ in results}) < 20


async def test_concurrent_calls_still_run_concurrently(nursery):
    service = Probe()
    async with serve_and_connect(nursery, service) as client:
        with trio.fail_after(10):
            async with trio.open_nursery() as calls:
                for _ in range(150):  # more than the idle tasks kept, more than the stream limit
                    calls.start_soon(client.wait)
                await trio.sleep(0.2)
                assert client.server.running_calls == 100  # all started, none finished
                service.release.set()
        assert client.server.running_calls == 0
        # And the tasks that waited serve again.
        results = [await client.tag("after") for _ in range(3)]
    assert [seen for seen, _, _ in results] == [None] * 3


async def test_a_deadline_or_cancellation_does_not_follow_a_task_to_its_next_call(nursery):
    service = Probe()
    async with serve_and_connect(nursery, service) as client:
        remaining = await client.deadline.with_options(timeout=5)()
        assert 0 < remaining <= 5
        with trio.move_on_after(0.1):
            await client.wait()  # cancelled by the client: the handler's scope is cancelled
        # (No scope of ours around these calls: its deadline would travel with them.)
        assert await client.deadline() == float("inf")  # no deadline, no cancellation left
        with pytest.raises(RpcError) as info:
            await client.wait.with_options(timeout=0.05)()  # the server's own deadline fires
        assert info.value.status is Status.DEADLINE_EXCEEDED
        assert await client.deadline() == float("inf")
        assert client.server.running_calls == 0


async def test_a_handler_that_swallows_its_cancellation_leaves_no_cancellation_behind(nursery):
    async with serve_and_connect(nursery, Probe()) as client:
        with trio.fail_after(30):  # (its deadline travels too: the checks below allow for it)
            for _ in range(3):
                with pytest.raises(RpcError) as info:
                    await client.stubborn.with_options(timeout=0.05)()
                assert info.value.status is Status.DEADLINE_EXCEEDED  # the client's own deadline
                # The next calls, likely in the same task, are neither cancelled nor limited
                # by what the stubborn call left.
                assert await client.deadline() > 20
                seen, _, own = await client.tag("next")
                assert seen is None and own == "next"


async def test_a_call_handed_to_a_task_as_its_connection_closes_is_not_lost(nursery):
    """The race at a connection's end: the waiting task's cancellation is delivered, and
    before that task runs, the reader hands it one more call.  The call is ended (not left
    counted as running, which would hold up a graceful shutdown) and nothing else breaks."""
    from trpc._context import CallContext
    from trpc._server import _ServerCall

    async with serve_and_connect(nursery, Probe()) as client:
        await client.tag("a call, so that a task waits")
        server = client.server
        (connection,) = server._connections
        assert connection._idle_workers
        handler, info = server._methods["tag"]
        context = CallContext("tag", connection.peer, {}, float("inf"), info.cardinality)
        call = _ServerCall(999, handler, info, context)
        connection.nursery.cancel_scope.cancel()  # the waiting task's cancellation...
        connection._start(call, b"\x81\x81\x61x")  # ...and, in the same step, one more call
        with trio.fail_after(5):
            while connection in server._connections:  # (the client's channel reconnects at once)
                await trio.sleep(0.01)
        assert call.finished and server.running_calls == 0
