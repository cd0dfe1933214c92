"""Keepalive, ping policing and connection lifetimes (docs/PROTOCOL.md section 9; docs/LIMITS.md).

A dead peer is found by pings; a peer pinging in a loop is stopped; a server bounds how long a
connection lives and how long it may sit idle.  Time is the point here, so these run on
``autojump_clock`` over in-memory streams, except where the socket itself is the point.
"""

from __future__ import annotations

import cbor2
import pytest

from trpc import RemoteProtocolError, Status
from trpc.wire import Connection, FrameType, PingFlags

from .helpers import HEADER, Pair, frame


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
