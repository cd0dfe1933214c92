"""Interceptors and metadata: server and client chains around every call shape."""

from __future__ import annotations

import logging
import re

import pytest
import trio
import trio.testing

import trpc
from trpc import RpcError, Status
from trpc.interceptors import (
    ClientLogging,
    ClientMetrics,
    ClientTokenAuth,
    ServerLogging,
    ServerMetrics,
    ServerTokenAuth,
)


class Shapes(trpc.Service):
    def __init__(self) -> None:
        self.seen_metadata = []
        self.cancelled = trio.Event()

    @trpc.unary
    async def hello(self, name):
        self.seen_metadata.append(dict(trpc.current_call().metadata))
        return f"hi {name}"

    @trpc.unary
    async def with_headers(self):
        call = trpc.current_call()
        call.send_headers({"h-one": "1", "bin": b"\x00\x01"})
        call.set_trailers({"t-one": "2"})
        return "done"

    @trpc.unary
    async def fails(self):
        raise RpcError(Status.NOT_FOUND, "gone")

    @trpc.unary
    async def slow(self):
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled.set()

    @trpc.server_stream
    async def count(self, n):
        self.seen_metadata.append(dict(trpc.current_call().metadata))
        for i in range(n):
            yield i

    @trpc.client_stream
    async def total(self, numbers):
        return sum([x async for x in numbers])

    @trpc.bidi_stream
    async def echo(self, messages):
        async for m in messages:
            yield m


async def connect(nursery, service, server_interceptors=(), client_interceptors=(), **client_options):
    server = trpc.Server(service, interceptors=server_interceptors)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream)
    return trpc.open_client(client_stream, interceptors=client_interceptors, **client_options)


async def agen(items):
    for item in items:
        yield item


async def test_token_auth_pair(nursery):
    service = Shapes()
    auth = ServerTokenAuth({"s3cret"})
    async with await connect(nursery, service, [auth], [ClientTokenAuth("s3cret")]) as client:
        assert await client.hello("a") == "hi a"
        assert [i async for i in client.count(3)] == [0, 1, 2]
        assert await client.total(agen([1, 2])) == 3
        async with client.echo.open() as stream:
            await stream.send("x")
            assert await stream.receive() == "x"
            await stream.done_sending()
    # The handler never sees the token.
    assert all("authorization" not in m for m in service.seen_metadata)
    async with await connect(nursery, service, [auth], [ClientTokenAuth("wrong")]) as client:
        with pytest.raises(RpcError) as info:
            await client.hello("a")
        assert info.value.status is Status.UNAUTHENTICATED
        with pytest.raises(RpcError) as info:
            async for _ in client.count(3):
                pass
        assert info.value.status is Status.UNAUTHENTICATED
    async with await connect(nursery, service, [auth]) as client:
        with pytest.raises(RpcError) as info:
            await client.total(agen([1]))
        assert info.value.status is Status.UNAUTHENTICATED and "missing" in info.value.message


async def test_metrics_count_errors_and_latency_on_both_sides(nursery, autojump_clock):
    server_metrics, client_metrics = ServerMetrics(), ClientMetrics()
    async with await connect(nursery, Shapes(), [server_metrics], [client_metrics]) as client:
        for _ in range(3):
            await client.hello("x")
        with pytest.raises(RpcError):
            await client.fails()
        assert [i async for i in client.count(2)] == [0, 1]
        with trio.move_on_after(1):
            await client.slow()
        await trio.sleep(0.1)
    # The client counts the names it sent; the server, the paths of the methods it ran.
    for metrics, prefix in ((server_metrics, f"{trpc.service_name(Shapes)}/"), (client_metrics, "")):
        snap = metrics.snapshot()
        assert snap[prefix + "hello"]["count"] == 3 and snap[prefix + "hello"]["errors"] == {}
        assert snap[prefix + "fails"]["errors"] == {"NOT_FOUND": 1}
        assert snap[prefix + "count"]["count"] == 1
        assert snap[prefix + "slow"]["errors"] == {"DEADLINE_EXCEEDED": 1}
        assert sum(snap[prefix + "hello"]["latency_buckets"].values()) == 3
    assert server_metrics.snapshot()[f"{trpc.service_name(Shapes)}/slow"]["latency_sum"] == pytest.approx(1, abs=0.01)


async def test_logging_interceptors(nursery, caplog):
    caplog.set_level(logging.INFO, logger="trpc.calls")
    async with await connect(nursery, Shapes(), [ServerLogging()], [ClientLogging()]) as client:
        await client.hello("x")
        with pytest.raises(RpcError):
            await client.fails()
        assert [i async for i in client.count(2)] == [0, 1]
    lines = [r.getMessage() for r in caplog.records if r.name == "trpc.calls"]
    path = re.escape(trpc.service_name(Shapes))  # the server logs the path of the method it ran
    assert any(re.fullmatch(path + r"/hello from \S+: OK in [\d.]+ ms", line) for line in lines)
    assert any(re.fullmatch(path + r"/fails from \S+: NOT_FOUND in [\d.]+ ms", line) for line in lines)
    assert any(line.startswith("call fails: NOT_FOUND") for line in lines)
    assert any(line.startswith("call count: OK") for line in lines)


async def test_interceptor_can_change_metadata_and_method_and_see_results(nursery):
    seen = []

    class Rewrite(trpc.ClientInterceptor):
        async def intercept(self, call, proceed):
            call.metadata["added"] = "by-client"
            if call.method == "old_name":
                call.method = "hello"
            result = await proceed()
            seen.append(("client", call.method, result))
            return result

    class Observe(trpc.ServerInterceptor):
        async def intercept(self, call, proceed):
            call.metadata["server-added"] = "yes"
            result = await proceed()
            seen.append(("server", call.method, result, call.cardinality))
            return result

    service = Shapes()
    async with await connect(nursery, service, [Observe()], [Rewrite()]) as client:
        assert await client.old_name("z") == "hi z"
    assert service.seen_metadata == [{"added": "by-client", "server-added": "yes"}]
    server_path = f"{trpc.service_name(type(service))}/hello"  # the server sees the path it resolved
    assert seen == [("server", server_path, "hi z", trpc.Cardinality.UNARY), ("client", "hello", "hi z")]


async def test_chain_order_first_is_outermost(nursery):
    order = []

    def tracer(name, base):
        class Tracer(base):
            async def intercept(self, call, proceed):
                order.append(f"{name} in")
                try:
                    return await proceed()
                finally:
                    order.append(f"{name} out")
        return Tracer()

    server_chain = [tracer("s1", trpc.ServerInterceptor), tracer("s2", trpc.ServerInterceptor)]
    client_chain = [tracer("c1", trpc.ClientInterceptor), tracer("c2", trpc.ClientInterceptor)]
    async with await connect(nursery, Shapes(), server_chain, client_chain) as client:
        await client.hello("x")
    assert order == ["c1 in", "c2 in", "s1 in", "s2 in", "s2 out", "s1 out", "c2 out", "c1 out"]


async def test_server_interceptor_sees_cancellation_and_deadline(nursery, autojump_clock):
    outcomes = []

    class Watch(trpc.ServerInterceptor):
        async def intercept(self, call, proceed):
            assert call.deadline < float("inf")  # the deadline is there before the handler runs
            try:
                return await proceed()
            except trio.Cancelled:
                outcomes.append(call.cancel_reason)
                raise

    service = Shapes()
    async with await connect(nursery, service, [Watch()]) as client:
        with trio.move_on_after(2):
            await client.slow()
        await service.cancelled.wait()
    assert outcomes == [Status.DEADLINE_EXCEEDED]


async def test_response_headers_and_trailers_reach_the_client(nursery):
    async with await connect(nursery, Shapes()) as client:
        call = client.with_headers()
        assert await call == "done"
        assert call.headers == {"h-one": "1", "bin": b"\x00\x01"}
        assert call.trailers == {"t-one": "2"}
        assert call.status is Status.OK
        async with client.with_headers() as stream:
            assert await stream.receive() == "done"
            with pytest.raises(trio.EndOfChannel):
                await stream.receive()
            assert stream.headers == {"h-one": "1", "bin": b"\x00\x01"}
            assert stream.trailers == {"t-one": "2"}


async def test_metadata_size_is_limited(nursery):
    async with await connect(nursery, Shapes()) as client:
        with pytest.raises(RpcError) as info:
            await client.hello.with_options(metadata={"big": "x" * 70_000})("a")
        assert info.value.status is Status.INVALID_ARGUMENT and "65536" in info.value.message
        with pytest.raises(RpcError):
            await client.hello.with_options(metadata={"bad": 5})("a")
        assert await client.hello("still fine") == "hi still fine"
