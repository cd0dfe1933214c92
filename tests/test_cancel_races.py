"""Cancellation races a user can see, over real TCP (and in memory where time is the point).

Two promises:

- **A cancel ends only its call.**  A client that gives up on a call while the server is still
  sending the response (the server's data waiting for credit, its trailers queued behind it)
  must not take the connection down: other calls on it go on, new calls start.
- **The status a call reports is the status it raised.**  A call that raised
  ``RpcError(DEADLINE_EXCEEDED)`` (its own timeout) or whose caller's deadline passed says
  DEADLINE_EXCEEDED in ``status`` afterwards; a caller cancelled for another reason, CANCELLED.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

import trpc
from trpc import RpcError, Status

from .services import Svc

#: Larger than the default stream window (2 MiB): the response cannot leave in one go, so the
#: server holds part of it (and then its trailers) waiting for the client's credit.
BIG = 3 << 20


class Races(Svc):
    """The tests' usual service, and what these races need."""

    def __init__(self) -> None:
        super().__init__()
        self.streamed = trio.Event()
        self.blobs = 0

    @trpc.unary
    async def blob(self, size: int) -> bytes:
        self.blobs += 1
        return bytes(size)

    @trpc.unary
    async def slow(self, seconds: float) -> str:
        await trio.sleep(seconds)
        return "slow done"

    @trpc.server_stream
    async def small_messages(self, count: int, size: int):
        """``count`` messages of ``size`` bytes, then OK.  Small ones go through the stream's
        batch, which the end of the call frames together with the trailers."""
        for _ in range(count):
            yield bytes(size)
        self.streamed.set()  # the trailers follow at once, with no checkpoint in between

    @trpc.server_stream
    async def stall(self):
        """One item, then nothing until cancelled."""
        yield 1
        await trio.sleep_forever()


@pytest.fixture
def service() -> Races:
    """Replaces conftest's: the ``server``, ``client`` and ``memory_client`` fixtures serve
    this module's service."""
    return Races()


def protocol_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "protocol error" in r.getMessage()]


async def call_or_error(call) -> object:
    """The call's result, or the RpcError it raised (so a failure reads as an assertion,
    not as an ExceptionGroup out of a nursery)."""
    try:
        return await call
    except RpcError as exc:
        return exc


# ============================================================ a cancel ends only its call
async def test_cancelling_a_large_response_at_any_moment_leaves_other_calls_running(client, caplog):
    """``blob(3 MiB)`` given up after d, d swept from 0.1 ms to 6 ms, while an unrelated call
    runs on the same connection: the unrelated call and a new call must succeed every time.

    The sweep crosses the moment where the server's deadline has queued the trailers behind
    the part of the response still waiting for credit, and the client's CANCEL arrives then:
    a server that treats that CANCEL as a protocol error drops the connection."""
    caplog.set_level(logging.WARNING, logger="trpc")
    steps = 30
    with trio.fail_after(60):  # a hang guard; a step takes milliseconds on a quiet machine
        for step in range(steps):
            delay = 0.0001 + step * (0.006 - 0.0001) / (steps - 1)
            unrelated: dict[str, object] = {}

            async def run_unrelated() -> None:
                unrelated["result"] = await call_or_error(client.slow(0.01))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_unrelated)
                with trio.move_on_after(delay):
                    await client.blob(BIG)
            assert unrelated["result"] == "slow done", (step, delay, unrelated["result"], protocol_errors(caplog))
            after = await call_or_error(client.echo(step))
            assert after == step, (step, delay, after, protocol_errors(caplog))
    assert protocol_errors(caplog) == []


async def test_cancel_after_the_server_queued_trailers_behind_data(nursery, caplog):
    """Deterministic: the client grants a small stream window (64 KiB) and does not read, so
    the server's 100 KB response waits for credit and the server queues OK trailers behind it.
    The client then gives up (leaves the ``async with``: CANCEL).  The server must drop that
    CANCEL (the call is over on its side), keep the connection and forget the stream."""
    caplog.set_level(logging.WARNING, logger="trpc")
    service = Races()
    server = trpc.Server(service)
    address = await nursery.start(server.serve_tcp, 0)
    async with trpc.open_client(address, stream_window=64 * 1024) as client:
        with trio.fail_after(10):
            unrelated: dict[str, object] = {}

            async def run_unrelated() -> None:
                unrelated["result"] = await call_or_error(client.slow(0.2))

            async with trio.open_nursery() as calls:
                calls.start_soon(run_unrelated)
                async with client.small_messages(100, 1000) as stream:
                    # Once the handler has ended, the server has framed 64 KiB of its 100 KB
                    # and queued the rest, then the trailers, to wait for credit; this client
                    # reads nothing, so it grants none.
                    await service.streamed.wait()
                # Leaving the block sent CANCEL; the unrelated call is still running.
            assert stream.status is Status.CANCELLED
            assert unrelated["result"] == "slow done", (unrelated["result"], protocol_errors(caplog))
            assert await call_or_error(client.echo("after")) == "after", protocol_errors(caplog)
            assert server.connections == 1
            (connection,) = server._connections
            assert connection.conn.open_streams == 0  # the cancelled stream is forgotten
    assert protocol_errors(caplog) == []


async def test_cancel_after_the_server_deadline_queued_trailers_behind_a_unary_response(nursery, caplog):
    """Deterministic, unary: a hand-driven client opens ``blob(3 MiB)`` with a 20 ms timeout
    and reads nothing, so the server's response waits for credit when its deadline passes
    (DEADLINE_EXCEEDED trailers queued behind the data); then the client's CANCEL arrives.
    The connection must survive it: a following call on it is answered."""
    import cbor2

    from trpc._events import CallEnded, GoAwayReceived, MessagesReceived
    from trpc.wire import Connection

    caplog.set_level(logging.WARNING, logger="trpc")
    service = Races()
    server = trpc.Server(service)
    address = await nursery.start(server.serve_tcp, 0)
    stream = await trio.open_tcp_stream(*address)
    conn = Connection("client")
    conn.initiate()
    await stream.send_all(conn.data_to_send())
    with trio.fail_after(10):
        while conn.peer_preface is None:
            conn.receive_data(await stream.receive_some())
        sid, _ = conn.open_unary_call("blob", cbor2.dumps([[BIG]]), timeout=0.02)
        await stream.send_all(conn.data_to_send())
        # Wait, reading nothing, until the server's deadline has ended the handler: the
        # server then queues DEADLINE_EXCEEDED trailers behind the ~1 MiB still short of credit.
        while not service.blobs or server.running_calls:
            await trio.sleep(0.002)
        conn.cancel(sid, Status.DEADLINE_EXCEEDED, "the caller's deadline passed")
        after = conn.open_unary_call("echo", cbor2.dumps([["after"]]))[0]
        await stream.send_all(conn.data_to_send())
        events: list = []
        while not any(isinstance(e, (CallEnded, GoAwayReceived)) for e in events):
            data = await stream.receive_some()
            assert data, "the server closed the connection"
            events += conn.receive_data(data)
            out = conn.data_to_send()  # connection credit for what we dropped
            if out:
                await stream.send_all(out)
    await stream.aclose()
    assert [e for e in events if isinstance(e, GoAwayReceived)] == [], protocol_errors(caplog)
    ended = [e for e in events if isinstance(e, CallEnded)]
    assert [(e.stream_id, e.status) for e in ended] == [(after, Status.OK)]
    assert [cbor2.loads(p) for e in events if isinstance(e, MessagesReceived) for p in e.payloads] == ["after"]
    assert protocol_errors(caplog) == []


# ==================================================== the status a call reports is the one it raised
async def test_unary_timeout_status_is_deadline_exceeded(memory_client, autojump_clock):
    call = memory_client.sleep_then.with_options(timeout=0.01)(1, "late")
    with pytest.raises(RpcError) as info:
        await call
    assert info.value.status is Status.DEADLINE_EXCEEDED
    assert call.status is Status.DEADLINE_EXCEEDED


async def test_unary_timeout_status_is_deadline_exceeded_over_tcp(client):
    call = client.sleep_then.with_options(timeout=0.01)(1, "late")
    with pytest.raises(RpcError) as info:
        await call
    assert info.value.status is Status.DEADLINE_EXCEEDED
    assert call.status is Status.DEADLINE_EXCEEDED


async def test_unary_caller_deadline_status_is_deadline_exceeded(memory_client, service, autojump_clock):
    call = memory_client.block()
    with trio.move_on_after(1) as scope:
        await call
    assert scope.cancelled_caught
    assert call.status is Status.DEADLINE_EXCEEDED
    await service.cancelled.wait()
    assert service.cancel_reasons == [Status.DEADLINE_EXCEEDED]  # what the server was told


async def test_unary_caller_deadline_status_is_deadline_exceeded_over_tcp(client):
    call = client.sleep_then(1, "late")
    with trio.move_on_after(0.01) as scope:
        await call
    assert scope.cancelled_caught
    assert call.status is Status.DEADLINE_EXCEEDED


async def test_unary_plain_cancel_status_is_cancelled(memory_client, service, autojump_clock):
    call = memory_client.block()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call_or_error, call)
        await service.started.wait()
        nursery.cancel_scope.cancel()
    assert call.status is Status.CANCELLED
    await service.cancelled.wait()
    assert service.cancel_reasons == [Status.CANCELLED]


async def test_unary_plain_cancel_status_is_cancelled_over_tcp(client, service):
    call = client.block()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_or_error, call)
            await service.started.wait()
            nursery.cancel_scope.cancel()
    assert call.status is Status.CANCELLED


async def test_server_stream_timeout_status_is_deadline_exceeded(memory_client, autojump_clock):
    async with memory_client.stall.with_options(timeout=0.01)() as stream:
        assert await stream.receive() == 1
        with pytest.raises(RpcError) as info:
            await stream.receive()
        assert info.value.status is Status.DEADLINE_EXCEEDED
        assert stream.status is Status.DEADLINE_EXCEEDED
    assert stream.status is Status.DEADLINE_EXCEEDED


async def test_server_stream_timeout_status_is_deadline_exceeded_over_tcp(client):
    with trio.fail_after(5):
        async with client.stall.with_options(timeout=0.1)() as stream:
            assert await stream.receive() == 1
            with pytest.raises(RpcError) as info:
                await stream.receive()
            assert info.value.status is Status.DEADLINE_EXCEEDED
    assert stream.status is Status.DEADLINE_EXCEEDED


async def test_bidi_stream_timeout_status_is_deadline_exceeded(memory_client, autojump_clock):
    async with memory_client.bidi_echo.with_options(timeout=0.01).open() as stream:
        await stream.send("ping")
        assert await stream.receive() == "ping"
        with pytest.raises(RpcError) as info:
            await stream.receive()  # the server waits for more: the timeout passes
        assert info.value.status is Status.DEADLINE_EXCEEDED
    assert stream.status is Status.DEADLINE_EXCEEDED


async def test_bidi_stream_timeout_status_is_deadline_exceeded_over_tcp(client):
    with trio.fail_after(5):
        async with client.bidi_echo.with_options(timeout=0.1).open() as stream:
            await stream.send("ping")
            assert await stream.receive() == "ping"
            with pytest.raises(RpcError) as info:
                await stream.receive()
            assert info.value.status is Status.DEADLINE_EXCEEDED
    assert stream.status is Status.DEADLINE_EXCEEDED


async def test_stream_caller_deadline_status_is_deadline_exceeded(memory_client, autojump_clock):
    with trio.move_on_after(1) as scope:
        async with memory_client.stall() as stream:
            async for _ in stream:
                pass
    assert scope.cancelled_caught
    assert stream.status is Status.DEADLINE_EXCEEDED


async def test_stream_caller_deadline_status_is_deadline_exceeded_over_tcp(client):
    with trio.move_on_after(0.1) as scope:
        async with client.stall() as stream:
            async for _ in stream:
                pass
    assert scope.cancelled_caught
    assert stream.status is Status.DEADLINE_EXCEEDED


async def test_stream_plain_cancel_status_is_cancelled(memory_client, autojump_clock):
    with trio.CancelScope() as scope:
        async with memory_client.stall() as stream:
            assert await stream.receive() == 1
            scope.cancel()
            await stream.receive()
    assert scope.cancelled_caught
    assert stream.status is Status.CANCELLED


async def test_stream_plain_cancel_status_is_cancelled_over_tcp(client):
    with trio.CancelScope() as scope:
        async with client.stall() as stream:
            assert await stream.receive() == 1
            scope.cancel()
            await stream.receive()
    assert scope.cancelled_caught
    assert stream.status is Status.CANCELLED


async def test_a_call_that_succeeded_reports_ok(memory_client, autojump_clock):
    """The other side of the promise: finished calls keep the status they ended with."""
    call = memory_client.sleep_then.with_options(timeout=5)(0.01, "on time")
    assert await call == "on time"
    assert call.status is Status.OK
    async with memory_client.count(3) as stream:
        assert [x async for x in stream] == [0, 1, 2]
    assert stream.status is Status.OK
