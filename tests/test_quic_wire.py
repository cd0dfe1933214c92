"""trpc.quic's sans-IO wire: a client and a server QuicWire wired back to back in memory, no
sockets, no Trio (h11's helpers-style pair)."""

from __future__ import annotations

import math
import os
import random
import ssl
import zlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("qh3")

from qh3.quic.events import StreamDataReceived  # noqa: E402

from trpc import Status  # noqa: E402
from trpc._codec import decode, decode_arguments, encode, encode_arguments  # noqa: E402
from trpc._errors import RemoteProtocolError  # noqa: E402
from trpc._events import (  # noqa: E402
    CallCancelled, CallEnded, CallOpened, Event, InfoReceived, MessagesReceived, PingAcknowledged, PrefaceReceived,
    SendCreditAvailable, StreamEnded,
)
from trpc._service import Cardinality  # noqa: E402
from trpc.quic import QuicWire, client_configuration, server_configuration  # noqa: E402
from trpc.quic._transport import _DATAGRAM, _SOCKET_BUFFER  # noqa: E402
from trpc.quic._wire import INITIAL_WINDOW, SEND_LOW_WATER, quic_id  # noqa: E402
from trpc.wire._compression import AVAILABLE, Coding, Compressed, DecompressionError  # noqa: E402
from trpc.wire._control import RequestHeadersEncoder, encode_info, parse_info  # noqa: E402
from trpc.wire._frames import FrameType  # noqa: E402
from trpc.wire._frames import pack_header  # noqa: E402
from qh3.quic.connection import QuicConnection  # noqa: E402

_CLIENT = ("127.0.0.1", 40000)
_SERVER = ("127.0.0.1", 50000)


class Pair:
    """A client and a server wire; ``exchange`` moves datagrams until both are quiet and
    returns the events each side reported."""

    def __init__(self, tmp_path: Path, **server_options: Any) -> None:
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost")
        leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
        leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
        context = ssl.create_default_context()
        ca.configure_trust(context)
        self.now = 1.0
        quic = QuicConnection(configuration=client_configuration(context, "localhost"))
        quic.connect(_SERVER, now=self.now)
        self.client = QuicWire("client", quic)
        first = quic.datagrams_to_send(now=self.now)
        server_quic = QuicConnection(
            configuration=server_configuration(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")),
            original_destination_connection_id=quic.original_destination_connection_id)
        self.server = QuicWire("server", server_quic, idempotent_methods=frozenset({"greet"}),
                               methods={"Svc/greet": Cardinality.UNARY}, **server_options)
        for data, _ in first:
            server_quic.receive_datagram(data, _CLIENT, self.now)

    def exchange(self) -> tuple[list[Event], list[Event]]:
        client_events: list[Event] = []
        server_events: list[Event] = self.server.events()
        for _ in range(100):
            self.now += 0.001
            moved = False
            for data, _ in self.client.datagrams_to_send(self.now):
                server_events += self.server.receive_datagram(data, _CLIENT, self.now)
                moved = True
            for data, _ in self.server.datagrams_to_send(self.now):
                client_events += self.client.receive_datagram(data, _SERVER, self.now)
                moved = True
            if not moved:
                break
        return client_events, server_events


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path)


def _kinds(events: list[Event]) -> list[str]:
    return [type(event).__name__ for event in events]


def test_the_handshake_is_the_preface_and_info_follows_on_the_control_stream(pair: Pair) -> None:
    client, server = pair.exchange()
    assert any(isinstance(e, PrefaceReceived) for e in client)
    assert any(isinstance(e, PrefaceReceived) for e in server)
    info = [e for e in client if isinstance(e, InfoReceived)]
    assert info and info[0].idempotent == frozenset({"greet"}) and info[0].methods == {"Svc/greet": Cardinality.UNARY}


def test_a_unary_call_is_one_stream_with_headers_data_fin_then_trailers(pair: Pair) -> None:
    pair.exchange()
    stream_id, sent = pair.client.open_unary_call("Svc/greet", b"\x61Ada", metadata={"k": "v"}, timeout=2.0)
    assert sent
    _, server = pair.exchange()
    assert _kinds(server) == ["CallOpened", "MessagesReceived", "StreamEnded"]
    opened = server[0]
    assert isinstance(opened, CallOpened) and opened.method == "Svc/greet" and opened.metadata == {"k": "v"}
    assert opened.timeout == pytest.approx(2.0)
    message = server[1]
    assert isinstance(message, MessagesReceived) and message.payloads == [b"\x61Ada"]
    assert isinstance(server[2], StreamEnded)
    pair.server.send_message(opened.stream_id, b"\x62hi")
    pair.server.send_trailers(opened.stream_id, Status.OK)
    client, _ = pair.exchange()
    assert _kinds(client) == ["HeadersReceived", "MessagesReceived", "CallEnded"]
    ended = client[2]
    assert isinstance(ended, CallEnded) and ended.status is Status.OK and ended.stream_id == stream_id
    assert pair.client.open_streams == 0 and pair.server.open_streams == 0


def test_a_cancel_is_a_reset_whose_code_is_the_reason(pair: Pair) -> None:
    pair.exchange()
    stream_id = pair.client.open_call("Svc/greet")
    pair.exchange()
    pair.client.cancel(stream_id, Status.DEADLINE_EXCEEDED)
    _, server = pair.exchange()
    cancelled = [e for e in server if isinstance(e, CallCancelled)]
    assert cancelled and cancelled[0].reason is Status.DEADLINE_EXCEEDED


def test_calls_after_goaway_are_refused_unprocessed(pair: Pair) -> None:
    pair.exchange()
    pair.server.goaway(Status.OK, "bye")
    stream_id, _ = pair.client.open_unary_call("Svc/greet", b"\x61x")
    client, server = pair.exchange()
    assert not any(isinstance(e, CallOpened) for e in server)
    ended = [e for e in client if isinstance(e, CallEnded)]
    assert ended and ended[0].stream_id == stream_id and ended[0].processed is False
    assert ended[0].status is Status.UNAVAILABLE
    assert not pair.client.accepting_calls


def test_data_with_flags_is_a_protocol_error(pair: Pair) -> None:
    pair.exchange()
    stream_id = pair.client.open_call("Svc/greet")
    pair.client.quic.send_stream_data(quic_id(stream_id), pack_header(1, 0, 0x2, 0) + b"\x00")
    with pytest.raises(RemoteProtocolError):
        pair.exchange()


def test_a_message_over_the_limit_ends_the_call_with_resource_exhausted(tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    pair.server.max_message_size = 10
    pair.exchange()
    pair.client.open_unary_call("Svc/greet", b"\x40" + bytes(20))
    client, server = pair.exchange()
    assert any(isinstance(e, CallCancelled) and e.reason is Status.RESOURCE_EXHAUSTED for e in server)
    ended: Any = [e for e in client if isinstance(e, CallEnded)]
    assert ended and ended[0].status is Status.RESOURCE_EXHAUSTED


def test_a_call_whose_first_packet_comes_after_a_later_calls_is_still_served(pair: Pair) -> None:
    pair.exchange()
    first, _ = pair.client.open_unary_call("Svc/greet", b"\x61a")
    held = pair.client.datagrams_to_send(pair.now)  # the first call's packet, held back
    second, _ = pair.client.open_unary_call("Svc/greet", b"\x61b")
    _, server = pair.exchange()
    for data, _ in held:
        server += pair.server.receive_datagram(data, _CLIENT, pair.now)
    opened = sorted(e.stream_id for e in server if isinstance(e, CallOpened))
    assert opened == [first, second]


def test_a_ping_is_a_quic_ping_acknowledged_with_its_payload(pair: Pair) -> None:
    pair.exchange()
    pair.client.ping(b"trpcping")
    client, _ = pair.exchange()
    assert [e.payload for e in client if isinstance(e, PingAcknowledged)] == [b"trpcping"]


def test_a_call_over_the_servers_limit_is_refused_unprocessed(pair: Pair) -> None:
    pair.server.max_concurrent_streams = 1
    pair.exchange()
    pair.client.open_call("Svc/greet")
    second, _ = pair.client.open_unary_call("Svc/greet", b"\x61x")
    client, server = pair.exchange()
    assert len([e for e in server if isinstance(e, CallOpened)]) == 1
    ended = [e for e in client if isinstance(e, CallEnded)]
    assert [(e.stream_id, e.processed) for e in ended] == [(second, False)]


def _messages(events: list[Event]) -> int:
    return sum(len(event.payloads) for event in events if isinstance(event, MessagesReceived))


def test_a_server_that_does_not_consume_a_calls_messages_holds_at_most_its_window(tmp_path: Path) -> None:
    window = 256 << 10
    pair = Pair(tmp_path, stream_window=window)
    pair.exchange()
    call = pair.client.open_call("Svc/total")
    message = b"x" * (16 << 10)
    sent = 0
    for _ in range(200):  # the producer is told to wait once SEND_LOW_WATER bytes are queued
        sent += 1
        if not pair.client.send_message(call, message):
            break
    assert sent * len(message) >= SEND_LOW_WATER  # told to wait, not before
    received = 0
    for _ in range(3):  # however long the server does not read, the client sends no more
        _, events = pair.exchange()
        received += _messages(events)
        assert pair.server.receive_buffered(call) <= window + len(message)
    assert window // len(message) - 1 <= received < sent
    assert pair.client.send_queued(call) >= (sent - received - 1) * len(message)


def test_credit_comes_back_as_the_server_consumes_and_the_blocked_sender_resumes(tmp_path: Path) -> None:
    window = 256 << 10
    pair = Pair(tmp_path, stream_window=window)
    pair.exchange()
    call = pair.client.open_call("Svc/total")
    message = b"y" * (16 << 10)
    sent = 0
    for _ in range(200):
        sent += 1
        if not pair.client.send_message(call, message):
            break
    pair.client.end_stream(call)
    received, resumed = 0, False
    for _ in range(100):  # each round the server reads everything it holds
        client_events, server_events = pair.exchange()
        resumed = resumed or any(isinstance(event, SendCreditAvailable) for event in client_events)
        arrived = _messages(server_events)
        received += arrived
        assert pair.server.receive_buffered(call) <= window + len(message)
        if received == sent:
            break
        pair.server.consumed(call, arrived * len(message))
    assert received == sent
    assert resumed


def test_a_window_below_the_initial_one_is_raised_to_it(tmp_path: Path) -> None:
    pair = Pair(tmp_path, stream_window=1024)
    assert pair.server.stream_window == INITIAL_WINDOW
    with pytest.raises(ValueError):
        Pair(tmp_path, stream_window=0)


def test_a_window_update_without_its_increment_is_a_protocol_error(pair: Pair) -> None:
    pair.exchange()
    control = pair.client.quic.get_next_available_stream_id(is_unidirectional=True) - 4
    pair.client.quic.send_stream_data(control, pack_header(2, 0x4, 0, 1) + b"\0\1")
    with pytest.raises(RemoteProtocolError):
        pair.exchange()


_REPETITIVE = cbor2.dumps("Ada" * 1000)  # 3,003 bytes that zlib makes tiny


def test_each_side_learns_the_codings_the_other_accepts_from_its_info(pair: Pair) -> None:
    assert pair.client.peer_codings == 0 and pair.server.peer_codings == 0
    pair.exchange()
    assert pair.client.peer_codings == AVAILABLE == pair.server.peer_codings


def test_a_request_and_its_response_travel_compressed_and_arrive_as_they_travelled(pair: Pair) -> None:
    pair.exchange()
    stream_id, _ = pair.client.open_unary_call("Svc/greet", _REPETITIVE, compression=Coding.ZLIB,
                                               response_compression=Coding.ZLIB)
    _, server = pair.exchange()
    opened, message = server[0], server[1]
    assert isinstance(opened, CallOpened) and opened.compression == Coding.ZLIB
    assert isinstance(message, MessagesReceived)
    (request,) = message.payloads
    assert isinstance(request, Compressed) and request.coding == Coding.ZLIB
    assert len(request) < 100 and request.inflate() == _REPETITIVE
    pair.server.send_compressed(opened.stream_id, _REPETITIVE, Coding.ZLIB)
    pair.server.send_trailers(opened.stream_id, Status.OK)
    client, _ = pair.exchange()
    replies = [e for e in client if isinstance(e, MessagesReceived)]
    (reply,) = replies[0].payloads
    assert isinstance(reply, Compressed) and reply.inflate() == _REPETITIVE
    assert isinstance(client[-1], CallEnded) and client[-1].status is Status.OK and client[-1].stream_id == stream_id


def test_nothing_is_compressed_towards_a_peer_that_accepts_no_coding(tmp_path: Path) -> None:
    pair = Pair(tmp_path, accept_compression=[])
    pair.exchange()
    assert pair.client.peer_codings == 0
    pair.client.open_unary_call("Svc/greet", _REPETITIVE, compression=Coding.ZLIB)
    _, server = pair.exchange()
    message = [e for e in server if isinstance(e, MessagesReceived)][0]
    assert message.payloads == [_REPETITIVE]


def test_a_small_message_or_one_that_does_not_shrink_goes_as_it_is(pair: Pair) -> None:
    pair.exchange()
    stream_id = pair.client.open_call("Svc/greet")
    incompressible = cbor2.dumps(random.Random(7).randbytes(2048))
    pair.client.send_compressed(stream_id, b"\x63Ada", Coding.ZLIB)
    pair.client.send_compressed(stream_id, incompressible, Coding.ZLIB)
    _, server = pair.exchange()
    message = [e for e in server if isinstance(e, MessagesReceived)]
    assert [p for e in message for p in e.payloads] == [b"\x63Ada", incompressible]


def test_data_compressed_with_a_coding_the_receiver_does_not_accept_is_a_protocol_error(tmp_path: Path) -> None:
    pair = Pair(tmp_path, accept_compression=[])
    pair.exchange()
    stream_id = pair.client.open_call("Svc/greet")
    packed = zlib.compress(_REPETITIVE)
    pair.client.quic.send_stream_data(quic_id(stream_id), pack_header(len(packed), 0, 0x4, 0) + packed)
    with pytest.raises(RemoteProtocolError, match="does not accept"):
        pair.exchange()


def test_a_compressed_message_over_the_limit_once_inflated_is_refused_when_read(tmp_path: Path) -> None:
    pair = Pair(tmp_path, max_message_size=10_000)
    pair.exchange()
    pair.client.max_message_size = 1 << 20  # this client does not know the server's limit
    pair.client.open_unary_call("Svc/greet", cbor2.dumps(b"\0" * 50_000), compression=Coding.ZLIB)
    _, server = pair.exchange()
    (request,) = [e for e in server if isinstance(e, MessagesReceived)][0].payloads
    assert isinstance(request, Compressed) and len(request) < 10_000
    with pytest.raises(DecompressionError, match="10000"):
        request.inflate()


def test_info_key_3_is_an_unsigned_bit_set_whose_unknown_bits_are_dropped() -> None:
    assert parse_info(cbor2.dumps({3: 0xFF}))[2] == 0x3
    assert parse_info(cbor2.dumps({1: ["greet"]}))[2] == 0
    for bad in ("zlib", -1, True, 1.0):
        with pytest.raises(RemoteProtocolError, match="key 3"):
            parse_info(cbor2.dumps({3: bad}))
    assert encode_info(frozenset(), frozenset(), 100, 0) is None
    assert cbor2.loads(encode_info(frozenset({"a"}), frozenset(), 100, 3) or b"") == {3: 3, 1: ["a"]}


def test_a_second_unidirectional_stream_from_the_peer_is_a_protocol_error(pair: Pair) -> None:
    pair.exchange()
    quic = pair.client.quic
    quic.get_next_available_stream_id(is_unidirectional=True)
    second = quic.get_next_available_stream_id(is_unidirectional=True)
    assert second > 3
    quic.send_stream_data(second, pack_header(4, 0x8, 0, 1) + b"\x00\x00\x01\x00")
    with pytest.raises(RemoteProtocolError, match="second unidirectional"):
        pair.exchange()


def test_info_after_another_frame_on_a_control_stream_is_a_protocol_error(tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    pair.client.accepted_codings = 0  # so the client's control stream starts with nothing
    pair.exchange()
    stream_id = pair.client.open_call("Svc/greet")
    control = pair.client._control
    assert control is not None
    pair.client.quic.send_stream_data(control, pack_header(4, 0x4, 0, stream_id) + b"\x00\x00\x01\x00")
    pair.client.quic.send_stream_data(control, pack_header(1, 0x7, 0, 0) + b"\xa0")
    with pytest.raises(RemoteProtocolError, match="INFO only as its first frame"):
        pair.exchange()


def test_a_sender_puts_the_initial_window_on_a_call_before_any_grant_and_no_more(tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    pair.exchange()
    pair.server._grant = lambda call: None  # type: ignore[method-assign]  # a receiver that never grants
    call = pair.client.open_call("Svc/total")
    pair.client.send_message(call, bytes(INITIAL_WINDOW * 2))
    for _ in range(3):
        pair.exchange()
    assert pair.server._calls[quic_id(call)].received == INITIAL_WINDOW
    assert pair.client.send_queued(call) == INITIAL_WINDOW * 2 + 10 + 10 + len(
        RequestHeadersEncoder().encode("Svc/total", None, None, 1 << 16)) - INITIAL_WINDOW


def test_the_initial_windows_burst_fits_the_socket_buffer_that_receives_it() -> None:
    # The kernel doubles the size asked for and charges each datagram about twice its
    # payload, so a buffer holds about _SOCKET_BUFFER bytes of datagrams: half of that for
    # one call's first burst leaves room for the acknowledgements and other calls beside it.
    assert INITIAL_WINDOW <= _SOCKET_BUFFER // 2
    assert _DATAGRAM <= INITIAL_WINDOW


def _request_stream(messages: list[bytes]) -> bytes:
    headers = RequestHeadersEncoder().encode("Svc/total", None, None, 1 << 16)
    frames = [pack_header(len(headers), FrameType.HEADERS, 0, 0), headers]
    for message in messages:
        frames += [pack_header(len(message), FrameType.DATA, 0, 0), message]
    return b"".join(frames)


@pytest.fixture(scope="module")
def server_pems(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("quic-wire-pems")
    leaf = trustme.CA().issue_cert("localhost")
    leaf.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "key.pem"))
    return str(folder / "cert.pem"), str(folder / "key.pem")


def _server_wire(pems: tuple[str, str]) -> QuicWire:
    quic = QuicConnection(configuration=server_configuration(*pems), original_destination_connection_id=b"12345678")
    return QuicWire("server", quic)


def _feed(wire: QuicWire, stream: bytes, cuts: list[int]) -> list[bytes]:
    """The stream handed to the wire in pieces ending at ``cuts``, FIN with the last; the
    messages it delivered, checking after each piece that the wire holds the messages it
    delivered and the frame still arriving (a DATA frame's body without its header)."""
    delivered: list[bytes] = []
    start = 0
    for end in [*sorted(set(cuts)), len(stream)]:
        if end <= start:
            continue
        out: list[Event] = []
        wire._on_data(StreamDataReceived(stream[start:end], end == len(stream), 0), out)
        for event in out:
            if isinstance(event, MessagesReceived):
                delivered += [payload for payload in event.payloads if isinstance(payload, bytes)]
        start = end
        if end < len(stream):
            kind, arrived = _frame_arriving(stream, end)
            header = 10 if kind == FrameType.DATA and arrived >= 10 else 0
            assert wire.receive_buffered(1) == sum(map(len, delivered)) + arrived - header
    return delivered


def _frame_arriving(stream: bytes, end: int) -> tuple[int, int]:
    """The type of the frame under way after the first ``end`` bytes of ``stream`` (-1 if
    its header is incomplete) and how many of its bytes those include."""
    offset = 0
    while end - offset >= 10:
        size = 10 + int.from_bytes(stream[offset:offset + 4], "big")
        if end - offset < size:
            return stream[offset + 4], end - offset
        offset += size
    return -1, end - offset


_MESSAGES = [random.Random(seed).randbytes(size) for seed, size in enumerate([300_000, 5, 70_000, 4096, 1])]
_STREAM = _request_stream(_MESSAGES)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(1, len(_STREAM) - 1), max_size=60))
def test_messages_arriving_in_pieces_of_any_size_are_delivered_whole_and_in_order(
        server_pems: tuple[str, str], cuts: list[int]) -> None:
    assert _feed(_server_wire(server_pems), _STREAM, cuts) == _MESSAGES


def test_a_message_arriving_a_byte_at_a_time_is_gathered_not_kept_as_a_list_of_bytes(
        server_pems: tuple[str, str]) -> None:
    message = random.Random(7).randbytes(20_000)
    stream = _request_stream([message])
    wire = _server_wire(server_pems)
    body = len(stream) - len(message) + 100  # the header, then 100 bytes of the body at once
    out: list[Event] = []
    wire._on_data(StreamDataReceived(stream[:body], False, 0), out)
    for offset in range(body, len(stream) - 1):
        wire._on_data(StreamDataReceived(stream[offset:offset + 1], False, 0), out)
        pieces = wire._calls[0].pieces
        assert pieces is not None and len(pieces) <= 2
    wire._on_data(StreamDataReceived(stream[-1:], True, 0), out)
    assert [payload for event in out if isinstance(event, MessagesReceived) for payload in event.payloads] == [message]


def test_a_compressed_message_that_arrives_in_many_pieces_is_handed_on_compressed(pair: Pair) -> None:
    pair.exchange()
    rng = random.Random(3)
    text = cbor2.dumps("".join(rng.choice("abcdefgh") for _ in range(300_000)))  # compresses to ~40%
    pair.client.open_unary_call("Svc/greet", text, compression=Coding.ZLIB)
    _, server = pair.exchange()
    (request,) = [p for e in server if isinstance(e, MessagesReceived) for p in e.payloads]
    assert isinstance(request, Compressed) and 50_000 < len(request) < len(text)
    assert request.inflate() == text


def test_a_call_stream_that_ends_in_the_middle_of_a_frame_is_a_protocol_error(pair: Pair) -> None:
    pair.exchange()
    stream_id = pair.client.open_call("Svc/greet")
    pair.exchange()
    pair.client.quic.send_stream_data(quic_id(stream_id), pack_header(100, 0, 0, 0) + b"\x00" * 10, True)
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        pair.exchange()


def _payloads(events: list[Event]) -> list[Any]:
    return [payload for event in events if isinstance(event, MessagesReceived) for payload in event.payloads]


def _exchange_until(pair: Pair, count: int) -> list[Any]:
    """Exchange until the server has received ``count`` messages; their payloads, in order."""
    payloads: list[Any] = []
    for _ in range(20):
        _, server = pair.exchange()
        payloads += _payloads(server)
        if len(payloads) >= count:
            break
    return payloads


def test_a_large_byte_string_arrives_as_its_head_and_its_body_which_the_decoder_does_not_copy(pair: Pair) -> None:
    pair.exchange()
    blob = os.urandom(300 << 10)
    arguments = encode_arguments((blob,), {})
    assert type(arguments) is list
    head = arguments[0]
    call, _ = pair.client.open_unary_call("Svc/greet", arguments)
    [payload] = _exchange_until(pair, 1)
    assert type(payload) is list and payload[0] == head and payload[1] == blob
    assert pair.server.receive_buffered(call) == len(head) + len(blob)  # held until consumed
    args, _ = decode_arguments(payload)
    assert args[0] is payload[1]  # the body itself, not a copy


def test_a_large_message_of_any_other_shape_arrives_whole_and_in_order_with_the_next(pair: Pair) -> None:
    pair.exchange()
    numbers = list(range(40000))  # encodes to far more than a large payload
    big, small = encode(numbers), encode("after")
    assert type(big) is bytes and len(big) > 64 << 10
    call = pair.client.open_call("Svc/total")
    pair.client.send_message(call, big)
    pair.client.send_message(call, small)
    payloads = _exchange_until(pair, 2)
    assert payloads == [big, small]
    assert decode(payloads[0]) == numbers


@pytest.mark.parametrize("seed", range(3))
def test_a_large_message_split_anywhere_is_put_back_together(pair: Pair, seed: int) -> None:
    """QUIC hands a stream over in pieces that may end anywhere: inside the frame header,
    inside the message's head, at its last byte, or with the next message's first bytes."""
    pair.exchange()
    head, body = encode(os.urandom(100 << 10))
    assert type(head) is bytes and type(body) is bytes
    message = head + body
    frames = pack_header(len(message), 0, 0, 0) + message + pack_header(2, 0, 0, 0) + b"\x61z"
    call = pair.client.open_call("Svc/total")
    pair.exchange()
    rng = random.Random(seed)
    last = len(frames) - 12  # the large frame's last byte
    cuts = sorted({1, 5, 10, 12, 14, 21, last - 1, last, last + 1, len(frames),
                   *rng.sample(range(1, len(frames)), 20)})
    payloads: list[Any] = []
    start = 0
    for end in cuts:
        pair.client.quic.send_stream_data(quic_id(call), frames[start:end])
        start = end
        _, server = pair.exchange()
        payloads += _payloads(server)
    assert payloads == [[head, body], b"\x61z"]


def _after_a_loss(pair: Pair) -> None:
    """A call whose first flight is lost, found by QUIC's loss-detection timer: from then on
    the client marks its flights (markers are for paths that lose packets)."""
    assert pair.client.datagrams_to_send(pair.now) == []
    call, _ = pair.client.open_unary_call("Svc/greet", b"\x61l")
    assert pair.client.datagrams_to_send(pair.now)  # lost
    timer = pair.client.quic.get_timer()
    assert timer is not None
    pair.now = timer
    pair.client.handle_timer(pair.now)
    pair.exchange()
    pair.server.send_message(call, b"\x61b")
    pair.server.send_trailers(call, Status.OK)
    pair.exchange()


def _round_trips(pair: Pair, count: int) -> None:
    """Calls answered at once, so each side has measured its markers' round trip."""
    for _ in range(count):
        call, _ = pair.client.open_unary_call("Svc/greet", b"\x61a")
        pair.exchange()
        pair.server.send_message(call, b"\x61b")
        pair.server.send_trailers(call, Status.OK)
        pair.exchange()


def test_a_connection_that_loses_nothing_sends_no_markers_and_one_that_does_starts(pair: Pair) -> None:
    pair.exchange()
    _round_trips(pair, 3)
    pair.client.open_unary_call("Svc/greet", b"\x61c")
    pair.client.datagrams_to_send(pair.now)
    assert pair.client.probe_at == math.inf  # no marker awaited
    pair.exchange()
    _after_a_loss(pair)
    pair.client.open_unary_call("Svc/greet", b"\x61d")
    pair.client.datagrams_to_send(pair.now)
    assert pair.client.probe_at < math.inf  # this flight's marker is awaited


def test_a_lost_small_flight_is_probed_for_and_resent_long_before_quics_own_probe_timeout(pair: Pair) -> None:
    pair.exchange()
    _after_a_loss(pair)
    _round_trips(pair, 5)
    call, _ = pair.client.open_unary_call("Svc/greet", b"\x61c")
    sent_at = pair.now
    assert pair.client.datagrams_to_send(pair.now)  # the flight, and its marker: lost
    quic_probe = pair.client.quic.get_timer()
    assert quic_probe is not None and pair.client.probe_at < quic_probe
    pair.now = pair.client.probe_at
    pair.client.probe(pair.now)
    client, server = pair.exchange()
    assert [e.stream_id for e in server if isinstance(e, CallOpened)] == [call]
    assert pair.now - sent_at < (quic_probe - sent_at) / 2
    assert not [e for e in client if isinstance(e, PingAcknowledged)]  # markers stay in the wire
    assert pair.client.probe_at == math.inf  # the probe's ACK came back


def test_an_unanswered_marker_is_probed_for_a_few_times_then_left_to_quic(pair: Pair) -> None:
    pair.exchange()
    _after_a_loss(pair)
    _round_trips(pair, 2)
    pair.client.open_unary_call("Svc/greet", b"\x61c")
    pair.client.datagrams_to_send(pair.now)  # lost, like everything after it
    probes = [pair.now]
    for _ in range(20):  # as the timer task does: whichever of the two timers comes first
        quic_timer = pair.client.quic.get_timer()
        assert quic_timer is not None
        if pair.client.probe_at <= quic_timer:
            pair.now = pair.client.probe_at
            probes.append(pair.now)
            pair.client.probe(pair.now)
        elif pair.client.probe_at == math.inf:
            break
        else:
            pair.now = quic_timer
            pair.client.handle_timer(pair.now)
        pair.client.datagrams_to_send(pair.now)  # lost
    waits = [later - earlier for earlier, later in zip(probes, probes[1:])]
    assert len(waits) == 3  # three probes, then QUIC's probe timeout alone
    assert waits[1] == pytest.approx(2 * waits[0]) and waits[2] == pytest.approx(4 * waits[0])
