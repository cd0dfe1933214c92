"""Keepalive, ping policing and connection lifetimes (docs/PROTOCOL.md section 9; docs/LIMITS.md).

A dead peer is found by pings; a peer pinging in a loop is stopped; a server bounds how long a
connection lives and how long it may sit idle.  Time is the point here, so these run on
``autojump_clock`` over in-memory streams, except where the socket itself is the point.
"""

from __future__ import annotations

import socket

import cbor2
import pytest
import trio
import trio.testing

import trpc
from trpc import RemoteProtocolError, RpcError, Status
from trpc.wire import PREFACE, Connection, FrameType, PingFlags

from .helpers import HEADER, Pair, frame, headers, preface


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each frame in ``data``."""
    frames = []
    while data:
        length, ftype, _, _ = HEADER.unpack_from(data)
        frames.append((ftype, data[HEADER.size : HEADER.size + length]))
        data = data[HEADER.size + length :]
    return frames


def _ping(payload: bytes = b"12345678") -> bytes:
    return frame(FrameType.PING, 0, 0, payload)


def _policed_pair(framer_cls, **options) -> Pair:
    return Pair(framer_cls, server_options={"min_ping_interval": 10.0, **options})


def test_the_core_answers_pings_that_keep_the_minimum_interval(framer_cls):
    pair = _policed_pair(framer_cls)
    for second in range(0, 100, 10):
        pair.server.receive_data(_ping(), now=float(second))
    out = pair.server.data_to_send()
    assert out == frame(FrameType.PING, PingFlags.ACK, 0, b"12345678") * 10


def test_the_core_forgives_a_few_early_pings_then_says_too_many_pings(framer_cls):
    pair = _policed_pair(framer_cls, max_ping_strikes=2)
    pair.server.receive_data(_ping(), now=100.0)
    pair.server.receive_data(_ping(), now=101.0)  # strike 1
    pair.server.receive_data(_ping(), now=102.0)  # strike 2
    with pytest.raises(RemoteProtocolError) as info:
        pair.server.receive_data(_ping(), now=103.0)
    assert info.value.error_code is Status.RESOURCE_EXHAUSTED
    assert "too many pings" in str(info.value)
    out = pair.server.data_to_send()
    assert out.count(frame(FrameType.PING, PingFlags.ACK, 0, b"12345678")) == 3  # not the 4th
    (goaway,) = [cbor2.loads(payload) for ftype, payload in _frames(out) if ftype == FrameType.GOAWAY]
    assert goaway[2] == Status.RESOURCE_EXHAUSTED and "too many pings" in goaway[3]


def test_a_ping_in_time_forgives_the_strikes(framer_cls):
    pair = _policed_pair(framer_cls, max_ping_strikes=2)
    now = 0.0
    for _ in range(5):  # early, early, in time: never three early in a row
        for step in (1.0, 1.0, 10.0):
            now += step
            pair.server.receive_data(_ping(), now=now)
    assert pair.server.accepting_calls


def test_a_ping_loop_in_one_chunk_is_policed(framer_cls):
    pair = _policed_pair(framer_cls)
    with pytest.raises(RemoteProtocolError, match="too many pings"):
        pair.server.receive_data(_ping() * 100, now=5.0)


def test_without_a_minimum_interval_every_ping_is_answered(framer_cls):
    pair = Pair(framer_cls)
    pair.server.receive_data(_ping() * 100)
    assert pair.server.data_to_send() == frame(FrameType.PING, PingFlags.ACK, 0, b"12345678") * 100


def test_ping_policing_settings_are_checked(framer_cls):
    with pytest.raises(ValueError):
        Connection("server", framer=framer_cls, min_ping_interval=-1)
    with pytest.raises(ValueError):
        Connection("server", framer=framer_cls, max_ping_strikes=-1)


# ----------------------------------------------------------------- peers that stop answering


async def _stopped_server(stream) -> None:
    """A server whose process stopped after its preface: it never reads or writes again."""
    await stream.send_all(preface())
    await trio.sleep_forever()


async def test_a_call_to_a_server_that_stopped_ends_with_unavailable(nursery, autojump_clock):
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(_stopped_server, server_stream)
    async with trpc.open_client(client_stream) as client:
        start = trio.current_time()
        with trio.fail_after(300), pytest.raises(RpcError) as info:
            await client.block()  # no deadline: before keepalive, it waited for ever
    assert info.value.status is Status.UNAVAILABLE
    assert "no keepalive answer in 10 s" in info.value.message
    # Nothing received for the keepalive time (15 s), then the ping's timeout (10 s).
    assert trio.current_time() - start == pytest.approx(25, abs=1)


async def test_the_client_pings_only_while_calls_are_pending(nursery, autojump_clock):
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(_stopped_server, server_stream)
    async with trpc.open_client(client_stream) as client:
        await trio.sleep(600)  # no call: nothing to wait for, no ping, no failure
        assert client._connection.broken is None
        assert client._connection.keepalive._count == 0


async def test_a_slow_call_on_a_live_server_is_pinged_but_never_failed_nor_policed(memory_client, autojump_clock):
    with trio.fail_after(1000):
        assert await memory_client.sleep_then(300, "done") == "done"
    keepalive = memory_client._connection.keepalive
    assert keepalive._count >= 300 // 15 - 1  # it did ping, every 15 s; the server answered
    assert memory_client._connection.broken is None


async def _stopped_client(stream, call: bool) -> None:
    """A client whose process stopped after its preface (and one call)."""
    await stream.send_all(preface())
    if call:
        await stream.send_all(frame(FrameType.HEADERS, 0, 1, headers("block"))
                              + frame(FrameType.DATA, 1, 1, cbor2.dumps([[]])))
    await trio.sleep_forever()


@pytest.mark.parametrize("call", [True, False], ids=["with a call", "idle"])
async def test_the_server_drops_a_client_that_stopped(service, nursery, autojump_clock, call):
    server = trpc.Server(service)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(_stopped_client, client_stream, call)
    done = trio.Event()

    async def serve():
        await server.serve_stream(server_stream, "stopped client")
        done.set()

    nursery.start_soon(serve)
    start = trio.current_time()
    with trio.fail_after(600):  # before keepalive, the connection stayed for ever
        await done.wait()
    # Nothing received for the server's keepalive time (60 s), then its timeout (20 s).
    assert trio.current_time() - start == pytest.approx(80, abs=1)
    assert server.connections == 0
    if call:
        assert service.cancel_reasons == [Status.UNAVAILABLE]


# ----------------------------------------------------------------- ping policing


def _read_frames(data: bytes) -> list[tuple[int, bytes]]:
    assert data[:4] == b"TRPC"
    return _frames(data[PREFACE.size :])


@pytest.mark.parametrize("pause", [0, 1.0], ids=["back to back", "one a second"])
async def test_a_client_pinging_in_a_loop_is_told_too_many_pings_and_closed(service, nursery, autojump_clock, pause):
    server = trpc.Server(service)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream, "pinger")
    await client_stream.send_all(preface())
    received = b""
    with trio.fail_after(60):  # before policing, every ping was answered for ever
        async with trio.open_nursery() as pinging:

            async def ping_forever():
                for _ in range(1000):  # bounded, and sleeping: so that the clock can jump
                    try:
                        await client_stream.send_all(_ping())
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    await trio.sleep(pause)

            pinging.start_soon(ping_forever)
            while chunk := await client_stream.receive_some():
                received += chunk
            pinging.cancel_scope.cancel()
    frames = _read_frames(received)
    (goaway,) = [cbor2.loads(payload) for ftype, payload in frames if ftype == FrameType.GOAWAY]
    assert goaway[2] == Status.RESOURCE_EXHAUSTED and "too many pings" in goaway[3]
    assert [ftype for ftype, _ in frames].count(FrameType.PING) == 3  # the first, 2 forgiven
    assert server.connections == 0


async def test_ping_policing_can_be_turned_off(service, nursery, autojump_clock):
    server = trpc.Server(service, keepalive_min_ping_interval=None)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream, "pinger")
    await client_stream.send_all(preface() + _ping() * 100)
    received = b""
    with trio.move_on_after(5):
        while received.count(bytes([FrameType.PING, PingFlags.ACK])) < 100:
            received += await client_stream.receive_some()
    assert [ftype for ftype, _ in _read_frames(received)] == [FrameType.PING] * 100


# ----------------------------------------------------------------- TCP keepalive


def _tcp_keepalive(sock) -> dict:
    options = {"SO_KEEPALIVE": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)}
    for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"):
        if hasattr(socket, name):
            options[name] = sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
    return options


async def test_client_and_server_tcp_sockets_have_tcp_keepalive(client, server):
    assert await client.greet("Ada") == "Hello Ada"
    (connection,) = server._connections
    expected = {"SO_KEEPALIVE": 1}
    if hasattr(socket, "TCP_KEEPIDLE"):
        expected.update(TCP_KEEPIDLE=60, TCP_KEEPINTVL=10, TCP_KEEPCNT=3)
    assert _tcp_keepalive(client._connection.stream.socket) == expected
    assert _tcp_keepalive(connection.stream.socket) == expected


# ----------------------------------------------------------------- connection lifetimes


@pytest.fixture
async def lifetime_client(service, nursery, request):
    """A client joined to a server with the lifetime options the test is parametrized with."""
    server = trpc.Server(service, **request.param)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream, "memory")
    async with trpc.open_client(client_stream) as client:
        client.server = server
        yield client


@pytest.mark.parametrize("lifetime_client", [dict(max_connection_age=30, max_connection_age_grace=20)], indirect=True)
async def test_at_its_maximum_age_a_connection_says_goaway_lets_its_calls_finish_and_closes(
    lifetime_client, autojump_clock
):
    client = lifetime_client
    connection = client._connection
    start = trio.current_time()
    results = []
    async with trio.open_nursery() as calls:

        async def long_call():
            results.append(await client.sleep_then(40, "finished"))

        calls.start_soon(long_call)
        await trio.sleep(31)  # past the age: the server has said GOAWAY
        assert connection.conn.goaway_received is not None
        with pytest.raises(RpcError) as info:
            await client.greet("late")  # no new calls on this connection
        assert info.value.status is Status.UNAVAILABLE
    assert results == ["finished"]  # the running call finished within the grace
    with trio.fail_after(5):
        await connection.closed.wait()  # and then the server closed the connection
    assert trio.current_time() - start == pytest.approx(40, abs=1)
    assert client.server.connections == 0


@pytest.mark.parametrize("lifetime_client", [dict(max_connection_age=30, max_connection_age_grace=20)], indirect=True)
async def test_calls_still_running_after_the_age_grace_are_ended(lifetime_client, autojump_clock):
    client = lifetime_client
    start = trio.current_time()
    with trio.fail_after(300), pytest.raises(RpcError) as info:
        await client.sleep_then(1000, "too late")
    assert info.value.status is Status.UNAVAILABLE
    assert trio.current_time() - start == pytest.approx(50, abs=1)  # the age, then the grace
    assert client.server.connections == 0


@pytest.mark.parametrize("lifetime_client", [dict(max_connection_idle=30)], indirect=True)
async def test_a_connection_without_calls_for_max_connection_idle_is_closed(lifetime_client, autojump_clock):
    client = lifetime_client
    connection = client._connection
    assert await client.sleep_then(100, "a long call is not idleness") == "a long call is not idleness"
    ended = trio.current_time()
    with trio.fail_after(300):
        await connection.closed.wait()
    assert trio.current_time() - ended == pytest.approx(30, abs=1)
    assert connection.conn.goaway_received is not None
    assert client.server.connections == 0
    with pytest.raises(RpcError) as info:
        await client.greet("late")
    assert info.value.status is Status.UNAVAILABLE


async def test_without_lifetime_limits_a_quiet_connection_lives_on(memory_client, autojump_clock):
    await trio.sleep(3600)  # the server's pings find the client alive; nothing closes
    assert await memory_client.greet("Ada") == "Hello Ada"


def test_keepalive_and_lifetime_settings_are_checked(service):
    for options in (dict(keepalive_time=0), dict(keepalive_timeout=-1), dict(max_connection_idle=0),
                    dict(max_connection_age=-5), dict(max_connection_age_grace=-1),
                    dict(keepalive_min_ping_interval=-1), dict(keepalive_max_ping_strikes=-1)):
        with pytest.raises(ValueError):
            trpc.Server(service, **options)


async def test_client_keepalive_settings_are_checked():
    for options in (dict(keepalive_time=0), dict(keepalive_timeout=0)):
        with pytest.raises(ValueError):
            async with trpc.open_client("127.0.0.1:1", **options):
                pass


def test_trpc_serve_and_call_take_the_keepalive_and_lifetime_flags():
    from trpc._cli import _parser, _server_lifetimes

    args = _parser().parse_args(["serve", "m:S", "--keepalive-time", "30", "--keepalive-timeout", "5",
                                 "--keepalive-min-ping-interval", "0", "--keepalive-max-ping-strikes", "4",
                                 "--max-connection-idle", "600", "--max-connection-age", "3600",
                                 "--max-connection-age-grace", "30"])
    assert _server_lifetimes(args) == dict(
        keepalive_time=30, keepalive_timeout=5, keepalive_min_ping_interval=None, keepalive_max_ping_strikes=4,
        max_connection_idle=600, max_connection_age=3600, max_connection_age_grace=30,
    )
    defaults = _server_lifetimes(_parser().parse_args(["serve", "m:S"]))
    assert defaults["keepalive_time"] == 60 and defaults["max_connection_age"] is None
    args = _parser().parse_args(["call", "h:1", "m", "--keepalive-time", "0", "--keepalive-timeout", "3"])
    assert (args.keepalive_time, args.keepalive_timeout) == (0, 3)
