"""The QUIC wire, sans-IO: trpc's calls on QUIC streams, with trpc's wire methods and events.

Theory of operation
-------------------
:class:`QuicWire` owns one ``qh3`` ``QuicConnection`` (itself sans-IO: datagrams in, events
and datagrams out), which keeps what QUIC keeps: TLS 1.3, packets, loss recovery, congestion
control, stream and connection flow control, migration.  Around it the adapter keeps one
record per call (:class:`_Call`) and speaks the call layer's language (``trpc._events``), so
the server and the client serve it as they serve trpc's own wire and gRPC's
(docs/PROTOCOL.md section 16 is the mapping):

- **a call is a client-initiated bidirectional QUIC stream**, carrying trpc's own frames
  (the 10-byte header; HEADERS, DATA, TRAILERS) with the header's stream id 0, since the QUIC
  stream names the call.  The client's FIN is its half-close; the server's TRAILERS are its
  last frame, followed by FIN.  In events a call is named ``QUIC stream id + 1`` (the call
  layer's stream ids start at 1).
- **a call's credit follows its reader**: qh3 returns QUIC's flow-control credit as data
  arrives (its Rust core owns MAX_STREAM_DATA and offers no way to hold it back), so QUIC's
  own windows bound nothing once a peer stops reading.  trpc keeps its own per-call window on
  top: a sender may put ``INITIAL_WINDOW`` bytes on a call's stream, plus what the receiver
  grants in WINDOW_UPDATE frames on its control stream (the header's stream id names the
  call).  The receiver counts the bytes of messages it delivered and the call layer has not
  yet ``consumed``; every other byte (frame headers, HEADERS, TRAILERS, a message still
  arriving) is released as it arrives.  It grants so that the sender's limit stays
  ``stream_window`` past what is released, in steps of a quarter window, so a call that does
  not read holds at most ``max(stream_window, INITIAL_WINDOW)`` bytes of read-ahead here.
  The sender keeps what its credit does not cover in this adapter's queue (``_pending``);
  ``send_message`` returns False (and the call layer waits for :class:`SendCreditAvailable`)
  while more than ``SEND_LOW_WATER`` bytes of a stream wait, here or in QUIC's send buffer, so
  a producer blocks behind a peer that reads nothing.
- **a message is joined once**: a DATA frame whose body has not all come is kept as the
  pieces QUIC hands over (``_body``) and joined when its last byte arrives, at its exact size;
  a large one that is a single byte string as trpc's codec writes it (a value, or call
  arguments) is handed on as ``[head, body]``, which the decoder takes without copying the
  body again.  Every task of the process waits while such a copy runs, small calls' replies
  included.
- **a small flight's loss is found in a round trip**: QUIC finds a lost packet when a later
  one is acknowledged; a small call's request or reply is often the last packet for a while,
  and then QUIC waits for its probe timeout, which counts the peer's maximum ACK delay (a
  fixed value in qh3, which trpc cannot lower).  So a send of new stream data carries a
  marker PING (in its first packet), and if the marker's ACK is overdue (:meth:`probe`: its
  smoothed round trip plus four times its variation, RFC 6298's estimator over markers), a
  PING goes alone.  The peer acknowledges that at once (a trpc peer does as soon as it has
  read a burst), and QUIC, seeing a later packet acknowledged and the flight not, resends the
  flight (RFC 9002's time threshold).  At most ``_PROBES`` probes per marker.  Markers are
  sent only on a path that has lost packets lately (``_MARK_FOR``): the first loss is found
  by QUIC's own probe timeout, the ones after it in a round trip.
- **cancellation is QUIC's**: the client's cancel is RESET_STREAM and STOP_SENDING, with the
  reason's status code as the application error code; the server sees
  :class:`CallCancelled` with that reason.  A call refused unprocessed after GOAWAY is reset
  with ``REFUSED``.
- **connection-level frames go on a control stream**: each side opens one unidirectional
  stream once the handshake is done; the server's starts with INFO (what it declares), and
  GOAWAY goes there.  There is no trpc preface: ALPN ``trpc/1`` and the finished handshake
  are it (:class:`PrefaceReceived` with version 1.2), and what a preface would say of
  compression, the codings a side accepts, is INFO's key 3, which the client's control stream
  starts with too.  For a client the server asked for a certificate, the server's first
  control frame is the preface instead, since in TLS 1.3 the client's handshake is done
  before the server has checked its certificate, and a refusal must fail the connection,
  not its first calls.  PING is QUIC's (its uid carries the 8-byte payload), and the idle
  timeout is QUIC's.
- **compression** is the trpc wire's (a DATA frame's coding field; a :class:`Compressed`
  message handed on as it arrived, decompressed when read), towards a peer whose INFO
  accepted the coding.

Datagrams leave through :meth:`datagrams_to_send`; the byte-stream methods of the interface
(``data_to_send``, ``requeue``) raise, since datagrams cannot be joined into one write.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import cbor2
from qh3.quic import events as qe
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.packet import QuicErrorCode

from .._errors import LocalProtocolError, MessageTooLargeError, RemoteProtocolError
from .._events import (
    CallCancelled,
    CallEnded,
    CallOpened,
    ConnectionClosed,
    Event,
    GoAwayReceived,
    HeadersReceived,
    InfoReceived,
    MessagesReceived,
    PingAcknowledged,
    PrefaceReceived,
    Received,
    SendCreditAvailable,
    StreamEnded,
)
from .._service import SHAPE_CODES, Cardinality
from .._status import Status
from ..wire import StreamState, message_size
from ..wire._compression import (
    CODING_FLAGS,
    CODING_SHIFT,
    DEFAULT_COMPRESSION_THRESHOLD,
    Coding,
    Compressed,
    coding_bit,
    codings_of,
    compress,
)
from ..wire._control import (
    RequestHeadersEncoder,
    encode_goaway,
    encode_info,
    encode_response_headers,
    encode_trailers,
    parse_goaway,
    parse_info,
    parse_request_headers,
    parse_response_headers,
    parse_trailers,
)
from ..wire._flow import DEFAULT_STREAM_WINDOW
from ..wire._frames import (
    DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_HEADERS_SIZE,
    PROTOCOL_VERSION,
    FrameType,
    pack_header,
)
from .._codec import LARGE_HEAD_MAX, large_bytes_head
from .._framer_py import HEADER, LARGE_PAYLOAD
from ._tls import certificate_requested, describe_crypto_error

__all__ = ["QuicWire", "REFUSED", "NO_ERROR", "PROTOCOL_ERROR", "SEND_LOW_WATER", "INITIAL_WINDOW", "call_id",
           "quic_id"]

#: Application error code of a RESET_STREAM for a call refused unprocessed (after GOAWAY):
#: the client may retry it anywhere.  Codes 1 to 16 are trpc's statuses (a cancel's reason).
REFUSED = 0x100
#: Application error code of a STOP_SENDING from a server that has answered a call whose client
#: still sends: the rest of the request is not wanted (not an error).
NO_ERROR = 0
#: Error code of the CONNECTION_CLOSE that ends a connection whose peer broke this mapping (a
#: frame not allowed where it came, a malformed map): the QUIC counterpart of trpc's GOAWAY
#: with a protocol error.
PROTOCOL_ERROR = 0x101
#: Bytes of one stream waiting in QUIC's send buffer past which ``send_message`` says "wait
#: for credit": 1 MiB, a few round trips of a fast path's window, so a producer is never held
#: back while the network takes what it sends, and never far ahead of a peer that reads nothing.
SEND_LOW_WATER = 1 << 20
#: Bytes a sender may put on a call's stream before the receiver grants any: the receiver
#: raises it to its ``stream_window`` with its first WINDOW_UPDATE, sent when the call's first
#: bytes arrive.  256 KiB, so that a large message keeps flowing through the round trip that
#: first grant takes (at HTTP/2's 64 KiB the sender stood idle for it, in each direction of
#: every call larger than that); no more, because it arrives as one burst, which the
#: receiver's socket buffer (``_SOCKET_BUFFER`` in ``_transport``) must hold whole, and
#: because it is the floor of every call's read-ahead (a window set smaller is raised to it).
INITIAL_WINDOW = 256 << 10
#: The largest window: a WINDOW_UPDATE's increment is 31 bits, as on trpc's own wire.
_MAX_WINDOW = (1 << 31) - 1
#: Bytes of one stream handed to QUIC and not yet sent, past which the rest waits here: 64 KiB.
#: QUIC sends a stream's queued bytes before a later stream's, so a small reply queued behind
#: a large message whole would wait for all of it (head-of-line blocking inside the sender);
#: fed in slices, it waits behind one slice at most.  64 KiB: enough for a burst of
#: the congestion window per feeding round, small enough to send in a few milliseconds.
_FEED = 64 << 10
#: A message at least this large that is one byte string, as trpc's codec writes it, is handed
#: on as ``[head, body]`` (``_whole``), so the decoder does not copy its body once more: a copy
#: the size of the message holds up every task of the process while it runs
#: (docs/PERFORMANCE.md, "QUIC").  The trpc wire's large-frame size (``LARGE_PAYLOAD``):
#: below it a copy is short.
_LARGE = LARGE_PAYLOAD
#: Feeding rounds per ``datagrams_to_send`` at most: a bound on one call's work (a round hands
#: every stream with waiting bytes one slice, and collects the datagrams QUIC makes of them),
#: so that a bulk sender lets other tasks run every few hundred datagrams; the rest goes when
#: the acknowledgements of these come back.
_FEED_ROUNDS = 4
#: The uids of marker and probe PINGs carry this tag in their upper half, so their ACKs are told
#: apart from those of the call layer's PINGs (keepalive's, whose payloads are random).
_PROBE_TAG = 0x74707262 << 32
#: Probes sent for one marker at most, each after twice the wait of the one before.  Three:
#: with the waits doubling, the third falls about where QUIC's own probe timeout (which counts
#: the peer's maximum ACK delay) would, and past it that timeout goes on alone, so a peer that
#: is gone or slow to acknowledge costs a connection three small datagrams per marker.
_PROBES = 3
#: How long a marker waits for its ACK before the first probe while no round trip has been
#: measured yet: 50 ms, longer than most paths' round trip (a wait shorter than the path's
#: costs one needless PING), well short of QUIC's own first probe timeout.
_INITIAL_PROBE_WAIT = 0.05
#: Seconds markers are sent for after QUIC last found a loss (its loss-detection timer fired)
#: or a probe went out: 10, so a path that loses packets keeps its markers between losses a
#: few seconds apart, while a connection that loses nothing sends none (a marker and its ACK
#: cost a small call's round trip about a tenth more CPU on loopback).
_MARK_FOR = 10.0
#: The shortest wait for a marker's ACK: the timer granularity QUIC's recovery assumes (RFC 9002).
_GRANULARITY = 0.001
#: The version PrefaceReceived reports: the frames are protocol 1.2's (INFO, coded DATA).
_VERSION = PROTOCOL_VERSION
_HEADER_SIZE = HEADER.size
_unpack_header = HEADER.unpack_from
_DATA = int(FrameType.DATA)
_HEADERS = int(FrameType.HEADERS)
_TRAILERS = int(FrameType.TRAILERS)
_GOAWAY = int(FrameType.GOAWAY)
_INFO = int(FrameType.INFO)
_WINDOW_UPDATE = int(FrameType.WINDOW_UPDATE)
#: Payloads of frames other than DATA never exceed this (HEADERS, TRAILERS, control frames).
_MAX_CONTROL = MAX_HEADERS_SIZE
_OK_TRAILERS = cbor2.dumps({1: 0})
#: Pieces of a DATA frame's body smaller than this are gathered into one buffer while it
#: arrives (``_body``), larger ones kept as they came: 4 KiB, a few datagrams' worth.
_PIECE = 4096
#: What qh3 raises when asked to send on a connection that has closed (its Rust core raises
#: RuntimeError, wrapped in QuicConnectionError) or on a stream that has finished (ValueError).
_CLOSED = (QuicConnectionError, RuntimeError, ValueError)


def call_id(stream_id: int) -> int:
    """The call layer's name for the call on QUIC stream ``stream_id``."""
    return stream_id + 1


def quic_id(call: int) -> int:
    """The QUIC stream of the call the call layer names ``call``."""
    return call - 1


def _poll_datagrams(quic: QuicConnection, now: float) -> list[tuple[bytes, Any]]:
    """What ``quic.datagrams_to_send(now)`` returns, made cheaper per datagram.

    qh3's method is a Python loop over its Rust core's ``poll_transmit``, and for every
    datagram it also calls two logging hooks, one of which parses every packet's header
    again, whether or not a QUIC logger is set; a bulk transfer makes hundreds of datagrams
    per call.  Without a logger this loop polls the core itself (qh3's private ``_core``, the
    same object qh3's loop polls, errors wrapped as qh3 wraps them); with one, or a qh3
    whose connection has no such core, qh3's own method runs."""
    core = getattr(quic, "_core", None)
    if core is None or getattr(quic, "_quic_logger", True) is not None:
        return quic.datagrams_to_send(now=now)
    poll = core.poll_transmit
    datagrams: list[tuple[bytes, Any]] = []
    append = datagrams.append
    try:
        while (transmit := poll(now)) is not None:
            append((transmit[0], transmit[1]))
    except RuntimeError as exc:
        raise QuicConnectionError(QuicErrorCode.INTERNAL_ERROR, None, str(exc)) from exc
    return datagrams


def _frame(kind: int, payload: bytes, flags: int = 0) -> bytes:
    return pack_header(len(payload), kind, flags, 0) + payload


@dataclass(slots=True)
class _Call:
    """One call's stream, as this side sees it."""

    stream_id: int
    buffer: bytearray
    #: Neither direction can carry more (both ended, or reset): the record is dropped.
    local_ended: bool = False
    remote_ended: bool = False
    #: The call layer was told the call ended (CallEnded / CallCancelled): no more events.
    reported: bool = False
    #: send_message said "wait": report SendCreditAvailable once the buffer drains.
    blocked: bool = False
    #: (server) response headers sent; the peer's HEADERS received (at most one per call).
    headers_sent: bool = False
    headers_received: bool = False
    #: Bytes of the peer's half of the stream received, those of messages delivered and not
    #: yet consumed by the call layer, and the offset the peer may send up to (its credit).
    received: int = 0
    held: int = 0
    limit: int = INITIAL_WINDOW
    #: The body of a DATA frame still arriving, as the pieces that came (``_body``), their
    #: bytes, and the bytes still to come (0: no body is arriving; ``buffer`` holds the start
    #: of the next frame).
    pieces: list[bytes | bytearray | memoryview] | None = None
    partial: int = 0
    missing: int = 0
    #: The coding of that body's message (0: not compressed).
    coding: int = 0


def _whole(pieces: list[bytes | bytearray | memoryview], size: int) -> Received:
    """The message the ``size`` bytes of ``pieces`` make, joined once: as ``[head, body]`` when
    it is one large byte string as trpc's codec writes it (see ``_LARGE``), else as bytes."""
    if size >= _LARGE:
        prefix = bytearray()
        for piece in pieces:
            prefix += piece[:LARGE_HEAD_MAX - len(prefix)]
            if len(prefix) >= LARGE_HEAD_MAX:
                break
        head = large_bytes_head(bytes(prefix), size)
        if head:
            index, skip = 0, head
            while skip >= len(pieces[index]):
                skip -= len(pieces[index])
                index += 1
            return [bytes(prefix[:head]), b"".join([memoryview(pieces[index])[skip:], *pieces[index + 1:]])]
    return b"".join(pieces)


class QuicWire:
    """trpc's wire methods and events over one QUIC connection (see the module docstring)."""

    def __init__(
        self,
        role: Literal["client", "server"],
        quic: QuicConnection,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
        idempotent_methods: frozenset[str] = frozenset(),
        methods: dict[str, Cardinality] | None = None,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        compression_threshold: int = DEFAULT_COMPRESSION_THRESHOLD,
        accept_compression: list[str] | None = None,
    ) -> None:
        if not 0 < stream_window <= _MAX_WINDOW:
            raise ValueError(f"stream_window must be between 1 and {_MAX_WINDOW}")
        self.role = role
        self.quic = quic
        self.max_message_size = max_message_size
        self.max_concurrent_streams = max_concurrent_streams
        #: Read-ahead granted per call: what a call that does not read holds here at most.
        self.stream_window = max(stream_window, INITIAL_WINDOW)
        self._idempotent = frozenset(idempotent_methods)
        self._methods = frozenset((path, SHAPE_CODES[shape]) for path, shape in (methods or {}).items())
        self._calls: dict[int, _Call] = {}
        self._headers = RequestHeadersEncoder()
        #: The codings this side accepts (preface bits: every one this process can use unless
        #: ``accept_compression`` names fewer), those the peer accepts (its INFO's key 3; 0
        #: until it arrives), and the smallest message ``send_compressed`` compresses.
        self.accepted_codings = codings_of(accept_compression)
        self.peer_codings = 0
        self.compression_threshold = compression_threshold
        self._info_received = False
        #: Frames read from the peer's control stream (INFO may only be the first).
        self._control_frames = 0
        #: The peer's preface: for QUIC, the finished handshake (None until then).
        self.peer_preface: tuple[int, int] | None = None
        #: Why the QUIC connection ended (None while it lives).
        self.terminated: str | None = None
        self._control: int | None = None
        self._peer_control: dict[int, bytearray] = {}
        #: (client) PrefaceReceived waits for the server's first control frame (see above).
        self._preface_waits = False
        self._goaway_sent = False
        self._goaway_received = False
        #: (server) The QUIC stream id of the last call received (-1: none yet).
        self._last_received = -1
        #: (server) Call streams below _last_received whose first bytes have not arrived yet.
        self._skipped: set[int] = set()
        self._dirty = False
        self._blocked: set[int] = set()
        self._batches: dict[int, list[Any]] = {}
        #: Stream data not yet handed to QUIC, by QUIC stream id, and its size (see _FEED).
        self._pending: dict[int, deque[tuple[memoryview, bool]]] = {}
        self._waiting: dict[int, int] = {}
        #: Bytes each call's stream may still send (the peer's grants less what was handed to
        #: QUIC), by QUIC stream id; kept while the stream has bytes waiting in ``_pending``.
        self._credit: dict[int, int] = {}
        #: Connection ids QUIC issued and retired since the endpoint last looked (it routes
        #: datagrams by them).
        self.issued: list[bytes] = []
        self.retired: list[bytes] = []
        #: Where the peer's datagrams come from (receive_data uses it).
        self.peer_address: Any = None
        #: Stream data was queued since the last ``datagrams_to_send``.
        self._fresh = False
        #: Until when new stream data carries markers (see ``_MARK_FOR``; ``fire_timer``).
        self._marking_until = 0.0
        #: The PING whose ACK is awaited (the latest marker, or the probe sent for it; None:
        #: none is), when the marker was sent, and the probes sent for it since.
        self._marker: int | None = None
        self._marked_at = 0.0
        self._probes = 0
        self._next_uid = _PROBE_TAG
        #: When :meth:`probe` is next due (math.inf: no marker waits).
        self.probe_at = math.inf
        #: The round trip of marker PINGs, smoothed, and its variation (RFC 6298's estimator).
        self._srtt: float | None = None
        self._rttvar = 0.0

    # ------------------------------------------------------------ state the call layer asks
    @property
    def open_streams(self) -> int:
        return len(self._calls)

    def stream_state(self, stream_id: int) -> StreamState:
        call = self._calls.get(quic_id(stream_id))
        if call is None:
            return StreamState.CLOSED
        if call.local_ended:
            return StreamState.HALF_CLOSED_LOCAL
        if call.remote_ended:
            return StreamState.HALF_CLOSED_REMOTE
        return StreamState.OPEN

    def send_buffered(self, stream_id: int) -> int:
        """Bytes of this call waiting in QUIC's send buffer, counted only past SEND_LOW_WATER
        (0: the call may send more)."""
        if quic_id(stream_id) not in self._calls:
            return 0
        size = self._queued(quic_id(stream_id))
        return size if size > SEND_LOW_WATER else 0

    def send_queued(self, stream_id: int) -> int:
        """Bytes of this call not yet sent: waiting for credit or QUIC's turn here, and in
        QUIC's send buffer."""
        return self._queued(quic_id(stream_id))

    def receive_buffered(self, stream_id: int) -> int:
        """Bytes of this call received and not yet consumed: messages delivered to the call
        layer and not yet read, and the part of a frame still arriving."""
        call = self._calls.get(quic_id(stream_id))
        return 0 if call is None else call.held + len(call.buffer) + call.partial

    def _queued(self, stream_id: int) -> int:
        """Bytes of a stream not yet sent: waiting here, and handed to QUIC."""
        return self._waiting.get(stream_id, 0) + self.quic.get_send_buffer_size(stream_id)

    @property
    def accepting_calls(self) -> bool:
        return self.terminated is None and not self._goaway_sent and not self._goaway_received

    @property
    def can_open_call(self) -> bool:
        """A new call may start: the connection takes calls, and the server's MAX_STREAMS
        (a count of streams ever opened, raised as calls end) allows one more."""
        return self.accepting_calls and (self.quic.get_next_available_stream_id() >> 2) < \
            self.quic.max_concurrent_bidi_streams

    @property
    def peer_connection_window(self) -> int:
        return SEND_LOW_WATER

    @property
    def batch_limit(self) -> int:
        return self.max_message_size

    @property
    def output_size(self) -> int:
        return 0

    @property
    def has_data_to_send(self) -> bool:
        return self._dirty

    @property
    def backlog(self) -> int:
        return 0

    # ------------------------------------------------------------ bytes in and out
    def initiate(self) -> None:
        """Nothing to queue: the QUIC handshake is the preface (the client's ``connect``
        is made by whoever made the QuicConnection)."""

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        """Every datagram due now, with its destination address (the streams' batches are
        framed first)."""
        if self._batches:
            for stream_id, batch in list(self._batches.items()):
                call = self._calls.get(stream_id)
                if batch and call is not None:
                    self._flush_pending_batch(call)
        self._dirty = False
        quic = self.quic
        if self._fresh:
            self._fresh = False
            if self._control is not None and now < self._marking_until:
                self._mark(now)
        if not self._pending:
            return _poll_datagrams(quic, now)
        datagrams: list[tuple[bytes, Any]] = []
        for _ in range(_FEED_ROUNDS):
            fed = self._feed()
            sent = _poll_datagrams(quic, now)
            datagrams += sent
            if not fed or not sent:
                break
        return datagrams

    def _feed(self) -> bool:
        """Hand QUIC the next slice of every stream whose queue in QUIC is short; True if any."""
        fed = False
        quic = self.quic
        for stream_id, queue in list(self._pending.items()):
            if quic.get_send_buffer_size(stream_id) >= _FEED:
                continue
            credit = self._credit.get(stream_id)
            budget = start = _FEED if credit is None else min(_FEED, credit)
            while queue and (budget > 0 or not queue[0][0]):
                data, end = queue[0]
                if len(data) > budget:
                    piece = data[:budget]
                    queue[0] = (data[budget:], end)
                    data, end = piece, False
                else:
                    queue.popleft()
                budget -= len(data)
                self._waiting[stream_id] -= len(data)
                try:
                    quic.send_stream_data(stream_id, data, end)
                except _CLOSED:
                    queue.clear()
                    break
                fed = True
            if credit is not None:
                self._credit[stream_id] = credit - (start - budget)
            if not queue:
                del self._pending[stream_id]
                self._waiting.pop(stream_id, None)
                if stream_id not in self._calls:
                    self._credit.pop(stream_id, None)
        return fed

    def _mark(self, now: float) -> None:
        """Put a marker PING in the flight about to be sent (it goes in its first packet), and
        expect its ACK (see the module docstring)."""
        if self._ping_probe():
            self._marked_at = now
            self._probes = 0
            self.probe_at = now + self._probe_wait()

    def _ping_probe(self) -> bool:
        """Queue a PING whose ACK the wire keeps; it is now the marker awaited."""
        uid = self._next_uid
        self._next_uid = _PROBE_TAG | ((uid + 1) & 0xFFFFFFFF)
        try:
            self.quic.send_ping(uid)
        except _CLOSED:
            return False
        self._marker = uid
        self._dirty = True
        return True

    def _probe_wait(self) -> float:
        """How long a marker may wait for its ACK: QUIC's probe timeout without the peer's ACK
        delay (a trpc peer acknowledges as soon as it has read a burst)."""
        if self._srtt is None:
            return _INITIAL_PROBE_WAIT
        return self._srtt + max(4 * self._rttvar, _GRANULARITY)

    def probe(self, now: float) -> None:
        """The latest marker's ACK is overdue: send a PING of its own.  The peer acknowledges it
        at once, and QUIC, seeing a later packet acknowledged and the small flight not, resends
        the flight then (RFC 9002's time threshold) instead of after its probe timeout, which
        includes the peer's maximum ACK delay (see the module docstring)."""
        if self._marker is None or now < self.probe_at:
            return
        if not self._ping_probe():
            self.probe_at = math.inf
            return
        self._marking_until = now + _MARK_FOR
        self._probes += 1
        self.probe_at = now + self._probe_wait() * (1 << self._probes) if self._probes < _PROBES else math.inf

    def _on_marker_acknowledged(self, uid: int, now: float | None) -> None:
        marker = self._marker
        if marker is None or (uid - marker) & 0xFFFFFFFF >= 1 << 31:
            return  # an earlier marker's: the latest still waits
        if now is not None and not self._probes:
            sample = now - self._marked_at
            if self._srtt is None:
                self._srtt, self._rttvar = sample, sample / 2
            else:
                self._rttvar += (abs(self._srtt - sample) - self._rttvar) / 4
                self._srtt += (sample - self._srtt) / 8
        self._marker = None
        self.probe_at = math.inf

    def data_to_send(self) -> bytes:
        raise LocalProtocolError("a QUIC connection's output is datagrams: use datagrams_to_send")

    def data_to_send_list(self) -> list[bytes]:
        raise LocalProtocolError("a QUIC connection's output is datagrams: use datagrams_to_send")

    def requeue(self, data: bytes) -> None:
        raise LocalProtocolError("a QUIC connection's output is datagrams: nothing is requeued")

    def receive_data(self, data: bytes, *, max_frames: int | None = None, now: float | None = None) -> list[Event]:
        """One datagram from the peer's current address; see :meth:`receive_datagram`."""
        return self.receive_datagram(data, self.peer_address, 0.0 if now is None else now)

    def receive_datagram(self, data: bytes, address: Any, now: float) -> list[Event]:
        """Hand QUIC one datagram from ``address`` and return the call layer's events."""
        self.quic.receive_datagram(data, address, now)
        return self.events(now)

    def process_backlog(self, max_frames: int | None = None) -> list[Event]:
        return []

    def fire_timer(self, now: float) -> None:
        """QUIC's timer is due (loss detection, acknowledgements, idle timeout...): hand it to
        QUIC; its events wait for :meth:`events`.  If it is the loss-detection timer (a packet
        was found lost, or its probe timeout passed), markers are sent from now on for
        ``_MARK_FOR`` seconds.  (qh3 2.1's core names its timer: its ``get_timer()`` gives
        ``(kind, deadline)``; with a qh3 whose core does not, markers are always sent.)"""
        core = getattr(self.quic, "_core", None)
        timer = core.get_timer() if core is not None else None
        if not isinstance(timer, tuple) or timer[0] == "loss_detection":
            self._marking_until = now + _MARK_FOR
        self.quic.handle_timer(now)
        self._dirty = True

    def handle_timer(self, now: float) -> list[Event]:
        """QUIC's timer fired: :meth:`fire_timer`, then its events."""
        self.fire_timer(now)
        return self.events(now)

    def events(self, now: float | None = None) -> list[Event]:
        """Translate what QUIC has to report into the call layer's events (``now``: when the
        datagrams they came in arrived, for the round trip of marker PINGs)."""
        out: list[Event] = []
        quic = self.quic
        while (event := quic.next_event()) is not None:
            if isinstance(event, qe.StreamDataReceived):
                self._on_data(event, out)
            elif isinstance(event, qe.StreamReset):
                self._on_reset(event.stream_id, event.error_code, out)
            elif isinstance(event, qe.StopSendingReceived):
                self._on_stop_sending(event.stream_id, event.error_code, out)
            elif isinstance(event, qe.PingAcknowledged):
                if event.uid >> 32 == _PROBE_TAG >> 32:
                    self._on_marker_acknowledged(event.uid, now)
                else:
                    out.append(PingAcknowledged(payload=event.uid.to_bytes(8, "big")))
            elif isinstance(event, qe.HandshakeCompleted):
                self._on_handshake(out)
            elif isinstance(event, qe.ConnectionTerminated):
                self._on_terminated(event, out)
            elif isinstance(event, qe.ConnectionIdIssued):
                self.issued.append(event.connection_id)
            elif isinstance(event, qe.ConnectionIdRetired):
                self.retired.append(event.connection_id)
        if self._blocked:
            for stream_id in list(self._blocked):
                if self._queued(stream_id) <= SEND_LOW_WATER:
                    self._blocked.discard(stream_id)
                    call = self._calls.get(stream_id)
                    if call is not None:
                        call.blocked = False
                    out.append(SendCreditAvailable(stream_id=call_id(stream_id)))
        return out

    # ------------------------------------------------------------ connection-level
    def _on_handshake(self, out: list[Event]) -> None:
        self.peer_preface = _VERSION
        self._control = self.quic.get_next_available_stream_id(is_unidirectional=True)
        if self.role == "server":
            info = encode_info(self._idempotent, self._methods, _MAX_CONTROL, self.accepted_codings)
            self._send(self._control, _frame(_INFO, info if info is not None else b"\xa0"))
        else:
            if self.accepted_codings:
                # The client's INFO says only what the preface would: the codings it accepts.
                self._send(self._control, _frame(_INFO, encode_info(frozenset(), frozenset(), _MAX_CONTROL,
                                                                    self.accepted_codings) or b""))
            else:
                self._send(self._control, b"")
            if certificate_requested(self.quic):
                self._preface_waits = True
                return
        self._preface(out)

    def _preface(self, out: list[Event]) -> None:
        out.append(PrefaceReceived(version=_VERSION, max_frame_size=self.max_message_size,
                                   initial_window=SEND_LOW_WATER))

    def _on_terminated(self, event: qe.ConnectionTerminated, out: list[Event]) -> None:
        if self.terminated is None:
            self.terminated = (describe_crypto_error(event.error_code, event.reason_phrase) or event.reason_phrase
                               or f"QUIC connection closed (error {event.error_code})")
            out.append(ConnectionClosed())

    def ping(self, payload: bytes) -> None:
        """A QUIC PING; its acknowledgement comes back as PingAcknowledged with ``payload``
        (8 bytes)."""
        try:
            self.quic.send_ping(int.from_bytes(payload[:8].ljust(8, b"\0"), "big"))
        except _CLOSED:
            return
        self._dirty = True

    def goaway(self, status: Status = Status.OK, message: str = "") -> None:
        """Say GOAWAY on the control stream (once): the server names the last call it will
        finish; calls after it are refused with REFUSED."""
        if self._goaway_sent or self.terminated is not None:
            return
        self._goaway_sent = True
        if self._control is not None:
            last = self._last_received + 1  # call_id of the last call received; 0 for none
            self._send(self._control, _frame(_GOAWAY, encode_goaway(last, status, message)))

    def close(self, message: str = "", error_code: int = NO_ERROR) -> None:
        """Close the QUIC connection (CONNECTION_CLOSE; NO_ERROR unless ``error_code``)."""
        if self.terminated is None:
            try:
                self.quic.close(error_code=error_code, reason_phrase=message)
            except _CLOSED:
                return
            self._dirty = True

    def _on_control(self, stream_id: int, data: bytes, out: list[Event]) -> None:
        if self._preface_waits and data:  # the server has accepted this client's certificate
            self._preface_waits = False
            self._preface(out)
        buffer = self._peer_control.setdefault(stream_id, bytearray())
        buffer += data
        while len(buffer) >= _HEADER_SIZE:
            length, kind, flags, call = _unpack_header(buffer)
            if length > _MAX_CONTROL:
                raise RemoteProtocolError(f"control frame of {length} bytes (limit {_MAX_CONTROL})")
            if flags:
                raise RemoteProtocolError(f"control frame of type {kind} with flags {flags:#x} (its flags are 0)")
            if len(buffer) < _HEADER_SIZE + length:
                return
            payload = bytes(buffer[_HEADER_SIZE:_HEADER_SIZE + length])
            del buffer[:_HEADER_SIZE + length]
            if kind == _WINDOW_UPDATE:
                self._on_window_update(call, payload)
            elif kind == _INFO and not self._info_received and not self._control_frames:
                self._info_received = True
                idempotent, methods, self.peer_codings = parse_info(payload)
                if self.role == "client":
                    out.append(InfoReceived(idempotent=idempotent, methods=methods))
            elif kind == _GOAWAY:
                last, status, message = parse_goaway(payload)
                self._goaway_received = True
                self._refuse_after(last, out)
                out.append(GoAwayReceived(last_stream_id=last, status=status, message=message))
            else:
                raise RemoteProtocolError(f"frame type {kind} is not allowed on a QUIC control stream"
                                          + (" (INFO only as its first frame)" if kind == _INFO else ""))
            self._control_frames += 1

    def _on_window_update(self, call: int, payload: bytes) -> None:
        """The peer grants ``call``'s stream more credit; its queued bytes go next time."""
        if len(payload) != 4 or call == 0:
            raise RemoteProtocolError("a QUIC WINDOW_UPDATE names a call and carries a 4-byte increment")
        increment = int.from_bytes(payload, "big")
        if not 0 < increment <= _MAX_WINDOW:
            raise RemoteProtocolError(f"WINDOW_UPDATE increment {increment} out of range")
        stream_id = quic_id(call)
        credit = self._credit.get(stream_id)
        if credit is not None:  # else the call has ended here
            self._credit[stream_id] = credit + increment
            if stream_id in self._pending:
                self._dirty = True

    def _grant(self, call: _Call) -> None:
        """Raise the peer's limit to ``stream_window`` past what is released, once the step
        is a quarter window or more (WINDOW_UPDATE on the control stream)."""
        if self._control is None or call.remote_ended:
            return
        window = self.stream_window
        increment = call.received - call.held + window - call.limit
        if increment >= window >> 2:
            call.limit += increment
            self._send(self._control, pack_header(4, _WINDOW_UPDATE, 0, call_id(call.stream_id))
                       + increment.to_bytes(4, "big"))

    def _refuse_after(self, last: int, out: list[Event]) -> None:
        """(client) The server's GOAWAY: calls after ``last`` were never processed."""
        if self.role != "client":
            return
        for stream_id, call in list(self._calls.items()):
            if call_id(stream_id) > last and not call.reported:
                self._end_call(call, out, Status.UNAVAILABLE, "the server is going away", processed=False)

    # ------------------------------------------------------------ calls: sending
    def _send(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> None:
        """Queue stream data: handed to QUIC at once while the stream's queue there is short,
        else kept here and fed in slices (see ``_FEED``).  Dropped if the connection has
        closed (its calls are ended by the connection's end, reported as ConnectionClosed)."""
        queue = self._pending.get(stream_id)
        credit = self._credit.get(stream_id)
        if queue is None and len(data) <= _FEED and (credit is None or len(data) <= credit) \
                and self.quic.get_send_buffer_size(stream_id) < _FEED:
            try:
                self.quic.send_stream_data(stream_id, data, end_stream)
            except _CLOSED:
                return
            if credit is not None:
                self._credit[stream_id] = credit - len(data)
        else:
            if queue is None:
                queue = self._pending[stream_id] = deque()
            queue.append((memoryview(data), end_stream))
            self._waiting[stream_id] = self._waiting.get(stream_id, 0) + len(data)
        self._dirty = True
        self._fresh = True

    def _send_parts(self, stream_id: int, parts: list[bytes], end_stream: bool) -> None:
        """Queue a message's parts: joined when small (one write), else each as it is, so a
        large payload is not copied only to be cut into slices again."""
        if sum(map(len, parts)) < _FEED:
            self._send(stream_id, b"".join(parts), end_stream)
            return
        last = len(parts) - 1
        for index, part in enumerate(parts):
            self._send(stream_id, part, end_stream and index == last)

    def _drop_pending(self, stream_id: int) -> None:
        self._pending.pop(stream_id, None)
        self._waiting.pop(stream_id, None)
        self._credit.pop(stream_id, None)

    def _reset(self, stream_id: int, code: int) -> None:
        """RESET_STREAM, unless QUIC has already finished the stream's sending."""
        self._drop_pending(stream_id)
        try:
            self.quic.reset_stream(stream_id, code)
        except _CLOSED:  # sent and acknowledged in full, or the connection is gone
            return
        self._dirty = True

    def _stop(self, stream_id: int, code: int) -> None:
        """STOP_SENDING, unless QUIC has already received the whole stream."""
        try:
            self.quic.stop_stream(stream_id, code)
        except _CLOSED:
            return
        self._dirty = True

    def _call(self, stream_id: int) -> _Call:
        call = self._calls.get(quic_id(stream_id))
        if call is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        return call

    def _check_size(self, payload: bytes | list[bytes]) -> int:
        size = len(payload) if type(payload) is bytes else message_size(payload)
        if not 0 < size <= self.max_message_size:
            raise MessageTooLargeError(size, self.max_message_size)
        return size

    def _message(self, payload: bytes | list[bytes]) -> list[bytes]:
        size = self._check_size(payload)
        head = pack_header(size, _DATA, 0, 0)
        if isinstance(payload, bytes):
            return [head, payload]
        return [head, *payload]

    def _coded(self, payload: bytes | list[bytes], coding: int) -> list[bytes]:
        """One message's DATA frame, compressed with ``coding`` when the peer accepts it, the
        message is at least ``compression_threshold`` bytes and compressing makes it smaller;
        else as ``_message`` frames it.  The limit applies to the message uncompressed."""
        size = self._check_size(payload)
        if coding and self.peer_codings & coding_bit(Coding(coding)) and size >= self.compression_threshold:
            packed = compress(Coding(coding), payload)
            if len(packed) < size:
                return [pack_header(len(packed), _DATA, coding << CODING_SHIFT, 0), packed]
        return self._message(payload)

    def open_call(self, method: str, *, metadata: dict[str, Any] | None = None, timeout: float | None = None,
                  end_stream: bool = False, response_compression: int = 0) -> int:
        if not self.can_open_call:
            raise LocalProtocolError("the connection takes no new calls")
        stream_id = self.quic.get_next_available_stream_id()
        headers = self._headers.encode(method, timeout, metadata, _MAX_CONTROL, response_compression)
        self._calls[stream_id] = _Call(stream_id, bytearray(), local_ended=end_stream)
        self._credit[stream_id] = INITIAL_WINDOW
        self._send(stream_id, _frame(_HEADERS, headers), end_stream)
        return call_id(stream_id)

    def open_unary_call(self, method: str, message: Any, *, metadata: dict[str, Any] | None = None,
                        timeout: float | None = None, compression: int = 0,
                        response_compression: int = 0) -> tuple[int, bool]:
        """HEADERS and the one message in one write, with FIN (the message compressed with
        ``compression`` when ``_coded`` allows; ``response_compression`` asked for the reply)."""
        parts = self._coded(message, compression) if compression else self._message(message)
        if not self.can_open_call:
            raise LocalProtocolError("the connection takes no new calls")
        stream_id = self.quic.get_next_available_stream_id()
        headers = self._headers.encode(method, timeout, metadata, _MAX_CONTROL, response_compression)
        self._calls[stream_id] = _Call(stream_id, bytearray(), local_ended=True)
        self._credit[stream_id] = INITIAL_WINDOW
        parts.insert(0, _frame(_HEADERS, headers))
        self._send_parts(stream_id, parts, True)
        return call_id(stream_id), self._room(stream_id)

    def _room(self, stream_id: int) -> bool:
        if self._queued(stream_id) <= SEND_LOW_WATER:
            return True
        call = self._calls.get(stream_id)
        if call is not None:
            call.blocked = True
            self._blocked.add(stream_id)
        return False

    def send_message(self, stream_id: int, payload: Any, *, end_stream: bool = False) -> bool:
        call = self._call(stream_id)
        if call.local_ended:
            raise LocalProtocolError(f"stream {stream_id} has ended its sending")
        return self._send_message(call, self._message(payload), end_stream)

    def send_compressed(self, stream_id: int, payload: Any, coding: int, *, end_stream: bool = False) -> bool:
        """As ``send_message``, the message compressed with ``coding`` when ``_coded`` allows."""
        call = self._call(stream_id)
        if call.local_ended:
            raise LocalProtocolError(f"stream {stream_id} has ended its sending")
        return self._send_message(call, self._coded(payload, coding), end_stream)

    def _send_message(self, call: _Call, parts: list[bytes], end_stream: bool) -> bool:
        """Queue one message's DATA frame (``parts``), after the response headers if the server
        has sent none yet."""
        stream_id = call.stream_id
        if self.role == "server" and not call.headers_sent:
            call.headers_sent = True
            parts.insert(0, _frame(_HEADERS, b"\xa0"))
        self._send_parts(stream_id, parts, end_stream)
        if end_stream:
            self._local_end(call)
        return self._room(stream_id)

    def open_batch(self, stream_id: int) -> list[Any]:
        """The stream's batch: messages appended here are sent, in order, by ``flush_batch``
        and before the stream's trailers."""
        call = self._call(stream_id)
        return self._batches.setdefault(call.stream_id, [])

    def flush_batch(self, stream_id: int) -> bool:
        call = self._calls.get(quic_id(stream_id))
        if call is None:
            return True
        batch = self._batches.get(call.stream_id)
        if batch:
            messages = list(batch)
            batch.clear()
            for payload in messages:
                self.send_message(stream_id, payload)
        return not call.blocked

    def end_stream(self, stream_id: int) -> None:
        """(client) Half-close: FIN."""
        call = self._call(stream_id)
        if not call.local_ended:
            self._send(call.stream_id, b"", True)
            self._local_end(call)

    def send_headers(self, stream_id: int, metadata: dict[str, Any] | None = None) -> None:
        call = self._call(stream_id)
        if not call.headers_sent:
            call.headers_sent = True
            self._send(call.stream_id, _frame(_HEADERS, encode_response_headers(metadata, _MAX_CONTROL)))

    def send_trailers(self, stream_id: int, status: Status, message: str = "", details: Any = None,
                      metadata: dict[str, Any] | None = None, *, processed: bool = True) -> None:
        """(server) The call's status, then FIN; a client still sending is told to stop."""
        call = self._calls.get(quic_id(stream_id))
        if call is None or call.local_ended:
            return
        self._flush_pending_batch(call)
        if status is Status.OK and not message and details is None and not metadata and processed:
            payload = _OK_TRAILERS
        else:
            payload = encode_trailers(status, message, details, metadata, _MAX_CONTROL, processed)
        self._send(call.stream_id, _frame(_TRAILERS, payload), True)
        if not call.remote_ended:
            self._stop(call.stream_id, NO_ERROR)
            call.remote_ended = True
        self._local_end(call)

    def _flush_pending_batch(self, call: _Call) -> None:
        batch = self._batches.get(call.stream_id)
        if batch:
            messages = list(batch)
            batch.clear()
            for payload in messages:
                self.send_message(call_id(call.stream_id), payload)

    def refuse_call(self, stream_id: int, status: Status, message: str = "") -> None:
        """(server) End a call never run, saying it was not processed."""
        self.send_trailers(stream_id, status, message, processed=False)

    def cancel(self, stream_id: int, reason: Status = Status.CANCELLED, message: str = "") -> None:
        """RESET_STREAM and STOP_SENDING with ``reason`` as the error code; a no-op for a call
        that has ended."""
        call = self._calls.pop(quic_id(stream_id), None)
        if call is None:
            return
        self._blocked.discard(call.stream_id)
        self._batches.pop(call.stream_id, None)
        if not call.local_ended:
            self._reset(call.stream_id, int(reason))
        self._forget_credit(call.stream_id)
        if not call.remote_ended:
            self._stop(call.stream_id, int(reason))
        self._dirty = True

    def consumed(self, stream_id: int, size: int) -> None:
        """The call layer took ``size`` bytes of this call's messages: grant the peer credit
        for them when a quarter window is due (see the module docstring)."""
        call = self._calls.get(quic_id(stream_id))
        if call is None:
            return
        call.held = max(call.held - size, 0)
        self._grant(call)

    def _local_end(self, call: _Call) -> None:
        call.local_ended = True
        self._maybe_forget(call)

    def _maybe_forget(self, call: _Call) -> None:
        if call.local_ended and call.remote_ended and (call.reported or self.role == "server"):
            self._calls.pop(call.stream_id, None)
            self._batches.pop(call.stream_id, None)
            self._blocked.discard(call.stream_id)
            self._forget_credit(call.stream_id)

    def _forget_credit(self, stream_id: int) -> None:
        """A call that has left ``_calls`` needs its credit only while its last bytes wait."""
        if stream_id not in self._pending:
            self._credit.pop(stream_id, None)

    # ------------------------------------------------------------ calls: receiving
    def _on_data(self, event: qe.StreamDataReceived, out: list[Event]) -> None:
        stream_id = event.stream_id
        if stream_id & 2:  # unidirectional: the peer's control stream, its only one
            if stream_id & 1 == (1 if self.role == "client" else 0):
                if stream_id > 3:
                    raise RemoteProtocolError("a second unidirectional stream: a peer opens only its control stream")
                self._on_control(stream_id, event.data, out)
            return
        call = self._calls.get(stream_id)
        if call is None:
            if self.role == "client" or stream_id & 1:
                return  # a call that ended here (cancelled) still receiving its last data
            if stream_id <= self._last_received:
                if stream_id not in self._skipped:
                    return  # a call that ended here, its last bytes still arriving
                self._skipped.discard(stream_id)  # a call whose first bytes came late
            else:
                # Streams below this one that sent nothing yet (their packets were lost or
                # reordered) are still to come: QUIC opens streams in order.
                self._skipped.update(range(0 if self._last_received < 0 else self._last_received + 4, stream_id, 4))
                self._last_received = stream_id
            if self._goaway_sent or self.terminated is not None or len(self._calls) >= self.max_concurrent_streams:
                # Going away, or over the server's limit on calls at once (QUIC's own
                # MAX_STREAMS, 100 with qh3, may allow more): refused unprocessed.
                self._reset(stream_id, REFUSED)
                self._stop(stream_id, REFUSED)
                self._dirty = True
                return
            call = self._calls[stream_id] = _Call(stream_id, bytearray())
            self._credit[stream_id] = INITIAL_WINDOW
        data = event.data
        if data:
            call.received += len(data)
            messages: list[Received] = []
            if call.missing:
                data = self._body(call, data, messages)
            if data:
                call.buffer += data
            self._frames(call, out, messages)
        if event.end_stream and not call.remote_ended and call.stream_id in self._calls:
            if call.missing or call.buffer:
                raise RemoteProtocolError("a call's QUIC stream ended in the middle of a frame")
            call.remote_ended = True
            if self.role == "server":
                out.append(StreamEnded(stream_id=call_id(stream_id)))
            elif not call.reported:
                self._end_call(call, out, Status.INTERNAL, "the server ended the call without its status")
            self._maybe_forget(call)
        elif event.data and call.stream_id in self._calls:
            self._grant(call)

    def _frames(self, call: _Call, out: list[Event], messages: list[Received]) -> None:
        """Parse the whole frames at the start of the call's buffer; a DATA frame whose body
        has not all come goes on arriving in ``_body``.  ``messages``: those completed already
        (reported first, in the same MessagesReceived)."""
        buffer = call.buffer
        while len(buffer) >= _HEADER_SIZE and call.stream_id in self._calls:
            length, kind, flags, _ = _unpack_header(buffer)
            if kind == _DATA:
                if flags:
                    self._check_coding(flags, length)
                if length > self.max_message_size:
                    self._too_large(call, length, messages, out)
                    return
            elif length > _MAX_CONTROL:
                raise RemoteProtocolError(f"frame of type {kind} and {length} bytes (limit {_MAX_CONTROL})")
            elif flags:
                raise RemoteProtocolError(f"frame of type {kind} with flags {flags:#x} on QUIC (its flags are 0)")
            end = _HEADER_SIZE + length
            if len(buffer) < end:
                if kind == _DATA:
                    with memoryview(buffer) as view:
                        first = bytes(view[_HEADER_SIZE:])
                    buffer.clear()
                    call.pieces = [first]
                    call.partial = len(first)
                    call.missing = length - len(first)
                    call.coding = flags >> CODING_SHIFT
                break
            with memoryview(buffer) as view:
                payload = bytes(view[_HEADER_SIZE:end])
            del buffer[:end]
            if kind == _DATA:
                call.held += length
                # A compressed message is handed on as it arrived: the call layer decompresses
                # it when it reads it, within the max message size.
                messages.append(Compressed(flags >> CODING_SHIFT, [payload], self.max_message_size) if flags
                                else payload)
                continue
            if messages:
                out.append(MessagesReceived(stream_id=call_id(call.stream_id), payloads=messages))
                messages = []
            self._control_frame(call, kind, payload, out)
        if messages:
            out.append(MessagesReceived(stream_id=call_id(call.stream_id), payloads=messages))

    def _check_coding(self, flags: int, length: int) -> None:
        """A DATA frame's flags: only a coding this side accepts, on a message of a byte or more
        (a message is one frame here: no MORE, no END_STREAM)."""
        coding = (flags & CODING_FLAGS) >> CODING_SHIFT
        if flags & ~CODING_FLAGS or coding == 3:
            raise RemoteProtocolError(f"DATA on QUIC carries one whole message: flags {flags:#x} not allowed")
        if not self.accepted_codings & coding_bit(Coding(coding)):
            raise RemoteProtocolError(f"DATA frame compressed with {Coding(coding).name.lower()}, which this side does not accept")
        if length == 0:
            raise RemoteProtocolError("a compressed message cannot be empty")

    def _body(self, call: _Call, data: bytes | memoryview, messages: list[Received]) -> bytes:
        """Add ``data`` to the DATA frame body still arriving; once it is whole, its message
        goes to ``messages``.  Returns the bytes of ``data`` past the body's end.

        The pieces are kept as they came and joined once, so a large message is copied once on
        arrival, not grown in a buffer and copied out again.  Pieces smaller than ``_PIECE``
        are gathered into one bytearray, so a peer sending its data in tiny STREAM frames
        cannot make the list cost more than its bytes."""
        pieces = call.pieces
        assert pieces is not None
        missing = call.missing
        rest = b""
        if len(data) > missing:
            view = memoryview(data)
            rest = bytes(view[missing:])
            data = view[:missing]
        size = len(data)
        if size >= _PIECE:
            pieces.append(data)
        elif type(pieces[-1]) is bytearray:
            pieces[-1] += data
        else:
            pieces.append(bytearray(data))
        call.missing = missing - size
        call.partial += size
        if not call.missing:
            size = call.partial
            call.pieces = None
            call.partial = 0
            call.held += size
            if call.coding:
                messages.append(Compressed(call.coding, [b"".join(pieces)], self.max_message_size))
                call.coding = 0
            else:
                messages.append(_whole(pieces, size))
        return rest

    def _control_frame(self, call: _Call, kind: int, payload: bytes, out: list[Event]) -> None:
        stream_id = call_id(call.stream_id)
        if kind == _HEADERS:
            if call.headers_received:
                raise RemoteProtocolError("a second HEADERS on a call's QUIC stream")
            call.headers_received = True
        if kind == _HEADERS and self.role == "server":
            method, timeout_us, metadata, coding = parse_request_headers(payload)
            out.append(CallOpened(stream_id=stream_id, method=method, metadata=metadata,
                                  timeout=None if timeout_us is None else timeout_us / 1e6, compression=coding))
        elif kind == _HEADERS:
            out.append(HeadersReceived(stream_id=stream_id, metadata=parse_response_headers(payload)))
        elif kind == _TRAILERS and self.role == "client":
            if payload == _OK_TRAILERS:
                self._end_call(call, out, Status.OK, "")
            else:
                status, message, details, metadata, processed = parse_trailers(payload)
                self._end_call(call, out, status, message, details, metadata, processed)
        else:
            raise RemoteProtocolError(f"frame type {kind} is not allowed on a call's QUIC stream ({self.role})")

    def _too_large(self, call: _Call, size: int, messages: list[Received], out: list[Event]) -> None:
        if messages:
            out.append(MessagesReceived(stream_id=call_id(call.stream_id), payloads=messages))
        text = f"message of {size} bytes exceeds the limit of {self.max_message_size}"
        if self.role == "server":
            self.send_trailers(call_id(call.stream_id), Status.RESOURCE_EXHAUSTED, text)
            self._calls.pop(call.stream_id, None)
            self._forget_credit(call.stream_id)
            out.append(CallCancelled(stream_id=call_id(call.stream_id), reason=Status.RESOURCE_EXHAUSTED, message=text))
        else:
            self._end_call(call, out, Status.RESOURCE_EXHAUSTED, f"response {text}")
            self.cancel(call_id(call.stream_id), Status.RESOURCE_EXHAUSTED)

    def _end_call(self, call: _Call, out: list[Event], status: Status, message: str, details: Any = None,
                  metadata: dict[str, Any] | None = None, processed: bool = True) -> None:
        """(client) The call's end, reported once."""
        if call.reported:
            return
        call.reported = True
        out.append(CallEnded(stream_id=call_id(call.stream_id), status=status, message=message, details=details,
                             metadata=metadata or {}, processed=processed))
        if not call.local_ended:
            # The server answered before the request stream ended: nothing more is wanted.
            self._reset(call.stream_id, NO_ERROR)
            call.local_ended = True
            self._dirty = True
        call.remote_ended = True
        self._maybe_forget(call)

    def _on_reset(self, stream_id: int, code: int, out: list[Event]) -> None:
        call = self._calls.get(stream_id)
        if call is None:
            return
        if self.role == "server":
            self._calls.pop(stream_id, None)
            self._blocked.discard(stream_id)
            self._batches.pop(stream_id, None)
            if not call.local_ended:
                self._reset(stream_id, NO_ERROR)
                self._dirty = True
            self._forget_credit(stream_id)
            out.append(CallCancelled(stream_id=call_id(stream_id), reason=Status.from_wire(code) if code else Status.CANCELLED))
        elif code == REFUSED:
            self._end_call(call, out, Status.UNAVAILABLE, "the server refused the call: it is going away",
                           processed=False)
        else:
            self._end_call(call, out, Status.UNAVAILABLE if code == NO_ERROR else Status.from_wire(code),
                           "the server reset the call's stream")

    def _on_stop_sending(self, stream_id: int, code: int, out: list[Event]) -> None:
        call = self._calls.get(stream_id)
        if call is None or call.local_ended:
            return
        if self.role == "server":
            self._on_reset(stream_id, code, out)
        elif code != NO_ERROR:
            self._on_reset(stream_id, code, out)

