"""How long open_client waits for a server that accepts and never answers: the sooner of
connect_timeout and the client's timeout=, each named in the UNAVAILABLE it raises; a caller's
own deadline is the caller's scope's business (move_on_after just cancels)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trpc
from trpc import RpcError, Status


async def silent_server_stream():
    """The client end of an in-memory stream whose server end never answers."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    return client_stream, server_stream


@pytest.mark.parametrize(
    "options, seconds, setting",
    [
        ({"timeout": 3}, 3, "timeout="),
        ({"timeout": 3, "connect_timeout": 1}, 1, "connect_timeout="),
        ({}, 10, "connect_timeout="),
    ],
)
async def test_the_sooner_of_connect_timeout_and_timeout_bounds_the_preface_wait(autojump_clock, options, seconds, setting):
    client_stream, _server_stream = await silent_server_stream()
    start = trio.current_time()
    with pytest.raises(RpcError) as info:
        async with trpc.open_client(client_stream, **options):
            pass
    assert trio.current_time() - start == pytest.approx(seconds)
    assert info.value.status is Status.UNAVAILABLE
    assert f"did not answer with a trpc preface within {seconds} s ({setting})" in info.value.message


async def test_a_callers_move_on_after_just_cancels(autojump_clock):
    client_stream, _server_stream = await silent_server_stream()
    start = trio.current_time()
    with trio.move_on_after(2) as scope:
        async with trpc.open_client(client_stream, timeout=3):
            pass
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(2)


async def test_a_callers_fail_after_raises_too_slow(autojump_clock):
    client_stream, _server_stream = await silent_server_stream()
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(2):
            async with trpc.open_client(client_stream):
                pass


def test_the_limit_is_chosen_from_the_three():
    from trpc.channel._connection import ConnectLimit as _ConnectLimit

    inf = float("inf")
    assert (_ConnectLimit.choose(100, 10, None, inf).deadline, _ConnectLimit.choose(100, 10, None, inf).setting) == (110, "connect_timeout")
    assert _ConnectLimit.choose(100, 10, 3, inf).deadline == 103
    caller = _ConnectLimit.choose(100, 10, 3, 102)
    assert caller.deadline == inf and caller.setting == "the caller's deadline"


async def test_a_server_that_accepts_and_never_answers_fails_within_the_client_timeout(nursery):
    """Real TCP on loopback: a listener that accepts and never writes (a stopped server)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    accepted = []

    accepting = trio.CancelScope()

    async def accept_forever():
        with accepting:
            while True:
                accepted.append(await listeners[0].accept())

    nursery.start_soon(accept_forever)
    address = listeners[0].socket.getsockname()[:2]
    start = trio.current_time()
    with trio.fail_after(5):
        with pytest.raises(RpcError) as info:
            async with trpc.open_client(address, timeout=0.3):
                pass
    assert trio.current_time() - start < 2
    assert info.value.status is Status.UNAVAILABLE
    assert "within 0.3 s (timeout=)" in info.value.message
    accepting.cancel()
    await trio.sleep(0)
    for stream in accepted:
        await stream.aclose()
    for listener in listeners:
        await listener.aclose()
