"""FramedChannel: CBOR objects over any Trio stream."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trpc
from trpc import FramedChannel, LocalProtocolError, RemoteProtocolError, TruncatedFrameError


async def test_round_trip_over_memory_streams():
    left, right = trio.testing.memory_stream_pair()
    a, b = FramedChannel(left), FramedChannel(right)
    objects = [{"a": 1}, [1, 2, 3], "text", b"\x00" * 100_000, None, 2**80]
    for obj in objects:
        await a.send(obj)
    for obj in objects:
        assert await b.receive() == obj
    await a.aclose()
    with pytest.raises(trio.EndOfChannel):
        await b.receive()


async def test_async_for_ends_on_clean_close_over_tcp(nursery):
    received = []
    done = trio.Event()

    async def handler(stream):
        async with FramedChannel(stream) as channel:
            async for obj in channel:
                received.append(obj)
        done.set()

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    port = listeners[0].socket.getsockname()[1]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with FramedChannel(stream) as channel:
        for i in range(1000):
            await channel.send({"i": i})
    with trio.fail_after(10):
        await done.wait()
    assert received == [{"i": i} for i in range(1000)]


async def test_malformed_input_raises_typed_errors():
    left, right = trio.testing.memory_stream_pair()
    channel = FramedChannel(right)
    await left.send_all(b"\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\xff\xff")  # not CBOR
    with pytest.raises(RemoteProtocolError, match="CBOR"):
        await channel.receive()

    left, right = trio.testing.memory_stream_pair()
    channel = FramedChannel(right)
    await left.send_all(b"\x00\x00\x00\x05\x00")  # half a header, then EOF
    await left.aclose()
    with pytest.raises(TruncatedFrameError):
        await channel.receive()

    left, right = trio.testing.memory_stream_pair()
    channel = FramedChannel(right, max_frame_size=1 << 14)
    await left.send_all((1 << 20).to_bytes(4, "big") + bytes(6))
    with pytest.raises(trpc.FrameTooLargeError):
        await channel.receive()


async def test_good_frames_before_garbage_are_delivered_first():
    left, right = trio.testing.memory_stream_pair()
    sender, channel = FramedChannel(left), FramedChannel(right)
    await sender.send("first")
    await left.send_all(b"\x00\x00\x00\x01\x07\x00\x00\x00\x00\x00\x01")  # type 7
    assert await channel.receive() == "first"
    with pytest.raises(RemoteProtocolError, match="unexpected frame"):
        await channel.receive()


async def test_send_limits_and_errors():
    left, right = trio.testing.memory_stream_pair()
    channel = FramedChannel(left, max_frame_size=1 << 14)
    with pytest.raises(LocalProtocolError):
        await channel.send(b"x" * (1 << 15))
    with pytest.raises(LocalProtocolError):
        await channel.send(object())
    await right.aclose()
    with pytest.raises(trpc.TransportError):
        for _ in range(100):
            await channel.send(b"x" * 1000)


async def test_message_classes_travel_too():
    from .test_messages import Point

    left, right = trio.testing.memory_stream_pair()
    await FramedChannel(left).send({"where": Point(1, 2)})
    assert await FramedChannel(right).receive() == {"where": Point(1, 2)}
