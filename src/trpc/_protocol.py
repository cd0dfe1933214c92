"""The sans-IO protocol core: bytes in, events out; intentions in, bytes out.

Theory of operation
-------------------
A :class:`Connection` is one endpoint (``"client"`` or ``"server"``) of one trpc connection.  It
does no I/O and knows nothing of Trio or sockets:

- ``receive_data(data)`` takes bytes read from the peer (``b""`` for end of file), splits them into
  frames with a framer (C or pure Python, same interface), checks every frame against the rules
  and returns a list of :mod:`events <trpc._events>`.  With ``max_frames`` it processes only
  that many of them now and keeps the rest, unprocessed, for ``process_backlog()``: an
  application can act on the first calls of a large chunk before the later ones start.
- The ``open_call`` / ``send_message`` / ``send_trailers`` / ``cancel`` / ... methods turn the
  caller's intentions into frames, appended to an outgoing buffer that ``data_to_send()`` drains.
  Many intentions between two drains leave in one write: that is how the Trio layer coalesces.
  A sender of many small messages queues them on a *batch* (``open_batch``: a list it appends
  to), framed together when output is drained (``frame_run``, in C when it is built).

Each endpoint starts by sending a fixed-size *preface* (magic, version, and its receive limits);
after it, everything is frames (``docs/PROTOCOL.md`` has the byte layout).  Calls live on
*streams*: the client opens one with a HEADERS frame, both sides send messages as DATA frames,
the client half-closes with END_STREAM, and the server ends the call with TRAILERS carrying the
status.  The client may CANCEL.  Each stream's state follows the transition table
``_TRANSITIONS``: a ``(role, state, input)`` triple missing from it is a protocol error, local
(raised to the caller) or remote (the connection is failed with GOAWAY).

Flow control is credit-based, per stream and per connection, counted in DATA payload bytes.  The
sender never sends more than the credit it holds; what does not fit waits in the stream's
``pending`` queue and goes out when WINDOW_UPDATE frames bring credit (the Trio layer waits for
that queue to drain before it sends the next message, so nothing grows without bound).  As a
receiver, trpc returns stream credit as the application consumes messages
(``consumed()``), and connection credit as soon as the bytes are handed to a stream.

Frames for a stream that has already closed are dropped (the two sides' views of a stream's end
race); frames for a stream that never existed are a protocol error.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from typing import Any, Callable

import cbor2

from . import _framer
from ._cext import speedups
from ._codec import _dumps, _loads
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    CallCancelled,
    CallEnded,
    CallOpened,
    ConnectionClosed,
    Event,
    GoAwayReceived,
    HeadersReceived,
    MessagesReceived,
    PingAcknowledged,
    PingReceived,
    PrefaceReceived,
    SendCreditAvailable,
    StreamEnded,
)
from ._framer_py import DEFAULT_MAX_FRAME_SIZE, HEADER, MAX_FRAME_SIZE_LIMIT, MIN_FRAME_SIZE_LIMIT
from ._status import Status

__all__ = [
    "Connection",
    "FrameType",
    "Flags",
    "Role",
    "StreamState",
    "PREFACE",
    "PREFACE_MAGIC",
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_STREAM_WINDOW",
    "DEFAULT_CONNECTION_WINDOW",
    "DEFAULT_MAX_CONCURRENT_STREAMS",
    "MAX_HEADERS_SIZE",
]


class FrameType(enum.IntEnum):
    """The frame types of protocol version 1.  Any other type is a protocol error."""

    DATA = 0x0
    HEADERS = 0x1
    TRAILERS = 0x2
    CANCEL = 0x3
    WINDOW_UPDATE = 0x4
    PING = 0x5
    GOAWAY = 0x6


class Flags(enum.IntFlag):
    NONE = 0
    #: DATA, HEADERS (client): the sender sends nothing more on this stream.
    END_STREAM = 0x1
    #: DATA: the message continues in the next DATA frame of this stream.
    MORE = 0x2
    #: PING: this is the acknowledgement of a ping.
    ACK = 0x1


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"

    # Members are singletons compared by identity; hashing them by identity too keeps the
    # transition-table lookups (several per message) cheap.
    __hash__ = object.__hash__


class StreamState(enum.Enum):
    OPEN = "open"
    #: We sent END_STREAM (client): only the server's direction is still open.
    HALF_CLOSED_LOCAL = "half-closed (local)"
    #: The peer sent END_STREAM (server): only our direction is still open.
    HALF_CLOSED_REMOTE = "half-closed (remote)"
    CLOSED = "closed"

    __hash__ = object.__hash__


class _In(enum.Enum):
    """Inputs of the stream state machine: what is sent or received on a stream."""

    SEND_HEADERS = enum.auto()
    SEND_DATA = enum.auto()
    SEND_END_STREAM = enum.auto()
    SEND_TRAILERS = enum.auto()
    SEND_CANCEL = enum.auto()
    RECV_HEADERS = enum.auto()
    RECV_DATA = enum.auto()
    RECV_END_STREAM = enum.auto()
    RECV_TRAILERS = enum.auto()
    RECV_CANCEL = enum.auto()

    __hash__ = object.__hash__


_S = StreamState
#: (role, state, input) -> new state.  Streams are created by the client's HEADERS (in OPEN, or
#: in a half-closed state when that HEADERS frame carries END_STREAM); anything not listed here
#: is a protocol error.  HEADERS on an open stream are the server's response headers.
_TRANSITIONS: dict[tuple[Role, StreamState, _In], StreamState] = {
    # client
    (Role.CLIENT, _S.OPEN, _In.SEND_DATA): _S.OPEN,
    (Role.CLIENT, _S.OPEN, _In.SEND_END_STREAM): _S.HALF_CLOSED_LOCAL,
    (Role.CLIENT, _S.OPEN, _In.SEND_CANCEL): _S.CLOSED,
    (Role.CLIENT, _S.OPEN, _In.RECV_HEADERS): _S.OPEN,
    (Role.CLIENT, _S.OPEN, _In.RECV_DATA): _S.OPEN,
    (Role.CLIENT, _S.OPEN, _In.RECV_TRAILERS): _S.CLOSED,
    (Role.CLIENT, _S.HALF_CLOSED_LOCAL, _In.SEND_CANCEL): _S.CLOSED,
    (Role.CLIENT, _S.HALF_CLOSED_LOCAL, _In.RECV_HEADERS): _S.HALF_CLOSED_LOCAL,
    (Role.CLIENT, _S.HALF_CLOSED_LOCAL, _In.RECV_DATA): _S.HALF_CLOSED_LOCAL,
    (Role.CLIENT, _S.HALF_CLOSED_LOCAL, _In.RECV_TRAILERS): _S.CLOSED,
    # server
    (Role.SERVER, _S.OPEN, _In.RECV_DATA): _S.OPEN,
    (Role.SERVER, _S.OPEN, _In.RECV_END_STREAM): _S.HALF_CLOSED_REMOTE,
    (Role.SERVER, _S.OPEN, _In.RECV_CANCEL): _S.CLOSED,
    (Role.SERVER, _S.OPEN, _In.SEND_HEADERS): _S.OPEN,
    (Role.SERVER, _S.OPEN, _In.SEND_DATA): _S.OPEN,
    (Role.SERVER, _S.OPEN, _In.SEND_TRAILERS): _S.CLOSED,
    (Role.SERVER, _S.HALF_CLOSED_REMOTE, _In.RECV_CANCEL): _S.CLOSED,
    (Role.SERVER, _S.HALF_CLOSED_REMOTE, _In.SEND_HEADERS): _S.HALF_CLOSED_REMOTE,
    (Role.SERVER, _S.HALF_CLOSED_REMOTE, _In.SEND_DATA): _S.HALF_CLOSED_REMOTE,
    (Role.SERVER, _S.HALF_CLOSED_REMOTE, _In.SEND_TRAILERS): _S.CLOSED,
}

# --- The preface -------------------------------------------------------------------------------
PREFACE_MAGIC = b"TRPC"
#: (major, minor).  Peers with another major version cannot talk; minor versions only add
#: optional things that an older peer can ignore.
PROTOCOL_VERSION = (1, 0)
#: magic, major, minor, reserved flags, max frame size, max message size, stream window,
#: connection window, max concurrent streams.  28 bytes, big-endian.
PREFACE = struct.Struct(">4sBBHIIIII")

# --- Limits (each endpoint announces its own in its preface) -----------------------------------
#: Largest message (one encoded CBOR item) accepted.  4 MiB, as in gRPC: large enough for
#: ordinary payloads, small enough that one call cannot make a server buffer much.  Checked as
#: DATA arrives, before the rest of an oversized message is buffered.
DEFAULT_MAX_MESSAGE_SIZE = 4 << 20
#: Initial per-stream credit: how many DATA bytes a peer may send on a stream before the
#: application here consumes some.  2 MiB: a 1 MiB message (and its CBOR head) fits with room
#: for the next, so messages of that size flow without waiting a round trip for credit, while
#: what one stream can make us buffer stays bounded.
DEFAULT_STREAM_WINDOW = 2 << 20
#: Initial per-connection credit.  trpc returns it as soon as bytes are handed to a stream, so
#: it bounds the bytes in flight, not what is buffered (the stream windows and the stream count
#: bound that); 16 MiB lets many streams run at full speed together.
DEFAULT_CONNECTION_WINDOW = 16 << 20
#: Calls one client may have running at once on one connection, announced in the server's
#: preface: trpc's client queues further calls until one ends; a client that opens more anyway
#: has them refused with RESOURCE_EXHAUSTED.  So a flood of streams costs the server a bounded
#: amount of memory (streams x (stream window + max message size) at the very most).
DEFAULT_MAX_CONCURRENT_STREAMS = 100
#: Largest HEADERS / TRAILERS / CANCEL / GOAWAY payload (the CBOR map with method, metadata,
#: status...).  64 KiB: metadata is for small things; bulk belongs in messages.
MAX_HEADERS_SIZE = 64 << 10
_MAX_WINDOW = (1 << 31) - 1
#: Methods whose encoded name a client connection keeps (a bound, for clients that make up
#: method names); 1024 covers any real service.
_METHOD_CACHE_SIZE = 1024
_MAX_STREAM_ID = (1 << 32) - 1

# CBOR map keys of the control payloads (small integers: compact, and new keys can be added
# without breaking old readers, which ignore keys they do not know).
_H_METHOD, _H_TIMEOUT, _H_METADATA = 1, 2, 3
_T_STATUS, _T_MESSAGE, _T_DETAILS, _T_METADATA = 1, 2, 3, 4
_C_REASON, _C_MESSAGE = 1, 2
_G_LAST_STREAM, _G_STATUS, _G_MESSAGE = 1, 2, 3

_pack_header = HEADER.pack
_DATA = FrameType.DATA.value
#: TRAILERS for a plain OK, ``{1: 0}``: most calls end with exactly these bytes.
_OK_TRAILERS = cbor2.dumps({_T_STATUS: 0})


def _frame_run_py(payloads: list, stream_id: int, credit: int, max_size: int) -> tuple[bytes, int, int]:
    """The first payloads whose total fits in ``credit``, as DATA frames of ``stream_id`` in one
    buffer: ``(frames, how many payloads, their total size)``.  Every payload must be bytes of
    1 to ``max_size`` bytes.  The pure-Python twin of ``frame_run`` in ``csrc/speedups.c``."""
    parts = []
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
            parts += (_pack_header(size, _DATA, 0, stream_id), payload)
        else:
            fits = False
    return b"".join(parts), count, total


_frame_run = _frame_run_py if speedups is None else speedups.frame_run
_END_STREAM = Flags.END_STREAM.value
_MORE = Flags.MORE.value


#: A received message that arrives as a head of at most _HEAD_PART bytes and a body of at least
#: _BODY_PART bytes is handed on as [head, body] instead of being joined: a large byte string and
#: its CBOR head (9 bytes at most; 7 for call arguments), sent as two frames by send_message.
_HEAD_PART = 16
_BODY_PART = 64 * 1024


def message_size(payload: bytes | list) -> int:
    """The size of an encoded message given as bytes or as a list of parts."""
    if type(payload) is list:
        return sum(map(len, payload))
    return len(payload)


def _parse_simple_headers(payload: bytes) -> tuple[str, int | None] | None:
    """Decode a HEADERS map of the two shapes trpc's client sends without metadata,
    ``{1: method}`` and ``{1: method, 2: timeout_us}``, by hand (the method name up to 255
    UTF-8 bytes, the timeout any unsigned integer); None for anything else, which then goes
    through cbor2 and the full checks.  One of these arrives with every call."""
    if len(payload) < 3 or payload[1] != 1:
        return None
    pairs = payload[0]
    if pairs != 0xA1 and pairs != 0xA2:
        return None
    head = payload[2]
    if 0x60 <= head <= 0x77:
        start, end = 3, 3 + head - 0x60
    elif head == 0x78 and len(payload) > 3:
        start, end = 4, 4 + payload[3]
    else:
        return None
    try:
        method = payload[start:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if pairs == 0xA1:
        return (method, None) if end == len(payload) else None
    if len(payload) < end + 2 or payload[end] != 2:
        return None
    head = payload[end + 1]
    if head <= 0x17:
        size, timeout_us = 0, head
    elif 0x18 <= head <= 0x1B:
        size = 1 << (head - 0x18)
        timeout_us = int.from_bytes(payload[end + 2 : end + 2 + size], "big")
    else:
        return None
    if end + 2 + size != len(payload):
        return None
    return method, timeout_us


class _Stream:
    """Per-stream bookkeeping.  Plain slots: one is created per call."""

    __slots__ = (
        "id",
        "state",
        "send_window",
        "pending",
        "batch",
        "response_started",
        "recv_parts",
        "recv_partial",
        "recv_held",
        "recv_granted",
    )

    def __init__(self, stream_id: int, state: StreamState, send_window: int, recv_window: int):
        self.id = stream_id
        self.state = state
        self.send_window = send_window
        #: Outgoing items waiting for credit: [memoryview, flags] for data, bytes for a frame
        #: (TRAILERS) that must follow the data.
        self.pending: deque | None = None
        #: Small messages queued by open_batch()'s caller, not yet framed (None: no batch).
        self.batch: list[bytes] | None = None
        #: Response headers or a response message went by: headers may no longer be sent.
        self.response_started = False
        #: Chunks of a message still arriving (MORE flag), and their total size.
        self.recv_parts: list[bytes] | None = None
        self.recv_partial = 0
        #: Bytes of complete messages handed out but not yet consumed, and the credit the peer
        #: still holds for this stream.
        self.recv_held = 0
        self.recv_granted = recv_window


def _validate_metadata(metadata: Any, *, remote: bool) -> dict:
    error = RemoteProtocolError if remote else LocalProtocolError
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise error(f"metadata must be a map, not {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise error(f"metadata keys must be text, not {type(key).__name__}")
        if not isinstance(value, (str, bytes)):
            raise error(f"metadata value for {key!r} must be text or bytes")
    return metadata


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

    Call :meth:`initiate` first; it queues the preface.
    """

    def __init__(
        self,
        role: Role | str,
        *,
        framer: type | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        connection_window: int = DEFAULT_CONNECTION_WINDOW,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
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
            if not 1024 <= value <= _MAX_WINDOW:
                raise ValueError(f"{name} must be in [1024, {_MAX_WINDOW}]")
        if max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        self.max_frame_size = max_frame_size
        self.max_message_size = max_message_size
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.max_concurrent_streams = max_concurrent_streams
        self._framer = (framer or _framer.get_framer())(max_frame_size)

        self._out: list[bytes] = []
        self._streams: dict[int, _Stream] = {}
        #: Encoded ``1: method`` pairs of the HEADERS map, by method (see _headers_payload).
        self._method_heads: dict[str, bytes] = {}
        #: Highest stream id opened so far (by the client).  Lower ids not in _streams are closed.
        self._last_stream_id = 0
        self._preface_buf = b""
        self.peer_preface: PrefaceReceived | None = None
        # What the peer accepts; until its preface arrives, assume the protocol's minimums.
        self._peer_max_frame = MIN_FRAME_SIZE_LIMIT
        self.peer_max_message_size = MIN_FRAME_SIZE_LIMIT
        self._peer_stream_window = 0
        self._send_window = 0
        #: How many calls the server runs at once on this connection; a client opens no more.
        self.peer_max_concurrent_streams = 1
        #: The connection credit the peer granted in its preface: a bound on the DATA we queue.
        self.peer_connection_window = 0
        #: The largest message send_message's fast path may put in one frame (the smaller of
        #: the peer's frame and message limits).
        self._peer_fast_limit = 0
        #: Streams with a batch (open_batch), framed whenever output is collected.
        self._batching: dict[int, _Stream] = {}
        #: Connection credit the peer still holds for sending to us, and credit earned back
        #: but not yet announced (announced in batches of half the window).
        self._recv_granted = connection_window
        self._recv_unannounced = 0
        self._goaway_sent = False
        self.goaway_received: GoAwayReceived | None = None
        self._closed = False
        #: Frames received but not processed yet (``receive_data(..., max_frames=N)``), in
        #: order, as ``Framer.feed_grouped`` gives them.  At most one received chunk's frames
        #: if the caller takes them all before it reads again, as the Trio layer does.
        self._backlog: list = []
        #: Streams whose queued output waits for connection credit, in arrival order.
        self._blocked: dict[int, None] = {}

        #: Stream states in which the table lets a DATA frame in, or out (the fast paths check
        #: these instead of looking the transition up).
        self._recv_data_states = frozenset(
            state for (role, state, event) in _TRANSITIONS if role is self.role and event is _In.RECV_DATA
        )
        self._send_data_states = frozenset(
            state for (role, state, event) in _TRANSITIONS if role is self.role and event is _In.SEND_DATA
        )
        #: state -> state after a DATA frame with END_STREAM, where the table allows both (the
        #: server's fast path for a request's last message).
        self._recv_end_states = {
            state: _TRANSITIONS[self.role, state, _In.RECV_END_STREAM]
            for state in self._recv_data_states
            if (self.role, state, _In.RECV_END_STREAM) in _TRANSITIONS
        }
        self._recv_trailers_states = frozenset(
            state
            for (role, state, event), new in _TRANSITIONS.items()
            if role is self.role and event is _In.RECV_TRAILERS and new is StreamState.CLOSED
        )
        self._handlers: dict[int, Callable[[int, int, bytes, list], None]] = {
            FrameType.HEADERS: self._recv_headers,
            FrameType.TRAILERS: self._recv_trailers,
            FrameType.CANCEL: self._recv_cancel,
            FrameType.WINDOW_UPDATE: self._recv_window_update,
            FrameType.PING: self._recv_ping,
            FrameType.GOAWAY: self._recv_goaway,
        }

    # ------------------------------------------------------------------ introspection
    @property
    def framer_name(self) -> str:
        return self._framer.name

    @property
    def open_streams(self) -> int:
        """Streams not yet closed (a server's running calls, a client's calls in flight)."""
        return len(self._streams)

    @property
    def last_stream_id(self) -> int:
        return self._last_stream_id

    def stream_state(self, stream_id: int) -> StreamState:
        """The state of a stream; CLOSED for one that ended (or never existed)."""
        stream = self._streams.get(stream_id)
        return stream.state if stream is not None else StreamState.CLOSED

    def send_buffered(self, stream_id: int) -> int:
        """How many bytes of this stream's output are waiting for credit (0 if none)."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.pending:
            return 0
        return sum(len(item[0]) for item in stream.pending if isinstance(item, list))

    @property
    def accepting_calls(self) -> bool:
        """False once either side has sent GOAWAY or the connection has failed."""
        return not (self._goaway_sent or self.goaway_received or self._closed)

    # ------------------------------------------------------------------ output
    def initiate(self) -> None:
        """Queue our preface.  Call once, first."""
        self._out.append(
            PREFACE.pack(
                PREFACE_MAGIC,
                PROTOCOL_VERSION[0],
                PROTOCOL_VERSION[1],
                0,
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

    def data_to_send_list(self) -> list:
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

    # ------------------------------------------------------------------ batches
    def open_batch(self, stream_id: int) -> list:
        """A list on which to queue this stream's small messages with ``list.append``: no call
        into the protocol per message, for a sender of many small messages (a streaming
        handler).  Returns the same list while the stream lives.

        Each item must be one encoded message, bytes of 1 to :attr:`batch_limit` bytes.  The
        batch is framed, in order, as the stream's next output: when output is collected
        (``data_to_send``, ``data_to_send_list``), at :meth:`flush_batch`, and before
        anything else this stream sends (a message through ``send_message``, the end of the
        stream, trailers).  Credit applies as in ``send_message``: what does not fit waits for
        credit, and ``flush_batch`` tells.  A batch holds what its caller put there since the
        last flush, so the caller bounds it (the server flushes every ``_BATCH_MESSAGES``
        messages of at most ``_BATCH_MESSAGE_SIZE`` bytes).  A stream cancelled or reset drops
        its batch.
        """
        stream = self._local_stream(stream_id)
        if stream.state not in self._send_data_states:
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
        stream = self._streams.get(stream_id)
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

    def _flush_batch(self, stream: _Stream) -> None:
        batch = stream.batch
        if stream.state not in self._send_data_states:
            raise LocalProtocolError(f"stream {stream.id}: a batch left after the stream stopped sending messages")
        if not self._client:
            stream.response_started = True
        # What the credit covers (nothing while older output waits for credit), framed in one
        # buffer, in C when it is built; frame_run also checks every item.
        credit = min(stream.send_window, self._send_window) if stream.pending is None else 0
        try:
            frames, count, size = _frame_run(batch, stream.id, credit, self._peer_fast_limit)
        except (TypeError, ValueError) as exc:
            batch.clear()
            raise LocalProtocolError(f"stream {stream.id}: bad message in a batch: {exc}") from None
        if count:
            stream.send_window -= size
            self._send_window -= size
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

    def _frame(self, ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self._out.append(_pack_header(len(payload), ftype, flags, stream_id))
        if payload:
            self._out.append(payload)

    def _headers_payload(self, method: str, timeout: float | None, metadata: dict | None) -> bytes:
        """The client's HEADERS map, ``{1: method, 2: timeout_us, 3: metadata}``, encoded by
        hand around a per-method cache (the codec for the timeout and metadata), since one goes with every call."""
        head = self._method_heads.get(method)
        if head is None:
            if not isinstance(method, str):
                raise LocalProtocolError(f"a method name is text, not {type(method).__name__}")
            head = b"\x01" + cbor2.dumps(method)
            if len(self._method_heads) < _METHOD_CACHE_SIZE:
                self._method_heads[method] = head
        if timeout is None and not metadata:
            payload = b"\xa1" + head
        else:
            parts = [b"", head]
            if timeout is not None:
                parts += (b"\x02", _dumps(max(0, int(timeout * 1_000_000))))
            if metadata:
                parts += (b"\x03", _dumps(_validate_metadata(metadata, remote=False)))
            parts[0] = bytes([0xA0 + len(parts) // 2])  # a map of 1 to 3 pairs
            payload = b"".join(parts)
        if len(payload) > MAX_HEADERS_SIZE or len(payload) > self._peer_max_frame:
            raise LocalProtocolError(
                f"HEADERS of {len(payload)} bytes exceed the limit "
                f"({min(MAX_HEADERS_SIZE, self._peer_max_frame)}); metadata is too large"
            )
        return payload

    def _control_payload(self, fields: dict) -> bytes:
        payload = _dumps(fields)
        if len(payload) > MAX_HEADERS_SIZE or len(payload) > self._peer_max_frame:
            raise LocalProtocolError(
                f"control payload of {len(payload)} bytes exceeds the limit "
                f"({min(MAX_HEADERS_SIZE, self._peer_max_frame)}); metadata is too large"
            )
        return payload

    def _transition(self, stream: _Stream, event: _In) -> None:
        try:
            stream.state = _TRANSITIONS[self.role, stream.state, event]
        except KeyError:
            error = LocalProtocolError if event.name.startswith("SEND") else RemoteProtocolError
            raise error(
                f"{event.name} is not allowed on stream {stream.id} in state "
                f"{stream.state.value} ({self.role.value})"
            ) from None

    def _local_stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is closed or does not exist")
        return stream

    def _drop_batch(self, stream: _Stream) -> None:
        """The stream sends no more messages: empty its batch and stop framing it.  Reached
        with the batch framed (every way out of a stream's sending frames it first) or dropped
        with the stream (cancelled); whatever is appended to the list later is never sent."""
        if stream.batch is not None:
            stream.batch.clear()
            stream.batch = None
            self._batching.pop(stream.id, None)

    def _forget(self, stream: _Stream) -> None:
        self._drop_batch(stream)
        if stream.pending:
            return  # its last frames still wait for credit; forgotten when they leave
        self._streams.pop(stream.id, None)
        self._blocked.pop(stream.id, None)

    # client
    def open_call(
        self,
        method: str,
        *,
        metadata: dict[str, str | bytes] | None = None,
        timeout: float | None = None,
        end_stream: bool = False,
    ) -> int:
        """Open a call (client); returns its stream id.

        ``timeout`` is the time the caller has left, in seconds; it travels in microseconds.
        """
        if not self._client:
            raise LocalProtocolError("only the client opens calls")
        if not self.accepting_calls:
            raise LocalProtocolError("the connection is going away; it accepts no new calls")
        if len(self._streams) >= self.peer_max_concurrent_streams:
            raise LocalProtocolError(
                f"the server runs at most {self.peer_max_concurrent_streams} calls at once on a connection;"
                " wait for one to end"
            )
        if self._last_stream_id >= _MAX_STREAM_ID:
            raise LocalProtocolError("stream ids are exhausted; open a new connection")
        stream_id = self._last_stream_id + 1
        payload = self._headers_payload(method, timeout, metadata)
        self._last_stream_id = stream_id
        state = StreamState.HALF_CLOSED_LOCAL if end_stream else StreamState.OPEN
        self._streams[stream_id] = _Stream(stream_id, state, self._peer_stream_window, self.stream_window)
        self._frame(FrameType.HEADERS, _END_STREAM if end_stream else 0, stream_id, payload)
        return stream_id

    def open_unary_call(
        self,
        method: str,
        message: bytes | list,
        *,
        metadata: dict[str, str | bytes] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bool]:
        """Open a call and send its one request message, half-closing the stream (client; a
        unary or server-streaming call): HEADERS, then the message with END_STREAM.  Returns
        ``(stream_id, sent)``, ``sent`` as ``send_message`` returns it.  The same as
        ``open_call`` then ``send_message(..., end_stream=True)``, in one step for the common
        case (a message that fits one frame and the credit), since one happens per call."""
        stream_id = self.open_call(method, metadata=metadata, timeout=timeout)
        stream = self._streams[stream_id]
        size = len(message) if type(message) is bytes else 0
        if 0 < size <= stream.send_window and size <= self._send_window and size <= self._peer_fast_limit:
            # A new stream: OPEN, nothing pending; SEND_DATA then SEND_END_STREAM lead to
            # HALF_CLOSED_LOCAL (the table's client rows).
            stream.send_window -= size
            self._send_window -= size
            stream.state = StreamState.HALF_CLOSED_LOCAL
            self._out += (_pack_header(size, _DATA, _END_STREAM, stream_id), message)
            return stream_id, True
        return stream_id, self.send_message(stream_id, message, end_stream=True)

    def send_message(self, stream_id: int, payload: bytes | list, *, end_stream: bool = False) -> bool:
        """Queue one message on a stream; returns True if all of it was framed.

        ``payload`` is the encoded message: bytes, or ``[head, body]`` whose concatenation it
        is (a large byte string and its CBOR head: they go out without being copied into one
        buffer, as two frames).

        False means part of it waits for credit from the peer: the caller should wait for a
        :class:`SendCreditAvailable` event for this stream (``send_buffered()`` tells how much)
        before sending more, so that buffering stays bounded.

        ``end_stream=True`` (client only) half-closes the stream after this message.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is closed or does not exist")
        if stream.batch:
            self._flush_batch(stream)
        parts = type(payload) is list
        size = message_size(payload) if parts else len(payload)
        if (
            not end_stream
            and stream.pending is None
            and stream.state in self._send_data_states
            and 0 < size <= stream.send_window
            and size <= self._send_window
            and size <= self._peer_fast_limit
        ):
            # The fast path: a message that fits in one frame and in the credit, on a stream
            # the table lets send DATA (the same checks as below, without the table lookup).
            stream.send_window -= size
            self._send_window -= size
            if not self._client:
                stream.response_started = True
            out = self._out
            if parts:
                # A message given as [head, body] (a large byte string and its CBOR head) goes
                # as two frames, the head with MORE, so that the receiver gets the body as a
                # frame of its own and can use it as the decoded value without copying it.
                head, body = payload
                out.append(_pack_header(len(head), _DATA, _MORE, stream_id))
                out.append(head)
                out.append(_pack_header(len(body), _DATA, 0, stream_id))
                out.append(body)
            else:
                out.append(_pack_header(size, _DATA, 0, stream_id))
                out.append(payload)
            return True
        if size == 0:
            raise LocalProtocolError("a message is at least one byte long")
        if size > self.peer_max_message_size:
            raise LocalProtocolError(
                f"message of {size} bytes exceeds the peer's limit of {self.peer_max_message_size}"
            )
        self._transition(stream, _In.SEND_DATA)
        if not self._client:
            stream.response_started = True
        flags = 0
        if end_stream:
            self._transition(stream, _In.SEND_END_STREAM)
            flags = _END_STREAM
        if (
            stream.pending is None
            and size <= stream.send_window
            and size <= self._send_window
            and size <= self._peer_max_frame
        ):
            # The fast path: the whole message in one frame (or, given as [head, body], in
            # two: the head with MORE, as in the first fast path).
            stream.send_window -= size
            self._send_window -= size
            out = self._out
            if parts:
                head, body = payload
                out += (_pack_header(len(head), _DATA, _MORE, stream_id), head)
                out += (_pack_header(len(body), _DATA, flags, stream_id), body)
            else:
                out.append(_pack_header(size, _DATA, flags, stream_id))
                out.append(payload)
            return True
        if stream.pending is None:
            stream.pending = deque()
        if parts:
            # The head and the body wait as two pieces of one message (the head's frames
            # carry MORE), so the body is not copied to join them.
            head, body = payload
            stream.pending.append([memoryview(head), _MORE])
            stream.pending.append([memoryview(body), flags])
        else:
            stream.pending.append([memoryview(payload), flags])
        self._flush_stream(stream)
        return not stream.pending

    def end_stream(self, stream_id: int) -> None:
        """Half-close (client): no more messages on this stream."""
        stream = self._local_stream(stream_id)
        if stream.batch:
            self._flush_batch(stream)
        self._transition(stream, _In.SEND_END_STREAM)
        self._drop_batch(stream)
        if stream.pending:
            stream.pending.append([memoryview(b""), _END_STREAM])
        else:
            self._out.append(_pack_header(0, _DATA, _END_STREAM, stream_id))

    def _flush_stream(self, stream: _Stream) -> None:
        """Frame as much of the stream's pending output as credit allows."""
        pending = stream.pending
        out = self._out
        while pending:
            item = pending[0]
            if isinstance(item, bytes):  # a control frame queued behind the data (TRAILERS)
                out.append(item)
                pending.popleft()
                continue
            view, flags = item
            if not view:  # a bare END_STREAM
                out.append(_pack_header(0, _DATA, flags, stream.id))
                pending.popleft()
                continue
            room = min(stream.send_window, self._send_window, self._peer_max_frame)
            if room <= 0:
                if self._send_window <= 0:
                    self._blocked[stream.id] = None
                return
            chunk = view[:room]
            size = len(chunk)
            rest = view[size:]
            stream.send_window -= size
            self._send_window -= size
            # Slices of the message itself (a memoryview): no copy until the write.
            if rest:
                out.append(_pack_header(size, _DATA, _MORE, stream.id))
                out.append(chunk)
                item[0] = rest
            else:
                out.append(_pack_header(size, _DATA, flags, stream.id))
                out.append(chunk)
                pending.popleft()
        stream.pending = None
        if stream.state is StreamState.CLOSED:
            self._forget(stream)

    # server
    def send_headers(self, stream_id: int, metadata: dict[str, str | bytes] | None = None) -> None:
        """Send response headers (server), at most once, before any message."""
        if self._client:
            raise LocalProtocolError("only the server sends response headers")
        stream = self._local_stream(stream_id)
        if stream.batch:
            self._flush_batch(stream)
        if stream.response_started:
            raise LocalProtocolError("response headers go once, before any response message")
        self._transition(stream, _In.SEND_HEADERS)
        stream.response_started = True
        fields = {_H_METADATA: _validate_metadata(metadata, remote=False)} if metadata else {}
        self._frame(FrameType.HEADERS, 0, stream_id, self._control_payload(fields))

    def send_trailers(
        self,
        stream_id: int,
        status: Status,
        message: str = "",
        details: Any = None,
        metadata: dict[str, str | bytes] | None = None,
    ) -> None:
        """End the call with a status (server).  Queued after any data still waiting for credit."""
        if self._client:
            raise LocalProtocolError("only the server sends trailers")
        stream = self._local_stream(stream_id)
        if stream.batch:
            self._flush_batch(stream)
        self._transition(stream, _In.SEND_TRAILERS)
        self._drop_batch(stream)
        if status == 0 and not message and details is None and not metadata:
            payload = _OK_TRAILERS  # the common case, encoded once
        else:
            fields: dict[int, Any] = {_T_STATUS: int(status)}
            if message:
                fields[_T_MESSAGE] = message
            if details is not None:
                fields[_T_DETAILS] = details
            if metadata:
                fields[_T_METADATA] = _validate_metadata(metadata, remote=False)
            try:
                payload = self._control_payload(fields)
            except (LocalProtocolError, cbor2.CBOREncodeError) as exc:
                # The status must reach the caller even when the details cannot: say why instead.
                payload = cbor2.dumps(
                    {_T_STATUS: int(Status.INTERNAL), _T_MESSAGE: f"trailers could not be sent: {exc}"}
                )
        frame = _pack_header(len(payload), FrameType.TRAILERS, 0, stream_id) + payload
        if stream.pending:
            stream.pending.append(frame)
        else:
            self._out.append(frame)
            self._forget(stream)

    # both
    def cancel(self, stream_id: int, reason: Status = Status.CANCELLED, message: str = "") -> None:
        """Cancel a call (client); queued output of the stream is dropped.  No-op if it ended."""
        if not self._client:
            raise LocalProtocolError("only the client cancels; a server ends a call with trailers")
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self._transition(stream, _In.SEND_CANCEL)
        stream.pending = None
        fields: dict[int, Any] = {_C_REASON: int(reason)}
        if message:
            fields[_C_MESSAGE] = message
        self._frame(FrameType.CANCEL, 0, stream_id, self._control_payload(fields))
        self._forget(stream)

    def consumed(self, stream_id: int, size: int) -> None:
        """The application took a message of ``size`` bytes from this stream: return credit."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.recv_held -= size
        self._maybe_grant(stream)

    def _maybe_grant(self, stream: _Stream) -> None:
        # A message still arriving counts against the window only while complete messages wait
        # too; alone it may grow (up to max_message_size), or a message larger than the window
        # could never complete.
        charged = stream.recv_held + (stream.recv_partial if stream.recv_held else 0)
        want = self.stream_window - stream.recv_granted - charged
        if want >= self.stream_window >> 1 and stream.state is not StreamState.CLOSED:
            stream.recv_granted += want
            self._out.append(_pack_header(4, FrameType.WINDOW_UPDATE, 0, stream.id))
            self._out.append(want.to_bytes(4, "big"))

    def ping(self, payload: bytes) -> None:
        """Send a ping with an 8-byte payload; the peer echoes it in an ACK."""
        if len(payload) != 8:
            raise LocalProtocolError("a ping payload is exactly 8 bytes")
        self._frame(FrameType.PING, 0, 0, payload)

    def goaway(self, status: Status = Status.OK, message: str = "") -> None:
        """Tell the peer we are going away; calls up to the last opened one still complete."""
        if self._goaway_sent:
            return
        self._goaway_sent = True
        fields: dict[int, Any] = {_G_LAST_STREAM: self._last_stream_id, _G_STATUS: int(status)}
        if message:
            fields[_G_MESSAGE] = message[:1024]
        self._frame(FrameType.GOAWAY, 0, 0, cbor2.dumps(fields))

    # ------------------------------------------------------------------ input
    def receive_data(self, data: bytes, *, max_frames: int | None = None) -> list[Event]:
        """Process bytes received from the peer; ``b""`` means the peer closed its side.

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
        try:
            if self._closed:
                raise RemoteProtocolError("the connection has already failed")
            if self.peer_preface is None:
                if not data:
                    if self._preface_buf:
                        raise RemoteProtocolError("the peer closed the connection inside the preface")
                    events.append(ConnectionClosed())
                    return events
                data = self._receive_preface(data, events)
                if not data:
                    return events
            elif not data:
                self._take_backlog(None, events)
                self._framer.close()
                events.append(ConnectionClosed())
                return events
            try:
                groups = self._framer.feed_grouped(data)
            except RemoteProtocolError as exc:
                self._take_backlog(None, events)
                self._process_frames(getattr(exc, "frames", ()), events)
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
            if self._closed:
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
        exc.events = events
        self._backlog = []
        if not self._closed:
            self._closed = True
            self._goaway_sent = False
            self.goaway(exc.error_code, f"protocol error: {exc}")

    def _receive_preface(self, data: bytes, events: list[Event]) -> bytes:
        buf = self._preface_buf + bytes(data)
        size = PREFACE.size
        # Check the magic as soon as it could be wrong, not only once the whole preface is here.
        if buf[: len(PREFACE_MAGIC)] != PREFACE_MAGIC[: len(buf)]:
            raise RemoteProtocolError(f"not a trpc peer: the connection starts with {buf[:8]!r}")
        if len(buf) < size:
            self._preface_buf = buf
            return b""
        (_magic, major, minor, _flags, max_frame, max_message, stream_window, conn_window,
         max_streams) = PREFACE.unpack_from(buf)
        if major != PROTOCOL_VERSION[0]:
            error = RemoteProtocolError(
                f"the peer speaks trpc protocol {major}.{minor}; this side speaks "
                f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}"
            )
            error.error_code = Status.UNIMPLEMENTED
            raise error
        if not MIN_FRAME_SIZE_LIMIT <= max_frame <= MAX_FRAME_SIZE_LIMIT:
            raise RemoteProtocolError(f"the peer's max frame size {max_frame} is out of range")
        for name, value in (("max message size", max_message), ("stream window", stream_window),
                            ("connection window", conn_window), ("max concurrent streams", max_streams)):
            if not 1 <= value <= _MAX_WINDOW:
                raise RemoteProtocolError(f"the peer's {name} {value} is out of range")
        self._preface_buf = b""
        self._peer_max_frame = max_frame
        self.peer_max_message_size = max_message
        self._peer_stream_window = stream_window
        self._send_window = conn_window
        self.peer_max_concurrent_streams = max_streams
        self.peer_connection_window = conn_window
        self._peer_fast_limit = min(max_frame, max_message)
        # Streams opened before the preface arrived had no credit yet: give them theirs now.
        for stream in list(self._streams.values()):
            stream.send_window += stream_window
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
        return buf[size:]

    def _process_frames(self, groups, events: list[Event]) -> None:
        """Process what ``Framer.feed_grouped`` returned: frames, with each run of
        consecutive flag-less DATA frames on one stream given as one entry."""
        streams = self._streams
        handlers = self._handlers
        data_states = self._recv_data_states
        end_states = self._recv_end_states
        max_message = self.max_message_size
        client = self._client
        # The fast path: a run of DATA frames each holding one whole message, on a stream that
        # may receive them, within every limit (the framer found the run in C, so a stream of
        # small messages costs no Python per frame here).  Consecutive runs for the same
        # stream become one event, and their connection credit is settled once.  Anything
        # else takes the general path, frame by frame, after the batch so far has been
        # emitted, so events keep the frames' order.
        batch: list[bytes] | None = None
        batch_stream: _Stream | None = None
        received = 0
        for ftype, flags, stream_id, payloads in groups:
            if ftype == _DATA and not flags:
                stream = streams.get(stream_id)
                if stream is not None and stream.recv_parts is None and stream.state in data_states:
                    if len(payloads) == 1:
                        size = len(payloads[0])
                        fits = 0 < size <= max_message
                    else:
                        size = sum(map(len, payloads))
                        fits = all(payloads) and max(map(len, payloads)) <= max_message
                    if fits and size <= stream.recv_granted and received + size <= self._recv_granted:
                        stream.recv_granted -= size
                        stream.recv_held += size
                        received += size
                        if client:
                            stream.response_started = True
                        if stream is batch_stream:
                            batch += payloads
                        else:
                            if batch is not None:
                                events.append(MessagesReceived(stream_id=batch_stream.id, payloads=batch))
                            batch_stream = stream
                            batch = payloads  # a fresh list per entry: ours to keep
                        continue
            elif ftype == _DATA and flags == _END_STREAM and len(payloads) == 1:
                # A request's one message with the half-close (every unary call has one).
                stream = streams.get(stream_id)
                if stream is not None and stream.recv_parts is None:
                    after = end_states.get(stream.state)
                    payload = payloads[0]
                    size = len(payload)
                    if (
                        after is not None
                        and 0 < size <= max_message
                        and size <= stream.recv_granted
                        and received + size <= self._recv_granted
                    ):
                        if batch is not None:
                            events.append(MessagesReceived(stream_id=batch_stream.id, payloads=batch))
                            batch = batch_stream = None
                        stream.recv_granted -= size
                        stream.recv_held += size
                        received += size
                        stream.state = after
                        events.append(MessagesReceived(stream_id=stream_id, payloads=payloads))
                        events.append(StreamEnded(stream_id=stream_id))
                        continue
            if batch is not None:
                events.append(MessagesReceived(stream_id=batch_stream.id, payloads=batch))
                batch = batch_stream = None
            if received:
                self._take_connection_credit(received)
                received = 0
            for payload in payloads:
                if ftype == _DATA:
                    stream = streams.get(stream_id)
                    if stream is None:
                        self._recv_data_unknown(stream_id, len(payload))
                        continue
                    self._recv_data(stream, flags, payload, events)
                else:
                    handler = handlers.get(ftype)
                    if handler is None:
                        raise RemoteProtocolError(f"unknown frame type 0x{ftype:02x}")
                    handler(flags, stream_id, payload, events)
        if batch is not None:
            events.append(MessagesReceived(stream_id=batch_stream.id, payloads=batch))
        if received:
            self._take_connection_credit(received)

    def _recv_data_unknown(self, stream_id: int, size: int) -> None:
        if stream_id == 0 or stream_id > self._last_stream_id:
            raise RemoteProtocolError(f"DATA frame for stream {stream_id}, which was never opened")
        # A stream that closed while the peer was still sending: drop the bytes, but give back
        # their connection credit, which the peer spent.
        self._take_connection_credit(size)

    def _take_connection_credit(self, size: int) -> None:
        if size > self._recv_granted:
            error = RemoteProtocolError(
                f"the peer sent {size} bytes with only {self._recv_granted} bytes of connection credit"
            )
            error.error_code = Status.RESOURCE_EXHAUSTED
            raise error
        self._recv_granted -= size
        self._recv_unannounced += size
        if self._recv_unannounced >= self.connection_window >> 1:
            grant = self._recv_unannounced
            self._recv_unannounced = 0
            self._recv_granted += grant
            self._out.append(_pack_header(4, FrameType.WINDOW_UPDATE, 0, 0))
            self._out.append(grant.to_bytes(4, "big"))

    def _recv_data(self, stream: _Stream, flags: int, payload: bytes, events: list[Event]) -> None:
        size = len(payload)
        if flags & ~(_END_STREAM | _MORE):
            raise RemoteProtocolError(f"DATA frame with unknown flags 0x{flags:02x}")
        if size:
            self._transition(stream, _In.RECV_DATA)
            if size > stream.recv_granted:
                error = RemoteProtocolError(
                    f"the peer sent {size} bytes on stream {stream.id} with only "
                    f"{stream.recv_granted} bytes of credit"
                )
                error.error_code = Status.RESOURCE_EXHAUSTED
                raise error
            stream.recv_granted -= size
            self._take_connection_credit(size)
            if self._client:
                stream.response_started = True
            if flags & _MORE:
                if flags & _END_STREAM:
                    raise RemoteProtocolError("a DATA frame cannot both continue a message and end the stream")
                parts = stream.recv_parts
                if parts is None:
                    parts = stream.recv_parts = []
                parts.append(payload)
                stream.recv_partial += size
                if stream.recv_partial > self.max_message_size:
                    self._message_too_large(stream, events)
                    return
                self._maybe_grant(stream)
                return
            total = size
            if stream.recv_parts is not None:
                parts = stream.recv_parts
                parts.append(payload)
                total = stream.recv_partial + size
                stream.recv_parts = None
                stream.recv_partial = 0
                if total > self.max_message_size:
                    self._message_too_large(stream, events)
                    return
                if len(parts) == 2 and len(parts[0]) <= _HEAD_PART and size >= _BODY_PART:
                    # A small head then a large body (see send_message): the message stays
                    # [head, body], so that the body need not be copied (see _codec.decode).
                    payload = parts
                else:
                    payload = b"".join(parts)
            elif size > self.max_message_size:
                self._message_too_large(stream, events)
                return
            stream.recv_held += total
            events.append(MessagesReceived(stream_id=stream.id, payloads=[payload]))
        elif flags != _END_STREAM:
            raise RemoteProtocolError("an empty DATA frame must carry END_STREAM (and only it)")
        elif stream.recv_parts is not None:
            raise RemoteProtocolError("END_STREAM in the middle of a message")
        if flags & _END_STREAM:
            if self._client:
                raise RemoteProtocolError("the server ends its direction with TRAILERS, not END_STREAM")
            self._transition(stream, _In.RECV_END_STREAM)
            events.append(StreamEnded(stream_id=stream.id))

    def _message_too_large(self, stream: _Stream, events: list[Event]) -> None:
        """A message over our limit: end that call (not the connection) with RESOURCE_EXHAUSTED."""
        stream.recv_parts = None
        stream.recv_partial = 0
        text = f"message larger than the limit of {self.max_message_size} bytes"
        if self._client:
            self.cancel(stream.id, Status.RESOURCE_EXHAUSTED, "response " + text)
            events.append(CallEnded(stream_id=stream.id, status=Status.RESOURCE_EXHAUSTED, message="response " + text))
        else:
            self.send_trailers(stream.id, Status.RESOURCE_EXHAUSTED, "request " + text)
            events.append(CallCancelled(stream_id=stream.id, reason=Status.RESOURCE_EXHAUSTED, message="request " + text))

    def _decode_control(self, kind: str, payload: bytes) -> dict:
        if len(payload) > MAX_HEADERS_SIZE:
            raise RemoteProtocolError(f"{kind} payload of {len(payload)} bytes exceeds {MAX_HEADERS_SIZE}")
        try:
            fields = _loads(payload)
        except Exception as exc:  # cbor2 raises several types for malformed input
            raise RemoteProtocolError(f"{kind} payload is not valid CBOR: {exc}") from None
        if not isinstance(fields, dict):
            raise RemoteProtocolError(f"{kind} payload must be a CBOR map")
        return fields

    def _recv_headers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id == 0:
            raise RemoteProtocolError("HEADERS frame on stream 0")
        if flags & ~_END_STREAM:
            raise RemoteProtocolError(f"HEADERS frame with unknown flags 0x{flags:02x}")
        if not self._client:
            parsed = _parse_simple_headers(payload)
            if parsed is not None:  # the common shapes, without cbor2 (see the function)
                method, timeout_us = parsed
                self._open_remote_call(flags, stream_id, method, timeout_us, {}, events)
                return
        fields = self._decode_control("HEADERS", payload)
        metadata = _validate_metadata(fields.get(_H_METADATA), remote=True)
        if self._client:
            stream = self._streams.get(stream_id)
            if stream is None:
                if stream_id > self._last_stream_id:
                    raise RemoteProtocolError(f"HEADERS frame for stream {stream_id}, which was never opened")
                return
            if stream.response_started or flags:
                raise RemoteProtocolError("response headers come at most once, before any message")
            self._transition(stream, _In.RECV_HEADERS)
            stream.response_started = True
            events.append(HeadersReceived(stream_id=stream_id, metadata=metadata))
            return
        # server: a new call
        method = fields.get(_H_METHOD)
        if not isinstance(method, str):
            raise RemoteProtocolError("HEADERS frame without a method name")
        timeout_us = fields.get(_H_TIMEOUT)
        if timeout_us is not None and (not isinstance(timeout_us, int) or timeout_us < 0):
            raise RemoteProtocolError("the timeout must be a non-negative integer (microseconds)")
        self._open_remote_call(flags, stream_id, method, timeout_us, metadata, events)

    def _open_remote_call(
        self, flags: int, stream_id: int, method: str, timeout_us: int | None, metadata: dict, events: list[Event]
    ) -> None:
        """A client's HEADERS, decoded: open the stream (server side)."""
        if stream_id <= self._last_stream_id:
            raise RemoteProtocolError(
                f"HEADERS frame reuses stream id {stream_id} (ids must increase; last was {self._last_stream_id})"
            )
        self._last_stream_id = stream_id
        end = bool(flags & _END_STREAM)
        state = StreamState.HALF_CLOSED_REMOTE if end else StreamState.OPEN
        stream = _Stream(stream_id, state, self._peer_stream_window, self.stream_window)
        self._streams[stream_id] = stream
        if self._goaway_sent:
            self.send_trailers(stream_id, Status.UNAVAILABLE, "the server is shutting down")
            return
        if len(self._streams) > self.max_concurrent_streams:
            self.send_trailers(
                stream_id,
                Status.RESOURCE_EXHAUSTED,
                f"too many concurrent calls on this connection (limit {self.max_concurrent_streams})",
            )
            return
        events.append(
            CallOpened(
                stream_id=stream_id,
                method=method,
                metadata=metadata,
                timeout=None if timeout_us is None else timeout_us / 1_000_000,
                end_stream=end,
            )
        )

    def _recv_trailers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not self._client:
            raise RemoteProtocolError("a client cannot send TRAILERS")
        stream = self._recv_stream("TRAILERS", stream_id, flags)
        if stream is None:
            return
        if payload == _OK_TRAILERS and stream.recv_parts is None and stream.state in self._recv_trailers_states:
            # A plain OK: the transition the general path below makes, without decoding.
            stream.state = StreamState.CLOSED
            stream.pending = None
            self._forget(stream)
            events.append(CallEnded(stream_id=stream_id, status=Status.OK))
            return
        fields = self._decode_control("TRAILERS", payload)
        code = fields.get(_T_STATUS)
        if not isinstance(code, int):
            raise RemoteProtocolError("TRAILERS without a status code")
        message = fields.get(_T_MESSAGE, "")
        if not isinstance(message, str):
            raise RemoteProtocolError("the status message must be text")
        if stream.recv_parts is not None:
            raise RemoteProtocolError("TRAILERS in the middle of a message")
        metadata = _validate_metadata(fields.get(_T_METADATA), remote=True)
        self._transition(stream, _In.RECV_TRAILERS)
        stream.pending = None  # the call is over: nothing more of ours needs to go out
        self._forget(stream)
        events.append(
            CallEnded(
                stream_id=stream_id,
                status=Status.from_wire(code),
                message=message,
                details=fields.get(_T_DETAILS),
                metadata=metadata,
            )
        )

    def _recv_stream(self, kind: str, stream_id: int, flags: int) -> _Stream | None:
        """The open stream a stream-level frame is for, or None if it has closed already."""
        if flags:
            raise RemoteProtocolError(f"{kind} frame with unknown flags 0x{flags:02x}")
        if stream_id == 0:
            raise RemoteProtocolError(f"{kind} frame on stream 0")
        stream = self._streams.get(stream_id)
        if stream is None and stream_id > self._last_stream_id:
            raise RemoteProtocolError(f"{kind} frame for stream {stream_id}, which was never opened")
        return stream

    def _recv_cancel(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if self._client:
            raise RemoteProtocolError("a server cannot send CANCEL; it ends calls with TRAILERS")
        stream = self._recv_stream("CANCEL", stream_id, flags)
        if stream is None:
            return
        fields = self._decode_control("CANCEL", payload)
        reason = fields.get(_C_REASON, Status.CANCELLED)
        message = fields.get(_C_MESSAGE, "")
        if not isinstance(reason, int) or not isinstance(message, str):
            raise RemoteProtocolError("malformed CANCEL payload")
        self._transition(stream, _In.RECV_CANCEL)
        stream.pending = None
        self._forget(stream)
        events.append(CallCancelled(stream_id=stream_id, reason=Status.from_wire(reason), message=message))

    def _recv_window_update(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if flags:
            raise RemoteProtocolError(f"WINDOW_UPDATE frame with unknown flags 0x{flags:02x}")
        if len(payload) != 4:
            raise RemoteProtocolError("a WINDOW_UPDATE payload is exactly 4 bytes")
        increment = int.from_bytes(payload, "big")
        if increment == 0:
            raise RemoteProtocolError("a WINDOW_UPDATE increment of 0")
        if stream_id == 0:
            self._send_window += increment
            if self._send_window > _MAX_WINDOW:
                raise RemoteProtocolError("connection credit above 2^31-1")
            blocked = list(self._blocked)
            self._blocked.clear()
            for sid in blocked:
                stream = self._streams.get(sid)
                if stream is not None and stream.pending:
                    self._flush_stream(stream)
                    if not stream.pending:
                        events.append(SendCreditAvailable(stream_id=sid))
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id > self._last_stream_id:
                raise RemoteProtocolError(f"WINDOW_UPDATE for stream {stream_id}, which was never opened")
            return
        stream.send_window += increment
        if stream.send_window > _MAX_WINDOW:
            raise RemoteProtocolError(f"stream {stream_id} credit above 2^31-1")
        if stream.pending:
            self._flush_stream(stream)
            if not stream.pending:
                events.append(SendCreditAvailable(stream_id=stream_id))

    def _recv_ping(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id != 0 or len(payload) != 8 or flags & ~Flags.ACK:
            raise RemoteProtocolError("malformed PING frame (stream 0, 8 bytes, flag ACK only)")
        if flags & Flags.ACK:
            events.append(PingAcknowledged(payload=payload))
        else:
            self._frame(FrameType.PING, Flags.ACK, 0, payload)
            events.append(PingReceived(payload=payload))

    def _recv_goaway(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id != 0 or flags:
            raise RemoteProtocolError("malformed GOAWAY frame (stream 0, no flags)")
        fields = self._decode_control("GOAWAY", payload)
        last = fields.get(_G_LAST_STREAM, 0)
        code = fields.get(_G_STATUS, 0)
        message = fields.get(_G_MESSAGE, "")
        if not isinstance(last, int) or not isinstance(code, int) or not isinstance(message, str):
            raise RemoteProtocolError("malformed GOAWAY payload")
        event = GoAwayReceived(last_stream_id=last, status=Status.from_wire(code), message=message)
        self.goaway_received = event
        events.append(event)
        if self._client:
            # Calls the server never saw were not processed: fail them now, safe to retry.
            for sid in [sid for sid in self._streams if sid > last]:
                stream = self._streams.pop(sid)
                stream.state = StreamState.CLOSED
                self._blocked.pop(sid, None)
                events.append(
                    CallEnded(
                        stream_id=sid,
                        status=Status.UNAVAILABLE,
                        message=f"the server went away before processing the call: {message or 'GOAWAY'}",
                    )
                )
