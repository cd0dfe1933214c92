"""Admission on the server: connections that never become trpc connections are closed after
the preface timeout, and connections beyond max_connections are closed at once, while real
clients keep being served."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

import trpc
from trpc._admission import LogLimiter, default_max_connections

from .helpers import preface
from .services import Svc


async def read_until_closed(stream) -> bytes:
    data = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return data
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize("sent", [b"", preface()[:10]], ids=["silent", "half-preface"])
async def test_a_connection_without_a_full_preface_is_closed_after_the_preface_timeout(
    nursery, autojump_clock, caplog, sent
):
    server = trpc.Server(Svc(), preface_timeout=5)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream, "memory")
    await client_stream.send_all(sent)
    start = trio.current_time()
    with trio.fail_after(60):
        data = await read_until_closed(client_stream)
    assert trio.current_time() - start == pytest.approx(5)
    # The server's preface, then the close; a silent client never said which wire it speaks
    # (trpc or gRPC), so it gets no preface at all.
    assert data[: len(b"TRPC")] == (b"TRPC" if sent else b"")
    await trio.sleep(0)
    assert server.connections == 0
    assert any("no trpc preface within 5 s" in r.getMessage() for r in caplog.records)


async def test_a_connection_whose_preface_arrived_is_not_subject_to_the_timeout(nursery, autojump_clock):
    server = trpc.Server(Svc(), preface_timeout=5)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream, "memory")
    async with trpc.open_client(client_stream) as client:
        await trio.sleep(60)
        assert await client.greet("later") == "Hello later"
        assert server.connections == 1


async def test_tls_handshake_and_preface_share_one_budget(nursery, autojump_clock):
    """A silent TLS peer is closed after preface_timeout from accept (not handshake + preface)."""
    import ssl

    import trustme

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("localhost").configure_cert(context)
    server = trpc.Server(Svc(), preface_timeout=3)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    done = trio.Event()

    async def serve():
        await server._serve_tls_connection(context, server_stream)
        done.set()

    nursery.start_soon(serve)
    with trio.fail_after(60):
        await done.wait()
    assert trio.current_time() == pytest.approx(3)


async def test_connections_beyond_max_connections_are_closed_at_once_and_clients_are_served_again(nursery):
    """60 idle raw sockets against max_connections=50 (loopback): 10 are closed at once and
    counted; the other 50 go after the preface timeout, and a real client then connects and
    calls while the 60 sockets are still open on our side."""
    server = trpc.Server(Svc(), max_connections=50, preface_timeout=1.0)
    address = await nursery.start(server.serve_tcp, 0)
    idle = []
    try:
        for _ in range(60):
            stream = await trio.open_tcp_stream(*address)
            idle.append(stream)
            try:
                # The first byte of a trpc preface: the server then sends its own (it waits
                # for the client's first byte to tell trpc from gRPC).
                await stream.send_all(b"T")
            except trio.BrokenResourceError:
                pass  # refused and closed already
        with trio.fail_after(5):
            while server.refused_connections < 10:
                await trio.sleep(0.01)
        assert server.refused_connections == 10
        assert server._sockets == 50
        # The refused ones are closed at once (before any preface timeout): EOF, no preface.
        closed_early = 0
        for stream in idle:
            with trio.move_on_after(0.05):
                data = await read_until_closed(stream)
                closed_early += data == b""
        assert closed_early == 10
        with trio.fail_after(10):
            while server._sockets:
                await trio.sleep(0.05)
        async with trpc.open_client(address) as client:
            assert await client.greet("real") == "Hello real"
    finally:
        for stream in idle:
            await stream.aclose()


async def test_max_connections_counts_until_close(nursery):
    server = trpc.Server(Svc(), max_connections=2)
    address = await nursery.start(server.serve_tcp, 0)
    async with trpc.open_client(address) as a, trpc.open_client(address) as b:
        assert await a.greet("a") == "Hello a" and await b.greet("b") == "Hello b"
        with pytest.raises(trpc.RpcError):
            async with trpc.open_client(address, connect_timeout=2) as c:
                await c.greet("c")
        assert server.refused_connections == 1
    with trio.fail_after(5):
        while server._sockets:
            await trio.sleep(0.01)
    async with trpc.open_client(address) as c:
        assert await c.greet("c") == "Hello c"


def test_default_max_connections_leaves_a_quarter_of_the_descriptors():
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        assert default_max_connections() == soft - soft // 4
    assert trpc.Server(Svc()).max_connections == default_max_connections()
    with pytest.raises(ValueError):
        trpc.Server(Svc(), max_connections=0)


async def test_admission_log_lines_are_rate_limited(autojump_clock, caplog):
    caplog.set_level(logging.WARNING, "trpc")
    log = LogLimiter(logging.getLogger("trpc"), interval=10)
    for _ in range(100):
        log.warning("flood", "trpc: refused %s", "x")
    log.warning("other", "trpc: other")
    await trio.sleep(11)
    log.warning("flood", "trpc: refused %s", "y")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["trpc: refused x", "trpc: other", "trpc: refused y (and 99 more like it in the last 11 s)"]


def test_the_cli_sets_the_admission_limits():
    from trpc._cli import _server_limits, _parser

    args = _parser().parse_args(["serve", "m:S", "--max-connections", "5", "--preface-timeout", "2.5"])
    assert _server_limits(args) == {"max_connections": 5, "preface_timeout": 2.5}
    assert _server_limits(_parser().parse_args(["serve", "m:S"])) == {}
