"""The boundary between a wire and the call layer: the events a wire connection reports, and
the methods it offers (:class:`WireConnection`).

The call layer (``trpc._server``, ``trpc._client``, over ``trpc._transport``) knows a wire only
through these: trpc's own (``trpc.wire.Connection``) today; a second wire (gRPC over HTTP/2,
QUIC) is another class with the same methods that reports the same events, so dispatch,
handlers, deadlines, cancellation, metadata, interceptors and the client's call objects serve it
unchanged.

``Connection.receive_data(data)`` returns a list of these.  They are small keyword-only
dataclasses with slots (h11/h2 style): plain data, no behaviour.  Treat them as read-only; they
are not ``frozen`` only because a frozen dataclass is slower to create (its ``__init__``
assigns through ``object.__setattr__``; docs/PERFORMANCE.md has the figure), and several are
created per call.  Which side can see which event is noted on each class; the full rules
are in ``docs/PROTOCOL.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence, TypeAlias, runtime_checkable

from ._service import Cardinality
from ._status import Status

if TYPE_CHECKING:
    from .wire._compression import Compressed
    from .wire._streams import StreamState

__all__ = [
    "CborValue",
    "MessageCodec",
    "Payload",
    "Received",
    "WireConnection",
    "CompressingConnection",
    "Event",
    "PrefaceReceived",
    "CallOpened",
    "HeadersReceived",
    "MessagesReceived",
    "StreamEnded",
    "CallEnded",
    "CallCancelled",
    "SendCreditAvailable",
    "PingReceived",
    "PingAcknowledged",
    "GoAwayReceived",
    "InfoReceived",
    "ConnectionClosed",
]

#: A value as trpc's CBOR codec encodes and decodes it: whatever cbor2 takes and gives (with
#: trpc's tags), which no static type describes; the name says where a value is such a one.
CborValue: TypeAlias = Any
#: An encoded message as a wire sends and receives it: its bytes, or ``[head, body]`` parts (a
#: large byte string and its CBOR head, not joined; see :class:`MessagesReceived`).
Payload: TypeAlias = "bytes | list[bytes]"
#: A message as a wire hands it on: a payload, or (trpc's wire, protocol 1.2) a compressed one
#: as it arrived, which the call layer decompresses when it reads it (``trpc._codec.decode``).
Received: TypeAlias = "bytes | list[bytes] | Compressed"

_EVENT = dict(slots=True, kw_only=True)


class MessageCodec(Protocol):
    """How a call's messages are encoded when not in trpc's CBOR: a protobuf codec of the gRPC
    wire (``trpc.grpc._proto.MethodCodec``, and the standard services' in ``trpc.grpc``)."""

    def decode_request(self, data: bytes) -> tuple[list[Any], dict[str, Any]]: ...
    def decode_item(self, data: bytes) -> CborValue: ...
    def encode_response(self, value: CborValue) -> bytes: ...
    def encode_item(self, value: CborValue) -> bytes: ...


class Event:
    """Base class of every event."""

    __slots__ = ()


@dataclass(**_EVENT)
class PrefaceReceived(Event):
    """The peer's preface arrived and was valid (both sides)."""

    version: tuple[int, int]
    max_frame_size: int
    initial_window: int


@dataclass(**_EVENT)
class CallOpened(Event):
    """The client opened a call (server side).

    ``timeout`` is the time the client had left, in seconds, when it sent the call, or ``None``
    for no deadline.  ``end_stream`` is true when the client will send no request message.
    ``codec`` is how the call's messages are encoded when not in trpc's CBOR (``None``): a
    protobuf codec of the gRPC wire (its methods: ``trpc.grpc``'s docstring).
    ``compression`` is the coding the client asked for its responses (protocol 1.2, HEADERS
    key 4: a ``trpc.wire._compression.Coding`` number, maybe one this side does not know; 0:
    none asked).
    """

    stream_id: int
    method: str
    metadata: dict[str, str | bytes]
    timeout: float | None
    end_stream: bool = False
    codec: MessageCodec | None = None
    compression: int = 0


@dataclass(**_EVENT)
class HeadersReceived(Event):
    """The server sent response headers, before any response message (client side)."""

    stream_id: int
    metadata: dict[str, str | bytes]


@dataclass(**_EVENT)
class MessagesReceived(Event):
    """Complete messages arrived on a stream (both sides), in order.

    ``payloads`` holds each message's encoded bytes (reassembled if it spanned several DATA
    frames): all the consecutive messages one ``receive_data`` call found for the stream, so
    that a stream of small messages costs one event per received chunk, not one per message.
    A message that came as a small head frame then a large body frame is the list
    ``[head, body]`` rather than their concatenation, and a compressed message is a
    ``Compressed``, decompressed when read (``trpc._codec.decode`` takes any of the three;
    ``message_size`` gives its length on the wire).
    The receiver must call ``Connection.consumed(stream_id, nbytes)`` as its application takes
    them, or the peer's send credit for the stream runs out.
    """

    stream_id: int
    payloads: Sequence[Received]


@dataclass(**_EVENT)
class StreamEnded(Event):
    """The client half-closed its direction: it sends no more messages (server side)."""

    stream_id: int


@dataclass(**_EVENT)
class CallEnded(Event):
    """The call ended with a status (client side).

    Usually the server's trailers; also produced locally when the connection must end a call
    itself (a response message over the size limit ends it with RESOURCE_EXHAUSTED).

    ``processed`` is False when the server never ran the call and never will, so it had no
    effect and may be retried on any connection, whatever the method: the server's trailers
    said so (key 5: it refused the call while going away, or over a concurrency limit), or the
    server's GOAWAY had a last stream id below the call (then status UNAVAILABLE).  True says
    only that the server did not say so: the call may or may not have run.
    """

    stream_id: int
    status: Status
    message: str = ""
    details: CborValue = None
    metadata: dict[str, str | bytes] = field(default_factory=dict)
    processed: bool = True


@dataclass(**_EVENT)
class CallCancelled(Event):
    """The call must stop (server side): the client cancelled it, or the connection ended it.

    ``reason`` says why: CANCELLED (the caller's cancel scope), DEADLINE_EXCEEDED (the caller's
    deadline), UNAVAILABLE (the client is shutting down), RESOURCE_EXHAUSTED (a request message
    over the size limit; trailers were already queued).
    """

    stream_id: int
    reason: Status
    message: str = ""


@dataclass(**_EVENT)
class SendCreditAvailable(Event):
    """Queued outgoing data on this stream went out after the peer granted credit (both sides)."""

    stream_id: int


@dataclass(**_EVENT)
class PingReceived(Event):
    """The peer pinged; the acknowledgement is already queued (both sides)."""

    payload: bytes


@dataclass(**_EVENT)
class PingAcknowledged(Event):
    """The peer acknowledged one of our pings (both sides)."""

    payload: bytes


@dataclass(**_EVENT)
class GoAwayReceived(Event):
    """The peer is going away (both sides).

    Calls with ``stream_id <= last_stream_id`` will still be completed by the peer; later ones
    were never processed and are safe to retry elsewhere.
    """

    last_stream_id: int
    status: Status
    message: str = ""


@dataclass(**_EVENT)
class InfoReceived(Event):
    """The server said what it declares about itself, in its INFO frame (client side; protocol
    1.1).  At most once per connection, before any frame of any stream; a server with nothing
    to declare sends none.  It holds for this connection only.

    ``idempotent`` holds the wire names of the methods the server declares idempotent: a call
    to one of them may be retried after a failure even if the server may have run it.  The
    list may have been cut to fit the frame; a method not in it is simply not known to be
    idempotent.  ``methods`` maps the path of each method the server serves (``"kv.Store/get"``)
    to its call shape; it too may have been cut, and holds only the shapes this side knows.
    """

    idempotent: frozenset[str]
    methods: dict[str, Cardinality] = field(default_factory=dict)


@dataclass(**_EVENT)
class ConnectionClosed(Event):
    """The peer closed the byte stream cleanly, at a frame boundary (both sides)."""


@runtime_checkable
class WireConnection(Protocol):
    """What the call layer asks of a sans-IO wire connection (``trpc.wire.Connection`` is the
    reference; its docstrings give each method's contract).  Stream ids name calls; payloads
    are encoded messages (bytes, or ``[head, body]`` parts).

    Compression (protocol 1.2) is the trpc wire's: a connection that has it also offers
    ``peer_codings`` (the codings the peer accepts) and ``send_compressed``, and the call layer
    uses them only after finding ``peer_codings`` there; a wire without it ignores the
    ``compression`` arguments below, and its calls report ``CallOpened.compression`` 0."""

    # bytes in and out
    @property
    def peer_preface(self) -> PrefaceReceived | None: ...
    def initiate(self) -> None: ...
    def receive_data(self, data: bytes | bytearray, *, max_frames: int | None = None, now: float | None = None) -> list[Event]: ...
    def process_backlog(self, max_frames: int | None = None) -> list[Event]: ...
    @property
    def backlog(self) -> int: ...
    def data_to_send(self) -> bytes: ...
    def data_to_send_list(self) -> Sequence[bytes | memoryview]: ...
    def requeue(self, data: bytes) -> None: ...
    @property
    def has_data_to_send(self) -> bool: ...
    @property
    def output_size(self) -> int: ...

    # what the peer allows, and the connection's state
    @property
    def peer_connection_window(self) -> int: ...
    @property
    def accepting_calls(self) -> bool: ...
    @property
    def can_open_call(self) -> bool: ...
    @property
    def open_streams(self) -> int: ...
    @property
    def batch_limit(self) -> int: ...
    def stream_state(self, stream_id: int) -> StreamState: ...
    def send_buffered(self, stream_id: int) -> int: ...

    # calls
    def open_call(self, method: str, *, metadata: dict[str, str | bytes] | None = None,
                  timeout: float | None = None, end_stream: bool = False, response_compression: int = 0) -> int: ...
    def open_unary_call(self, method: str, message: Payload, *, metadata: dict[str, str | bytes] | None = None,
                        timeout: float | None = None, compression: int = 0,
                        response_compression: int = 0) -> tuple[int, bool]: ...
    def send_message(self, stream_id: int, payload: Payload, *, end_stream: bool = False) -> bool: ...
    def open_batch(self, stream_id: int) -> list[bytes]: ...
    def flush_batch(self, stream_id: int) -> bool: ...
    def end_stream(self, stream_id: int) -> None: ...
    def send_headers(self, stream_id: int, metadata: dict[str, str | bytes] | None = None) -> None: ...
    def send_trailers(self, stream_id: int, status: Status, message: str = "", details: CborValue = None,
                      metadata: dict[str, str | bytes] | None = None) -> None: ...
    def refuse_call(self, stream_id: int, status: Status, message: str = "") -> None: ...
    def cancel(self, stream_id: int, reason: Status = Status.CANCELLED, message: str = "") -> None: ...
    def consumed(self, stream_id: int, size: int) -> None: ...
    def ping(self, payload: bytes) -> None: ...
    def goaway(self, status: Status = Status.OK, message: str = "") -> None: ...


@runtime_checkable
class CompressingConnection(WireConnection, Protocol):
    """A wire connection with per-message compression (trpc's wire, protocol 1.2): what the
    call layer asks of it once ``peer_codings`` is found on it (``trpc.wire.Connection``'s
    docstrings give the contract)."""

    #: The codings the peer accepts, and those this side accepts (preface bits).
    peer_codings: int
    accepted_codings: int
    #: The smallest encoded message ``send_compressed`` compresses.
    compression_threshold: int

    def send_compressed(self, stream_id: int, payload: Payload, coding: int, *, end_stream: bool = False) -> bool: ...
