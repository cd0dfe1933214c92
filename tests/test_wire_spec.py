"""The wire protocol as documented (docs/PROTOCOL.md), tested with an independent client.

``wire_spec_client`` was written from the document alone; these tests run it against the real
server.  Every wait is bounded by ``fail_after``.
"""

from __future__ import annotations

import functools
import struct

import zlib

import cbor2
import pytest
import trio
import trpc

from . import wire_spec_client as w
from .wire_spec_client import (
    ACK, CANCEL, DATA, END_STREAM, GOAWAY, HEADERS, INFO, MORE, PING, TRAILERS, WINDOW_UPDATE,
    Settings, connect, encode_args, encode_frame,
)

T = 5  # seconds: the bound on any single wait

DOC_PREFACE = bytes.fromhex(  # §2's example: version 1.2, accepting zlib and zstd
    "54 52 50 43 01 02 00 03 00 20 00 00 00 40 00 00 00 20 00 00 01 00 00 00 00 00 00 64")
try:
    import zstandard  # noqa: F401
except ImportError:  # §2: trpc accepts zstd only where zstandard is installed
    SERVER_PREFACE = DOC_PREFACE[:7] + b"\x01" + DOC_PREFACE[8:]
else:
    SERVER_PREFACE = DOC_PREFACE
#: The conftest's service's name (tests/services.py: a class named after where it is defined).
SVC = "tests.services.Svc"
#: What the conftest's service declares idempotent, by path and by short name (§3), and the
#: reflection service's Describe (§13).
IDEMPOTENT = frozenset({"greet", "count", f"{SVC}/greet", f"{SVC}/count",
                        "Describe", "trpc.reflection.v1.Reflection/Describe"})


def check_send_credit(conn) -> None:
    """Replay what we sent and received, in order: no DATA frame was queued before the
    stream and connection credit for it had arrived (§8)."""
    conn_credit = conn.peer.connection_window
    streams: dict[int, int] = {}
    for direction, type_, sid, n in conn.log:
        if direction == "recv" and type_ == WINDOW_UPDATE:
            if sid == 0:
                conn_credit += n
            else:
                streams[sid] = streams.get(sid, conn.peer.stream_window) + n
        elif direction == "sent" and type_ == DATA:
            conn_credit -= n
            streams[sid] = streams.get(sid, conn.peer.stream_window) - n
            assert conn_credit >= 0 and streams[sid] >= 0, (sid, n, conn_credit, streams[sid])


async def wait_until(predicate, timeout: float = T) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


# ============================================================== byte-exact examples (§1, §2, §5)


def test_doc_preface_example_matches_our_encoding():
    assert Settings(minor=2, codings=3).encode() == DOC_PREFACE
    # this client announces 1.0 unless told otherwise: only the version and codings differ
    assert w.DEFAULTS.encode() == DOC_PREFACE[:5] + b"\x00\x00\x00" + DOC_PREFACE[8:]
    decoded = Settings.decode(DOC_PREFACE)
    assert (decoded.major, decoded.minor, decoded.codings) == (1, 2, 3)
    assert (decoded.max_frame_size, decoded.max_message_size, decoded.stream_window,
            decoded.connection_window, decoded.max_concurrent_streams) == (
        2_097_152, 4_194_304, 2_097_152, 16_777_216, 100)


def test_doc_message_examples_match_our_encoding():
    assert encode_args(["Ada"]) == bytes.fromhex("81 81 63 41 64 61")
    assert encode_args() == bytes.fromhex("81 80")
    assert encode_args([1], {"b": 2}) == cbor2.dumps([[1], {"b": 2}])
    assert cbor2.dumps("Hello Ada") == bytes.fromhex("69 48 65 6c 6c 6f 20 41 64 61")


def test_incremental_frame_parser_any_slicing():
    frames = [w.Frame(HEADERS, 0, 1, cbor2.dumps({1: "greet"})),
              w.Frame(DATA, END_STREAM, 1, encode_args(["Ada"])),
              w.Frame(DATA, 0, 3, b""), w.Frame(PING, ACK, 0, b"12345678"),
              w.Frame(DATA, MORE, 2**32 - 1, bytes(range(256)) * 70)]
    wire = b"".join(f.encode() for f in frames)
    for step in (1, 3, 10, 11, 4096, len(wire)):
        parser = w.FrameParser(1 << 20)
        got = []
        for i in range(0, len(wire), step):
            parser.feed(wire[i:i + step])
            got += parser.frames()
        assert got == frames and parser.buffered == 0
    # an oversize length is refused from the header alone, before any payload
    parser = w.FrameParser(16_384)
    parser.feed(encode_frame(DATA, 0, 1, length=16_385))
    with pytest.raises(w.ProtocolError) as info:
        parser.next_frame()
    assert info.value.status == w.RESOURCE_EXHAUSTED


async def test_server_preface_is_the_doc_example_and_sent_without_waiting(service, nursery):
    """§2: each side sends its preface without waiting for the peer's; trpc's defaults (a
    server that does not also speak gRPC on the port)."""
    address = await nursery.start(trpc.Server(service, grpc=False).serve_tcp, 0)
    with trio.fail_after(T):
        tcp = await trio.open_tcp_stream(*address)
        buf = b""
        while len(buf) < 28:
            data = await tcp.receive_some(1000)
            assert data, "EOF before the server's preface"
            buf += data
        await tcp.aclose()
    assert buf[:28] == SERVER_PREFACE


async def test_a_server_that_speaks_grpc_too_sends_its_preface_after_the_clients_first_byte(server):
    """§2 and "gRPC": the server tells the wires apart by the client's first byte, then
    answers with its own preface."""
    with trio.fail_after(T):
        tcp = await trio.open_tcp_stream(*server.address)
        with trio.move_on_after(0.2):
            assert await tcp.receive_some(1000) == b"", "a preface before the client's first byte"
        await tcp.send_all(DOC_PREFACE[:1])
        buf = b""
        while len(buf) < 28:
            data = await tcp.receive_some(1000)
            assert data, "EOF before the server's preface"
            buf += data
        await tcp.aclose()
    assert buf[:28] == SERVER_PREFACE


async def test_unary_bytes_on_the_wire_match_section_1(server):
    """§1: HEADERS {1: "greet"}, DATA END_STREAM [["Ada"]] -> DATA "Hello Ada", TRAILERS {1: 0}."""
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            assert conn.peer_preface == SERVER_PREFACE
            stream = conn.open_stream("greet")
            await stream.send_message(raw=bytes.fromhex("81 81 63 41 64 61"), end_stream=True)
            reply = await stream.finish()
    assert conn.sent[0] == (HEADERS, 0, 1, len(cbor2.dumps({1: "greet"})))
    assert conn.sent[1] == (DATA, END_STREAM, 1, 6)
    kinds = [(f.type, f.flags) for f in stream.frames]
    assert kinds == [(DATA, 0), (TRAILERS, 0)], stream.frames
    assert stream.frames[0].payload == bytes.fromhex("69 48 65 6c 6c 6f 20 41 64 61")
    assert cbor2.loads(stream.frames[1].payload) == {1: 0}
    assert stream.frames[1].payload == bytes.fromhex("a1 01 00")
    assert reply.result == "Hello Ada"


# ============================================================== compressed messages (§5, 1.2)


async def test_the_compressed_example_of_section_5_round_trips(server):
    """§5 "Compressed messages": a 1.2 client accepting zlib sends `greet("Ada" * 400)`
    compressed at level 1 and asks for zlib responses (HEADERS key 4); the server (which
    accepts zlib) answers compressed, and this client inflates it within its limit."""
    request = encode_args(["Ada" * 400])
    assert len(request) == 1205 and len(zlib.compress(request, 1)) == 28
    with trio.fail_after(T):
        async with connect(server.address, Settings(minor=2, codings=1)) as conn:
            assert conn.peer.codings & 1  # §2: the server accepts zlib
            stream = conn.open_stream("greet", extra={4: 1})
            await stream.send_message(raw=request, end_stream=True, zlib_level=1)
            reply = await stream.finish()
    assert conn.sent[1] == (DATA, END_STREAM | 0x4, 1, 28)
    assert reply.result == "Hello " + "Ada" * 400
    (data,) = [f for f in stream.frames if f.type == DATA]
    assert data.flags == 0x4 and len(cbor2.dumps(reply.result)) == 1209 > len(data.payload)


async def test_a_client_that_accepts_no_coding_is_answered_plain_though_it_asks(server):
    """§5: nothing is compressed towards a side whose preface does not accept the coding."""
    with trio.fail_after(T):
        async with connect(server.address, Settings(minor=2, codings=0)) as conn:
            stream = conn.open_stream("greet", extra={4: 1})
            await stream.send_message(raw=encode_args(["Ada" * 400]), end_stream=True)
            reply = await stream.finish()
    assert reply.result == "Hello " + "Ada" * 400
    assert [f.flags for f in stream.frames if f.type == DATA] == [0]


async def test_corrupt_zlib_ends_the_call_with_internal_and_the_connection_carries_on(server):
    """§5: compressed bytes that are not one valid stream end that call (INTERNAL), not the
    connection."""
    with trio.fail_after(T):
        async with connect(server.address, Settings(minor=2, codings=1)) as conn:
            stream = conn.open_stream("greet")
            await stream.send_message(raw=b"\x78\x01 not deflate", end_stream=True, coding=1)
            reply = await stream.finish()
            assert reply.status == w.INTERNAL and "zlib" in reply.trailers.message
            assert (await conn.call("greet", "Ada")).result == "Hello Ada"


# ============================================================== unary calls (§4, §5, §6)


async def test_unary_greet(server):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            reply = await conn.call("greet", "Ada")
    assert reply.result == "Hello Ada"
    assert reply.trailers.status == w.OK


async def test_keyword_arguments(server):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            assert (await conn.call("add", 1, b=2)).result == 3
            assert (await conn.call("add", a=5)).result == 5
            assert (await conn.call("add", 4)).result == 4


async def test_no_argument_call(server):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            stream = conn.open_stream("nothing")
            await stream.send_message(raw=bytes.fromhex("81 80"), end_stream=True)
            reply = await stream.finish()
            assert reply.result is None
            # same with the args message and END_STREAM as separate frames
            stream = conn.open_stream("whoami")
            await stream.send_message(raw=encode_args())
            stream.end()
            assert (await stream.finish()).result["method"] == f"{SVC}/whoami"


async def test_unknown_method_is_unimplemented(server):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            reply = await conn.call("no_such_method", 1)
            # with no request message at all (END_STREAM on HEADERS)
            reply2 = await conn.open_stream("nope", end_stream=True).finish()
    assert reply.trailers.status == w.UNIMPLEMENTED and reply.messages == []
    assert reply2.trailers.status == w.UNIMPLEMENTED


@pytest.mark.parametrize("raw", [
    encode_args(["a", "b"]),                 # does not bind: too many arguments
    encode_args([], {"nom": "x"}),           # does not bind: unknown keyword
    encode_args(),                           # does not bind: missing argument
    cbor2.dumps("not an array"),             # not [positional] / [positional, keyword]
    cbor2.dumps([["x"], {"a": 1}, 3]),       # three elements
    bytes.fromhex("ff"),                     # not CBOR at all ("do not decode")
    bytes.fromhex("82 81"),                  # truncated CBOR
    encode_args(["Ada"]) + b"\x00",          # one data item, then more (a message is exactly one)
], ids=["too-many", "bad-keyword", "missing", "not-array", "three-elements", "not-cbor",
        "truncated", "bytes-after-the-item"])
async def test_bad_arguments_are_invalid_argument(server, raw):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            stream = conn.open_stream("greet")
            await stream.send_message(raw=raw, end_stream=True)
            reply = await stream.finish()
            assert (await conn.call("greet", "still ok")).result == "Hello still ok"
    assert reply.trailers.status == w.INVALID_ARGUMENT, reply.trailers
    assert reply.messages == []


async def test_empty_keyword_map_and_no_request_message(server):
    """§5 says element 1 is 'present only if there are keyword arguments': is an empty map
    accepted?  And a unary call whose client stream is empty (END_STREAM on HEADERS)?"""
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            stream = conn.open_stream("greet")
            await stream.send_message(raw=cbor2.dumps([["Ada"], {}]), end_stream=True)
            empty_kw = await stream.finish()
            no_args = await conn.open_stream("greet", end_stream=True).finish()
            no_args0 = await conn.open_stream("nothing", end_stream=True).finish()
    assert empty_kw.result == "Hello Ada"
    assert no_args.status == w.INVALID_ARGUMENT, no_args
    assert no_args0.status == w.INVALID_ARGUMENT, no_args0


async def test_second_request_message_on_unary_is_invalid_argument(server, service):
    """§5: a second request message on a unary call ends it with INVALID_ARGUMENT.  (With a
    fast handler the server may already have answered OK: §5 lets it end the call before
    the client has finished sending -- so the handler here never finishes on its own.)"""
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            stream = conn.open_stream("block")
            await stream.send_message(raw=encode_args())
            await service.started.wait()
            await stream.send_message(raw=encode_args(), end_stream=True)
            reply = await stream.finish()
            await service.cancelled.wait()
            stream = conn.open_stream("count")
            await stream.send_message(raw=encode_args([10**9]))
            await stream.receive_message()
            await stream.send_message(raw=encode_args([1]), end_stream=True)
            reply2 = await stream.finish()
    assert reply.trailers.status == w.INVALID_ARGUMENT, reply
    assert reply2.trailers.status == w.INVALID_ARGUMENT, reply2.trailers


async def test_error_status_details_and_trailer_metadata(server):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            reply = await conn.call("fail", "rpc")
            internal = await conn.call("fail", "other")
    t = reply.trailers
    assert reply.messages == []
    assert (t.status, t.message, t.details, t.metadata) == (
        w.NOT_FOUND, "no such thing", {"id": 7}, {"hint": "try 8"})
    assert t.raw[1] == 5 and t.raw[3] == {"id": 7} and t.raw[4] == {"hint": "try 8"}
    # §6: unexpected exception -> INTERNAL, the message names the exception type only
    assert internal.trailers.status == w.INTERNAL
    assert "ValueError" in internal.trailers.message
    assert "secret" not in internal.trailers.message
    assert 3 not in internal.trailers.raw and 4 not in internal.trailers.raw


async def test_metadata_round_trip(server):
    md = {"user": "ada", "token": b"\x00\xffbin", "empty": ""}
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            reply = await conn.call("whoami", metadata=md)
            plain = await conn.call("whoami")
    assert reply.result["method"] == f"{SVC}/whoami"
    assert reply.result["metadata"] == md
    assert plain.result["metadata"] in ({}, None)
    assert reply.result["peer"]


async def test_timeout_field(server):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            stream = conn.open_stream("remaining", timeout=5)
            assert stream.headers_sent == {1: "remaining", 2: 5_000_000}
            await stream.send_message(raw=encode_args(), end_stream=True)
            left = (await stream.finish()).result
            # a larger integer width for the same value is also valid CBOR (§1)
            headers = b"\xa2\x01\x69remaining\x02\x1b" + struct.pack(">Q", 2_000_000)
            sid = conn.last_stream_id + 1
            conn.last_stream_id = sid
            stream2 = w.Stream(conn, sid)
            conn.streams[sid] = conn.all_streams[sid] = stream2
            conn.send_frame(HEADERS, 0, sid, headers)
            await stream2.send_message(raw=encode_args(), end_stream=True)
            left2 = (await stream2.finish()).result
    assert 4.0 < left <= 5.0, left
    assert 1.0 < left2 <= 2.0, left2


async def test_timeout_expiry_is_deadline_exceeded(server, service):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            reply = await conn.call("block", timeout=0.2)
            await wait_until(lambda: server.running_calls == 0)
    assert reply.trailers.status == w.DEADLINE_EXCEEDED
    assert service.cancelled.is_set()
    assert [int(r) for r in service.cancel_reasons] == [w.DEADLINE_EXCEEDED]


# ============================================================== streaming (§5)


async def test_server_streaming_in_order(server):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            reply = await conn.call("count", 1000)
            empty = await conn.call("count", 0)
    assert reply.messages == list(range(1000))
    assert reply.trailers.status == w.OK
    assert empty.messages == [] and empty.trailers.status == w.OK


async def test_client_streaming_total(server):
    numbers = list(range(2000))
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            stream = conn.open_stream("total")
            for x in numbers:
                await stream.send_message(x)
            stream.end()
            reply = await stream.finish()
            # END_STREAM on the last message itself
            stream = conn.open_stream("total")
            await stream.send_message(1)
            await stream.send_message(2, end_stream=True)
            reply2 = await stream.finish()
            # an empty client stream: END_STREAM on HEADERS (§4)
            reply3 = await conn.open_stream("total", end_stream=True).finish()
    assert reply.result == sum(numbers)
    assert reply2.result == 3
    assert reply3.result == 0


async def test_bidi_echo_interleaved(server):
    items = ["a", 1, b"\x00\x01", [1, 2], {"k": "v"}, None, 2.5, "x" * 50_000]
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            stream = conn.open_stream("bidi_echo")
            for item in items:
                await stream.send_message(item)
                assert await stream.receive_message() == item  # reply before the next send
            stream.end()
            reply = await stream.finish()
    assert reply.messages == [] and reply.trailers.status == w.OK


# ============================================================== flow control (§5, §8)


async def test_large_message_split_with_more_and_credit(server):
    """3 MiB > the server's max frame size (2 MiB) and its stream window (2 MiB): the request
    needs MORE frames and WINDOW_UPDATEs from the server.  We announce small limits ourselves,
    so the 3 MiB response must respect our 16 KiB frames and our credit too."""
    payload = bytes(range(256)) * (3 * 1024 * 4)
    assert len(payload) == 3 * 1024 * 1024
    local = Settings(max_frame_size=16_384, stream_window=65_536, connection_window=262_144)
    with trio.fail_after(T):
        async with connect(server.address, local) as conn:
            assert conn.peer.max_frame_size == 2 << 20 and conn.peer.stream_window == 2 << 20
            stream = conn.open_stream("echo")
            await stream.send_message(raw=encode_args([payload]), end_stream=True)
            reply = await stream.finish()
    assert reply.result == payload
    sent = stream.data_sent
    assert len(sent) >= 2
    assert all(n <= conn.peer.max_frame_size for _, n in sent)
    assert all(f == MORE for f, _ in sent[:-1]) and sent[-1][0] == END_STREAM
    assert stream.window_updates, "the server never granted stream credit"
    check_send_credit(conn)
    # the response came in frames within our announced limits (the client enforces both)
    data = [f for f in stream.frames if f.type == DATA]
    assert len(data) >= 3 * 1024 * 1024 // 16_384
    assert all(f.flags == MORE for f in data[:-1]) and data[-1].flags == 0


async def test_message_larger_than_server_max_message_size(server):
    """§5: ends that call, not the connection, with RESOURCE_EXHAUSTED."""
    payload = b"x" * (4_194_304 + 1)
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            stream = conn.open_stream("echo")
            with pytest.raises(w.CallError):  # we refuse it locally (MUST NOT)
                await stream.send_message(raw=encode_args([payload]))
            await stream.send_message(raw=encode_args([payload]), end_stream=True,
                                      check_size=False)
            reply = await stream.finish()
            assert (await conn.call("greet", "after")).result == "Hello after"
    assert reply.trailers.status == w.RESOURCE_EXHAUSTED


async def test_response_larger_than_our_max_message_size(server):
    """§5: the server MUST NOT send a message larger than we announced; trpc 'reports that
    locally as RESOURCE_EXHAUSTED' -- for a server, we expect TRAILERS with that status."""
    local = Settings(max_message_size=1000)
    with trio.fail_after(T):
        async with connect(server.address, local) as conn:
            reply = await conn.call("echo", b"y" * 5000)
            ok = await conn.call("echo", b"y" * 100)
    assert reply.messages == [] and reply.trailers.status == w.RESOURCE_EXHAUSTED
    assert ok.result == b"y" * 100


async def test_server_respects_our_stream_window_and_we_grant_it_back(server):
    """We announce a 16 KiB stream window and grant credit only as messages are consumed:
    the server must stop at the window and resume on our WINDOW_UPDATE."""
    local = Settings(stream_window=16_384)
    item = b"z" * 1000  # 1003 bytes encoded
    with trio.fail_after(T):
        async with connect(server.address, local) as conn:
            stream = conn.open_stream("bidi_echo")
            for _ in range(40):
                await stream.send_message(item)
            await conn.ping()
            await trio.sleep(0.1)
            received = sum(len(f.payload) for f in stream.frames if f.type == DATA)
            assert received <= 16_384
            assert received >= 16 * 1003  # it did use the credit it had
            for _ in range(40):
                assert await stream.receive_message() == item
            stream.end()
            reply = await stream.finish()
    assert reply.trailers.status == w.OK
    assert any(t == WINDOW_UPDATE and sid == stream.id for t, _, sid, _ in conn.sent)


# ============================================================== CANCEL (§7)


async def test_cancel_blocked_call(server, service):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            stream = conn.open_stream("block")
            await stream.send_message(raw=encode_args(), end_stream=True)
            await service.started.wait()
            assert server.running_calls == 1
            stream.cancel(w.CANCELLED, "the caller gave up")
            await service.cancelled.wait()
            await wait_until(lambda: server.running_calls == 0)
            await conn.ping()
            # §7: after CANCEL the server sends nothing more on the stream (no TRAILERS)
            await trio.sleep(0.05)
            await conn.ping()
            assert [f for f in conn.frames if f.stream_id == stream.id] == []
            # frames for the now-closed stream are dropped by the server, not errors
            conn.send_frame(WINDOW_UPDATE, 0, stream.id, struct.pack(">I", 100))
            conn.send_frame(CANCEL, 0, stream.id, cbor2.dumps({1: 1}))
            assert (await conn.call("greet", "next")).result == "Hello next"
    assert [int(r) for r in service.cancel_reasons] == [w.CANCELLED]


async def test_frames_for_closed_streams_are_dropped(server):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            assert (await conn.call("greet", "a")).result == "Hello a"
            conn.send_frame(DATA, END_STREAM, 1, encode_args(["late"]))
            conn.send_frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 5))
            conn.send_frame(CANCEL, 0, 1, cbor2.dumps({1: 1}))
            await conn.ping()
            assert (await conn.call("greet", "b")).result == "Hello b"
            assert conn.goaway is None


async def test_eof_cancels_handlers(server, service):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            stream = conn.open_stream("block")
            await stream.send_message(raw=encode_args(), end_stream=True)
            await service.started.wait()
            await conn.tcp.aclose()  # plain EOF, no GOAWAY
            await service.cancelled.wait()
            await wait_until(lambda: server.running_calls == 0)


async def test_graceful_client_goaway_cancels_open_handlers(server, service):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            stream = conn.open_stream("block")
            await stream.send_message(raw=encode_args(), end_stream=True)
            await service.started.wait()
        await service.cancelled.wait()
        await wait_until(lambda: server.running_calls == 0)


async def test_client_goaway_then_close_cancels_handlers(server, service):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            stream = conn.open_stream("block")
            await stream.send_message(raw=encode_args(), end_stream=True)
            await service.started.wait()
            stream.cancel(w.UNAVAILABLE)  # as trpc's client does before its GOAWAY
        await service.cancelled.wait()
        await wait_until(lambda: server.running_calls == 0)
    assert [int(r) for r in service.cancel_reasons] == [w.UNAVAILABLE]


# ============================================================== PING (§9)


async def test_ping_is_acked_with_same_payload(server):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            conn.send_frame(PING, ACK, 0, b"unsolict")  # an ACK is not answered
            await conn.ping(b"\x00\x01\x02\x03\xfc\xfd\xfe\xff")
            await conn.ping(b"second!!")
    pings = [f for f in conn.frames if f.type == PING]
    assert pings == [w.Frame(PING, ACK, 0, b"\x00\x01\x02\x03\xfc\xfd\xfe\xff"),
                     w.Frame(PING, ACK, 0, b"second!!")]


# ============================================================== multiplexing (§1, §4)


async def test_many_concurrent_streams_on_one_connection(server):
    n = 60
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            streams = {}
            for i in range(n):  # open every call first ...
                streams[i] = conn.open_stream("greet" if i % 3 else "count")
            big = conn.open_stream("echo")
            blob = b"q" * (1_500_000)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(big.send_message, raw=encode_args([blob]), end_stream=True))
                for i in reversed(range(n)):  # ... then send the requests in reverse order
                    args = [f"n{i}"] if i % 3 else [i % 7]
                    await streams[i].send_message(raw=encode_args(args), end_stream=True)
                replies = {}

                async def collect(i):
                    replies[i] = await streams[i].finish()

                for i in range(n):
                    nursery.start_soon(collect, i)
                big_reply = await big.finish()
    for i in range(n):
        if i % 3:
            assert replies[i].result == f"Hello n{i}"
        else:
            assert replies[i].messages == list(range(i % 7)) and replies[i].status == w.OK
    assert big_reply.result == blob
    check_send_credit(conn)
    assert sorted({f.stream_id for f in conn.frames if f.stream_id}) == list(range(1, n + 2))


async def test_max_concurrent_streams(server, service):
    """§4: beyond the limit the server ends the call at once with RESOURCE_EXHAUSTED;
    a stream stops counting once we received TRAILERS or sent CANCEL."""
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            limit = conn.peer.max_concurrent_streams
            assert limit == 100
            blocked = []
            for _ in range(limit - 1):
                s = conn.open_stream("block")
                await s.send_message(raw=encode_args(), end_stream=True)
                blocked.append(s)
            assert (await conn.call("greet", "last slot")).result == "Hello last slot"
            s = conn.open_stream("block")  # the 100th: TRAILERS above freed the slot
            await s.send_message(raw=encode_args(), end_stream=True)
            blocked.append(s)
            await wait_until(lambda: server.running_calls == limit)
            over = conn.open_stream("greet", enforce_limit=False)
            await over.send_message(raw=encode_args(["over"]), end_stream=True)
            over_reply = await over.finish()
            blocked.pop().cancel()  # CANCEL frees a slot at once
            again = conn.open_stream("greet")
            await again.send_message(raw=encode_args(["again"]), end_stream=True)
            again_reply = await again.finish()
            for s in blocked:
                s.cancel()
            await wait_until(lambda: server.running_calls == 0)
    assert over_reply.status == w.RESOURCE_EXHAUSTED and over_reply.messages == []
    assert again_reply.result == "Hello again"


# ============================================================== protocol errors (§9)


async def expect_goaway(conn, status: int) -> dict:
    with trio.fail_after(T):
        await conn.goaway_received.wait()
        await conn.closed.wait()  # "Then it closes the connection."
    g = conn.goaway
    assert g.get(2) == status, g
    assert isinstance(g.get(3), str) and g[3], g  # "the message says what was wrong"
    assert w.is_uint(g.get(1)), g
    return g


async def test_unknown_frame_type_is_goaway_internal(server, service):
    with trio.fail_after(T):
        async with connect(server.address, expect_clean=False) as conn:
            stream = conn.open_stream("block")
            await stream.send_message(raw=encode_args(), end_stream=True)
            await service.started.wait()
            conn.send_frame(0x8, 0, 0, b"")
            g = await expect_goaway(conn, w.INTERNAL)
            assert g[1] == 1  # stream 1 was processed
            await service.cancelled.wait()  # the open call did not survive
            await wait_until(lambda: server.running_calls == 0)
    assert not conn.violations
    assert stream.end_reason[1] == w.UNAVAILABLE


PROVOCATIONS = {
    # name: (frames to send after a greet on stream 1 completed, expected GOAWAY status)
    "unknown-type-on-stream": ([(0x9, 0, 1, b"")], w.INTERNAL),
    "ping-7-bytes": ([(PING, 0, 0, b"1234567")], w.INTERNAL),
    "ping-on-stream": ([(PING, 0, 1, b"12345678")], w.INTERNAL),
    "ping-bad-flag": ([(PING, 0x2, 0, b"12345678")], w.INTERNAL),
    "window-update-zero": ([(WINDOW_UPDATE, 0, 0, b"\0\0\0\0")], w.INTERNAL),
    "window-update-3-bytes": ([(WINDOW_UPDATE, 0, 0, b"\0\0\1")], w.INTERNAL),
    "window-update-overflow": ([(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1))],
                               w.INTERNAL),
    "reused-stream-id": ([(HEADERS, 0, 1, cbor2.dumps({1: "greet"}))], w.INTERNAL),
    "headers-stream-0": ([(HEADERS, 0, 0, cbor2.dumps({1: "greet"}))], w.INTERNAL),
    "data-never-opened": ([(DATA, END_STREAM, 5, encode_args(["x"]))], w.INTERNAL),
    "cancel-never-opened": ([(CANCEL, 0, 9, cbor2.dumps({1: 1}))], w.INTERNAL),
    "data-stream-0": ([(DATA, 0, 0, b"\x01")], w.INTERNAL),
    "trailers-from-client": ([(HEADERS, 0, 2, cbor2.dumps({1: "total"})),
                              (TRAILERS, 0, 2, cbor2.dumps({1: 0}))], w.INTERNAL),
    "headers-without-method": ([(HEADERS, 0, 2, cbor2.dumps({3: {"k": "v"}}))], w.INTERNAL),
    "method-not-text": ([(HEADERS, 0, 2, cbor2.dumps({1: 7}))], w.INTERNAL),
    "timeout-not-uint": ([(HEADERS, 0, 2, cbor2.dumps({1: "greet", 2: -1}))], w.INTERNAL),
    "empty-data-no-end": ([(HEADERS, 0, 2, cbor2.dumps({1: "total"})), (DATA, 0, 2, b"")],
                          w.INTERNAL),
    "end-stream-with-more": ([(HEADERS, 0, 2, cbor2.dumps({1: "total"})),
                              (DATA, END_STREAM | MORE, 2, b"\x01")], w.INTERNAL),
    "data-bad-flag": ([(HEADERS, 0, 2, cbor2.dumps({1: "total"})), (DATA, 0x10, 2, b"\x01")],
                      w.INTERNAL),
    # §3, §5 "Compressed messages": coding 3 is reserved; a coding goes on a message's first
    # frame only
    "data-reserved-coding": ([(HEADERS, 0, 2, cbor2.dumps({1: "total"})), (DATA, 0xC, 2, b"\x01")],
                             w.INTERNAL),
    "coding-on-continuation": ([(HEADERS, 0, 2, cbor2.dumps({1: "total"})),
                                (DATA, MORE | 0x4, 2, zlib.compress(b"\x01")[:3]),
                                (DATA, 0x4, 2, zlib.compress(b"\x01")[3:])], w.INTERNAL),
    "headers-more-flag": ([(HEADERS, MORE, 2, cbor2.dumps({1: "total"}))], w.INTERNAL),
    "bad-metadata": ([(HEADERS, 0, 2, cbor2.dumps({1: "whoami", 3: {"k": 1}}))], w.INTERNAL),
    "headers-not-a-map": ([(HEADERS, 0, 2, cbor2.dumps(["greet"]))], w.INTERNAL),
    "headers-bad-cbor": ([(HEADERS, 0, 2, b"\xff")], w.INTERNAL),
    "goaway-on-stream": ([(GOAWAY, 0, 1, cbor2.dumps({1: 0, 2: 0}))], w.INTERNAL),
    "info-from-client": ([(INFO, 0, 0, cbor2.dumps({1: ["greet"]}))], w.INTERNAL),
    "oversize-cbor-map": ([(HEADERS, 0, 2, cbor2.dumps({1: "greet", 9: "x" * 70_000}))],
                          w.INTERNAL),
}


@pytest.mark.parametrize("name", list(PROVOCATIONS))
async def test_protocol_errors_are_answered_with_goaway(server, name):
    frames, status = PROVOCATIONS[name]
    with trio.fail_after(T):
        async with connect(server.address, expect_clean=False) as conn:
            assert (await conn.call("greet", "a")).result == "Hello a"
            for t, f, sid, payload in frames:
                conn.last_stream_id = max(conn.last_stream_id, sid if t == HEADERS else 0)
                conn.send_frame(t, f, sid, payload)
            await expect_goaway(conn, status)
    assert not conn.violations


async def test_oversize_frame_detected_from_header_alone(server):
    with trio.fail_after(T):
        async with connect(server.address, expect_clean=False) as conn:
            stream = conn.open_stream("echo")
            # the header only: the server must not wait for the 1 MiB + 1 payload
            conn.send_frame(DATA, END_STREAM, stream.id, b"", length=conn.peer.max_frame_size + 1)
            await expect_goaway(conn, w.RESOURCE_EXHAUSTED)
    assert not conn.violations


async def test_exceeding_stream_credit_is_resource_exhausted(server):
    """bidi_echo cannot yield while we withhold credit, so it stops consuming: the messages
    we keep sending pile up unconsumed; more than the server's window is a credit violation."""
    local = Settings(stream_window=16_384)
    item = cbor2.dumps(b"k" * 4000)
    with trio.fail_after(T):
        async with connect(server.address, local, expect_clean=False) as conn:
            stream = conn.open_stream("bidi_echo")
            for _ in range(conn.peer.stream_window // len(item) + 10):  # ignoring credit on purpose
                conn.send_frame(DATA, 0, stream.id, item)
            await expect_goaway(conn, w.RESOURCE_EXHAUSTED)
    assert not conn.violations


async def test_eof_mid_frame_is_protocol_error(server):
    with trio.fail_after(T):
        async with connect(server.address, expect_clean=False) as conn:
            conn.send_bytes(encode_frame(PING, 0, 0, b"12345678")[:7])
            await trio.sleep(0.05)
            await conn.tcp.send_eof()
            await expect_goaway(conn, w.INTERNAL)


async def raw_exchange(address, data: bytes, *, send_eof: bool = False,
                       timeout: float = 2) -> tuple[bytes, bool]:
    """Send raw bytes, read until EOF; returns (bytes received, EOF seen)."""
    tcp = await trio.open_tcp_stream(*address)
    try:
        await tcp.send_all(data)
        if send_eof:
            await tcp.send_eof()
        buf = b""
        with trio.move_on_after(timeout):
            while True:
                try:
                    chunk = await tcp.receive_some(65536)
                except trio.BrokenResourceError:  # connection reset
                    return buf, True
                if not chunk:
                    return buf, True
                buf += chunk
        return buf, False
    finally:
        await tcp.aclose()


def parse_after_preface(buf: bytes) -> list:
    assert buf[:28] == SERVER_PREFACE
    parser = w.FrameParser(1 << 20)
    parser.feed(buf[28:])
    frames = parser.frames()
    assert parser.buffered == 0
    return frames


async def test_unsupported_major_version_is_unimplemented(server):
    with trio.fail_after(T):
        buf, eof = await raw_exchange(server.address, Settings(major=2).encode())
    assert eof
    frames = parse_after_preface(buf)
    assert [f.type for f in frames] == [GOAWAY]
    assert cbor2.loads(frames[0].payload)[2] == w.UNIMPLEMENTED


async def test_newer_minor_version_and_reserved_bits_are_accepted(server):
    """§2: minor versions only add things; reserved bits MUST be ignored."""
    local = Settings(minor=7, codings=0xABCC)
    with trio.fail_after(T):
        async with connect(server.address, local) as conn:
            assert (await conn.call("greet", "minor")).result == "Hello minor"
    assert conn.idempotent == IDEMPOTENT  # 7 >= 1: INFO came (§2)


@pytest.mark.parametrize("field,value", [
    ("max_frame_size", 16_383), ("max_frame_size", 16_777_216), ("max_message_size", 0),
    ("stream_window", 0), ("connection_window", 2**31), ("max_concurrent_streams", 0),
])
async def test_out_of_range_preface_values_are_protocol_errors(server, field, value):
    with trio.fail_after(T):
        buf, eof = await raw_exchange(server.address, Settings(**{field: value}).encode())
    assert eof
    frames = parse_after_preface(buf)
    assert [f.type for f in frames] == [GOAWAY]
    assert cbor2.loads(frames[0].payload)[2] == w.INTERNAL


async def test_bad_magic_is_rejected_at_once(server):
    """§2: a peer that is not trpc is rejected as soon as the magic is seen -- here with only
    4 bytes sent, so the server cannot be waiting for the rest of a preface."""
    with trio.fail_after(T):
        buf, eof = await raw_exchange(server.address, b"GET ")
    assert eof, "the server kept the connection open"
    assert buf[:28] == SERVER_PREFACE  # it sends its preface without waiting
    frames = parse_after_preface(buf)
    # (§2 does not say how; §9 says a protocol error is answered with GOAWAY, then close)
    assert [f.type for f in frames] == [GOAWAY]
    assert cbor2.loads(frames[0].payload)[2] == w.INTERNAL


async def test_partial_preface_is_waited_for(server):
    with trio.fail_after(T):
        buf, eof = await raw_exchange(server.address, DOC_PREFACE[:10], timeout=0.3)
    assert not eof and buf == SERVER_PREFACE


async def test_eof_in_preface_is_protocol_error(server):
    """§9: EOF in the middle of the preface is a protocol error (GOAWAY INTERNAL)."""
    with trio.fail_after(T):
        buf, eof = await raw_exchange(server.address, DOC_PREFACE[:10], send_eof=True)
    assert eof
    frames = parse_after_preface(buf)
    assert [f.type for f in frames] == [GOAWAY]
    assert cbor2.loads(frames[0].payload)[2] == w.INTERNAL


# ============================================================== version 1.1: INFO (§3), key 5 (§6)


async def test_a_1_0_client_never_receives_info(server):
    """§2: a new frame type is never sent to a peer whose minor version predates it."""
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            assert (await conn.call("greet", "old")).result == "Hello old"
            await conn.ping()  # everything the server sent before the ack has been read
    assert conn.local.minor == 0
    assert INFO not in {f.type for f in conn.frames} and conn.info is None


async def test_a_1_1_client_receives_info_as_the_spec_gives_its_bytes(nursery):
    """§3 INFO: right after our preface, before anything for a stream, on stream 0, flags 0;
    exactly the bytes of the section's example (a server of kv.Store alone: its get declared
    idempotent, by short name and path, and both methods' shapes by path)."""
    import trpc

    class Store(trpc.Service, name="kv.Store"):
        @trpc.unary(idempotent=True)
        async def get(self, key):
            return key

        @trpc.server_stream
        async def watch(self, key):
            yield key

    address = await nursery.start(trpc.Server(Store(), health=False, reflection=False).serve_tcp, 0)
    with trio.fail_after(T):
        buf, eof = await raw_exchange(address, Settings(minor=1).encode(), timeout=0.3)
    assert not eof
    assert buf[28:] == bytes.fromhex(
        "00 00 00 34 07 00 00 00 00 00"
        "a2 01 82 63 67 65 74 6c 6b 76 2e 53 74 6f 72 65 2f 67 65 74 02 a2 6c 6b 76 2e 53 74 6f 72 65 2f"
        "67 65 74 00 6e 6b 76 2e 53 74 6f 72 65 2f 77 61 74 63 68 01")
    with trio.fail_after(T):
        async with connect(address, Settings(minor=1)) as conn:
            await conn.info_received.wait()
            assert (await conn.call("kv.Store/get", "new")).result == "new"
    assert conn.info == {1: ["get", "kv.Store/get"], 2: {"kv.Store/get": 0, "kv.Store/watch": 1}}
    assert conn.idempotent == {"get", "kv.Store/get"}
    assert conn.methods == {"kv.Store/get": "unary", "kv.Store/watch": "server_stream"}
    assert [f.type for f in conn.frames].count(INFO) == 1


async def test_info_names_every_method_with_its_shape(server):
    """§3 INFO key 2: every method served, the built-in services' too, by path."""
    with trio.fail_after(T):
        async with connect(server.address, Settings(minor=1)) as conn:
            await conn.info_received.wait()
    assert conn.idempotent == IDEMPOTENT
    assert conn.methods[f"{SVC}/greet"] == "unary" and conn.methods[f"{SVC}/count"] == "server_stream"
    assert conn.methods[f"{SVC}/total"] == "client_stream" and conn.methods[f"{SVC}/bidi_echo"] == "bidi_stream"
    assert conn.methods["grpc.health.v1.Health/Watch"] == "server_stream"
    assert conn.methods[w.DESCRIBE] == "unary"
    assert all("/" in path for path in conn.methods)


# ============================================================== §4 method names, §13 reflection


async def test_a_method_is_called_by_path_or_by_its_unambiguous_short_name(server):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            by_path = await conn.call(f"{SVC}/greet", "path")
            short = await conn.call("greet", "short")
    assert (by_path.result, short.result) == ("Hello path", "Hello short")


@pytest.mark.parametrize("name,message", [
    ("x.Y/greet", 'unknown service "x.Y"'),
    (f"{SVC}/gret", f'service "{SVC}" has no method "gret"'),
    ("gret", 'unknown method "gret"'),
])
async def test_unimplemented_says_what_is_unknown(server, name, message):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            reply = await conn.call(name, "x")
    assert reply.status == w.UNIMPLEMENTED and reply.trailers.message == message


async def test_describe_returns_the_document_of_section_13(server):
    with trio.fail_after(T):
        async with connect(server.address) as conn:
            reply = await conn.call(w.DESCRIBE)
            again = await conn.call(w.DESCRIBE)
    assert reply.status == w.OK and again.messages == reply.messages  # the same every time
    doc = w.read_document(reply.result)
    svc = doc["services"][SVC]
    assert svc["doc"].startswith("greet and count are declared idempotent")
    greet = svc["methods"]["greet"]
    assert greet["path"] == f"{SVC}/greet" and greet["shape"] == "unary" and greet["idempotent"]
    assert greet["params"] == [{"name": "name", "kind": "positional_or_keyword", "annotation": "str",
                                "has_default": False, "default": None}]
    assert greet["returns"] == "str"
    add = svc["methods"]["add"]
    assert [(p["name"], p["has_default"], p["default"], p["annotation"]) for p in add["params"]] == [
        ("a", False, None, None), ("b", True, "0", None)]
    assert svc["methods"]["block"]["doc"] == "Blocks until cancelled; records that and why."
    assert svc["methods"]["total"]["shape"] == "client_stream"
    assert doc["services"]["grpc.health.v1.Health"]["methods"]["Watch"]["shape"] == "server_stream"
    describe = doc["services"]["trpc.reflection.v1.Reflection"]["methods"]["Describe"]
    assert describe["path"] == w.DESCRIBE and describe["params"] == []
    # every path the document gives is one the server answers to, with the shape it says (§3)
    with trio.fail_after(T):
        async with connect(server.address, Settings(minor=1)) as conn:
            await conn.info_received.wait()
    assert {m["path"]: m["shape"] for s in doc["services"].values() for m in s["methods"].values()} == conn.methods


async def test_a_server_without_reflection_answers_unimplemented(nursery, service):
    import trpc

    address = await nursery.start(trpc.Server(service, reflection=False).serve_tcp, 0)
    with trio.fail_after(T):
        async with connect(address) as conn:
            reply = await conn.call(w.DESCRIBE)
    assert reply.status == w.UNIMPLEMENTED
    assert reply.trailers.message == 'unknown service "trpc.reflection.v1.Reflection"'


def test_the_document_reader_refuses_what_section_13_forbids():
    good = {"version": 1, "services": [], "messages": [], "later": "ignored"}
    assert w.read_document(good) == {"services": {}, "messages": {}}
    for bad in ({**good, "version": 2}, {**good, "services": {}},
                {**good, "messages": [{"name": "m", "doc": None, "fields": [{"number": -1}]}]}):
        with pytest.raises(w.BadDocument):
            w.read_document(bad)


async def test_a_call_refused_over_the_streams_limit_says_not_processed(server, service):
    """§4, §6: beyond max concurrent streams, TRAILERS RESOURCE_EXHAUSTED with key 5 true; a
    call the server ran carries no key 5."""
    local = Settings(minor=1)
    with trio.fail_after(T):
        async with connect(server.address, local) as conn:
            blocked = []
            for _ in range(conn.peer.max_concurrent_streams):
                s = conn.open_stream("block")
                await s.send_message(raw=encode_args(), end_stream=True)
                blocked.append(s)
            await wait_until(lambda: server.running_calls == conn.peer.max_concurrent_streams)
            over = conn.open_stream("greet", enforce_limit=False)
            await over.send_message(raw=encode_args(["over"]), end_stream=True)
            over_reply = await over.finish()
            for s in blocked:
                s.cancel()
            failed = await conn.call("fail", "rpc")
            ok = await conn.call("greet", "after")
            await wait_until(lambda: server.running_calls == 0)
    assert over_reply.status == w.RESOURCE_EXHAUSTED and over_reply.trailers.not_processed
    assert over_reply.trailers.raw[5] is True
    assert failed.status == w.NOT_FOUND and 5 not in failed.trailers.raw
    assert ok.result == "Hello after" and 5 not in ok.trailers.raw
