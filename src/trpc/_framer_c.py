"""The frame scanner in C (``csrc/framer.c``), behind the same interface as :class:`PyFramer`.

This is the only module that touches the cffi ``ffi`` and ``lib`` objects.  Importing it raises
ImportError if the compiled module ``trpc._framer_cffi`` is missing or was built for another
trpc version.

A cffi call has a fixed cost, more than parsing one small frame in Python, so:

- One C call scans a whole chunk and describes its complete frames in the C framer's output
  (see ``csrc/framer.h``): columns of type, flags and stream id, which ``zip`` iterates
  directly, and the payload layout as a ``struct`` format, with which one
  ``Struct.unpack_from()`` slices every payload out of the chunk.  Per frame, only C code runs.
- The frame that straddled two chunks is copied out of the C carry buffer, and a call that
  finds only a few frames reads them one by one, which is cheaper than compiling a format.
- A large frame (see ``LARGE_PAYLOAD`` in ``_framer_py``) is not carried in C: C keeps its header
  and says which bytes of each chunk are its payload; this module keeps those pieces of the chunks
  and joins them when C says the frame is complete, as ``PyFramer`` does.
- While C holds no partial frame, the first few complete frames of a chunk are parsed in Python
  without calling C at all, so a read holding one small RPC costs what it costs the Python twin.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable, Iterable, cast

from ._errors import FrameTooLargeError, TruncatedFrameError
from ._framer_py import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER,
    HEADER_SIZE,
    LARGE_PAYLOAD,
    MAX_FRAME_SIZE_LIMIT,
    Frame,
    Piece,
    Run,
    check_max_frame_size,
    frame_too_large,
    group_frames,
    keep_piece,
    truncated_frame,
)
from ._version import __version__

try:
    from ._framer_cffi import ffi, lib
except ImportError as exc:
    raise ImportError(
        f"trpc's compiled framer (trpc._framer_cffi) cannot be imported ({exc}); reinstall trpc"
        " from source with a C compiler available (TRPC_REQUIRE_C=1 makes a failed build fail"
        " the install)"
    ) from exc

if TYPE_CHECKING:
    from _cffi_backend import buffer
    from cffi import FFI

    CData = FFI.CData

# (The casts say what cffi gives for a ``char *``: bytes, never str or a list.)
_built_for = cast(bytes, ffi.string(lib.trpc_framer_version())).decode("ascii", "replace")
if _built_for != __version__:
    raise ImportError(
        f"trpc._framer_cffi was built for trpc {_built_for}, but this is trpc {__version__};"
        " rebuild it (reinstall trpc, or run `python build_ffi.py` in a source checkout)"
    )
if lib.TRPC_FRAMER_HEADER_SIZE != HEADER_SIZE or (
    lib.TRPC_FRAMER_MAX_FRAME_SIZE_LIMIT != MAX_FRAME_SIZE_LIMIT
):
    raise ImportError("trpc._framer_cffi disagrees with trpc._framer_py on the frame format")

__all__ = ["CFramer"]

# Frames described per C call, at 14 + 12 bytes of output each: 26 KiB per framer.  A 64 KiB
# chunk of 16-byte frames holds 2520 frames: three calls, whose fixed cost is small next to
# the Python work that 1024 frames need afterwards.
_CAPACITY = 1024
# Below this many frames in one call, reading the descriptors one by one beats compiling a
# Struct.
_FEW = 4
# When C holds no partial frame, up to this many frames at the start of a chunk are parsed in
# Python: a chunk of a few small frames (a typical RPC) is then never handed to C at all.
_FAST_FRAMES = range(16)

_unpack_header = HEADER.unpack_from
_feed = lib.trpc_framer_feed
_carried = lib.trpc_framer_carried
_unpack = cast("Callable[[CData, int], bytes]", ffi.unpack)
_Struct = struct.Struct
_COLLECTED = lib.TRPC_FRAMER_COLLECTED
_join = b"".join
_TOO_LARGE = lib.TRPC_FRAMER_TOO_LARGE
_TRUNCATED = lib.TRPC_FRAMER_TRUNCATED
_NO_MEMORY = lib.TRPC_FRAMER_NO_MEMORY
# Where trpc_framer_result.collect is among the result's uint32 fields.
_COLLECT = 7
if ffi.offsetof("trpc_framer_result", "collect") != 4 * _COLLECT:
    raise ImportError("trpc._framer_cffi's result layout is not the one trpc._framer_c reads")
# Where each column starts in the type_flags (uint8) and columns (uint32) arrays, and in the
# run_type_flags and runs arrays.
_TYPE, _FLAGS = 0, _CAPACITY
_ID, _START, _END = 0, _CAPACITY, 2 * _CAPACITY
_FIRST = _CAPACITY
_map = map
_list = list


class CFramer:
    """Split a received byte stream into frames, in C; see :class:`PyFramer` for the interface."""

    name = "c"

    # Offsets in the output are uint32, so larger chunks are fed in pieces of this size.
    _max_chunk = 1 << 31
    # Payloads at least this long are collected in pieces (tests lower it).
    _large_payload = LARGE_PAYLOAD

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = check_max_frame_size(max_frame_size)
        # True while C holds no partial frame and no error, so Python may parse in place.
        self._fast = True
        # The C framer and views of its output (26 KiB), made when first needed: a connection
        # that only ever receives whole small frames never needs them.
        self._framer: CData | None = None
        # The pieces received so far of the large frame C is collecting (see keep_piece).
        self._pieces: list[Piece] = []

    def _start(self) -> CData:
        framer = lib.trpc_framer_new(self.max_frame_size, _CAPACITY, self._large_payload)
        if framer == ffi.NULL:
            raise MemoryError("cannot allocate a framer")
        # The views below are of memory that lives as long as self._framer.
        result = lib.trpc_framer_result_of(framer)
        self._result = memoryview(ffi.buffer(result, ffi.sizeof(result[0]))).cast("I")
        self._columns = lib.trpc_framer_columns(framer)
        self._column_view = memoryview(ffi.buffer(self._columns, 3 * _CAPACITY * 4)).cast("I")
        self._type_flags = lib.trpc_framer_type_flags(framer)
        self._type_flags_buffer = ffi.buffer(self._type_flags, 2 * _CAPACITY)
        self._format = ffi.buffer(
            lib.trpc_framer_format(framer), _CAPACITY * lib.TRPC_FRAMER_FORMAT_PER_FRAME + 2
        )
        self._runs = memoryview(ffi.buffer(lib.trpc_framer_runs(framer), 3 * _CAPACITY * 4)).cast("I")
        self._run_type_flags = memoryview(
            ffi.buffer(lib.trpc_framer_run_type_flags(framer), 2 * _CAPACITY)
        )
        self._framer = ffi.gc(framer, lib.trpc_framer_free)
        return self._framer

    @property
    def buffered(self) -> int:
        """Bytes held of the incomplete frame at the end (0 at a frame boundary)."""
        if self._fast:
            return 0
        assert self._framer is not None  # made before C could hold anything
        return lib.trpc_framer_buffered(self._framer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Append one received chunk; return every frame it completes (see PyFramer.feed)."""
        if type(data) is not bytes:
            data = bytes(data)
        end = len(data)
        if end > self._max_chunk:
            return self._feed_pieces(data)
        frames: list[Frame] = []
        pos = 0
        if self._fast:
            # C holds nothing: parse the first few complete frames right here, since for a
            # chunk of a few frames the C call costs more than it saves.  Anything else (an
            # incomplete or oversize frame) is left to C.
            last = end - HEADER_SIZE
            max_frame_size = self.max_frame_size
            for _ in _FAST_FRAMES:
                if pos > last:
                    break
                length, type_, flags, stream_id = _unpack_header(data, pos)
                start = pos + 10  # HEADER_SIZE
                stop = start + length
                if stop > end or length > max_frame_size:
                    break
                frames.append((type_, flags, stream_id, data[start:stop]))
                pos = stop
            if pos == end:
                return frames
        framer = self._framer or self._start()
        tf: CData | buffer  # the type and flags columns: read one by one, or sliced
        while True:
            status = _feed(framer, data, end, pos)
            if not status:  # no frame completed: C now holds a partial one (or still does)
                self._hold_partial(data, end)
                return frames
            n, pos, carried, carried_length, offset, format_length, buffered, collect, _ = (
                self._result.tolist()
            )
            first = 0  # the first frame whose payload lies in data
            if carried:
                first = 1
                payload = self._carried_payload(framer, data, end, carried, carried_length)
                tf = self._type_flags
                frames.append((tf[_TYPE], tf[_FLAGS], self._columns[_ID], payload))
            if n - first >= _FEW:
                # Iterating bytes and memoryviews directly beats building lists first.
                tf = self._type_flags_buffer
                frames += zip(
                    tf[_TYPE + first : _TYPE + n],
                    tf[_FLAGS + first : _FLAGS + n],
                    self._column_view[_ID + first : _ID + n],
                    _Struct(self._format[:format_length]).unpack_from(data, offset),
                )
            else:
                tf = self._type_flags
                c = self._columns
                for i in range(first, n):
                    payload = data[c[_START + i] : c[_END + i]]
                    frames.append((tf[_TYPE + i], tf[_FLAGS + i], c[_ID + i], payload))
            if status < 0:
                self._fast = False
                raise self._error(status, frames)
            if collect:  # the chunk ends inside a large frame: keep that piece
                keep_piece(self._pieces, data, end - collect)
            if n < _CAPACITY:
                self._fast = not buffered
                return frames

    def feed_grouped(self, data: bytes | bytearray | memoryview) -> list[Run]:
        """Append one received chunk; return its frames grouped in runs (see
        PyFramer.feed_grouped).

        C finds the runs among the frames it scans (the run columns, see ``csrc/framer.h``),
        so per run of a C call, Python makes one list: a slice of the payload tuple that the
        struct format unpacks.  What C cannot know -- whether a run continues the frames parsed
        before it in this call (the Python fast path, a carried frame, the previous C call of
        a chunk larger than its output) -- is checked here, once per C call.
        """
        if type(data) is not bytes:
            data = bytes(data)
        end = len(data)
        if end > self._max_chunk:
            try:
                return group_frames(self._feed_pieces(data))
            except (FrameTooLargeError, TruncatedFrameError) as error:
                error.frames = group_frames(error.frames)
                raise
        runs: list[Run] = []
        # The last run's payload list, and its stream id if it is a run of plain DATA frames
        # (-1 otherwise): a DATA frame with flags 0 on that stream joins it.
        run: list[bytes] = []
        tail = -1
        pos = 0
        if self._fast:
            # As in feed(): the first few complete frames are parsed here.
            last = end - HEADER_SIZE
            max_frame_size = self.max_frame_size
            for _ in _FAST_FRAMES:
                if pos > last:
                    break
                length, type_, flags, stream_id = _unpack_header(data, pos)
                start = pos + 10  # HEADER_SIZE
                stop = start + length
                if stop > end or length > max_frame_size:
                    break
                if stream_id == tail and not (type_ or flags):
                    run.append(data[start:stop])
                else:
                    run = [data[start:stop]]
                    runs.append((type_, flags, stream_id, run))
                    tail = -1 if type_ or flags else stream_id
                pos = stop
            if pos == end:
                return runs
        framer = self._framer or self._start()
        tf: CData | memoryview  # the type and flags columns, of frames or of runs
        lists: Iterable[list[bytes]]
        while True:
            status = _feed(framer, data, end, pos)
            if not status:  # no frame completed: C now holds a partial one (or still does)
                self._hold_partial(data, end)
                return runs
            n, pos, carried, carried_length, offset, format_length, buffered, collect, count = (
                self._result.tolist()
            )
            first = 0  # the first frame whose payload lies in data
            if carried:
                first = 1
                payload = self._carried_payload(framer, data, end, carried, carried_length)
                tf = self._type_flags
                type_, flags, stream_id = tf[_TYPE], tf[_FLAGS], self._columns[_ID]
                if stream_id == tail and not (type_ or flags):
                    run.append(payload)
                else:
                    run = [payload]
                    runs.append((type_, flags, stream_id, run))
                    tail = -1 if type_ or flags else stream_id
            if n - first >= _FEW:
                payloads = _Struct(self._format[:format_length]).unpack_from(data, offset)
                tf = self._run_type_flags
                r = self._runs
                k = 0
                if r[_ID] == tail and not (tf[_TYPE] or tf[_FLAGS]):
                    # The first run continues the last one.
                    run += payloads[: r[_END]]
                    k = 1
                if count == n - first:  # every run is one frame
                    lists = _map(_list, zip(payloads[k:] if k else payloads))
                else:
                    lists = [
                        [*payloads[a:b]]
                        for a, b in zip(r[_FIRST + k : _FIRST + count], r[_END + k : _END + count])
                    ]
                runs += zip(
                    tf[_TYPE + k : _TYPE + count],
                    tf[_FLAGS + k : _FLAGS + count],
                    r[_ID + k : _ID + count],
                    lists,
                )
                if count > k:
                    last = count - 1
                    run = runs[-1][3]
                    tail = -1 if tf[_TYPE + last] or tf[_FLAGS + last] else r[_ID + last]
            else:
                tf = self._type_flags
                c = self._columns
                for i in range(first, n):
                    type_, flags, stream_id = tf[_TYPE + i], tf[_FLAGS + i], c[_ID + i]
                    if stream_id == tail and not (type_ or flags):
                        run.append(data[c[_START + i] : c[_END + i]])
                    else:
                        run = [data[c[_START + i] : c[_END + i]]]
                        runs.append((type_, flags, stream_id, run))
                        tail = -1 if type_ or flags else stream_id
            if status < 0:
                self._fast = False
                raise self._error(status, runs)
            if collect:  # the chunk ends inside a large frame: keep that piece
                keep_piece(self._pieces, data, end - collect)
            if n < _CAPACITY:
                self._fast = not buffered
                return runs

    def _hold_partial(self, data: bytes, end: int) -> None:
        """C completed no frame: it holds a partial one, whose large payload (if it is one)
        Python keeps as pieces of the received chunks."""
        self._fast = False
        collect = self._result[_COLLECT]
        if collect:
            keep_piece(self._pieces, data, end - collect)

    def _carried_payload(self, framer: CData, data: bytes, end: int, carried: int, carried_length: int) -> bytes:
        """The payload of the frame that started in an earlier chunk (frame 0 of this call):
        a large one is joined from its pieces, a small one copied out of C's carry."""
        if carried == _COLLECTED:
            c = self._columns
            pieces = self._pieces
            start, stop = c[_START], c[_END]
            pieces.append(data if stop - start == end else memoryview(data)[start:stop])
            payload = _join(pieces)
            pieces.clear()
            return payload
        return _unpack(_carried(framer), carried_length)

    def _feed_pieces(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        view = memoryview(data)
        step = self._max_chunk
        for offset in range(0, len(data), step):
            try:
                frames += self.feed(bytes(view[offset : offset + step]))
            except (FrameTooLargeError, TruncatedFrameError) as error:
                error.frames[:0] = frames
                raise
        return frames

    def close(self) -> None:
        """The peer sent EOF (see PyFramer.close)."""
        if self._fast:
            return  # C holds nothing and has seen no error
        assert self._framer is not None  # made before C could hold anything
        status = lib.trpc_framer_close(self._framer)
        if status:
            raise self._error(status, [])

    def _error(self, status: int, frames: list[Frame] | list[Run]) -> Exception:
        self._pieces.clear()  # the framer is poisoned: nothing more will be parsed
        assert self._framer is not None  # made by the call that found the error
        error: FrameTooLargeError | TruncatedFrameError
        if status == _TOO_LARGE:
            error = frame_too_large(lib.trpc_framer_announced(self._framer), self.max_frame_size)
        elif status == _TRUNCATED:
            buffered = lib.trpc_framer_buffered(self._framer)
            length = lib.trpc_framer_announced(self._framer) if buffered >= HEADER_SIZE else None
            error = truncated_frame(buffered, length)
        elif status == _NO_MEMORY:
            return MemoryError("cannot grow the framer's carry buffer")
        else:
            raise AssertionError(f"trpc_framer_feed returned {status}")
        error.frames = frames
        return error

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} max_frame_size={self.max_frame_size} buffered={self.buffered}>"
        )
