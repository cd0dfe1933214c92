"""The gRPC wire, server side: a sans-IO adapter over ``h2`` with trpc's wire methods and events.

Theory of operation
-------------------
:class:`GrpcConnection` owns one ``h2.connection.H2Connection`` (server side), which keeps the
HTTP/2 connection: frames, HPACK, settings, stream states, both directions of flow control,
pings.  Around it, the adapter keeps what gRPC adds (PROTOCOL-HTTP2.md), one record per call
(:class:`_Call`):

- **in**: ``receive_data`` hands bytes to h2 and keeps h2's events, untranslated, in a
  backlog; ``process_backlog`` translates them into trpc's events (``trpc._events``) in order,
  so this object's own records change only as the events reach the call layer, as trpc's core
  does.  A request's HEADERS become :class:`CallOpened` (``:path`` without its ``/`` is the
  method's path, ``grpc-timeout`` the timeout, the other non-reserved headers the metadata,
  ``-bin`` values base64-decoded), once its header list has passed HTTP/2's rules
  (``check_request``, remembered per distinct list: h2's own check of received headers is
  off; a malformed list resets its stream); DATA is cut into the 5-byte length-prefixed messages
  (:class:`MessagesReceived`; a large one arriving over several frames is kept as their
  payloads and joined once); the client's END_STREAM is :class:`StreamEnded`; RST_STREAM is
  :class:`CallCancelled` (CANCELLED).  A request that is not gRPC (not POST, another content
  type, no ``te: trailers``, a bad ``grpc-timeout``, an unknown ``grpc-encoding``) is answered
  here, at once, and never reaches the call layer.
- **out**: response headers go with the first message (or never, for a Trailers-Only
  response); messages are queued per call and framed as the peer's windows (h2's records of
  them) allow, the trailers behind them; ``SendCreditAvailable`` reports a
  call whose queue drained after a WINDOW_UPDATE.  A call ended while the client still sends
  is reset with NO_ERROR after its trailers (RFC 9113 section 8.1).
- **credit we grant**: connection credit goes back as soon as DATA is handed to a call (in
  batches of half the window); a call's credit goes back at once while none of its messages
  waits unread, else only as the call layer consumes them (``consumed``), so a call holds at
  most its stream window of unread messages, as on trpc's wire (docs/PROTOCOL.md section 8).
  The bytes of a message still arriving are bounded by the max message size per call and
  ``max_incomplete_bytes`` per connection.
- **GOAWAY**: graceful, in two phases as gRPC's servers do: a GOAWAY with the largest stream id
  and a PING, then, once the PING is answered (so every call the client sent before it has
  arrived), a GOAWAY with the last stream id received.  Calls after it are refused with
  RST_STREAM REFUSED_STREAM, which gRPC clients retry elsewhere.  h2's own ``close_connection``
  would refuse every later frame, the finishing calls' too, so the frames are built here.

The call's own frames take a shorter path than h2's ``send_headers`` and ``send_data``, the
same transitions made faster: the adapter builds the HEADERS, DATA and trailers frames itself
(header blocks from ``._hpack``, the fixed ones encoded once; a DATA payload is never copied
into a frame, it follows its 9-byte header as its own buffer), and moves h2's connection and
stream state machines and flow-control windows exactly as h2 would for those frames, so h2
still judges everything the client sends afterwards.  On the way in, h2's HPACK decoder is
``._hpack.RequestDecoder``, which reads a request block it has seen from memory when that is
sure to give what decoding would.

h2 formats every received frame for a trace log, on or off (``repr(frame)``, which copies a
DATA frame's payload to show 20 bytes of it): this connection's frame buffer
(:class:`_QuietFrameBuffer`) gives each DATA, HEADERS and CONTINUATION frame it yields a
constant description, so that only these frames, and only on this connection, skip it.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections import deque
from typing import Any, Callable, Mapping, Sequence

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from h2.connection import ConnectionInputs
from h2.exceptions import FrameDataMissingError
from h2.frame_buffer import FrameBuffer
from h2.stream import H2Stream, StreamInputs
from hyperframe.exceptions import InvalidDataError, InvalidFrameError
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame

from .._codec import _dumps
from .._errors import LocalProtocolError, MessageTooLargeError, RemoteProtocolError
from .._events import (
    CallCancelled,
    CallOpened,
    ConnectionClosed,
    Event,
    GoAwayReceived,
    MessagesReceived,
    PingAcknowledged,
    PingReceived,
    PrefaceReceived,
    SendCreditAvailable,
    StreamEnded,
)
from .._status import Status
from ..wire import StreamState, message_size
from ..wire._frames import ALPN_TRPC
from ._hpack import RequestDecoder, encode_block, pending_size_updates

__all__ = ["GrpcConnection", "ALPN_GRPC", "ALPN_TRPC", "HTTP2_PREFACE", "check_request", "looks_like_http2",
           "parse_timeout", "percent_encode"]

#: The ALPN id a TLS server offers for HTTP/2 (gRPC), beside trpc's own (``ALPN_TRPC``, a fact
#: of the trpc wire: trpc.wire._frames).
ALPN_GRPC = "h2"
#: The HTTP/2 client connection preface (RFC 9113 section 3.4).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: The largest message length the 5-byte prefix can carry.
_MAX_PREFIX_LENGTH = (1 << 32) - 1
#: gRPC's timeout units (PROTOCOL-HTTP2.md, "Timeout"), in seconds.
_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}
#: Request headers that are HTTP/2's or gRPC's, never metadata (every ``grpc-`` one is reserved
#: too, tested apart).
_RESERVED = frozenset({b"content-type", b"te", b"content-length", b"connection", b"keep-alive",
                       b"transfer-encoding", b"upgrade", b"host", b"proxy-connection", b"trpc-codec"})
#: The opaque PING payload of the first GOAWAY's PING (its ACK starts the second phase).
_GOAWAY_PING = b"trpc-gaw"
#: HTTP/2's largest stream id: the first GOAWAY's last stream id ("any stream may still come").
_MAX_STREAM_ID = (1 << 31) - 1
#: HTTP/2's connection window before any WINDOW_UPDATE (RFC 9113 section 6.9.2).
_INITIAL_CONNECTION_WINDOW = 65535
#: What a response's HEADERS say about compression: we read identity and gzip.
_ACCEPT_ENCODING = (b"grpc-accept-encoding", b"identity,gzip")
#: A header field as h2 and ``._hpack`` take it: name (lowercase) and value, bytes.
Header = tuple[bytes, bytes]
_OK_TRAILERS = encode_block([(b"grpc-status", b"0")])
#: A message at least this large that does not arrive whole in one DATA frame is kept as its
#: frames' payloads and joined once complete, instead of growing a buffer frame by frame (which
#: copies it again on the way out); smaller ones are cheaper to gather in the call's buffer.
_LARGE_MESSAGE = 65536
#: Distinct request header lists whose check is remembered per connection: gRPC clients send
#: a few (per method and metadata); one whose ``grpc-timeout`` changes every call costs a check.
_MAX_CHECKED = 64
#: HTTP/2 frame types and flags of the frames built here (RFC 9113 section 6).
_DATA, _HEADERS, _CONTINUATION = 0, 1, 9
_END_STREAM, _END_HEADERS = 0x1, 0x4
#: A DATA payload at least this long goes out as its own buffer after the frame's header
#: instead of being joined to it (joining copies it; the writer joins small parts anyway).
_SEPARATE_PAYLOAD = 4096

_GRPC_CT = b"application/grpc"
_CBOR_CT = b"application/grpc+cbor"


_RESPONSE_BLOCKS: dict[bytes, bytes] = {}


def _response_block(content_type: bytes) -> bytes:
    """Response headers without metadata, encoded once per content type (a call's content
    type is one of the few the server accepts)."""
    block = _RESPONSE_BLOCKS.get(content_type)
    if block is None:
        block = _RESPONSE_BLOCKS[content_type] = encode_block(
            [(b":status", b"200"), (b"content-type", content_type), _ACCEPT_ENCODING])
    return block


def looks_like_http2(data: bytes) -> bool:
    """``data`` (at least one byte) starts as the HTTP/2 client preface does."""
    size = min(len(data), len(HTTP2_PREFACE))
    return size > 0 and data[:size] == HTTP2_PREFACE[:size]


def parse_timeout(value: bytes) -> float:
    """A ``grpc-timeout`` value (1 to 8 digits and a unit) in seconds; ValueError if malformed."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        raise ValueError(f"malformed grpc-timeout {value!r}")
    unit = _TIMEOUT_UNITS.get(value[-1])
    if unit is None:
        raise ValueError(f"unknown grpc-timeout unit in {value!r}")
    return int(value[:-1]) * unit


def percent_encode(text: str) -> bytes:
    """``grpc-message``'s encoding: UTF-8, with every byte outside ``0x20``-``0x7E`` and ``%``
    as ``%XX``."""
    raw = text.encode("utf-8", "surrogatepass")
    if all(0x20 <= byte <= 0x7E and byte != 0x25 for byte in raw):
        return raw
    return b"".join(bytes((byte,)) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte for byte in raw)


def _b64decode(value: bytes) -> bytes:
    """A ``-bin`` header value: base64, padded or not (gRPC allows both)."""
    return base64.b64decode(value + b"=" * (-len(value) % 4), validate=False)


#: Pseudo-headers a request may carry (RFC 9113 section 8.3.1; no extended CONNECT here).
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
#: Connection-specific fields, malformed in HTTP/2 (RFC 9113 section 8.2.2); ``te`` is checked apart.
_REQUIRED_PSEUDO = frozenset({b":method", b":scheme", b":path"})
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
#: A field name's bytes: visible ASCII but uppercase (RFC 9113 section 8.2.1).
_BAD_NAME = re.compile(rb"[^\x21-\x40\x5b-\x7e]")
#: A field value's forbidden bytes, and whitespace at either end (RFC 9113 section 8.2.1).
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")


def check_request(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """Why a request's header list is malformed in HTTP/2 (RFC 9113 sections 8.2 and 8.3.1),
    or None: the checks h2 makes on received headers, in one pass."""
    seen: set[bytes] = set()
    regular = False
    host = authority = None
    for name, value in headers:
        if not name or _BAD_NAME.search(name):
            return f"bad field name {name!r}"
        if _BAD_VALUE.search(value):
            return f"bad value for {name!r}"
        if name[:1] == b":":
            if regular:
                return f"pseudo-header {name!r} after a regular field"
            if name not in _REQUEST_PSEUDO:
                return f"unknown pseudo-header {name!r}"
            if name in seen:
                return f"pseudo-header {name!r} repeated"
            seen.add(name)
            if name == b":authority":
                authority = value
            elif name == b":path" and not value:
                return "empty :path"
        else:
            regular = True
            if name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
                return f"connection-specific field {name!r}"
            if name == b"host":
                host = value
    if not _REQUIRED_PSEUDO <= seen:
        return "a pseudo-header is missing (:method, :scheme and :path are required)"
    if host is not None and authority is not None and host != authority:
        return "host and :authority differ"
    return None


def decode_metadata(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str | bytes]:
    """Request headers -> trpc metadata: pseudo-headers, HTTP/2's and gRPC's own left out;
    ``-bin`` values decoded to bytes; a key sent twice keeps its values joined by ``,``."""
    metadata: dict[str, str | bytes] = {}
    for name, value in headers:
        if name[:1] == b":" or name in _RESERVED or name[:5] == b"grpc-":
            continue
        key = name.decode("ascii", "replace")
        if key.endswith("-bin"):
            try:
                item: str | bytes = b"".join(_b64decode(part.strip()) for part in value.split(b","))
            except (binascii.Error, ValueError):
                continue  # not base64: gRPC drops such a value
        else:
            item = value.decode("utf-8", "replace")
            earlier = metadata.get(key)
            if isinstance(earlier, str):
                item = f"{earlier},{item}"
        metadata[key] = item
    return metadata


def encode_metadata(metadata: Mapping[str, str | bytes] | None) -> list[Header]:
    """trpc metadata -> response headers: reserved keys dropped; bytes (and ``-bin`` keys)
    base64, under a key ending in ``-bin``."""
    headers: list[Header] = []
    if not metadata:
        return headers
    for key, value in metadata.items():
        name = key.lower().encode("ascii", "replace")
        if name[:1] == b":" or name in _RESERVED or name[:5] == b"grpc-":
            continue
        if not isinstance(value, str) or name.endswith(b"-bin"):
            raw = value.encode("utf-8") if isinstance(value, str) else value
            if not name.endswith(b"-bin"):
                name += b"-bin"
            headers.append((name, base64.b64encode(bytes(raw)).rstrip(b"=")))
        else:
            headers.append((name, value.encode("utf-8")))
    return headers


def _frame_header(length: int, frame_type: int, flags: int, stream_id: int) -> bytes:
    return (length << 48 | frame_type << 40 | flags << 32 | stream_id).to_bytes(9, "big")


#: The description a quiet frame's body gets (a bound method, so that no object is made per frame).
_QUIET_BODY = "<payload not shown>".__str__
_LOUD_FRAMES = (DataFrame, HeadersFrame, ContinuationFrame)


class _QuietFrameBuffer(FrameBuffer):
    """h2's frame buffer, whose DATA, HEADERS and CONTINUATION frames describe their body by a
    constant: h2 formats every frame it receives for its trace log, on or off, and the body of
    these is the payload or the header block (see the module's docstring).

    A DATA frame outside a header block is parsed here by hyperframe as h2's buffer would
    parse it, from a view of the buffer instead of a copy of the frame: its payload is copied
    once (hyperframe's ``parse_body``), not twice.  Every other frame, and every error, is
    h2's buffer's own."""

    def __next__(self) -> Frame:
        frame: Frame
        data = self._data
        if len(data) >= 9 and data[3] == _DATA and not self._headers_buffer:
            length = int.from_bytes(data[:3], "big")
            if len(data) < length + 9:
                raise StopIteration
            self._validate_frame_length(length)
            try:
                frame = DataFrame(int.from_bytes(data[5:9], "big") & _MAX_STREAM_ID)
                frame.parse_flags(data[4])
                with memoryview(data) as view:
                    frame.parse_body(view[9:9 + length])
            except InvalidDataError as err:
                raise h2.exceptions.ProtocolError("Received frame with non-compliant data") from err
            except InvalidFrameError as err:
                raise FrameDataMissingError("Frame data missing or invalid") from err
            del data[:9 + length]
        else:
            frame = super().__next__()
            if type(frame) not in _LOUD_FRAMES:
                return frame
        frame.__dict__["_body_repr"] = _QUIET_BODY
        return frame


class _Call:
    """One gRPC call (an HTTP/2 stream) as the adapter sees it."""

    __slots__ = ("id", "content_type", "codec", "gzip", "headers_sent", "buf", "parts", "arrived", "missing",
                 "remote_ended", "pending", "trailers", "unconsumed", "held", "credit", "batch")

    def __init__(self, stream_id: int, content_type: bytes, codec: Any, gzip: bool) -> None:
        self.id = stream_id
        self.content_type = content_type
        self.codec = codec
        self.gzip = gzip
        self.headers_sent = False
        #: Received bytes not yet a whole message (a prefix, or part of a message).
        self.buf = bytearray()
        #: A large message arriving (``_LARGE_MESSAGE``): its pieces so far (joined once, when
        #: the last arrives), their bytes, and the bytes still to come.
        self.parts: list[bytes | memoryview] | None = None
        self.arrived = 0
        self.missing = 0
        self.remote_ended = False
        #: Outgoing DATA waiting for the peer's credit, in order (None: nothing waits).
        self.pending: deque[bytes | memoryview] | None = None
        #: Trailers waiting behind ``pending`` (the call is over for the call layer).
        self.trailers: bytes | None = None
        #: Bytes of messages handed on and not yet consumed; received bytes whose credit is
        #: held until they are; credit owed and not yet granted.
        self.unconsumed = 0
        self.held = 0
        self.credit = 0
        self.batch: list[bytes] | None = None


class GrpcConnection:
    """The server side of a gRPC connection over HTTP/2, with no I/O: trpc's
    :class:`~trpc._events.WireConnection` (its server half) over h2.

    Args:
        max_message_size: largest request message accepted, after decompression (a larger
            one ends its call with RESOURCE_EXHAUSTED).
        max_send_message_size: largest response message sent (RESOURCE_EXHAUSTED beyond;
            gRPC peers announce no limit of their own).
        max_frame_size: largest frame payload accepted (SETTINGS_MAX_FRAME_SIZE; at most
            2^24-1).
        stream_window: credit granted per call (SETTINGS_INITIAL_WINDOW_SIZE).
        connection_window: credit granted for the connection.
        max_concurrent_streams: calls at once on this connection (SETTINGS_MAX_CONCURRENT_STREAMS).
        max_incomplete_bytes: bytes of messages still arriving, all calls together; the call
            whose bytes go beyond ends with RESOURCE_EXHAUSTED.
        min_ping_interval, max_ping_strikes: ping policing, as on trpc's wire
            (docs/PROTOCOL.md section 9): too many early PINGs end the connection with GOAWAY
            ENHANCE_YOUR_CALM, debug data ``too_many_pings``.
        codecs: protobuf codecs by method name (see ``trpc.grpc``); ``known``: every name the
            server serves, so that a protobuf call to a method with no codec is told so.
    """

    def __init__(
        self,
        *,
        max_message_size: int,
        max_send_message_size: int = _MAX_PREFIX_LENGTH,
        max_frame_size: int = 16384,
        stream_window: int = 65535,
        connection_window: int = 65535,
        max_concurrent_streams: int = 100,
        max_incomplete_bytes: int | None = None,
        min_ping_interval: float | None = None,
        max_ping_strikes: int = 2,
        codecs: Mapping[str, Any] | None = None,
        known: Mapping[str, Any] | frozenset[str] = frozenset(),
    ) -> None:
        self.max_message_size = max_message_size
        self.max_send_message_size = min(max_send_message_size, _MAX_PREFIX_LENGTH)
        self.max_frame_size = min(max(max_frame_size, 16384), (1 << 24) - 1)
        self.stream_window = min(stream_window, _MAX_STREAM_ID)
        self.connection_window = min(connection_window, _MAX_STREAM_ID)
        self.max_incomplete_bytes = max(max_incomplete_bytes or 0, max_message_size)
        self.min_ping_interval = min_ping_interval
        self.max_ping_strikes = max_ping_strikes
        self._codecs = codecs or {}
        self._known = known
        # Request headers are checked here (``check_request``), once per distinct header list.
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=False)
        self._h2 = conn = h2.connection.H2Connection(config=config)
        conn.incoming_buffer = _QuietFrameBuffer(server=True)
        conn.decoder = RequestDecoder(conn.decoder.max_header_list_size)
        # Our settings hold from the first frame: every one is at least as generous as
        # HTTP/2's default, so a client sending before it has our SETTINGS breaks nothing.
        codes = h2.settings.SettingCodes
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            codes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            codes.MAX_HEADER_LIST_SIZE: conn.DEFAULT_MAX_HEADER_LIST_SIZE,
            codes.INITIAL_WINDOW_SIZE: self.stream_window,
            codes.MAX_FRAME_SIZE: self.max_frame_size,
            codes.ENABLE_PUSH: 0,
        })
        conn.max_inbound_frame_size = self.max_frame_size
        self._calls: dict[int, _Call] = {}
        #: Header lists already checked (``check_request``): why each is malformed, or "".
        self._checked: dict[tuple[tuple[bytes, bytes], ...], str] = {}
        #: Calls whose queued output waits for credit.
        self._blocked: dict[int, None] = {}
        #: Calls with a batch (open_batch), framed whenever output is collected.
        self._batching: dict[int, _Call] = {}
        self._backlog: list[h2.events.Event] = []
        self._out: list[bytes | memoryview] = []
        self._incomplete = 0
        self._connection_credit = 0
        self.peer_preface: PrefaceReceived | None = None
        self._now = 0.0
        self._last_ping_at: float | None = None
        self._ping_strikes = 0
        #: GOAWAY: 0 none sent, 1 the first (all streams), 2 the final one (``_last_stream``).
        self._goaway_phase = 0
        self._last_stream = _MAX_STREAM_ID
        self._goaway_received = False
        self._failed = False
        #: The frame scan (``_check_frame_lengths``): bytes before the next frame header (the
        #: client preface first), and a frame header received in part.
        self._skip = len(HTTP2_PREFACE)
        self._head = b""

    # ------------------------------------------------------------------ introspection
    @property
    def open_streams(self) -> int:
        return len(self._calls)

    def stream_state(self, stream_id: int) -> StreamState:
        call = self._calls.get(stream_id)
        if call is None:
            return StreamState.CLOSED
        if call.trailers is not None:
            return StreamState.CLOSING
        return StreamState.HALF_CLOSED_REMOTE if call.remote_ended else StreamState.OPEN

    def send_buffered(self, stream_id: int) -> int:
        call = self._calls.get(stream_id)
        if call is None or not call.pending:
            return 0
        return sum(map(len, call.pending))

    @property
    def accepting_calls(self) -> bool:
        return not (self._goaway_phase or self._goaway_received or self._failed)

    @property
    def can_open_call(self) -> bool:
        return False  # the server's half only

    @property
    def peer_connection_window(self) -> int:
        return self._h2.outbound_flow_control_window

    @property
    def batch_limit(self) -> int:
        return self._h2.max_outbound_frame_size

    @property
    def output_size(self) -> int:
        return sum(map(len, self._out)) + len(self._h2._data_to_send)

    @property
    def has_data_to_send(self) -> bool:
        # h2 keeps its output in one buffer; its length is the only way to ask.
        return bool(self._out) or bool(self._h2._data_to_send) or any(c.batch for c in self._batching.values())

    # ------------------------------------------------------------------ output
    def initiate(self) -> None:
        """Queue our SETTINGS and open the connection window to ``connection_window``."""
        conn = self._h2
        conn.initiate_connection()
        if self.connection_window > _INITIAL_CONNECTION_WINDOW:
            conn.increment_flow_control_window(self.connection_window - _INITIAL_CONNECTION_WINDOW)

    def data_to_send(self) -> bytes:
        parts = self.data_to_send_list()
        first = parts[0] if len(parts) == 1 else None
        return first if isinstance(first, bytes) else b"".join(parts)

    def data_to_send_list(self) -> list[bytes | memoryview]:
        if self._batching:
            for call in list(self._batching.values()):
                if call.batch:
                    self._frame_batch(call)
        out = self._out
        self._out = []
        data = self._h2.data_to_send()
        if data:
            out.append(data)
        return out

    def requeue(self, data: bytes) -> None:
        if data:
            self._h2_output()
            self._out.insert(0, data)

    def _h2_output(self) -> None:
        """Move h2's queued output into ours (before a frame of our own, to keep the order)."""
        data = self._h2.data_to_send()
        if data:
            self._out.append(data)

    # ------------------------------------------------------------------ calls (server)
    def _call(self, stream_id: int) -> _Call:
        call = self._calls.get(stream_id)
        if call is None or call.trailers is not None:
            raise LocalProtocolError(f"stream {stream_id} is closed or does not exist")
        return call

    def _send_response_headers(self, call: _Call, metadata: Mapping[str, str | bytes] | None = None) -> None:
        if metadata:
            block = encode_block([(b":status", b"200"), (b"content-type", call.content_type), _ACCEPT_ENCODING,
                                  *encode_metadata(metadata)])
        else:
            block = _response_block(call.content_type)
        call.headers_sent = True
        self._send_block(call.id, block, end_stream=False)

    # ------------------------------------------------------------------ frames built here
    def _stream(self, stream_id: int) -> H2Stream:
        """h2's record of a call's stream; StreamClosedError once h2 has let it go, as h2's
        own ``send_*`` would raise."""
        stream = self._h2.streams.get(stream_id)
        if stream is None:
            raise h2.exceptions.StreamClosedError(stream_id)
        return stream

    def _emit(self, *parts: bytes | memoryview) -> None:
        """Queue frames built here, behind whatever h2 has queued (its order is kept)."""
        if self._h2._data_to_send:
            self._h2_output()
        self._out.extend(parts)

    def _send_block(self, stream_id: int, block: bytes, *, end_stream: bool) -> None:
        """A header block encoded here (``._hpack``) as HEADERS and, beyond the peer's frame
        size, CONTINUATION frames; h2's state machines make the transitions of its own
        ``send_headers``, in the same order."""
        conn = self._h2
        stream = self._stream(stream_id)
        conn.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_HEADERS)
        flags = 0
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
            flags = _END_STREAM
        if conn.encoder.header_table.resized:
            block = pending_size_updates(conn.encoder) + block
        limit = conn.max_outbound_frame_size
        if len(block) <= limit:
            self._emit(_frame_header(len(block), _HEADERS, flags | _END_HEADERS, stream_id) + block)
            return
        pieces = [block[start:start + limit] for start in range(0, len(block), limit)]
        parts = [_frame_header(len(pieces[0]), _HEADERS, flags, stream_id), pieces[0]]
        for piece in pieces[1:-1]:
            parts += (_frame_header(len(piece), _CONTINUATION, 0, stream_id), piece)
        parts += (_frame_header(len(pieces[-1]), _CONTINUATION, _END_HEADERS, stream_id), pieces[-1])
        self._emit(b"".join(parts))

    def _send_data(self, stream: H2Stream, data: bytes | memoryview, *more: bytes | memoryview) -> None:
        """One DATA frame of ``data`` and ``more`` (joined on the wire only), within the windows
        (the caller checked): h2's state machines and both flow-control windows change as its
        own ``send_data`` changes them."""
        conn = self._h2
        size = len(data) + sum(map(len, more)) if more else len(data)
        conn.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream.state_machine.process_input(StreamInputs.SEND_DATA)
        stream.outbound_flow_control_window -= size
        conn.outbound_flow_control_window -= size
        head = _frame_header(size, _DATA, 0, stream.stream_id)
        if more:
            self._emit(head, data, *more)
        elif size < _SEPARATE_PAYLOAD:
            self._emit(head + data)
        else:
            self._emit(head, data)

    def send_headers(self, stream_id: int, metadata: dict[str, str | bytes] | None = None) -> None:
        """Response headers, at most once, before any message."""
        call = self._call(stream_id)
        if call.headers_sent:
            raise LocalProtocolError(f"stream {stream_id} has sent its response headers")
        self._send_response_headers(call, metadata)

    def send_message(self, stream_id: int, payload: Any, *, end_stream: bool = False) -> bool:
        """Queue one response message; False if some of it waits for credit."""
        if end_stream:
            raise LocalProtocolError("only a client half-closes; a server ends a call with trailers")
        call = self._call(stream_id)
        if call.batch:
            self._frame_batch(call)
        size = message_size(payload) if type(payload) is list else len(payload)
        if size > self.max_send_message_size:
            raise MessageTooLargeError(size, self.max_send_message_size)
        if not call.headers_sent:
            self._send_response_headers(call)
        prefix = b"\0" + size.to_bytes(4, "big")
        if call.pending is None:
            call.pending = deque()
        if isinstance(payload, list):  # a head and a large body (the codec's, not joined)
            head, body = payload
            call.pending.append(prefix + head)
            call.pending.append(body)
        else:
            data: bytes = payload
            if size < 65536:
                call.pending.append(prefix + data)
            else:  # not copied: the prefix goes in the same DATA frame only if it fits
                call.pending.append(prefix)
                call.pending.append(data)
        return self._flush(call)

    def open_batch(self, stream_id: int) -> list[bytes]:
        """A list of small response messages (bytes) framed together when output is collected,
        at ``flush_batch``, and before anything else the call sends."""
        call = self._call(stream_id)
        if call.batch is None:
            call.batch = []
            self._batching[stream_id] = call
        return call.batch

    def flush_batch(self, stream_id: int) -> bool:
        call = self._calls.get(stream_id)
        if call is None:
            return True
        if call.batch:
            self._frame_batch(call)
        return not call.pending

    def _frame_batch(self, call: _Call) -> None:
        batch = call.batch
        if batch is None:
            return
        if call.trailers is not None:
            batch.clear()
            return
        if not call.headers_sent:
            self._send_response_headers(call)
        data = b"".join([b"\0" + len(payload).to_bytes(4, "big") + payload for payload in batch])
        batch.clear()
        if call.pending is None:
            call.pending = deque()
        call.pending.append(data)
        self._flush(call)

    def _flush(self, call: _Call) -> bool:
        """Give h2 as much of the call's queued output as the peer's windows allow (joining
        small pieces into one DATA frame), then its trailers; True if nothing waits."""
        pending = call.pending
        conn = self._h2
        stream_id = call.id
        # As gRPC's servers: sending a call's frames forgives the client's early pings (its
        # stack pings to measure bandwidth while data flows).
        self._last_ping_at = None
        if pending:
            stream = self._stream(stream_id)
            frame_limit = conn.max_outbound_frame_size
            while pending:
                room = min(conn.outbound_flow_control_window, stream.outbound_flow_control_window, frame_limit)
                if room <= 0:
                    self._blocked[stream_id] = None
                    return False
                first = pending[0]
                if len(first) > room:
                    view = memoryview(first)
                    self._send_data(stream, view[:room])
                    pending[0] = view[room:]
                    continue
                pending.popleft()
                if pending and len(first) + len(pending[0]) <= room:
                    pieces = [first]
                    size = len(first)
                    while pending and size + len(pending[0]) <= room:
                        piece = pending.popleft()
                        pieces.append(piece)
                        size += len(piece)
                    if size >= _SEPARATE_PAYLOAD:  # one frame, its pieces not joined (not copied)
                        self._send_data(stream, *pieces)
                        continue
                    first = b"".join(pieces)
                self._send_data(stream, first)
        call.pending = None
        self._blocked.pop(stream_id, None)
        if call.trailers is not None:
            self._send_block(stream_id, call.trailers, end_stream=True)
            self._close(call)
        return True

    def _trailers(self, call: _Call, status: Status, message: str, details: Any,
                  metadata: Mapping[str, str | bytes] | None) -> bytes:
        """The trailers' header block (with ``:status`` and content type for Trailers-Only)."""
        if status == 0 and not message and details is None and not metadata and call.headers_sent:
            return _OK_TRAILERS
        headers = [(b"grpc-status", str(int(status)).encode())]
        if message:
            headers.append((b"grpc-message", percent_encode(message)))
        if details is not None:
            encoded = self._encode_details(call, details)
            if encoded is not None:
                headers.append((b"grpc-status-details-bin", base64.b64encode(encoded).rstrip(b"=")))
        headers += encode_metadata(metadata)
        if not call.headers_sent:  # Trailers-Only
            call.headers_sent = True
            headers[:0] = [(b":status", b"200"), (b"content-type", call.content_type)]
        return encode_block(headers)

    @staticmethod
    def _encode_details(call: _Call, details: Any) -> bytes | None:
        """The error details as ``grpc-status-details-bin`` bytes: CBOR on a CBOR call; a
        protobuf call's codec may offer ``encode_details`` (else none are sent)."""
        if call.codec is None:
            try:
                return _dumps(details)
            except Exception:
                return None
        encode = getattr(call.codec, "encode_details", None)
        return encode(details) if encode is not None else None

    def send_trailers(self, stream_id: int, status: Status, message: str = "", details: Any = None,
                      metadata: dict[str, str | bytes] | None = None) -> None:
        """End the call with its status: after its queued messages, or at once as a
        Trailers-Only response if it sent nothing."""
        call = self._call(stream_id)
        if call.batch:
            self._frame_batch(call)
        self._drop_batch(call)
        call.trailers = self._trailers(call, status, message, details, metadata)
        self._drop_input(call)
        if not call.pending:
            self._flush(call)

    def refuse_call(self, stream_id: int, status: Status, message: str = "") -> None:
        """End a call never run (going away, over a limit).  UNAVAILABLE is RST_STREAM
        REFUSED_STREAM, which tells a gRPC client the call was not processed (it retries it
        elsewhere); any other status, plain trailers (gRPC has no other such mark)."""
        call = self._call(stream_id)
        if status == 0:
            raise LocalProtocolError("a refused call cannot end with OK")
        if call.headers_sent or call.batch:
            raise LocalProtocolError(f"stream {stream_id} has responded, so its call was processed")
        if status == Status.UNAVAILABLE:
            self._forget(call)
            self._reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self.send_trailers(stream_id, status, message)

    def consumed(self, stream_id: int, size: int) -> None:
        """The call layer took ``size`` bytes of messages: once none waits, the credit held
        back for them goes back."""
        call = self._calls.get(stream_id)
        if call is None:
            return
        call.unconsumed -= size
        if call.unconsumed <= 0:
            call.unconsumed = 0
            if call.held:
                self._grant(call, call.held)
                call.held = 0

    def ping(self, payload: bytes) -> None:
        if len(payload) != 8:
            raise LocalProtocolError("a ping payload is exactly 8 bytes")
        self._h2.ping(payload)

    def goaway(self, status: Status = Status.OK, message: str = "") -> None:
        """Going away.  OK: gracefully, in two phases (see the module's docstring); calls
        already received finish.  Any other status: at once, last stream id the last received."""
        if self._goaway_phase or self._failed:
            return
        if status == 0:
            self._goaway_phase = 1
            self._send_goaway(_MAX_STREAM_ID, h2.errors.ErrorCodes.NO_ERROR, message)
            self._h2.ping(_GOAWAY_PING)
        else:
            self._goaway_phase = 2
            self._last_stream = self._h2.highest_inbound_stream_id
            code = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM if status == Status.RESOURCE_EXHAUSTED else h2.errors.ErrorCodes.INTERNAL_ERROR
            self._send_goaway(self._last_stream, code, message)

    def _send_goaway(self, last_stream_id: int, code: int, message: str) -> None:
        self._h2_output()
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code,
                            additional_data=message.encode("utf-8", "replace")[:1024])
        self._out.append(frame.serialize())

    # the client's half: not served on this wire
    def open_call(self, *args: Any, **kwargs: Any) -> int:
        raise LocalProtocolError("trpc speaks gRPC as a server only")

    open_unary_call = open_call

    def end_stream(self, stream_id: int) -> None:
        raise LocalProtocolError("trpc speaks gRPC as a server only")

    def cancel(self, stream_id: int, reason: Status = Status.CANCELLED, message: str = "") -> None:
        raise LocalProtocolError("trpc speaks gRPC as a server only")

    # ------------------------------------------------------------------ records
    def _drop_batch(self, call: _Call) -> None:
        if call.batch is not None:
            call.batch.clear()
            call.batch = None
            self._batching.pop(call.id, None)

    def _drop_input(self, call: _Call) -> None:
        """The call takes no more messages: forget the one arriving."""
        self._incomplete -= len(call.buf) + call.arrived
        call.buf = bytearray()
        call.parts = None
        call.arrived = call.missing = 0

    def _forget(self, call: _Call) -> None:
        self._calls.pop(call.id, None)
        self._blocked.pop(call.id, None)
        self._drop_batch(call)
        self._drop_input(call)
        call.pending = None

    def _close(self, call: _Call) -> None:
        """The trailers went to h2: the call is over; a client still sending is told to stop."""
        self._forget(call)
        if not call.remote_ended:
            self._reset(call.id, h2.errors.ErrorCodes.NO_ERROR)

    def _reset(self, stream_id: int, code: int) -> None:
        try:
            self._h2.reset_stream(stream_id, code)
        except h2.exceptions.StreamClosedError:
            pass  # the client reset it first

    def _grant(self, call: _Call, size: int) -> None:
        """Owe the call ``size`` bytes of credit; grant it once half the window is owed."""
        call.credit += size
        if call.credit >= self.stream_window >> 1 and not call.remote_ended:
            credit, call.credit = call.credit, 0
            try:
                self._h2.increment_flow_control_window(credit, call.id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                pass  # the stream ended under us: nothing to grant

    def _grant_connection(self, size: int) -> None:
        self._connection_credit += size
        if self._connection_credit >= self.connection_window >> 1:
            credit, self._connection_credit = self._connection_credit, 0
            self._h2.increment_flow_control_window(credit)

    # ------------------------------------------------------------------ input
    def receive_data(self, data: bytes, *, max_frames: int | None = None, now: float | None = None) -> list[Event]:
        """Bytes from the client (``b""``: it closed its side).  As trpc's core: events of the
        first ``max_frames`` h2 events (all for None), the rest in the backlog; the preface
        (the client's first SETTINGS) and the end of the connection are reported at once.
        Raises RemoteProtocolError when the client broke HTTP/2 (h2 has queued the GOAWAY)."""
        if self._failed:
            raise RemoteProtocolError("the connection has already failed")
        if now is not None:
            self._now = now
        events: list[Event] = []
        if not data:
            events += self.process_backlog()
            events.append(ConnectionClosed())
            return events
        self._check_frame_lengths(data)
        try:
            received = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._failed = True
            raise RemoteProtocolError(f"HTTP/2: {exc}", events=self.process_backlog()) from None
        if self.peer_preface is None:
            for event in received:
                if type(event) is h2.events.RemoteSettingsChanged:
                    settings = self._h2.remote_settings
                    self.peer_preface = PrefaceReceived(
                        version=(2, 0), max_frame_size=settings.max_frame_size,
                        initial_window=settings.initial_window_size,
                    )
                    events.append(self.peer_preface)
                    break
        self._backlog = self._backlog + received if self._backlog else received
        if max_frames != 0:
            events += self.process_backlog(max_frames)
        return events

    def _check_frame_lengths(self, data: bytes) -> None:
        """Refuse a frame longer than our SETTINGS_MAX_FRAME_SIZE from its header alone: h2
        checks only once the whole frame has arrived, so a client announcing a huge frame
        would make it buffer the frame first."""
        pos, size = 0, len(data)
        while True:
            if self._skip:
                take = min(self._skip, size - pos)
                self._skip -= take
                pos += take
                if self._skip:
                    return
            need = 9 - len(self._head)
            if size - pos < need:
                self._head += data[pos:]
                return
            header = self._head + data[pos:pos + need] if self._head else data[pos:pos + 9]
            pos += need
            self._head = b""
            length = int.from_bytes(header[:3], "big")
            if length > self.max_frame_size:
                self._failed = True
                self._goaway_phase = 2
                message = f"a frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE {self.max_frame_size}"
                self._send_goaway(self._h2.highest_inbound_stream_id, h2.errors.ErrorCodes.FRAME_SIZE_ERROR, message)
                raise RemoteProtocolError(message, error_code=Status.RESOURCE_EXHAUSTED, events=self.process_backlog())
            self._skip = length

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def process_backlog(self, max_frames: int | None = None) -> list[Event]:
        if not self._backlog:
            return []
        if max_frames is None or max_frames >= len(self._backlog):
            taken, self._backlog = self._backlog, []
        else:
            taken, self._backlog = self._backlog[:max_frames], self._backlog[max_frames:]
        events: list[Event] = []
        translate = self._TRANSLATE
        try:
            for event in taken:
                handler = translate.get(type(event))
                if handler is not None:
                    handler(self, event, events)
        except RemoteProtocolError as exc:
            self._failed = True
            self._backlog = []
            exc.events[:0] = events
            raise
        return events

    def _on_request(self, event: h2.events.RequestReceived, events: list[Event]) -> None:
        stream_id = event.stream_id
        ended = event.stream_ended is not None
        if self._goaway_phase == 2 and stream_id > self._last_stream:
            self._reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        headers: list[Header] = event.headers  # bytes: h2's header_encoding is None
        key = tuple(headers)
        malformed = self._checked.get(key)
        if malformed is None:
            malformed = self._checked[key] = check_request(headers) or ""
            if len(self._checked) > _MAX_CHECKED:
                self._checked.clear()
        if malformed:  # a stream error (RFC 9113 section 8.1.1): this call only
            self._reset(stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        method = path = content_type = te = timeout = encoding = choice = None
        field: bytes
        value: bytes
        for field, value in headers:
            if field[:1] == b":":
                if field == b":method":
                    method = value
                elif field == b":path":
                    path = value
            elif field == b"content-type":
                content_type = value
            elif field == b"te":
                te = value
            elif field == b"grpc-timeout":
                timeout = value
            elif field == b"grpc-encoding":
                encoding = value
            elif field == b"trpc-codec":
                choice = value
        if method != b"POST":
            self._reject(stream_id, ended, b"405", Status.INTERNAL, f"gRPC calls are POST requests, not {method!r}")
            return
        base = content_type.split(b";", 1)[0].strip().lower() if content_type else b""
        if not (base == _GRPC_CT or base.startswith(_GRPC_CT + b"+")):
            self._reject(stream_id, ended, b"415", Status.INTERNAL,
                         f"content-type {content_type!r} is not gRPC (application/grpc+cbor or +proto)")
            return
        if te != b"trailers":
            self._reject(stream_id, ended, b"400", Status.INTERNAL, "a gRPC request needs the header te: trailers")
            return
        name = path.decode("utf-8", "replace")[1:] if path and path[:1] == b"/" else ""
        if not name:
            self._reject(stream_id, ended, b"200", Status.UNIMPLEMENTED, f"bad :path {path!r}")
            return
        if base == _CBOR_CT:
            codec = None
        elif base == _GRPC_CT and (choice == b"cbor" or name not in self._codecs):
            # No subtype: CBOR unless the method maps to protobuf (grpcio cannot name a
            # subtype, so a CBOR client of a mapped method says ``trpc-codec: cbor``).
            codec = None
        elif base in (_GRPC_CT, _GRPC_CT + b"+proto"):
            codec = self._codecs.get(name)
            if codec is None and name in self._known:
                self._reject(stream_id, ended, b"200", Status.UNIMPLEMENTED,
                             f"no protobuf mapping for this method ({name}); call it with application/grpc+cbor")
                return
        else:
            self._reject(stream_id, ended, b"200", Status.UNIMPLEMENTED,
                         f"content-type {base.decode('ascii', 'replace')} is not served:"
                         " application/grpc+cbor and application/grpc+proto are")
            return
        gzip = False
        if encoding is not None and encoding != b"identity":
            if encoding != b"gzip":
                self._reject(stream_id, ended, b"200", Status.UNIMPLEMENTED,
                             f"grpc-encoding {encoding.decode('ascii', 'replace')} is not supported",
                             [_ACCEPT_ENCODING])
                return
            gzip = True
        seconds = None
        if timeout is not None:
            try:
                seconds = parse_timeout(timeout)
            except ValueError as exc:
                self._reject(stream_id, ended, b"200", Status.INTERNAL, str(exc))
                return
        call = _Call(stream_id, base, codec, gzip)
        call.remote_ended = ended
        self._calls[stream_id] = call
        events.append(CallOpened(stream_id=stream_id, method=name, metadata=decode_metadata(event.headers),
                                 timeout=seconds, end_stream=ended, codec=codec))

    def _reject(self, stream_id: int, ended: bool, http_status: bytes, status: Status, message: str,
                extra: Sequence[Header] = ()) -> None:
        """Answer a request that never becomes a call: one HEADERS with END_STREAM."""
        headers = [(b":status", http_status), (b"content-type", _GRPC_CT),
                   (b"grpc-status", str(int(status)).encode()), (b"grpc-message", percent_encode(message)), *extra]
        self._h2.send_headers(stream_id, headers, end_stream=True)
        if not ended:
            self._reset(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def _on_data(self, event: h2.events.DataReceived, events: list[Event]) -> None:
        size = event.flow_controlled_length
        self._grant_connection(size)
        call = self._calls.get(event.stream_id)
        if call is None or call.trailers is not None:
            return  # the call is over for us; the client will learn it
        data: bytes = event.data
        if call.unconsumed:
            call.held += size
        else:
            self._grant(call, size)
        messages: list[bytes] = []
        if call.parts is not None:
            take = min(call.missing, len(data))
            call.parts.append(data if take == len(data) else memoryview(data)[:take])
            call.missing -= take
            if call.missing:
                call.arrived += take
                self._incomplete += take
                self._check_incomplete(call, events)
                return
            messages.append(b"".join(call.parts))
            self._incomplete -= call.arrived
            call.parts = None
            call.arrived = 0
            data = data[take:]
        buf = call.buf
        if not data:
            pass
        elif not buf and len(data) >= 5 and not data[0] and int.from_bytes(data[1:5], "big") == len(data) - 5:
            # The common case: one whole uncompressed message in this frame.
            if len(data) - 5 > self.max_message_size:
                self._too_large(call, len(data) - 5, events)
                return
            messages.append(data[5:])
        elif (not buf and len(data) >= 5 and not data[0]
              and _LARGE_MESSAGE <= int.from_bytes(data[1:5], "big") <= self.max_message_size
              and int.from_bytes(data[1:5], "big") > len(data) - 5):
            # The start of a large message, longer than this frame: kept apart, not copied yet.
            call.parts = [memoryview(data)[5:]]
            call.arrived = len(data) - 5
            call.missing = int.from_bytes(data[1:5], "big") - call.arrived
            self._incomplete += call.arrived
            if not self._check_incomplete(call, events):
                return
        else:
            before = len(buf)
            buf += data
            while len(buf) >= 5:
                flag = buf[0]
                length = int.from_bytes(buf[1:5], "big")
                if length > self.max_message_size:
                    self._incomplete += len(buf) - before
                    self._too_large(call, length, events)
                    return
                if len(buf) < 5 + length:
                    if not flag and length >= _LARGE_MESSAGE:  # the rest is kept apart, and joined once
                        with memoryview(buf) as view:
                            call.parts = [bytes(view[5:])]
                        call.arrived = len(buf) - 5
                        call.missing = 5 + length - len(buf)
                        buf.clear()
                    break
                with memoryview(buf) as view:  # one copy, not a slice's and then bytes'
                    message = bytes(view[5:5 + length])
                del buf[:5 + length]
                if flag:
                    plain = self._decompress(call, flag, message, events)
                    if plain is None:
                        self._incomplete += len(buf) - before
                        return
                    message = plain
                messages.append(message)
            self._incomplete += len(buf) + call.arrived - before
            if not self._check_incomplete(call, events):
                return
        if messages:
            if len(messages) == 1:
                call.unconsumed += len(messages[0])
            else:
                call.unconsumed += sum(map(len, messages))
            events.append(MessagesReceived(stream_id=call.id, payloads=messages))

    def _check_incomplete(self, call: _Call, events: list[Event]) -> bool:
        """False, and the call ended, if the connection now holds more bytes of incomplete
        messages than ``max_incomplete_bytes``."""
        if self._incomplete <= self.max_incomplete_bytes:
            return True
        self._end(call, Status.RESOURCE_EXHAUSTED,
                  f"the server holds {self.max_incomplete_bytes} bytes of incomplete messages per connection at most",
                  events)
        return False

    def _decompress(self, call: _Call, flag: int, message: bytes, events: list[Event]) -> bytes | None:
        if flag != 1:
            self._end(call, Status.INTERNAL, f"bad compressed flag {flag}", events)
            return None
        if not call.gzip:
            self._end(call, Status.INTERNAL, "a compressed message without grpc-encoding", events)
            return None
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            plain = inflater.decompress(message, self.max_message_size + 1)
        except zlib.error as exc:
            self._end(call, Status.INTERNAL, f"cannot decompress a message: {exc}", events)
            return None
        if len(plain) > self.max_message_size:
            self._too_large(call, len(plain), events)
            return None
        return plain

    def _too_large(self, call: _Call, size: int, events: list[Event]) -> None:
        self._end(call, Status.RESOURCE_EXHAUSTED,
                  f"request message of {size} bytes exceeds the server's limit of {self.max_message_size}", events)

    def _end(self, call: _Call, status: Status, message: str, events: list[Event]) -> None:
        """End a call from here (its input broke a rule): trailers, and tell the call layer."""
        self.send_trailers(call.id, status, message)
        events.append(CallCancelled(stream_id=call.id, reason=status, message=message))

    def _on_stream_ended(self, event: h2.events.StreamEnded, events: list[Event]) -> None:
        call = self._calls.get(event.stream_id)
        if call is None or call.remote_ended:
            return
        call.remote_ended = True
        if call.trailers is not None:
            return
        if call.buf or call.parts is not None:
            self._end(call, Status.INTERNAL, "the request ended inside a message", events)
            return
        events.append(StreamEnded(stream_id=call.id))

    def _on_reset(self, event: h2.events.StreamReset, events: list[Event]) -> None:
        call = self._calls.get(event.stream_id)
        if call is None:
            return
        self._forget(call)
        if call.trailers is None:
            events.append(CallCancelled(stream_id=call.id, reason=Status.CANCELLED,
                                        message=f"the client reset the stream (HTTP/2 error {int(event.error_code)})"))

    def _on_window(self, event: h2.events.WindowUpdated, events: list[Event]) -> None:
        if event.stream_id:
            if event.stream_id in self._blocked:
                self._unblock(self._calls.get(event.stream_id), events)
        else:
            self._unblock_all(events)

    def _unblock(self, call: _Call | None, events: list[Event]) -> None:
        if call is None:
            return
        if self._flush(call) and call.trailers is None:
            events.append(SendCreditAvailable(stream_id=call.id))

    def _unblock_all(self, events: list[Event]) -> None:
        for stream_id in list(self._blocked):
            if self._h2.outbound_flow_control_window <= 0:
                return
            self._unblock(self._calls.get(stream_id), events)

    def _on_settings(self, event: h2.events.RemoteSettingsChanged, events: list[Event]) -> None:
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._unblock_all(events)

    def _on_ping(self, event: h2.events.PingReceived, events: list[Event]) -> None:
        if self.min_ping_interval is not None:
            now, last = self._now, self._last_ping_at
            self._last_ping_at = now
            if last is None or now - last >= self.min_ping_interval:
                self._ping_strikes = 0
            else:
                self._ping_strikes += 1
                if self._ping_strikes > self.max_ping_strikes:
                    self._goaway_phase = 2
                    self._send_goaway(self._h2.highest_inbound_stream_id, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                                      "too_many_pings")
                    raise RemoteProtocolError(
                        f"too many pings (more than {self.max_ping_strikes} in a row less than"
                        f" {self.min_ping_interval:g} s apart)",
                        error_code=Status.RESOURCE_EXHAUSTED,
                    )
        events.append(PingReceived(payload=event.ping_data))

    def _on_ping_ack(self, event: h2.events.PingAckReceived, events: list[Event]) -> None:
        if event.ping_data == _GOAWAY_PING and self._goaway_phase == 1:
            # Every call the client sent before our PING has arrived: the final GOAWAY.
            self._goaway_phase = 2
            self._last_stream = self._h2.highest_inbound_stream_id
            self._send_goaway(self._last_stream, h2.errors.ErrorCodes.NO_ERROR, "")
            return
        events.append(PingAcknowledged(payload=event.ping_data))

    def _on_terminated(self, event: h2.events.ConnectionTerminated, events: list[Event]) -> None:
        self._goaway_received = True
        code = event.error_code or 0
        events.append(GoAwayReceived(
            last_stream_id=event.last_stream_id or 0,
            status=Status.OK if code == 0 else Status.INTERNAL,
            message=(event.additional_data or b"").decode("utf-8", "replace"),
        ))

    _TRANSLATE: dict[type[h2.events.Event], Callable[[GrpcConnection, Any, list[Event]], None]] = {
        h2.events.RequestReceived: _on_request,
        h2.events.DataReceived: _on_data,
        h2.events.StreamEnded: _on_stream_ended,
        h2.events.StreamReset: _on_reset,
        h2.events.WindowUpdated: _on_window,
        h2.events.RemoteSettingsChanged: _on_settings,
        h2.events.PingReceived: _on_ping,
        h2.events.PingAckReceived: _on_ping_ack,
        h2.events.ConnectionTerminated: _on_terminated,
    }
