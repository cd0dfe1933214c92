"""The gRPC wire (trpc.grpc) against real gRPC clients: grpcio's sync and grpc.aio stacks with
CBOR (de)serializers, and a raw h2 client for requests grpcio would never send.

grpcio blocks (sync) or runs its own asyncio loop (aio), so its calls run in a thread
(``trio.to_thread``) while the server runs in the test's Trio loop."""

from __future__ import annotations

import asyncio
import base64
import ssl
from functools import partial
from typing import Any, Callable, TypeVar

import cbor2
import grpc
import grpc.aio
import h2.config
import h2.connection
import h2.errors
import h2.events
from hyperframe.frame import Frame, GoAwayFrame, PingFrame
import pytest
import trio
import trustme

import trpc
from trpc import RpcError, Status

from .grpc_cbor import cbor_aio_channel, cbor_channel
from .services import Svc

_R = TypeVar("_R")
T = 20  # bound on every wait
SVC = f"{Svc.__module__}.Svc"  # the service name trpc derives from the class


class Wire(trpc.Service, name="t.Wire"):
    def __init__(self) -> None:
        self.started = trio.Event()
        self.cancelled = trio.Event()
        self.cancel_reasons: list = []
        self.produced = 0

    @trpc.unary
    async def meta(self):
        call = trpc.current_call()
        call.send_headers({"h-text": "early", "h-bin": b"\x00\xff"})
        call.set_trailers({"t-text": "late", "t-bin": b"\x01\x02"})
        return call.metadata

    @trpc.unary
    async def fail(self, code: int, message: str):
        raise RpcError(Status(code), message, {"why": message})

    @trpc.unary
    async def size(self, n: int) -> bytes:
        return b"x" * n

    @trpc.unary
    async def block(self):
        self.started.set()
        try:
            await trio.sleep_forever()
        finally:
            self.cancel_reasons.append(trpc.current_call().cancel_reason)
            self.cancelled.set()

    @trpc.unary
    async def nested(self, address: list):
        """A call to the trpc wire from inside a gRPC call: it inherits the deadline."""
        async with trpc.open_client(tuple(address)) as client:
            return await client.method(f"{SVC}/remaining")()

    @trpc.server_stream
    async def flood(self):
        while True:
            self.produced += 1
            yield 1


def stubs(channel) -> dict:
    def make(kind, path):
        return getattr(channel, kind)(path, request_serializer=cbor2.dumps, response_deserializer=cbor2.loads)

    return {
        "greet": make("unary_unary", f"/{SVC}/greet"),
        "count": make("unary_stream", f"/{SVC}/count"),
        "total": make("stream_unary", f"/{SVC}/total"),
        "bidi": make("stream_stream", f"/{SVC}/bidi_echo"),
        "remaining": make("unary_unary", f"/{SVC}/remaining"),
        "check": make("unary_unary", "/grpc.health.v1.Health/Check"),
        **{name: make("unary_unary", f"/t.Wire/{name}") for name in ("meta", "fail", "size", "block", "nested")},
    }


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
async def served(wire, nursery):
    server = trpc.Server(Svc(), wire, max_message_size=1 << 20)
    server.address = await nursery.start(server.serve_tcp, 0)
    return server


def target(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


async def in_thread(fn: Callable[..., _R], *args: Any) -> _R:
    with trio.fail_after(T):
        return await trio.to_thread.run_sync(partial(fn, *args))


def sync_calls(address) -> dict:
    with cbor_channel(target(address)) as channel:
        s = stubs(channel)
        return {
            "unary": s["greet"]([["Ada"]], timeout=T),
            "server_stream": list(s["count"]([[4]], timeout=T)),
            "client_stream": s["total"](iter([1, 2, 3]), timeout=T),
            "bidi": list(s["bidi"](iter(["a", {"b": [1]}]), timeout=T)),
            "empty_client_stream": s["total"](iter([]), timeout=T),
        }


EXPECTED = {"unary": "Hello Ada", "server_stream": [0, 1, 2, 3], "client_stream": 6, "bidi": ["a", {"b": [1]}],
            "empty_client_stream": 0}


async def test_a_sync_grpcio_client_makes_every_call_shape(served):
    assert await in_thread(sync_calls, served.address) == EXPECTED


def aio_calls(address) -> dict:
    async def main():
        async with cbor_aio_channel(target(address)) as channel:
            s = stubs(channel)

            async def requests():
                for x in (1, 2, 3):
                    yield x

            return {
                "unary": await s["greet"]([["Ada"]], timeout=T),
                "server_stream": [x async for x in s["count"]([[4]], timeout=T)],
                "client_stream": await s["total"](requests(), timeout=T),
                "bidi": [x async for x in s["bidi"](iter(["a", {"b": [1]}]), timeout=T)],
                "empty_client_stream": await s["total"](iter([]), timeout=T),
            }

    return asyncio.run(main())


async def test_a_grpc_aio_client_makes_every_call_shape(served):
    assert await in_thread(aio_calls, served.address) == EXPECTED


async def test_the_handler_sees_the_grpc_timeout_as_its_deadline_and_nested_calls_inherit_it(served):
    def run():
        with cbor_channel(target(served.address)) as channel:
            s = stubs(channel)
            return s["remaining"]([[]], timeout=5), s["nested"]([[list(served.address)]], timeout=3)

    direct, nested = await in_thread(run)
    # grpc-core rounds the time left up to its unit (ms) when it sends grpc-timeout.
    assert 4 < direct <= 5.1
    assert 2 < nested <= 3.1


async def test_a_passed_deadline_cancels_the_handler(served, wire):
    def run():
        with cbor_channel(target(served.address)) as channel:
            with pytest.raises(grpc.RpcError) as info:
                stubs(channel)["block"]([[]], timeout=0.5)
            return info.value.code()

    assert await in_thread(run) == grpc.StatusCode.DEADLINE_EXCEEDED
    with trio.fail_after(T):
        await wire.cancelled.wait()
    # The server's timer and the client's RST_STREAM, sent when its own deadline passed, race:
    # gRPC's RST_STREAM carries no reason (trpc's CANCEL does), so the loser is CANCELLED.
    assert wire.cancel_reasons[0] in (Status.DEADLINE_EXCEEDED, Status.CANCELLED)


async def test_a_client_cancel_is_rst_stream_and_cancels_the_handler(served, wire):
    channel = cbor_channel(target(served.address))
    try:
        future = await in_thread(stubs(channel)["block"].future, [[]])
        with trio.fail_after(T):
            await wire.started.wait()
        await in_thread(future.cancel)
        with trio.fail_after(T):
            await wire.cancelled.wait()
        assert wire.cancel_reasons == [Status.CANCELLED]
    finally:
        channel.close()


@pytest.mark.parametrize("code, message", [
    (Status.NOT_FOUND, "no such key"),
    (Status.PERMISSION_DENIED, "nicht erlaubt – ü ✓ 100% \r\n done"),
    (Status.UNAVAILABLE, "东京 overloaded"),
])
async def test_statuses_and_unicode_messages_reach_the_client_with_cbor_details(served, code, message):
    def run():
        with cbor_channel(target(served.address)) as channel:
            with pytest.raises(grpc.RpcError) as info:
                stubs(channel)["fail"]([[int(code), message]], timeout=T)
            return info.value

    error = await in_thread(run)
    assert error.code().value[0] == int(code)
    assert error.details() == message
    details = dict(error.trailing_metadata())["grpc-status-details-bin"]
    assert cbor2.loads(details) == {"why": message}


async def test_an_unknown_method_is_unimplemented_and_an_internal_error_hides_its_text(served):
    def run():
        with cbor_channel(target(served.address)) as channel:
            missing = channel.unary_unary(f"/{SVC}/nope", request_serializer=cbor2.dumps)
            with pytest.raises(grpc.RpcError) as unknown:
                missing([[]], timeout=T)
            failing = channel.unary_unary(f"/{SVC}/fail", request_serializer=cbor2.dumps)
            with pytest.raises(grpc.RpcError) as internal:
                failing([["boom"]], timeout=T)
            return unknown.value, internal.value

    unknown, internal = await in_thread(run)
    assert unknown.code() == grpc.StatusCode.UNIMPLEMENTED and '"nope"' in unknown.details()
    assert internal.code() == grpc.StatusCode.INTERNAL and "secret" not in internal.details()


async def test_metadata_travels_both_ways_with_bin_keys(served):
    def run():
        with cbor_channel(target(served.address)) as channel:
            value, call = stubs(channel)["meta"].with_call(
                [[]], timeout=T, metadata=[("m-text", "hi"), ("m-bin", b"\x00\x10\xff")])
            return value, dict(call.initial_metadata()), dict(call.trailing_metadata())

    seen, initial, trailing = await in_thread(run)
    assert seen["m-text"] == "hi" and seen["m-bin"] == b"\x00\x10\xff"
    assert not any(key.startswith("grpc-") or key in ("te", "content-type") for key in seen)
    assert initial["h-text"] == "early" and initial["h-bin"] == b"\x00\xff"
    assert trailing["t-text"] == "late" and trailing["t-bin"] == b"\x01\x02"


async def test_messages_near_the_size_limit_pass_and_over_it_are_resource_exhausted(served):
    limit = 1 << 20

    def run():
        with cbor_channel(target(served.address)) as channel:
            echo = channel.unary_unary(f"/{SVC}/echo", request_serializer=cbor2.dumps,
                                       response_deserializer=cbor2.loads)
            near = echo([[b"x" * (limit - 16)]], timeout=T)
            with pytest.raises(grpc.RpcError) as over:
                echo([[b"x" * (limit + 1)]], timeout=T)
            big = stubs(channel)["size"]([[3 << 20]], timeout=T)  # responses: the client's limit
            return len(near), over.value, len(big)

    near, over, big = await in_thread(run)
    assert near == limit - 16
    assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "exceeds" in over.details()
    assert big == 3 << 20


async def test_trpc_and_grpc_clients_share_the_port_at_the_same_time(served):
    async def trpc_side():
        async with trpc.open_client(served.address) as client:
            for i in range(20):
                assert await client.method(f"{SVC}/greet")(f"t{i}") == f"Hello t{i}"

    def grpc_side():
        with cbor_channel(target(served.address)) as channel:
            greet = stubs(channel)["greet"]
            return [greet([[f"g{i}"]], timeout=T) for i in range(20)]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trpc_side)
        assert await in_thread(grpc_side) == [f"Hello g{i}" for i in range(20)]


async def test_the_health_check_answers_over_grpc_cbor(served):
    def check():
        with cbor_channel(target(served.address)) as channel:
            return stubs(channel)["check"]([[""]], timeout=T)

    assert await in_thread(check) == "SERVING"
    served.set_health("", "NOT_SERVING")
    assert await in_thread(check) == "NOT_SERVING"


async def test_grpc_false_turns_the_grpc_wire_off(nursery):
    address = await nursery.start(trpc.Server(Svc(), grpc=False).serve_tcp, 0)

    def run():
        with cbor_channel(target(address)) as channel:
            with pytest.raises(grpc.RpcError) as info:
                stubs(channel)["greet"]([["Ada"]], timeout=2)
            return info.value.code()

    assert await in_thread(run) == grpc.StatusCode.UNAVAILABLE
    async with trpc.open_client(address) as client:
        assert await client.greet("Ada") == "Hello Ada"


async def test_tls_serves_grpc_by_alpn_h2_and_trpc_on_the_same_port(nursery):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    address = await nursery.start(partial(trpc.Server(Svc()).serve_tcp, 0, ssl_context=server_context))

    def run():
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        with cbor_channel(f"localhost:{address[1]}", credentials) as channel:
            return stubs(channel)["greet"]([["tls"]], timeout=T)

    assert await in_thread(run) == "Hello tls"
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with trpc.open_client(address, ssl_context=client_context) as client:
        assert await client.greet("trpc") == "Hello trpc"
    # A client that names trpc's wire by ALPN gets the server's preface without sending a byte.
    client_context.set_alpn_protocols(["trpc/1"])
    with trio.fail_after(T):
        tls = trio.SSLStream(await trio.open_tcp_stream(*address), client_context, server_hostname="localhost")
        await tls.do_handshake()
        assert tls.selected_alpn_protocol() == "trpc/1"
        assert (await tls.receive_some(4)) == b"TRPC"
        await tls.aclose()


# --------------------------------------------------------------------- a raw h2 client
class RawH2:
    """An h2 client over a TCP stream, for requests grpcio would not send."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))

    @classmethod
    async def open(cls, address) -> "RawH2":
        self = cls(await trio.open_tcp_stream(*address))
        self.conn.initiate_connection()
        await self.flush()
        return self

    async def flush(self) -> None:
        await self.stream.send_all(self.conn.data_to_send())

    async def request(self, headers, body: bytes | None = None):
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=True)
        await self.flush()
        return stream_id

    async def response(self, stream_id) -> dict:
        headers: dict = {}
        with trio.fail_after(T):
            while True:
                data = await self.stream.receive_some(65536)
                assert data, "the server closed the connection"
                for event in self.conn.receive_data(data):
                    if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)) and \
                            event.stream_id == stream_id:
                        headers.update(dict(event.headers))
                    if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)) and event.stream_id == stream_id:
                        return headers
                await self.flush()


def grpc_request(path: str, **changes) -> list:
    headers = {":method": "POST", ":scheme": "http", ":authority": "localhost", ":path": path,
               "content-type": "application/grpc+cbor", "te": "trailers", **changes}
    return [(k, v) for k, v in headers.items() if v is not None]


def framed(value) -> bytes:
    payload = cbor2.dumps(value)
    return b"\0" + len(payload).to_bytes(4, "big") + payload


@pytest.mark.parametrize("changes, http_status, grpc_status", [
    ({":method": "GET"}, "405", Status.INTERNAL),
    ({"content-type": "text/plain"}, "415", Status.INTERNAL),
    ({"te": None}, "400", Status.INTERNAL),
    ({"content-type": "application/grpc+json"}, "200", Status.UNIMPLEMENTED),
    ({"grpc-encoding": "snappy"}, "200", Status.UNIMPLEMENTED),
    ({"grpc-timeout": "soon"}, "200", Status.INTERNAL),
])
async def test_malformed_requests_get_an_http_answer_and_the_connection_keeps_serving(
    served, changes, http_status, grpc_status
):
    client = await RawH2.open(served.address)
    bad = await client.request(grpc_request(f"/{SVC}/greet", **changes), framed([["x"]]))
    answer = await client.response(bad)
    assert answer[":status"] == http_status and answer["grpc-status"] == str(int(grpc_status))
    good = await client.request(grpc_request(f"/{SVC}/greet"), framed([["Ada"]]))
    assert (await client.response(good))["grpc-status"] == "0"
    await client.stream.aclose()


async def test_a_raw_client_reads_a_trailers_only_answer_and_a_plain_one(served):
    client = await RawH2.open(served.address)
    unknown = await client.request(grpc_request(f"/{SVC}/nope"), framed([[]]))
    answer = await client.response(unknown)
    assert answer[":status"] == "200" and answer["grpc-status"] == "12"  # one HEADERS: Trailers-Only
    await client.stream.aclose()


async def test_garbage_after_the_preface_ends_that_connection_only(served):
    with trio.fail_after(T):
        stream = await trio.open_tcp_stream(*served.address)
        await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64)
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
    assert b"\x07" in received  # a GOAWAY frame among what came back before the close
    assert await in_thread(sync_calls, served.address) == EXPECTED


async def test_a_client_that_never_reads_cannot_make_the_server_buffer(served, wire):
    client = await RawH2.open(served.address)
    await client.request(grpc_request("/t.Wire/flood"), framed([[]]))
    with trio.fail_after(T):
        while wire.produced < 1000:
            await trio.sleep(0.01)
    await trio.sleep(0.5)
    produced = wire.produced
    await trio.sleep(0.5)
    # Held by the client's stream window (65,535 bytes, 6 per message) and the batch size.
    assert wire.produced == produced < 65535 // 6 + 1024
    await client.stream.aclose()


def test_cbor_details_are_base64_of_the_cbor_value():
    from trpc.grpc._connection import decode_metadata, encode_metadata, parse_timeout, percent_encode

    assert encode_metadata({"d": b"\x00"}) == [(b"d-bin", base64.b64encode(b"\x00").rstrip(b"="))]
    assert decode_metadata([(b"d-bin", b"AA"), (b"grpc-x", b"y"), (b":path", b"/")]) == {"d-bin": b"\x00"}
    assert parse_timeout(b"1500m") == 1.5 and parse_timeout(b"2H") == 7200
    assert percent_encode("a%b ü") == b"a%25b %C3%BC"


async def test_shutdown_lets_a_running_grpc_call_finish_and_refuses_new_ones(wire, nursery):
    server = trpc.Server(Svc(), wire)
    address = await nursery.start(server.serve_tcp, 0)
    channel = cbor_channel(target(address))
    try:
        sleeper = channel.unary_unary(f"/{SVC}/sleep_then", request_serializer=cbor2.dumps,
                                      response_deserializer=cbor2.loads)
        future = await in_thread(partial(sleeper.future, [[1.0, "done"]], timeout=T))
        await trio.sleep(0.3)  # the call is running
        async with trio.open_nursery() as inner:
            inner.start_soon(server.shutdown, 10)
            assert await in_thread(future.result) == "done"
        with pytest.raises(grpc.RpcError) as info:
            await in_thread(stubs(channel)["greet"], [["late"]], T)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()


async def test_a_client_pinging_too_often_gets_goaway_enhance_your_calm(wire, nursery):
    server = trpc.Server(Svc(), keepalive_min_ping_interval=10, keepalive_max_ping_strikes=2)
    address = await nursery.start(server.serve_tcp, 0)
    client = await RawH2.open(address)
    for i in range(5):
        client.conn.ping(b"%08d" % i)
    await client.flush()
    ended = None
    with trio.fail_after(T):
        while ended is None:
            data = await client.stream.receive_some(65536)
            assert data
            for event in client.conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    ended = event
    assert ended.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert ended.additional_data == b"too_many_pings"
    await client.stream.aclose()


async def test_the_server_pings_a_quiet_grpc_client_and_max_connection_age_sends_goaway(nursery):
    server = trpc.Server(Svc(), keepalive_time=0.2, max_connection_age=0.5, max_connection_age_grace=1)
    address = await nursery.start(server.serve_tcp, 0)
    client = await RawH2.open(address)
    # Read frames with hyperframe: h2's client refuses the PING that follows a GOAWAY, which
    # is how the graceful GOAWAY's first phase goes.
    received = b""
    frames: list = []
    with trio.fail_after(T):
        while not any(isinstance(f, GoAwayFrame) for f in frames):
            data = await client.stream.receive_some(65536)
            assert data
            received += data
            while len(received) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(received[:9]))
                if len(received) < 9 + length:
                    break
                frame.parse_body(memoryview(received[9:9 + length]))
                received = received[9 + length:]
                frames.append(frame)
    assert any(isinstance(f, PingFrame) and "ACK" not in f.flags for f in frames)
    goaway = next(f for f in frames if isinstance(f, GoAwayFrame))
    assert goaway.error_code == 0 and goaway.last_stream_id == (1 << 31) - 1  # the first phase
    await client.stream.aclose()
