"""Benchmark the frame scanners: C vs its pure-Python twin vs a naive bytearray framer.

Each cell feeds a stream of equal frames (payloads of 16 B, 256 B, 4 KiB, 64 KiB or 1 MiB), cut
into 64 KiB chunks, to fresh framers and reports frames/s and payload MB/s: the median of several
repetitions of a fixed time each.  The framers take turns, repetition by repetition, so that the
machine's slow spells (noisy neighbours, frequency changes) hit them alike, and the c/python
column is the median of the per-turn ratios.  The 1 MiB case (the largest frame by default) is
the cost of large messages: each frame arrives over 17 chunks, and what matters there is how
often a framer allocates and copies a megabyte, not the per-frame parsing.

Chunks are copied into fresh bytes objects just before they are fed (untimed, 256 KiB at a time),
as socket reads deliver them: new objects whose bytes are in the CPU cache.  ``--cold`` feeds the
chunks of a 4 MiB stream as they are instead, so the framer also pays for fetching them from
memory.
As with timeit, the cyclic garbage collector is off while timing unless ``--gc`` is given.

The ``faults`` columns are the minor page faults per frame while feeding (the median over the
repetitions): a fresh buffer's pages fault in as they are first touched, and for large frames
that costs more than the copying.  Whether a megabyte allocation is fresh depends on the
allocator's history (glibc serves it from mmap until a large block has been freed, then reuses
its heap, more or less, depending on the pattern), so for large frames read the faults as much
as the times: a framer whose pattern faults here may fault more or less in another process.
Each cell starts with one untimed pass per framer, which checks the frames.  ``--malloc`` pins
glibc's choice: ``mmap`` makes every buffer of 128 KiB or more fresh (the worst case, and what a
server sees when its heap does not keep megabytes free for reuse), ``heap`` keeps them all in
the heap for reuse (the best case: copies, no faults).

Usage::

    python bench/framer.py                   # 1.5 s per framer and payload size
    python bench/framer.py --quick           # 0.25 s per framer and payload size
    python bench/framer.py --json            # one JSON object on stdout, the table on stderr:
                                             # {"16": {"c": fps, "python": fps, "naive": fps}, ...}
    python bench/framer.py --chunk-size 26   # one 16-byte frame per read (small RPCs)
    python bench/framer.py --sizes 1048576   # only the 1 MiB frames
    python bench/framer.py --malloc mmap     # every large buffer fresh (glibc only)
    python bench/framer.py --grouped         # also feed_grouped (rows "c grouped" and
                                             # "python grouped"; 16 and 256 B unless --sizes)
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import resource
import statistics
import struct
import sys
import time

from trpc._errors import FrameTooLargeError
from trpc._framer import FRAMERS, c_framer_error
from trpc._framer_py import DEFAULT_MAX_FRAME_SIZE, HEADER
from _machine import machine  # noqa: E402  (bench/ is the script's directory)

PAYLOAD_SIZES = (16, 256, 4096, 65536, 1 << 20)
GROUPED_SIZES = (16, 256)
CHUNK_SIZE = 64 * 1024
# Bytes of frames per pass; passes repeat until a repetition's time is up.
STREAM_SIZE = 4 * 1024 * 1024
# Chunks are copied (untimed) and fed in batches of this many bytes, which stay in the L2 cache.
FRESH_BYTES = 256 * 1024


class NaiveFramer:
    """The baseline: append every chunk to a bytearray, unpack frames from its front."""

    name = "naive"
    _unpack = struct.Struct(">IBBI").unpack_from

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        buffer = self._buffer
        buffer += data
        frames = []
        pos = 0
        while len(buffer) - pos >= 10:
            length, type_, flags, stream_id = self._unpack(buffer, pos)
            if length > self.max_frame_size:
                raise FrameTooLargeError(length)
            if len(buffer) - pos - 10 < length:
                break
            frames.append((type_, flags, stream_id, bytes(buffer[pos + 10 : pos + 10 + length])))
            pos += 10 + length
        del buffer[:pos]
        return frames


def grouped(framer_cls: type, name: str) -> type:
    """``framer_cls`` timed on ``feed_grouped``; its ``check_feed`` (for the untimed check)
    returns the grouped payloads one by one."""

    class Grouped(framer_cls):
        def check_feed(self, data):
            return [(t, f, s, p) for t, f, s, payloads in self.feed_grouped(data) for p in payloads]

    Grouped.name = name
    Grouped.timed = "feed_grouped"
    return Grouped


def stream_id(i: int, one_stream: bool) -> int:
    """The stream id of frame ``i``: 1 for all if ``one_stream``, else a new one each."""
    return 1 if one_stream else 2 * i + 1


def make_chunks(
    payload_size: int, chunk_size: int, one_stream: bool
) -> tuple[list[bytes], int, bytes]:
    """A stream of frames with ``payload_size``-byte payloads cut in ``chunk_size`` chunks:
    the chunks, the number of frames, the payload."""
    payload = bytes(range(256)) * (payload_size // 256) + bytes(payload_size % 256)
    count = max(STREAM_SIZE // (HEADER.size + payload_size), 64)
    stream = b"".join(
        HEADER.pack(payload_size, 0, 0, stream_id(i, one_stream)) + payload for i in range(count)
    )
    chunks = [stream[i : i + chunk_size] for i in range(0, len(stream), chunk_size)]
    return chunks, count, payload


def pin_malloc(mode: str) -> None:
    """Make glibc serve large blocks from fresh mmaps (``mmap``) or from its heap (``heap``);
    ``default`` leaves glibc's adaptive choice alone."""
    if mode == "default":
        return
    # mallopt parameters (malloc.h); setting either turns glibc's adaptive threshold off.
    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        sys.exit("--malloc needs glibc's mallopt")
    if mode == "mmap":
        ok = mallopt(m_mmap_threshold, 128 * 1024) and mallopt(m_trim_threshold, 128 * 1024)
    else:
        ok = mallopt(m_mmap_threshold, 32 * 1024 * 1024) and mallopt(m_trim_threshold, 1 << 30)
    if not ok:
        sys.exit("mallopt refused the setting")


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run_once(
    framer_cls, chunks: list[bytes], count: int, duration: float, cold: bool
) -> tuple[float, float]:
    """Feed the stream to fresh framers for ``duration`` seconds; return frames per second and
    minor page faults per frame."""
    frames = 0
    faults = 0
    elapsed = 0.0
    clock = time.perf_counter
    batch = max(1, FRESH_BYTES // len(chunks[0]))
    while elapsed < duration:
        feed = getattr(framer_cls(), getattr(framer_cls, "timed", "feed"))
        for i in range(0, len(chunks), batch):
            # Fresh copies, like socket reads, unless cold; copying is not timed.
            todo = (
                chunks[i : i + batch]
                if cold
                else [bytes(memoryview(c)) for c in chunks[i : i + batch]]
            )
            before = minor_faults()
            start = clock()
            for data in todo:
                feed(data)
            elapsed += clock() - start
            faults += minor_faults() - before
        frames += count
    return frames / elapsed, faults / frames


def measure(
    framers: dict[str, type], payload_size: int, args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """frames/s and page faults per frame of each framer in each repetition, the framers
    taking turns."""
    chunks, count, payload = make_chunks(payload_size, args.chunk_size, args.grouped)
    for framer_cls in framers.values():
        # A fast wrong answer is no answer.  (Frames are not all kept: freeing 64 MiB of them
        # would leave the allocator a large free heap, hiding the faults measured below.)
        framer = framer_cls()
        got = 0
        feed = getattr(framer, "check_feed", framer.feed)
        for chunk in chunks:
            frames = feed(chunk)
            got += len(frames)
            if frames:
                last = frames[-1]
        assert got == count, framer_cls
        assert last == (0, 0, stream_id(count - 1, args.grouped), payload), framer_cls
    runs: dict[str, list[float]] = {name: [] for name in framers}
    faults: dict[str, list[float]] = {name: [] for name in framers}
    for _ in range(args.repeat):
        for name, framer_cls in framers.items():
            fps, fpf = run_once(framer_cls, chunks, count, args.duration, args.cold)
            runs[name].append(fps)
            faults[name].append(fpf)
            gc.collect()
    return runs, faults


def paired_ratio(runs: dict[str, list[float]], a: str, b: str) -> str:
    """Median over the repetitions of a's frames/s over b's in the same repetition."""
    if a not in runs or b not in runs:
        return "-"
    return f"{statistics.median(x / y for x, y in zip(runs[a], runs[b])):.2f}x"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter, noisier runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--repeat", type=int, help="repetitions per cell (default 15, quick 5)")
    parser.add_argument("--duration", type=float, help="seconds per repetition (0.1, quick 0.05)")
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE, help="bytes per feed")
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(size) for size in text.split(",")],
        default=None,
        help="payload sizes to measure, comma-separated (default: all; 16,256 with --grouped)",
    )
    parser.add_argument("--cold", action="store_true", help="feed chunks that are not in cache")
    parser.add_argument(
        "--grouped", action="store_true", help="also time feed_grouped (one stream per cell)"
    )
    parser.add_argument("--gc", action="store_true", help="keep the garbage collector on")
    parser.add_argument(
        "--malloc",
        choices=["default", "mmap", "heap"],
        default="default",
        help="large buffers: glibc's choice, always fresh (mmap) or reused (heap)",
    )
    args = parser.parse_args(argv)
    pin_malloc(args.malloc)
    args.repeat = args.repeat or (5 if args.quick else 15)
    args.duration = args.duration or (0.05 if args.quick else 0.1)
    table = sys.stderr if args.json else sys.stdout

    framers = {name: FRAMERS[name] for name in ("c", "python") if name in FRAMERS}
    framers["naive"] = NaiveFramer
    if args.grouped:
        # feed_grouped's case: every frame on one stream (for the feed rows too), so one run
        # per chunk
        for name in ("c", "python"):
            if name in framers:
                framers[name + " grouped"] = grouped(framers[name], name + " grouped")
        if args.sizes is None:
            args.sizes = GROUPED_SIZES
    args.sizes = args.sizes or PAYLOAD_SIZES
    if "c" not in framers:
        print(f"warning: no C framer ({c_framer_error})", file=sys.stderr)

    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"# trpc framer benchmark, {now}", file=table)
    print(f"# {machine()}", file=table)
    print(
        f"# {args.chunk_size}-byte chunks ({'cold' if args.cold else 'fresh copies'}),"
        f" gc {'on' if args.gc else 'off'}, malloc {args.malloc};"
        f"{' one stream,' if args.grouped else ''}"
        f" median of {args.repeat} x {args.duration} s per"
        " cell, framers taking turns; ratios: median of per-turn ratios",
        file=table,
    )
    widths = {name: max(16, len(name) + 9) for name in framers}
    columns = "  ".join(
        f"{name + ' frames/s':>{widths[name]}} {'MB/s':>7} {'faults':>6}" for name in framers
    )
    grouped_column = f"  {'grouped c/python':>16}" if args.grouped else ""
    print(
        f"{'payload':>8}  {columns}  {'c/python':>8}  {'python/naive':>12}{grouped_column}",
        file=table,
    )

    results: dict[str, dict[str, float]] = {}
    gc_was_enabled = gc.isenabled()
    try:
        if not args.gc:
            gc.disable()
        for size in args.sizes:
            runs, faults = measure(framers, size, args)
            row = results[str(size)] = {name: statistics.median(fps) for name, fps in runs.items()}
            cells = "  ".join(
                f"{row[name]:>{widths[name]},.0f} {row[name] * size / 1e6:>7,.0f}"
                f" {statistics.median(faults[name]):>6.1f}"
                for name in framers
            )
            c_python = paired_ratio(runs, "c", "python")
            python_naive = paired_ratio(runs, "python", "naive")
            if args.grouped:
                grouped_ratio = paired_ratio(runs, "c grouped", "python grouped")
                cells += f"  {c_python:>8}  {python_naive:>12}  {grouped_ratio:>16}"
            else:
                cells += f"  {c_python:>8}  {python_naive:>12}"
            print(f"{size:>8}  {cells}", file=table, flush=True)
    finally:
        if gc_was_enabled:
            gc.enable()
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
