"""The sans-IO core against docs/PROTOCOL.md, rule by rule: what must fail the connection, what
must not, and flow-control credit counted exactly on both sides.  No I/O; both framers via
``framer_cls``.  (tests/test_protocol.py has the first round of hostile frames; these are the
ones it lacks, each checked for its GOAWAY status and for the events kept before it.)"""

from __future__ import annotations

import cbor2
import pytest

from trpc.wire._compression import AVAILABLE

from trpc import LocalProtocolError, RemoteProtocolError, Status
from trpc._events import (
    ConnectionClosed,
    CallCancelled,
    CallEnded,
    CallOpened,
    MessagesReceived,
    PingReceived,
    PrefaceReceived,
    StreamEnded,
)
from trpc.wire import (
    DEFAULT_CONNECTION_WINDOW,
    DEFAULT_STREAM_WINDOW,
    PREFACE,
    Connection,
    ConnectionState,
    Flags,
    FrameType,
    PingFlags,
    StreamState,
)

from .helpers import Pair, frame, messages, preface, types

MAX_WINDOW = (1 << 31) - 1
PING = frame(FrameType.PING, 0, 0, b"12345678")
END_STREAM = Flags.END_STREAM.value
MORE = Flags.MORE.value


# ------------------------------------------------------------------------------- helpers
def credit(conn: Connection, stream_id: int | None = None) -> tuple[int, int] | None:
    """``(may send, has granted)``: the credit ``conn`` believes it holds for sending to its
    peer, and the credit it believes its peer holds for sending to it; for the connection, or
    for one stream (None if ``conn`` no longer knows the stream).

    PRIVATE STATE, read here and nowhere else in this file: the connection's credit ledger
    (``Connection._ledger``) and its live streams (``Connection._streams.live``).  The public
    API says only whether output waits (``send_buffered``, ``SendCreditAvailable``), not how
    much credit is left; a refactor of the core updates this one function."""
    if stream_id is None:
        return conn._ledger.send_credit, conn._ledger.recv_credit
    stream = conn._streams.live.get(stream_id)
    return None if stream is None else (stream.send_window, stream.recv_granted)


def held(conn: Connection, stream_id: int) -> tuple[int, int]:
    """``(bytes of complete messages not consumed, bytes of the message still arriving)`` on a
    stream: PRIVATE STATE like ``credit``'s (the stream's slots the ledger writes)."""
    stream = conn._streams.live[stream_id]
    return stream.recv_held, stream.recv_partial


def assert_credit_agrees(pair: Pair, stream_ids=()) -> None:
    """With nothing in flight, what each side may still send is exactly what the other side
    believes it granted: for the connection, both ways, and for each stream both sides know."""
    client_conn, server_conn = credit(pair.client), credit(pair.server)
    assert client_conn[0] == server_conn[1], ("client -> server connection credit", client_conn, server_conn)
    assert server_conn[0] == client_conn[1], ("server -> client connection credit", server_conn, client_conn)
    for sid in stream_ids:
        client_stream, server_stream = credit(pair.client, sid), credit(pair.server, sid)
        if client_stream is None or server_stream is None:
            continue
        assert client_stream[0] == server_stream[1], (sid, "client -> server", client_stream, server_stream)
        assert server_stream[0] == client_stream[1], (sid, "server -> client", server_stream, client_stream)


def parse(framer_cls, data: bytes) -> list:
    """The frames in ``data`` (frames only: no preface)."""
    return framer_cls((1 << 24) - 1).feed(data)


def goaways(framer_cls, data: bytes) -> list[dict]:
    return [cbor2.loads(p) for t, _, _, p in parse(framer_cls, data) if t == FrameType.GOAWAY]


def window_updates(framer_cls, data: bytes, stream_id: int = 0) -> int:
    """The total WINDOW_UPDATE increment for ``stream_id`` (0: the connection) in ``data``."""
    return sum(
        int.from_bytes(payload, "big")
        for ftype, _, sid, payload in parse(framer_cls, data)
        if ftype == FrameType.WINDOW_UPDATE and sid == stream_id
    )


def assert_fails(framer_cls, conn: Connection, data: bytes, status: Status) -> list:
    """``data`` must fail the connection: RemoteProtocolError, one GOAWAY with ``status``
    queued, no new calls.  Returns the events kept from before the bad frame."""
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(data)
    (fields,) = goaways(framer_cls, conn.data_to_send())
    assert fields[2] == status, (fields, str(info.value))
    assert "protocol error" in fields[3]
    assert not conn.accepting_calls
    return info.value.events


def message(n: int, size: int) -> bytes:
    """A distinct message of ``size`` bytes (the core does not decode messages)."""
    return n.to_bytes(4, "big") + bytes(size - 4)


def open_calls(pair: Pair, count: int, *, end_stream: bool = False) -> list[int]:
    ids = [pair.client.open_call("m", end_stream=end_stream) for _ in range(count)]
    events = pair.exchange()
    assert [e.stream_id for e in events["server"] if isinstance(e, CallOpened)] == ids
    return ids


def new_call_is_accepted(pair: Pair) -> None:
    sid = pair.client.open_call("m", end_stream=True)
    events = pair.exchange()
    assert [type(e) for e in events["server"]] == [CallOpened], events
    pair.server.send_trailers(sid, Status.OK)
    assert [(e.stream_id, e.status) for e in pair.exchange()["client"]] == [(sid, Status.OK)]


# ===================================================== hostile frames that fail the connection
@pytest.mark.parametrize(
    "data",
    [
        frame(FrameType.DATA, 0, 1, b"\x01"),
        frame(FrameType.DATA, 0, 1, b"\x01") * 3,  # a run of messages (the fast path)
        frame(FrameType.DATA, END_STREAM, 1, b"\x01"),
        frame(FrameType.DATA, END_STREAM, 1, b""),
        frame(FrameType.DATA, MORE, 1, b"\x82"),
    ],
    ids=["message", "run", "message-end", "bare-end", "part"],
)
@pytest.mark.parametrize("closed_by", ["DATA", "HEADERS"])
def test_data_after_the_clients_end_stream_fails_the_connection(framer_cls, data, closed_by):
    pair = Pair(framer_cls)
    if closed_by == "HEADERS":
        (sid,) = open_calls(pair, 1, end_stream=True)
    else:
        (sid,) = open_calls(pair, 1)
        pair.client.send_message(sid, b"\x80", end_stream=True)
        assert types(pair.exchange()["server"]) == [MessagesReceived, StreamEnded]
    assert pair.server.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE
    assert types(assert_fails(framer_cls, pair.server, PING + data, Status.INTERNAL)) == [PingReceived]


@pytest.mark.parametrize("trailers", [{1: 0}, {1: 13, 2: "failed"}], ids=["ok", "error"])
def test_trailers_in_the_middle_of_a_message_fail_the_connection(framer_cls, trailers):
    pair = Pair(framer_cls)
    (sid,) = open_calls(pair, 1, end_stream=True)
    data = (
        frame(FrameType.DATA, 0, sid, b"\x01")
        + PING
        + frame(FrameType.DATA, MORE, sid, b"\x82\x01")
        + frame(FrameType.TRAILERS, 0, sid, cbor2.dumps(trailers))
    )
    events = assert_fails(framer_cls, pair.client, data, Status.INTERNAL)
    assert types(events) == [MessagesReceived, PingReceived]


def test_response_headers_for_a_never_opened_stream_fail_the_connection(framer_cls):
    pair = Pair(framer_cls)
    open_calls(pair, 1)
    data = PING + frame(FrameType.HEADERS, 0, 5, cbor2.dumps({3: {"k": "v"}}))
    assert types(assert_fails(framer_cls, pair.client, data, Status.INTERNAL)) == [PingReceived]


@pytest.mark.parametrize("extra", [b"", b"\x01"], ids=["bare-end", "then-more"])
def test_end_stream_inside_a_message_fails_the_connection(framer_cls, extra):
    """END_STREAM on an empty DATA frame while a message is incomplete (the last part of a
    message may carry END_STREAM; an empty frame after MORE is not that)."""
    pair = Pair(framer_cls)
    (sid,) = open_calls(pair, 1)
    data = PING + frame(FrameType.DATA, MORE, sid, b"\x82\x01") + frame(FrameType.DATA, END_STREAM, sid, b"")
    assert types(assert_fails(framer_cls, pair.server, data + extra, Status.INTERNAL)) == [PingReceived]


def test_the_last_part_of_a_message_may_carry_end_stream(framer_cls):
    """The counterpart of the test above, which must not fail."""
    pair = Pair(framer_cls)
    (sid,) = open_calls(pair, 1)
    data = frame(FrameType.DATA, MORE, sid, b"\x82\x01") + frame(FrameType.DATA, END_STREAM, sid, b"\x02")
    events = pair.server.receive_data(data)
    assert types(events) == [MessagesReceived, StreamEnded]
    assert messages(events) == [b"\x82\x01\x02"]


@pytest.mark.parametrize("side", ["server", "client"])
def test_a_run_of_messages_beyond_stream_credit_fails_the_connection(framer_cls, side):
    """11 messages of 100 bytes in one chunk against 1024 bytes of stream credit: the ten that
    fit are delivered (kept in exc.events), the eleventh is RESOURCE_EXHAUSTED."""
    options = {"stream_window": 1024}
    pair = Pair(framer_cls, **{f"{side}_options": options})
    (sid,) = open_calls(pair, 1, end_stream=side == "client")
    sent = [message(i, 100) for i in range(11)]
    data = PING + b"".join(frame(FrameType.DATA, 0, sid, m) for m in sent)
    events = assert_fails(framer_cls, getattr(pair, side), data, Status.RESOURCE_EXHAUSTED)
    assert types(events)[0] is PingReceived
    assert messages(events) == sent[:10]


def test_a_single_frame_beyond_connection_credit_fails_the_connection(framer_cls):
    pair = Pair(framer_cls, server_options={"connection_window": 4096})
    (sid,) = open_calls(pair, 1)
    data = PING + frame(FrameType.DATA, 0, sid, bytes(4097))
    assert types(assert_fails(framer_cls, pair.server, data, Status.RESOURCE_EXHAUSTED)) == [PingReceived]


# A connection window of 4096: trpc returns connection credit in batches of half the window
# (PROTOCOL.md section 8), so after 2000 bytes of small messages it has returned none, and the
# peer holds exactly 4096 - 2000 = 2096 bytes of credit, whatever streams the bytes went to.
SMALL_LAYOUTS = {"one stream": [1] * 20, "several streams": [1, 2, 3, 4] * 5}


@pytest.mark.parametrize("layout", sorted(SMALL_LAYOUTS))
@pytest.mark.parametrize("chunks", ["one chunk", "two chunks"])
@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize("last", [2096, 2097])
def test_connection_credit_spent_by_many_small_messages_is_counted(framer_cls, layout, chunks, side, last):
    """Many 100-byte messages on one or several streams, then one frame of ``last`` bytes:
    2096 is exactly the credit left (accepted: the connection goes on, the receiver returns a
    full window), 2097 is beyond it (RESOURCE_EXHAUSTED, the small messages kept)."""
    pair = Pair(framer_cls, **{f"{side}_options": {"connection_window": 4096}})
    open_calls(pair, 4, end_stream=side == "client")
    receiver = getattr(pair, side)
    small = [(sid, message(i, 100)) for i, sid in enumerate(SMALL_LAYOUTS[layout])]
    first = PING + b"".join(frame(FrameType.DATA, 0, sid, m) for sid, m in small)
    second = frame(FrameType.DATA, 0, 2, bytes(last))
    kept = []
    if chunks == "two chunks":
        kept = receiver.receive_data(first)
        # No connection credit returned yet (2000 < 2048); the output is the PING's ACK.
        assert window_updates(framer_cls, receiver.data_to_send()) == 0
        first = b""
    if last == 2097:
        kept += assert_fails(framer_cls, receiver, first + second, Status.RESOURCE_EXHAUSTED)
        assert messages(kept) == [m for _, m in small]
        return
    events = kept + receiver.receive_data(first + second)
    assert messages(events) == [m for _, m in small] + [bytes(2096)]
    assert window_updates(framer_cls, receiver.data_to_send()) == 4096
    assert receiver.accepting_calls


@pytest.mark.parametrize("side", ["server", "client"])
def test_stream_window_update_beyond_the_maximum_fails_the_connection(framer_cls, side):
    """Stream credit may grow to exactly 2^31-1 (accepted); one more is a protocol error.
    (test_protocol.py checks the connection's.)"""
    pair = Pair(framer_cls)
    (sid,) = open_calls(pair, 1)
    conn = getattr(pair, side)
    room = MAX_WINDOW - DEFAULT_STREAM_WINDOW  # nothing sent yet: credit is the initial window
    assert conn.receive_data(frame(FrameType.WINDOW_UPDATE, 0, sid, room.to_bytes(4, "big"))) == []
    data = PING + frame(FrameType.WINDOW_UPDATE, 0, sid, (1).to_bytes(4, "big"))
    assert types(assert_fails(framer_cls, conn, data, Status.INTERNAL)) == [PingReceived]


def test_connection_window_update_up_to_the_maximum_is_accepted_and_no_further(framer_cls):
    pair = Pair(framer_cls)
    room = MAX_WINDOW - DEFAULT_CONNECTION_WINDOW
    assert pair.server.receive_data(frame(FrameType.WINDOW_UPDATE, 0, 0, room.to_bytes(4, "big"))) == []
    data = PING + frame(FrameType.WINDOW_UPDATE, 0, 0, (1).to_bytes(4, "big"))
    assert types(assert_fails(framer_cls, pair.server, data, Status.INTERNAL)) == [PingReceived]


@pytest.mark.parametrize("side", ["server", "client"])
def test_window_update_for_a_never_opened_stream_fails_the_connection(framer_cls, side):
    pair = Pair(framer_cls)
    open_calls(pair, 1)
    data = PING + frame(FrameType.WINDOW_UPDATE, 0, 9, (100).to_bytes(4, "big"))
    assert types(assert_fails(framer_cls, getattr(pair, side), data, Status.INTERNAL)) == [PingReceived]


def test_response_headers_after_data_fail_the_connection(framer_cls):
    pair = Pair(framer_cls)
    (sid,) = open_calls(pair, 1, end_stream=True)
    data = frame(FrameType.DATA, 0, sid, b"\x01") + PING + frame(FrameType.HEADERS, 0, sid, cbor2.dumps({}))
    assert types(assert_fails(framer_cls, pair.client, data, Status.INTERNAL)) == [MessagesReceived, PingReceived]


def test_response_headers_with_end_stream_fail_the_connection(framer_cls):
    pair = Pair(framer_cls)
    (sid,) = open_calls(pair, 1, end_stream=True)
    data = PING + frame(FrameType.HEADERS, END_STREAM, sid, cbor2.dumps({}))
    assert types(assert_fails(framer_cls, pair.client, data, Status.INTERNAL)) == [PingReceived]


# ============================================================= what must NOT fail the connection
def test_a_late_window_update_for_a_closed_stream_is_dropped(framer_cls):
    pair = Pair(framer_cls)
    ended, cancelled = open_calls(pair, 2, end_stream=True)
    pair.server.send_trailers(ended, Status.OK)
    pair.client.cancel(cancelled)
    pair.exchange()
    assert pair.client.open_streams == pair.server.open_streams == 0
    update = (4096).to_bytes(4, "big")
    for conn in (pair.client, pair.server):
        for sid in (ended, cancelled):
            assert conn.receive_data(frame(FrameType.WINDOW_UPDATE, 0, sid, update)) == []
        assert conn.data_to_send() == b"" and conn.accepting_calls
    new_call_is_accepted(pair)


def queue_behind_credit(pair: Pair, sid: int, path: str) -> list[bytes]:
    """The server sends two 800-byte messages and OK trailers against the client's 1024 bytes
    of stream credit: the first message and part of the second leave, the rest of the second
    and the trailers wait for credit.  Returns the messages."""
    sent = [message(1, 800), message(2, 800)]
    if path == "batch":
        pair.server.open_batch(sid).extend(sent)
    else:
        assert pair.server.send_message(sid, sent[0]) is True
        assert pair.server.send_message(sid, sent[1]) is False
    pair.server.send_trailers(sid, Status.OK)
    assert pair.server.send_buffered(sid) == 2 * 800 - 1024
    return sent


@pytest.mark.parametrize("path", ["send_message", "batch"])
def test_cancel_while_the_servers_trailers_wait_behind_data_is_dropped(framer_cls, path):
    """The client cancels a call whose response is still arriving; the server has already
    queued its trailers behind data short of credit (so the call is over on its side).  The
    CANCEL must be dropped silently (PROTOCOL.md section 7: frames for closed streams), the
    connection kept, and the stream forgotten at once: the client, having cancelled, grants
    no more credit, and the stream no longer counts against the server's limit (section 4)."""
    pair = Pair(framer_cls, client_options={"stream_window": 1024})
    (sid,) = open_calls(pair, 1, end_stream=True)
    sent = queue_behind_credit(pair, sid, path)
    assert messages(pair.exchange()["client"]) == sent[:1]  # not consumed: no credit back
    assert pair.server.send_buffered(sid) == 2 * 800 - 1024
    pair.client.cancel(sid)
    events = pair.server.receive_data(pair.client.data_to_send())
    # Dropped silently; a core that reports it may say CallCancelled for the stream.
    assert all(isinstance(e, CallCancelled) and e.stream_id == sid for e in events), events
    assert pair.server.accepting_calls
    assert pair.server.open_streams == 0 and pair.server.send_buffered(sid) == 0
    assert [f for f in parse(framer_cls, pair.server.data_to_send()) if f[2] == sid] == []
    new_call_is_accepted(pair)


@pytest.mark.parametrize("ending", ["consumed", "cancelled"])
@pytest.mark.parametrize("path", ["send_message", "batch"])
def test_streams_whose_trailers_waited_for_credit_are_forgotten(framer_cls, path, ending):
    """105 calls (the limit is 100), each with trailers that waited behind data short of
    credit, each ended by the client consuming (the rest leaves) or by a CANCEL: every stream
    is forgotten on both sides, and a new call is still accepted (not RESOURCE_EXHAUSTED)."""
    pair = Pair(framer_cls, client_options={"stream_window": 1024})
    for _ in range(105):
        (sid,) = open_calls(pair, 1, end_stream=True)
        sent = queue_behind_credit(pair, sid, path)
        received = messages(pair.exchange()["client"])
        if ending == "consumed":
            pair.client.consumed(sid, sum(map(len, received)))
            events = pair.exchange()["client"]
            assert received + messages(events) == sent
            assert [(e.stream_id, e.status) for e in events if isinstance(e, CallEnded)] == [(sid, Status.OK)]
        else:
            pair.client.cancel(sid)
            pair.exchange()
        assert pair.client.open_streams == 0 and pair.server.open_streams == 0
        assert pair.server.accepting_calls
    new_call_is_accepted(pair)


def test_client_data_while_the_servers_trailers_wait_behind_data_is_dropped(framer_cls):
    """The server has ended the call (trailers queued behind data short of credit); the client,
    which has not seen the trailers yet, still sends a message and half-closes.  The server
    must drop them (a closed stream), keep the connection, and finish the call when credit
    comes."""
    pair = Pair(framer_cls, client_options={"stream_window": 1024})
    (sid,) = open_calls(pair, 1)
    sent = queue_behind_credit(pair, sid, "send_message")
    received = messages(pair.exchange()["client"])
    pair.client.send_message(sid, b"\x01")
    pair.client.end_stream(sid)
    events = pair.server.receive_data(pair.client.data_to_send())
    assert not [e for e in events if isinstance(e, (MessagesReceived, StreamEnded))]
    assert pair.server.accepting_calls
    pair.client.consumed(sid, sum(map(len, received)))
    events = pair.exchange()["client"]
    assert received + messages(events) == sent
    assert [(e.stream_id, e.status) for e in events if isinstance(e, CallEnded)] == [(sid, Status.OK)]
    assert pair.client.open_streams == pair.server.open_streams == 0
    assert_credit_agrees(pair)


@pytest.mark.parametrize("live", [False, True], ids=["alone", "beside-a-live-stream"])
def test_data_for_a_closed_stream_still_earns_connection_credit_back(framer_cls, live):
    """A peer that keeps sending on a stream we have closed spends connection credit; we must
    count those bytes and return their credit, or the connection stalls.  A raw peer that
    respects the credit it is given sends five connection windows of dropped DATA."""
    pair = Pair(framer_cls, server_options={"connection_window": 4096})
    dead, alive = open_calls(pair, 2)
    pair.client.cancel(dead)
    pair.exchange()
    peer_credit = credit(pair.server)[1]  # all the peer may send (it sent nothing so far)
    assert peer_credit == 4096
    sent = 0
    received = []
    for _ in range(1000):
        chunk = b""
        while peer_credit >= 200 and sent < 5 * 4096:
            chunk += frame(FrameType.DATA, 0, dead, message(sent, 100))
            if live:
                chunk += frame(FrameType.DATA, 0, alive, message(sent, 100))
                sent += 100
            sent += 100
            peer_credit -= 200 if live else 100
        if not chunk:
            break
        events = pair.server.receive_data(chunk)
        received += messages(events)
        for payload in messages(events):
            pair.server.consumed(alive, len(payload))
        peer_credit += window_updates(framer_cls, pair.server.data_to_send())
        assert peer_credit == credit(pair.server)[1]
    assert sent >= 5 * 4096, f"stalled after {sent} bytes with {peer_credit} bytes of credit"
    assert len(received) == (sent // 200 if live else 0)
    assert pair.server.accepting_calls


@pytest.mark.parametrize(
    "fields",
    [{1: "m", 2: 0, 3: {"k": "v"}}, {1: "m", 2: 0}, {1: "m", 3: {"k": "v"}, 2: 0}],
    ids=["with-metadata", "plain", "keys-reordered"],
)
def test_a_zero_timeout_opens_a_call_with_no_time_left(framer_cls, fields):
    """Timeout 0 is valid (the deadline has passed: the server answers DEADLINE_EXCEEDED at
    once), with or without metadata: a call with timeout 0, not a protocol error."""
    server = Connection("server", framer=framer_cls)
    server.initiate()
    events = server.receive_data(preface() + frame(FrameType.HEADERS, END_STREAM, 1, cbor2.dumps(fields)))
    assert types(events) == [PrefaceReceived, CallOpened]
    opened = events[1]
    assert (opened.method, opened.timeout, opened.metadata) == ("m", 0, fields.get(3, {}))
    assert server.accepting_calls


def test_cancel_and_trailers_crossing_on_the_wire(framer_cls):
    """The server ends a call while the client cancels it: each side drops the other's frame."""
    pair = Pair(framer_cls)
    (sid,) = open_calls(pair, 1, end_stream=True)
    pair.server.send_message(sid, b"\x01")
    pair.server.send_trailers(sid, Status.OK)
    pair.client.cancel(sid)
    to_server, to_client = pair.client.data_to_send(), pair.server.data_to_send()
    assert pair.server.receive_data(to_server) == []
    assert pair.client.receive_data(to_client) == []
    assert pair.client.open_streams == pair.server.open_streams == 0
    assert pair.client.accepting_calls and pair.server.accepting_calls
    assert_credit_agrees(pair)
    new_call_is_accepted(pair)


# ================================================================== flow control, exactly
@pytest.mark.parametrize("streams", [1, 4])
@pytest.mark.parametrize("path", ["batch", "send_message"])
@pytest.mark.parametrize("sender_side", ["client", "server"])
def test_one_test_moves_several_connection_windows_of_small_messages(framer_cls, sender_side, path, streams):
    """Eight connection windows (4096 bytes, default stream windows) of 100-byte messages, on
    one stream and on four, through the batch path and through send_message, the receiver
    consuming as it goes: everything arrives, in order, nothing stalls, and after every
    exchange the two sides agree exactly on the credit left.  Each turn queues more than the
    connection window, so output waits for connection credit and must resume when it comes.
    A fast path that forgets to charge or to return connection credit shows here."""
    receiver_side = "server" if sender_side == "client" else "client"
    pair = Pair(framer_cls, **{f"{receiver_side}_options": {"connection_window": 4096}})
    ids = open_calls(pair, streams, end_stream=sender_side == "server")
    sender, receiver = getattr(pair, sender_side), getattr(pair, receiver_side)
    total = 8 * 4096 // 100
    per_stream = total // streams + 1
    to_send = {sid: [message(sid * 10_000 + i, 100) for i in range(per_stream)] for sid in ids}
    expected = {sid: list(queue) for sid, queue in to_send.items()}
    got: dict[int, list[bytes]] = {sid: [] for sid in ids}
    batches = {sid: sender.open_batch(sid) for sid in ids} if path == "batch" else {}
    for _ in range(10_000):
        for sid in ids:
            # Queue more only once what was queued has left (as the Trio layer does).
            queue = to_send[sid]
            if not queue or sender.send_buffered(sid):
                continue
            for _ in range(50):  # 5000 bytes a turn per stream: more than the connection window
                if not queue:
                    break
                if path == "batch":
                    batches[sid].append(queue.pop(0))
                elif not sender.send_message(sid, queue.pop(0)):
                    break
            if path == "batch":
                sender.flush_batch(sid)
        before = sum(map(len, got.values()))
        for _ in range(100):  # carry bytes both ways, consuming, until nothing moves
            events = pair.exchange()
            for event in events[receiver_side]:
                if isinstance(event, MessagesReceived):
                    got[event.stream_id] += event.payloads
                    receiver.consumed(event.stream_id, sum(map(len, event.payloads)))
            if not events["client"] and not events["server"] and not receiver.has_data_to_send:
                break
        assert_credit_agrees(pair, ids)
        if got == expected:
            break
        assert sum(map(len, got.values())) > before, f"stalled: {credit(sender)} {credit(receiver)}"
    assert got == expected
    assert sum(map(len, got.values())) * 100 >= 8 * 4096


@pytest.mark.parametrize("how", ["open_unary_call", "send_message(end_stream=True)"])
def test_unary_requests_through_a_small_connection_window_keep_credit_exact(framer_cls, how):
    """Eight connection windows (4096 bytes) of unary requests, 100 bytes each, ten calls a
    turn (a request ending the stream takes fast paths of its own on both sides): every one
    arrives, and the two sides agree exactly on the credit left, for the connection and for
    every stream, while the calls are open and after they end."""
    pair = Pair(framer_cls, server_options={"connection_window": 4096})
    received = 0
    for turn in range(8 * 4096 // 1000 + 1):
        ids = []
        for i in range(10):
            request = message(turn * 10 + i, 100)
            if how == "open_unary_call":
                ids.append(pair.client.open_unary_call("m", request)[0])
            else:
                ids.append(pair.client.open_call("m"))
                pair.client.send_message(ids[-1], request, end_stream=True)
        events = pair.exchange()["server"]
        assert_credit_agrees(pair, ids)
        for event in events:
            if isinstance(event, MessagesReceived):
                received += len(event.payloads)
                pair.server.consumed(event.stream_id, sum(map(len, event.payloads)))
            elif isinstance(event, StreamEnded):
                pair.server.send_trailers(event.stream_id, Status.OK)
        ended = [e for e in pair.exchange()["client"] if isinstance(e, CallEnded)]
        assert [e.stream_id for e in ended] == ids
        assert pair.client.open_streams == pair.server.open_streams == 0
        assert_credit_agrees(pair)
    assert received * 100 >= 8 * 4096


def test_messages_queued_before_the_peers_preface_go_out_when_it_arrives(framer_cls):
    """The client may open a call and queue its messages before the server's preface arrives
    (it has no credit yet, so no DATA may leave: PROTOCOL.md section 2); once the preface
    brings credit, they are sent, in order, with the half-close."""
    client = Connection("client", framer=framer_cls)
    server = Connection("server", framer=framer_cls)
    client.initiate()
    server.initiate()
    sid = client.open_call("m")
    sent = [message(1, 100), message(2, 3000)]
    assert client.send_message(sid, sent[0]) is False
    client.send_message(sid, sent[1], end_stream=True)
    early = client.data_to_send()
    assert [t for t, *_ in parse(framer_cls, early[PREFACE.size :])] == [FrameType.HEADERS]
    assert types(server.receive_data(early)) == [PrefaceReceived, CallOpened]
    client_events = client.receive_data(server.data_to_send())
    assert sorted(type(e).__name__ for e in client_events) == ["PrefaceReceived", "SendCreditAvailable"]
    events = server.receive_data(client.data_to_send())
    assert messages(events) == sent
    assert types(events)[-1] is StreamEnded
    assert client.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
    assert server.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE


def test_a_unary_request_queued_before_the_peers_preface_goes_out_when_it_arrives(framer_cls):
    client = Connection("client", framer=framer_cls)
    server = Connection("server", framer=framer_cls)
    client.initiate()
    server.initiate()
    sid, sent = client.open_unary_call("m", b"\x81\x80")
    assert sent is False
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    events = server.receive_data(client.data_to_send())
    assert types(events) == [MessagesReceived, StreamEnded]
    assert messages(events) == [b"\x81\x80"] and events[0].stream_id == sid


@pytest.mark.parametrize("how", ["end_stream()", "end_stream=True", "batch then end_stream()"])
def test_a_half_close_behind_data_waiting_for_credit_is_not_lost(framer_cls, how):
    """The client half-closes while its messages wait for the server's credit (1024 bytes of
    stream window): the half-close goes out after them, never before and never lost."""
    pair = Pair(framer_cls, server_options={"stream_window": 1024})
    (sid,) = open_calls(pair, 1)
    if how == "batch then end_stream()":
        sent = [message(i, 100) for i in range(25)]
        pair.client.open_batch(sid).extend(sent)
        pair.client.end_stream(sid)
    else:
        sent = [message(1, 3000)]
        pair.client.send_message(sid, sent[0], end_stream=how == "end_stream=True")
        if how == "end_stream()":
            pair.client.end_stream(sid)
    assert pair.client.send_buffered(sid) > 0
    assert pair.client.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
    received, ended = [], []
    for _ in range(100):  # carry bytes both ways, the server consuming, until nothing moves
        events = pair.exchange()["server"]
        for event in events:
            if isinstance(event, MessagesReceived):
                assert not ended, "a message after the half-close"
                received += event.payloads
                pair.server.consumed(sid, sum(map(len, event.payloads)))
            elif isinstance(event, StreamEnded):
                ended.append(event)
        if not events and not pair.server.has_data_to_send:
            break
    assert received == sent
    assert len(ended) == 1
    assert pair.server.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE
    assert pair.client.send_buffered(sid) == 0
    assert_credit_agrees(pair, [sid])


# ================================================================================ printing
def test_the_ping_ack_flag_prints_as_ack():
    """ACK (PING) and END_STREAM (DATA, HEADERS) share bit 0x1 on the wire, but they are
    different flags: a PING ACK printed in a log or a repr must read ACK, not END_STREAM."""
    assert PingFlags.ACK.name == "ACK"
    assert "ACK" in repr(PingFlags.ACK) and "END_STREAM" not in repr(PingFlags.ACK)
    assert Flags.END_STREAM.name == "END_STREAM"
    assert not hasattr(Flags, "ACK")  # no alias: DATA and HEADERS have no ACK
    assert PingFlags.ACK.value == Flags.END_STREAM.value == 0x1  # the wire value is unchanged


# ================================================================== edges the sampler found
@pytest.mark.parametrize("body", [(64 << 10) - 1, 64 << 10])
def test_a_head_and_body_are_kept_apart_from_64_kib_of_body_exactly(framer_cls, body):
    """A message sent as [head, body] arrives as [head, body] when the body is 64 KiB or more
    (so it need not be copied), joined when it is smaller."""
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m")
    head, payload = b"\x5a" + body.to_bytes(4, "big"), b"x" * body
    pair.client.send_message(sid, [head, payload])
    (message,) = messages(pair.exchange()["server"])
    if body >= 64 << 10:
        assert message == [head, payload]
    else:
        assert message == head + payload


@pytest.mark.parametrize("size, ok", [(16383, False), (16384, True), ((1 << 24) - 1, True), (1 << 24, False)])
def test_the_max_frame_size_setting_is_checked_at_both_ends_of_its_range(framer_cls, size, ok):
    if ok:
        assert Connection("server", framer=framer_cls, max_frame_size=size).max_frame_size == size
    else:
        with pytest.raises(ValueError):
            Connection("server", framer=framer_cls, max_frame_size=size)


def test_requeued_output_goes_before_anything_queued_since(framer_cls):
    pair = Pair(framer_cls)
    pair.client.ping(b"AAAAAAAA")
    pair.client.ping(b"BBBBBBBB")
    pair.client.requeue(b"unsent")
    assert pair.client.data_to_send() == b"unsent" + PING.replace(b"12345678", b"AAAAAAAA") + PING.replace(
        b"12345678", b"BBBBBBBB"
    )


def test_response_headers_after_a_batched_message_are_refused(framer_cls):
    """A message on the batch is the response's start, framed or not: headers may not follow."""
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m", end_stream=True)
    pair.exchange()
    pair.server.open_batch(sid).append(b"\x01")
    with pytest.raises(LocalProtocolError):
        pair.server.send_headers(sid, {"k": "v"})
    pair.server.send_trailers(sid, Status.OK)
    events = pair.exchange()["client"]
    assert messages(events) == [b"\x01"] and not any(type(e).__name__ == "HeadersReceived" for e in events)


@pytest.mark.parametrize("after_preface", [False, True])
def test_end_of_file_ends_the_connection_for_new_calls(framer_cls, after_preface):
    client = Connection("client", framer=framer_cls)
    client.initiate()
    if after_preface:
        client.receive_data(preface())
    assert types(client.receive_data(b"")) == [ConnectionClosed]
    assert client.state is ConnectionState.CLOSED and not client.accepting_calls
    with pytest.raises(LocalProtocolError):
        client.open_call("m")


def test_the_default_preface_is_the_one_protocol_md_shows(framer_cls):
    """trpc's defaults, byte for byte as docs/PROTOCOL.md section 2 gives them (accepting zlib
    and zstd; zlib alone when the zstandard package is missing)."""
    conn = Connection("server", framer=framer_cls, accept_compression=["zlib", "zstd"] if AVAILABLE & 2 else None)
    conn.initiate()
    codings = "03" if AVAILABLE & 2 else "01"
    example = f"54 52 50 43 01 02 00 {codings} 00 20 00 00 00 40 00 00 00 20 00 00 01 00 00 00 00 00 00 64"
    assert conn.data_to_send() == bytes.fromhex(example)


def test_a_preface_of_ones_is_in_range(framer_cls):
    """1 is the smallest legal value of every preface limit but the frame size: a peer that
    announces it is served (one call at a time, one byte of credit at a time)."""
    client = Connection("client", framer=framer_cls)
    client.initiate()
    events = client.receive_data(
        preface(max_message=1, stream_window=1, connection_window=1, max_streams=1)
    )
    assert types(events) == [PrefaceReceived]
    assert client.peer_max_message_size == 1 and client.peer_max_concurrent_streams == 1
    assert client.peer_connection_window == 1
    sid = client.open_call("m")
    assert client.send_message(sid, b"\x01") and not client.can_open_call


def test_a_unary_request_beyond_connection_credit_is_refused_before_it_is_handed_on(framer_cls):
    """A request's one message with END_STREAM (the server's fast path) larger than the
    connection credit fails the connection, and its message is not among the events kept."""
    pair = Pair(framer_cls, server_options={"connection_window": 1024})
    data = frame(FrameType.HEADERS, 0, 1, cbor2.dumps({1: "m"}))
    data += frame(FrameType.DATA, END_STREAM, 1, message(1, 1025))
    events = assert_fails(framer_cls, pair.server, data, Status.RESOURCE_EXHAUSTED)
    assert types(events) == [CallOpened]


def test_a_response_over_the_clients_limit_ends_that_call_with_resource_exhausted(framer_cls):
    pair = Pair(framer_cls, client_options={"max_message_size": 2048})
    big, small = pair.client.open_call("m", end_stream=True), pair.client.open_call("m", end_stream=True)
    pair.exchange()
    pair.server.peer_max_message_size = 1 << 20  # pretend the server ignored the client's limit
    pair.server.send_message(big, b"\x01" * 3000)
    pair.server.send_message(small, b"\x02" * 100)
    pair.server.send_trailers(small, Status.OK)
    events = pair.exchange()
    ended = [(e.stream_id, e.status) for e in events["client"] if isinstance(e, CallEnded)]
    assert ended == [(big, Status.RESOURCE_EXHAUSTED), (small, Status.OK)]
    cancelled = [(e.stream_id, e.reason) for e in events["server"] if isinstance(e, CallCancelled)]
    assert cancelled == [(big, Status.RESOURCE_EXHAUSTED)]
    assert pair.client.open_streams == pair.server.open_streams == 0


@pytest.mark.parametrize("status", list(Status))
def test_trailers_carry_every_status_without_a_message(framer_cls, status):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m", end_stream=True)
    pair.exchange()
    pair.server.send_trailers(sid, status)
    (ended,) = [e for e in pair.exchange()["client"] if isinstance(e, CallEnded)]
    assert (ended.status, ended.message, ended.details, ended.metadata) == (status, "", None, {})


@pytest.mark.parametrize(
    "payload",
    [b"\xa1\x01\x78", b"\xa1\x01", b"\xa2\x01\x61m\x02", b"\xa2\x01\x61m\x02\x1c", b"\xa1\x01\x62m",
     b"\xa1\x01\x62\xff\xfe", b"\xa2\x01\x62\xc3\x28\x02\x00"],
)
def test_truncated_or_odd_request_headers_are_protocol_errors_not_crashes(framer_cls, payload):
    pair = Pair(framer_cls)
    assert_fails(framer_cls, pair.server, frame(FrameType.HEADERS, 0, 1, payload), Status.INTERNAL)


@pytest.mark.parametrize("fields", [{1: 1, 2: 5}, {1: "x"}, {1: 1.5, 2: "m"}, {2: b"m"}])
def test_a_malformed_cancel_is_a_protocol_error(framer_cls, fields):
    pair = Pair(framer_cls)
    pair.client.open_call("m")
    pair.exchange()
    assert_fails(framer_cls, pair.server, frame(FrameType.CANCEL, 0, 1, cbor2.dumps(fields)), Status.INTERNAL)


def test_a_message_split_over_frames_gives_all_its_credit_back_once_consumed(framer_cls):
    """After a message of several MORE frames is complete and consumed, the receiver holds
    nothing, and both sides agree on the credit."""
    window = 64 << 10
    pair = Pair(framer_cls, server_options={"stream_window": window, "max_frame_size": 1 << 14})
    sid = pair.client.open_call("m")
    for n in range(3):
        pair.client.send_message(sid, message(n, 50_000))  # 4 frames each
        (payload,) = messages(pair.exchange()["server"])
        assert payload == message(n, 50_000)
        pair.server.consumed(sid, len(payload))
        pair.exchange()
        assert credit(pair.server, sid) == credit(pair.client, sid)[::-1]
        assert held(pair.server, sid) == (0, 0)


def test_goaway_is_said_once(framer_cls):
    pair = Pair(framer_cls)
    pair.server.goaway(Status.OK, "bye")
    pair.server.goaway(Status.OK, "bye again")
    assert len(goaways(framer_cls, pair.server.data_to_send())) == 1
    assert pair.server.state is ConnectionState.GOAWAY_SENT
    (event,) = pair.server.receive_data(frame(FrameType.GOAWAY, 0, 0, cbor2.dumps({1: 0, 3: "done"})))
    assert pair.server.goaway_received is event and event.message == "done"
    assert pair.server.state is ConnectionState.GOAWAY_BOTH
    pair.server.goaway(Status.OK, "and again")
    assert pair.server.data_to_send() == b""


def test_output_collected_as_a_list_frames_the_batches_too(framer_cls):
    """data_to_send_list (the Trio writer's) frames what waits on batches, as data_to_send does."""
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m", end_stream=True)
    pair.exchange()
    batch = pair.server.open_batch(sid)
    batch += [b"\x01", b"\x02"]
    assert pair.server.has_data_to_send
    parts = pair.server.data_to_send_list()
    assert messages(pair.client.receive_data(b"".join(parts))) == [b"\x01", b"\x02"]
    assert not pair.server.has_data_to_send and pair.server.data_to_send_list() == []


def test_a_message_sent_while_another_waits_for_credit_goes_after_it(framer_cls):
    pair = Pair(framer_cls, server_options={"stream_window": 1024})
    sid = pair.client.open_call("m")
    assert not pair.client.send_message(sid, message(1, 3000))  # waits for credit
    assert not pair.client.send_message(sid, message(2, 10))  # fits, but must wait its turn
    received = []
    for _ in range(20):
        events = pair.exchange()["server"]
        for payload in messages(events):
            received.append(payload)
            pair.server.consumed(sid, len(payload))
        if len(received) == 2:
            break
    assert received == [message(1, 3000), message(2, 10)]


@pytest.mark.parametrize("flags", [0, END_STREAM])
def test_headers_again_on_a_live_stream_is_a_protocol_error(framer_cls, flags):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m")
    pair.exchange()
    again = frame(FrameType.HEADERS, flags, sid, cbor2.dumps({1: "m"}))
    assert_fails(framer_cls, pair.server, again, Status.INTERNAL)


@pytest.mark.parametrize("consumed, granted", [(512, 512), (511, 0)])
def test_stream_credit_goes_back_in_half_windows(framer_cls, consumed, granted):
    """PROTOCOL.md section 8, trpc's policy: stream credit returns once at least half the
    window can be given back, and not before."""
    pair = Pair(framer_cls, server_options={"stream_window": 1024})
    sid = pair.client.open_call("m")
    pair.client.send_message(sid, message(1, 1024))
    pair.exchange()
    before = credit(pair.client, sid)[0]
    pair.server.consumed(sid, consumed)
    pair.exchange()
    assert credit(pair.client, sid)[0] - before == granted


def test_a_message_whose_last_frame_goes_over_the_limit_ends_its_call(framer_cls):
    """The frames with MORE stay within the max message size; the last one goes over: the call
    ends RESOURCE_EXHAUSTED and nothing of the message is handed on."""
    pair = Pair(framer_cls, server_options={"max_message_size": 2048})
    sid = pair.client.open_call("m")
    pair.exchange()
    data = frame(FrameType.DATA, MORE, sid, bytes(1500)) + frame(FrameType.DATA, 0, sid, bytes(1000))
    events = pair.server.receive_data(data)
    assert [(type(e).__name__, e.reason) for e in events] == [("CallCancelled", Status.RESOURCE_EXHAUSTED)]
    assert not messages(events)
    (ended,) = [e for e in pair.exchange()["client"] if isinstance(e, CallEnded)]
    assert ended.status is Status.RESOURCE_EXHAUSTED


def test_request_headers_larger_than_the_servers_frame_are_refused_here(framer_cls):
    """HEADERS must fit the peer's max frame size (16 KiB here) as well as 64 KiB."""
    pair = Pair(framer_cls, server_options={"max_frame_size": 16 << 10})
    with pytest.raises(LocalProtocolError, match="metadata is too large"):
        pair.client.open_call("m", metadata={"big": "x" * (20 << 10)})
    assert pair.client.open_streams == 0 and pair.client.data_to_send() == b""


def test_bad_metadata_in_response_headers_is_the_servers_protocol_error(framer_cls):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m", end_stream=True)
    pair.exchange()
    bad = frame(FrameType.HEADERS, 0, sid, cbor2.dumps({3: {"k": 5}}))
    assert_fails(framer_cls, pair.client, bad, Status.INTERNAL)
