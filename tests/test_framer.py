"""Tests for the frame scanners: every test runs against both (the framer_cls fixture), and a
hypothesis test requires the C framer, its Python twin and a reference model to agree on every
stream, split and error."""

from __future__ import annotations

import logging
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trpc import _framer
from trpc._errors import FrameTooLargeError, RemoteProtocolError, TruncatedFrameError
from trpc._framer_py import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER,
    HEADER_SIZE,
    LARGE_PAYLOAD,
    MAX_FRAME_SIZE_LIMIT,
    MIN_FRAME_SIZE_LIMIT,
    PIECE_MIN,
    PyFramer,
    keep_piece,
)

from .helpers import run_python

SMALL_MAX = MIN_FRAME_SIZE_LIMIT  # the smallest limit keeps boundary payloads small


def frame(payload: bytes = b"", type_: int = 0, flags: int = 0, stream_id: int = 1) -> bytes:
    return HEADER.pack(len(payload), type_, flags, stream_id) + payload


def header(length: int, type_: int = 0, flags: int = 0, stream_id: int = 1) -> bytes:
    return HEADER.pack(length, type_, flags, stream_id)


def feed_chunks(framer, chunks) -> list:
    frames = []
    for chunk in chunks:
        frames += framer.feed(chunk)
    return frames


def split_at(data: bytes, points) -> list[bytes]:
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


FRAMES = [
    (0, 0, 1, b"hello"),
    (1, 0x80, 3, b""),
    (255, 255, 2**32 - 1, bytes(range(256))),
    (7, 1, 0, b"x" * 1000),
    (2, 4, 5, b""),
]
STREAM = b"".join(frame(p, t, f, s) for t, f, s, p in FRAMES)


# --- splitting -------------------------------------------------------------------------------


def test_one_chunk(framer_cls):
    framer = framer_cls()
    assert framer.feed(STREAM) == FRAMES
    assert framer.buffered == 0
    framer.close()


def test_name(framer_cls, framer_name):
    assert framer_cls.name == framer_name


def test_empty_feed(framer_cls):
    framer = framer_cls()
    assert framer.feed(b"") == []
    assert framer.feed(STREAM[:3]) == []
    assert framer.feed(b"") == []
    assert framer.buffered == 3
    assert framer.feed(STREAM[3:]) == FRAMES
    assert framer.feed(b"") == []


def test_byte_at_a_time(framer_cls):
    framer = framer_cls()
    got = []
    for i in range(len(STREAM)):
        got += framer.feed(STREAM[i : i + 1])
        # buffered counts the bytes of the incomplete frame only
        assert framer.buffered == (i + 1) - sum(HEADER_SIZE + len(p) for *_, p in got)
    assert got == FRAMES
    assert framer.buffered == 0
    framer.close()


def test_each_frame_completes_on_its_last_byte(framer_cls):
    framer = framer_cls()
    pos = 0
    for t, f, s, p in FRAMES:
        end = pos + HEADER_SIZE + len(p)
        assert framer.feed(STREAM[pos : end - 1]) == []
        assert framer.buffered == end - 1 - pos
        assert framer.feed(STREAM[end - 1 : end]) == [(t, f, s, p)]
        assert framer.buffered == 0
        pos = end


@pytest.mark.parametrize("seed", range(20))
def test_random_splits(framer_cls, seed):
    rng = random.Random(seed)
    frames = [
        (rng.randrange(256), rng.randrange(256), rng.randrange(2**32), rng.randbytes(size))
        for size in rng.choices([0, 1, 9, 10, 11, 100, 5000], k=200)
    ]
    stream = b"".join(frame(p, t, f, s) for t, f, s, p in frames)
    points = rng.sample(range(1, len(stream)), rng.choice([1, 10, 100, 1000]))
    framer = framer_cls()
    assert feed_chunks(framer, split_at(stream, points)) == frames
    assert framer.buffered == 0


def test_zero_length_payloads(framer_cls):
    frames = [(i % 256, i % 7, i, b"") for i in range(3000)]
    stream = b"".join(frame(p, t, f, s) for t, f, s, p in frames)
    assert framer_cls().feed(stream) == frames
    assert feed_chunks(framer_cls(), [stream[i : i + 1] for i in range(len(stream))]) == frames
    assert feed_chunks(framer_cls(), split_at(stream, range(7, len(stream), 7))) == frames


def test_many_frames_in_one_chunk(framer_cls):
    # more frames than the C framer describes per call, with a partial frame at the end
    frames = [(1, 0, i, bytes([i % 256]) * (i % 3)) for i in range(10_000)]
    stream = b"".join(frame(p, t, f, s) for t, f, s, p in frames)
    framer = framer_cls()
    assert framer.feed(stream + b"\0\0") == frames
    assert framer.buffered == 2
    assert framer.feed(header(1)[2:] + b"!") == [(0, 0, 1, b"!")]


def test_payloads_are_bytes(framer_cls):
    framer = framer_cls()
    for chunk in (STREAM[:5], STREAM[5:700], STREAM[700:]):
        for _, _, _, payload in framer.feed(bytearray(chunk)):
            assert type(payload) is bytes


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_input_types(framer_cls, kind):
    framer = framer_cls()
    got = feed_chunks(framer, [kind(c) for c in split_at(STREAM, [4, 15, 200, 201])])
    assert got == FRAMES


def test_memoryview_of_other_formats(framer_cls):
    data = bytearray(frame(b"abcdefgh", 1, 2, 3))
    data += bytes(-len(data) % 4)  # pad to whole uint32 with a partial frame
    framer = framer_cls()
    assert framer.feed(memoryview(data).cast("I")) == [(1, 2, 3, b"abcdefgh")]
    assert framer.buffered == len(data) - 18


def test_input_is_not_kept(framer_cls):
    # the framer must copy what it carries, not keep a view of a buffer the caller reuses
    framer = framer_cls()
    buffer = bytearray(frame(b"0123456789"))
    assert framer.feed(memoryview(buffer)[:15]) == []
    buffer[:] = bytes(len(buffer))
    assert framer.feed(frame(b"0123456789")[15:]) == [(0, 0, 1, b"0123456789")]


def test_large_frames_across_many_chunks(framer_cls):
    big = bytes(range(256)) * (MAX_FRAME_SIZE_LIMIT // 256)  # just under 16 MiB
    frames = [(0, 0, 1, b"a"), (0, 1, 3, big), (0, 0, 5, b"b"), (9, 9, 9, big[:70_000])]
    stream = b"".join(frame(p, t, f, s) for t, f, s, p in frames)
    framer = framer_cls(MAX_FRAME_SIZE_LIMIT)
    got = []
    for i in range(0, len(stream), 65536):
        got += framer.feed(stream[i : i + 65536])
        assert framer.buffered <= HEADER_SIZE + len(big)
    assert got == frames
    assert framer.buffered == 0
    framer.close()


# --- large frames: their payload is collected in pieces and joined once ----------------------


def payload_of(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def feed_checking_buffered(framer, chunks) -> list:
    """Feed the chunks; after each, ``buffered`` must be the bytes of the incomplete frame."""
    frames = []
    fed = 0
    for chunk in chunks:
        frames += framer.feed(chunk)
        fed += len(chunk)
        assert framer.buffered == fed - sum(HEADER_SIZE + len(p) for *_, p in frames)
    return frames


@pytest.mark.parametrize("chunk_size", [1, 999, PIECE_MIN, 4096, 65536, 100_000])
def test_large_frame_in_many_chunks(framer_cls, chunk_size):
    big = payload_of(DEFAULT_MAX_FRAME_SIZE if chunk_size > 1 else 3 * LARGE_PAYLOAD)
    frames = [(0, 0, 1, b"a"), (0, 1, 3, big), (2, 0, 5, b""), (3, 0, 5, b"bc"), (0, 1, 3, big)]
    stream = b"".join(frame(p, t, f, s) for t, f, s, p in frames)
    chunks = [stream[i : i + chunk_size] for i in range(0, len(stream), chunk_size)]
    framer = framer_cls()
    assert feed_checking_buffered(framer, chunks) == frames
    framer.close()


@pytest.mark.parametrize("seed", range(6))
def test_large_frames_random_splits(framer_cls, seed):
    rng = random.Random(seed)
    sizes = [0, 7, LARGE_PAYLOAD - 1, LARGE_PAYLOAD, LARGE_PAYLOAD + 1, 300_000]
    frames = [
        (rng.randrange(256), rng.randrange(256), rng.randrange(2**32), payload_of(size, i))
        for i, size in enumerate(rng.choices(sizes, k=12))
    ]
    stream = b"".join(frame(p, t, f, s) for t, f, s, p in frames)
    points = rng.sample(range(1, len(stream)), rng.choice([3, 30, 300]))
    framer = framer_cls()
    assert feed_checking_buffered(framer, split_at(stream, points)) == frames
    framer.close()


def test_large_frame_then_small_frames_in_one_chunk(framer_cls):
    big = payload_of(200_000)
    stream = frame(big, 1, 2, 3) + frame(b"a") + frame(b"") + frame(b"b" * 100) + header(9)[:4]
    framer = framer_cls()
    assert framer.feed(stream[:50_000]) == []
    assert framer.buffered == 50_000
    got = framer.feed(stream[50_000:])
    assert got == [(1, 2, 3, big), (0, 0, 1, b"a"), (0, 0, 1, b""), (0, 0, 1, b"b" * 100)]
    assert all(type(p) is bytes for *_, p in got)
    assert framer.buffered == 4
    assert framer.feed(header(9)[4:] + b"123456789") == [(0, 0, 1, b"123456789")]


def test_large_header_ends_the_chunk(framer_cls):
    big = payload_of(LARGE_PAYLOAD)
    framer = framer_cls()
    assert framer.feed(frame(b"x") + header(len(big), 4, 5, 6)) == [(0, 0, 1, b"x")]
    assert framer.buffered == HEADER_SIZE
    assert framer.feed(big[:10]) == []
    assert framer.buffered == HEADER_SIZE + 10
    assert framer.feed(b"") == []
    assert framer.feed(big[10:] + frame(b"y")) == [(4, 5, 6, big), (0, 0, 1, b"y")]
    assert framer.buffered == 0


@pytest.mark.parametrize("cut", range(1, HEADER_SIZE + 1))
def test_large_header_split(framer_cls, cut):
    # the header completes in the chunk that holds the whole payload, or the payload comes alone
    big = payload_of(LARGE_PAYLOAD + 5)
    data = frame(big, 7, 8, 9)
    framer = framer_cls()
    assert framer.feed(data[:cut]) == []
    assert framer.feed(data[cut:] + frame(b"z")) == [(7, 8, 9, big), (0, 0, 1, b"z")]
    assert framer.feed(data[:HEADER_SIZE]) == []
    assert framer.feed(data[HEADER_SIZE:]) == [(7, 8, 9, big)]
    assert framer.buffered == 0


@pytest.mark.parametrize("size", [LARGE_PAYLOAD - 1, LARGE_PAYLOAD])
def test_large_payload_threshold(framer_cls, size):
    big = payload_of(size)
    data = frame(big)
    framer = framer_cls()
    assert framer.feed(data[:40_000]) == []
    # only a large frame's payload is kept in pieces; a smaller one is carried
    assert bool(framer._pieces) == (size >= LARGE_PAYLOAD)
    assert framer.feed(data[40_000:]) == [(0, 0, 1, big)]
    assert not framer._pieces


def test_large_frame_truncated(framer_cls):
    framer = framer_cls()
    data = frame(payload_of(100_000))
    assert framer.feed(data[:30_000]) == []
    assert framer.feed(data[30_000:70_010]) == []
    assert framer.buffered == 70_010
    with pytest.raises(TruncatedFrameError, match="70010 of 100010 bytes") as info:
        framer.close()
    assert info.value.frames == []
    assert framer.buffered == 70_010
    assert not framer._pieces  # a poisoned framer lets the pieces go
    with pytest.raises(TruncatedFrameError) as again:
        framer.feed(data[70_010:])
    assert str(again.value) == str(info.value)


def test_large_frame_then_too_large(framer_cls):
    big = payload_of(LARGE_PAYLOAD * 2)
    data = frame(big) + frame(b"ok") + header(DEFAULT_MAX_FRAME_SIZE + 1) + b"junk"
    framer = framer_cls()
    assert framer.feed(data[:1000]) == []
    with pytest.raises(FrameTooLargeError) as info:
        framer.feed(data[1000:])
    assert info.value.frames == [(0, 0, 1, big), (0, 0, 1, b"ok")]
    assert framer.buffered == 0


def test_large_frames_around_many_small_ones(framer_cls):
    # the chunk that completes a large frame holds more frames than the C framer describes per
    # call, then starts another large frame
    big = payload_of(LARGE_PAYLOAD * 3)
    small = [(1, 0, i, bytes([i % 256]) * (i % 3)) for i in range(3000)]
    frames = [(2, 0, 1, big), *small, (2, 0, 3, big)]
    stream = b"".join(frame(p, t, f, s) for t, f, s, p in frames)
    cut1 = 1000
    cut2 = len(stream) - len(big) + 500
    framer = framer_cls()
    assert framer.feed(stream[:cut1]) == []
    assert framer.feed(stream[cut1:cut2]) == frames[:-1]
    assert framer.buffered == HEADER_SIZE + 500
    assert framer.feed(stream[cut2:]) == frames[-1:]


def test_trickled_large_frame_is_not_an_object_per_read(framer_cls):
    # tiny reads are copied into one piece; reads of PIECE_MIN bytes or more are kept as they are
    big = payload_of(LARGE_PAYLOAD + 4 * PIECE_MIN)
    data = frame(big)
    framer = framer_cls()
    for i in range(LARGE_PAYLOAD + HEADER_SIZE):
        assert framer.feed(data[i : i + 1]) == []
    assert len(framer._pieces) == 1
    rest = range(LARGE_PAYLOAD + HEADER_SIZE, len(data), PIECE_MIN)
    chunks = [data[i : i + PIECE_MIN] for i in rest]
    assert feed_chunks(framer, chunks[:-1]) == []
    assert len(framer._pieces) == len(chunks)
    assert all(piece is chunk for piece, chunk in zip(framer._pieces[1:], chunks))
    assert framer.feed(chunks[-1]) == [(0, 0, 1, big)]


def test_large_frame_from_a_reused_buffer(framer_cls):
    # the framer keeps pieces of what it was fed, so it must keep them of its own bytes copy
    big = payload_of(LARGE_PAYLOAD * 2)
    data = frame(big)
    framer = framer_cls()
    buffer = bytearray(40_000)
    got = []
    for i in range(0, len(data), len(buffer)):
        piece = data[i : i + len(buffer)]
        buffer[: len(piece)] = piece
        got += framer.feed(memoryview(buffer)[: len(piece)])
        buffer[:] = bytes(len(buffer))
    assert got == [(0, 0, 1, big)]


def test_keep_piece():
    whole = bytes(PIECE_MIN)
    pieces: list = []
    keep_piece(pieces, whole, 0)
    assert pieces[-1] is whole  # a whole chunk is kept as it is
    chunk = bytes(range(256)) * (4 * PIECE_MIN // 256)
    half = len(chunk) // 2
    keep_piece(pieces, chunk, half)  # half of its chunk: a view
    assert type(pieces[-1]) is memoryview and pieces[-1] == chunk[half:]
    keep_piece(pieces, chunk, half + 1)  # less than half of its chunk: copied
    assert type(pieces[-1]) is bytearray and len(pieces) == 3
    keep_piece(pieces, b"abc", 1)  # small: appended to the copy
    keep_piece(pieces, b"xyz", 3)  # empty: nothing
    assert len(pieces) == 3 and pieces[-1].endswith(b"bc")
    assert b"".join(pieces) == whole + chunk[half:] + chunk[half + 1 :] + b"bc"


# --- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [MIN_FRAME_SIZE_LIMIT - 1, MAX_FRAME_SIZE_LIMIT + 1, 0, -1, 2**32 + MIN_FRAME_SIZE_LIMIT],
)
def test_bad_max_frame_size(framer_cls, size):
    with pytest.raises(ValueError, match="max_frame_size"):
        framer_cls(size)


@pytest.mark.parametrize(
    "size", [MIN_FRAME_SIZE_LIMIT, DEFAULT_MAX_FRAME_SIZE, MAX_FRAME_SIZE_LIMIT]
)
def test_good_max_frame_size(framer_cls, size):
    framer = framer_cls(size)
    assert framer.max_frame_size == size
    assert framer.feed(frame(b"x" * 10) + header(size)) == [(0, 0, 1, b"x" * 10)]


def test_default_max_frame_size(framer_cls):
    assert framer_cls().max_frame_size == DEFAULT_MAX_FRAME_SIZE == 2 << 20


@pytest.mark.parametrize("split", [None, 1, 5, 9, 10, 11, SMALL_MAX])
def test_exactly_max_is_accepted(framer_cls, split):
    payload = bytes(range(256)) * (SMALL_MAX // 256)
    data = frame(payload, 1, 2, 3) + frame(b"", 4, 5, 6)
    chunks = [data] if split is None else [data[:split], data[split:]]
    framer = framer_cls(SMALL_MAX)
    assert feed_chunks(framer, chunks) == [(1, 2, 3, payload), (4, 5, 6, b"")]


@pytest.mark.parametrize("length", [SMALL_MAX + 1, 2**31, 2**32 - HEADER_SIZE, 2**32 - 1])
def test_too_large_on_the_header_alone(framer_cls, length):
    framer = framer_cls(SMALL_MAX)
    with pytest.raises(FrameTooLargeError) as info:
        framer.feed(header(length))
    assert info.value.frames == []
    assert str(length) in str(info.value) and str(SMALL_MAX) in str(info.value)
    assert framer.buffered == 0


def test_too_large_header_in_pieces(framer_cls):
    framer = framer_cls(SMALL_MAX)
    data = header(SMALL_MAX + 1)
    for i in range(HEADER_SIZE - 1):
        assert framer.feed(data[i : i + 1]) == []
        assert framer.buffered == i + 1
    with pytest.raises(FrameTooLargeError) as info:
        framer.feed(data[-1:] + b"body bytes that must not be buffered")
    assert info.value.frames == []
    assert framer.buffered == 0


@pytest.mark.parametrize("carry", [False, True])
def test_too_large_keeps_earlier_frames(framer_cls, carry):
    framer = framer_cls(SMALL_MAX)
    first = frame(b"first", 1, 0, 1)
    if carry:  # the first frame completes from the carry, the next two in place
        assert framer.feed(first[:7]) == []
        first = first[7:]
    data = first + frame(b"second", 2, 0, 3) + frame(b"", 3, 0, 5) + header(SMALL_MAX + 1) + b"junk"
    with pytest.raises(FrameTooLargeError) as info:
        framer.feed(data)
    assert info.value.frames == [(1, 0, 1, b"first"), (2, 0, 3, b"second"), (3, 0, 5, b"")]


def test_too_large_after_many_frames(framer_cls):
    # the oversize header comes after more frames than the C framer describes per call
    frames = [(0, 0, i, b"") for i in range(4096)]
    data = b"".join(frame(p, t, f, s) for t, f, s, p in frames) + header(2**32 - 1)
    with pytest.raises(FrameTooLargeError) as info:
        framer_cls().feed(data)
    assert info.value.frames == frames


def test_too_large_poisons(framer_cls):
    framer = framer_cls(SMALL_MAX)
    with pytest.raises(FrameTooLargeError) as first:
        framer.feed(frame(b"ok") + header(SMALL_MAX + 1))
    assert first.value.frames == [(0, 0, 1, b"ok")]
    for data in (b"", frame(b"fine"), b"\0"):
        with pytest.raises(FrameTooLargeError) as again:
            framer.feed(data)
        assert again.value.frames == []
        assert str(again.value) == str(first.value)
    with pytest.raises(FrameTooLargeError):
        framer.close()
    with pytest.raises(FrameTooLargeError):
        framer.close()


@pytest.mark.parametrize("garbage", [b"\xff" * 64, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"])
def test_garbage(framer_cls, garbage):
    with pytest.raises(FrameTooLargeError):
        framer_cls().feed(garbage)
    framer = framer_cls()
    with pytest.raises(FrameTooLargeError):
        feed_chunks(framer, [garbage[i : i + 1] for i in range(len(garbage))])


def test_errors_are_remote_protocol_errors():
    assert issubclass(FrameTooLargeError, RemoteProtocolError)
    assert issubclass(TruncatedFrameError, RemoteProtocolError)


# --- close -----------------------------------------------------------------------------------


def test_close_at_boundary(framer_cls):
    framer = framer_cls()
    framer.close()
    framer.feed(STREAM)
    framer.close()
    framer.close()


@pytest.mark.parametrize("cut", [1, 5, HEADER_SIZE - 1])
def test_close_in_header(framer_cls, cut):
    framer = framer_cls()
    assert framer.feed(frame(b"whole") + frame(b"partial")[:cut]) == [(0, 0, 1, b"whole")]
    assert framer.buffered == cut
    with pytest.raises(TruncatedFrameError, match=f"{cut} of {HEADER_SIZE}") as info:
        framer.close()
    assert info.value.frames == []
    # poisoned, and still saying the same
    with pytest.raises(TruncatedFrameError) as again:
        framer.feed(frame(b"partial")[cut:])
    assert again.value.frames == [] and str(again.value) == str(info.value)
    with pytest.raises(TruncatedFrameError):
        framer.close()


@pytest.mark.parametrize("cut", [HEADER_SIZE, HEADER_SIZE + 1, HEADER_SIZE + 6])
def test_close_in_body(framer_cls, cut):
    framer = framer_cls()
    data = frame(b"partial")
    assert framer.feed(data[:cut]) == []
    assert framer.buffered == cut
    with pytest.raises(TruncatedFrameError, match=f"{cut} of {len(data)} bytes"):
        framer.close()
    with pytest.raises(TruncatedFrameError):
        framer.feed(data[cut:])


# --- feed_grouped: runs of DATA frames on one stream ------------------------------------------


def data_frames(count: int, stream_id: int = 1, size: int = 16) -> list:
    return [(0, 0, stream_id, bytes([i % 256]) * size) for i in range(count)]


def serialize(frames: list) -> bytes:
    return b"".join(frame(p, t, f, s) for t, f, s, p in frames)


def test_group_reference():
    # the tests' reference grouping itself
    a, b, c, d = b"a", b"b", b"c", b"d"
    frames = [(0, 0, 1, a), (0, 0, 1, b), (0, 1, 1, c), (0, 0, 1, d), (1, 0, 1, a), (1, 0, 1, b),
              (0, 0, 2, c), (0, 0, 1, d), (0, 0, 1, a)]
    assert group(frames) == [
        (0, 0, 1, [a, b]), (0, 1, 1, [c]), (0, 0, 1, [d]), (1, 0, 1, [a]), (1, 0, 1, [b]),
        (0, 0, 2, [c]), (0, 0, 1, [d, a]),
    ]
    assert group([]) == []


def test_grouped_one_stream(framer_cls):
    # one run, across the Python fast path and several C calls (more frames than C describes
    # per call)
    frames = data_frames(5000)
    framer = framer_cls()
    assert framer.feed_grouped(serialize(frames)) == [(0, 0, 1, [p for *_, p in frames])]
    assert framer.buffered == 0


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 15, 16, 17, 20, 1023, 1024, 1025, 2100])
@pytest.mark.parametrize("breaker", [None, (0, 1, 1), (1, 0, 1), (0, 0, 2)])
def test_grouped_run_broken(framer_cls, count, breaker):
    # a run of `count` frames, then a frame that breaks it (other flags, type or stream), then
    # another run: the run boundaries fall in the fast path, in C's first call, at the end of
    # its output and in the second call
    frames = data_frames(count)
    if breaker is not None:
        frames.append((*breaker, b"!"))
    frames += data_frames(count)
    framer = framer_cls()
    got = framer.feed_grouped(serialize(frames))
    assert got == group(frames)
    assert sum(len(payloads) for *_, payloads in got) == len(frames)
    assert len(got) == (1 if breaker is None else 3)


def test_grouped_carried_frame_starts_the_run(framer_cls):
    # the frame completed from the previous chunk's bytes joins the run of this call's frames;
    # runs do not span calls
    frames = data_frames(40)
    data = serialize(frames)
    framer = framer_cls()
    cut = 5 * 26 + 7
    assert framer.feed_grouped(data[:cut]) == [(0, 0, 1, [p for *_, p in frames[:5]])]
    assert framer.feed_grouped(data[cut:]) == [(0, 0, 1, [p for *_, p in frames[5:]])]


def test_grouped_collected_frame_joins_the_run(framer_cls):
    big = payload_of(LARGE_PAYLOAD + 3)
    frames = [(0, 0, 7, big), *data_frames(30, stream_id=7), (0, 0, 8, b"x")]
    data = serialize(frames)
    framer = framer_cls()
    assert framer.feed_grouped(data[:1000]) == []
    assert framer.feed_grouped(data[1000:]) == [
        (0, 0, 7, [big, *(p for *_, p in frames[1:31])]),
        (0, 0, 8, [b"x"]),
    ]


def test_grouped_payloads_are_fresh_lists(framer_cls):
    frames = [(1, 0, 1, b"a"), *data_frames(50), (1, 0, 1, b"b"), *data_frames(50)]
    got = framer_cls().feed_grouped(serialize(frames))
    lists = [payloads for *_, payloads in got]
    assert all(type(payloads) is list for payloads in lists)
    assert len({id(payloads) for payloads in lists}) == len(lists)
    assert all(type(p) is bytes for payloads in lists for p in payloads)


@pytest.mark.parametrize("count", [3, 10, 2000])
def test_grouped_too_large_keeps_earlier_runs(framer_cls, count):
    frames = [*data_frames(count), (2, 0, 1, b"x"), *data_frames(count, stream_id=3)]
    data = serialize(frames) + header(SMALL_MAX + 1) + b"junk"
    framer = framer_cls(SMALL_MAX)
    with pytest.raises(FrameTooLargeError) as info:
        framer.feed_grouped(data)
    assert info.value.frames == group(frames)
    with pytest.raises(FrameTooLargeError) as again:
        framer.feed_grouped(frame(b"ok"))
    assert again.value.frames == []


def test_grouped_mixed_with_feed(framer_cls):
    # feed and feed_grouped may take turns on one framer
    frames = data_frames(100) + [(3, 3, 3, b"3")] + data_frames(100, stream_id=9)
    data = serialize(frames)
    chunks = split_at(data, range(500, len(data), 500))
    framer = framer_cls()
    expected = PyFramer()
    for i, chunk in enumerate(chunks):
        want = expected.feed(chunk)
        if i % 2:
            assert framer.feed(chunk) == want
        else:
            assert framer.feed_grouped(chunk) == group(want)


def test_grouped_huge_chunks(framer_cls, framer_name):
    if framer_name != "c":
        pytest.skip("the C framer's offsets are uint32: chunks over 2 GiB are fed in pieces")
    framer = framer_cls()
    framer._max_chunk = 100  # instead of 2 GiB
    assert framer.feed_grouped(STREAM) == group(FRAMES)
    frames = data_frames(20)
    assert framer.feed_grouped(serialize(frames)) == group(frames)
    with pytest.raises(FrameTooLargeError) as info:
        framer.feed_grouped(serialize(frames) + header(2**32 - 1))
    assert info.value.frames == group(frames)


# --- the C framer's own paths ----------------------------------------------------------------


def test_c_framer_splits_huge_chunks(framer_cls, framer_name):
    if framer_name != "c":
        pytest.skip("the C framer's offsets are uint32: chunks over 2 GiB are fed in pieces")
    framer = framer_cls()
    framer._max_chunk = 100  # instead of 2 GiB
    assert framer.feed(STREAM) == FRAMES
    with pytest.raises(FrameTooLargeError) as info:
        framer.feed(STREAM + header(2**32 - 1))
    assert info.value.frames == FRAMES


# --- equivalence: C, Python and a reference model --------------------------------------------


def reference(chunks: list[bytes], max_frame_size: int) -> list:
    """What a framer must do: a transcript of (frames or error, buffered) per feed and close.
    Deliberately naive: all bytes in one buffer, parsed from the start."""
    transcript = []
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        frames = []
        while len(buffer) >= HEADER_SIZE:
            length, type_, flags, stream_id = HEADER.unpack(buffer[:HEADER_SIZE])
            if length > max_frame_size:
                error = ("FrameTooLargeError", f"{length}-byte", frames)
                transcript.append((error, 0))
                return transcript + [(("FrameTooLargeError", f"{length}-byte", []), 0)]
            if len(buffer) < HEADER_SIZE + length:
                break
            frames.append((type_, flags, stream_id, buffer[HEADER_SIZE : HEADER_SIZE + length]))
            buffer = buffer[HEADER_SIZE + length :]
        transcript.append((frames, len(buffer)))
    if buffer:
        return transcript + [(("TruncatedFrameError", f"{len(buffer)} of", []), len(buffer))]
    return transcript + [(None, 0)]


def transcript(framer, chunks: list[bytes], grouped: bool = False) -> list:
    """The framer's transcript (of feed_grouped if ``grouped``); after an error, one more feed
    (of nothing) shows the poisoning."""
    result = []
    feed = framer.feed_grouped if grouped else framer.feed
    for chunk in chunks:
        try:
            result.append((feed(chunk), framer.buffered))
        except FrameTooLargeError as error:
            result.append((error_entry(error), framer.buffered))
            try:
                feed(b"")
            except FrameTooLargeError as again:
                result.append((error_entry(again), framer.buffered))
            return result
    try:
        framer.close()
    except TruncatedFrameError as error:
        result.append((error_entry(error), framer.buffered))
    else:
        result.append((None, framer.buffered))
    return result


def group(frames: list) -> list:
    """What feed_grouped must return for feed's ``frames``: each maximal run of DATA frames
    (type 0) with flags 0 on one stream as one (0, 0, stream_id, payloads), every other frame
    as (type, flags, stream_id, [payload]).  Written apart from trpc's group_frames, on
    purpose."""
    keys = [(t, f, s) if t == f == 0 else (t, f, s, i) for i, (t, f, s, _) in enumerate(frames)]
    return [
        (*frames[i][:3], [frames[j][3] for j in range(i, j_end)])
        for i, j_end in run_bounds(keys)
    ]


def run_bounds(keys: list) -> list[tuple[int, int]]:
    bounds = []
    for i, key in enumerate(keys):
        if i and key == keys[i - 1]:
            bounds[-1] = (bounds[-1][0], i + 1)
        else:
            bounds.append((i, i + 1))
    return bounds


def group_transcript(model: list) -> list:
    """The reference transcript with its frames (and its errors' frames) grouped."""
    return [(group_entry(entry), buffered) for entry, buffered in model]


def group_entry(entry):
    if entry is None:
        return None
    if isinstance(entry, tuple):  # an error: (class name, message part, frames)
        return (*entry[:2], group(entry[2]))
    return group(entry)


def error_entry(error: Exception) -> tuple:
    return (type(error).__name__, str(error), error.frames)


def matches(model: list, actual: list) -> bool:
    """The model only knows a distinctive part of each error message."""
    if len(model) != len(actual):
        return False
    for (want, want_buffered), (got, got_buffered) in zip(model, actual):
        if want_buffered != got_buffered:
            return False
        if isinstance(want, tuple):
            if not isinstance(got, tuple) or got[0] != want[0] or want[1] not in got[1]:
                return False
            if got[2] != want[2]:
                return False
        elif want != got:
            return False
    return True


small_payloads = st.binary(max_size=40)
payloads = st.one_of(
    small_payloads,
    st.sampled_from([SMALL_MAX - 1, SMALL_MAX, 300, 1000]).map(lambda n: b"\xa5" * n),
)
oversize_lengths = st.one_of(
    st.integers(SMALL_MAX + 1, SMALL_MAX + 5), st.integers(SMALL_MAX + 1, 2**32 - 1)
)


# Frame headers as they come in runs: mostly DATA frames with flags 0 on a few streams.
runny_types = st.sampled_from([0, 0, 0, 1])
runny_flags = st.sampled_from([0, 0, 0, 1])
runny_ids = st.sampled_from([1, 1, 3, 2**32 - 1])


@st.composite
def streams(
    draw,
    payloads=payloads,
    max_frames=30,
    types=st.integers(0, 255),
    flags=st.integers(0, 255),
    ids=st.integers(0, 2**32 - 1),
):
    """A serialized frame list, maybe spoiled (garbage or an oversize header somewhere, or a
    truncated end), and the points where it is split into chunks."""
    frame_tuples = st.tuples(types, flags, ids, payloads)
    frames = draw(st.lists(frame_tuples, max_size=max_frames))
    parts = [frame(p, t, f, s) for t, f, s, p in frames]
    spoil = draw(st.sampled_from(["none", "none", "garbage", "oversize", "truncate"]))
    if spoil == "garbage":
        parts.insert(draw(st.integers(0, len(parts))), draw(st.binary(min_size=1, max_size=30)))
    elif spoil == "oversize":
        bad = header(draw(oversize_lengths), 1, 2, 3) + draw(st.binary(max_size=20))
        parts.insert(draw(st.integers(0, len(parts))), bad)
    elif spoil == "truncate" and parts:
        parts[-1] = parts[-1][: draw(st.integers(1, len(parts[-1]) - 1))]
    stream = b"".join(parts)
    if draw(st.booleans()) and len(stream) > 1:
        points = draw(st.lists(st.integers(1, len(stream) - 1), unique=True, max_size=40))
    else:
        points = []
    return stream, split_at(stream, points)


def check_equivalent(framer_cls, chunks: list[bytes], large_payload: int = LARGE_PAYLOAD) -> None:
    """Both framers agree with the model; ``large_payload`` lowers the size from which payloads
    are collected in pieces, so that small random streams take that path too."""
    model = reference(chunks, SMALL_MAX)
    python = PyFramer(SMALL_MAX)
    tested = framer_cls(SMALL_MAX)
    python._large_payload = tested._large_payload = large_payload
    python_transcript = transcript(python, chunks)
    assert matches(model, python_transcript), (model, python_transcript)
    assert transcript(tested, chunks) == python_transcript
    # feed_grouped: the model's frames grouped, by both framers alike
    python = PyFramer(SMALL_MAX)
    tested = framer_cls(SMALL_MAX)
    python._large_payload = tested._large_payload = large_payload
    python_grouped = transcript(python, chunks, grouped=True)
    assert matches(group_transcript(model), python_grouped), (model, python_grouped)
    assert transcript(tested, chunks, grouped=True) == python_grouped


# The payload size from which frames are collected in pieces: the real one (which the random
# streams do not reach), every payload, or a size that some payloads reach.
large_payloads = st.sampled_from([LARGE_PAYLOAD, 1, 30, 300])


# framer_cls is function-scoped but only returns a class, so hypothesis may reuse it.
relaxed = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@settings(relaxed, max_examples=400)
@given(case=streams(), large=large_payloads)
def test_equivalent_on_random_splits(framer_cls, case, large):
    stream, chunks = case
    check_equivalent(framer_cls, chunks, large)


@settings(relaxed, max_examples=400)
@given(
    case=streams(
        payloads=st.one_of(small_payloads, st.just(b"\xa5" * 1000)),
        max_frames=60,
        types=runny_types,
        flags=runny_flags,
        ids=runny_ids,
    ),
    large=large_payloads,
)
def test_equivalent_in_runs(framer_cls, case, large):
    # frames in runs: what feed_grouped groups
    stream, chunks = case
    check_equivalent(framer_cls, chunks, large)


@settings(relaxed, max_examples=150)
@given(
    case=st.one_of(
        streams(payloads=small_payloads, max_frames=12),
        streams(
            payloads=small_payloads, max_frames=12, types=runny_types, flags=runny_flags,
            ids=runny_ids,
        ),
    ),
    large=large_payloads,
)
def test_equivalent_byte_by_byte(framer_cls, case, large):
    stream, _ = case
    check_equivalent(framer_cls, [stream[i : i + 1] for i in range(len(stream))], large)


@settings(relaxed, max_examples=200)
@given(
    garbage=st.binary(max_size=200),
    points=st.lists(st.integers(0, 200), max_size=10),
    large=large_payloads,
)
def test_equivalent_on_garbage(framer_cls, garbage, points, large):
    chunks = split_at(garbage, [p for p in set(points) if p < len(garbage)])
    check_equivalent(framer_cls, chunks, large)


# --- choosing a framer -----------------------------------------------------------------------


def test_get_framer_by_name(framer_cls, framer_name):
    assert _framer.get_framer(framer_name) is framer_cls


@pytest.mark.parametrize("name", ["C", "cffi", "", "pure"])
def test_get_framer_unknown(name):
    with pytest.raises(ValueError, match="unknown framer"):
        _framer.get_framer(name)


def test_get_framer_from_environment(monkeypatch, framer_cls, framer_name):
    monkeypatch.setenv("TRPC_FRAMER", framer_name)
    assert _framer.default_framer_name() == framer_name
    assert _framer.get_framer() is framer_cls
    monkeypatch.setenv("TRPC_FRAMER", "rust")
    with pytest.raises(ValueError):
        _framer.get_framer()
    monkeypatch.delenv("TRPC_FRAMER")
    assert _framer.default_framer_name() == "c"


def test_fallback_without_c(monkeypatch, caplog):
    monkeypatch.setattr(_framer, "FRAMERS", {"python": PyFramer})
    monkeypatch.setattr(_framer, "c_framer_error", "No module named 'trpc._framer_cffi'")
    monkeypatch.setattr(_framer, "_warned", False)
    monkeypatch.delenv("TRPC_REQUIRE_C", raising=False)
    monkeypatch.delenv("TRPC_FRAMER", raising=False)
    with caplog.at_level(logging.WARNING, logger="trpc"):
        assert _framer.get_framer("c") is PyFramer
        assert _framer.get_framer() is PyFramer
    warnings = [r for r in caplog.records if r.name == "trpc"]
    assert len(warnings) == 1
    assert "_framer_cffi" in warnings[0].getMessage()
    assert "TRPC_FRAMER=python" in warnings[0].getMessage()
    assert _framer.get_framer("python") is PyFramer

    monkeypatch.setenv("TRPC_REQUIRE_C", "1")
    with pytest.raises(ImportError, match="_framer_cffi"):
        _framer.get_framer("c")
    assert _framer.get_framer("python") is PyFramer


def test_version_mismatch_refuses_to_load(framer_name):
    if framer_name != "c":
        pytest.skip("only the compiled module carries a version")
    result = run_python(
        "import sys, trpc._version as v; v.__version__ = '0.0.0+other'\n"
        "sys.modules.pop('trpc._framer_c', None)\n"
        "try:\n    import trpc._framer_c\n"
        "except ImportError as e:\n    print('refused:', e)\n"
    )
    assert "refused:" in result.stdout and "0.0.0+other" in result.stdout, result


def test_missing_module_falls_back_in_a_fresh_process():
    result = run_python(
        "import sys; sys.modules['trpc._framer_cffi'] = None\n"
        "import logging; logging.basicConfig()\n"
        "from trpc import _framer\n"
        "print(sorted(_framer.FRAMERS), _framer.get_framer().name, _framer.get_framer().name)\n"
    )
    assert result.stdout.split() == ["['python']", "python", "python"], result
    assert result.stderr.count("WARNING:trpc:") == 1, result.stderr
