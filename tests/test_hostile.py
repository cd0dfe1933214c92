"""Hostile peers against a real server on loopback: each gets a typed error and a closed
connection, memory stays bounded, and every other client keeps being served."""

from __future__ import annotations

import cbor2
import pytest
import trio

import trpc
from trpc import Status
from trpc.wire import PREFACE, FrameType
from trpc._transport import WRITE_HIGH_WATER

from .helpers import frame, headers, preface


async def read_until_closed(stream, limit=1 << 20):
    data = b""
    with trio.fail_after(10):
        while len(data) < limit:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    return data


def goaway_of(data: bytes):
    """The (status, message) of the GOAWAY frame in what the server sent after its preface."""
    from trpc._framer_py import PyFramer

    frames = PyFramer().feed(data[PREFACE.size :])
    goaways = [cbor2.loads(p) for t, _, _, p in frames if t == FrameType.GOAWAY]
    assert len(goaways) == 1, frames
    return Status(goaways[0][2]), goaways[0].get(3, "")


async def still_serving(server):
    async with trpc.open_client(server.address) as client:
        assert await client.greet("next") == "Hello next"


@pytest.mark.parametrize(
    "name, data, status, text",
    [
        ("garbage", b"\x00\x01garbage" * 100, Status.INTERNAL, "not a trpc peer"),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Status.INTERNAL, "not a trpc peer"),
        ("version", preface(major=9), Status.UNIMPLEMENTED, "protocol 9"),
        ("unknown frame type", preface() + frame(0x42, 0, 0), Status.INTERNAL, "unknown frame type"),
        ("never-opened stream", preface() + frame(FrameType.DATA, 0, 5, b"\x01"), Status.INTERNAL, "never opened"),
        (
            "reused stream id",
            preface() + frame(FrameType.HEADERS, 0, 1, headers("greet")) * 2,
            Status.INTERNAL,
            "reuses stream id",
        ),
        (
            "oversize length",
            preface() + (1 << 30).to_bytes(4, "big") + b"\x00\x00\x00\x00\x00\x01",
            Status.RESOURCE_EXHAUSTED,
            "",
        ),
    ],
)
async def test_bad_input_gets_goaway_and_close(server, name, data, status, text):
    stream = await trio.open_tcp_stream(*server.address)
    await stream.send_all(data)
    reply = await read_until_closed(stream)
    assert reply[:4] == b"TRPC"
    got_status, message = goaway_of(reply)
    assert got_status is status
    assert text in message
    await still_serving(server)
    assert server.running_calls == 0


async def test_oversize_frame_is_refused_before_its_body(server):
    """The server answers as soon as the 10-byte header announces 1 GiB: it never waits for
    (or buffers) the body."""
    stream = await trio.open_tcp_stream(*server.address)
    await stream.send_all(preface() + (1 << 30).to_bytes(4, "big") + bytes([0, 0, 0, 0, 0, 1]))
    reply = await read_until_closed(stream)
    assert goaway_of(reply)[0] is Status.RESOURCE_EXHAUSTED


async def test_truncated_frame_then_eof(server, caplog):
    stream = await trio.open_tcp_stream(*server.address)
    await stream.send_all(preface() + frame(FrameType.HEADERS, 0, 1, headers("greet"))[:-3])
    await stream.send_eof()
    await read_until_closed(stream)
    await still_serving(server)
    assert any("ends in the middle of a frame" in r.getMessage() or "truncated" in r.getMessage().lower()
               or "protocol error" in r.getMessage() for r in caplog.records)


async def test_peer_vanishes_mid_call(server, service):
    stream = await trio.open_tcp_stream(*server.address)
    await stream.send_all(preface() + frame(FrameType.HEADERS, 0, 1, headers("block")) + frame(FrameType.DATA, 1, 1, b"\x81\x80"))
    await service.started.wait()
    assert server.running_calls == 1
    await stream.aclose()
    with trio.fail_after(5):
        await service.cancelled.wait()
    assert service.cancel_reasons == [Status.UNAVAILABLE]
    with trio.fail_after(5):
        while server.running_calls or server.connections:
            await trio.sleep(0.01)
    await still_serving(server)


async def test_stream_flood_is_bounded(service, nursery):
    server = trpc.Server(service, max_concurrent_streams=10)
    server.address = await nursery.start(server.serve_tcp, 0)
    stream = await trio.open_tcp_stream(*server.address)
    opening = b"".join(
        frame(FrameType.HEADERS, 0, sid, headers("block")) + frame(FrameType.DATA, 1, sid, b"\x81\x80")
        for sid in range(1, 1001)
    )
    await stream.send_all(preface() + opening)
    with trio.fail_after(10):
        while server.running_calls < 10:
            await trio.sleep(0.01)
    await trio.sleep(0.1)
    assert server.running_calls == 10  # the other 990 were refused, not queued
    from trpc._framer_py import PyFramer

    framer = PyFramer()
    refused = 0
    server_preface = b""
    with trio.fail_after(10):
        while refused < 990:
            data = await stream.receive_some(65536)
            assert data
            if len(server_preface) < PREFACE.size:
                take = PREFACE.size - len(server_preface)
                server_preface, data = server_preface + data[:take], data[take:]
            for t, _, _, payload in framer.feed(data):
                if t == FrameType.TRAILERS and cbor2.loads(payload)[1] == Status.RESOURCE_EXHAUSTED:
                    refused += 1
    assert refused == 990
    await still_serving(server)
    await stream.aclose()


async def test_client_that_never_reads_cannot_grow_server_buffers(service, nursery):
    """Pings make the server queue acks; a peer that never reads them makes the server stop
    reading (bounded output buffer) instead of buffering without limit.  (Ping policing, on
    by default, would close such a connection at its fourth ping: it is off here, so that
    the bound is tested on its own.)"""
    server = trpc.Server(service, keepalive_min_ping_interval=None)
    server.address = await nursery.start(server.serve_tcp, 0)
    stream = await trio.open_tcp_stream(*server.address)
    await stream.send_all(preface())
    ping = frame(FrameType.PING, 0, 0, b"12345678") * 4096
    sent = 0
    with trio.move_on_after(3):
        while sent < 1000:  # 1000 x 4096 pings = 74 MB of acks, if they were all queued
            await stream.send_all(ping)
            sent += 1
    assert sent < 1000  # the server stopped reading, so our sends blocked
    (connection,) = server._connections
    queued = sum(map(len, connection.conn._out))
    # Bounded: the DATA flow control allows, plus the margin, plus acks for one received chunk.
    assert queued <= connection.conn.peer_connection_window + WRITE_HIGH_WATER + 65536
    await still_serving(server)
    await stream.aclose()
