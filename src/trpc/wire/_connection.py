"""The sans-IO connection: bytes in, events out; intentions in, bytes out.

Theory of operation
-------------------
A :class:`Connection` is one endpoint (``"client"`` or ``"server"``) of one trpc connection.  It
does no I/O and knows nothing of Trio or sockets.  It composes four parts, each the only owner
of its facts:

- a framer (C or pure Python, same interface: ``trpc._framer``) finds frames in received bytes;
- :class:`~trpc.wire._streams.Streams` holds the live streams and moves them through the state
  table (the only writer of a stream's state);
- :class:`~trpc.wire._flow.Ledger` keeps every credit figure, both directions (the only writer
  of credit);
- ``trpc.wire._control`` encodes and decodes the control payloads.

What the connection itself owns: the outgoing buffer, the backlog of received frames not yet
processed, and the connection's lifecycle, moved by its own small table: ``ConnectionState``
(open, going away, closed, failed) and whether the INFO frame has crossed (protocol 1.1: a
server sends it at most once, right after it has processed a 1.1 client's preface, and only if
it declares something; the client reports it as ``InfoReceived``).

- ``receive_data(data)`` takes bytes read from the peer (``b""`` for end of file), splits them
  into frames, checks every frame against the rules and returns a list of
  :mod:`events <trpc._events>`.  With ``max_frames`` it processes only that many of them now and
  keeps the rest, unprocessed, for ``process_backlog()``: an application can act on the first
  calls of a large chunk before the later ones start.
- The ``open_call`` / ``send_message`` / ``send_trailers`` / ``cancel`` / ... methods turn the
  caller's intentions into frames, appended to an outgoing buffer that ``data_to_send()``
  drains.  Many intentions between two drains leave in one write.  A sender of many small
  messages queues them on a *batch* (``open_batch``: a list it appends to), framed together
  when output is drained (``frame_run``, in C when it is built).

Sending within credit: a message that fits the credit (and one frame) is framed at once;
otherwise what does not fit waits in the stream's ``pending`` queue and goes out when
WINDOW_UPDATE frames bring credit (the caller waits for that queue to drain, as
``SendCreditAvailable`` tells, before it sends the next message, so nothing grows without bound).
A server's TRAILERS wait behind that data too (the stream is CLOSING meanwhile).

Frames for a stream that has already closed are dropped (the two sides' views of a stream's end
race); frames for a stream that never existed are a protocol error.

Ping policing is a protocol rule (docs/PROTOCOL.md section 9: a peer must know how often it may
ping), so it lives here, beside the code that answers pings, not in the Trio layer: a side
built with ``min_ping_interval`` counts a *strike* for each PING that arrives sooner than that
after the previous one, forgives them when a PING comes in time, and after ``max_ping_strikes``
strikes in a row treats the next early PING as a protocol error (GOAWAY RESOURCE_EXHAUSTED
"too many pings", then close).  The core reads no clock: the caller passes the time the bytes
arrived as ``receive_data(..., now=...)`` (the Trio layer's per-chunk ``received_at``); frames
processed later from the backlog count as received at that time.  Fast paths (a run of
whole-message DATA frames found by the framer, a request's one message with END_STREAM, a reply
that fits its credit) make the same transitions through the same table and ledger, with fewer
checks repeated per frame.
"""

from __future__ import annotations

import enum
from collections import deque
from functools import partial
from typing import Any, Callable, Iterable, Mapping, cast

from .. import _framer
from .._cext import speedups
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
    Payload,
    Received,
    PingAcknowledged,
    PingReceived,
    PrefaceReceived,
    SendCreditAvailable,
    StreamEnded,
)
from .._framer_py import Run
from .._service import SHAPE_CODES, Cardinality
from .._status import Status
from . import _control
from ._compression import (
    CODING_FLAGS,
    CODING_SHIFT,
    DEFAULT_COMPRESSION_THRESHOLD,
    KNOWN_BITS,
    Coding,
    Compressed,
    codings_of,
    coding_bit,
    compress,
)
from ._flow import DEFAULT_CONNECTION_WINDOW, DEFAULT_STREAM_WINDOW, Ledger
from ._frames import (
    DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_INCOMPLETE_BYTES,
    DEFAULT_MAX_PING_STRIKES,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    COMPRESSION_MINOR_VERSION,
    INFO_MINOR_VERSION,
    MAX_FRAME_SIZE_LIMIT,
    MAX_HEADERS_SIZE,
    MAX_STREAM_ID,
    MAX_WINDOW,
    MIN_FRAME_SIZE_LIMIT,
    PREFACE,
    PREFACE_MAGIC,
    PROTOCOL_VERSION,
    Flags,
    FrameType,
    PingFlags,
    pack_header,
)
from ._streams import Role, Stream, StreamInput, Streams, StreamState

__all__ = ["Connection", "ConnectionState", "message_size"]

_DATA = FrameType.DATA.value
_END_STREAM = Flags.END_STREAM.value
_MORE = Flags.MORE.value
_ACK = PingFlags.ACK.value
# The inputs, as module globals (cheaper than an enum attribute on the hot paths).
_DRAINED = StreamInput.DRAINED
_QUEUE_TRAILERS = StreamInput.QUEUE_TRAILERS
_RECV_CANCEL = StreamInput.RECV_CANCEL
_RECV_DATA = StreamInput.RECV_DATA
_RECV_END_STREAM = StreamInput.RECV_END_STREAM
_RECV_HEADERS = StreamInput.RECV_HEADERS
_RECV_TRAILERS = StreamInput.RECV_TRAILERS
_REFUSED = StreamInput.REFUSED
_SEND_CANCEL = StreamInput.SEND_CANCEL
_SEND_DATA = StreamInput.SEND_DATA
_SEND_END_STREAM = StreamInput.SEND_END_STREAM
_SEND_HEADERS = StreamInput.SEND_HEADERS
_SEND_TRAILERS = StreamInput.SEND_TRAILERS
_CLOSED = StreamState.CLOSED
_OK = Status.OK
_OK_TRAILERS = _control.OK_TRAILERS
_parse_simple_headers = _control.parse_simple_headers
_CLOSING = StreamState.CLOSING
_CODING = CODING_FLAGS


class _CompressedParts(list):  # type: ignore[type-arg]
    """The received frames of a compressed message still arriving (a stream's
    ``recv_parts``): a list, so that continuation frames join it as they join any message,
    and its coding, which only its first frame said."""

    __slots__ = ("coding",)

    def __init__(self, coding: int) -> None:
        super().__init__()
        self.coding = coding


def _frame_run_py(payloads: list[bytes], stream_id: int, credit: int, max_size: int) -> tuple[bytes, int, int]:
    """The first payloads whose total fits in ``credit``, as DATA frames of ``stream_id`` in one
    buffer: ``(frames, how many payloads, their total size)``.  Every payload must be bytes of
    1 to ``max_size`` bytes.  The pure-Python twin of ``frame_run`` in ``csrc/speedups.c``."""
    parts: list[bytes] = []
    count = total = 0
    fits = True
    for index, payload in enumerate(payloads):
        if type(payload) is not bytes:
            raise TypeError(f"frame_run: payload {index} is {type(payload).__name__}, not bytes")
        size = len(payload)
        if not 0 < size <= max_size:
            raise ValueError(f"frame_run: payload {index} is {size} bytes, not 1 to {max_size}")
        if fits and total + size <= credit:
            total += size
            count += 1
            parts += (pack_header(size, _DATA, 0, stream_id), payload)
        else:
            fits = False
    return b"".join(parts), count, total


_frame_run = _frame_run_py if speedups is None else speedups.frame_run

#: A received message that arrives as a head of at most _HEAD_PART bytes and a body of at least
#: _BODY_PART bytes is handed on as [head, body] instead of being joined: a large byte string and
#: its CBOR head (9 bytes at most; 7 for call arguments), sent as two frames by send_message.
_HEAD_PART = 16
_BODY_PART = 64 * 1024


def message_size(payload: Received) -> int:
    """The size of an encoded message given as bytes or as a list of parts."""
    if type(payload) is list:
        return sum(map(len, payload))
    return len(payload)


class ConnectionState(enum.Enum):
    """The connection's lifecycle.  New calls are opened (and accepted) only while OPEN."""

    OPEN = "open"
    #: We sent GOAWAY: calls already opened complete; the server refuses new ones.
    GOAWAY_SENT = "goaway sent"
    #: The peer sent GOAWAY: no new calls.
    GOAWAY_RECEIVED = "goaway received"
    #: Both sides sent GOAWAY.
    GOAWAY_BOTH = "goaway both ways"
    #: The peer closed the byte stream at a frame boundary.
    CLOSED = "closed"
    #: A protocol error: an error GOAWAY is queued; nothing more is processed.
    FAILED = "failed"

    __hash__ = object.__hash__


_L = ConnectionState
_OPEN = ConnectionState.OPEN
_FAILED = ConnectionState.FAILED
#: States in which we have sent GOAWAY: a server refuses calls that cross it.
_GOAWAY_SENT = frozenset((ConnectionState.GOAWAY_SENT, ConnectionState.GOAWAY_BOTH))
#: How the connection goes towards its end: (state, what happened) -> new state.  "send_goaway"
#: in a state where we already sent one is not in the table: goaway() is then a no-op.
#: Nothing leaves FAILED.
_ENDING: dict[tuple[ConnectionState, str], ConnectionState] = {
    (_L.OPEN, "send_goaway"): _L.GOAWAY_SENT,
    (_L.GOAWAY_RECEIVED, "send_goaway"): _L.GOAWAY_BOTH,
    (_L.CLOSED, "send_goaway"): _L.CLOSED,
    (_L.OPEN, "recv_goaway"): _L.GOAWAY_RECEIVED,
    (_L.GOAWAY_SENT, "recv_goaway"): _L.GOAWAY_BOTH,
    (_L.GOAWAY_RECEIVED, "recv_goaway"): _L.GOAWAY_RECEIVED,
    (_L.GOAWAY_BOTH, "recv_goaway"): _L.GOAWAY_BOTH,
    **{(state, "eof"): _L.CLOSED for state in _L if state is not _L.FAILED},
    **{(state, "error"): _L.FAILED for state in _L},
}
#: The lifecycle: (state, whether INFO has crossed, what happened) -> (new state, whether INFO
#: has crossed).  The rows of _ENDING leave the INFO fact as it is.  INFO crosses at most once:
#: "send_info" (server) only while OPEN, since a server that has said GOAWAY will run no new
#: call the client could retry; "recv_info" (client) in any state in which frames are still
#: processed, and a second one, missing from the table, is a protocol error.
_LIFECYCLE: dict[tuple[ConnectionState, bool, str], tuple[ConnectionState, bool]] = {
    **{(state, info, what): (new, info) for (state, what), new in _ENDING.items() for info in (False, True)},
    (_L.OPEN, False, "send_info"): (_L.OPEN, True),
    **{(state, False, "recv_info"): (state, True) for state in _L if state not in (_L.CLOSED, _L.FAILED)},
}


def _drop_queued(ledger: Ledger, blocked: dict[int, None], batching: dict[int, Stream], stream: Stream) -> None:
    """A stream reached CLOSED (``Streams.step`` calls this, bound to one connection's ledger
    and indexes): it drops what it still had queued (its output, its batch, its place among
    the blocked) and the message it was still receiving."""
    stream.pending = None
    if stream.recv_partial:
        stream.recv_parts = None
        ledger.drop_partial(stream)
    if blocked:
        blocked.pop(stream.id, None)
    if stream.batch is not None:
        stream.batch.clear()
        stream.batch = None
        batching.pop(stream.id, None)


class Connection:
    """One endpoint of a trpc connection, with no I/O.

    Args:
        role: ``"client"`` or ``"server"`` (or a :class:`Role`).
        framer: the framer class to use; default: the one ``TRPC_FRAMER`` selects.
        max_frame_size: largest frame payload we accept (announced in our preface).
        max_message_size: largest message we accept (announced in our preface).
        stream_window: credit we grant the peer for each stream.
        connection_window: credit we grant the peer for the whole connection.
        max_concurrent_streams: (server) calls allowed at once; more are refused with
            RESOURCE_EXHAUSTED.
        max_incomplete_bytes: bytes of messages still arriving (split over DATA frames) all
            streams together may hold; the call whose bytes go beyond ends with
            RESOURCE_EXHAUSTED.  Default: ``DEFAULT_MAX_INCOMPLETE_BYTES``, and never below
            ``max_message_size``.
        min_ping_interval: seconds the peer must leave between two PINGs (ping policing, see
            the module's docstring); None (the default): every PING is answered.  Needs
            ``now`` on ``receive_data``.
        max_ping_strikes: early PINGs forgiven in a row before the next one ends the
            connection.
        idempotent_methods: (server) the wire names of the methods the server declares
            idempotent, announced to a client of protocol 1.1 or later in an INFO frame (as
            many as fit it) right after its preface.
        methods: (server) each method's path and call shape, announced in the same INFO
            frame (as many as fit after the idempotent names).  Neither (the default): no INFO.

    Call :meth:`initiate` first; it queues the preface.
    """

    def __init__(
        self,
        role: Role | str,
        *,
        framer: type[_framer.Framer] | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        connection_window: int = DEFAULT_CONNECTION_WINDOW,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
        max_incomplete_bytes: int | None = None,
        min_ping_interval: float | None = None,
        max_ping_strikes: int = DEFAULT_MAX_PING_STRIKES,
        idempotent_methods: Iterable[str] = (),
        methods: Mapping[str, Cardinality] | None = None,
        accept_compression: Iterable[str] | None = None,
        compression_threshold: int = DEFAULT_COMPRESSION_THRESHOLD,
    ) -> None:
        self.role = Role(role)
        self._client = self.role is Role.CLIENT
        if not MIN_FRAME_SIZE_LIMIT <= max_frame_size <= MAX_FRAME_SIZE_LIMIT:
            raise ValueError(f"max_frame_size must be in [{MIN_FRAME_SIZE_LIMIT}, {MAX_FRAME_SIZE_LIMIT}]")
        for name, value in (
            ("max_message_size", max_message_size),
            ("stream_window", stream_window),
            ("connection_window", connection_window),
        ):
            if not 1024 <= value <= MAX_WINDOW:
                raise ValueError(f"{name} must be in [1024, {MAX_WINDOW}]")
        if max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        if max_incomplete_bytes is None:
            max_incomplete_bytes = max(DEFAULT_MAX_INCOMPLETE_BYTES, max_message_size)
        elif max_incomplete_bytes < max_message_size:
            raise ValueError("max_incomplete_bytes must be at least max_message_size (one message must fit)")
        self.max_incomplete_bytes = max_incomplete_bytes
        #: The codings we accept (preface bits, ``trpc.wire._compression.coding_bit``), and
        #: the smallest encoded message ``send_compressed`` compresses.
        self.accepted_codings = codings_of(accept_compression)
        if compression_threshold < 0:
            raise ValueError("compression_threshold must be at least 0")
        self.compression_threshold = compression_threshold
        if min_ping_interval is not None and not min_ping_interval >= 0:
            raise ValueError("min_ping_interval must be at least 0 (or None: no ping policing)")
        if max_ping_strikes < 0:
            raise ValueError("max_ping_strikes must be at least 0")
        idempotent_methods = frozenset(idempotent_methods)
        if idempotent_methods and self._client:
            raise ValueError("idempotent_methods is the server's to announce")
        if not all(isinstance(name, str) for name in idempotent_methods):
            raise ValueError("idempotent_methods must be method names (text)")
        if methods and self._client:
            raise ValueError("methods is the server's to announce")
        shapes = frozenset((path, SHAPE_CODES[shape]) for path, shape in (methods or {}).items())
        if not all(isinstance(path, str) for path, _ in shapes):
            raise ValueError("methods must map paths (text) to shapes")
        #: (server) What INFO announces (see the module's docstring): idempotent names, and
        #: (path, shape number) pairs.
        self.idempotent_methods = idempotent_methods
        self._info_shapes = shapes
        self.max_frame_size = max_frame_size
        self.max_message_size = max_message_size
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.max_concurrent_streams = max_concurrent_streams
        self._framer = (framer or _framer.get_framer())(max_frame_size)
        self._ledger = Ledger(stream_window, connection_window)
        #: Streams with a batch (open_batch), framed whenever output is collected.
        self._batching: dict[int, Stream] = {}
        #: Streams whose waiting output is short of connection credit, in arrival order.
        self._blocked: dict[int, None] = {}
        # What a stream that closes drops is told to the table without a reference back to this
        # object: no reference cycle keeps a closed connection alive (see _drop_queued).
        self._streams = Streams(self.role, partial(_drop_queued, self._ledger, self._blocked, self._batching))
        self._step = self._streams.step
        self._live = self._streams.live
        self._headers = _control.RequestHeadersEncoder()
        self.state = ConnectionState.OPEN
        #: Whether INFO has crossed: sent (server) or received (client).  With ``state``, the
        #: lifecycle (_LIFECYCLE); both written by _move alone.
        self._informed = False
        #: (client) The server's INFO, once received (None: none yet, maybe never).
        self.info_received: InfoReceived | None = None

        self._out: list[bytes | memoryview] = []
        self._preface_buf = b""
        self.peer_preface: PrefaceReceived | None = None
        # What the peer accepts; until its preface arrives, assume the protocol's minimums.
        self._peer_max_frame = MIN_FRAME_SIZE_LIMIT
        self.peer_max_message_size = MIN_FRAME_SIZE_LIMIT
        #: How many calls the server runs at once on this connection; a client opens no more.
        self.peer_max_concurrent_streams = 1
        #: The connection credit the peer granted in its preface: a bound on the DATA we queue.
        self.peer_connection_window = 0
        #: The codings the peer accepts (preface bits; 0 from a peer older than 1.2): what
        #: ``send_compressed`` may use.
        self.peer_codings = 0
        #: The largest message a batch may hold (the smaller of the peer's frame and message
        #: limits).
        self._peer_fast_limit = 0
        self.goaway_received: GoAwayReceived | None = None
        #: Frames received but not processed yet (``receive_data(..., max_frames=N)``), in
        #: order, as ``Framer.feed_grouped`` gives them.  At most one received chunk's frames
        #: if the caller takes them all before it reads again, as the Trio layer does.
        self._backlog: list[Run] = []
        #: Ping policing (see the module's docstring): the rule, the time of the data being
        #: processed (the caller's ``now``), when the last PING came, early PINGs in a row.
        self.min_ping_interval = min_ping_interval
        self.max_ping_strikes = max_ping_strikes
        self._now = 0.0
        self._last_ping_at: float | None = None
        self._ping_strikes = 0

        # What the table allows, looked up once for the fast paths (they still step streams
        # through the table; these sets only let them skip the checks the table would fail).
        streams = self._streams
        data_states = streams.next_states(_RECV_DATA)
        #: States in which a received whole message is handed on (CLOSING drops them).
        self._deliver_states = frozenset(s for s, new in data_states.items() if new is s and s is not _CLOSING)
        #: States in which a DATA frame with END_STREAM delivers its message and half-closes
        #: (the server: a request's one message; empty for the client).
        end_states = streams.next_states(_RECV_END_STREAM)
        self._deliver_end_states = frozenset(s for s in self._deliver_states if s in end_states)
        #: States SEND_DATA leaves as they are: in them, a client's message (or a server's once
        #: its response has started, SEND_DATA's only other effect) needs no step.
        self._send_data_loops = frozenset(s for s, new in streams.next_states(_SEND_DATA).items() if new is s)

    # ------------------------------------------------------------------ introspection
    @property
    def framer_name(self) -> str:
        return self._framer.name

    @property
    def open_streams(self) -> int:
        """Streams not yet closed (a server's running calls and those whose trailers wait for
        credit; a client's calls in flight)."""
        return len(self._streams.live)

    @property
    def last_stream_id(self) -> int:
        return self._streams.last_id

    def stream_state(self, stream_id: int) -> StreamState:
        """The state of a stream; CLOSED for one that ended (or never existed)."""
        stream = self._live.get(stream_id)
        return stream.state if stream is not None else _CLOSED

    def send_buffered(self, stream_id: int) -> int:
        """How many bytes of this stream's messages are waiting for credit (0 if none)."""
        stream = self._live.get(stream_id)
        if stream is None or not stream.pending:
            return 0
        return sum(len(item[0]) for item in stream.pending if type(item) is list)

    @property
    def can_open_call(self) -> bool:
        """(client) Whether a call may be opened now within the server's limit on concurrent
        calls (``open_call`` refuses one beyond it); False until the server's preface says."""
        return len(self._live) < self.peer_max_concurrent_streams

    @property
    def accepting_calls(self) -> bool:
        """False once either side has sent GOAWAY or the connection has ended."""
        return self.state is _OPEN

    @property
    def output_size(self) -> int:
        """Bytes queued for the peer and not yet collected."""
        return sum(map(len, self._out))

    # ------------------------------------------------------------------ lifecycle
    def _move(self, what: str) -> bool:
        """Move the lifecycle by ``what``; False (no change) if the table has no such row."""
        new = _LIFECYCLE.get((self.state, self._informed, what))
        if new is None:
            return False
        self.state, self._informed = new
        return True

    # ------------------------------------------------------------------ output
    def initiate(self) -> None:
        """Queue our preface.  Call once, first."""
        self._out.append(
            PREFACE.pack(
                PREFACE_MAGIC,
                PROTOCOL_VERSION[0],
                PROTOCOL_VERSION[1],
                self.accepted_codings,
                self.max_frame_size,
                self.max_message_size,
                self.stream_window,
                self.connection_window,
                self.max_concurrent_streams,
            )
        )

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call, as one bytes object."""
        if self._batching:
            self._flush_batches()
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 and type(out[0]) is bytes else b"".join(out)
        out.clear()
        return data

    def requeue(self, data: bytes) -> None:
        """Put back, in front of anything queued since, output that could not be written."""
        if data:
            self._out.insert(0, data)

    def data_to_send_list(self) -> list[bytes | memoryview]:
        """Everything queued for the peer since the last call, as a list of bytes-like parts
        (large messages are parts of their own: an I/O layer can send them without copying
        them into one buffer with the rest)."""
        if self._batching:
            self._flush_batches()
        out = self._out
        self._out = []
        return out

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out) or any(stream.batch for stream in self._batching.values())

    def _frame(self, ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self._out.append(pack_header(len(payload), ftype, flags, stream_id))
        if payload:
            self._out.append(payload)

    # ------------------------------------------------------------------ streams
    def _local_stream(self, stream_id: int) -> Stream:
        stream = self._live.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is closed or does not exist")
        return stream

    def _drop_batch(self, stream: Stream) -> None:
        """The stream sends no more messages: empty its batch and stop framing it.  Reached
        with the batch framed (every way out of a stream's sending frames it first) or dropped
        with the stream (cancelled); whatever is appended to the list later is never sent."""
        if stream.batch is not None:
            stream.batch.clear()
            stream.batch = None
            self._batching.pop(stream.id, None)

    # ------------------------------------------------------------------ batches
    def open_batch(self, stream_id: int) -> list[bytes]:
        """A list on which to queue this stream's small messages with ``list.append``: no call
        into the protocol per message, for a sender of many small messages (a streaming
        handler).  Returns the same list while the stream lives.

        Each item must be one encoded message, bytes of 1 to :attr:`batch_limit` bytes.  The
        batch is framed, in order, as the stream's next output: when output is collected
        (``data_to_send``, ``data_to_send_list``), at :meth:`flush_batch`, and before
        anything else this stream sends (a message through ``send_message``, the end of the
        stream, trailers).  Credit applies as in ``send_message``: what does not fit waits for
        credit, and ``flush_batch`` tells.  A batch holds what its caller put there since the
        last flush, so the caller bounds it.  A stream cancelled or reset drops its batch.
        """
        stream = self._local_stream(stream_id)
        if not self._streams.allows(stream.state, _SEND_DATA):
            raise LocalProtocolError(
                f"stream {stream_id} cannot send messages in state {stream.state.value} ({self.role.value})"
            )
        if stream.batch is None:
            stream.batch = []
            self._batching[stream_id] = stream
        return stream.batch

    @property
    def batch_limit(self) -> int:
        """The largest message a batch may hold: one frame, within the peer's limits (0 until
        the peer's preface has arrived)."""
        return self._peer_fast_limit

    def flush_batch(self, stream_id: int) -> bool:
        """Frame the stream's batch now.  Returns True if all of the stream's output is framed,
        False if some waits for credit (wait for :class:`SendCreditAvailable`, as after
        ``send_message``).  True for a stream that has ended (its batch was dropped)."""
        stream = self._live.get(stream_id)
        if stream is None:
            return True
        if stream.batch:
            self._flush_batch(stream)
        return not stream.pending

    def _flush_batches(self) -> None:
        # Over a copy: framing may end a stream's sending, which unregisters its batch.
        for stream in list(self._batching.values()):
            if stream.batch:
                self._flush_batch(stream)

    def _flush_batch(self, stream: Stream) -> None:
        batch = stream.batch
        assert batch is not None  # callers flush a stream that has a batch
        try:
            self._step(stream, _SEND_DATA)
        except LocalProtocolError:
            batch.clear()
            raise LocalProtocolError(f"stream {stream.id}: a batch left after the stream stopped sending messages") from None
        # What the credit covers (nothing while older output waits for credit), framed in one
        # buffer, in C when it is built; frame_run also checks every item.
        credit = self._ledger.room(stream) if stream.pending is None else 0
        try:
            frames, count, size = _frame_run(batch, stream.id, credit, self._peer_fast_limit)
        except (TypeError, ValueError) as exc:
            batch.clear()
            raise LocalProtocolError(f"stream {stream.id}: bad message in a batch: {exc}") from None
        if count:
            self._ledger.spend(stream, size)
            self._out.append(frames)
        if count == len(batch):
            batch.clear()
            return
        # The rest waits for credit, behind anything already waiting.
        if stream.pending is None:
            stream.pending = deque()
        stream.pending.extend([memoryview(payload), 0] for payload in batch[count:])
        batch.clear()
        self._flush_stream(stream)

    # ------------------------------------------------------------------ sending
    def open_call(
        self,
        method: str,
        *,
        metadata: dict[str, str | bytes] | None = None,
        timeout: float | None = None,
        end_stream: bool = False,
        response_compression: int = 0,
    ) -> int:
        """Open a call (client); returns its stream id.

        ``timeout`` is the time the caller has left, in seconds; it travels in microseconds.
        ``response_compression`` (a :class:`~trpc.wire._compression.Coding`, 0 for none) asks
        the server to compress its responses so (HEADERS key 4); the server decides.
        """
        if not self._client:
            raise LocalProtocolError("only the client opens calls")
        if self.state is not _OPEN:
            raise LocalProtocolError("the connection is going away; it accepts no new calls")
        streams = self._streams
        if not self.can_open_call:
            raise LocalProtocolError(
                f"the server runs at most {self.peer_max_concurrent_streams} calls at once on a connection;"
                " wait for one to end"
            )
        if streams.last_id >= MAX_STREAM_ID:
            raise LocalProtocolError("stream ids are exhausted; open a new connection")
        stream_id = streams.last_id + 1
        if response_compression:
            payload = self._headers.encode(method, timeout, metadata, self._peer_max_frame, response_compression)
        else:
            payload = self._headers.encode(method, timeout, metadata, self._peer_max_frame)
        ledger = self._ledger
        stream = streams.open(stream_id, _SEND_HEADERS, ledger.peer_stream_window, ledger.stream_window)
        if end_stream:
            self._step(stream, _SEND_END_STREAM)
        self._out += (pack_header(len(payload), FrameType.HEADERS, _END_STREAM if end_stream else 0, stream_id), payload)
        return stream_id

    def open_unary_call(
        self,
        method: str,
        message: Payload,
        *,
        metadata: dict[str, str | bytes] | None = None,
        timeout: float | None = None,
        compression: int = 0,
        response_compression: int = 0,
    ) -> tuple[int, bool]:
        """Open a call and send its one request message, half-closing the stream (client; a
        unary or server-streaming call): ``open_call`` then ``send_message(...,
        end_stream=True)``.  Returns ``(stream_id, sent)``, ``sent`` as ``send_message``
        returns it.  A message the peer would refuse raises MessageTooLargeError before the
        call is opened.  ``compression`` and ``response_compression``: as in ``send_compressed``
        and ``open_call``."""
        size = len(message) if type(message) is bytes else message_size(message)
        if not 0 < size <= self.peer_max_message_size:
            self._check_message_size(size)  # raises
        if compression or response_compression:
            stream_id = self.open_call(
                method, metadata=metadata, timeout=timeout, response_compression=response_compression
            )
            return stream_id, self.send_compressed(stream_id, message, compression, end_stream=True)
        stream_id = self.open_call(method, metadata=metadata, timeout=timeout)
        return stream_id, self.send_message(stream_id, message, end_stream=True)

    def send_message(self, stream_id: int, payload: Payload, *, end_stream: bool = False) -> bool:
        """Queue one message on a stream; returns True if all of it was framed.

        ``payload`` is the encoded message: bytes, or ``[head, body]`` whose concatenation it
        is (a large byte string and its CBOR head: they go out without being copied into one
        buffer, as two frames, the head with MORE, so that the receiver gets the body as a
        frame of its own and can use it without copying it).

        False means part of it waits for credit from the peer: the caller should wait for a
        :class:`SendCreditAvailable` event for this stream (``send_buffered()`` tells how much)
        before sending more, so that buffering stays bounded.

        ``end_stream=True`` (client only) half-closes the stream after this message.
        """
        stream = self._live.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is closed or does not exist")
        if stream.batch:
            self._flush_batch(stream)
        parts = type(payload) is list
        size = message_size(payload) if parts else len(payload)
        if not 0 < size <= self.peer_max_message_size:
            self._check_message_size(size)  # raises
        if stream.state not in self._send_data_loops or not (self._client or stream.response_started):
            self._step(stream, _SEND_DATA)
        flags = 0
        if end_stream:
            self._step(stream, _SEND_END_STREAM)
            flags = _END_STREAM
        if stream.pending is None and size <= self._peer_max_frame and self._ledger.try_spend(stream, size):
            # The whole message in one frame (or, given as [head, body], in two).
            if parts:
                head, body = cast("list[bytes]", payload)  # a large message: no cost that counts
                self._out += (
                    pack_header(len(head), _DATA, _MORE, stream_id), head,
                    pack_header(len(body), _DATA, flags, stream_id), body,
                )
            else:
                # payload is bytes here (parts is false); a check to tell the checkers so would
                # cost one per message.
                self._out += (pack_header(size, _DATA, flags, stream_id), payload)  # type: ignore[arg-type]
            return True
        pending = stream.pending
        if pending is None:
            pending = stream.pending = deque()
        if parts:
            # The head and the body wait as two pieces of one message (the head's frames
            # carry MORE), so the body is not copied to join them.
            head, body = cast("list[bytes]", payload)
            pending.append([memoryview(head), _MORE])
            pending.append([memoryview(body), flags])
        else:
            pending.append([memoryview(cast(bytes, payload)), flags])
        self._flush_stream(stream)
        return not stream.pending

    def send_compressed(
        self, stream_id: int, payload: bytes | list[bytes], coding: int, *, end_stream: bool = False
    ) -> bool:
        """Queue one message compressed with ``coding`` (a :class:`~trpc.wire._compression.Coding`)
        when that is allowed and worth it; otherwise exactly as ``send_message``.  Returns as
        ``send_message`` does.

        The message goes compressed only if the peer accepts ``coding`` (its preface), its
        encoding is at least ``compression_threshold`` bytes, and compressing makes it smaller.
        The peer's max message size applies to the message before compression.
        """
        size = len(payload) if type(payload) is bytes else message_size(payload)
        if not (coding and self.peer_codings & coding_bit(Coding(coding)) and size >= self.compression_threshold):
            return self.send_message(stream_id, payload, end_stream=end_stream)
        if not 0 < size <= self.peer_max_message_size:
            self._check_message_size(size)  # raises
        packed = compress(Coding(coding), payload)
        if len(packed) >= size:
            return self.send_message(stream_id, payload, end_stream=end_stream)
        return self._send_coded(stream_id, packed, coding << CODING_SHIFT, end_stream)

    def _send_coded(self, stream_id: int, payload: bytes, coding_flags: int, end_stream: bool) -> bool:
        """``send_message``'s framing for a compressed message: its first DATA frame carries
        ``coding_flags`` (``_flush_stream`` clears them after it)."""
        stream = self._live.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is closed or does not exist")
        if stream.batch:
            self._flush_batch(stream)
        self._step(stream, _SEND_DATA)
        flags = coding_flags
        if end_stream:
            self._step(stream, _SEND_END_STREAM)
            flags |= _END_STREAM
        size = len(payload)
        if stream.pending is None and size <= self._peer_max_frame and self._ledger.try_spend(stream, size):
            self._out += (pack_header(size, _DATA, flags, stream_id), payload)
            return True
        if stream.pending is None:
            stream.pending = deque()
        stream.pending.append([memoryview(payload), flags])
        self._flush_stream(stream)
        return not stream.pending

    def _check_message_size(self, size: int) -> None:
        """A message of ``size`` bytes may be sent (the one place that checks it)."""
        if size > self.peer_max_message_size:
            raise MessageTooLargeError(size, self.peer_max_message_size)
        if size == 0:
            raise LocalProtocolError("a message is at least one byte long")

    def end_stream(self, stream_id: int) -> None:
        """Half-close (client): no more messages on this stream."""
        stream = self._local_stream(stream_id)
        if stream.batch:
            self._flush_batch(stream)
        self._step(stream, _SEND_END_STREAM)
        self._drop_batch(stream)
        if stream.pending:
            stream.pending.append([memoryview(b""), _END_STREAM])
        else:
            self._out.append(pack_header(0, _DATA, _END_STREAM, stream_id))

    def _flush_stream(self, stream: Stream) -> None:
        """Frame as much of the stream's waiting output as credit allows."""
        pending = stream.pending
        out = self._out
        ledger = self._ledger
        while pending:
            item = pending[0]
            if type(item) is bytes:  # a control frame queued behind the data (TRAILERS)
                out.append(item)
                pending.popleft()
                continue
            item = cast("list[Any]", item)  # [memoryview, flags]: not bytes, which went above
            view, flags = item
            if not view:  # a bare END_STREAM
                out.append(pack_header(0, _DATA, flags, stream.id))
                pending.popleft()
                continue
            room = min(ledger.room(stream), self._peer_max_frame)
            if room <= 0:
                if ledger.send_credit <= 0:
                    self._blocked[stream.id] = None
                return
            chunk = view[:room]
            size = len(chunk)
            rest = view[size:]
            ledger.spend(stream, size)
            # Slices of the message itself (a memoryview): no copy until the write.
            if rest:
                if flags & _CODING:  # a compressed message's coding goes on its first frame only
                    out += (pack_header(size, _DATA, _MORE | flags & _CODING, stream.id), chunk)
                    item[1] = flags & ~_CODING
                else:
                    out += (pack_header(size, _DATA, _MORE, stream.id), chunk)
                item[0] = rest
            else:
                out += (pack_header(size, _DATA, flags, stream.id), chunk)
                pending.popleft()
        stream.pending = None
        if stream.state is _CLOSING:
            self._step(stream, _DRAINED)

    def send_headers(self, stream_id: int, metadata: dict[str, str | bytes] | None = None) -> None:
        """Send response headers (server), at most once, before any message."""
        if self._client:
            raise LocalProtocolError("only the server sends response headers")
        stream = self._local_stream(stream_id)
        if stream.batch:
            self._flush_batch(stream)
        payload = _control.encode_response_headers(metadata, self._peer_max_frame)
        self._step(stream, _SEND_HEADERS)
        self._frame(FrameType.HEADERS, 0, stream_id, payload)

    def send_trailers(
        self,
        stream_id: int,
        status: Status,
        message: str = "",
        details: Any = None,
        metadata: dict[str, str | bytes] | None = None,
    ) -> None:
        """End the call with a status (server).  Queued after any data still waiting for
        credit (the stream is CLOSING until they leave)."""
        if self._client:
            raise LocalProtocolError("only the server sends trailers")
        stream = self._live.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is closed or does not exist")
        if stream.batch:
            self._flush_batch(stream)
        if status == 0 and not message and details is None and not metadata:
            payload = _OK_TRAILERS  # most calls end so: encoded once
        else:
            payload = _control.encode_trailers(status, message, details, metadata, self._peer_max_frame)
        frame = pack_header(len(payload), FrameType.TRAILERS, 0, stream_id) + payload
        if stream.pending:
            self._step(stream, _QUEUE_TRAILERS)
            self._drop_batch(stream)
            stream.recv_parts = None  # what the client still sends is dropped from now on
            self._ledger.drop_partial(stream)
            stream.pending.append(frame)
        else:
            self._step(stream, _SEND_TRAILERS)
            self._out.append(frame)

    def refuse_call(self, stream_id: int, status: Status, message: str = "") -> None:
        """End a call that the server never ran and never will (server): TRAILERS with
        ``status`` and key 5 (not processed), which tell the client that the call had no effect
        and may be retried on any connection.  For refusals that say nothing about the call
        itself (going away, over a concurrency limit); an unknown method or bad arguments get
        plain ``send_trailers``, since a retry would fail the same way.

        Raises LocalProtocolError for OK (a call refused did not succeed), and once the stream
        has responded (headers or a message: then its call was processed).
        """
        if self._client:
            raise LocalProtocolError("only the server refuses calls; a client cancels them")
        if status == 0:
            raise LocalProtocolError("a refused call cannot end with OK")
        stream = self._local_stream(stream_id)
        if stream.response_started or stream.batch:
            raise LocalProtocolError(f"stream {stream_id} has responded, so its call was processed")
        payload = _control.encode_trailers(status, message, None, None, self._peer_max_frame, processed=False)
        self._step(stream, _SEND_TRAILERS)  # nothing of the stream waits: the response never started
        self._out += (pack_header(len(payload), FrameType.TRAILERS, 0, stream_id), payload)

    def cancel(self, stream_id: int, reason: Status = Status.CANCELLED, message: str = "") -> None:
        """Cancel a call (client); queued output of the stream is dropped.  No-op if it ended."""
        if not self._client:
            raise LocalProtocolError("only the client cancels; a server ends a call with trailers")
        stream = self._live.get(stream_id)
        if stream is None:
            return
        payload = _control.encode_cancel(reason, message, self._peer_max_frame)
        self._step(stream, _SEND_CANCEL)
        self._frame(FrameType.CANCEL, 0, stream_id, payload)

    def consumed(self, stream_id: int, size: int) -> None:
        """The application took a message of ``size`` bytes from this stream: return credit."""
        stream = self._live.get(stream_id)
        if stream is None:
            return
        grant = self._ledger.consumed(stream, size)
        if grant:
            self._out += (pack_header(4, FrameType.WINDOW_UPDATE, 0, stream_id), grant.to_bytes(4, "big"))

    def ping(self, payload: bytes) -> None:
        """Send a ping with an 8-byte payload; the peer echoes it in an ACK."""
        if len(payload) != 8:
            raise LocalProtocolError("a ping payload is exactly 8 bytes")
        self._frame(FrameType.PING, 0, 0, payload)

    def goaway(self, status: Status = Status.OK, message: str = "") -> None:
        """Tell the peer we are going away; calls up to the last opened one still complete.
        A no-op once we have said it (or the connection has failed)."""
        if self._move("send_goaway"):
            # The last stream we processed or will: a server's, the last call it received; a
            # client processes no stream the server opens, so 0 (PROTOCOL.md section 9).
            last = 0 if self._client else self._streams.last_id
            self._frame(FrameType.GOAWAY, 0, 0, _control.encode_goaway(last, status, message))

    # ------------------------------------------------------------------ input
    def receive_data(self, data: bytes | bytearray, *, max_frames: int | None = None, now: float | None = None) -> list[Event]:
        """Process bytes received from the peer; ``b""`` means the peer closed its side.

        ``now`` is when the bytes arrived, on any clock in seconds (the core reads none); only
        ping policing uses it (``min_ping_interval``).

        Returns the events, in order.  Raises :class:`RemoteProtocolError` (or a subclass) if
        the peer broke the protocol: a GOAWAY saying why is then queued, the connection is dead,
        and ``exc.events`` holds the events of the frames that came before the bad one.

        ``max_frames`` bounds how many of the received frames are processed now (a run of
        consecutive plain DATA frames on one stream counts as one; 0 processes none; the end
        of file, and a framing error, process them all).  The others wait, unprocessed, in the
        *backlog* (:attr:`backlog` says how many) until :meth:`process_backlog` takes them; new
        data is processed after them.  A frame in the backlog has changed nothing yet, so the
        connection's state matches the events returned so far, and the application may act on
        them (reply, cancel, open calls) first.  The backlog holds what was received and not
        yet taken: a caller that takes it all before it reads again (as the Trio layer does)
        bounds it by one read.
        """
        events: list[Event] = []
        if now is not None:
            self._now = now
        try:
            if self.state is _FAILED:
                raise RemoteProtocolError("the connection has already failed")
            if self.peer_preface is None:
                if not data:
                    if self._preface_buf:
                        raise RemoteProtocolError("the peer closed the connection inside the preface")
                    self._move("eof")
                    events.append(ConnectionClosed())
                    return events
                data = self._receive_preface(data, events)
                if not data:
                    return events
            elif not data:
                self._take_backlog(None, events)
                self._framer.close()
                self._move("eof")
                events.append(ConnectionClosed())
                return events
            try:
                groups = self._framer.feed_grouped(data)
            except RemoteProtocolError as exc:
                self._take_backlog(None, events)
                self._process_frames(exc.frames, events)
                raise
            self._backlog = self._backlog + groups if self._backlog else groups
            self._take_backlog(max_frames, events)
        except RemoteProtocolError as exc:
            self._failed(exc, events)
            raise
        return events

    @property
    def backlog(self) -> int:
        """How many received frames wait to be processed (see ``receive_data``)."""
        return len(self._backlog)

    def process_backlog(self, max_frames: int | None = None) -> list[Event]:
        """Process the next ``max_frames`` frames of the backlog (all of them by default) and
        return their events; errors as in ``receive_data``."""
        if not self._backlog:
            return []
        events: list[Event] = []
        try:
            if self.state is _FAILED:
                raise RemoteProtocolError("the connection has already failed")
            self._take_backlog(max_frames, events)
        except RemoteProtocolError as exc:
            self._failed(exc, events)
            raise
        return events

    def _take_backlog(self, max_frames: int | None, events: list[Event]) -> None:
        """Process the backlog's first ``max_frames`` frames (all for None; none for 0)."""
        groups = self._backlog
        if max_frames is None or max_frames >= len(groups):
            self._backlog = []
        elif max_frames:
            self._backlog = groups[max_frames:]
            groups = groups[:max_frames]
        else:
            return  # the Trio reader's parse-only call: no copy of the list
        self._process_frames(groups, events)

    def _failed(self, exc: RemoteProtocolError, events: list[Event]) -> None:
        """The peer broke the protocol: queue a GOAWAY saying why; the connection is dead."""
        exc.events.extend(events)
        self._backlog = []
        if self.state is not _FAILED:
            self._move("error")
            message = f"protocol error: {exc}"
            self._frame(FrameType.GOAWAY, 0, 0, _control.encode_goaway(self._streams.last_id, exc.error_code, message))

    def _receive_preface(self, data: bytes | bytearray, events: list[Event]) -> bytes:
        buf = self._preface_buf + bytes(data)
        size = PREFACE.size
        # Check the magic as soon as it could be wrong, not only once the whole preface is here.
        if buf[: len(PREFACE_MAGIC)] != PREFACE_MAGIC[: len(buf)]:
            raise RemoteProtocolError(f"not a trpc peer: the connection starts with {buf[:8]!r}")
        if len(buf) < size:
            self._preface_buf = buf
            return b""
        (_magic, major, minor, codings, max_frame, max_message, stream_window, conn_window,
         max_streams) = PREFACE.unpack_from(buf)
        if major != PROTOCOL_VERSION[0]:
            raise RemoteProtocolError(
                f"the peer speaks trpc protocol {major}.{minor}; this side speaks "
                f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}",
                error_code=Status.UNIMPLEMENTED,
            )
        if not MIN_FRAME_SIZE_LIMIT <= max_frame <= MAX_FRAME_SIZE_LIMIT:
            raise RemoteProtocolError(f"the peer's max frame size {max_frame} is out of range")
        for name, value in (("max message size", max_message), ("stream window", stream_window),
                            ("connection window", conn_window), ("max concurrent streams", max_streams)):
            if not 1 <= value <= MAX_WINDOW:
                raise RemoteProtocolError(f"the peer's {name} {value} is out of range")
        self._preface_buf = b""
        self._peer_max_frame = max_frame
        self.peer_max_message_size = max_message
        self.peer_max_concurrent_streams = max_streams
        self.peer_connection_window = conn_window
        # Reserved before 1.2, and its unknown bits reserved still: ignored.
        self.peer_codings = codings & KNOWN_BITS if minor >= COMPRESSION_MINOR_VERSION else 0
        self._peer_fast_limit = min(max_frame, max_message)
        # Streams opened before the preface arrived had no credit yet: give them theirs now.
        live = list(self._streams.live.values())
        self._ledger.peer_windows(stream_window, conn_window, live)
        for stream in live:
            if stream.pending:
                self._flush_stream(stream)
                if not stream.pending:
                    events.append(SendCreditAvailable(stream_id=stream.id))
        self.peer_preface = PrefaceReceived(
            version=(major, minor),
            max_frame_size=max_frame,
            initial_window=stream_window,
        )
        events.append(self.peer_preface)
        if (self.idempotent_methods or self._info_shapes) and minor >= INFO_MINOR_VERSION:
            self._send_info()
        return buf[size:]

    def _send_info(self) -> None:
        """(server) Queue INFO, right after the client's preface: before any frame of a stream,
        so a client that sees one without INFO before it knows that none is coming."""
        limit = min(MAX_HEADERS_SIZE, self._peer_max_frame)
        payload = _control.encode_info(self.idempotent_methods, self._info_shapes, limit)
        if payload is not None and self._move("send_info"):
            self._frame(FrameType.INFO, 0, 0, payload)

    def _process_frames(self, groups: Iterable[Run], events: list[Event]) -> None:
        """Process what ``Framer.feed_grouped`` returned: frames, with each run of
        consecutive flag-less DATA frames on one stream given as one entry."""
        live = self._streams.live
        step = self._step
        client = self._client
        handlers = _HANDLERS
        deliver_states = self._deliver_states
        deliver_end_states = self._deliver_end_states
        ledger = self._ledger
        max_message = self.max_message_size
        # The fast path: a run of DATA frames each holding one whole message, on a stream that
        # may receive them, within every limit (the framer found the run in C, so a stream of
        # small messages costs no Python per frame here).  Consecutive runs for the same
        # stream become one event, and their connection credit is settled once.  Anything
        # else takes the general path, frame by frame, after the batch so far has been
        # emitted, so events keep the frames' order.
        batch: list[bytes] | None = None
        batch_stream: Stream | None = None
        received = 0
        for ftype, flags, stream_id, payloads in groups:
            if ftype == _DATA and not flags:
                stream = live.get(stream_id)
                if stream is not None and stream.recv_parts is None and stream.state in deliver_states:
                    if len(payloads) == 1:
                        size = len(payloads[0])
                        fits = 0 < size <= max_message
                    else:
                        size = sum(map(len, payloads))
                        fits = all(payloads) and max(map(len, payloads)) <= max_message
                    if fits and size <= stream.recv_granted and received + size <= ledger.recv_credit:
                        if client and not stream.response_started:
                            step(stream, _RECV_DATA)  # its one effect here (the states are loops)
                        ledger.deliver(stream, size)
                        received += size
                        if stream is batch_stream:
                            assert batch is not None  # set with batch_stream
                            batch += payloads
                        else:
                            if batch is not None:
                                assert batch_stream is not None  # set with batch
                                events.append(MessagesReceived(stream_id=batch_stream.id, payloads=batch))
                            batch_stream = stream
                            batch = payloads  # a fresh list per entry: ours to keep
                        continue
            elif ftype == _DATA and flags == _END_STREAM and len(payloads) == 1:
                # A request's one message with the half-close (every unary call has one).
                stream = live.get(stream_id)
                if stream is not None and stream.recv_parts is None and stream.state in deliver_end_states:
                    payload = payloads[0]
                    size = len(payload)
                    if 0 < size <= max_message and size <= stream.recv_granted and received + size <= ledger.recv_credit:
                        if batch is not None:
                            assert batch_stream is not None  # set with batch
                            events.append(MessagesReceived(stream_id=batch_stream.id, payloads=batch))
                            batch = batch_stream = None
                        # RECV_DATA leaves these states as they are (the set says so), so
                        # only the half-close moves the stream.
                        ledger.deliver(stream, size)
                        received += size
                        step(stream, _RECV_END_STREAM)
                        events.append(MessagesReceived(stream_id=stream_id, payloads=payloads))
                        events.append(StreamEnded(stream_id=stream_id))
                        continue
            if batch is not None:
                assert batch_stream is not None  # set with batch
                events.append(MessagesReceived(stream_id=batch_stream.id, payloads=batch))
                batch = batch_stream = None
            if received:
                self._take_connection_credit(received)
                received = 0
            for payload in payloads:
                if ftype == _DATA:
                    self._recv_data(stream_id, flags, payload, events)
                else:
                    handler = handlers.get(ftype)
                    if handler is None:
                        raise RemoteProtocolError(f"unknown frame type 0x{ftype:02x}")
                    handler(self, flags, stream_id, payload, events)
        if batch is not None:
            assert batch_stream is not None  # set with batch
            events.append(MessagesReceived(stream_id=batch_stream.id, payloads=batch))
        if received:
            self._take_connection_credit(received)

    def _take_connection_credit(self, size: int) -> None:
        grant = self._ledger.receive_connection(size)
        if grant:
            self._out += (pack_header(4, FrameType.WINDOW_UPDATE, 0, 0), grant.to_bytes(4, "big"))

    def _recv_data(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        size = len(payload)
        if flags & ~(_END_STREAM | _MORE):
            if flags & ~(_END_STREAM | _MORE | _CODING):
                raise RemoteProtocolError(f"DATA frame with unknown flags 0x{flags:02x}")
            self._recv_coded(stream_id, flags, payload, events)
            return
        if flags & _END_STREAM:
            if self._client:
                raise RemoteProtocolError("the server ends its direction with TRAILERS, not END_STREAM")
            if flags & _MORE:
                raise RemoteProtocolError("a DATA frame cannot both continue a message and end the stream")
        elif not size:
            raise RemoteProtocolError("an empty DATA frame must carry END_STREAM (and only it)")
        stream = self._live.get(stream_id)
        if stream is None or stream.state is _CLOSING:
            if stream_id == 0 or stream_id > self._streams.last_id:
                raise RemoteProtocolError(f"DATA frame for stream {stream_id}, which was never opened")
            # A stream that closed (or whose trailers wait to leave) while the peer was still
            # sending: drop the bytes, but give back their connection credit, which it spent.
            if stream is not None:
                self._step(stream, _RECV_DATA if not flags & _END_STREAM else _RECV_END_STREAM)
            self._take_connection_credit(size)
            return
        if size:
            self._step(stream, _RECV_DATA)
            self._ledger.receive(stream, size)
            self._take_connection_credit(size)
            if flags & _MORE:
                parts = stream.recv_parts
                if parts is None:
                    parts = stream.recv_parts = []
                parts.append(payload)
                if self._ledger.partial(stream, size) > self.max_message_size:
                    self._message_too_large(stream, events)
                    return
                if self._ledger.incomplete > self.max_incomplete_bytes:
                    self._refuse_message(
                        stream, events,
                        f"messages still arriving on this connection exceed {self.max_incomplete_bytes} bytes",
                    )
                    return
                grant = self._ledger.stream_grant(stream)
                if grant:
                    self._out += (pack_header(4, FrameType.WINDOW_UPDATE, 0, stream_id), grant.to_bytes(4, "big"))
                return
            total = size
            message: Payload = payload
            if stream.recv_parts is not None:
                parts = stream.recv_parts
                parts.append(payload)
                total = self._ledger.partial(stream, size)
                stream.recv_parts = None
                if total > self.max_message_size:
                    self._message_too_large(stream, events)
                    return
                if type(parts) is _CompressedParts:
                    self._deliver_coded(stream, parts.coding, parts, flags, events)
                    return
                if len(parts) == 2 and len(parts[0]) <= _HEAD_PART and size >= _BODY_PART:
                    # A small head then a large body (see send_message): the message stays
                    # [head, body], so that the body need not be copied (see _codec.decode).
                    message = parts
                else:
                    message = b"".join(parts)
            elif size > self.max_message_size:
                self._message_too_large(stream, events)
                return
            self._ledger.hold(stream, total)
            events.append(MessagesReceived(stream_id=stream_id, payloads=[message]))
        elif stream.recv_parts is not None:
            raise RemoteProtocolError("END_STREAM in the middle of a message")
        if flags & _END_STREAM:
            self._step(stream, _RECV_END_STREAM)
            events.append(StreamEnded(stream_id=stream_id))

    def _recv_coded(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        """The first DATA frame of a compressed message (its flags carry a coding): check the
        coding, then receive it as any DATA frame; once complete the message is handed on as it
        arrived (``_deliver_coded``)."""
        coding = (flags & _CODING) >> CODING_SHIFT
        if coding == 3:
            raise RemoteProtocolError("DATA frame with the reserved coding 3")
        if not self.accepted_codings & coding_bit(Coding(coding)):
            raise RemoteProtocolError(f"DATA frame compressed with {Coding(coding).name.lower()}, which this side does not accept")
        if flags & _END_STREAM and flags & _MORE:
            raise RemoteProtocolError("a DATA frame cannot both continue a message and end the stream")
        if flags & _END_STREAM and self._client:
            raise RemoteProtocolError("the server ends its direction with TRAILERS, not END_STREAM")
        if not payload:
            raise RemoteProtocolError("a compressed message cannot be empty")
        stream = self._live.get(stream_id)
        if stream is not None and stream.state is not _CLOSING and stream.recv_parts is not None:
            raise RemoteProtocolError("a coding on a DATA frame that continues a message (only its first frame says it)")
        plain = flags & ~_CODING
        if stream is None or stream.state is _CLOSING:
            self._recv_data(stream_id, plain, payload, events)  # dropped, or never opened
            return
        size = len(payload)
        self._step(stream, _RECV_DATA)
        self._ledger.receive(stream, size)
        self._take_connection_credit(size)
        if plain & _MORE:
            # The rest follows as plain continuation frames: _recv_data joins them here.
            stream.recv_parts = parts = _CompressedParts(coding)
            parts.append(payload)
            if self._ledger.partial(stream, size) > self.max_message_size:
                self._message_too_large(stream, events)
            elif self._ledger.incomplete > self.max_incomplete_bytes:
                self._refuse_message(
                    stream, events,
                    f"messages still arriving on this connection exceed {self.max_incomplete_bytes} bytes",
                )
            else:
                grant = self._ledger.stream_grant(stream)
                if grant:
                    self._out += (pack_header(4, FrameType.WINDOW_UPDATE, 0, stream_id), grant.to_bytes(4, "big"))
            return
        if size > self.max_message_size:
            self._message_too_large(stream, events)
            return
        self._deliver_coded(stream, coding, [payload], plain, events)

    def _deliver_coded(self, stream: Stream, coding: int, parts: list[bytes], flags: int, events: list[Event]) -> None:
        """A compressed message is complete (its bytes charged): hand it on as it arrived, a
        :class:`Compressed` that the call layer decompresses when it reads it, within our max
        message size (``trpc._codec.decode``).  The stream holds its size on the wire until
        ``consumed`` gives it back, so a stream that is not read holds no more than its window,
        however far its messages would expand."""
        message = Compressed(coding, parts, self.max_message_size)
        self._ledger.hold(stream, len(message))
        events.append(MessagesReceived(stream_id=stream.id, payloads=[message]))
        if flags & _END_STREAM:
            self._step(stream, _RECV_END_STREAM)
            events.append(StreamEnded(stream_id=stream.id))

    def _message_too_large(self, stream: Stream, events: list[Event]) -> None:
        """A message over our limit: end that call (not the connection) with RESOURCE_EXHAUSTED."""
        self._refuse_message(stream, events, f"message larger than the limit of {self.max_message_size} bytes")

    def _refuse_message(self, stream: Stream, events: list[Event], text: str) -> None:
        """A message we will not hold (over a limit): end that call (not the connection) with
        RESOURCE_EXHAUSTED, and drop what arrived of it."""
        status = Status.RESOURCE_EXHAUSTED
        stream.recv_parts = None
        self._ledger.drop_partial(stream)
        if self._client:
            self.cancel(stream.id, status, "response " + text)
            events.append(CallEnded(stream_id=stream.id, status=status, message="response " + text))
        else:
            self.send_trailers(stream.id, status, "request " + text)
            events.append(CallCancelled(stream_id=stream.id, reason=status, message="request " + text))

    def _recv_stream(self, kind: str, stream_id: int, flags: int) -> Stream | None:
        """The live stream a stream-level frame is for, or None if it has closed already."""
        if flags:
            raise RemoteProtocolError(f"{kind} frame with unknown flags 0x{flags:02x}")
        if stream_id == 0:
            raise RemoteProtocolError(f"{kind} frame on stream 0")
        stream = self._live.get(stream_id)
        if stream is None and stream_id > self._streams.last_id:
            raise RemoteProtocolError(f"{kind} frame for stream {stream_id}, which was never opened")
        return stream

    def _recv_headers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id == 0:
            raise RemoteProtocolError("HEADERS frame on stream 0")
        if flags & ~_END_STREAM:
            raise RemoteProtocolError(f"HEADERS frame with unknown flags 0x{flags:02x}")
        if not self._client:
            simple = _parse_simple_headers(payload)
            if simple is not None:  # the common shapes, without cbor2 (see the function)
                self._open_remote_call(flags, stream_id, simple[0], simple[1], {}, events)
            else:
                method, timeout_us, metadata, compression = _control.parse_request_headers(payload)
                self._open_remote_call(flags, stream_id, method, timeout_us, metadata, events, compression)
            return
        if flags:
            raise RemoteProtocolError("response HEADERS cannot carry END_STREAM")
        metadata = _control.parse_response_headers(payload)
        stream = self._recv_stream("HEADERS", stream_id, 0)
        if stream is None:
            return
        self._step(stream, _RECV_HEADERS)  # at most once, before any message (the table)
        events.append(HeadersReceived(stream_id=stream_id, metadata=metadata))

    def _open_remote_call(
        self, flags: int, stream_id: int, method: str, timeout_us: int | None, metadata: dict[str, str | bytes],
        events: list[Event], compression: int = 0,
    ) -> None:
        """A client's HEADERS, decoded: open the stream (server side)."""
        streams = self._streams
        if stream_id <= streams.last_id:
            raise RemoteProtocolError(
                f"HEADERS frame reuses stream id {stream_id} (ids must increase; last was {streams.last_id})"
            )
        ledger = self._ledger
        stream = streams.open(stream_id, _RECV_HEADERS, ledger.peer_stream_window, ledger.stream_window)
        end = bool(flags & _END_STREAM)
        if end:
            self._step(stream, _RECV_END_STREAM)
        # Refusals that say nothing about the call: it never runs, and may be retried anywhere.
        if self.state in _GOAWAY_SENT:
            self.refuse_call(stream_id, Status.UNAVAILABLE, "the server is shutting down")
            return
        if len(streams.live) > self.max_concurrent_streams:
            self.refuse_call(
                stream_id,
                Status.RESOURCE_EXHAUSTED,
                f"too many concurrent calls on this connection (limit {self.max_concurrent_streams})",
            )
            return
        opened = CallOpened(
            stream_id=stream_id,
            method=method,
            metadata=metadata,
            timeout=None if timeout_us is None else timeout_us / 1_000_000,
            end_stream=end,
        )
        if compression:  # (1.2) rare: set here rather than passed, which every call would pay for
            opened.compression = compression
        events.append(opened)

    def _recv_trailers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not self._client:
            raise RemoteProtocolError("a client cannot send TRAILERS")
        stream = self._recv_stream("TRAILERS", stream_id, flags)
        if payload == _OK_TRAILERS:  # most calls end so: nothing to decode
            ended = CallEnded(stream_id=stream_id, status=_OK)
        else:
            status, message, details, metadata, processed = _control.parse_trailers(payload)
            ended = CallEnded(
                stream_id=stream_id, status=status, message=message, details=details, metadata=metadata,
                processed=processed,
            )
        if stream is None:
            return
        if stream.recv_parts is not None:
            raise RemoteProtocolError("TRAILERS in the middle of a message")
        self._step(stream, _RECV_TRAILERS)  # the call is over: nothing more of ours goes out
        events.append(ended)

    def _recv_cancel(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if self._client:
            raise RemoteProtocolError("a server cannot send CANCEL; it ends calls with TRAILERS")
        stream = self._recv_stream("CANCEL", stream_id, flags)
        reason, message = _control.parse_cancel(payload)
        if stream is None:
            return
        ended = stream.state is _CLOSING  # our trailers were queued: the call was already over
        self._step(stream, _RECV_CANCEL)
        if not ended:
            events.append(CallCancelled(stream_id=stream_id, reason=reason, message=message))

    def _recv_window_update(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if flags:
            raise RemoteProtocolError(f"WINDOW_UPDATE frame with unknown flags 0x{flags:02x}")
        if len(payload) != 4:
            raise RemoteProtocolError("a WINDOW_UPDATE payload is exactly 4 bytes")
        increment = int.from_bytes(payload, "big")
        if increment == 0:
            raise RemoteProtocolError("a WINDOW_UPDATE increment of 0")
        live = self._streams.live
        if stream_id == 0:
            self._ledger.credit_connection(increment)
            blocked = list(self._blocked)
            self._blocked.clear()
            for sid in blocked:
                stream = live.get(sid)
                if stream is not None and stream.pending:
                    self._flush_stream(stream)
                    if not stream.pending:
                        events.append(SendCreditAvailable(stream_id=sid))
            return
        stream = live.get(stream_id)
        if stream is None:
            if stream_id > self._streams.last_id:
                raise RemoteProtocolError(f"WINDOW_UPDATE for stream {stream_id}, which was never opened")
            return
        self._ledger.credit_stream(stream, increment)
        if stream.pending:
            self._flush_stream(stream)
            if not stream.pending:
                events.append(SendCreditAvailable(stream_id=stream_id))

    def _recv_ping(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id != 0 or len(payload) != 8 or flags & ~_ACK:
            raise RemoteProtocolError("malformed PING frame (stream 0, 8 bytes, flag ACK only)")
        if flags & _ACK:
            events.append(PingAcknowledged(payload=payload))
        else:
            if self.min_ping_interval is not None:
                self._police_ping()
            self._frame(FrameType.PING, _ACK, 0, payload)
            events.append(PingReceived(payload=payload))

    def _police_ping(self) -> None:
        """A PING arrived at ``self._now``: a strike if it is early; too many end the connection."""
        now, last = self._now, self._last_ping_at
        self._last_ping_at = now
        assert self.min_ping_interval is not None  # called only when pings are policed
        if last is None or now - last >= self.min_ping_interval:
            self._ping_strikes = 0
            return
        self._ping_strikes += 1
        if self._ping_strikes > self.max_ping_strikes:
            raise RemoteProtocolError(
                f"too many pings (more than {self.max_ping_strikes} in a row less than"
                f" {self.min_ping_interval:g} s apart)",
                error_code=Status.RESOURCE_EXHAUSTED,
            )

    def _recv_goaway(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id != 0 or flags:
            raise RemoteProtocolError("malformed GOAWAY frame (stream 0, no flags)")
        last, status, message = _control.parse_goaway(payload)
        event = GoAwayReceived(last_stream_id=last, status=status, message=message)
        self._move("recv_goaway")
        self.goaway_received = event
        events.append(event)
        if self._client:
            # Calls the server never saw were not processed: fail them now, safe to retry.
            for stream in [stream for sid, stream in self._streams.live.items() if sid > last]:
                self._step(stream, _REFUSED)
                events.append(
                    CallEnded(
                        stream_id=stream.id,
                        status=Status.UNAVAILABLE,
                        message=f"the server went away before processing the call: {message or 'GOAWAY'}",
                        processed=False,
                    )
                )

    def _recv_info(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not self._client:
            raise RemoteProtocolError("a client cannot send INFO")
        if stream_id != 0 or flags:
            raise RemoteProtocolError("malformed INFO frame (stream 0, no flags)")
        idempotent, methods, _ = _control.parse_info(payload)  # key 3 is QUIC's: the preface says it here
        if not self._move("recv_info"):
            raise RemoteProtocolError("a second INFO frame (a server sends at most one per connection)")
        self.info_received = InfoReceived(idempotent=idempotent, methods=methods)
        events.append(self.info_received)


#: Frame type -> Connection method receiving it (all but DATA), as plain functions: a table of
#: bound methods on each connection would be a reference cycle, which keeps a closed
#: connection in memory until the garbage collector runs.
_HANDLERS: dict[int, Callable[..., None]] = {
    FrameType.HEADERS: Connection._recv_headers,
    FrameType.TRAILERS: Connection._recv_trailers,
    FrameType.CANCEL: Connection._recv_cancel,
    FrameType.WINDOW_UPDATE: Connection._recv_window_update,
    FrameType.PING: Connection._recv_ping,
    FrameType.GOAWAY: Connection._recv_goaway,
    FrameType.INFO: Connection._recv_info,
}
