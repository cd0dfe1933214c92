"""How Python values become message bytes and back: CBOR, through cbor2.

Every message on the wire is exactly one CBOR data item (RFC 8949); instances of message
classes (``trpc.message``) are CBOR tag 27 around ``[name, {field number: value}]``.  Call arguments travel as
``[positional]`` or ``[positional, keyword]`` (an array of the positional arguments, then, only if
there are any, a map of the keyword arguments); results and streamed items travel as themselves.
``docs/PROTOCOL.md`` gives the full mapping.

Encoding and decoding go through ``trpc._speedups`` (``csrc/cbor.c``) when it is built: it writes
plain values (None, bool, int, float, str, bytes, list, tuple, dict) to the same bytes as cbor2
and reads plain payloads to the same values, faster than cbor2 on the small values trpc sends
most (docs/PERFORMANCE.md, ``bench/codec.py``), and hands anything else (messages, tags,
malformed input) to cbor2.  Without it (no C compiler at install, or ``TRPC_SPEEDUPS=0``), cbor2 does all of it (see
``_cext``).  Either way a payload with bytes after its one data item is refused.

Decoding failures become :class:`~trpc.RpcError` with INVALID_ARGUMENT on the server (the
client sent something undecodable) and INTERNAL on the client; they never take a connection down.
"""

from __future__ import annotations

import io
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import cbor2

from ._cext import speedups
from ._errors import RpcError
from ._messages import decode_tag, encode_default
from ._status import Status

if TYPE_CHECKING:
    from ._events import Received

__all__ = ["encode", "decode", "encode_arguments", "decode_arguments", "Encoded", "large_bytes_head"]


class Encoded:
    """A value encoded once, sent many times: encoding one writes ``payload`` as it is (it
    must be exactly one CBOR data item).  For answers that never change (the reflection
    document), so that no call pays for encoding them."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


def _default(encoder: cbor2.CBOREncoder, value: Any) -> None:
    """cbor2's ``default`` hook: pre-encoded values as they are, messages as tag 27."""
    if type(value) is Encoded:
        encoder.write(value.payload)
    else:
        encode_default(encoder, value)


# Message classes (trpc.message) travel as CBOR tag 27, pre-encoded values as their bytes; the
# hook is reached only by values of other types, so it costs nothing for plain ones.
_cbor2_dumps = partial(cbor2.dumps, default=_default)


def _cbor2_loads(payload: bytes) -> Any:
    """One CBOR data item and nothing after it, through cbor2 with trpc's tag hook (a message
    is exactly one data item; cbor2.loads would ignore bytes after it)."""
    fp = io.BytesIO(payload)
    value = cbor2.CBORDecoder(fp, tag_hook=decode_tag).decode()
    extra = len(fp.getbuffer()) - fp.tell()
    if extra:
        raise cbor2.CBORDecodeError(f"{extra} bytes after the data item")
    return value


_dumps: Callable[[Any], bytes]
_loads: Callable[[bytes], Any]
if speedups is None:
    _dumps, _loads = _cbor2_dumps, _cbor2_loads
else:
    #: One value as CBOR bytes (never the [head, body] form): the C encoder, cbor2 behind it.
    _dumps = speedups.make_encoder(_cbor2_dumps)
    #: One payload (bytes) decoded; raises what the cbor2 path raises on a malformed one.
    _loads = speedups.make_decoder(_cbor2_loads)
_EMPTY_ARGS = _dumps([[]])
#: Byte strings at least this long are encoded here rather than by cbor2, whose encoder copies
#: them through its own output buffer (docs/PERFORMANCE.md, "Large messages"); here they are
#: not copied at all (the head and the bytes go out as two parts).  64 KiB: below it the copy
#: is small next to the rest of the call.
_BIG_BYTES = 64 * 1024


def _bytes_head(size: int) -> bytes:
    """The CBOR head of a byte string of ``size`` bytes (major type 2, 4- or 8-byte length)."""
    if size < 1 << 32:
        return b"\x5a" + size.to_bytes(4, "big")
    return b"\x5b" + size.to_bytes(8, "big")


def encode(value: Any) -> bytes | list[bytes]:
    """One value as a CBOR data item: bytes, or for a large byte string the list
    ``[head, value]`` (the message is their concatenation; the value is not copied)."""
    if type(value) is bytes and len(value) >= _BIG_BYTES:
        return [_bytes_head(len(value)), value]
    return _dumps(value)


#: The leads before a large byte string's own head in the messages this module writes in two
#: parts: none (a value, ``encode``) and ``[[`` (call arguments, ``encode_arguments``).
_LARGE_LEADS = (b"", b"\x81\x81")
#: The longest head of such a message: ``[[`` and a byte string's 9-byte head.
LARGE_HEAD_MAX = 11


def large_bytes_head(prefix: bytes | memoryview, size: int) -> int:
    """How many bytes of a ``size``-byte message are the head before one large byte string
    that is the rest of it, as ``encode`` and ``encode_arguments`` write it (``[head,
    body]``), given the message's first ``LARGE_HEAD_MAX`` bytes or more; 0 if the message is
    not such a one.  A wire that receives a message as one piece splits it there, so that
    ``decode`` takes the body as it is instead of copying it."""
    prefix = bytes(prefix[:LARGE_HEAD_MAX])
    for lead in _LARGE_LEADS:
        for own in (5, 9):
            length = len(lead) + own
            if size - length >= _BIG_BYTES and prefix[:length] == lead + _bytes_head(size - length):
                return length
    return 0


def decode(
    payload: Received, *, what: str = "message", status: Status = Status.INTERNAL, limit: int | None = None
) -> Any:
    """Decode one message (bytes, ``[head, body]``, or a compressed one, decompressed here
    within ``limit`` bytes and the receiver's max message size); a malformed one raises
    RpcError(status), one that does not decompress RpcError(RESOURCE_EXHAUSTED: it expands
    past the limit; INTERNAL: it is not valid data of its coding)."""
    if type(payload) is list:
        head, body = payload
        if head == _bytes_head(len(body)):
            return body  # a large byte string that arrived as its own frame: no copy
        payload = head + body
    elif type(payload) is Compressed:
        payload = inflate(payload, what, limit)
    assert type(payload) is bytes
    try:
        return _loads(payload)
    except Exception as exc:  # cbor2 raises a handful of types on hostile input
        raise RpcError(status, f"cannot decode the {what}: {exc}") from None


def encode_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes | list[bytes]:
    """Encode call arguments: ``[args]``, or ``[args, kwargs]`` when there are keyword arguments
    (bytes, or a list of parts for one large byte string, as :func:`encode`)."""
    if kwargs:
        return _dumps([args, kwargs])
    if not args:
        return _EMPTY_ARGS
    if len(args) == 1 and type(args[0]) is bytes and len(args[0]) >= _BIG_BYTES:
        return [b"\x81\x81" + _bytes_head(len(args[0])), args[0]]  # [[bytes]]
    return _dumps([args])


def inflate(payload: Compressed, what: str, limit: int | None = None) -> bytes:
    """A compressed message's bytes, within ``limit`` (and the receiver's max message size).

    Raises:
        RpcError: RESOURCE_EXHAUSTED if it expands past the limit (found while decompressing,
            never inflated in full), INTERNAL if it is not valid data of its coding.
    """
    try:
        return payload.inflate(limit)
    except DecompressionError as exc:
        raise RpcError(exc.status, f"{what}: {exc.message}") from None


def decode_arguments(payload: Received) -> tuple[list[Any], dict[str, Any]]:
    """Decode call arguments; anything but ``[array]`` / ``[array, map]`` is INVALID_ARGUMENT."""
    if type(payload) is list:
        head, body = payload
        if head == b"\x81\x81" + _bytes_head(len(body)):
            return [body], {}  # [[bytes]] whose bytes came as a frame of their own
    value = decode(payload, what="request", status=Status.INVALID_ARGUMENT)
    if type(value) is list:
        if len(value) == 1 and type(value[0]) is list:
            return value[0], {}
        if (
            len(value) == 2
            and type(value[0]) is list
            and type(value[1]) is dict
            and all(type(key) is str for key in value[1])
        ):
            return value[0], value[1]
    raise RpcError(
        Status.INVALID_ARGUMENT,
        "the request must be a CBOR array [positional-arguments] or "
        "[positional-arguments, keyword-arguments]",
    )


# Last: trpc.wire imports _dumps and _loads from this module, so it can be imported only once
# they exist (a compressed message is one of the payloads decode takes).
from .wire._compression import Compressed, DecompressionError  # noqa: E402
