"""Deadlines and cancellation crossing the wire.  In-memory streams + autojump_clock: exact
and fast, since nothing waits on a real network."""

from __future__ import annotations

import math

import pytest
import trio

from trpc import RpcError, Status


async def wait_idle(server):
    """Let the server process what is in flight, then report running calls."""
    for _ in range(50):
        await trio.sleep(0.001)
        if server.running_calls == 0:
            break
    return server.running_calls


async def test_caller_deadline_travels_and_is_measured_on_the_server(memory_client, autojump_clock):
    with trio.move_on_after(5):
        remaining = await memory_client.remaining()
    assert remaining == pytest.approx(5, abs=1e-3)
    assert await memory_client.remaining() == math.inf


async def test_move_on_after_cancels_the_handler(memory_client, service, autojump_clock):
    with trio.move_on_after(2) as scope:
        await memory_client.block()
    assert scope.cancelled_caught  # move_on_*: silent, per Trio's rules for that scope
    await service.cancelled.wait()
    assert service.cancel_reasons == [Status.DEADLINE_EXCEEDED]
    assert await wait_idle(memory_client.server) == 0
    assert memory_client.calls_in_flight == 0


async def test_fail_after_raises_too_slow(memory_client, service, autojump_clock):
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(1):
            await memory_client.block()
    await service.cancelled.wait()
    assert service.cancel_reasons == [Status.DEADLINE_EXCEEDED]


async def test_explicit_timeout_raises_deadline_exceeded(memory_client, service, autojump_clock):
    start = trio.current_time()
    with pytest.raises(RpcError) as info:
        await memory_client.block.with_options(timeout=3)()
    assert info.value.status is Status.DEADLINE_EXCEEDED
    assert trio.current_time() - start == pytest.approx(3, abs=1e-3)
    await service.cancelled.wait()
    assert service.cancel_reasons == [Status.DEADLINE_EXCEEDED]


async def test_client_wide_timeout(service, nursery, autojump_clock):
    import trio.testing

    import trpc

    server = trpc.Server(service)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream)
    async with trpc.open_client(client_stream, timeout=0.5) as client:
        assert await client.greet("fast") == "Hello fast"
        with pytest.raises(RpcError) as info:
            await client.block()
        assert info.value.status is Status.DEADLINE_EXCEEDED
        with trio.move_on_after(2) as scope:  # timeout=None: only the caller's scope counts
            await client.block.with_options(timeout=None)()
        assert scope.cancelled_caught and trio.current_time() >= 2


async def test_cancelling_the_caller_cancels_the_handler(memory_client, service, autojump_clock):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(memory_client.block)
        await service.started.wait()
        assert memory_client.server.running_calls == 1
        nursery.cancel_scope.cancel()
    await service.cancelled.wait()
    assert service.cancel_reasons == [Status.CANCELLED]
    assert await wait_idle(memory_client.server) == 0


async def test_deadline_already_passed_sends_nothing(memory_client, service, autojump_clock):
    conn = memory_client._connection.conn
    with trio.move_on_after(0) as scope:
        await memory_client.greet("x")
    assert scope.cancelled_caught
    assert memory_client.calls_in_flight == 0
    assert conn.last_stream_id == 0  # no HEADERS ever went out


async def test_call_cancelled_in_the_same_batch_as_it_opened(service, nursery):
    """HEADERS, DATA and CANCEL for an unknown method arrive in one chunk: the server must not
    try to answer a call the client has already cancelled (and must keep the connection)."""
    server, conn, client_stream = await raw_client(service, nursery)
    for method in ("no_such_method", "greet"):
        sid = conn.open_call(method, timeout=0)
        conn.send_message(sid, b"\x81\x80", end_stream=True)
        conn.cancel(sid)
    await client_stream.send_all(conn.data_to_send())
    # The connection still serves: a normal call on it gets its answer.
    from trpc._events import CallEnded, MessagesReceived

    sid = conn.open_call("greet")
    conn.send_message(sid, b"\x81\x81\x63Ada", end_stream=True)  # [["Ada"]]
    await client_stream.send_all(conn.data_to_send())
    events = []
    with trio.fail_after(5):
        while not any(isinstance(e, CallEnded) and e.stream_id == sid for e in events):
            events += conn.receive_data(await client_stream.receive_some())
    assert [p for e in events if isinstance(e, MessagesReceived) for p in e.payloads] == [b"\x69Hello Ada"]
    assert server.connections == 1


async def raw_client(service, nursery):
    """A server on an in-memory stream and a hand-driven client protocol core for it."""
    import trio.testing

    import trpc
    from trpc.wire import Connection

    server = trpc.Server(service)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream)
    conn = Connection("client")
    conn.initiate()
    await client_stream.send_all(conn.data_to_send())
    while conn.peer_preface is None:
        conn.receive_data(await client_stream.receive_some())
    return server, conn, client_stream


async def raw_call(service, nursery, method, timeout):
    """Open one call with a hand-made client core; return the server and the CallEnded."""
    from trpc._events import CallEnded

    server, conn, client_stream = await raw_client(service, nursery)
    sid = conn.open_call(method, timeout=timeout)
    conn.send_message(sid, b"\x81\x80", end_stream=True)  # [[]]
    await client_stream.send_all(conn.data_to_send())
    events = []
    while not any(isinstance(e, CallEnded) for e in events):
        events += conn.receive_data(await client_stream.receive_some())
    (ended,) = [e for e in events if isinstance(e, CallEnded)]
    return server, ended


async def test_no_time_left_on_arrival_is_not_run(service, nursery, autojump_clock):
    server, ended = await raw_call(service, nursery, "block", 0)
    assert ended.status is Status.DEADLINE_EXCEEDED
    assert not service.started.is_set()


async def test_server_side_deadline_without_client_cancel(service, nursery, autojump_clock):
    """A client whose CANCEL never comes (its clock runs slow): the server's own deadline
    fires, the handler is cancelled and the status is DEADLINE_EXCEEDED."""
    server, ended = await raw_call(service, nursery, "block", 1.0)
    assert ended.status is Status.DEADLINE_EXCEEDED
    assert service.cancelled.is_set()
    assert server.running_calls == 0
