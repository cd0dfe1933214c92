"""A -> B -> C: a caller's cancellation or deadline reaches the end of a chain of servers by
itself (no code in the handlers passes anything on), and no server keeps work running."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing

import trpc
from trpc import Status


class Hop(trpc.Service):
    """Forwards ``work`` to the next hop; the last hop blocks until cancelled."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.next: trpc.Client | None = None
        self.started = trio.Event()
        self.cancelled = trio.Event()
        self.cancelled_at = 0.0
        self.reason: Status | None = None
        self.remaining: float | None = None

    @trpc.unary
    async def work(self):
        self.remaining = trpc.current_call().time_remaining()
        if self.next is not None:
            return await self.next.work()  # no deadline or cancel handling here: trpc does it
        self.started.set()
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled_at = time.perf_counter()
            self.reason = trpc.current_call().cancel_reason
            self.cancelled.set()


async def build_chain(nursery, stack: AsyncExitStack, transport: str):
    """Servers A, B, C; A's and B's handlers call the next one.  Returns (hops, servers, client)."""
    hops = [Hop("A"), Hop("B"), Hop("C")]
    servers = [trpc.Server(hop) for hop in hops]

    async def connect(server: trpc.Server) -> trpc.Client:
        if transport == "tcp":
            address = await nursery.start(server.serve_tcp, 0)
            return await stack.enter_async_context(trpc.open_client(address))
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(server.serve_stream, server_stream)
        return await stack.enter_async_context(trpc.open_client(client_stream))

    to_c = await connect(servers[2])
    hops[1].next = to_c
    to_b = await connect(servers[1])
    hops[0].next = to_b
    to_a = await connect(servers[0])
    return hops, servers, to_a


async def expect_unavailable(call) -> None:
    with pytest.raises(trpc.RpcError) as info:
        await call()
    assert info.value.status is Status.UNAVAILABLE


async def all_idle(servers) -> list[int]:
    with trio.fail_after(5):
        while any(s.running_calls for s in servers):
            await trio.sleep(0.001)
    return [s.running_calls for s in servers]


async def test_cancelling_the_client_cancels_the_whole_chain(nursery):
    async with AsyncExitStack() as stack:
        hops, servers, client = await build_chain(nursery, stack, "tcp")
        async with trio.open_nursery() as calls:
            calls.start_soon(client.work)
            with trio.fail_after(5):
                await hops[2].started.wait()
            cancelled_at = time.perf_counter()
            calls.cancel_scope.cancel()
        with trio.fail_after(5):
            await hops[2].cancelled.wait()
        latency_ms = (hops[2].cancelled_at - cancelled_at) * 1000
        print(f"\ncancel propagation client -> A -> B -> C over loopback TCP: {latency_ms:.2f} ms")
        assert hops[2].reason is Status.CANCELLED
        assert await all_idle(servers) == [0, 0, 0]
        assert hops[0].remaining == hops[1].remaining == hops[2].remaining == float("inf")


async def test_a_deadline_expires_at_every_hop(nursery, autojump_clock):
    async with AsyncExitStack() as stack:
        hops, servers, client = await build_chain(nursery, stack, "memory")
        start = trio.current_time()
        with trio.move_on_after(3) as scope:
            await client.work()
        assert scope.cancelled_caught
        assert trio.current_time() - start == pytest.approx(3, abs=1e-3)
        await hops[2].cancelled.wait()
        assert hops[2].reason is Status.DEADLINE_EXCEEDED
        # Each hop received what was left of the caller's 3 s: the deadline crossed two wires.
        assert [hop.remaining for hop in hops] == [pytest.approx(3, abs=1e-3)] * 3
        assert await all_idle(servers) == [0, 0, 0]


async def test_an_upstream_reason_is_passed_down(nursery, autojump_clock):
    """The client shuts down while the chain is busy: C learns UNAVAILABLE, the reason A got."""
    async with AsyncExitStack() as stack:
        hops, servers, _ = await build_chain(nursery, stack, "memory")
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(servers[0].serve_stream, server_stream)
        async with trpc.open_client(client_stream) as client:
            nursery.start_soon(expect_unavailable, client.work)
            await hops[2].started.wait()
            # leaving the block closes the client: its calls are cancelled with UNAVAILABLE
        await hops[2].cancelled.wait()
        assert hops[2].reason is Status.UNAVAILABLE
        assert await all_idle(servers) == [0, 0, 0]


async def test_a_dropped_connection_cancels_the_chain(nursery):
    async with AsyncExitStack() as stack:
        hops, servers, _ = await build_chain(nursery, stack, "tcp")
        host, port = await nursery.start(servers[0].serve_tcp, 0)
        stream = await trio.open_tcp_stream(host, port)
        async with trpc.open_client(stream) as client:
            nursery.start_soon(expect_unavailable, client.work)
            with trio.fail_after(5):
                await hops[2].started.wait()
            stream.socket.close()  # the TCP connection to A vanishes
        with trio.fail_after(5):
            await hops[2].cancelled.wait()
        assert hops[2].reason is Status.UNAVAILABLE
        assert await all_idle(servers) == [0, 0, 0]
