"""The control payloads: HEADERS, TRAILERS, CANCEL, GOAWAY and INFO maps, encoded and decoded.

Each is a CBOR map with small integer keys (docs/PROTOCOL.md sections 3, 4, 6, 7, 9).  Encoders
raise :class:`LocalProtocolError` for what the local application got wrong; decoders raise
:class:`RemoteProtocolError` for what the peer got wrong, and ignore keys they do not know.
Two shapes come with nearly every call and are written and read by hand, without cbor2: the
client's HEADERS ``{1: method}`` / ``{1: method, 2: timeout_us}``, and the OK trailers ``{1: 0}``.
"""

from __future__ import annotations

from functools import lru_cache

import cbor2

from .._codec import _dumps, _loads
from .._errors import LocalProtocolError, RemoteProtocolError
from .._events import CborValue
from .._service import SHAPE_CODES, Cardinality
from .._status import Status
from ._compression import KNOWN_BITS
from ._frames import MAX_HEADERS_SIZE

__all__ = [
    "OK_TRAILERS",
    "RequestHeadersEncoder",
    "encode_cancel",
    "encode_goaway",
    "encode_info",
    "encode_response_headers",
    "encode_trailers",
    "parse_cancel",
    "parse_goaway",
    "parse_info",
    "parse_request_headers",
    "parse_response_headers",
    "parse_simple_headers",
    "parse_trailers",
    "validate_metadata",
]

# CBOR map keys of the control payloads (small integers: compact, and new keys can be added
# without breaking old readers, which ignore keys they do not know).
_H_METHOD, _H_TIMEOUT, _H_METADATA, _H_COMPRESSION = 1, 2, 3, 4
_T_STATUS, _T_MESSAGE, _T_DETAILS, _T_METADATA, _T_NOT_PROCESSED = 1, 2, 3, 4, 5
_C_REASON, _C_MESSAGE = 1, 2
_G_LAST_STREAM, _G_STATUS, _G_MESSAGE = 1, 2, 3
_I_IDEMPOTENT, _I_METHODS, _I_CODINGS = 1, 2, 3
#: INFO key 2's shape numbers (docs/PROTOCOL.md section 3); a number not here (a later
#: version's shape) leaves its method out of what the client learns.
_SHAPES = {code: cardinality for cardinality, code in SHAPE_CODES.items()}

#: TRAILERS for a plain OK, ``{1: 0}``: most calls end with exactly these bytes.
OK_TRAILERS = cbor2.dumps({_T_STATUS: 0})
#: Methods whose encoded name a client connection keeps (a bound, for clients that make up
#: method names); 1024 covers any real service.
_METHOD_CACHE_SIZE = 1024
#: Longest GOAWAY message sent: it is a diagnostic, not a channel for data.
_GOAWAY_MESSAGE_LIMIT = 1024


def validate_metadata(metadata: CborValue, *, remote: bool) -> dict[str, str | bytes]:
    """``metadata`` if it is a map of text keys to text or bytes values ({} for None)."""
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


def _check_size(what: str, payload: bytes, peer_max_frame: int) -> bytes:
    """``payload`` if it fits a control frame: MAX_HEADERS_SIZE, and the peer's frame size."""
    if len(payload) > MAX_HEADERS_SIZE or len(payload) > peer_max_frame:
        limit = min(MAX_HEADERS_SIZE, peer_max_frame)
        raise LocalProtocolError(f"{what} of {len(payload)} bytes exceed the limit ({limit}); metadata is too large")
    return payload


# ------------------------------------------------------------------------- encoding
class RequestHeadersEncoder:
    """The client's HEADERS map, ``{1: method, 2: timeout_us, 3: metadata, 4: response
    coding}``, encoded by hand around a per-method cache of the encoded ``1: method`` pair (one
    goes with every call)."""

    __slots__ = ("_heads",)

    def __init__(self) -> None:
        self._heads: dict[str, bytes] = {}

    def encode(
        self, method: str, timeout: float | None, metadata: dict[str, str | bytes] | None, peer_max_frame: int,
        compression: int = 0,
    ) -> bytes:
        head = self._heads.get(method)
        if head is None:
            if not isinstance(method, str):
                raise LocalProtocolError(f"a method name is text, not {type(method).__name__}")
            head = b"\x01" + cbor2.dumps(method)
            if len(self._heads) < _METHOD_CACHE_SIZE:
                self._heads[method] = head
        if timeout is None and not metadata and not compression:
            payload = b"\xa1" + head
        else:
            parts = [b"", head]
            if timeout is not None:
                parts += (b"\x02", _dumps(max(0, int(timeout * 1_000_000))))
            if metadata:
                parts += (b"\x03", _dumps(validate_metadata(metadata, remote=False)))
            if compression:
                parts += (b"\x04", _dumps(int(compression)))
            parts[0] = bytes([0xA0 + len(parts) // 2])  # a map of 1 to 4 pairs
            payload = b"".join(parts)
        if len(payload) > MAX_HEADERS_SIZE or len(payload) > peer_max_frame:
            _check_size("HEADERS", payload, peer_max_frame)  # raises
        return payload


def encode_response_headers(metadata: dict[str, str | bytes] | None, peer_max_frame: int) -> bytes:
    fields = {_H_METADATA: validate_metadata(metadata, remote=False)} if metadata else {}
    return _check_size("response HEADERS", _dumps(fields), peer_max_frame)


def encode_trailers(
    status: Status,
    message: str,
    details: CborValue,
    metadata: dict[str, str | bytes] | None,
    peer_max_frame: int,
    processed: bool = True,
) -> bytes:
    """The TRAILERS map; ``processed=False`` adds key 5 (not processed: the handler never ran
    and never will).  Never fails: when the details or metadata cannot be sent, the trailers
    say INTERNAL and why, since the status must reach the caller.  (A plain OK is
    ``OK_TRAILERS``, which the connection sends without calling this.)"""
    fields: dict[int, CborValue] = {_T_STATUS: int(status)}
    if message:
        fields[_T_MESSAGE] = message
    if details is not None:
        fields[_T_DETAILS] = details
    if not processed:
        fields[_T_NOT_PROCESSED] = True
    try:
        if metadata:
            fields[_T_METADATA] = validate_metadata(metadata, remote=False)
        return _check_size("TRAILERS", _dumps(fields), peer_max_frame)
    except (LocalProtocolError, cbor2.CBOREncodeError) as exc:
        fields = {_T_STATUS: int(Status.INTERNAL), _T_MESSAGE: f"trailers could not be sent: {exc}"}
        if not processed:
            fields[_T_NOT_PROCESSED] = True
        return cbor2.dumps(fields)


def encode_cancel(reason: Status, message: str, peer_max_frame: int) -> bytes:
    fields: dict[int, CborValue] = {_C_REASON: int(reason)}
    if message:
        fields[_C_MESSAGE] = message
    return _check_size("CANCEL", _dumps(fields), peer_max_frame)


def encode_goaway(last_stream_id: int, status: Status, message: str) -> bytes:
    fields: dict[int, CborValue] = {_G_LAST_STREAM: last_stream_id, _G_STATUS: int(status)}
    if message:
        fields[_G_MESSAGE] = message[:_GOAWAY_MESSAGE_LIMIT]
    return cbor2.dumps(fields)


def _array_head_size(count: int) -> int:
    """Bytes of the CBOR head of an array of ``count`` items (the shortest form)."""
    return 1 if count < 24 else 2 if count < 256 else 3 if count < 65536 else 5


def _map_head_size(count: int) -> int:
    """Bytes of the CBOR head of a map of ``count`` pairs (as an array's: same lengths)."""
    return _array_head_size(count)


@lru_cache(maxsize=16)  # one server passes the same sets, and mostly one limit, per connection
def encode_info(idempotent: frozenset[str], methods: frozenset[tuple[str, int]], limit: int,
                codings: int = 0) -> bytes | None:
    """The INFO map ``{1: [names], 2: {path: shape}, 3: codings}`` of at most ``limit`` bytes,
    or None if it would say nothing.  Key 3, the codings this side accepts (preface bits), is
    sent only over QUIC, which has no preface, and only when not 0; it is placed first (at
    most 4 bytes).  Key 1 is filled next, then key 2, each in sorted order; an entry
    that would take the payload beyond ``limit`` is left out and the next ones are tried
    (docs/PROTOCOL.md: a client does not learn of the entries left out: it treats those
    methods as not idempotent, or of an unknown shape).  ``methods`` holds (path, shape
    number) pairs, shape numbers below 24 (one byte each)."""
    names: list[str] = []
    size = 0  # the names' encoded bytes
    reserved = 1 + len(cbor2.dumps(codings)) if codings else 0  # key 3 and its value
    for name in sorted(idempotent):
        encoded = len(cbor2.dumps(name))
        # The map head and key 1 (a byte each), the array head, the names.
        if reserved + 2 + _array_head_size(len(names) + 1) + size + encoded <= limit:
            names.append(name)
            size += encoded
    used = reserved + 1 + (1 + _array_head_size(len(names)) + size if names else 0)  # key 3, the map head, key 1
    shapes: dict[str, int] = {}
    size = 0  # the pairs' encoded bytes
    for path, code in sorted(methods):
        encoded = len(cbor2.dumps(path)) + 1
        # Key 2 (a byte), the inner map's head, the pairs.
        if used + 1 + _map_head_size(len(shapes) + 1) + size + encoded <= limit:
            shapes[path] = code
            size += encoded
    fields: dict[int, CborValue] = {}
    if codings:
        fields[_I_CODINGS] = codings
    if names:
        fields[_I_IDEMPOTENT] = names
    if shapes:
        fields[_I_METHODS] = shapes
    if not fields:
        return None
    payload = cbor2.dumps(fields)
    assert len(payload) <= limit, (len(payload), limit)
    return payload


# ------------------------------------------------------------------------- decoding
def _decode_map(kind: str, payload: bytes) -> dict[CborValue, CborValue]:
    if len(payload) > MAX_HEADERS_SIZE:
        raise RemoteProtocolError(f"{kind} payload of {len(payload)} bytes exceeds {MAX_HEADERS_SIZE}")
    try:
        fields = _loads(payload)
    except Exception as exc:  # cbor2 raises several types for malformed input
        raise RemoteProtocolError(f"{kind} payload is not valid CBOR: {exc}") from None
    if not isinstance(fields, dict):
        raise RemoteProtocolError(f"{kind} payload must be a CBOR map")
    return fields


def parse_simple_headers(payload: bytes) -> tuple[str, int | None] | None:
    """Decode a HEADERS map of the two shapes trpc's client sends without metadata,
    ``{1: method}`` and ``{1: method, 2: timeout_us}``, by hand (the method name up to 255
    UTF-8 bytes, the timeout any unsigned integer); None for anything else, which then goes
    through cbor2 and the full checks."""
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


def parse_request_headers(payload: bytes) -> tuple[str, int | None, dict[str, str | bytes], int]:
    """A client's HEADERS: ``(method, timeout_us or None, metadata, response coding)``, the
    coding 0 when key 4 is absent (any unsigned integer: the server ignores one it does not
    know).  (The connection tries ``parse_simple_headers`` first.)"""
    fields = _decode_map("HEADERS", payload)
    metadata = validate_metadata(fields.get(_H_METADATA), remote=True)
    method = fields.get(_H_METHOD)
    if not isinstance(method, str):
        raise RemoteProtocolError("HEADERS frame without a method name")
    timeout_us = fields.get(_H_TIMEOUT)
    if timeout_us is not None and (not isinstance(timeout_us, int) or timeout_us < 0):
        raise RemoteProtocolError("the timeout must be a non-negative integer (microseconds)")
    compression = fields.get(_H_COMPRESSION, 0)
    if type(compression) is not int or compression < 0:
        raise RemoteProtocolError("HEADERS key 4 (response compression) must be an unsigned integer")
    return method, timeout_us, metadata, compression


def parse_response_headers(payload: bytes) -> dict[str, str | bytes]:
    """A server's response HEADERS: the metadata."""
    return validate_metadata(_decode_map("HEADERS", payload).get(_H_METADATA), remote=True)


def parse_trailers(payload: bytes) -> tuple[Status, str, CborValue, dict[str, str | bytes], bool]:
    """TRAILERS: ``(status, message, details, metadata, processed)``; ``processed`` is False
    when key 5 (not processed) is true.  (``OK_TRAILERS``, the common case, the connection
    recognises without calling this.)"""
    fields = _decode_map("TRAILERS", payload)
    code = fields.get(_T_STATUS)
    if not isinstance(code, int):
        raise RemoteProtocolError("TRAILERS without a status code")
    message = fields.get(_T_MESSAGE, "")
    if not isinstance(message, str):
        raise RemoteProtocolError("the status message must be text")
    metadata = validate_metadata(fields.get(_T_METADATA), remote=True)
    not_processed = fields.get(_T_NOT_PROCESSED, False)
    if not isinstance(not_processed, bool):
        raise RemoteProtocolError("TRAILERS key 5 (not processed) must be a boolean")
    if not_processed and code == 0:
        raise RemoteProtocolError("TRAILERS say both OK and not processed")
    return Status.from_wire(code), message, fields.get(_T_DETAILS), metadata, not not_processed


def parse_cancel(payload: bytes) -> tuple[Status, str]:
    """CANCEL: ``(reason, message)``."""
    fields = _decode_map("CANCEL", payload)
    reason = fields.get(_C_REASON, Status.CANCELLED)
    message = fields.get(_C_MESSAGE, "")
    if not isinstance(reason, int) or not isinstance(message, str):
        raise RemoteProtocolError("malformed CANCEL payload")
    return Status.from_wire(reason), message


def parse_info(payload: bytes) -> tuple[frozenset[str], dict[str, Cardinality], int]:
    """INFO: the names of the methods the server declares idempotent (key 1, absent: none),
    each method's shape by path (key 2, absent: none; a shape number this side does not
    know leaves its method out), and the codings the sender accepts (key 3, QUIC's: preface
    bits, absent: none; bits this side does not know are dropped)."""
    fields = _decode_map("INFO", payload)
    codings = fields.get(_I_CODINGS, 0)
    if type(codings) is not int or codings < 0:
        raise RemoteProtocolError("INFO key 3 (accepted codings) must be an unsigned integer")
    names = fields.get(_I_IDEMPOTENT, [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise RemoteProtocolError("INFO key 1 (idempotent methods) must be an array of text")
    shapes = fields.get(_I_METHODS, {})
    if not isinstance(shapes, dict) or not all(
        isinstance(path, str) and type(code) is int and code >= 0 for path, code in shapes.items()
    ):
        raise RemoteProtocolError("INFO key 2 (methods) must be a map from text to unsigned integers")
    methods = {path: _SHAPES[code] for path, code in shapes.items() if code in _SHAPES}
    return frozenset(names), methods, codings & KNOWN_BITS


def parse_goaway(payload: bytes) -> tuple[int, Status, str]:
    """GOAWAY: ``(last_stream_id, status, message)``."""
    fields = _decode_map("GOAWAY", payload)
    last = fields.get(_G_LAST_STREAM, 0)
    code = fields.get(_G_STATUS, 0)
    message = fields.get(_G_MESSAGE, "")
    if not isinstance(last, int) or not isinstance(code, int) or not isinstance(message, str):
        raise RemoteProtocolError("malformed GOAWAY payload")
    return last, Status.from_wire(code), message
