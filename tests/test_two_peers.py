"""A client core and a server core, joined by a byte pipe, living random legal lives.

Theory of operation
-------------------
``TwoPeers`` is a hypothesis ``RuleBasedStateMachine`` holding a client and a server
:class:`~trpc.wire.Connection` and one byte pipe per direction.  A side's output enters its
pipe when its writer runs: before each delivery from it, right after it has processed input or
consumed messages (as the Trio layer's writer would), and at random, then sometimes only in part
(the rest is put back with ``requeue``).  A delivery hands the receiver a random prefix of the
pipe, whole or in turns (``receive_data(..., max_frames=k)`` then ``process_backlog(n)``), and
frames may wait in the backlog while the applications act.  The applications take random *legal*
actions: the client opens calls of the four shapes, sends requests (tiny, about a window, over a
window, ``[head, body]`` with a 64 KiB body), half-closes, cancels, consumes responses slowly,
pings and goes away; the server sends response headers, messages and batches, ends calls with any
status, consumes requests slowly, pings and goes away.  Windows are mostly small (from 1 KiB), so
flow control works hard.

The model is written from docs/PROTOCOL.md alone and never reads a core's private state: a
:class:`Call` records what each application did and received on one call, and a :class:`Pipe`
parses the frames that cross it to count DATA bytes and WINDOW_UPDATE increments against the
windows the prefaces announced.  After every step, and after a final drain (every request
finished, every byte delivered, every message consumed, every call ended), these hold:

1. a legal action never raises, and a legal peer is never a protocol error;
2. every call ends exactly once on each side and the ends agree: the client's CallEnded carries
   the server's trailers (UNAVAILABLE for a call above a server GOAWAY's last stream id), the
   server's CallCancelled the client's reason; a CANCEL that crosses the trailers is dropped;
3. messages arrive in order, intact, exactly once;
4. no side sends DATA beyond the credit granted to it and received (per stream and connection);
   a receiver grants no more than its window, counting the messages its application has not
   taken, and once it has processed and consumed everything, less than half a window is
   unreturned (section 8); output that waited for credit and left says so (SendCreditAvailable);
5. ``open_streams`` matches the model, and after the drain both sides hold no stream, no output,
   no backlog, and end of file gives ConnectionClosed alone;
6. every ping is heard once and acknowledged once, with its payload;
7. the server's INFO (protocol 1.1) crosses once, before any frame of a stream, naming the
   methods it declares idempotent, or never if it declares none; a call ends not processed
   exactly when it was above a server GOAWAY's last stream id.

That the turns give the events of one go is test_turns.py's business: here, both paths must
simply satisfy the model.  ``HYPOTHESIS_PROFILE=long`` searches far longer, and shrinks.
"""

from __future__ import annotations

import functools
import os
import struct
from collections import Counter, deque, namedtuple
from dataclasses import dataclass, field
from types import SimpleNamespace

import cbor2
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from hypothesis.stateful import run_state_machine_as_test

from trpc import Status
from trpc._client import Client
from trpc.channel._connection import ClientCall
from trpc._events import CallCancelled, CallEnded, CallOpened, ConnectionClosed, GoAwayReceived, HeadersReceived
from trpc._events import InfoReceived
from trpc._events import MessagesReceived, PingAcknowledged, PingReceived, PrefaceReceived, SendCreditAvailable
from trpc._events import StreamEnded
from trpc.wire import Connection

from .helpers import Pair

# Profiles of our own, fetched by name for this machine alone (never loaded: other tests keep
# theirs).  The CI one takes about 12 s per framer and does not shrink, since shrinking a failure
# takes minutes: CI prints the whole failing run, and HYPOTHESIS_PROFILE=long replays it from the
# example database and shrinks it (and otherwise searches far longer).
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "two-peers", max_examples=500, stateful_step_count=50,
    phases=[Phase.explicit, Phase.reuse, Phase.generate], **_COMMON,
)
settings.register_profile("two-peers-long", max_examples=10_000, stateful_step_count=100, **_COMMON)
SETTINGS = settings.get_profile("two-peers-long" if os.environ.get("HYPOTHESIS_PROFILE") == "long" else "two-peers")

# Written from docs/PROTOCOL.md sections 2 and 3, not imported: the model's own reading.
PREFACE = struct.Struct(">4sBBHIIIII")
HEADER = struct.Struct(">IBBI")
DATA, HEADERS, TRAILERS, CANCEL, WINDOW_UPDATE, PING, GOAWAY, INFO = range(8)
END_STREAM, MORE = 1, 2
BODY = 64 * 1024  # a [head, body] message's body is at least this

SIDES = ("client", "server")
OTHER = {"client": "server", "server": "client"}
ONE_REQUEST = ("unary", "server_stream")  # the method's name is its shape
ONE_RESPONSE = ("unary", "client_stream")
SHAPES = ONE_REQUEST + ("client_stream", "bidi")
KINDS = st.sampled_from(["tiny", "window", "over", "parts"])
CANCEL_REASONS = (Status.CANCELLED, Status.DEADLINE_EXCEEDED, Status.UNAVAILABLE)
OPTIONS = ("max_frame_size", "max_message_size", "stream_window", "connection_window", "max_concurrent_streams")

#: What each side announces.  Mostly tiny windows, so that flow control works hard; sometimes
#: roomy ones, so that a [head, body] message's body fits one frame and arrives as it was sent.
PEER_OPTIONS = st.fixed_dictionaries({
    "stream_window": st.integers(1024, 4096) | st.integers(4096, 40_000),
    "connection_window": st.integers(1024, 8192) | st.integers(8192, 4 * BODY),
    "max_frame_size": st.integers(16384, 40_000),
    "max_message_size": st.integers(1024, 20_000) | st.integers(BODY + 64, 2 * BODY),
    "max_concurrent_streams": st.integers(1, 6),
}) | st.fixed_dictionaries({
    "stream_window": st.integers(BODY + 64, 2 * BODY),
    "connection_window": st.integers(2 * BODY, 4 * BODY),
    "max_frame_size": st.integers(BODY + 64, 2 * BODY),
    "max_message_size": st.integers(BODY + 64, 2 * BODY),
    "max_concurrent_streams": st.integers(1, 6),
})

#: What one side's preface announced (section 2), in the order of OPTIONS.
Limits = namedtuple("Limits", "max_frame max_message stream_window connection_window max_streams")


class _CallLayer:
    """The client's Trio connection, as far as ending a call goes, around the client core:
    ``Client._cancel`` runs on it unchanged (no Trio needed: nothing waits)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.calls: dict = {}
        self.broken = None
        self.slot_waiters = ()  # nobody waits for a call slot here
        self.usable = True

    def cancel(self, stream_id: int, reason: Status, message: str) -> None:
        self.conn.cancel(stream_id, reason, message)  # TrioConnection.cancel, less the wake-up

    def wake_writer(self) -> None:  # the client woke its writer by hand before the split
        pass


def fill(tag: list, size: int) -> bytes:
    """A CBOR message ``[tag, padding]`` of ``size`` bytes (a byte or two less where the encoding
    cannot hit it exactly), or the smallest one if ``size`` is smaller than that."""
    data = cbor2.dumps([tag, b""])
    pad = size - len(data)
    while pad > 0:
        data = cbor2.dumps([tag, b"\xa5" * pad])
        if len(data) <= size:
            break
        pad -= len(data) - size
    return data


def joined(payload) -> bytes:
    return b"".join(payload) if isinstance(payload, list) else payload


class Pipe:
    """One direction of the byte stream.  Bytes written wait in ``waiting`` until delivered;
    they are parsed as they are written (the preface, then frames), and each DATA and
    WINDOW_UPDATE frame is counted when written and again once wholly delivered."""

    def __init__(self) -> None:
        self.waiting, self.unparsed = bytearray(), bytearray()
        self.written = self.delivered = 0
        self.preface: Limits | None = None
        self.in_flight: deque = deque()  # (end offset, counters, stream id, amount)
        self.data_sent, self.data_arrived = Counter(), Counter()  # per stream; 0: all of them
        self.credit_sent, self.credit_arrived = Counter(), Counter()  # per stream; 0: connection

    def write(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        """Append ``data``; return the frames it completes."""
        self.waiting += data
        self.unparsed += data
        frames = []
        if self.preface is None and len(self.unparsed) >= PREFACE.size:
            magic, major, _minor, _reserved, *limits = PREFACE.unpack_from(self.unparsed)
            assert (magic, major) == (b"TRPC", 1)
            self.preface = Limits(*limits)
            self._take(PREFACE.size)
        while self.preface is not None and len(self.unparsed) >= HEADER.size:
            length, ftype, flags, sid = HEADER.unpack_from(self.unparsed)
            if len(self.unparsed) < HEADER.size + length:
                break
            payload = bytes(self.unparsed[HEADER.size : HEADER.size + length])
            end = self._take(HEADER.size + length)
            if ftype == DATA:
                self.data_sent[sid] += length
                self.data_sent[0] += length
                self.in_flight.append((end, self.data_arrived, sid, length))
            elif ftype == WINDOW_UPDATE:
                increment = int.from_bytes(payload, "big")
                assert length == 4 and increment > 0, "a WINDOW_UPDATE carries 4 bytes, 1 or more"
                self.credit_sent[sid] += increment
                self.in_flight.append((end, self.credit_arrived, sid, increment))
            frames.append((ftype, flags, sid, payload))
        return frames

    def _take(self, size: int) -> int:
        del self.unparsed[:size]
        self.written += size
        return self.written

    def deliver(self, size: int) -> bytes:
        chunk = bytes(self.waiting[:size])
        del self.waiting[:size]
        self.delivered += len(chunk)
        while self.in_flight and self.in_flight[0][0] <= self.delivered:
            _, arrived, sid, amount = self.in_flight.popleft()
            arrived[sid] += amount
            if arrived is self.data_arrived:
                arrived[0] += amount
        return chunk


@dataclass(eq=False)
class Call:
    """One call in the model: what the client did and got, then what the server did and got."""

    sid: int
    shape: str
    metadata: dict | None = None
    timeout: float | None = None
    empty: bool = False  # opened with END_STREAM on its HEADERS: no request at all
    requests: list = field(default_factory=list)
    half_closed: bool = False
    cancel: tuple | None = None  # (reason, message) the client cancelled with
    ended: object = None  # the client's end: its CallEnded, or "cancel"
    headers_got: dict | None = None
    responses_got: list = field(default_factory=list)
    opened: bool = False  # the server saw CallOpened
    requests_got: list = field(default_factory=list)
    stream_ended: bool = False
    headers_sent: dict | None = None
    responses: list = field(default_factory=list)
    batch: list | None = None
    trailers: tuple | None = None  # (status, message, details, metadata) the server sent
    cancelled: CallCancelled | None = None
    unconsumed: dict = field(default_factory=lambda: {"client": deque(), "server": deque()})

    @property
    def client_open(self) -> bool:
        return self.ended is None

    @property
    def server_open(self) -> bool:
        return self.opened and self.trailers is None and self.cancelled is None

    def open_on(self, side: str) -> bool:
        return self.client_open if side == "client" else self.server_open


def tracked(method):
    """Run ``method``, noting whether it completed: ``teardown`` runs after a failure too, and
    must then leave that failure alone instead of draining a broken pair."""

    @functools.wraps(method)
    def run(self, **kwargs):
        self.clean = False
        method(self, **kwargs)
        self.clean = True

    return run


class TwoPeers(RuleBasedStateMachine):
    """A client and a server core, the pipes between them, and the model (see the module)."""

    def __init__(self, framer: type) -> None:
        super().__init__()
        self.framer = framer
        self.clean = False

    # ------------------------------------------------------------------ plumbing
    @initialize(options=st.tuples(PEER_OPTIONS, PEER_OPTIONS), split=st.integers(1, PREFACE.size - 1),
                idempotent=st.frozensets(st.sampled_from(SHAPES)))
    @tracked
    def the_peers_exchange_prefaces(self, options, split, idempotent):
        self.options = dict(zip(SIDES, options))
        self.idempotent = idempotent  # what the server declares (INFO), the methods named by shape
        self.conn = {side: Connection(side, framer=self.framer, **self.options[side]) for side in SIDES}
        self.conn["server"] = Connection("server", framer=self.framer, idempotent_methods=idempotent,
                                         **self.options["server"])
        self.client, self.server = self.conn["client"], self.conn["server"]
        self.pipe = {side: Pipe() for side in SIDES}
        self.calls: dict[int, Call] = {}
        self.ready = {side: False for side in SIDES}  # the peer's preface was processed
        self.goaway_sent = {side: False for side in SIDES}
        self.goaway_last: int | None = None  # the last stream id of the server's GOAWAY
        self.client_knows_goaway = False
        self.pings = {side: {} for side in SIDES}  # payload -> acknowledged yet
        self.pings_heard = {side: set() for side in SIDES}
        self.end_stream_seen: set[int] = set()
        self.info_written = self.stream_frame_written = False  # by the server
        self.info_got: InfoReceived | None = None  # by the client
        self.stream_event_got = False  # the client had an event for a stream
        for side in SIDES:
            self.conn[side].initiate()
            self._write(side)
            assert self.pipe[side].preface == Limits(*(self.options[side][key] for key in OPTIONS))
        for side in SIDES:  # each preface arrives in two pieces
            pipe = self.pipe[OTHER[side]]
            self._receive(side, pipe.deliver(split), None)
            self._receive(side, pipe.deliver(len(pipe.waiting)), None)
        assert self.ready == {"client": True, "server": True}

    def _limits(self, side: str) -> Limits:
        """What ``side``'s preface announced."""
        return self.pipe[side].preface

    def _write(self, side: str, data: bytes | None = None) -> None:
        """The writer of ``side`` runs: its output (or ``data``) enters the pipe, checked frame by
        frame."""
        pipe, peer = self.pipe[side], self.pipe[OTHER[side]]
        for ftype, flags, sid, payload in pipe.write(self.conn[side].data_to_send() if data is None else data):
            assert ftype <= GOAWAY or (ftype, side) == (INFO, "server"), f"{side} sent a frame of type {ftype}"
            if ftype == INFO:
                assert not self.info_written and not self.stream_frame_written and (sid, flags) == (0, 0)
                assert cbor2.loads(payload) == {1: sorted(self.idempotent)}
                self.info_written = True
            self.stream_frame_written |= side == "server" and sid != 0
            if ftype != DATA:
                assert len(payload) <= 65536, f"{side} sent a control frame of {len(payload)} bytes"
                continue
            limits = self._limits(OTHER[side])
            assert self.ready[side], f"{side} sent DATA before the peer's preface"
            assert len(payload) <= limits.max_frame, f"{side} sent a DATA frame over the peer's max frame size"
            assert sid and flags in (0, MORE, END_STREAM) and (payload or flags == END_STREAM), "a bad DATA frame"
            if flags == END_STREAM:
                assert side == "client" and self.calls[sid].half_closed and sid not in self.end_stream_seen
                self.end_stream_seen.add(sid)
            for key, window in ((sid, limits.stream_window), (0, limits.connection_window)):  # 0: connection
                granted = window + peer.credit_arrived[key]
                assert pipe.data_sent[key] <= granted, f"{side} sent {pipe.data_sent[key]} of {granted} on {key}"

    def _receive(self, side: str, chunk: bytes | None, turns: list | None) -> None:
        """``side`` processes ``chunk`` (None: only its backlog), in one go or in turns, the
        application seeing each turn's events before the next turn."""
        conn = self.conn[side]
        for index, turn in enumerate(turns or [None]):
            waiting = [sid for sid in self.calls if conn.send_buffered(sid)]
            if index == 0 and chunk is not None:
                events = conn.receive_data(chunk, max_frames=turn)
            else:
                events = conn.process_backlog(turn)
            self._events(side, events, waiting)
        self._write(side)

    def _events(self, side: str, events: list, waiting: list[int]) -> None:
        goaway_due: set[int] = set()  # calls a server GOAWAY must end, in the same events
        credit = set()
        for event in events:
            if isinstance(event, SendCreditAvailable):
                credit.add(event.stream_id)
            elif isinstance(event, PingReceived):
                assert event.payload in self.pings[OTHER[side]], f"{side} heard a ping never sent"
                assert event.payload not in self.pings_heard[side], f"{side} heard a ping twice"
                self.pings_heard[side].add(event.payload)
            elif isinstance(event, PingAcknowledged):
                assert self.pings[side].get(event.payload) is False, f"{side}: a stray ping ack"
                self.pings[side][event.payload] = True
            elif isinstance(event, PrefaceReceived):
                assert not self.ready[side], f"{side} got two prefaces"
                limits = self._limits(OTHER[side])
                assert (event.max_frame_size, event.initial_window) == (limits.max_frame, limits.stream_window)
                self.ready[side] = True
            elif side == "client":
                self._client_event(event, goaway_due)
            else:
                self._server_event(event)
        assert not goaway_due, f"calls {goaway_due} above the GOAWAY's last stream id did not end"
        conn = self.conn[side]
        for sid in credit:
            assert conn.send_buffered(sid) == 0, f"SendCreditAvailable for {sid} with output still waiting"
        for sid in waiting:
            call = self.calls[sid]  # (a cancelled call's output may simply be dropped)
            if (call.client_open if side == "client" else call.cancel is None) and not conn.send_buffered(sid):
                assert sid in credit, f"{side}'s waiting output on {sid} left without SendCreditAvailable"

    def _call(self, side: str, event) -> Call:
        call = self.calls.get(event.stream_id)
        assert call is not None and call.open_on(side), f"{side}: {event} for a call it has not open"
        return call

    def _messages(self, side: str, call: Call, payloads: list, got: list, sent: list) -> None:
        for payload in payloads:
            data = joined(payload)
            assert len(got) < len(sent) and data == sent[len(got)], (
                f"{side} got message {len(got)} of stream {call.sid} wrong, out of order or twice"
            )
            got.append(data)
            call.unconsumed[side].append(len(data))

    def _client_event(self, event, goaway_due: set[int]) -> None:
        if isinstance(event, InfoReceived):
            assert self.info_got is None and not self.stream_event_got, "INFO twice, or after a stream's frames"
            assert event.idempotent == self.idempotent
            self.info_got = event
            return
        self.stream_event_got |= hasattr(event, "stream_id")
        if isinstance(event, GoAwayReceived):
            assert not self.client_knows_goaway and self.goaway_last is not None, "a GOAWAY never sent"
            assert (event.last_stream_id, event.status, event.message) == (self.goaway_last, Status.OK, "bye")
            self.client_knows_goaway = True
            goaway_due.update(c.sid for c in self.calls.values() if c.client_open and c.sid > self.goaway_last)
            return
        call = self._call("client", event)
        if isinstance(event, HeadersReceived):
            assert call.headers_got is None and not call.responses_got, "response headers twice or late"
            assert event.metadata == call.headers_sent
            call.headers_got = event.metadata
        elif isinstance(event, MessagesReceived):
            self._messages("client", call, event.payloads, call.responses_got, call.responses)
        elif isinstance(event, CallEnded):
            if call.sid in goaway_due:
                goaway_due.discard(call.sid)
                assert event.status is Status.UNAVAILABLE and not call.opened and event.processed is False
            else:
                assert event.processed is True, f"CallEnded for {call.sid}: not processed, yet the server ran it"
                assert call.trailers is not None, f"CallEnded for {call.sid}, whose server sent no trailers"
                got = (event.status, event.message, event.details, event.metadata)
                assert got == call.trailers, f"the client got trailers {got}, the server sent {call.trailers}"
                assert call.responses_got == call.responses, "trailers came before all the messages"
            call.ended = event
        else:
            raise AssertionError(f"the client got {event}")

    def _server_event(self, event) -> None:
        if isinstance(event, GoAwayReceived):
            # Its last stream id should be 0 (section 9): see the last test of this file.
            assert self.goaway_sent["client"] and (event.status, event.message) == (Status.OK, "client closing")
        elif isinstance(event, CallOpened):
            call = self.calls.get(event.stream_id)
            assert call is not None and not call.opened, f"CallOpened for {event.stream_id}: not new"
            assert self.goaway_last is None, "a call opened after the server's GOAWAY"
            assert (event.method, event.metadata, event.end_stream) == (call.shape, call.metadata or {}, call.empty)
            assert (event.timeout is None) == (call.timeout is None)
            assert call.timeout is None or abs(event.timeout - call.timeout) < 1e-5
            call.opened = True
            call.stream_ended = call.empty
        elif isinstance(event, MessagesReceived):
            call = self._call("server", event)
            self._messages("server", call, event.payloads, call.requests_got, call.requests)
        elif isinstance(event, StreamEnded):
            call = self._call("server", event)
            assert call.half_closed and not call.stream_ended, f"StreamEnded for {call.sid}: not half-closed"
            assert call.requests_got == call.requests, "END_STREAM came before all the messages"
            call.stream_ended = True
        elif isinstance(event, CallCancelled):
            call = self._call("server", event)
            assert call.cancel == (event.reason, event.message), f"{event}, but the client sent {call.cancel}"
            call.cancelled = event
            call.batch = None
        else:
            raise AssertionError(f"the server got {event}")

    # ------------------------------------------------------------------ the pipe
    @rule(sender=st.sampled_from(SIDES), size=st.none() | st.integers(1, 64) | st.integers(65, 1 << 17),
          turns=st.none() | st.lists(st.integers(0, 3), min_size=1, max_size=4))
    @tracked
    def some_bytes_are_delivered(self, sender, size, turns):
        self._write(sender)
        pipe = self.pipe[sender]
        if pipe.waiting:
            self._receive(OTHER[sender], pipe.deliver(len(pipe.waiting) if size is None else size), turns)

    @rule(side=st.sampled_from(SIDES), as_list=st.booleans(), size=st.integers(0, 1 << 16))
    @tracked
    def a_writer_writes_part_of_the_output_and_puts_back_the_rest(self, side, as_list, size):
        conn = self.conn[side]
        data = b"".join(conn.data_to_send_list()) if as_list else conn.data_to_send()
        self._write(side, data[:size])
        conn.requeue(data[size:])

    @precondition(lambda self: self.client.backlog or self.server.backlog)
    @rule(data=st.data(), turns=st.lists(st.none() | st.integers(0, 3), min_size=1, max_size=3))
    @tracked
    def a_backlog_is_taken_in_turns(self, data, turns):
        self._receive(data.draw(st.sampled_from([side for side in SIDES if self.conn[side].backlog])), None, turns)

    @precondition(lambda self: any(any(call.unconsumed.values()) for call in self.calls.values()))
    @rule(data=st.data(), count=st.integers(1, 3))
    @tracked
    def an_application_takes_messages(self, data, count):
        side, sid = data.draw(st.sampled_from(
            [(side, call.sid) for call in self.calls.values() for side in SIDES if call.unconsumed[side]]
        ))
        unconsumed = self.calls[sid].unconsumed[side]
        for _ in range(min(count, len(unconsumed))):
            self.conn[side].consumed(sid, unconsumed.popleft())
        self._write(side)

    # ------------------------------------------------------------------ the client
    def _message(self, side: str, call: Call, kind: str, r: int) -> bytes | list[bytes]:
        """The next message from ``side`` on ``call``: ``kind`` says its size, within what the
        peer announced; its content says who sent it, on which stream, in which order."""
        peer = self._limits(OTHER[side])
        tag = [side, call.sid, len(call.requests if side == "client" else call.responses)]
        if kind == "parts" and peer.max_message >= BODY + 64:
            body = cbor2.dumps(tag) + b"\x5a" * (BODY + r % min(4096, peer.max_message - BODY - 63))
            return [cbor2.dumps(body)[: -len(body)], body]  # a byte string: its CBOR head, its bytes
        window = peer.stream_window
        size = {"tiny": 1 + r % 32, "window": window - 8 + r % 17}.get(kind, window + 1 + r % (3 * window))
        return fill(tag, min(size, peer.max_message))

    def _can_open(self) -> bool:
        return (
            not self.goaway_sent["client"]
            and not self.client_knows_goaway
            and sum(call.client_open for call in self.calls.values()) < self._limits("server").max_streams
        )

    def _pick(self, data, calls) -> Call:
        return self.calls[data.draw(st.sampled_from(sorted(call.sid for call in calls)), label="stream")]

    def _calls(self, test) -> list[Call]:
        return [call for call in self.calls.values() if test(call)]

    def _requesting(self) -> list[Call]:
        return self._calls(
            lambda c: c.client_open and not c.half_closed and (c.shape not in ONE_REQUEST or not c.requests)
        )

    @precondition(lambda self: self._can_open())
    @rule(shape=st.sampled_from(SHAPES), how=st.sampled_from(["open_unary_call", "open_call", "empty"]),
          metadata=st.sampled_from([None, {"k": "v"}, {"bin": b"\x00\xff"}]),
          timeout=st.sampled_from([None, 0.25, 30.0]), kind=KINDS, r=st.integers(0, 1 << 16))
    @tracked
    def the_client_opens_a_call(self, shape, how, metadata, timeout, kind, r):
        expected = max(self.calls, default=0) + 1
        call = Call(expected, shape, metadata, timeout, empty=how == "empty" and shape not in ONE_REQUEST)
        if how == "open_unary_call" and shape in ONE_REQUEST:
            message = self._message("client", call, kind, r)
            sid, sent = self.client.open_unary_call(shape, message, metadata=metadata, timeout=timeout)
            call.requests.append(joined(message))
            call.half_closed = True
            assert sent == (self.client.send_buffered(sid) == 0)
        else:
            sid = self.client.open_call(shape, metadata=metadata, timeout=timeout, end_stream=call.empty)
            call.half_closed = call.empty
        assert sid == expected, "trpc numbers its streams 1, 2, 3..."
        self.calls[sid] = call

    @precondition(lambda self: self._requesting())
    @rule(data=st.data(), kind=KINDS, r=st.integers(0, 1 << 16), end=st.booleans())
    @tracked
    def the_client_sends_a_request(self, data, kind, r, end):
        call = self._pick(data, self._requesting())
        end = end or call.shape in ONE_REQUEST
        message = self._message("client", call, kind, r)
        sent = self.client.send_message(call.sid, message, end_stream=end)
        call.requests.append(joined(message))
        call.half_closed = end
        assert sent == (self.client.send_buffered(call.sid) == 0)

    @precondition(lambda self: any(c.shape not in ONE_REQUEST for c in self._requesting()))
    @rule(data=st.data())
    @tracked
    def the_client_half_closes(self, data):
        call = self._pick(data, [c for c in self._requesting() if c.shape not in ONE_REQUEST])
        self.client.end_stream(call.sid)
        call.half_closed = True

    @precondition(lambda self: self._calls(lambda c: c.client_open))
    @rule(data=st.data(), reason=st.sampled_from(CANCEL_REASONS), message=st.sampled_from(["", "gave up"]))
    @tracked
    def the_client_cancels(self, data, reason, message):
        """Through the client's call layer (``Client._cancel``, what a caller's deadline or
        cancel scope runs): the status the call then reports must be the reason the wire
        carries (so a timeout reads DEADLINE_EXCEEDED, not CANCELLED)."""
        call = self._pick(data, self._calls(lambda c: c.client_open))
        record = ClientCall(call.sid, _CallLayer(self.client))
        Client._cancel(record, reason, message)
        assert (record.status, record.message) == (reason, message), "the call reports another status than it sent"
        call.cancel = (reason, message)
        call.ended = "cancel"

    @precondition(lambda self: self._calls(lambda c: not c.client_open))
    @rule(data=st.data())
    @tracked
    def a_cancel_after_the_end_does_nothing(self, data):
        call = self._pick(data, self._calls(lambda c: not c.client_open))
        self._write("client")
        self.client.cancel(call.sid, Status.CANCELLED)
        assert self.client.data_to_send() == b""

    # ------------------------------------------------------------------ the server
    def _serving(self, test=lambda call: True) -> list[Call]:
        return self._calls(lambda call: call.server_open and test(call))

    @precondition(lambda self: self._serving(lambda c: c.headers_sent is None and not c.responses))
    @rule(data=st.data(), metadata=st.sampled_from([None, {"h": "1"}, {"hb": b"\x01"}]))
    @tracked
    def the_server_sends_headers(self, data, metadata):
        call = self._pick(data, self._serving(lambda c: c.headers_sent is None and not c.responses))
        self.server.send_headers(call.sid, metadata)
        call.headers_sent = metadata or {}

    @precondition(lambda self: self._serving(lambda c: c.shape not in ONE_RESPONSE or not c.responses))
    @rule(data=st.data(), kind=KINDS, r=st.integers(0, 1 << 16))
    @tracked
    def the_server_sends_a_message(self, data, kind, r):
        call = self._pick(data, self._serving(lambda c: c.shape not in ONE_RESPONSE or not c.responses))
        message = self._message("server", call, kind, r)
        sent = self.server.send_message(call.sid, message)
        call.responses.append(joined(message))
        assert sent == (self.server.send_buffered(call.sid) == 0)

    @precondition(lambda self: self._serving(lambda c: c.shape not in ONE_RESPONSE))
    @rule(data=st.data(), sizes=st.lists(st.integers(1, 48), min_size=1, max_size=6))
    @tracked
    def the_server_batches_messages(self, data, sizes):
        call = self._pick(data, self._serving(lambda c: c.shape not in ONE_RESPONSE))
        batch = self.server.open_batch(call.sid)
        assert call.batch is None or batch is call.batch, "open_batch gave another list"
        call.batch = batch
        client = self._limits("client")
        assert self.server.batch_limit == min(client.max_frame, client.max_message)
        for size in sizes:
            batch.append(fill(["server", call.sid, len(call.responses)], size))
            call.responses.append(batch[-1])

    @precondition(lambda self: self._serving(lambda c: c.batch is not None))
    @rule(data=st.data())
    @tracked
    def the_server_flushes_a_batch(self, data):
        call = self._pick(data, self._serving(lambda c: c.batch is not None))
        assert self.server.flush_batch(call.sid) == (self.server.send_buffered(call.sid) == 0)

    @precondition(lambda self: self._serving())
    @rule(data=st.data(), status=st.sampled_from(Status), message=st.sampled_from(["", "done", "ünïcode"]),
          details=st.sampled_from([None, [1, "two"]]), metadata=st.sampled_from([None, {"t": "2"}, {"tb": b"\x02"}]))
    @tracked
    def the_server_ends_a_call(self, data, status, message, details, metadata):
        call = self._pick(data, self._serving())
        self.server.send_trailers(call.sid, status, message, details, metadata)
        call.trailers = (status, message, details, metadata or {})
        call.batch = None

    # ------------------------------------------------------------------ both
    @precondition(lambda self: min(map(len, self.pings.values())) < 3)
    @rule(data=st.data())
    @tracked
    def a_side_pings(self, data):
        side = data.draw(st.sampled_from([side for side in SIDES if len(self.pings[side]) < 3]))
        payload = side[0].encode() + len(self.pings[side]).to_bytes(7, "big")
        self.conn[side].ping(payload)
        self.pings[side][payload] = False

    @precondition(lambda self: len(self.calls) >= 3 and not all(self.goaway_sent.values()))
    @rule(data=st.data())
    @tracked
    def a_side_goes_away(self, data):
        side = data.draw(st.sampled_from([side for side in SIDES if not self.goaway_sent[side]]))
        self.goaway_sent[side] = True
        if side == "client":
            self.client.goaway(Status.OK, "client closing")
            return
        self.goaway_last = max((call.sid for call in self.calls.values() if call.opened), default=0)
        assert self.server.last_stream_id == self.goaway_last
        self.server.goaway(Status.OK, "bye")

    # ------------------------------------------------------------------ invariants
    @invariant()
    @tracked
    def the_cores_agree_with_the_model(self):
        calls = self.calls.values()
        assert self.client.open_streams == sum(call.client_open for call in calls)
        # A stream whose trailers wait behind data lives on until they leave (send_buffered).
        lingering = sum(1 for c in calls if c.trailers and self.server.send_buffered(c.sid))
        assert self.server.open_streams == sum(call.server_open for call in calls) + lingering
        for side in SIDES:
            self._check_credit_returned(side)

    def _check_credit_returned(self, side: str) -> None:
        """Once ``side`` has processed all it received, it has granted no credit beyond its
        connection window, and holds back less than half of it.  On a stream, the credit it holds
        back covers the messages its application has not taken, so that they and the peer's
        credit fit the window (all but the first: one that began to arrive while none waited
        may exceed it); once they are all taken, it holds back less than half the window."""
        if self.conn[side].backlog:
            return
        inbound, outbound, own = self.pipe[OTHER[side]], self.pipe[side], self._limits(side)
        unreturned = inbound.data_arrived[0] - outbound.credit_sent[0]
        assert 0 <= unreturned < own.connection_window >> 1, f"{side} holds {unreturned} connection credit"
        for call in self._calls(lambda c: c.open_on(side)):
            unreturned = inbound.data_arrived[call.sid] - outbound.credit_sent[call.sid]
            held = sum(call.unconsumed[side])
            assert held - (held and call.unconsumed[side][0]) <= unreturned, f"{side} over-granted on {call.sid}"
            assert held or unreturned < own.stream_window >> 1, f"{side} holds {unreturned} credit on {call.sid}"

    def teardown(self):
        """Drain: every request finished, every byte delivered, every message consumed, every
        call the server still has ended with OK; then nothing may be left anywhere."""
        if not self.clean:
            return  # a step failed: report that failure, not a consequence of it
        for call in self._requesting():
            if call.shape in ONE_REQUEST:
                call.requests.append(self._message("client", call, "tiny", 0))
                self.client.send_message(call.sid, call.requests[-1], end_stream=True)
            else:
                self.client.end_stream(call.sid)
            call.half_closed = True
        for _ in range(100_000):
            if self._drain_once():
                continue
            if not self._serving():
                break
            for call in self._serving():
                self.server.send_trailers(call.sid, Status.OK)
                call.trailers = (Status.OK, "", None, {})
        else:
            raise AssertionError("the drain never settled")
        for side in SIDES:
            conn = self.conn[side]
            assert not self.pipe[side].waiting and not self.pipe[side].unparsed
            assert conn.data_to_send() == b"" and not conn.has_data_to_send and conn.backlog == 0
            stuck = {sid: conn.send_buffered(sid) for sid in self.calls if conn.send_buffered(sid)}
            assert conn.open_streams == 0, f"{side} still holds {conn.open_streams} streams; waiting: {stuck}"
            assert all(self.pings[side].values()), f"{side}: a ping was never acknowledged"
            assert set(self.pings[OTHER[side]]) == self.pings_heard[side]
        for call in self.calls.values():
            assert call.ended is not None, f"call {call.sid} never ended on the client"
            if self.goaway_last is not None and call.sid > self.goaway_last:
                assert not call.opened and (call.ended == "cancel" or call.ended.status is Status.UNAVAILABLE)
            else:
                assert call.opened and (call.trailers or call.cancelled), f"{call.sid} never ended on the server"
        assert (self.info_got is not None) == bool(self.idempotent), "INFO missing, or sent with nothing to say"
        for side in SIDES:
            self._check_credit_returned(side)
            assert self.conn[side].receive_data(b"") == [ConnectionClosed()]

    def _drain_once(self) -> bool:
        """Deliver everything both ways and consume every message; True if anything moved."""
        moved = False
        for sender, receiver in zip(SIDES, reversed(SIDES)):
            self._write(sender)
            pipe, conn = self.pipe[sender], self.conn[receiver]
            if pipe.waiting or conn.backlog:
                moved = True
                self._receive(receiver, pipe.deliver(len(pipe.waiting)) if pipe.waiting else None, None)
            for call in self._calls(lambda c: c.unconsumed[receiver]):
                moved = True
                while call.unconsumed[receiver]:
                    conn.consumed(call.sid, call.unconsumed[receiver].popleft())
            self._write(receiver)
        return moved


def test_a_client_and_a_server_keep_every_rule_through_random_legal_lives(framer_cls):
    """The machine, once per framer.  (Before the core was split into trpc.wire, it failed
    every run: trailers queued behind data short of credit left the server's stream closed but
    tracked, and the client's next CANCEL, DATA or END_STREAM on it failed the connection.)"""
    run_state_machine_as_test(lambda: TwoPeers(framer_cls), settings=SETTINGS)


@pytest.mark.parametrize("then", ["cancel", "send_message", "end_stream"])
def test_what_crosses_trailers_queued_behind_data_is_dropped(framer_cls, then):
    """The minimal case the machine finds.  The server's response waits for credit and its
    trailers wait behind it: the call is over for the server, so what the client sends before it
    learns so (a CANCEL, a message, its half-close) must be dropped (section 7), not fail the
    connection; and once both sides are done, both forget the stream."""
    pair = Pair(framer_cls, client_options={"stream_window": 1024})
    client, server = pair.client, pair.server
    sid = client.open_call("bidi")
    server.receive_data(client.data_to_send())
    server.send_message(sid, fill(["server", sid, 0], 1024))  # all of the client's stream window
    assert server.send_message(sid, fill(["server", sid, 1], 16)) is False  # waits for credit
    server.send_trailers(sid, Status.OK)  # queued behind it
    if then == "cancel":
        client.cancel(sid)
    elif then == "send_message":
        client.send_message(sid, fill(["client", sid, 0], 16))
    else:
        client.end_stream(sid)
    assert server.receive_data(client.data_to_send()) == []
    for _ in range(3):  # the client takes what arrives: the rest leaves, then the trailers
        for event in client.receive_data(server.data_to_send()):
            for payload in event.payloads if isinstance(event, MessagesReceived) else ():
                client.consumed(sid, len(payload))
        server.receive_data(client.data_to_send())
    assert server.open_streams == client.open_streams == 0


def test_a_client_going_away_announces_last_stream_id_0(framer_cls):
    """Section 9: "A client closing its connection sends GOAWAY with last stream id 0"."""
    pair = Pair(framer_cls)
    pair.client.open_call("bidi")
    pair.client.goaway(Status.OK, "client closing")
    (event,) = [event for event in pair.exchange()["server"] if isinstance(event, GoAwayReceived)]
    assert event.last_stream_id == 0
