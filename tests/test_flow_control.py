"""Flow control end to end: bounded memory, no head-of-line blocking, no deadlock."""

from __future__ import annotations

import os
import sys

import pytest
import trio

import trpc
from trpc.wire import DEFAULT_STREAM_WINDOW

from .helpers import serve_and_connect

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "bench")


class Blobs(trpc.Service):
    def __init__(self) -> None:
        self.sent = {}

    @trpc.server_stream
    async def blobs(self, name: str, count: int, size: int):
        self.sent[name] = 0
        for _ in range(count):
            yield bytes(size)
            self.sent[name] += 1

    @trpc.bidi_stream
    async def flood_then_read(self, messages):
        """Sends 32 MiB before reading anything, then counts what the client sent."""
        for _ in range(512):
            yield bytes(64 * 1024)
        total = 0
        async for m in messages:
            total += len(m)
        yield total


@pytest.fixture
async def blob_client(nursery):
    async with serve_and_connect(nursery, Blobs()) as client:
        yield client


async def test_a_stalled_stream_does_not_stall_the_others(blob_client):
    """Stream A's reader stops after one message; stream B still completes on the same
    connection (and A's server side stops at its window instead of running ahead)."""
    with trio.fail_after(30):
        async with blob_client.blobs("A", 10_000, 64 * 1024) as a:
            assert len(await a.receive()) == 64 * 1024
            received = 0
            async for blob in blob_client.blobs("B", 400, 64 * 1024):  # 25 MiB > connection window
                received += len(blob)
            assert received == 400 * 64 * 1024
            # A's producer is held back by A's stream window (2 MiB = 32 messages, plus the one
            # being sent and the one the client took).
            assert blob_client.service.sent["A"] <= DEFAULT_STREAM_WINDOW // (64 * 1024) + 2


async def test_a_stalled_stream_of_small_messages_holds_the_producer_at_its_window(blob_client):
    """Small messages go through the stream's batch (see _server._BATCH_MESSAGES): the producer
    still stops near the stream window when the reader stalls, and what waits unsent on the
    server stays within one batch; another stream on the connection still completes."""
    from trpc._server import _BATCH_MESSAGES

    size = 100  # bytes: batched (a CBOR head of 2 bytes more)
    with trio.fail_after(30):
        async with blob_client.blobs("A", 10**7, size) as a:
            assert len(await a.receive()) == size
            received = 0
            async for blob in blob_client.blobs("B", 50_000, size):
                received += len(blob)
            assert received == 50_000 * size
            await trio.sleep(0.2)  # let A's producer run into its window
            window_messages = DEFAULT_STREAM_WINDOW // (size + 2)
            sent = blob_client.service.sent["A"]
            assert window_messages <= sent <= window_messages + 2 * _BATCH_MESSAGES, sent


async def test_bidi_both_sides_sending_at_full_speed_do_not_deadlock(blob_client):
    """The server sends 32 MiB before it reads; the client sends 32 MiB (from another task)
    while it reads: both directions far beyond the windows, and nothing deadlocks."""
    with trio.fail_after(60):
        async with blob_client.flood_then_read.open() as stream:

            async def send_all():
                for _ in range(512):
                    await stream.send(bytes(64 * 1024))
                await stream.done_sending()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                replies = [m async for m in stream]
    assert len(replies) == 513
    assert replies[-1] == 512 * 64 * 1024


@pytest.mark.parametrize("total_mib", [256])
def test_streaming_to_a_slow_reader_keeps_memory_bounded(framer, total_mib):
    """bench/memory.py in two processes: 256 MiB to a reader that keeps pausing.  Each side's
    peak RSS grows by a few MiB (stream window 2 MiB + one 64 KiB message + buffers), nowhere
    near the amount streamed; we allow 32 MiB."""
    sys.path.insert(0, BENCH)
    try:
        import memory
    finally:
        sys.path.pop(0)
    report = memory.run(total_mib, 64, framer, timeout=120)
    assert report["server_growth_mib"] < 32, report
    assert report["client_growth_mib"] < 32, report
