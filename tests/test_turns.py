"""A received chunk's frames processed in turns.

The protocol core can leave frames it has parsed unprocessed (``receive_data(...,
max_frames=N)``, ``process_backlog``), and a frame waiting there has changed nothing: taking a
chunk in turns gives exactly the events, state and output of taking it whole, and between two
turns the application may act on what it has seen.  The Trio reader uses that to answer the first
calls of a large chunk before it starts the later ones (so the peer works in parallel instead of
waiting for the whole batch); the end of this file checks it does, on a real server.
"""

from __future__ import annotations

import cbor2
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trpc
from trpc import Status
from trpc._errors import RemoteProtocolError
from trpc._events import CallOpened, ConnectionClosed, MessagesReceived, StreamEnded
from trpc.wire import Connection, FrameType

from . import wire_spec_client as w
from .helpers import Pair, frame, headers, types


def client_chunk(pair: Pair, calls: int) -> bytes:
    """``calls`` unary requests (with a streaming call and a cancel mixed in) as one chunk."""
    client = pair.client
    for i in range(calls):
        client.open_unary_call("greet", cbor2.dumps([[f"n{i}"]]))
    sid = client.open_call("chat")
    for i in range(5):
        client.send_message(sid, cbor2.dumps(i))
    client.cancel(client.open_call("slow"))
    return client.data_to_send()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.integers(0, 40), turns=st.lists(st.integers(0, 12), max_size=30))
def test_turns_give_the_events_and_output_of_one_go(framer_cls, calls, turns):
    whole, split = Pair(framer_cls), Pair(framer_cls)
    data = client_chunk(whole, calls)
    assert client_chunk(split, calls) == data

    expected = whole.server.receive_data(data)
    got = split.server.receive_data(data, max_frames=turns[0] if turns else 0)
    for size in turns[1:]:
        got += split.server.process_backlog(size)
    got += split.server.process_backlog()
    assert split.server.backlog == 0
    assert got == expected
    assert split.server.data_to_send() == whole.server.data_to_send()
    assert split.server.open_streams == whole.server.open_streams


def test_backlog_counts_frames_and_a_run_of_data_frames_counts_once(framer_cls):
    pair = Pair(framer_cls)
    sid = pair.client.open_call("chat")
    for i in range(10):
        pair.client.send_message(sid, cbor2.dumps(i))
    pair.client.open_unary_call("greet", cbor2.dumps([["Ada"]]))
    assert pair.server.receive_data(pair.client.data_to_send(), max_frames=0) == []
    # HEADERS, the run of ten DATA frames, then the unary call's HEADERS and DATA.
    assert pair.server.backlog == 4
    events = pair.server.process_backlog(2)
    assert types(events) == [CallOpened, MessagesReceived]
    assert len(events[1].payloads) == 10
    assert pair.server.backlog == 2
    assert types(pair.server.process_backlog()) == [CallOpened, MessagesReceived, StreamEnded]
    assert pair.server.backlog == 0
    assert pair.server.process_backlog() == []


def test_between_turns_the_application_acts_on_what_it_has_seen(framer_cls):
    """The client opens a call and cancels it in the same chunk.  The server took only the
    opening so far: for it the call is open, and its reply is legal.  The CANCEL, taken later,
    then meets a closed stream and is dropped, as if it had arrived after the reply."""
    pair = Pair(framer_cls)
    sid, _ = pair.client.open_unary_call("greet", cbor2.dumps([["Ada"]]))
    pair.client.cancel(sid)
    server = pair.server
    events = server.receive_data(pair.client.data_to_send(), max_frames=2)
    assert types(events) == [CallOpened, MessagesReceived, StreamEnded]
    assert server.backlog == 1
    server.send_message(sid, cbor2.dumps("Hello Ada"))
    server.send_trailers(sid, Status.OK)
    assert server.process_backlog() == []
    assert server.open_streams == 0


def test_new_data_is_processed_after_the_backlog(framer_cls):
    pair = Pair(framer_cls)
    first, _ = pair.client.open_unary_call("one", cbor2.dumps([[]]))
    earlier = pair.client.data_to_send()
    second, _ = pair.client.open_unary_call("two", cbor2.dumps([[]]))
    later = pair.client.data_to_send()
    events = pair.server.receive_data(earlier, max_frames=1)
    assert [(type(e), e.stream_id) for e in events] == [(CallOpened, first)]
    # The limit counts the waiting frame (DATA of one) and the new ones (HEADERS, DATA of two).
    events = pair.server.receive_data(later, max_frames=2)
    assert [(type(e), e.stream_id) for e in events] == [
        (MessagesReceived, first), (StreamEnded, first), (CallOpened, second)
    ]
    assert pair.server.backlog == 1
    assert [(type(e), e.stream_id) for e in pair.server.process_backlog()] == [
        (MessagesReceived, second), (StreamEnded, second)
    ]


def test_the_end_of_the_connection_comes_after_the_backlog(framer_cls):
    pair = Pair(framer_cls)
    sid, _ = pair.client.open_unary_call("greet", cbor2.dumps([["Ada"]]))
    assert pair.server.receive_data(pair.client.data_to_send(), max_frames=0) == []
    events = pair.server.receive_data(b"")
    assert types(events) == [CallOpened, MessagesReceived, StreamEnded, ConnectionClosed]
    assert pair.server.backlog == 0


def test_a_protocol_error_in_a_later_turn_is_raised_there_with_the_events_before_it(framer_cls):
    pair = Pair(framer_cls)
    sid, _ = pair.client.open_unary_call("greet", cbor2.dumps([["Ada"]]))
    data = pair.client.data_to_send() + frame(FrameType.HEADERS, 0, 0, headers("bad")) + frame(
        FrameType.PING, 0, 0, b"12345678"
    )
    server = pair.server
    assert types(server.receive_data(data, max_frames=1)) == [CallOpened]
    with pytest.raises(RemoteProtocolError, match="stream 0") as caught:
        server.process_backlog(5)
    assert types(caught.value.events) == [MessagesReceived, StreamEnded]
    assert server.backlog == 0  # the PING after the bad frame is never processed
    out = server.data_to_send()
    assert out[4] == FrameType.GOAWAY  # frame header: length (4 bytes), then the type
    with pytest.raises(RemoteProtocolError):
        server.receive_data(frame(FrameType.PING, 0, 0, b"12345678"))


# ------------------------------------------------------------------ the Trio reader


class _Recorder(trio.abc.Stream):
    """A stream that notes, at each write, how many handlers had started by then."""

    def __init__(self, inner: trio.abc.Stream, started: list) -> None:
        self.inner = inner
        self.started = started
        self.writes: list[tuple[int, bytes]] = []

    async def send_all(self, data) -> None:
        self.writes.append((len(self.started), bytes(data)))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Greeter(trpc.Service):
    def __init__(self) -> None:
        self.started: list[str] = []

    @trpc.unary
    async def greet(self, name: str) -> str:
        self.started.append(name)
        return f"Hello {name}"


def count_trailers(data: bytes) -> int:
    """How many TRAILERS frames (one per finished call) one write holds; it holds whole frames."""
    parser = w.FrameParser(1 << 24)
    parser.feed(data)
    frames = parser.frames()
    assert parser.buffered == 0
    return sum(f.type == FrameType.TRAILERS for f in frames)


async def greet_in_one_chunk(nursery, calls: int) -> tuple[Greeter, list, dict]:
    """Serve a Greeter over an in-memory stream; send ``calls`` unary requests to it in one
    chunk (from a raw client core) and read every reply.  Returns the service, each write of the
    server after its preface as (handlers started by then, TRAILERS in it), and the replies."""
    service = Greeter()
    server = trpc.Server(service)
    client_side, server_side = trio.testing.memory_stream_pair()
    recorder = _Recorder(server_side, service.started)
    nursery.start_soon(server.serve_stream, recorder, "test")

    client = Connection("client")
    client.initiate()
    await client_side.send_all(client.data_to_send())
    replies: dict[int, str] = {}
    with trio.fail_after(5):
        while client.peer_preface is None:
            client.receive_data(await client_side.receive_some())
        for i in range(calls):
            client.open_unary_call("greet", cbor2.dumps([[f"n{i}"]]))
        await client_side.send_all(client.data_to_send())  # one chunk: two frames per call
        while len(replies) < calls:
            for event in client.receive_data(await client_side.receive_some()):
                if isinstance(event, MessagesReceived):
                    replies[event.stream_id] = cbor2.loads(event.payloads[0])
    # Left out: the preface, and the INFO frame the server sends a 1.1 client right after it.
    writes = [(started, count_trailers(data)) for started, data in recorder.writes
              if data[:4] != b"TRPC" and not _info_alone(data)]
    return service, writes, replies


def _info_alone(data: bytes) -> bool:
    """``data`` is exactly one INFO frame (type 7)."""
    return data[4] == 0x7 and len(data) == 10 + int.from_bytes(data[:4], "big")


async def test_the_first_turns_replies_leave_before_the_later_calls_start(nursery):
    """64 unary requests in one chunk: the server answers the first half before it starts the
    second, so a client can work on those answers while the server works on the rest."""
    service, writes, replies = await greet_in_one_chunk(nursery, 64)
    assert sorted(replies.values()) == sorted(f"Hello n{i}" for i in range(64))
    assert sum(count for _, count in writes) == 64
    # Two turns of 64 frames (32 calls each); the first turn's 32 replies were written when
    # exactly those 32 handlers had run, the others not yet started.
    assert writes[0] == (32, 32)
    # ... and those were the chunk's first 32 calls (handlers run concurrently, in any order).
    assert set(service.started[:32]) == {f"n{i}" for i in range(32)}


async def test_a_small_chunk_is_taken_in_one_turn(nursery):
    # 7 calls, 14 frames: under two turns' minimum (8 frames each).
    _, writes, replies = await greet_in_one_chunk(nursery, 7)
    assert len(replies) == 7
    assert writes == [(7, 7)]
