"""The gRPC wire's own path for a call's frames (trpc.grpc._hpack, and the HEADERS, DATA and
trailers that trpc.grpc._connection builds without h2's send_*), checked against h2 and hpack:
an h2 client connection, wired back to back with the server's sans-IO connection, must read
every block and frame as h2 itself would have sent it, and h2's own records on the server
(stream states, windows) must agree with what went out."""

from __future__ import annotations

import random

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import DataFrame

from trpc import Status
from trpc._errors import RemoteProtocolError
from trpc._events import CallCancelled, CallOpened, MessagesReceived, SendCreditAvailable, StreamEnded
from trpc.grpc._connection import GrpcConnection, check_request
from trpc.grpc._hpack import RequestDecoder, encode_block, pending_size_updates

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/s.S/m"), (b":authority", b"localhost"),
           (b"content-type", b"application/grpc+cbor"), (b"te", b"trailers")]


def message(payload: bytes) -> bytes:
    return b"\0" + len(payload).to_bytes(4, "big") + payload


class Pair:
    """A GrpcConnection (server) and an h2 client connection, bytes moved by hand."""

    def __init__(self, client_settings: dict | None = None, **options) -> None:
        self.server = GrpcConnection(max_message_size=1 << 20, **options)
        self.server.initiate()
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        if client_settings:
            self.client.update_settings(client_settings)
        self.server_events: list = []
        self.client_events: list = []
        self.exchange()

    def exchange(self) -> None:
        """Move bytes both ways until neither side has any to send (bounded)."""
        for _ in range(50):
            to_server = self.client.data_to_send()
            if to_server:
                self.server_events += self.server.receive_data(to_server)
            to_client = self.server.data_to_send()
            if to_client:
                self.client_events += self.client.receive_data(to_client)
            if not to_server and not to_client:
                return
        raise AssertionError("the two sides never went quiet")

    def request(self, headers=REQUEST, body: bytes | None = message(b"hi"), end: bool = True) -> int:
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_headers(stream_id, headers, end_stream=body is None and end)
        if body is not None:
            self.client.send_data(stream_id, body, end_stream=end)
        self.exchange()
        return stream_id

    def client_saw(self, kind, stream_id: int) -> list:
        return [e for e in self.client_events if isinstance(e, kind) and e.stream_id == stream_id]


# --------------------------------------------------------------------- HPACK, out
def test_a_block_encoded_here_decodes_to_its_fields_and_leaves_the_table_empty():
    fields = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"13"),
              (b"grpc-message", b"x" * 300), (b"k" * 130, b"")]
    decoder = hpack.Decoder()
    assert decoder.decode(encode_block(fields), raw=True) == fields
    assert len(decoder.header_table.dynamic_entries) == 0


def test_blocks_from_here_and_from_an_indexing_encoder_interleave_on_one_decoder():
    rng = random.Random(7)
    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    pool = [(b"x-a", b"1"), (b"x-b", b"2" * 40), (b"grpc-status", b"0"), (b"content-type", b"application/grpc"),
            (b"x-c", b"three")]
    for _ in range(300):
        fields = rng.sample(pool, rng.randint(1, len(pool)))
        if rng.random() < 0.5:
            block = encode_block(fields)
        else:
            block = encoder.encode(fields, huffman=rng.random() < 0.5)
        assert decoder.decode(block, raw=True) == fields
        if rng.random() < 0.05:  # the peer shrinks or grows the table: the update opens the next block
            size = rng.choice([0, 64, 4096])
            changed = size != encoder.header_table_size
            encoder.header_table_size = size
            if rng.random() < 0.5:
                size_update = pending_size_updates(encoder)
                assert bool(size_update) == changed and not encoder.header_table.resized
                assert decoder.decode(size_update + encode_block(fields), raw=True) == fields


# --------------------------------------------------------------------- HPACK, in
def test_the_request_decoder_reads_every_block_as_hpack_does_through_evictions_and_size_updates():
    rng = random.Random(11)
    encoder = hpack.Encoder()
    plain, remembering = hpack.Decoder(), RequestDecoder(65536)
    pool = [[(b":path", b"/s.S/a"), (b"user-agent", b"grpc-python")],
            [(b":path", b"/s.S/b"), (b"user-agent", b"grpc-python")],
            [(b":path", b"/s.S/b"), (b"x-long", b"v" * 900)],
            [(b":path", b"/s.S/c"), (b"grpc-timeout", b"5S")]]
    hits = 0
    for _ in range(500):
        if rng.random() < 0.03:
            encoder.header_table_size = rng.choice([256, 1024, 4096])
        block = encoder.encode(rng.choice(pool), huffman=rng.random() < 0.5)
        hits += block in remembering._remembered
        assert remembering.decode(block, raw=True) == plain.decode(block, raw=True)
    assert hits > 100  # the memory was used, and was right each time


def test_the_same_indexed_bytes_decode_to_the_new_entry_once_the_table_has_moved():
    encoder, decoder = hpack.Encoder(), RequestDecoder(65536)
    first = encoder.encode([(b"x-k", b"old")])
    assert decoder.decode(first, raw=True) == [(b"x-k", b"old")]
    indexed = encoder.encode([(b"x-k", b"old")])  # now one byte: dynamic index 62
    assert indexed == b"\xbe"
    assert decoder.decode(indexed, raw=True) == [(b"x-k", b"old")]
    assert decoder.decode(encoder.encode([(b"x-k", b"new")]), raw=True) == [(b"x-k", b"new")]
    # Index 62 is now the new entry: the remembered answer must not be given.
    assert decoder.decode(indexed, raw=True) == [(b"x-k", b"new")]


# --------------------------------------------------------------------- the connection
def test_a_call_reads_as_h2_would_send_it_and_h2s_records_end_closed():
    pair = Pair()
    stream_id = pair.request()
    assert any(isinstance(e, CallOpened) for e in pair.server_events)
    assert any(isinstance(e, MessagesReceived) and e.payloads == [b"hi"] for e in pair.server_events)
    assert pair.server.send_message(stream_id, b"reply")
    pair.server.send_trailers(stream_id, Status.OK)
    pair.exchange()
    (response,) = pair.client_saw(h2.events.ResponseReceived, stream_id)
    assert response.headers == [(b":status", b"200"), (b"content-type", b"application/grpc+cbor"),
                                (b"grpc-accept-encoding", b"identity,gzip")]
    (data,) = pair.client_saw(h2.events.DataReceived, stream_id)
    assert data.data == message(b"reply")
    (trailers,) = pair.client_saw(h2.events.TrailersReceived, stream_id)
    assert trailers.headers == [(b"grpc-status", b"0")]
    assert pair.client_saw(h2.events.StreamEnded, stream_id)
    assert pair.server._h2.streams[stream_id].closed
    assert pair.server._h2.outbound_flow_control_window == 65535 - len(message(b"reply"))


def test_metadata_errors_and_trailers_only_answers_reach_an_h2_client_with_huffman_coded_requests():
    pair = Pair()
    first = pair.request()
    pair.server.send_headers(first, {"x-text": "é", "x-bin": b"\x00\xff"})
    pair.server.send_message(first, b"m")
    pair.server.send_trailers(first, Status.NOT_FOUND, "gone 100%", metadata={"t": "v"})
    second = pair.request()  # the same request again: its block is now all indexed
    pair.server.send_trailers(second, Status.UNAVAILABLE, "later")
    pair.exchange()
    (response,) = pair.client_saw(h2.events.ResponseReceived, first)
    assert (b"x-text", "é".encode()) in response.headers and (b"x-bin", b"AP8") in response.headers
    (trailers,) = pair.client_saw(h2.events.TrailersReceived, first)
    assert trailers.headers == [(b"grpc-status", b"5"), (b"grpc-message", b"gone 100%25"), (b"t", b"v")]
    (only,) = pair.client_saw(h2.events.ResponseReceived, second)
    assert only.headers[:3] == [(b":status", b"200"), (b"content-type", b"application/grpc+cbor"),
                                (b"grpc-status", b"14")]
    assert pair.client_saw(h2.events.StreamEnded, second)


def test_a_header_block_beyond_the_peers_frame_size_goes_on_in_continuation_frames():
    pair = Pair()
    stream_id = pair.request()
    big = "v" * 40000  # more than two 16,384-byte frames
    pair.server.send_headers(stream_id, {"x-big": big})
    pair.server.send_trailers(stream_id, Status.OK, metadata={"x-big2": big})
    raw = pair.server.data_to_send()
    assert raw.count(b"\x09\x00\x00\x00\x00") >= 1 and raw.count(b"\x09\x04\x00\x00\x00") == 2  # CONTINUATION frames
    pair.client_events += pair.client.receive_data(raw)
    (response,) = pair.client_saw(h2.events.ResponseReceived, stream_id)
    assert (b"x-big", big.encode()) in response.headers
    (trailers,) = pair.client_saw(h2.events.TrailersReceived, stream_id)
    assert (b"x-big2", big.encode()) in trailers.headers


def test_a_table_size_change_of_the_peer_opens_the_next_block_sent_here():
    pair = Pair(client_settings={h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    stream_id = pair.request()
    assert pair.server._h2.encoder.header_table.resized
    pair.server.send_message(stream_id, b"x")
    assert not pair.server._h2.encoder.header_table.resized
    # A rejected request's answer is encoded by h2 itself, after the update went out from here.
    rejected = pair.request([*REQUEST[:-1]] + [(b"te", b"trailers"), (b"grpc-encoding", b"snappy")])
    pair.server.send_trailers(stream_id, Status.OK)
    pair.exchange()
    assert pair.client_saw(h2.events.TrailersReceived, stream_id)
    (answer,) = pair.client_saw(h2.events.ResponseReceived, rejected)
    assert (b"grpc-status", b"12") in answer.headers
    assert pair.client.decoder.header_table.maxsize == 0


def test_output_waits_for_a_small_peer_window_and_follows_each_window_update():
    pair = Pair(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    stream_id = pair.request()
    payload = bytes(range(256)) * 4
    assert not pair.server.send_message(stream_id, payload)  # waits for credit
    pair.server.send_trailers(stream_id, Status.OK)
    pair.exchange()
    received = b"".join(e.data for e in pair.client_saw(h2.events.DataReceived, stream_id))
    assert received == message(payload)[:10]
    assert pair.server.send_buffered(stream_id) == len(message(payload)) - 10
    for _ in range(200):
        if pair.client_saw(h2.events.StreamEnded, stream_id):
            break
        pair.client.increment_flow_control_window(37, stream_id)
        pair.exchange()
    received = b"".join(e.data for e in pair.client_saw(h2.events.DataReceived, stream_id))
    assert received == message(payload)
    assert pair.client_saw(h2.events.TrailersReceived, stream_id)
    assert pair.server._h2.streams[stream_id].closed


def test_a_window_update_that_drains_a_call_reports_credit_to_the_call_layer():
    pair = Pair(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4})
    stream_id = pair.request(end=False)
    assert not pair.server.send_message(stream_id, b"abcdefgh")
    pair.exchange()
    pair.client.increment_flow_control_window(100, stream_id)
    pair.exchange()
    assert any(isinstance(e, SendCreditAvailable) and e.stream_id == stream_id for e in pair.server_events)


def test_padded_data_and_huffman_headers_from_the_client_make_one_call_with_its_credit_returned():
    pair = Pair(stream_window=64, connection_window=65535)
    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_headers(stream_id, REQUEST)
    pair.client.send_data(stream_id, message(b"x" * 20), pad_length=30)
    pair.client.send_data(stream_id, b"", end_stream=True)
    pair.exchange()
    assert [e.payloads for e in pair.server_events if isinstance(e, MessagesReceived)] == [[b"x" * 20]]
    assert any(isinstance(e, StreamEnded) for e in pair.server_events)
    pair.server.consumed(stream_id, 20)
    assert pair.server._h2._inbound_flow_control_window_manager.current_window_size >= 65535 - 56


def test_a_malformed_request_resets_its_stream_only_and_the_next_call_is_served():
    pair = Pair()
    pair.client.config.validate_outbound_headers = False
    pair.client.config.normalize_outbound_headers = False
    bad = pair.request([*REQUEST, (b"X-Upper", b"1")])
    (reset,) = pair.client_saw(h2.events.StreamReset, bad)
    assert reset.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert not any(isinstance(e, CallOpened) and e.stream_id == bad for e in pair.server_events)
    good = pair.request()
    assert any(isinstance(e, CallOpened) and e.stream_id == good for e in pair.server_events)


@pytest.mark.parametrize("headers, fault", [
    ([*REQUEST, (b"x-Up", b"1")], "name"),
    ([*REQUEST, (b"x", b"a\nb")], "value"),
    ([*REQUEST, (b"x", b" lead")], "value"),
    ([*REQUEST, (b"connection", b"close")], "connection-specific"),
    ([*REQUEST[:-1], (b"te", b"gzip")], "connection-specific"),
    ([(b"x", b"1"), *REQUEST], "after a regular"),
    ([*REQUEST[:2], (b":method", b"GET"), *REQUEST[2:]], "repeated"),
    ([(b":status", b"200"), *REQUEST], "unknown pseudo"),
    (REQUEST[1:], "missing"),
    ([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b""), *REQUEST[3:]], "empty"),
    ([*REQUEST, (b"host", b"elsewhere")], "differ"),
    ([*REQUEST, (b"", b"v")], "name"),
])
def test_check_request_names_what_h2_would_refuse(headers, fault):
    assert fault in check_request(headers)


def test_check_request_passes_what_grpcio_sends():
    assert check_request([*REQUEST, (b"grpc-accept-encoding", b"identity, deflate, gzip"),
                          (b"user-agent", b"grpc-python/1.85.3 grpc-c/58.0.0 (linux; chttp2)"),
                          (b"grpc-timeout", b"99m"), (b"x-bin", b"AAE=")]) is None


def test_frames_received_here_are_described_without_their_payload_and_others_keep_theirs():
    pair = Pair()
    pair.client.send_headers(1, REQUEST)
    pair.client.send_data(1, message(b"secret-payload"), end_stream=True)
    buffer = pair.server._h2.incoming_buffer
    buffer.add_data(pair.client.data_to_send())
    buffer.max_frame_size = 16384
    frames = list(buffer)
    shown = b"secret".hex()  # how hyperframe shows a payload
    assert frames and all(shown not in repr(frame) for frame in frames)
    plain = DataFrame(1, data=b"secret-payload")
    assert shown in repr(plain)


def test_a_reset_arriving_before_the_reply_cancels_the_call_and_no_frame_follows():
    pair = Pair()
    stream_id = pair.request(end=False)
    pair.client.reset_stream(stream_id)
    pair.exchange()
    assert any(isinstance(e, CallCancelled) and e.stream_id == stream_id for e in pair.server_events)
    assert pair.server.open_streams == 0


@pytest.mark.parametrize("raw", [
    b"\x00\x00\x05\x00\x00\x00\x00\x00\x00hello",  # DATA on stream 0
    b"\x00\x00\x03\x00\x08\x00\x00\x00\x01\x05ab",  # padding longer than the frame
    b"\x00\x00\x00\x00\x08\x00\x00\x00\x01",  # PADDED with no pad length
    b"\x00\x00\x01\x01\x00\x00\x00\x00\x03\x82" + b"\x00\x00\x01\x00\x00\x00\x00\x00\x01x",  # DATA (of an open call) inside a header block
])
def test_a_broken_data_frame_is_a_protocol_error_of_the_connection_as_with_h2(raw):
    pair = Pair()
    pair.request(end=False)
    with pytest.raises(RemoteProtocolError):
        pair.server.receive_data(raw)


@pytest.mark.parametrize("frame_size", [50000, 300000])
def test_data_frames_split_across_reads_and_joined_in_one_read_make_the_same_messages(frame_size):
    payloads = [b"a" * 70000, b"b", b"c" * 200000, b"d" * 3, b"e" * 65536]
    body = b"".join(message(p) for p in payloads)
    for split in (7, 4096, 65536, len(body)):
        pair = Pair(max_frame_size=1 << 20, stream_window=1 << 22, connection_window=1 << 22)
        pair.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 22})
        pair.exchange()
        stream_id = pair.client.get_next_available_stream_id()
        pair.client.send_headers(stream_id, REQUEST)
        pair.client.increment_flow_control_window(1 << 22)
        raw = pair.client.data_to_send()
        for start in range(0, len(body), frame_size):  # frames that cut messages anywhere
            pair.client.send_data(stream_id, body[start:start + frame_size], end_stream=start + frame_size >= len(body))
        raw += pair.client.data_to_send()
        pair.server_events = []
        for start in range(0, len(raw), split):
            pair.server_events += pair.server.receive_data(raw[start:start + split])
        got = [p for e in pair.server_events if isinstance(e, MessagesReceived) for p in e.payloads]
        assert got == payloads and all(type(p) is bytes for p in got)
        assert pair.server._incomplete == 0


@pytest.mark.parametrize("size", [0, 100, 5000, 70000, 300000])
def test_a_response_message_of_any_size_arrives_whole_in_frames_within_the_peers_frame_size(size):
    pair = Pair(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
                                 h2.settings.SettingCodes.MAX_FRAME_SIZE: 65536})
    pair.client.increment_flow_control_window(1 << 20)
    stream_id = pair.request()
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    assert pair.server.send_message(stream_id, payload)
    pair.server.send_message(stream_id, b"tail")
    pair.server.send_trailers(stream_id, Status.OK)
    pair.exchange()
    frames = pair.client_saw(h2.events.DataReceived, stream_id)
    assert b"".join(e.data for e in frames) == message(payload) + message(b"tail")
    assert all(len(e.data) <= 65536 for e in frames)
    assert pair.client_saw(h2.events.TrailersReceived, stream_id)
