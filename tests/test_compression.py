"""Per-message compression (docs/PROTOCOL.md section 5, "Compressed messages"; protocol 1.2).

The wire cores back to back first (negotiation, flags, limits, corruption), then the codings
module alone, then whole calls through a client and a server.  Every test runs once per framer
(conftest); zstd's cases skip where the zstandard package is missing.
"""

from __future__ import annotations

import random
import struct
import zlib
from contextlib import AbstractAsyncContextManager
from typing import Any, AsyncIterator

import cbor2
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trpc
from trpc import RemoteProtocolError, Status
from trpc._codec import decode
from trpc._errors import MessageTooLargeError
from trpc._events import CallCancelled, CallEnded, CallOpened, MessagesReceived, StreamEnded
from trpc.wire import PREFACE, PREFACE_MAGIC, Connection, FrameType
from trpc.wire._connection import message_size
from trpc.wire._compression import (
    AVAILABLE,
    Coding,
    Compressed,
    DecompressionError,
    coding_bit,
    compress,
    decompress,
    parse_coding,
)

from .helpers import Pair, frame, messages, types

HAS_ZSTD = bool(AVAILABLE & coding_bit(Coding.ZSTD))
needs_zstd = pytest.mark.skipif(not HAS_ZSTD, reason="zstd needs the zstandard package (trpc-trio[zstd])")
#: Every coding this process can use, each marked so that zstd's cases skip without zstandard.
CODINGS = [Coding.ZLIB, pytest.param(Coding.ZSTD, marks=needs_zstd)]

DATA = FrameType.DATA
HEADERS = FrameType.HEADERS
TRAILERS = FrameType.TRAILERS
END_STREAM, MORE = 0x1, 0x2
#: A message that compresses well: 4 KiB of repeated text, as CBOR.
BIG = cbor2.dumps("compressible " * 320)
HEADER = struct.Struct(">IBBI")


def data_frames(raw: bytes) -> list[tuple[int, int, int, bytes]]:
    """The DATA frames in ``raw`` (a run of whole frames): (flags, stream id, length, payload)."""
    out = []
    position = 0
    while position < len(raw):
        length, ftype, flags, stream_id = HEADER.unpack_from(raw, position)
        payload = raw[position + 10 : position + 10 + length]
        if ftype == DATA:
            out.append((flags, stream_id, length, payload))
        position += 10 + length
    return out


def raw_preface(*, minor: int = 2, codings: int = 0, max_message: int = 4 << 20) -> bytes:
    return PREFACE.pack(PREFACE_MAGIC, 1, minor, codings, 1 << 20, max_message, 1 << 20, 16 << 20, 100)


def server_for(framer_cls: type, **options: object) -> Connection:
    """A server core that has received a 1.2 client's preface accepting every coding, and
    whose output so far is drained."""
    server = Connection("server", framer=framer_cls, **options)  # type: ignore[arg-type]
    server.initiate()
    server.receive_data(raw_preface(codings=AVAILABLE))
    server.data_to_send()
    return server


# ================================================================== negotiation (the preface)
def test_each_side_announces_the_codings_it_accepts_and_learns_the_peers(framer_cls: type) -> None:
    pair = Pair(framer_cls, client_options={"accept_compression": ["zlib"]})
    assert pair.server.peer_codings == coding_bit(Coding.ZLIB)
    assert pair.client.peer_codings == AVAILABLE


def test_a_side_that_accepts_nothing_is_never_sent_a_compressed_message(framer_cls: type) -> None:
    pair = Pair(framer_cls, server_options={"accept_compression": []})
    assert pair.client.peer_codings == 0
    sid = pair.client.open_call("m")
    pair.client.send_compressed(sid, BIG, Coding.ZLIB, end_stream=True)
    (flags, _, length, _), = data_frames(pair.client.data_to_send()[-(len(BIG) + 10):])
    assert flags == END_STREAM and length == len(BIG)


def test_a_1_1_peers_reserved_field_is_read_as_accepting_nothing(framer_cls: type) -> None:
    """A 1.1 peer sends 0 there; one that sent anything else is still read as accepting
    nothing (the field was reserved before 1.2)."""
    server = Connection("server", framer=framer_cls)
    server.initiate()
    server.receive_data(raw_preface(minor=1, codings=0xFFFF))
    assert server.peer_codings == 0


def test_unknown_bits_of_the_codings_field_are_ignored(framer_cls: type) -> None:
    server = Connection("server", framer=framer_cls)
    server.initiate()
    server.receive_data(raw_preface(codings=0xFFF0 | coding_bit(Coding.ZLIB)))
    assert server.peer_codings == coding_bit(Coding.ZLIB)


def test_a_side_cannot_accept_an_unknown_coding() -> None:
    with pytest.raises(ValueError, match="compression is 'zlib', 'zstd' or None"):
        Connection("client", accept_compression=["brotli"])


def test_zstd_is_refused_by_name_where_zstandard_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import trpc.wire._compression as compression

    monkeypatch.setattr(compression, "AVAILABLE", coding_bit(Coding.ZLIB))
    with pytest.raises(ValueError, match="pip install 'trpc-trio\\[zstd\\]'"):
        parse_coding("zstd")


# ========================================================================= sending, framing
@pytest.mark.parametrize("coding", CODINGS)
def test_a_message_at_the_threshold_goes_compressed_and_one_below_it_goes_plain(framer_cls: type, coding: Coding) -> None:
    pair = Pair(framer_cls, client_options={"compression_threshold": len(BIG)})
    sid = pair.client.open_call("m")
    pair.client.send_compressed(sid, BIG, coding)
    pair.client.send_compressed(sid, BIG[:-1], coding)
    first, second = data_frames(pair.client.data_to_send())
    assert first[0] == coding << 2 and first[2] < len(BIG) and decompress(coding, [first[3]], len(BIG)) == BIG
    assert second[0] == 0 and second[3] == BIG[:-1]


def test_a_message_that_compression_would_not_shrink_goes_plain(framer_cls: type) -> None:
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m")
    noise = cbor2.dumps(random.Random(7).randbytes(2000))
    assert len(zlib.compress(noise, 1)) >= len(noise)
    pair.client.send_compressed(sid, noise, Coding.ZLIB)
    ((flags, _, _, payload),) = data_frames(pair.client.data_to_send())
    assert flags == 0 and payload == noise


def test_the_peers_max_message_size_applies_before_compression(framer_cls: type) -> None:
    pair = Pair(framer_cls, server_options={"max_message_size": 2048})
    sid = pair.client.open_call("m")
    with pytest.raises(MessageTooLargeError):
        pair.client.send_compressed(sid, BIG, Coding.ZLIB)  # 4 KiB of text, a few dozen bytes compressed


@pytest.mark.parametrize("coding", CODINGS)
def test_a_compressed_message_split_by_credit_carries_its_coding_on_the_first_frame_only(framer_cls: type, coding: Coding) -> None:
    """A message larger than the stream window leaves in pieces as credit comes; only the
    first piece says the coding, and the receiver joins and decompresses them."""
    noise = random.Random(3).randbytes(3000)  # stays larger than the window compressed
    message = cbor2.dumps([noise, "tail " * 2000])
    pair = Pair(framer_cls, server_options={"stream_window": 1024})
    sid = pair.client.open_call("m")
    assert not pair.client.send_compressed(sid, message, coding, end_stream=True)
    raw = pair.client.data_to_send()
    (first,) = data_frames(raw)
    assert first[0] == (coding << 2) | MORE and first[2] == 1024
    events = pair.server.receive_data(raw)
    events += pair.exchange()["server"]
    later = [f for f in pair.server._framer.feed(b"")]  # nothing left unread
    assert not later
    assert messages(events) == [message] and StreamEnded in types(events)


def test_the_client_asks_for_its_responses_coding_in_headers_key_4(framer_cls: type) -> None:
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m", response_compression=Coding.ZLIB)
    events = pair.exchange()["server"]
    (opened,) = [e for e in events if isinstance(e, CallOpened)]
    assert opened.stream_id == sid and opened.compression == Coding.ZLIB
    sid = pair.client.open_call("m")
    (opened,) = [e for e in pair.exchange()["server"] if isinstance(e, CallOpened)]
    assert opened.compression == 0


def test_a_response_compression_that_is_not_an_unsigned_integer_is_a_protocol_error(framer_cls: type) -> None:
    server = server_for(framer_cls)
    with pytest.raises(RemoteProtocolError, match="key 4"):
        server.receive_data(frame(HEADERS, 0, 1, cbor2.dumps({1: "m", 4: "zlib"})))


# ======================================================================= receiving, limits
@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("direction", ["request", "response"])
def test_each_coding_round_trips_both_ways(framer_cls: type, coding: Coding, direction: str) -> None:
    pair = Pair(framer_cls)
    sid = pair.client.open_call("m")
    pair.exchange()
    if direction == "request":
        pair.client.send_compressed(sid, BIG, coding)
        events = pair.exchange()["server"]
    else:
        pair.server.send_compressed(sid, BIG, coding)
        events = pair.exchange()["client"]
    assert messages(events, sid) == [BIG]


@pytest.mark.parametrize("coding", CODINGS)
def test_a_zip_bomb_is_held_as_it_arrived_and_refused_with_resource_exhausted_when_read(
    framer_cls: type, coding: Coding
) -> None:
    """A few KiB of compressed zeros that would expand to 64 MiB: the wire hands it on as it
    arrived (holding its size on the wire), reading it is RESOURCE_EXHAUSTED with nothing like
    64 MiB produced, and the next call on the connection is served."""
    bomb = compress(coding, b"\0" * (64 << 20))
    server = server_for(framer_cls)
    events = server.receive_data(frame(HEADERS, 0, 1, cbor2.dumps({1: "m"})) + frame(DATA, coding << 2, 1, bomb))
    (payload,) = [p for e in events if isinstance(e, MessagesReceived) for p in e.payloads]
    assert type(payload) is Compressed and len(payload) == len(bomb) == message_size(payload)
    assert server._live[1].recv_held == len(bomb)
    with pytest.raises(trpc.RpcError) as info:
        decode(payload, what="request message")
    assert info.value.status is Status.RESOURCE_EXHAUSTED and "expands past the limit" in info.value.message
    events = server.receive_data(frame(HEADERS, 0, 3, cbor2.dumps({1: "m"})) + frame(DATA, END_STREAM, 3, b"\x01"))
    assert messages(events, 3) == [b"\x01"]


def test_a_response_is_decompressed_within_the_limit_its_reader_gives() -> None:
    """A client's per-method limit (``maxResponseMessageBytes``) bounds decompression too."""
    payload = Compressed(Coding.ZLIB, [compress(Coding.ZLIB, cbor2.dumps("x" * 5000))], 1 << 20)
    assert decode(payload) == "x" * 5000
    with pytest.raises(trpc.RpcError) as info:
        decode(payload, what="response", limit=1000)
    assert info.value.status is Status.RESOURCE_EXHAUSTED and "1000 bytes" in info.value.message


@pytest.mark.parametrize("coding", CODINGS)
def test_corrupt_compressed_data_is_internal_when_read(framer_cls: type, coding: Coding) -> None:
    packed = compress(coding, BIG)
    corrupt = packed[:8] + bytes(b ^ 0x5A for b in packed[8:16]) + packed[16:]
    server = server_for(framer_cls)
    events = server.receive_data(frame(HEADERS, 0, 1, cbor2.dumps({1: "m"})) + frame(DATA, coding << 2, 1, corrupt))
    (payload,) = [p for e in events if isinstance(e, MessagesReceived) for p in e.payloads]
    with pytest.raises(trpc.RpcError) as info:
        decode(payload, what="request message")
    assert info.value.status is Status.INTERNAL and coding.name.lower() in info.value.message


def test_a_coding_the_receiver_does_not_accept_is_a_protocol_error(framer_cls: type) -> None:
    server = server_for(framer_cls, accept_compression=[])
    with pytest.raises(RemoteProtocolError, match="does not accept"):
        server.receive_data(frame(HEADERS, 0, 1, cbor2.dumps({1: "m"})) + frame(DATA, 0x4, 1, compress(Coding.ZLIB, BIG)))


def test_the_reserved_coding_3_is_a_protocol_error(framer_cls: type) -> None:
    server = server_for(framer_cls)
    with pytest.raises(RemoteProtocolError, match="reserved coding"):
        server.receive_data(frame(HEADERS, 0, 1, cbor2.dumps({1: "m"})) + frame(DATA, 0xC, 1, b"\x01"))


def test_the_last_frame_of_a_compressed_message_may_share_a_run_with_a_plain_message(framer_cls: type) -> None:
    """The framers group consecutive flag-less DATA frames of a stream into one run: the last
    piece of a compressed message and a plain message after it arrive as one run."""
    packed = compress(Coding.ZLIB, BIG)
    server = server_for(framer_cls)
    events = server.receive_data(
        frame(HEADERS, 0, 1, cbor2.dumps({1: "m"}))
        + frame(DATA, 0x4 | MORE, 1, packed[:5])
        + frame(DATA, 0, 1, packed[5:])
        + frame(DATA, 0, 1, b"\x01")
        + frame(DATA, 0, 1, b"\x02")
    )
    assert messages(events, 1) == [BIG, b"\x01", b"\x02"]


def test_a_coding_on_a_continuation_frame_is_a_protocol_error(framer_cls: type) -> None:
    packed = compress(Coding.ZLIB, BIG)
    server = server_for(framer_cls)
    server.receive_data(frame(HEADERS, 0, 1, cbor2.dumps({1: "m"})) + frame(DATA, 0x4 | MORE, 1, packed[:4]))
    with pytest.raises(RemoteProtocolError, match="continues a message"):
        server.receive_data(frame(DATA, 0x4, 1, packed[4:]))


def test_a_coding_after_a_plain_first_frame_is_a_protocol_error(framer_cls: type) -> None:
    server = server_for(framer_cls)
    server.receive_data(frame(HEADERS, 0, 1, cbor2.dumps({1: "m"})) + frame(DATA, MORE, 1, BIG[:4]))
    with pytest.raises(RemoteProtocolError, match="continues a message"):
        server.receive_data(frame(DATA, 0x4, 1, BIG[4:]))


def test_an_empty_compressed_frame_is_a_protocol_error(framer_cls: type) -> None:
    server = server_for(framer_cls)
    with pytest.raises(RemoteProtocolError, match="cannot be empty"):
        server.receive_data(frame(HEADERS, 0, 1, cbor2.dumps({1: "m"})) + frame(DATA, 0x4 | END_STREAM, 1))


def test_flow_control_counts_the_compressed_bytes_and_returns_them_once_consumed(framer_cls: type) -> None:
    pair = Pair(framer_cls, server_options={"stream_window": 4096})
    sid = pair.client.open_call("m")
    pair.exchange()
    before = pair.client._live[sid].send_window
    pair.client.send_compressed(sid, BIG, Coding.ZLIB)
    wire = before - pair.client._live[sid].send_window
    assert 0 < wire < len(BIG) // 10
    (payload,) = [p for e in pair.exchange()["server"] if isinstance(e, MessagesReceived) for p in e.payloads]
    stream = pair.server._live[sid]
    # Held as it arrived: its size on the wire, however far it expands when read.
    assert stream.recv_granted == 4096 - wire and stream.recv_held == wire == message_size(payload)
    assert decode(payload) == cbor2.loads(BIG)
    pair.server.consumed(sid, message_size(payload))
    assert stream.recv_held == 0
    # Less than half the window to give back: nothing announced yet, the wire bytes owed.
    assert stream.recv_granted == 4096 - wire and not pair.server.data_to_send()


# =================================================================== both framers agree
@settings(max_examples=60, deadline=None)
@given(
    sent=st.lists(st.tuples(st.binary(min_size=1, max_size=6000), st.booleans()), min_size=1, max_size=4),
    chunk=st.integers(min_value=1, max_value=700),
    window=st.integers(min_value=1024, max_value=8192),
)
def test_any_messages_round_trip_compressed_or_not_through_both_framers_in_any_chunks(
    sent: list[tuple[bytes, bool]], chunk: int, window: int
) -> None:
    """Hypothesis: whatever the messages (each compressed or not), the window that splits
    them and the chunks the bytes arrive in, both framers deliver the same messages and the
    same events: a compressed message's last frame, which carries no flags, may share a run
    of plain DATA frames with the next message."""
    from trpc._framer import FRAMERS

    results = []
    for framer_cls in FRAMERS.values():
        pair = Pair(framer_cls, chunk=chunk, client_options={"compression_threshold": 0},
                    server_options={"stream_window": window})
        sid = pair.client.open_call("m")
        for index, (message, compressed) in enumerate(sent):  # all queued at once
            end = index == len(sent) - 1
            if compressed:
                pair.client.send_compressed(sid, message, Coding.ZLIB, end_stream=end)
            else:
                pair.client.send_message(sid, message, end_stream=end)
        received: list[bytes] = []
        events: list[object] = []
        for _ in range(4 * len(sent) + 4):  # each round consumes what came, which gives credit
            new = pair.exchange()["server"]
            events += new
            for payload in messages(new, sid):
                received.append(payload)
                pair.server.consumed(sid, len(payload))
            if StreamEnded in types(new):
                break
        assert received == [message for message, _ in sent]
        results.append([type(e).__name__ for e in events])
    assert all(result == results[0] for result in results)


# ====================================================================== the codings alone
@pytest.mark.parametrize("coding", CODINGS)
def test_a_message_given_as_head_and_body_compresses_as_their_concatenation(coding: Coding) -> None:
    head, body = b"\x5a\x00\x01\x00\x00", b"x" * 65536
    assert decompress(coding, [compress(coding, [head, body])], 1 << 20) == head + body


@needs_zstd
def test_a_zstd_frame_without_its_size_stops_at_the_limit_plus_one_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound holds while decompressing: however far such a frame expands, at most the
    limit and one output piece are ever produced."""
    import zstandard

    import trpc.wire._compression as compression

    produced = []

    class Spy(compression._BoundedSink):
        def write(self, data: bytes) -> int:
            produced.append(len(data))
            return super().write(data)

    monkeypatch.setattr(compression, "_BoundedSink", Spy)
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (32 << 20))
    assert zstandard.frame_content_size(bomb) == -1
    with pytest.raises(DecompressionError) as caught:
        decompress(Coding.ZSTD, [bomb], 1 << 20)
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert 1 << 20 < sum(produced) <= (1 << 20) + (1 << 16)
    small = zstandard.ZstdCompressor(write_content_size=False).compress(BIG)
    assert decompress(Coding.ZSTD, [small], len(BIG)) == BIG


@needs_zstd
def test_a_zstd_frame_that_declares_too_much_is_refused_before_decompressing(monkeypatch: pytest.MonkeyPatch) -> None:
    import zstandard

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("decompressed")

    monkeypatch.setattr(zstandard.ZstdDecompressor, "decompress", never)
    with pytest.raises(DecompressionError) as caught:
        decompress(Coding.ZSTD, [compress(Coding.ZSTD, b"\0" * (8 << 20))], 4 << 20)
    assert caught.value.status is Status.RESOURCE_EXHAUSTED


@needs_zstd
def test_a_zstd_frame_that_holds_more_than_it_declares_is_corrupt() -> None:
    packed = bytearray(compress(Coding.ZSTD, b"hello world " * 100_000))
    assert packed[4] == 0xA0  # single segment, a 4-byte content size at offset 5
    packed[5:9] = (1000).to_bytes(4, "little")
    with pytest.raises(DecompressionError) as caught:
        decompress(Coding.ZSTD, [bytes(packed)], 4 << 20)
    assert caught.value.status is Status.INTERNAL


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("how", ["truncated", "trailing bytes", "two streams"])
def test_anything_but_exactly_one_stream_is_corrupt(coding: Coding, how: str) -> None:
    packed = compress(coding, BIG)
    data = {"truncated": packed[:-3], "trailing bytes": packed + b"\0", "two streams": packed + packed}[how]
    with pytest.raises(DecompressionError) as caught:
        decompress(coding, [data], 1 << 20)
    assert caught.value.status is Status.INTERNAL


def test_zlib_data_split_anywhere_decompresses_the_same() -> None:
    packed = compress(Coding.ZLIB, BIG)
    for cut in range(1, len(packed)):
        assert decompress(Coding.ZLIB, [packed[:cut], packed[cut:]], len(BIG)) == BIG


# ====================================================================== whole calls
LONG = "compressible " * 200  # 2.6 KiB as CBOR: above the threshold, shrinks well


class Zip(trpc.Service, name="zip.Zip"):
    @trpc.unary
    async def echo(self, value: object) -> object:
        return value

    @trpc.unary(compression="zlib")
    async def echo_zlib(self, value: object) -> object:
        return value

    @trpc.server_stream
    async def repeat(self, value: object, times: int) -> AsyncIterator[object]:
        for _ in range(times):
            yield value

    @trpc.client_stream
    async def join(self, values: AsyncIterator[str]) -> str:
        return "".join([value async for value in values])

    @trpc.bidi_stream
    async def chat(self, values: AsyncIterator[str]) -> AsyncIterator[str]:
        async for value in values:
            yield value


class Recorder(trio.abc.Stream):
    """A client's stream that keeps every byte each way, to read the frames back."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sent = bytearray()
        self.received = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.received += data
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()

    def request_codings(self) -> list[int]:
        """The coding of each DATA frame the client sent (but bare END_STREAMs), in order."""
        return [(f >> 2) & 3 for f, _, length, _ in data_frames(bytes(self.sent[28:])) if length]

    def response_codings(self) -> list[int]:
        """The coding of each DATA frame the server sent, in order."""
        return [(f >> 2) & 3 for f, _, _, _ in data_frames(bytes(self.received[28:]))]


async def open_pair(
    nursery: trio.Nursery, *, server_options: dict[str, Any] | None = None,
    client_options: dict[str, Any] | None = None,
) -> tuple[Recorder, AbstractAsyncContextManager[trpc.Client]]:
    server = trpc.Server(Zip(), **(server_options or {}))
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream, "memory")
    recorder = Recorder(client_stream)
    return recorder, trpc.open_client(recorder, **(client_options or {}))


@pytest.mark.parametrize("coding", ["zlib", pytest.param("zstd", marks=needs_zstd)])
async def test_every_call_shape_compresses_both_ways_with_the_clients_coding(
    nursery: trio.Nursery, coding: str
) -> None:
    recorder, opening = await open_pair(nursery, client_options={"compression": coding})
    number = {"zlib": 1, "zstd": 2}[coding]
    async with opening as client:
        assert await client.echo(LONG) == LONG
        assert recorder.request_codings() == [number] and recorder.response_codings() == [number]
        assert [item async for item in client.repeat(LONG, 3)] == [LONG] * 3
        assert recorder.response_codings()[-3:] == [number] * 3

        async def values() -> AsyncIterator[str]:
            for _ in range(3):
                yield LONG

        assert await client.join(values()) == LONG * 3
        assert recorder.response_codings()[-1] == number
        assert [reply async for reply in client.chat(values())] == [LONG] * 3
        assert recorder.request_codings()[-3:] == [number] * 3
        assert recorder.response_codings()[-3:] == [number] * 3
        assert set(recorder.request_codings()) == {number}


async def test_small_messages_and_calls_without_compression_go_plain(nursery: trio.Nursery) -> None:
    recorder, opening = await open_pair(nursery, client_options={"compression": "zlib"})
    async with opening as client:
        assert await client.echo("short") == "short"
        assert await client.echo(LONG, compression=None) == LONG
    assert recorder.request_codings() == [0, 0] and recorder.response_codings() == [0, 0]


async def test_the_threshold_is_each_sides_own(nursery: trio.Nursery) -> None:
    recorder, opening = await open_pair(
        nursery, server_options={"compression_threshold": 1 << 20},
        client_options={"compression": "zlib", "compression_threshold": 16},
    )
    async with opening as client:
        assert await client.echo("x" * 40) == "x" * 40
    assert recorder.request_codings() == [1] and recorder.response_codings() == [0]


async def test_a_per_call_coding_overrides_the_clients(nursery: trio.Nursery) -> None:
    recorder, opening = await open_pair(nursery)
    async with opening as client:
        assert await client.echo(LONG) == LONG
        assert await client.echo(LONG, compression="zlib") == LONG
        assert await client.echo.with_options(compression="zlib")(LONG) == LONG
    assert recorder.request_codings() == [0, 1, 1] and recorder.response_codings() == [0, 1, 1]


async def test_a_typed_stubs_coding_applies_to_each_of_its_calls(nursery: trio.Nursery) -> None:
    recorder, opening = await open_pair(nursery)
    async with opening as client:
        zipped = client.stub(Zip, compression="zlib")
        assert await zipped.echo(LONG) == LONG
        assert await client.stub(Zip).echo(LONG) == LONG
        with pytest.raises(trpc.UsageError, match="compression"):
            client.stub(Zip, compression="brotli")
    assert recorder.request_codings() == [1, 0] and recorder.response_codings() == [1, 0]


async def test_a_methods_own_coding_compresses_its_responses_when_the_client_asks_none(nursery: trio.Nursery) -> None:
    recorder, opening = await open_pair(nursery)
    async with opening as client:
        assert await client.echo_zlib(LONG) == LONG
        assert await client.echo(LONG) == LONG
    assert recorder.request_codings() == [0, 0] and recorder.response_codings() == [1, 0]


async def test_the_servers_coding_applies_to_every_method_and_the_clients_request_wins(nursery: trio.Nursery) -> None:
    recorder, opening = await open_pair(nursery, server_options={"compression": "zlib"})
    async with opening as client:
        assert await client.echo(LONG) == LONG
        if HAS_ZSTD:
            assert await client.echo(LONG, compression="zstd") == LONG
    assert recorder.response_codings() == ([1, 2] if HAS_ZSTD else [1])


async def test_a_client_that_accepts_no_coding_gets_plain_responses(nursery: trio.Nursery) -> None:
    """A 1.1 client (its preface accepts nothing) is never sent a compressed message, even by
    a server that compresses everything."""
    from .wire_spec_client import Settings, connect

    server = trpc.Server(Zip(), compression="zlib", grpc=False)
    address = await nursery.start(server.serve_tcp, 0)
    async with connect(address, Settings(minor=1)) as conn:
        reply = await conn.call("echo", LONG)
    assert reply.result == LONG
    assert all(frame.flags & 0xC == 0 for frame in conn.frames if frame.type == 0)


async def test_an_unknown_per_call_coding_is_a_usage_error(nursery: trio.Nursery) -> None:
    _, opening = await open_pair(nursery)
    async with opening as client:
        with pytest.raises(trpc.UsageError, match="compression"):
            await client.echo(LONG, compression="brotli")


def test_a_method_that_names_an_unknown_coding_fails_when_its_class_is_made() -> None:
    with pytest.raises(ValueError, match="compression is"):
        class Bad(trpc.Service):  # noqa: F841
            @trpc.unary(compression="lz4")
            async def f(self) -> None: ...  # pragma: no cover


async def test_a_request_zip_bomb_ends_that_call_and_the_client_calls_again(nursery: trio.Nursery) -> None:
    """Through a real server: a few KiB expanding to 64 MiB against the default 4 MiB limit."""
    from .wire_spec_client import Settings, connect

    server = trpc.Server(Zip(), grpc=False)
    address = await nursery.start(server.serve_tcp, 0)
    bomb = zlib.compress(cbor2.dumps([[b"\0" * (64 << 20)]]), 9)
    async with connect(address, Settings(minor=2, codings=1)) as conn:
        assert conn.peer.codings & 1
        stream = conn.open_stream("echo")
        await stream.send_message(raw=bomb, end_stream=True, coding=1)
        reply = await stream.finish()
        assert reply.trailers is not None and reply.status == Status.RESOURCE_EXHAUSTED
        assert "expands past the limit" in reply.trailers.message
        assert (await conn.call("echo", "again")).result == "again"



async def test_the_config_sets_a_methods_coding_and_a_call_option_wins_over_it(nursery: trio.Nursery) -> None:
    config = {"methodConfig": [{"name": [{"service": "zip.Zip", "method": "echo"}], "compression": "zlib"}]}
    recorder, opening = await open_pair(nursery, client_options={"config": config})
    async with opening as client:
        assert await client["zip.Zip"].echo(LONG) == LONG
        assert await client["zip.Zip"].echo(LONG, compression=None) == LONG
        assert await client["zip.Zip"].echo_zlib(LONG) == LONG
    assert recorder.request_codings() == [1, 0, 0]


def test_a_config_naming_an_unknown_coding_says_where() -> None:
    from trpc import ClientConfig, ConfigError

    with pytest.raises(ConfigError, match=r"methodConfig\[0\]\.compression"):
        ClientConfig.from_dict({"methodConfig": [{"name": [{}], "compression": "lz4"}]})


@pytest.mark.parametrize("coding", ["zlib", pytest.param("zstd", marks=needs_zstd)])
async def test_the_call_commands_compression_option_compresses_both_ways(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], coding: str
) -> None:
    """``trpc call TARGET echo X --compression CODING``, in process, over a recorded in-memory
    stream (the TARGET is parsed, not used)."""
    from trpc import _cli

    server = trpc.Server(Zip())
    recorders: list[Recorder] = []

    def open_recorded_client(target: Any, **options: Any) -> AbstractAsyncContextManager[trpc.Client]:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(server.serve_stream, server_stream, "memory")
        recorders.append(Recorder(client_stream))
        return trpc.open_client(recorders[-1], **options)

    monkeypatch.setattr(_cli, "open_client", open_recorded_client)
    argv = ["call", "127.0.0.1:1", "echo", LONG, "--compression", coding]
    assert await _cli.run(_cli._parser().parse_args(argv)) == 0
    assert capsys.readouterr().out == LONG + "\n"
    number = {"zlib": 1, "zstd": 2}[coding]
    # The command asks reflection first (a small request: plain), then makes the call.
    assert recorders[-1].request_codings()[-1] == number and recorders[-1].response_codings()[-1] == number


def test_the_serve_commands_compression_option_reaches_the_server() -> None:
    from trpc import _cli

    args = _cli._parser().parse_args(["serve", "trpc.examples.greeter:Greeter", "--compression", "zlib"])
    server = trpc.Server(Zip(), **_cli._server_limits(args))
    assert server._compression == Coding.ZLIB
    plain = _cli._parser().parse_args(["serve", "trpc.examples.greeter:Greeter"])
    assert trpc.Server(Zip(), **_cli._server_limits(plain))._compression == Coding.NONE
    with pytest.raises(SystemExit):
        _cli._parser().parse_args(["serve", "trpc.examples.greeter:Greeter", "--compression", "lz4"])


def cancels(raw: bytes) -> list[tuple[int, dict[int, object]]]:
    """The CANCEL frames in ``raw`` (a run of whole frames): (stream id, payload)."""
    out = []
    position = 0
    while position < len(raw):
        length, ftype, _, stream_id = HEADER.unpack_from(raw, position)
        if ftype == FrameType.CANCEL:
            out.append((stream_id, cbor2.loads(raw[position + 10 : position + 10 + length])))
        position += 10 + length
    return out


async def test_a_streamed_response_that_expands_past_the_methods_limit_ends_the_call_and_tells_the_server(
    nursery: trio.Nursery,
) -> None:
    """Read by the client, a compressed response is decompressed within the method's limit
    (the config's maxResponseMessageBytes): past it the call ends RESOURCE_EXHAUSTED and a
    CANCEL with that status goes to the server, which serves the next call."""
    config = {"methodConfig": [{"name": [{"method": "chat"}], "maxResponseMessageBytes": 1000}]}
    recorder, opening = await open_pair(nursery, client_options={"compression": "zlib", "config": config})
    more = trio.Event()

    async def values() -> AsyncIterator[str]:
        yield LONG
        await more.wait()  # the call stays open: its end must come from the client's CANCEL

    async with opening as client:
        with pytest.raises(trpc.RpcError) as info:
            async for _ in client.chat(values()):
                pass  # pragma: no cover  (the first response is already too large)
        assert info.value.status is Status.RESOURCE_EXHAUSTED and "1000 bytes" in info.value.message
        assert recorder.response_codings()[0] == Coding.ZLIB  # small on the wire: under the limit
        assert await client.echo("next") == "next"
    ((_, reason),) = cancels(bytes(recorder.sent[28:]))
    assert reason[1] == Status.RESOURCE_EXHAUSTED
