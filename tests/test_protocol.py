"""The sans-IO core: events out of bytes, bytes out of intentions, the stream state table,
flow control, and every kind of hostile input.  No I/O here; both framers via ``framer_cls``."""

from __future__ import annotations

import itertools

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trpc import FrameTooLargeError, LocalProtocolError, RemoteProtocolError, Status, TruncatedFrameError
from trpc._events import (
    CallCancelled,
    CallEnded,
    CallOpened,
    ConnectionClosed,
    GoAwayReceived,
    HeadersReceived,
    MessagesReceived,
    PingAcknowledged,
    PingReceived,
    SendCreditAvailable,
    StreamEnded,
)
from trpc.wire import Connection, FrameType, Role, StreamState
from trpc.wire._streams import TRANSITIONS as _TRANSITIONS

from .helpers import Pair, frame, headers, messages, preface, types


# ---------------------------------------------------------------------------------- basics
@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_unary_round_trip(framer_cls, chunk):
    pair = Pair(framer_cls, chunk=chunk)
    sid = pair.client.open_call("greet", metadata={"k": "v", "b": b"\x00"}, timeout=1.5)
    pair.client.send_message(sid, cbor2.dumps([["Ada"]]), end_stream=True)
    events = pair.exchange()["server"]
    assert types(events) == [CallOpened, MessagesReceived, StreamEnded]
    opened = events[0]
    assert (opened.stream_id, opened.method, opened.metadata) == (sid, "greet", {"k": "v", "b": b"\x00"})
    assert opened.timeout == pytest.approx(1.5)
    assert [cbor2.loads(p) for p in events[1].payloads] == [[["Ada"]]]

    pair.server.send_headers(sid, {"h": "1"})
    pair.server.send_message(sid, cbor2.dumps("Hello Ada"))
    pair.server.send_trailers(sid, Status.OK, metadata={"t": "2"})
    events = pair.exchange()["client"]
    assert types(events) == [HeadersReceived, MessagesReceived, CallEnded]
    assert events[0].metadata == {"h": "1"}
    assert events[1].payloads == [cbor2.dumps("Hello Ada")]
    assert events[2].status is Status.OK and events[2].metadata == {"t": "2"}
    assert pair.client.open_streams == 0 and pair.server.open_streams == 0


def test_many_streams_interleave_and_match_by_id(framer_cls):
    pair = Pair(framer_cls)
    ids = [pair.client.open_call("m") for _ in range(50)]
    assert ids == list(range(1, 51))
    for sid in reversed(ids):
        pair.client.send_message(sid, cbor2.dumps([[sid]]), end_stream=True)
    pair.exchange()
    for sid in ids[::2] + ids[1::2]:
        pair.server.send_message(sid, cbor2.dumps(sid * 10))
        pair.server.send_trailers(sid, Status.OK)
    ended = {}
    results = {}
    for event in pair.exchange()["client"]:
        if isinstance(event, MessagesReceived):
            (payload,) = event.payloads
            results[event.stream_id] = cbor2.loads(payload)
        elif isinstance(event, CallEnded):
            ended[event.stream_id] = event.status
    assert results == {sid: sid * 10 for sid in ids}
    assert set(ended) == set(ids)


def test_error_status_with_details_and_trailers(framer_cls):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m", end_stream=True)
    pair.exchange()
    pair.server.send_trailers(sid, Status.NOT_FOUND, "no such user", {"id": 7}, {"retry": "no"})
    (event,) = pair.exchange()["client"]
    assert (event.status, event.message, event.details, event.metadata) == (
        Status.NOT_FOUND, "no such user", {"id": 7}, {"retry": "no"},
    )


def test_unknown_status_number_becomes_unknown(framer_cls):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m", end_stream=True)
    pair.exchange()
    events = pair.client.receive_data(frame(FrameType.TRAILERS, 0, sid, cbor2.dumps({1: 99})))
    assert events[0].status is Status.UNKNOWN


def test_ping_is_acknowledged(framer_cls):
    pair = Pair(framer_cls)
    pair.client.ping(b"12345678")
    events = pair.exchange()
    assert types(events["server"]) == [PingReceived]
    assert types(events["client"]) == [PingAcknowledged]
    assert events["client"][0].payload == b"12345678"
    with pytest.raises(LocalProtocolError):
        pair.client.ping(b"short")


def test_cancel_reaches_server_with_reason(framer_cls):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m")
    pair.exchange()
    pair.client.cancel(sid, Status.DEADLINE_EXCEEDED, "too slow")
    (event,) = pair.exchange()["server"]
    assert event == CallCancelled(stream_id=sid, reason=Status.DEADLINE_EXCEEDED, message="too slow")
    assert pair.server.open_streams == 0
    # Late frames from the server for the cancelled stream are dropped by the client.
    with pytest.raises(LocalProtocolError):
        pair.server.send_trailers(sid, Status.OK)
    pair.client.cancel(sid)  # no-op


def test_frames_for_closed_streams_are_ignored(framer_cls):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m")
    pair.client.cancel(sid)
    pair.exchange()
    # The server, unaware yet, had queued a message and trailers: dropped silently.
    events = pair.client.receive_data(
        frame(FrameType.DATA, 0, sid, cbor2.dumps(1)) + frame(FrameType.TRAILERS, 0, sid, cbor2.dumps({1: 0}))
    )
    assert events == []


def test_goaway_fails_unprocessed_calls_only(framer_cls):
    pair = Pair(framer_cls)
    first = pair.client.open_call("m")
    pair.exchange()
    second = pair.client.open_call("m")  # not yet seen by the server when it goes away
    pair.server.goaway(Status.OK, "restarting")
    events = pair.server.data_to_send()
    client_events = pair.client.receive_data(events)
    assert types(client_events) == [GoAwayReceived, CallEnded]
    assert client_events[0].last_stream_id == first
    assert client_events[1].stream_id == second and client_events[1].status is Status.UNAVAILABLE
    assert not pair.client.accepting_calls
    with pytest.raises(LocalProtocolError):
        pair.client.open_call("m")
    # The second call's HEADERS still reach the server, which refuses it.
    pair.exchange()
    assert pair.server.open_streams == 1


def test_eof_at_boundary_and_inside_frame(framer_cls):
    pair = Pair(framer_cls)
    assert types(pair.server.receive_data(b"")) == [ConnectionClosed]
    pair = Pair(framer_cls)
    pair.server.receive_data(frame(FrameType.PING, 0, 0, b"12345678")[:5])
    with pytest.raises(TruncatedFrameError):
        pair.server.receive_data(b"")


# ------------------------------------------------------------------ the state table
def test_transition_table_is_closed_under_roles():
    # Every entry is for a live state; CLOSED has no way out.
    for (role, state, _), new in _TRANSITIONS.items():
        assert state is not StreamState.CLOSED
        assert isinstance(new, StreamState)
    # Only clients half-close locally; only servers see the remote half-close.
    assert not any(r is Role.SERVER and s is StreamState.HALF_CLOSED_LOCAL for r, s, _ in _TRANSITIONS)
    assert not any(r is Role.CLIENT and s is StreamState.HALF_CLOSED_REMOTE for r, s, _ in _TRANSITIONS)


@pytest.mark.parametrize("end_stream", [False, True])
def test_send_outside_table_is_local_error(framer_cls, end_stream):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m", end_stream=end_stream)
    pair.exchange()
    if end_stream:
        with pytest.raises(LocalProtocolError):
            pair.client.send_message(sid, b"\x01")
        with pytest.raises(LocalProtocolError):
            pair.client.end_stream(sid)
    with pytest.raises(LocalProtocolError):
        pair.client.send_trailers(sid, Status.OK)
    with pytest.raises(LocalProtocolError):
        pair.server.cancel(sid)
    with pytest.raises(LocalProtocolError):
        pair.server.open_call("m")
    with pytest.raises(LocalProtocolError):
        pair.client.send_message(sid + 1, b"\x01")
    with pytest.raises(LocalProtocolError):
        pair.server.send_message(sid, b"")  # messages are never empty
    pair.server.send_message(sid, b"\x01")
    with pytest.raises(LocalProtocolError):
        pair.server.send_headers(sid)  # headers only before the first message
    assert pair.client.stream_state(sid) is (StreamState.HALF_CLOSED_LOCAL if end_stream else StreamState.OPEN)
    assert pair.server.stream_state(sid) is (StreamState.HALF_CLOSED_REMOTE if end_stream else StreamState.OPEN)


# Each hostile frame, sent to the given side after a stream 1 was opened (and, for the client,
# half-closed), must be a RemoteProtocolError with a GOAWAY queued for the peer.
HOSTILE = {
    "unknown frame type": ("server", frame(0x7F, 0, 0, b"")),
    "DATA on stream 0": ("server", frame(FrameType.DATA, 0, 0, b"\x01")),
    "DATA for a never-opened stream": ("server", frame(FrameType.DATA, 0, 9, b"\x01")),
    "reused stream id": ("server", frame(FrameType.HEADERS, 0, 1, headers("m"))),
    "lower stream id": ("server", frame(FrameType.HEADERS, 0, 0, headers("m"))),
    "HEADERS without method": ("server", frame(FrameType.HEADERS, 0, 5, cbor2.dumps({3: {}}))),
    "HEADERS not CBOR": ("server", frame(FrameType.HEADERS, 0, 5, b"\xff\xff")),
    "HEADERS not a map": ("server", frame(FrameType.HEADERS, 0, 5, cbor2.dumps([1]))),
    "bad metadata": ("server", frame(FrameType.HEADERS, 0, 5, cbor2.dumps({1: "m", 3: {"k": 1}}))),
    "negative timeout": ("server", frame(FrameType.HEADERS, 0, 5, cbor2.dumps({1: "m", 2: -1}))),
    "TRAILERS from a client": ("server", frame(FrameType.TRAILERS, 0, 1, cbor2.dumps({1: 0}))),
    "CANCEL from a server": ("client", frame(FrameType.CANCEL, 0, 1, cbor2.dumps({1: 1}))),
    "END_STREAM from a server": ("client", frame(FrameType.DATA, 1, 1, b"\x01")),
    "empty DATA without END_STREAM": ("server", frame(FrameType.DATA, 0, 1, b"")),
    "MORE with END_STREAM": ("server", frame(FrameType.DATA, 3, 1, b"\x01")),
    "unknown DATA flags": ("server", frame(FrameType.DATA, 0x80, 1, b"\x01")),
    "WINDOW_UPDATE of 0": ("server", frame(FrameType.WINDOW_UPDATE, 0, 0, b"\0\0\0\0")),
    "WINDOW_UPDATE wrong size": ("server", frame(FrameType.WINDOW_UPDATE, 0, 0, b"\0\0\1")),
    "WINDOW_UPDATE overflow": ("server", frame(FrameType.WINDOW_UPDATE, 0, 0, b"\x7f\xff\xff\xff")),
    "PING on a stream": ("server", frame(FrameType.PING, 0, 1, b"12345678")),
    "PING wrong size": ("server", frame(FrameType.PING, 0, 0, b"1234")),
    "GOAWAY on a stream": ("server", frame(FrameType.GOAWAY, 0, 1, cbor2.dumps({1: 0, 2: 0}))),
    "TRAILERS without status": ("client", frame(FrameType.TRAILERS, 0, 1, cbor2.dumps({2: "x"}))),
    "TRAILERS for a never-opened stream": ("client", frame(FrameType.TRAILERS, 0, 7, cbor2.dumps({1: 0}))),
    "HEADERS twice from the server": (
        "client", frame(FrameType.HEADERS, 0, 1, cbor2.dumps({})) * 2,
    ),
    "credit exceeded": ("server", frame(FrameType.DATA, 0, 1, b"\x01" * 2048)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_frames_fail_the_connection_with_goaway(framer_cls, name):
    side, data = HOSTILE[name]
    options = {"stream_window": 1024} if name == "credit exceeded" else {}
    pair = Pair(framer_cls, server_options=options)
    pair.client.open_call("m", end_stream=(side == "client"))
    pair.exchange()
    target = getattr(pair, side)
    with pytest.raises(RemoteProtocolError) as info:
        target.receive_data(data)
    out = target.data_to_send()
    goaway = [f for f in framer_cls(1 << 20).feed(out) if f[0] == FrameType.GOAWAY]
    assert len(goaway) == 1, out
    fields = cbor2.loads(goaway[0][3])
    assert fields[2] != 0 and "protocol error" in fields[3]
    assert not target.accepting_calls
    with pytest.raises(RemoteProtocolError):
        target.receive_data(frame(FrameType.PING, 0, 0, b"12345678"))
    assert str(info.value)


def test_events_before_a_bad_frame_are_kept(framer_cls):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m", end_stream=True)
    pair.exchange()
    data = frame(FrameType.DATA, 0, sid, cbor2.dumps("ok")) + frame(FrameType.TRAILERS, 0, sid, cbor2.dumps({1: 0}))
    with pytest.raises(RemoteProtocolError) as info:
        pair.client.receive_data(data + b"\xff" * 40)
    assert types(info.value.events) == [MessagesReceived, CallEnded]


@pytest.mark.parametrize(
    "data, error",
    [
        (b"GET / HTTP/1.1\r\n\r\n", "not a trpc peer"),
        (preface(major=2), "protocol 2.0"),
        (preface(max_frame=10), "max frame size"),
        (preface(stream_window=0), "stream window"),
    ],
)
def test_bad_preface(framer_cls, data, error):
    server = Connection("server", framer=framer_cls)
    server.initiate()
    server.data_to_send()
    with pytest.raises(RemoteProtocolError, match=error):
        server.receive_data(data)
    out = server.data_to_send()
    assert out[4] == FrameType.GOAWAY and cbor2.loads(out[10:])[2] != 0
    assert not server.accepting_calls


def test_garbage_is_rejected_at_the_first_wrong_byte(framer_cls):
    server = Connection("server", framer=framer_cls)
    with pytest.raises(RemoteProtocolError):
        server.receive_data(b"X")


def test_preface_fed_byte_by_byte(framer_cls):
    server = Connection("server", framer=framer_cls)
    data = preface() + frame(FrameType.HEADERS, 1, 1, headers("m"))
    events = []
    for i in range(len(data)):
        events += server.receive_data(data[i : i + 1])
    assert [type(e).__name__ for e in events] == ["PrefaceReceived", "CallOpened"]
    assert events[1].end_stream


def test_oversize_frame_is_rejected_from_its_header(framer_cls):
    pair = Pair(framer_cls, server_options={"max_frame_size": 1 << 14})
    header_only = (1 << 20).to_bytes(4, "big") + bytes([0, 0]) + (1).to_bytes(4, "big")
    pair.client.open_call("m")
    pair.exchange()
    with pytest.raises(FrameTooLargeError):
        pair.server.receive_data(header_only)


def test_stream_flood_is_refused_beyond_the_limit(framer_cls):
    pair = Pair(framer_cls, server_options={"max_concurrent_streams": 3})
    assert pair.client.peer_max_concurrent_streams == 3
    for _ in range(3):
        pair.client.open_call("m")
    with pytest.raises(LocalProtocolError, match="at most 3"):
        pair.client.open_call("m")  # a well-behaved client stops at the announced limit
    pair = Pair(framer_cls, server_options={"max_concurrent_streams": 3})
    pair.client.peer_max_concurrent_streams = 1000  # ... a hostile one does not
    ids = [pair.client.open_call("m") for _ in range(5)]
    events = pair.exchange()
    assert [e.stream_id for e in events["server"] if isinstance(e, CallOpened)] == ids[:3]
    refused = [e for e in events["client"] if isinstance(e, CallEnded)]
    assert [(e.stream_id, e.status) for e in refused] == [(4, Status.RESOURCE_EXHAUSTED), (5, Status.RESOURCE_EXHAUSTED)]
    assert pair.server.open_streams == 3


# ------------------------------------------------------------------------ flow control
def test_large_message_is_split_and_reassembled(framer_cls):
    pair = Pair(framer_cls, server_options={"stream_window": 20000, "max_frame_size": 1 << 14})
    sid = pair.client.open_call("m")
    big = cbor2.dumps(bytes(range(256)) * 1000)  # 256 KB > window > frame
    assert pair.client.send_message(sid, big) is False
    assert pair.client.send_buffered(sid) > 0
    events = pair.exchange()
    assert messages(events["server"]) == [big]
    assert any(isinstance(e, SendCreditAvailable) for e in events["client"])
    assert pair.client.send_buffered(sid) == 0


def test_credit_is_returned_only_as_the_application_consumes(framer_cls):
    window = 4096
    pair = Pair(framer_cls, client_options={"stream_window": window})
    sid = pair.client.open_call("m", end_stream=True)
    pair.exchange()
    message = b"\x58\x40" + b"x" * 64  # CBOR: a 64-byte byte string, 66 bytes in all
    sent = 0
    while pair.server.send_message(sid, message):
        sent += 1
    assert sent == window // len(message)  # the next one went out only in part
    received = messages(pair.exchange()["client"])
    assert len(received) == sent
    # The client holds a full window of unconsumed messages: nothing more flows.
    assert pair.exchange() == {"client": [], "server": []}
    assert pair.server.send_buffered(sid) == len(message) - window % len(message)
    for payload in received:
        pair.client.consumed(sid, len(payload))
    events = pair.exchange()
    assert messages(events["client"]) == [message]
    assert [type(e) for e in events["server"]] == [SendCreditAvailable]
    assert pair.server.send_buffered(sid) == 0


def test_oversize_message_ends_only_that_call(framer_cls):
    pair = Pair(framer_cls, server_options={"max_message_size": 2048})
    big, small = pair.client.open_call("m"), pair.client.open_call("m")
    pair.exchange()
    pair.client.peer_max_message_size = 1 << 20  # pretend the client ignored the server's limit
    pair.client.send_message(big, b"\x01" * 3000)
    pair.client.send_message(small, b"\x02" * 100, end_stream=True)
    events = pair.exchange()
    cancelled = [e for e in events["server"] if isinstance(e, CallCancelled)]
    assert [(e.stream_id, e.reason) for e in cancelled] == [(big, Status.RESOURCE_EXHAUSTED)]
    assert [e.stream_id for e in events["server"] if isinstance(e, MessagesReceived)] == [small]
    ended = [e for e in events["client"] if isinstance(e, CallEnded)]
    assert [(e.stream_id, e.status) for e in ended] == [(big, Status.RESOURCE_EXHAUSTED)]
    assert pair.server.accepting_calls


def test_local_message_size_check(framer_cls):
    pair = Pair(framer_cls, server_options={"max_message_size": 2048})
    assert pair.client.peer_max_message_size == 2048
    sid = pair.client.open_call("m")
    with pytest.raises(LocalProtocolError, match="2048"):
        pair.client.send_message(sid, b"\x01" * 3000)
    pair.client.send_message(sid, b"\x01" * 2048)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 70000), min_size=1, max_size=12),
    window=st.integers(1024, 100000),
    consume=st.lists(st.booleans(), min_size=1, max_size=30),
    chunk=st.sampled_from([None, 1000, 65536]),
)
def test_credit_math_survives_random_sizes_and_pacing(framer_cls, sizes, window, consume, chunk):
    """Random message sizes and random consumer pacing: every message arrives intact, in
    order, exactly once; the receiver never holds more than its window plus one message; credit
    never goes negative."""
    pair = Pair(
        framer_cls,
        chunk=chunk,
        server_options={"stream_window": window, "max_message_size": 1 << 20, "max_frame_size": 1 << 14},
    )
    sid = pair.client.open_call("m")
    sent = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    queue = list(sent)
    received, held = [], []
    pacing = itertools.cycle(consume)
    for _ in range(10_000):
        if queue and not pair.client.send_buffered(sid):
            pair.client.send_message(sid, queue.pop(0))
        events = pair.exchange()
        held.extend(messages(events["server"]))
        stream = pair.server._streams.live[sid]
        assert stream.recv_granted >= 0
        assert sum(map(len, held)) <= window + max(sizes)
        # The reader consumes when its pacing says so, and always when nothing else moved
        # (a reader that never reads stalls the stream by design).
        stalled = not events["server"] and not events["client"]
        if held and (next(pacing) or stalled):
            payload = held.pop(0)
            received.append(payload)
            pair.server.consumed(sid, len(payload))
        if len(received) == len(sent):
            break
    assert received == sent


# ------------------------------------------------------------- hypothesis: the state machine
_ACTIONS = ["open", "open_end", "c_data", "c_end", "c_cancel", "s_headers", "s_data", "s_trailers", "exchange"]


class _Model:
    """What each side may do on each stream, written from docs/PROTOCOL.md alone (not from the
    core's table, which a test that reads it could never catch deleting a row)."""

    def __init__(self):
        # client side: opened, half-closed, ended (cancelled or trailers received)
        self.c_ended_sending: set[int] = set()
        self.c_done: set[int] = set()
        # server side: knows the call, response started, finished (trailers or cancel)
        self.s_known: set[int] = set()
        self.s_responded: set[int] = set()
        self.s_done: set[int] = set()
        self.opened: list[int] = []
        self.cancelled: set[int] = set()
        self.trailed: set[int] = set()

    def allowed(self, action, sid):
        if action in ("c_data", "c_end"):
            return sid not in self.c_ended_sending and sid not in self.c_done
        if action == "c_cancel":
            return True  # a no-op once the call has ended
        if action == "s_headers":
            return sid in self.s_known and sid not in self.s_done and sid not in self.s_responded
        return sid in self.s_known and sid not in self.s_done  # s_data, s_trailers

    def did(self, action, sid):
        if action == "c_end":
            self.c_ended_sending.add(sid)
        elif action == "c_cancel" and sid not in self.c_done:
            self.c_done.add(sid)
            self.cancelled.add(sid)
        elif action in ("s_headers", "s_data"):
            self.s_responded.add(sid)
        elif action == "s_trailers":
            self.s_done.add(sid)
            self.trailed.add(sid)

    def exchanged(self):
        self.s_known.update(self.opened)
        self.s_done.update(self.cancelled)
        self.c_done.update(self.trailed)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(_ACTIONS), st.integers(0, 3)), max_size=40))
def test_random_action_sequences_are_allowed_exactly_when_the_protocol_says(framer_cls, steps):
    """Any sequence of local actions on a few streams: each one is allowed exactly when a model
    written from PROTOCOL.md says so (else LocalProtocolError, nothing sent), and a peer that
    only does allowed things never sees a protocol error; after the bytes settle, both sides
    agree on which calls are over, and forget them."""
    pair = Pair(framer_cls, chunk=5)
    model = _Model()
    for action, pick in steps:
        if action == "exchange":
            pair.exchange()
            model.exchanged()
            continue
        if action in ("open", "open_end"):
            sid = pair.client.open_call("m", end_stream=action == "open_end")
            model.opened.append(sid)
            if action == "open_end":
                model.c_ended_sending.add(sid)
            continue
        if not model.opened:
            continue
        sid = model.opened[pick % len(model.opened)]
        allowed = model.allowed(action, sid)
        side = pair.client if action.startswith("c_") else pair.server
        before = side.has_data_to_send
        try:
            if action == "c_data":
                side.send_message(sid, b"\x01")
            elif action == "c_end":
                side.end_stream(sid)
            elif action == "c_cancel":
                side.cancel(sid)
            elif action == "s_headers":
                side.send_headers(sid, {"a": "b"})
            elif action == "s_data":
                side.send_message(sid, b"\x02")
            elif action == "s_trailers":
                side.send_trailers(sid, Status.OK)
        except LocalProtocolError:
            assert not allowed, (action, sid)
            assert side.has_data_to_send == before
        else:
            assert allowed, (action, sid)
            model.did(action, sid)
    pair.exchange()
    model.exchanged()
    for sid in model.opened:
        over = sid in model.cancelled or sid in model.trailed
        assert (pair.client.stream_state(sid) is StreamState.CLOSED) == over
        assert (pair.server.stream_state(sid) is StreamState.CLOSED) == over
        if not over and sid in model.c_ended_sending:
            assert pair.client.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
            assert pair.server.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE
    over = len(model.cancelled | model.trailed)
    assert pair.client.open_streams == pair.server.open_streams == len(model.opened) - over
    assert pair.client.accepting_calls and pair.server.accepting_calls


@pytest.mark.parametrize("timeout", [None, 0, 1.5, 10**6])
@pytest.mark.parametrize("metadata", [None, {}, {"k": "v", "b": b"\x00" * 30}])
def test_hand_encoded_headers_are_the_cbor_map(framer_cls, timeout, metadata):
    """The client encodes HEADERS by hand around a cache; it must be exactly the CBOR map."""
    pair = Pair(framer_cls)
    for method in ("greet", "greet", "é" * 40):  # a cached one, and a long non-ASCII name
        pair.client.open_call(method, timeout=timeout, metadata=metadata)
        out = pair.client.data_to_send()
        ((ftype, _, _, payload),) = framer_cls(1 << 20).feed(out)
        assert ftype == FrameType.HEADERS
        expected = {1: method}
        if timeout is not None:
            expected[2] = int(timeout * 1_000_000)
        if metadata:
            expected[3] = metadata
        assert cbor2.loads(payload) == expected


@settings(max_examples=300, deadline=None)
@given(
    method=st.text(max_size=300),
    timeout=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    noise=st.binary(max_size=3),
)
def test_hand_parsed_headers_agree_with_cbor2(method, timeout, noise):
    """The server's hand parser for the common HEADERS shapes returns exactly what cbor2
    decodes, or declines (None); it never accepts what is not one of those maps."""
    from trpc.wire._control import parse_simple_headers as _parse_simple_headers

    fields = {1: method} if timeout is None else {1: method, 2: timeout}
    payload = cbor2.dumps(fields)
    parsed = _parse_simple_headers(payload)
    if parsed is not None:
        assert parsed == (method, timeout)
    else:  # it only declines long names
        assert len(method.encode()) > 255
    # Trailing bytes, a truncated map or other keys are never accepted.
    assert _parse_simple_headers(payload + noise) is None or not noise
    assert _parse_simple_headers(payload[:-1]) is None
    assert _parse_simple_headers(cbor2.dumps({1: method, 3: {}})) is None
    assert _parse_simple_headers(cbor2.dumps({2: 5, 1: method})) is None


def test_a_large_byte_string_arrives_as_its_own_frame_and_is_not_copied(framer_cls):
    """[head, body] goes out as two frames (head with MORE); the receiver hands the message on
    as [head, body], and decoding returns the body object itself."""
    from trpc._codec import decode, decode_arguments, encode, encode_arguments

    pair = Pair(framer_cls)
    sid = pair.client.open_call("echo")
    blob = bytes(range(256)) * 1024  # 256 KiB
    pair.client.send_message(sid, encode_arguments((blob,), {}))
    pair.client.send_message(sid, encode(blob))
    (args, value) = messages(pair.exchange()["server"])
    assert type(args) is list and type(value) is list
    assert decode_arguments(args) == ([blob], {})
    decoded = decode(value)
    assert decoded == blob and decoded is value[1]
    # A head that does not describe the body is decoded the long way, correctly.
    assert decode([b"\x82\x01", cbor2.dumps(b"x" * 70000)]) == [1, b"x" * 70000]


def test_a_large_byte_string_ending_the_stream_is_not_copied_either(framer_cls):
    """A unary call's request half-closes the stream with its one message: [head, body] still
    goes as two frames, END_STREAM on the body, and arrives as [head, body]."""
    from trpc._codec import decode_arguments, encode_arguments

    pair = Pair(framer_cls)
    sid = pair.client.open_call("echo")
    blob = bytes(range(256)) * 1024
    assert pair.client.send_message(sid, encode_arguments((blob,), {}), end_stream=True)
    events = pair.exchange()["server"]
    (args,) = messages(events)
    assert type(args) is list and decode_arguments(args) == ([blob], {})
    assert any(isinstance(e, StreamEnded) for e in events)


def test_a_large_byte_string_waiting_for_credit_arrives_whole(framer_cls):
    """Head and body wait for credit as two pieces of one message; they arrive as it."""
    from trpc._codec import decode_arguments, encode_arguments

    pair = Pair(framer_cls, server_options={"stream_window": 100_000, "max_frame_size": 1 << 14})
    sid = pair.client.open_call("echo")
    blob = bytes(range(256)) * 1024  # 256 KiB: more than the window
    assert pair.client.send_message(sid, encode_arguments((blob,), {}), end_stream=True) is False
    received = []
    for _ in range(20):
        events = pair.exchange()["server"]
        for payload in messages(events):
            received.append(payload)
            pair.server.consumed(sid, len(payload) if type(payload) is bytes else sum(map(len, payload)))
    assert [decode_arguments(payload) for payload in received] == [([blob], {})]
    assert pair.client.send_buffered(sid) == 0


@pytest.mark.parametrize("size", [1, 100, 1024, 1025, 5000])
def test_open_unary_call_is_open_call_then_send_message_with_end_stream(framer_cls, size):
    """The one-step path for a call's single request message gives the same bytes, states and
    answer as the two steps, within the credit (one frame) and beyond it (the general path)."""
    message = bytes([0x59, size >> 8 & 0xFF, size & 0xFF]) + b"x" * size  # a CBOR byte string
    options = {"stream_window": 1024 + 3}
    one, two = Pair(framer_cls, server_options=options), Pair(framer_cls, server_options=options)
    sid1, sent1 = one.client.open_unary_call("m", message, timeout=1.5, metadata={"k": "v"})
    sid2 = two.client.open_call("m", timeout=1.5, metadata={"k": "v"})
    sent2 = two.client.send_message(sid2, message, end_stream=True)
    assert (sid1, sent1) == (sid2, sent2) and sent1 == (len(message) <= 1024 + 3)
    assert one.client.stream_state(sid1) is two.client.stream_state(sid2) is StreamState.HALF_CLOSED_LOCAL
    assert one.client.send_buffered(sid1) == two.client.send_buffered(sid2)
    assert one.client.data_to_send() == two.client.data_to_send()


def test_the_wire_connection_offers_every_method_the_call_layer_uses(framer_cls):
    """trpc.wire.Connection is a WireConnection: the boundary a second wire implements too,
    with the same parameter names."""
    import inspect

    from trpc._events import WireConnection

    conn = Connection("client", framer=framer_cls)
    assert isinstance(conn, WireConnection)
    for name, member in vars(WireConnection).items():
        if callable(member) and not name.startswith("_"):
            expected = list(inspect.signature(member).parameters)
            assert list(inspect.signature(getattr(Connection, name)).parameters) == expected, name


# ------------------------------------------------------------ one writer per fact, checked
#: attribute -> the (module, function) pairs allowed to assign it anywhere in src/trpc.
_WRITERS = {
    # a stream's state: the table's functions (and the constructor's IDLE)
    "state": {("wire/_streams.py", "__init__"), ("wire/_streams.py", "open"), ("wire/_streams.py", "step"),
              # the connection's lifecycle: its own table
              ("wire/_connection.py", "__init__"), ("wire/_connection.py", "_move")},
    "response_started": {("wire/_streams.py", "__init__"), ("wire/_streams.py", "step")},
}
#: Credit, written by the ledger alone (a stream is born with the initial windows).
for _name in ("send_window", "recv_granted", "recv_held", "recv_partial", "send_credit", "recv_credit",
              "_unannounced", "peer_stream_window", "incomplete"):
    _WRITERS[_name] = {("wire/_streams.py", "__init__")} | {("wire/_flow.py", f) for f in (
        "__init__", "peer_windows", "spend", "try_spend", "credit_stream", "credit_connection", "receive",
        "deliver", "hold", "partial", "drop_partial", "receive_connection", "consumed", "stream_grant")}


def test_only_the_table_and_the_ledger_write_state_and_credit():
    """Every assignment to a stream's state or to any credit figure, anywhere in trpc, is in
    the stream table's functions or the flow-control ledger (an AST scan of the source)."""
    import ast
    import pathlib

    import trpc

    root = pathlib.Path(trpc.__file__).parent
    found: dict[str, set] = {name: set() for name in _WRITERS}
    for path in root.rglob("*.py"):
        module = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                targets = []
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                    targets = [node.target]
                for target in targets:
                    for sub in ast.walk(target):
                        if isinstance(sub, ast.Attribute) and sub.attr in found:
                            found[sub.attr].add((module, function.name))
    for name, writers in found.items():
        assert writers <= _WRITERS[name], (name, writers - _WRITERS[name])
    assert found["state"] and found["send_window"] and found["recv_credit"]  # the scan sees them
