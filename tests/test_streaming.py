"""The streaming call shapes, all on the one stream mechanism."""

from __future__ import annotations

import pytest
import trio

import trpc
from trpc import RpcError, Status

from .helpers import serve_and_connect


class Streams(trpc.Service):
    def __init__(self) -> None:
        self.closed = trio.Event()
        self.produced = 0
        self.acks, self.acked = trio.open_memory_channel(0)

    @trpc.server_stream
    async def count(self, n: int, fail_at: int | None = None):
        for i in range(n):
            if i == fail_at:
                raise RpcError(Status.ABORTED, f"stopped at {i}", {"at": i})
            yield i

    @trpc.server_stream
    async def forever(self):
        try:
            while True:
                self.produced += 1
                yield self.produced
                await trio.sleep(0)
        finally:
            self.closed.set()

    @trpc.server_stream
    async def on_request(self, n: int):
        """Yields 0..n-1, each only once the client has acknowledged the one before (by a call
        to ack): a message held back until the next one is produced would deadlock."""
        for i in range(n):
            yield i
            await self.acked.receive()

    @trpc.unary
    async def ack(self) -> None:
        await self.acks.send(None)

    @trpc.client_stream
    async def total(self, numbers):
        return sum([x async for x in numbers])

    @trpc.client_stream
    async def first_only(self, numbers):
        async for x in numbers:
            return x
        return None

    @trpc.bidi_stream
    async def echo(self, messages):
        async for m in messages:
            yield m

    @trpc.bidi_stream
    async def late_sender(self, messages):
        """Receives everything first, then keeps sending after the client is done."""
        items = [m async for m in messages]
        for m in reversed(items):
            yield m


@pytest.fixture
async def streams(nursery):
    async with serve_and_connect(nursery, Streams()) as client:
        yield client


async def agen(items):
    for item in items:
        yield item


async def test_server_streaming(streams):
    assert [i async for i in streams.count(5)] == [0, 1, 2, 3, 4]
    assert [i async for i in streams.count(0)] == []


async def test_each_message_leaves_without_waiting_for_the_next(streams):
    """Small messages are framed in batches; a handler that blocks after a yield must not
    keep that message back (the writer frames the batch when the handler blocks)."""
    received = []
    with trio.fail_after(10):
        async for i in streams.on_request(300):  # more than one batch's worth
            received.append(i)
            await streams.ack()
    assert received == list(range(300))


async def test_error_mid_stream_comes_after_the_messages_already_sent(streams):
    received = []
    with pytest.raises(RpcError) as info:
        async for i in streams.count(10, fail_at=3):
            received.append(i)
    assert received == [0, 1, 2]
    assert (info.value.status, info.value.details) == (Status.ABORTED, {"at": 3})


async def test_client_streaming(streams):
    assert await streams.total(agen(range(100))) == 4950
    assert await streams.total(agen([])) == 0


async def test_client_streaming_server_answers_early(streams):
    assert await streams.first_only(agen(range(1000))) == 0


async def test_bidi_interleaved(streams):
    async with streams.echo.open() as stream:
        for i in range(20):
            assert await stream.send({"n": i})
            assert await stream.receive() == {"n": i}
        await stream.done_sending()
        with pytest.raises(trio.EndOfChannel):
            await stream.receive()
    assert stream.status is Status.OK


async def test_half_close_then_server_keeps_sending(streams):
    async with streams.late_sender.open() as stream:
        for i in range(5):
            await stream.send(i)
        await stream.done_sending()
        assert [m async for m in stream] == [4, 3, 2, 1, 0]


async def test_breaking_out_of_a_stream_cancels_the_handler(streams):
    async for i in streams.forever():
        if i == 3:
            break
    with trio.fail_after(5):
        await streams.service.closed.wait()
    while streams.server.running_calls:
        await trio.sleep(0.01)
    produced = streams.service.produced
    await trio.sleep(0.05)
    assert streams.service.produced == produced  # nothing runs any more


async def test_leaving_the_stream_context_cancels_the_handler(streams):
    async with streams.count(10**9) as replies:
        assert await replies.receive() == 0
    with trio.fail_after(5):
        while streams.server.running_calls:
            await trio.sleep(0.01)


async def test_send_after_done_sending_is_an_error(streams):
    async with streams.echo.open() as stream:
        await stream.done_sending()
        with pytest.raises(trio.ClosedResourceError):
            await stream.send(1)


async def test_unimplemented_streaming_method(streams):
    with pytest.raises(RpcError) as info:
        async for _ in streams.nope():
            pass
    assert info.value.status is Status.UNIMPLEMENTED
    async with streams.nope.open() as stream:
        await stream.send(1)
        with pytest.raises(RpcError):
            await stream.receive()
