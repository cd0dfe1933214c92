"""Differential fuzz target: the C frame scanner (``CFramer``) against its pure-Python twin.

Theory of operation.  The two framers promise the same interface and the same behaviour, errors
included (``trpc._framer_py``'s docstring).  Each input is read as a small header that says how to
drive them, then the bytes to scan:

    byte 0     options: bit 0 a max_frame_size from bytes 1-3 (else the minimum, 16384);
               bit 1 a small ``_large_payload`` (byte 4 + 1, so that ordinary inputs reach the
               "collect the pieces of a large frame" paths); bit 2 call ``close()`` at the end;
               bits 4-7: the bytes are repeated 1 + 9 * (options >> 4) times (up to 136), so
               that a short input can hold more frames than one C call describes (1024)
    bytes 1-3  max_frame_size, reduced into the legal range [16384, 2**24 - 1]
    byte 4     the small large_payload, minus 1
    byte 5     low 4 bits: how many chunk sizes follow; high 4 bits: which chunks go through
               ``feed`` rather than ``feed_grouped`` (a bit per chunk, the rest alternate)
    then       one byte per chunk size (< 200: that many bytes; else (b - 200) KiB)
    the rest   the bytes, split at those sizes; whatever is left is the last chunk

Both framers get exactly the same calls.  After every call they must agree on the frames or runs
returned (equal, payloads of type ``bytes``), on ``buffered``, and on errors: the same class,
the same message and the same ``frames`` kept; any other exception is a bug in itself.  Feeding
goes on after an error (both must keep raising it).  A difference raises AssertionError, which
atheris reports as a crash with the input that caused it.

Run: ``python fuzz/framer_diff.py fuzz/corpus/framer_diff -max_total_time=300`` (see
fuzz/README.md).  ``python fuzz/framer_diff.py CRASH_FILE`` replays one input.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["trpc"]):
    from trpc._errors import FrameTooLargeError, TruncatedFrameError
    from trpc._framer_c import CFramer
    from trpc._framer_py import LARGE_PAYLOAD, MAX_FRAME_SIZE_LIMIT, MIN_FRAME_SIZE_LIMIT, PyFramer

FRAMER_ERRORS = (FrameTooLargeError, TruncatedFrameError)
SETUP = 6


def plan(data: bytes) -> tuple[int, int, bool, list[tuple[bytes, str]]]:
    """(max_frame_size, large_payload, close, [(chunk, method), ...]) for one input."""
    if len(data) < SETUP:
        data = data + bytes(SETUP - len(data))
    options = data[0]
    max_frame_size = MIN_FRAME_SIZE_LIMIT
    if options & 1:
        span = MAX_FRAME_SIZE_LIMIT - MIN_FRAME_SIZE_LIMIT + 1
        max_frame_size += int.from_bytes(data[1:4], "big") % span
    large_payload = data[4] + 1 if options & 2 else LARGE_PAYLOAD
    count = data[5] & 15
    methods = data[5] >> 4
    sizes = []
    for b in data[SETUP : SETUP + count]:
        sizes.append(b if b < 200 else (b - 200) * 1024)
    body = data[SETUP + count :] * (1 + 9 * (options >> 4))
    chunks = []
    pos = 0
    for i, size in enumerate(sizes + [len(body)]):
        chunk = body[pos : pos + size]
        pos += len(chunk)
        use_feed = (methods >> i) & 1 if i < 4 else i % 2
        method = "feed" if use_feed else "feed_grouped"
        chunks.append((chunk, method))
    return max_frame_size, large_payload, bool(options & 4), chunks


def outcome(framer, method: str, chunk: bytes):
    """What one call did: ("ok", result) or ("error", class, message, frames)."""
    try:
        if method == "close":
            return ("ok", framer.close())
        return ("ok", getattr(framer, method)(chunk))
    except FRAMER_ERRORS as error:
        return ("error", type(error), str(error), error.frames)


def payloads_are_bytes(result, method: str) -> bool:
    """Every payload in a feed / feed_grouped result (or an error's frames) is exactly bytes."""
    if not isinstance(result, list):
        return True
    if method == "feed":
        return all(type(frame[3]) is bytes for frame in result)
    return all(type(p) is bytes for run in result for p in run[3])


def check(data: bytes) -> None:
    max_frame_size, large_payload, close, chunks = plan(data)
    c, py = CFramer(max_frame_size), PyFramer(max_frame_size)
    c._large_payload = py._large_payload = large_payload
    calls = chunks + ([(b"", "close")] if close else [])
    for step, (chunk, method) in enumerate(calls):
        got_c = outcome(c, method, chunk)
        got_py = outcome(py, method, chunk)
        where = f"call {step} ({method}, {len(chunk)} bytes, max_frame_size {max_frame_size}, large {large_payload})"
        assert got_c == got_py, f"{where}: C {got_c!r:.2000} != Python {got_py!r:.2000}"
        frames = got_c[1] if got_c[0] == "ok" else got_c[3]
        assert payloads_are_bytes(frames, method), f"{where}: C payload not bytes"
        assert payloads_are_bytes(got_py[1] if got_py[0] == "ok" else got_py[3], method), where
        assert c.buffered == py.buffered, f"{where}: buffered C {c.buffered} != Python {py.buffered}"


def TestOneInput(data: bytes) -> None:
    check(data)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
