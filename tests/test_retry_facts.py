"""What the wire tells a client about retrying a failed call (protocol 1.1, docs/PROTOCOL.md
section 3 "INFO" and section 6 "Not processed", "Retrying a call"): which methods the server
declares idempotent (the INFO frame, ``InfoReceived``), and which calls the server never ran
(TRAILERS key 5, and calls above a GOAWAY's last stream id: ``CallEnded.processed``).

First the sans-IO cores back to back (both framers), then a real server over TCP, its client
core driven by hand so that the test sees the core's events."""

from __future__ import annotations

import cbor2
import pytest
import trio

import trpc
from trpc import LocalProtocolError, RemoteProtocolError, Status
from trpc._events import CallEnded, CallOpened, GoAwayReceived, InfoReceived, PrefaceReceived
from trpc.wire import MAX_HEADERS_SIZE, PROTOCOL_VERSION, Connection, ConnectionState, FrameType

from .helpers import Pair, frame, headers, preface, types
from .services import Svc

INFO = FrameType.INFO.value
TRAILERS = FrameType.TRAILERS.value
#: What tests/services.py declares idempotent.
SVC_IDEMPOTENT = frozenset({
    "greet", "count", "tests.services.Svc/greet", "tests.services.Svc/count",
    "Describe", "trpc.reflection.v1.Reflection/Describe",  # reflection's one method: it only reads
})


def frames(framer_cls, data: bytes) -> list:
    """The frames in ``data`` (frames only: no preface)."""
    return framer_cls((1 << 24) - 1).feed(data)


def after_preface(framer_cls, data: bytes) -> list:
    assert data[:4] == b"TRPC"
    return frames(framer_cls, data[28:])


def info_frames(framer_cls, data: bytes) -> list:
    return [cbor2.loads(p) for t, f, sid, p in frames(framer_cls, data) if t == INFO]


def server_core(framer_cls, idempotent=("b", "a"), **options) -> Connection:
    conn = Connection("server", framer=framer_cls, idempotent_methods=idempotent, **options)
    conn.initiate()
    return conn


def informed_pair(framer_cls, idempotent=("b", "a"), **server_options) -> tuple[Pair, list]:
    """Two cores back to back, the server declaring ``idempotent``; and the client's events
    from the start (Pair's own exchange keeps none: this one feeds the client by hand)."""
    client = Connection("client", framer=framer_cls)
    server = server_core(framer_cls, idempotent, **server_options)
    client.initiate()
    server.receive_data(client.data_to_send())
    events = client.receive_data(server.data_to_send())
    pair = Pair.__new__(Pair)
    pair.client, pair.server, pair.chunk = client, server, None
    return pair, events


def assert_client_fails(framer_cls, client: Connection, data: bytes, words: str) -> None:
    """``data`` is a protocol error for the client core: GOAWAY INTERNAL naming ``words``."""
    with pytest.raises(RemoteProtocolError, match=words):
        client.receive_data(data)
    (goaway,) = [cbor2.loads(p) for t, _, _, p in frames(framer_cls, client.data_to_send()) if t == FrameType.GOAWAY]
    assert goaway[2] == Status.INTERNAL and words in goaway[3]
    assert client.state is ConnectionState.FAILED


# ===================================================================== the decorators
def test_the_decorators_record_idempotent_and_default_to_not():
    class Bank(trpc.Service):
        @trpc.unary(idempotent=True)
        async def balance(self):
            return 1

        @trpc.unary
        async def pay(self):
            return 2

        @trpc.server_stream(idempotent=True, name="history")
        async def statements(self):
            yield 3

        @trpc.client_stream(idempotent=True)
        async def upload(self, items):
            return 4

        @trpc.bidi_stream()
        async def chat(self, items):
            yield 5

        @trpc.unary(name="transfer")
        async def move(self):
            return 6

    methods = Bank.__trpc_methods__
    assert {name: info.idempotent for name, info in methods.items()} == {
        "balance": True, "pay": False, "history": True, "upload": True, "chat": False, "transfer": False,
    }
    assert methods["history"].attribute == "statements"
    # Declared by path and by short name, since a client may send either.
    bank = trpc.service_name(Bank)
    assert trpc.Server(Bank(), reflection=False).idempotent_methods == {
        "balance", "history", "upload", f"{bank}/balance", f"{bank}/history", f"{bank}/upload",
    }


def test_an_overriding_method_decides_idempotent_anew():
    class Base(trpc.Service):
        @trpc.unary(idempotent=True)
        async def get(self):
            return 1

    class Child(Base):
        @trpc.unary
        async def get(self):
            return 2

    assert Base.__trpc_methods__["get"].idempotent and not Child.__trpc_methods__["get"].idempotent


# ===================================================================== INFO, the cores
def test_we_announce_version_1_2_on_both_sides(framer_cls):
    assert PROTOCOL_VERSION == (1, 2)
    pair, events = informed_pair(framer_cls)
    (client_saw,) = [e for e in events if isinstance(e, PrefaceReceived)]
    assert client_saw.version == (1, 2) and pair.server.peer_preface.version == (1, 2)


def test_a_1_1_client_gets_info_right_after_the_servers_preface(framer_cls):
    pair, events = informed_pair(framer_cls)
    assert types(events) == [PrefaceReceived, InfoReceived]
    assert events[1] == InfoReceived(idempotent=frozenset({"a", "b"}))
    assert pair.client.info_received is events[1]


def test_the_info_example_of_protocol_md_is_what_the_server_sends(framer_cls):
    server = server_core(framer_cls, idempotent={"greet", "balance"})
    server.data_to_send()
    server.receive_data(preface(minor=1))
    example = "00 00 00 11 07 00 00 00 00 00 a1 01 82 67 62 61 6c 61 6e 63 65 65 67 72 65 65 74"
    assert server.data_to_send() == bytes.fromhex(example)


@pytest.mark.parametrize("minor", [1, 7])
def test_the_server_sends_info_to_clients_of_minor_version_1_or_more(framer_cls, minor):
    server = server_core(framer_cls)
    server.data_to_send()
    server.receive_data(preface(minor=minor))
    assert frames(framer_cls, server.data_to_send()) == [(INFO, 0, 0, cbor2.dumps({1: ["a", "b"]}))]


def test_a_1_0_client_never_gets_info(framer_cls):
    """A 1.0 client treats an unknown frame type as a protocol error (section 2)."""
    server = server_core(framer_cls)
    events = server.receive_data(preface(minor=0) + frame(FrameType.HEADERS, 0, 1, headers("a")))
    assert types(events) == [PrefaceReceived, CallOpened]
    server.send_trailers(1, Status.OK)
    assert [t for t, *_ in after_preface(framer_cls, server.data_to_send())] == [TRAILERS]


def test_a_server_with_nothing_to_declare_sends_no_info(framer_cls):
    pair, events = informed_pair(framer_cls, idempotent=())
    assert types(events) == [PrefaceReceived] and pair.client.info_received is None
    assert pair.server.data_to_send() == b""


def test_info_comes_before_any_frame_for_a_stream(framer_cls):
    """The client's preface and a call in one chunk: INFO leaves before the call's trailers
    (and before the WINDOW_UPDATE its bytes earn), so a client that sees a stream's frame
    without an INFO before it knows that none will come."""
    server = server_core(framer_cls, idempotent=("a",), connection_window=1024)
    server.data_to_send()
    events = server.receive_data(preface(minor=1) + frame(FrameType.HEADERS, 0, 1, headers("a")) + frame(FrameType.DATA, 1, 1, b"\x81\x80" * 400))
    assert CallOpened in types(events)
    server.send_trailers(1, Status.OK)
    sent = [(t, sid) for t, _, sid, _ in frames(framer_cls, server.data_to_send())]
    assert sent[0] == (INFO, 0) and (TRAILERS, 1) in sent and len(sent) >= 3


def test_a_server_that_went_away_before_the_clients_preface_sends_no_info(framer_cls):
    server = server_core(framer_cls)
    server.goaway(Status.OK, "shutting down")
    server.receive_data(preface(minor=1))
    assert [t for t, *_ in after_preface(framer_cls, server.data_to_send())] == [FrameType.GOAWAY]


def test_info_may_arrive_after_either_sides_goaway(framer_cls):
    """A client that has said GOAWAY, or heard one (from a server that sends GOAWAY first),
    still takes the server's INFO: only a second one is an error."""
    client = Connection("client", framer=framer_cls)
    client.initiate()
    client.receive_data(preface(minor=1))
    client.goaway()
    client.receive_data(frame(FrameType.GOAWAY, 0, 0, cbor2.dumps({1: 0})))
    client.data_to_send()
    assert client.state is ConnectionState.GOAWAY_BOTH
    (event,) = client.receive_data(frame(INFO, 0, 0, cbor2.dumps({1: ["x"]})))
    assert event == InfoReceived(idempotent=frozenset({"x"}))
    assert_client_fails(framer_cls, client, frame(INFO, 0, 0, cbor2.dumps({1: ["x"]})), "second INFO")


def test_info_keys_we_do_not_know_are_ignored_and_key_1_may_be_absent(framer_cls):
    client = Connection("client", framer=framer_cls)
    client.initiate()
    events = client.receive_data(preface(minor=1) + frame(INFO, 0, 0, cbor2.dumps({9: "later", 1: ["m"]})))
    assert events[1] == InfoReceived(idempotent=frozenset({"m"}))
    client = Connection("client", framer=framer_cls)
    client.receive_data(preface(minor=1))
    assert client.receive_data(frame(INFO, 0, 0, cbor2.dumps({9: "later"}))) == [InfoReceived(idempotent=frozenset())]


INFO_ERRORS = {
    "second-info": (frame(INFO, 0, 0, cbor2.dumps({1: ["a"]})) * 2, "second INFO"),
    "on-a-stream": (frame(INFO, 0, 1, cbor2.dumps({1: ["a"]})), "malformed INFO"),
    "with-flags": (frame(INFO, 1, 0, cbor2.dumps({1: ["a"]})), "malformed INFO"),
    "not-cbor": (frame(INFO, 0, 0, b"\xff"), "not valid CBOR"),
    "not-a-map": (frame(INFO, 0, 0, cbor2.dumps([["a"]])), "must be a CBOR map"),
    "names-not-an-array": (frame(INFO, 0, 0, cbor2.dumps({1: "a"})), "array of text"),
    "a-name-not-text": (frame(INFO, 0, 0, cbor2.dumps({1: ["a", 2]})), "array of text"),
    "over-64-kib": (frame(INFO, 0, 0, cbor2.dumps({1: ["a"], 2: "x" * MAX_HEADERS_SIZE})), "exceeds"),
}


@pytest.mark.parametrize("name", list(INFO_ERRORS))
def test_a_bad_info_is_the_servers_protocol_error(framer_cls, name):
    data, words = INFO_ERRORS[name]
    client = Connection("client", framer=framer_cls)
    client.initiate()
    client.receive_data(preface(minor=1))
    client.data_to_send()
    assert_client_fails(framer_cls, client, data, words)


def test_info_from_a_client_is_a_protocol_error(framer_cls):
    server = server_core(framer_cls)
    server.receive_data(preface(minor=1))
    server.data_to_send()
    with pytest.raises(RemoteProtocolError, match="a client cannot send INFO"):
        server.receive_data(frame(INFO, 0, 0, cbor2.dumps({1: []})))
    (goaway,) = [cbor2.loads(p) for t, _, _, p in frames(framer_cls, server.data_to_send()) if t == FrameType.GOAWAY]
    assert goaway[2] == Status.INTERNAL


def test_only_a_server_declares_idempotent_methods(framer_cls):
    with pytest.raises(ValueError, match="server"):
        Connection("client", framer=framer_cls, idempotent_methods={"a"})
    with pytest.raises(ValueError, match="text"):
        Connection("server", framer=framer_cls, idempotent_methods={b"a"})


@pytest.mark.parametrize("client_max_frame", [16_384, 1 << 20])
def test_a_list_too_long_for_info_is_cut_to_what_fits(framer_cls, client_max_frame):
    """Names of 1,000 bytes each (a 3-byte CBOR head): 100 of them do not fit 64 KiB, nor a
    client's 16 KiB frame; as many as fit are sent, in sorted order, and no more."""
    names = {f"{i:03d}" + "m" * 997 for i in range(100)}
    server = server_core(framer_cls, idempotent=names)
    server.receive_data(preface(minor=1, max_frame=client_max_frame))
    ((ftype, _, _, payload),) = after_preface(framer_cls, server.data_to_send())
    limit = min(MAX_HEADERS_SIZE, client_max_frame)
    sent = cbor2.loads(payload)[1]
    assert ftype == INFO and len(payload) <= limit
    assert sent == sorted(names)[: len(sent)]
    # map head, key, array head (2 or 3 bytes), and 1,003 bytes a name: one more would not fit
    assert len(payload) == 2 + (1 if len(sent) < 24 else 2) + 1003 * len(sent)
    assert len(payload) + 1003 > limit
    client = Connection("client", framer=framer_cls, max_frame_size=client_max_frame)
    client.receive_data(preface())
    assert client.receive_data(frame(INFO, 0, 0, payload)) == [InfoReceived(idempotent=frozenset(sent))]


@pytest.mark.parametrize(
    "lengths, fit",
    [([8187] * 2, 2), ([8188] * 2, 1), ([497] * 29 + [1877], 30), ([497] * 29 + [1878], 29)],
    ids=["2-fit", "1-fits", "30-fit", "29-fit"],
)
def test_info_is_cut_to_the_byte(framer_cls, lengths, fit):
    """Against a 16 KiB frame, names of 256 bytes or more (3 bytes of CBOR head each): the map's
    head, key 1, the array's head (1 byte for fewer than 24 items, else 2) and the names fill
    16,384 bytes exactly, or would go one byte over with the last name, which is then left out."""
    names = [f"{i:02d}" + "m" * (length - 2) for i, length in enumerate(lengths)]
    server = server_core(framer_cls, idempotent=names)
    server.receive_data(preface(minor=1, max_frame=16_384))
    ((_, _, _, payload),) = after_preface(framer_cls, server.data_to_send())
    assert cbor2.loads(payload) == {1: names[:fit]}
    head = 1 if fit < 24 else 2
    assert len(payload) == 2 + head + sum(length + 3 for length in lengths[:fit]) <= 16_384
    if fit < len(lengths):  # the name left out would have made it one byte too long
        assert len(payload) + lengths[fit] + 3 == 16_385


def test_a_name_too_long_for_info_is_left_out_and_the_others_sent(framer_cls):
    names = {"a", "b" * (20_000), "c"}
    server = server_core(framer_cls, idempotent=names)
    server.receive_data(preface(minor=1, max_frame=16_384))
    assert info_frames(framer_cls, server.data_to_send()[28:]) == [{1: ["a", "c"]}]
    server = server_core(framer_cls, idempotent={"b" * 20_000})
    server.receive_data(preface(minor=1, max_frame=16_384))
    assert after_preface(framer_cls, server.data_to_send()) == [], "an INFO that would say nothing"


# ===================================================================== not processed, the cores
def trailers_in(framer_cls, data: bytes) -> dict[int, dict]:
    """Stream id -> TRAILERS map, for the TRAILERS frames in ``data``."""
    return {sid: cbor2.loads(p) for t, _, sid, p in frames(framer_cls, data) if t == TRAILERS}


def test_calls_beyond_the_streams_limit_are_refused_as_not_processed(framer_cls):
    pair = Pair(framer_cls, server_options={"max_concurrent_streams": 1})
    pair.client.peer_max_concurrent_streams = 2  # a client that ignores the limit (or races it)
    first = pair.client.open_call("a", end_stream=True)
    second = pair.client.open_call("a", end_stream=True)
    pair.server.receive_data(pair.client.data_to_send())
    sent = pair.server.data_to_send()
    refusal = trailers_in(framer_cls, sent)
    assert list(refusal) == [second] and refusal[second][1] == Status.RESOURCE_EXHAUSTED and refusal[second][5] is True
    (ended,) = pair.client.receive_data(sent)
    assert (ended.stream_id, ended.status, ended.processed) == (second, Status.RESOURCE_EXHAUSTED, False)
    pair.server.send_trailers(first, Status.OK)
    assert pair.exchange()["client"] == [CallEnded(stream_id=first, status=Status.OK)]


def test_calls_that_cross_the_servers_goaway_are_refused_as_not_processed(framer_cls):
    pair = Pair(framer_cls)
    first = pair.client.open_call("a", end_stream=True)
    pair.exchange()
    second = pair.client.open_call("a", end_stream=True)  # crosses the GOAWAY on the wire
    pair.server.goaway(Status.OK, "bye")
    pair.server.data_to_send()  # the GOAWAY goes; the client reads it later
    assert types(pair.server.receive_data(pair.client.data_to_send())) == []
    refusal = trailers_in(framer_cls, pair.server.data_to_send())
    assert refusal == {second: {1: Status.UNAVAILABLE, 2: "the server is shutting down", 5: True}}
    (ended,) = pair.client.receive_data(frame(TRAILERS, 0, second, cbor2.dumps(refusal[second])))
    assert (ended.stream_id, ended.status, ended.processed) == (second, Status.UNAVAILABLE, False)
    assert pair.server.stream_state(first).name == "HALF_CLOSED_REMOTE"


def test_calls_above_a_goaways_last_stream_id_end_not_processed_at_once(framer_cls):
    """Section 9: the client core ends them itself (UNAVAILABLE, processed False); the calls
    up to the last stream id live on and end as the server says."""
    pair = Pair(framer_cls)
    kept = [pair.client.open_call("a", end_stream=True) for _ in range(2)]
    pair.exchange()
    above = [pair.client.open_call("a", end_stream=True) for _ in range(2)]  # not delivered
    pair.client.data_to_send()
    pair.server.goaway(Status.OK, "bye")
    events = pair.client.receive_data(pair.server.data_to_send())
    assert types(events) == [GoAwayReceived, CallEnded, CallEnded]
    assert [(e.stream_id, e.status, e.processed) for e in events[1:]] == [
        (sid, Status.UNAVAILABLE, False) for sid in above
    ]
    assert pair.client.open_streams == 2
    pair.server.send_trailers(kept[0], Status.OK)
    pair.server.send_trailers(kept[1], Status.INTERNAL, "it ran and failed")
    ended = pair.exchange()["client"]
    assert [(e.stream_id, e.processed) for e in ended] == [(kept[0], True), (kept[1], True)]


@pytest.mark.parametrize(
    "status, words",
    [(Status.UNIMPLEMENTED, "unknown method"), (Status.INVALID_ARGUMENT, "bad"), (Status.DEADLINE_EXCEEDED, "late"),
     (Status.INTERNAL, "")],
)
def test_trailers_of_calls_the_server_did_not_refuse_carry_no_key_5(framer_cls, status, words):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("a", end_stream=True)
    pair.exchange()
    pair.server.send_trailers(sid, status, words)
    sent = pair.server.data_to_send()
    assert 5 not in trailers_in(framer_cls, sent)[sid]
    (ended,) = pair.client.receive_data(sent)
    assert ended.status is status and ended.processed is True


@pytest.mark.parametrize(
    "fields, processed",
    [({1: 14, 5: True}, False), ({1: 14, 5: False}, True), ({1: 14}, True), ({1: 8, 2: "x", 5: True, 9: 1}, False)],
)
def test_the_client_core_reads_key_5(framer_cls, fields, processed):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("a", end_stream=True)
    pair.exchange()
    (ended,) = pair.client.receive_data(frame(TRAILERS, 0, sid, cbor2.dumps(fields)))
    assert ended.processed is processed and ended.status == fields[1]


@pytest.mark.parametrize(
    "fields, words",
    [({1: 0, 5: True}, "both OK and not processed"), ({1: 14, 5: 1}, "boolean"), ({1: 14, 5: "yes"}, "boolean")],
)
def test_a_bad_key_5_is_the_servers_protocol_error(framer_cls, fields, words):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("a", end_stream=True)
    pair.exchange()
    assert_client_fails(framer_cls, pair.client, frame(TRAILERS, 0, sid, cbor2.dumps(fields)), words)


def test_ok_trailers_keep_their_shortcut_and_say_processed(framer_cls):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("a", end_stream=True)
    pair.exchange()
    pair.server.send_trailers(sid, Status.OK)
    sent = pair.server.data_to_send()
    assert sent == frame(TRAILERS, 0, sid, b"\xa1\x01\x00")
    (ended,) = pair.client.receive_data(sent)
    assert ended == CallEnded(stream_id=sid, status=Status.OK) and ended.processed


def test_refuse_call_is_for_a_server_and_a_call_that_has_not_responded(framer_cls):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("a")
    pair.exchange()
    with pytest.raises(LocalProtocolError, match="only the server"):
        pair.client.refuse_call(sid, Status.UNAVAILABLE)
    with pytest.raises(LocalProtocolError, match="OK"):
        pair.server.refuse_call(sid, Status.OK)
    pair.server.send_headers(sid, {"k": "v"})
    with pytest.raises(LocalProtocolError, match="processed"):
        pair.server.refuse_call(sid, Status.UNAVAILABLE)
    with pytest.raises(LocalProtocolError, match="closed or does not exist"):
        pair.server.refuse_call(sid + 1, Status.UNAVAILABLE)
    other = pair.client.open_call("a")
    pair.exchange()
    pair.server.send_message(other, b"\x01")
    with pytest.raises(LocalProtocolError, match="processed"):
        pair.server.refuse_call(other, Status.UNAVAILABLE)
    third = pair.client.open_call("a")
    pair.exchange()
    pair.server.refuse_call(third, Status.RESOURCE_EXHAUSTED, "later")
    assert pair.server.stream_state(third).name == "CLOSED"
    ended = [e for e in pair.exchange()["client"] if isinstance(e, CallEnded)]
    assert [(e.stream_id, e.status, e.message, e.processed) for e in ended] == [
        (third, Status.RESOURCE_EXHAUSTED, "later", False)
    ]


# ===================================================================== a real server over TCP
class CoreClient:
    """A client core over a TCP stream, driven by hand: what it queues is sent before each
    read; ``until`` reads until ``done(self)``.  ``received`` keeps every byte read."""

    def __init__(self, framer_cls, stream: trio.SocketStream) -> None:
        self.framer_cls = framer_cls
        self.conn = Connection("client", framer=framer_cls)
        self.stream = stream
        self.events: list = []
        self.received = b""
        self.conn.initiate()

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def until(self, done) -> list:
        await self.flush()
        with trio.fail_after(5):
            while not done(self):
                data = await self.stream.receive_some(65536)
                assert data, "the server closed the connection"
                self.received += data
                self.events += self.conn.receive_data(data)
                await self.flush()
        return self.events

    def frames(self) -> list:
        """Every frame the server sent so far (as the bytes say, whatever the core did)."""
        return after_preface(self.framer_cls, self.received)

    def ended(self, sid: int) -> CallEnded | None:
        return next((e for e in self.events if isinstance(e, CallEnded) and e.stream_id == sid), None)


async def core_client(framer_cls, address) -> CoreClient:
    client = CoreClient(framer_cls, await trio.open_tcp_stream(*address))
    await client.until(lambda c: c.conn.peer_preface is not None)
    return client


def call(client: CoreClient, method: str, *args, timeout: float | None = None) -> int:
    return client.conn.open_unary_call(method, cbor2.dumps([list(args)]), timeout=timeout)[0]


async def test_the_idempotent_methods_reach_the_client_core_over_tcp(framer_cls, server):
    client = await core_client(framer_cls, server.address)
    sid = call(client, "greet", "Ada")
    events = await client.until(lambda c: c.ended(sid))
    infos = [e for e in events if isinstance(e, InfoReceived)]
    assert infos[0].idempotent == SVC_IDEMPOTENT and client.conn.info_received is infos[0]
    assert infos == [InfoReceived(idempotent=SVC_IDEMPOTENT, methods={
        path: info.cardinality for path, info in server.methods.items()})]
    assert events.index(infos[0]) < events.index(client.ended(sid)), "INFO came after the call's frames"
    assert client.ended(sid).status is Status.OK
    assert [t for t, *_ in client.frames()][0] == INFO
    await client.stream.aclose()


async def test_a_server_with_no_idempotent_method_sends_info_with_the_shapes_alone(framer_cls, nursery):
    class Plain(trpc.Service, name="plain.Plain"):
        @trpc.unary
        async def greet(self, name):
            return name

        @trpc.bidi_stream
        async def chat(self, items):
            yield 1

    server = trpc.Server(Plain(), reflection=False, health=False)
    assert server.idempotent_methods == frozenset()
    client = await core_client(framer_cls, await nursery.start(server.serve_tcp, 0))
    sid = call(client, "greet", "Ada")
    events = await client.until(lambda c: c.ended(sid))
    assert client.ended(sid).status is Status.OK
    shapes = {"plain.Plain/greet": trpc.Cardinality.UNARY, "plain.Plain/chat": trpc.Cardinality.BIDI_STREAM}
    assert [e for e in events if isinstance(e, InfoReceived)] == [InfoReceived(idempotent=frozenset(), methods=shapes)]
    assert [(t, cbor2.loads(p)) for t, _, _, p in client.frames() if t == INFO] == [
        (INFO, {2: {"plain.Plain/chat": 3, "plain.Plain/greet": 0}})
    ]
    await client.stream.aclose()


async def test_the_trpc_client_works_with_a_server_that_sends_info(client):
    assert await client.greet("Ada") == "Hello Ada"
    assert [x async for x in client.count(3)] == [0, 1, 2]


async def test_the_servers_call_limit_refuses_as_not_processed_and_other_refusals_do_not(framer_cls, nursery):
    """max_concurrent_calls: RESOURCE_EXHAUSTED, not processed.  No time left on arrival
    (DEADLINE_EXCEEDED) and an unknown method (UNIMPLEMENTED) were not run either, but a
    retry would fail the same way: no key 5 (docs/PROTOCOL.md sections 4 and 6)."""
    service = Svc()
    server = trpc.Server(service, max_concurrent_calls=1)
    client = await core_client(framer_cls, await nursery.start(server.serve_tcp, 0))
    blocked = call(client, "block")
    await client.flush()
    with trio.fail_after(5):
        await service.started.wait()
    over, late, unknown = call(client, "greet", "over"), call(client, "greet", "late", timeout=0), call(client, "nope")
    await client.until(lambda c: c.ended(over) and c.ended(late) and c.ended(unknown))
    got = {sid: (client.ended(sid).status, client.ended(sid).processed) for sid in (over, late, unknown)}
    assert got == {
        over: (Status.RESOURCE_EXHAUSTED, False),
        late: (Status.DEADLINE_EXCEEDED, True),
        unknown: (Status.UNIMPLEMENTED, True),
    }
    sent = trailers_in(framer_cls, b"".join(frame(t, f, sid, p) for t, f, sid, p in client.frames()))
    assert sent[over][5] is True and 5 not in sent[late] and 5 not in sent[unknown]
    client.conn.cancel(blocked)
    await client.flush()
    await client.stream.aclose()


async def test_a_call_that_crosses_the_shutdown_goaway_is_refused_as_not_processed(framer_cls, nursery):
    """Server.shutdown sends GOAWAY; a call sent before the client read it is refused with key 5
    (seen in the bytes: the client core ends it not processed on the GOAWAY alone, and drops
    the trailers of a stream it has closed)."""
    service = Svc()
    server = trpc.Server(service)
    client = await core_client(framer_cls, await nursery.start(server.serve_tcp, 0))
    blocked = call(client, "block")
    await client.flush()
    with trio.fail_after(5):
        await service.started.wait()
    nursery.start_soon(server.shutdown, 5)
    with trio.fail_after(5):
        while not server.shutting_down:
            await trio.sleep(0)
    crossing = call(client, "greet", "late")
    await client.until(lambda c: (TRAILERS, crossing) in [(t, sid) for t, _, sid, _ in c.frames()])
    refusal = trailers_in(framer_cls, b"".join(frame(t, f, sid, p) for t, f, sid, p in client.frames()))
    assert refusal[crossing] == {1: Status.UNAVAILABLE, 2: "the server is shutting down", 5: True}
    assert (client.ended(crossing).status, client.ended(crossing).processed) == (Status.UNAVAILABLE, False)
    (goaway,) = [e for e in client.events if isinstance(e, GoAwayReceived)]
    assert goaway.last_stream_id == blocked < crossing
    client.conn.cancel(blocked)
    await client.flush()
    with trio.fail_after(5):
        while server.connections:
            await trio.sleep(0.01)
    await client.stream.aclose()


# ===================================================================== INFO key 2: the shapes
SHAPES = {"s.S/u": trpc.Cardinality.UNARY, "s.S/ss": trpc.Cardinality.SERVER_STREAM,
          "s.S/cs": trpc.Cardinality.CLIENT_STREAM, "s.S/bd": trpc.Cardinality.BIDI_STREAM}


def test_the_shapes_reach_the_client_core_as_numbers_on_the_wire(framer_cls):
    pair, events = informed_pair(framer_cls, idempotent=(), methods=SHAPES)
    assert events[1] == InfoReceived(idempotent=frozenset(), methods=SHAPES)
    server = server_core(framer_cls, idempotent=(), methods=SHAPES)
    server.receive_data(preface(minor=1))
    assert info_frames(framer_cls, server.data_to_send()[28:]) == [{2: {"s.S/u": 0, "s.S/ss": 1, "s.S/cs": 2, "s.S/bd": 3}}]


def test_a_shape_number_we_do_not_know_leaves_its_method_out(framer_cls):
    client = Connection("client", framer=framer_cls)
    client.receive_data(preface(minor=1))
    (event,) = client.receive_data(frame(INFO, 0, 0, cbor2.dumps({2: {"a/x": 0, "a/later": 4}})))
    assert event == InfoReceived(idempotent=frozenset(), methods={"a/x": trpc.Cardinality.UNARY})


@pytest.mark.parametrize("shapes", [["a/x", 0], {"a/x": -1}, {"a/x": True}, {"a/x": "unary"}, {b"a/x": 0}, {1: 0}],
                         ids=["array", "negative", "bool", "text", "bytes-key", "int-key"])
def test_a_key_2_that_is_not_a_map_of_text_to_unsigned_integers_is_a_protocol_error(framer_cls, shapes):
    client = Connection("client", framer=framer_cls)
    client.initiate()
    client.receive_data(preface(minor=1))
    client.data_to_send()
    assert_client_fails(framer_cls, client, frame(INFO, 0, 0, cbor2.dumps({2: shapes})), "key 2")


def test_only_a_server_declares_shapes(framer_cls):
    with pytest.raises(ValueError, match="server"):
        Connection("client", framer=framer_cls, methods=SHAPES)


def test_a_server_with_nothing_to_declare_sends_no_info(framer_cls):
    server = server_core(framer_cls, idempotent=(), methods={})
    server.receive_data(preface(minor=1))
    assert info_frames(framer_cls, server.data_to_send()[28:]) == []


def test_shapes_too_many_for_info_are_cut_after_the_idempotent_names(framer_cls):
    """Key 1 is filled first; key 2 takes what room is left, paths in sorted order, each one
    kept while it still fits the client's 16 KiB frame."""
    names = {f"{i:03d}" + "n" * 97 for i in range(100)}  # about 10 KB of idempotent names
    shapes = {f"s.S/{i:03d}" + "p" * 95: trpc.Cardinality.UNARY for i in range(100)}  # about 10 KB
    server = server_core(framer_cls, idempotent=names, methods=shapes)
    server.receive_data(preface(minor=1, max_frame=16_384))
    ((ftype, _, _, payload),) = after_preface(framer_cls, server.data_to_send())
    info = cbor2.loads(payload)
    assert ftype == INFO and len(payload) <= 16_384
    assert info[1] == sorted(names)  # all of key 1
    kept = list(info[2])
    assert 0 < len(kept) < 100 and kept == sorted(shapes)[: len(kept)]
    assert len(payload) + len(cbor2.dumps(sorted(shapes)[len(kept)])) + 1 > 16_384  # the next did not fit
    client = Connection("client", framer=framer_cls, max_frame_size=16_384)
    client.receive_data(preface())
    (event,) = client.receive_data(frame(INFO, 0, 0, payload))
    assert event.methods == {path: trpc.Cardinality.UNARY for path in kept}
