"""The frame scanner in pure Python, and the framing constants.

Theory of operation.  A frame is a 10-byte header (``length: u32``, ``type: u8``, ``flags: u8``,
``stream_id: u32``, big-endian; ``length`` counts the payload only) and ``length`` payload bytes.
The framer splits the received byte stream into frames and enforces the maximum payload length;
it does not look at type, flags or stream id, which are the protocol layer's business.

:meth:`PyFramer.feed` takes one received chunk and returns every frame it completes:

1. If the previous chunk ended inside a frame, that frame's bytes wait in a ``bytearray`` (the
   carry).  Top it up from the start of the chunk, header first; as soon as the header is
   complete its length is checked, so an oversize frame is refused before any of its payload is
   buffered.
2. Scan the rest of the chunk in place: each complete frame's payload is one slice of the chunk.
3. Keep the incomplete frame at the end, if any, as the new carry.

So complete frames are copied once (into their payload ``bytes``) and only the frame that straddles
two chunks is copied twice.

Large frames (a payload of :data:`LARGE_PAYLOAD` bytes or more) are the exception to step 1 and 3:
the carry holds only the header, and the payload's bytes stay in the chunks they arrived in, as a
list of pieces (the chunks are immutable ``bytes``, so keeping them is safe) that one
``b"".join`` turns into the payload when the last piece arrives.  The payload is then allocated
once, at its exact size, and copied once.  Growing a carry instead would reallocate it as the
frame arrives and copy the payload twice more, and fresh megabyte buffers are what large frames
cost: the kernel faults their pages in as they are first touched, which costs far more than
copying into them (docs/PERFORMANCE.md, "Large messages").

``trpc._framer_c.CFramer`` does the same in C, one call per chunk (collecting large payloads in
Python likewise), and behaves identically, errors included.  A framer is not thread-safe.
"""

from __future__ import annotations

import struct

from ._errors import FrameTooLargeError, TruncatedFrameError

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "MIN_FRAME_SIZE_LIMIT",
    "MAX_FRAME_SIZE_LIMIT",
    "LARGE_PAYLOAD",
    "Frame",
    "Run",
    "PyFramer",
    "group_frames",
]

#: Frame header: payload length, type, flags, stream id.
HEADER = struct.Struct(">IBBI")
HEADER_SIZE = 10
assert HEADER.size == HEADER_SIZE

#: Default limit on a payload: 2 MiB, the default stream window, so that a message the window
#: lets through at once also goes in one frame and is not joined on arrival (a join is a fresh
#: buffer the size of the message: docs/PERFORMANCE.md, "Large messages"), while what one peer
#: can make us buffer per connection stays bounded (larger messages are split over several
#: DATA frames).
DEFAULT_MAX_FRAME_SIZE = 2 << 20
#: The limit may not be set below 16 KiB: a peer must be able to rely on frames of that size
#: (as in HTTP/2's SETTINGS_MAX_FRAME_SIZE) without asking first.
MIN_FRAME_SIZE_LIMIT = 1 << 14
#: ... nor above 2**24 - 1 (16 MiB, HTTP/2's ceiling): larger frames would let one stream hog the
#: connection for too long, and the C framer relies on payload lengths being far below 2**32.
MAX_FRAME_SIZE_LIMIT = (1 << 24) - 1

#: A payload of at least this many bytes is large: while its frame is incomplete, the framers
#: keep the received pieces of it and join them once (see above), instead of copying it into the
#: carry.  64 KiB is the transport's read size: a frame this large always spans reads, often
#: many, and each read the carry would grow by.  A smaller frame spans at most two reads, and
#: carrying it costs about what collecting it does (bench/framer.py), without a list of pieces.
LARGE_PAYLOAD = 1 << 16
#: A piece of a large payload is kept by reference if it is at least this long and at least half
#: of its chunk; otherwise it is copied (appended to a ``bytearray`` piece).  So a peer that
#: trickles a large frame in tiny reads cannot make us hold an object per byte, and a piece
#: cannot keep alive more than as much again of its chunk: the pieces of a payload hold at
#: most about twice its bytes received so far.
PIECE_MIN = 1 << 10

#: What ``feed()`` returns, one per frame: ``(type, flags, stream_id, payload)``.
Frame = tuple[int, int, int, bytes]
#: What ``feed_grouped()`` returns, one per run of frames: ``(type, flags, stream_id, payloads)``.
Run = tuple[int, int, int, list[bytes]]
#: A received piece of a large payload, kept until the frame completes (see ``keep_piece``).
Piece = bytes | bytearray | memoryview

_unpack_header = HEADER.unpack_from
_unpack_length = struct.Struct(">I").unpack_from


def keep_piece(pieces: list[Piece], data: bytes, start: int) -> None:
    """Append ``data[start:]``, more of an incomplete large payload, to ``pieces`` (both
    framers use it).  ``data`` must be ``bytes``: a piece may be a view of it."""
    size = len(data) - start
    if size >= PIECE_MIN and 2 * size >= len(data):
        pieces.append(memoryview(data)[start:] if start else data)
    elif pieces and type(pieces[-1]) is bytearray:
        pieces[-1] += memoryview(data)[start:]
    elif size:
        pieces.append(bytearray(memoryview(data)[start:]))


def group_frames(frames: list[Frame]) -> list[Run]:
    """Group ``feed()``'s frames as ``feed_grouped()`` does: each maximal run of consecutive
    DATA frames (type 0) with flags 0 on one stream id becomes one ``(0, 0, stream_id,
    [payload, ...])``; every other frame becomes ``(type, flags, stream_id, [payload])``."""
    runs: list[Run] = []
    append = runs.append
    tail = -1  # the stream id of the last run if it is a run of DATA frames, else -1
    run: list[bytes] = []
    for type_, flags, stream_id, payload in frames:
        if stream_id == tail and not (type_ or flags):
            run.append(payload)
        else:
            run = [payload]
            append((type_, flags, stream_id, run))
            tail = -1 if type_ or flags else stream_id
    return runs


def check_max_frame_size(max_frame_size: int) -> int:
    """Return ``max_frame_size`` if it is an allowed limit, else raise ValueError."""
    if not MIN_FRAME_SIZE_LIMIT <= max_frame_size <= MAX_FRAME_SIZE_LIMIT:
        raise ValueError(
            f"max_frame_size must be between {MIN_FRAME_SIZE_LIMIT} and {MAX_FRAME_SIZE_LIMIT},"
            f" not {max_frame_size!r}"
        )
    return max_frame_size


def frame_too_large(length: int, max_frame_size: int) -> FrameTooLargeError:
    """The error for a header announcing ``length`` payload bytes (both framers use it)."""
    return FrameTooLargeError(
        f"frame header announces a {length}-byte payload, over the limit of {max_frame_size} bytes"
    )


def truncated_frame(buffered: int, length: int | None) -> TruncatedFrameError:
    """The error for EOF with ``buffered`` bytes of a frame whose payload length is ``length``
    (``None`` if its header is incomplete) (both framers use it)."""
    if length is None:
        return TruncatedFrameError(
            f"stream ended inside a frame header ({buffered} of {HEADER_SIZE} bytes received)"
        )
    return TruncatedFrameError(
        f"stream ended inside a frame ({buffered} of {HEADER_SIZE + length} bytes received)"
    )


class PyFramer:
    """Split a received byte stream into frames; see the module docstring.

    Args:
        max_frame_size: the largest payload accepted, between :data:`MIN_FRAME_SIZE_LIMIT`
            and :data:`MAX_FRAME_SIZE_LIMIT`.

    Raises:
        ValueError: if ``max_frame_size`` is out of range.
    """

    name = "python"
    # Payloads at least this long are collected in pieces (tests lower it).
    _large_payload = LARGE_PAYLOAD

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = check_max_frame_size(max_frame_size)
        # The incomplete frame at the end of the data fed so far (header included; of a large
        # frame, the header only).
        self._carry = bytearray()
        # Total size of the carried frame; valid once the carry holds its whole header.
        self._carry_size = 0
        # The received pieces of a large frame's payload, or None if the frame is not large.
        self._pieces: list[Piece] | None = None
        # Their total length.
        self._collected = 0
        # The error that poisoned the framer, if any.
        self._error: FrameTooLargeError | TruncatedFrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held of the incomplete frame at the end (0 at a frame boundary)."""
        return len(self._carry) + self._collected

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Append one received chunk; return every frame it completes, in order.

        Args:
            data: the chunk (may be empty).

        Returns:
            A list of ``(type, flags, stream_id, payload)`` tuples; ``payload`` is ``bytes``.

        Raises:
            FrameTooLargeError: a header announced a payload over ``max_frame_size``; raised as
                soon as that header is complete.  Its ``frames`` attribute holds the frames this
                call completed before it.  The framer is then poisoned: every later call raises
                the same error class again (with ``frames == []``).
            TruncatedFrameError: if ``close()`` raised it (the framer is poisoned).
        """
        if self._error is not None:
            raise self._poisoned()
        if type(data) is not bytes:
            data = bytes(data)
        frames: list[Frame] = []
        append = frames.append
        max_frame_size = self.max_frame_size
        pos = 0
        end = len(data)

        carry = self._carry
        if carry:
            if len(carry) < HEADER_SIZE:
                pos = HEADER_SIZE - len(carry)
                carry += data[:pos]
                if len(carry) < HEADER_SIZE:
                    return frames
                (length,) = _unpack_length(carry)
                if length > max_frame_size:
                    self._carry = bytearray()
                    raise self._poison(frame_too_large(length, max_frame_size), frames)
                self._carry_size = HEADER_SIZE + length
                if length >= self._large_payload:
                    self._pieces = []
            pieces = self._pieces
            if pieces is None:
                take = self._carry_size - len(carry)
                if take > end - pos:  # the frame is still incomplete
                    carry += memoryview(data)[pos:] if pos else data
                    return frames
                carry += memoryview(data)[pos : pos + take]
                pos += take
                _, type_, flags, stream_id = _unpack_header(carry)
                del carry[:HEADER_SIZE]
                payload = bytes(carry)
            else:  # a large frame: keep its pieces, join them when it is complete
                take = self._carry_size - HEADER_SIZE - self._collected
                if take > end - pos:
                    keep_piece(pieces, data, pos)
                    self._collected += end - pos
                    return frames
                pieces.append(memoryview(data)[pos : pos + take] if take < end else data)
                pos += take
                _, type_, flags, stream_id = _unpack_header(carry)
                payload = b"".join(pieces)
                self._pieces = None
                self._collected = 0
            append((type_, flags, stream_id, payload))
            self._carry = bytearray()

        last = end - HEADER_SIZE  # the last offset where a complete header can start
        while pos <= last:
            length, type_, flags, stream_id = _unpack_header(data, pos)
            if length > max_frame_size:
                raise self._poison(frame_too_large(length, max_frame_size), frames)
            start = pos + 10  # HEADER_SIZE, spelled out in this hot loop
            stop = start + length
            if stop > end:
                self._carry_size = HEADER_SIZE + length
                if length >= self._large_payload:
                    self._carry = bytearray(memoryview(data)[pos:start])
                    self._pieces = pieces = []
                    keep_piece(pieces, data, start)
                    self._collected = end - start
                    return frames
                break
            append((type_, flags, stream_id, data[start:stop]))
            pos = stop

        if pos < end:
            self._carry = bytearray(memoryview(data)[pos:])
        return frames

    def feed_grouped(self, data: bytes | bytearray | memoryview) -> list[Run]:
        """Like :meth:`feed`, but every maximal run of consecutive frames of the call that are
        all DATA (type 0) with flags 0 on one stream id comes as one entry, so that a consumer
        does its per-frame checks once per run.

        Returns:
            ``group_frames(feed(data))``: a list of ``(type, flags, stream_id, payloads)``,
            ``payloads`` a list of ``bytes``; runs of DATA frames as above, every other frame
            alone.  Runs do not span calls; a frame completed from the previous chunk's bytes
            is the first frame of this call and may start a run.

        Raises:
            Like :meth:`feed`; the error's ``frames`` holds this call's runs before it, grouped.
        """
        try:
            frames = self.feed(data)
        except (FrameTooLargeError, TruncatedFrameError) as error:
            error.frames = group_frames(error.frames)
            raise
        return group_frames(frames)

    def close(self) -> None:
        """The peer sent EOF.

        Raises:
            TruncatedFrameError: if part of a frame is buffered (the framer is then poisoned).
            FrameTooLargeError: if an earlier ``feed()`` raised it.
        """
        if self._error is not None:
            raise self._poisoned()
        if self._carry:
            carry = self._carry
            length = _unpack_length(carry)[0] if len(carry) >= HEADER_SIZE else None
            raise self._poison(truncated_frame(self.buffered, length), [])

    def _poison(
        self, error: FrameTooLargeError | TruncatedFrameError, frames: list[Frame]
    ) -> FrameTooLargeError | TruncatedFrameError:
        # A copy without a traceback: the raised error's traceback holds this framer's frame,
        # so keeping that one would be a reference cycle (freed only by the garbage collector).
        self._error = type(error)(*error.args)
        self._pieces = None  # nothing more will be parsed (buffered still counts them)
        error.frames = frames
        return error

    def _poisoned(self) -> FrameTooLargeError | TruncatedFrameError:
        poison = self._error
        assert poison is not None  # set by _poison before any call here
        error = type(poison)(*poison.args)
        error.frames = []
        return error

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} max_frame_size={self.max_frame_size} buffered={self.buffered}>"
        )
