"""Per-message compression on the trpc wire (docs/PROTOCOL.md section 5, "Compressed messages").

Theory of operation
-------------------
Each side's preface says which *codings* it accepts, as a bit set (:func:`coding_bit`); a
sender compresses a message only with a coding its peer accepts.  A compressed message is the
whole encoded message compressed as one zlib stream (RFC 1950) or one zstd frame, carried in
DATA frames like any other; its first DATA frame says which coding in two flag bits
(:data:`CODING_FLAGS`).  This module owns the codings: their names, which ones this process can
use (zstd only when the ``zstandard`` package imports), and the two transformations:

- :func:`compress` turns an encoded message (bytes, or the ``[head, body]`` parts of a large
  one) into the compressed bytes, without joining the parts first.
- :func:`decompress` turns the received parts back into the message, never producing more than
  ``limit + 1`` bytes however far the data would expand: zlib's ``decompress(data,
  max_length)`` stops at the bound.  zstd: a frame whose header declares its content size
  (as every frame trpc sends does) is refused at once if that is over the limit, else
  decompressed in one call into a buffer of exactly that size, which libzstd never writes
  past (a frame that holds more than it declares is an error); a frame that declares no size
  is decompressed into a sink that refuses output beyond the limit.  Before zstd runs, the
  frame's block headers are walked (no decompression) to check that the data is exactly one
  complete frame: the streaming decompressor alone accepts a truncated frame silently.

A message that would expand past the limit raises :class:`DecompressionError` with
RESOURCE_EXHAUSTED; data that is not one valid stream of its coding (corrupt, truncated, bytes
after its end) raises it with INTERNAL.  The call layer turns either into the end of that one
call; the connection itself carries on.

The wire hands a compressed message on as it arrived, a :class:`Compressed` (its coding and
its compressed bytes), and the call layer decompresses it only when it reads it (a handler
taking its next request, a client its next response; ``trpc._codec.decode``).  So what a
connection holds for messages not yet read is their size on the wire, which flow control
bounds, however far they would expand: a peer cannot make a receiver hold more by sending
small messages that expand to large ones faster than they are read.

Nothing here imports Trio; zstandard is optional, and :data:`AVAILABLE` says what this process
can use.
"""

from __future__ import annotations

import enum
import importlib
import zlib
from typing import Any, Final, Iterable

from .._status import Status

#: The zstandard module, or None when the extra trpc-trio[zstd] is not installed (then zstd is
#: not offered).  Typed Any: the package is optional, and its stubs do not know file-likes.
_zstd: Any
try:
    _zstd = importlib.import_module("zstandard")
except ImportError:
    _zstd = None

__all__ = [
    "AVAILABLE",
    "CODING_FLAGS",
    "CODING_SHIFT",
    "Coding",
    "Compressed",
    "DEFAULT_COMPRESSION_THRESHOLD",
    "DecompressionError",
    "coding_bit",
    "codings_of",
    "compress",
    "decompress",
    "parse_coding",
]


class Coding(enum.IntEnum):
    """A compression coding, by its number in the DATA frame's coding field."""

    #: Not compressed.
    NONE = 0
    #: One zlib stream (RFC 1950), the standard library's ``zlib``.
    ZLIB = 1
    #: One zstd frame (RFC 8878), through the ``zstandard`` package.
    ZSTD = 2


#: The DATA flag bits that hold a message's coding (bits 2 and 3: the field's value is the
#: :class:`Coding`; 3 is reserved, a protocol error).
CODING_FLAGS: Final = 0x0C
#: How far the coding field is shifted within the flags.
CODING_SHIFT: Final = 2
#: Messages whose encoding is shorter than this many bytes are sent as they are, whatever the
#: coding asked for: below about a kilobyte compression saves a few bytes at best (a zlib
#: stream alone costs 6 bytes of header and checksum, a zstd frame about 9) and costs a
#: compressor's setup on every message.
DEFAULT_COMPRESSION_THRESHOLD: Final = 1024
#: zlib level 1 and zstd level 3 (zstd's own default): RPC messages are compressed on the way
#: of the call, once per send, so speed wins over the last few percent of ratio.  zlib's
#: level 1 gets most of level 6's ratio on repetitive data at several times its speed.
_ZLIB_LEVEL: Final = 1
_ZSTD_LEVEL: Final = 3
#: zstd output is written to the bounding sink in pieces of this size: how far past the limit
#: a decompression may go before it is stopped.
_ZSTD_WRITE_SIZE: Final = 1 << 16

_NAMES: Final = {"zlib": Coding.ZLIB, "zstd": Coding.ZSTD}


def coding_bit(coding: Coding) -> int:
    """The bit of ``coding`` in a preface's accepted codings (zlib 0x1, zstd 0x2)."""
    return 1 << (coding - 1)


#: The bits of every coding the protocol defines; other bits of the preface field are reserved.
KNOWN_BITS: Final = coding_bit(Coding.ZLIB) | coding_bit(Coding.ZSTD)
#: The codings this process can compress and decompress, as preface bits.
AVAILABLE: Final = coding_bit(Coding.ZLIB) | (coding_bit(Coding.ZSTD) if _zstd is not None else 0)


def parse_coding(name: str | Coding | None) -> Coding:
    """The coding named ``name`` (``"zlib"``, ``"zstd"``; None or ``"none"``: NONE).

    Raises:
        ValueError: an unknown name, or ``"zstd"`` when the ``zstandard`` package is missing.
    """
    if name is None:
        return Coding.NONE
    if isinstance(name, Coding):
        coding = name
    elif isinstance(name, str) and (name in _NAMES or name == "none"):
        coding = _NAMES.get(name, Coding.NONE)
    else:
        raise ValueError(f"compression is 'zlib', 'zstd' or None, not {name!r}")
    if coding and not AVAILABLE & coding_bit(coding):
        raise ValueError("zstd compression needs the zstandard package: pip install 'trpc-trio[zstd]'")
    return coding


def codings_of(names: Iterable[str | Coding] | None) -> int:
    """The preface bits of the codings named (None: every coding this process can use)."""
    if names is None:
        return AVAILABLE
    bits = 0
    for name in names:
        coding = parse_coding(name)
        if coding:
            bits |= coding_bit(coding)
    return bits


class DecompressionError(Exception):
    """A compressed message that cannot be handed on: ``status`` is RESOURCE_EXHAUSTED when it
    would expand past the limit, INTERNAL when it is not valid data of its coding."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def compress(coding: Coding, payload: bytes | list[bytes]) -> bytes:
    """``payload`` (bytes, or parts whose concatenation is the message) compressed as one
    zlib stream or one zstd frame."""
    parts: list[bytes] = payload if isinstance(payload, list) else [payload]
    if coding == Coding.ZLIB:
        compressor = zlib.compressobj(_ZLIB_LEVEL)
        return b"".join([*map(compressor.compress, parts), compressor.flush()])
    if coding == Coding.ZSTD and _zstd is not None:
        if len(parts) == 1:
            result: bytes = _zstd.ZstdCompressor(level=_ZSTD_LEVEL).compress(parts[0])
            return result
        size = sum(map(len, parts))
        zobj = _zstd.ZstdCompressor(level=_ZSTD_LEVEL).compressobj(size=size)
        return b"".join([*map(zobj.compress, parts), zobj.flush()])
    raise ValueError(f"cannot compress with coding {coding!r}")


class Compressed:
    """A compressed message as it arrived: its coding, its compressed bytes (``parts``, in
    order) and the largest message its receiver accepts (``limit``).  ``len()`` is its size on
    the wire, which is what its flow-control credit counts; :meth:`inflate` gives the message."""

    __slots__ = ("coding", "parts", "limit", "_size")

    def __init__(self, coding: int, parts: list[bytes], limit: int) -> None:
        self.coding = coding
        self.parts = parts
        self.limit = limit
        self._size = sum(map(len, parts))

    def __len__(self) -> int:
        return self._size

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is Compressed and self.coding == other.coding and self.limit == other.limit
            and b"".join(self.parts) == b"".join(other.parts)
        )

    __hash__ = None  # type: ignore[assignment]  # equal by value, and mutable: not a key

    def __repr__(self) -> str:
        return f"Compressed(coding={self.coding}, {self._size} bytes)"

    def inflate(self, limit: int | None = None) -> bytes:
        """The message, at most ``limit`` bytes (default, and at most: the receiver's max
        message size).

        Raises:
            DecompressionError: as :func:`decompress`.
        """
        bound = self.limit if limit is None or limit > self.limit else limit
        return decompress(self.coding, self.parts, bound)


def decompress(coding: int, parts: list[bytes], limit: int) -> bytes:
    """The message that ``parts`` (the compressed bytes, in order) hold, at most ``limit``
    bytes long.

    Raises:
        DecompressionError: RESOURCE_EXHAUSTED if it would be longer than ``limit`` (found
            while decompressing: at most about ``limit`` bytes are ever produced); INTERNAL
            if the data is not exactly one valid stream of ``coding``.
    """
    if coding == Coding.ZLIB:
        return _inflate(parts, limit)
    if coding == Coding.ZSTD and _zstd is not None:
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return _unzstd(data, limit)
    raise DecompressionError(Status.INTERNAL, f"coding {coding} is not available")


def _too_large(limit: int) -> DecompressionError:
    return DecompressionError(
        Status.RESOURCE_EXHAUSTED, f"compressed message expands past the limit of {limit} bytes"
    )


def _inflate(parts: list[bytes], limit: int) -> bytes:
    inflater = zlib.decompressobj()
    out: list[bytes] = []
    room = limit
    try:
        last = len(parts) - 1
        for index, part in enumerate(parts):
            chunk = inflater.decompress(part, room + 1)
            room -= len(chunk)
            if room < 0 or inflater.unconsumed_tail:
                raise _too_large(limit)
            out.append(chunk)
            if inflater.eof and (inflater.unused_data or index != last):
                raise DecompressionError(Status.INTERNAL, "bytes after the end of the zlib stream")
    except zlib.error as exc:
        raise DecompressionError(Status.INTERNAL, f"corrupt zlib data: {exc}") from None
    if not inflater.eof:
        raise DecompressionError(Status.INTERNAL, "truncated zlib data (the stream does not end)")
    return b"".join(out)


class _BoundedSink:
    """Where zstd writes its output: refuses any beyond ``limit`` bytes, which stops the
    decompression there."""

    __slots__ = ("parts", "room", "limit")

    def __init__(self, limit: int) -> None:
        self.parts: list[bytes] = []
        self.room = limit
        self.limit = limit

    def write(self, data: Any) -> int:
        size = len(data)
        self.room -= size
        if self.room < 0:
            raise _too_large(self.limit)
        self.parts.append(bytes(data))
        return size


def _zstd_frame_size(data: bytes) -> int:
    """The length of the zstd frame at the start of ``data``, from its header and block
    headers alone (RFC 8878 section 3.1.1): a zstd frame, not a skippable one."""
    assert _zstd is not None
    if data[:4] != b"\x28\xb5\x2f\xfd":
        raise ValueError("not a zstd frame (bad magic number)")
    position: int = _zstd.frame_header_size(data)
    checksum = data[4] & 0x04  # Content_Checksum_flag of the frame header descriptor
    while True:
        header = data[position : position + 3]
        if len(header) < 3:
            raise ValueError("truncated zstd frame")
        value = int.from_bytes(header, "little")
        kind = (value >> 1) & 3
        if kind == 3:
            raise ValueError("reserved zstd block type")
        position += 3 + (1 if kind == 1 else value >> 3)  # an RLE block holds one byte
        if value & 1:  # Last_Block
            return position + (4 if checksum else 0)


def _unzstd(data: bytes, limit: int) -> bytes:
    assert _zstd is not None
    try:
        size = _zstd_frame_size(data)
    except (ValueError, _zstd.ZstdError) as exc:
        raise DecompressionError(Status.INTERNAL, f"corrupt zstd data: {exc}") from None
    if size != len(data):
        what = "truncated zstd frame" if size > len(data) else "bytes after the end of the zstd frame"
        raise DecompressionError(Status.INTERNAL, what)
    try:
        declared = _zstd.frame_content_size(data)  # -1: the header does not say
        if declared > limit:
            raise _too_large(limit)
        if declared > 0:
            result: bytes = _zstd.ZstdDecompressor().decompress(data)
            return result
        sink = _BoundedSink(limit)
        writer = _zstd.ZstdDecompressor().stream_writer(sink, write_size=_ZSTD_WRITE_SIZE, closefd=False)
        writer.write(data)
        writer.flush()
    except _zstd.ZstdError as exc:
        raise DecompressionError(Status.INTERNAL, f"corrupt zstd data: {exc}") from None
    return b"".join(sink.parts)
