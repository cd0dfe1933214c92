"""Unary calls end to end: real TCP on loopback (or in-memory streams where the network is not
the point), both framers."""

from __future__ import annotations

import logging
import random

import pytest
import trio
import trio.testing

import trpc
from trpc import RpcError, Status

from .services import Svc


async def test_greet_over_tcp(client, framer):
    assert await client.greet("Ada") == "Hello Ada"
    assert client.framer_name == framer


async def test_server_uses_the_selected_framer(server, framer):
    assert server._framer.name == framer


async def test_keyword_arguments_and_values_round_trip(client):
    assert await client.add(1, b=2) == 3
    assert await client.add(a=5) == 5
    value = {"list": [1, 2.5, None, True], "bytes": b"\x00\xff", "nested": {"k": ["v"]}, "big": 2**70}
    assert await client.echo(value) == value
    assert await client.nothing() is None


async def test_unknown_method_is_unimplemented(client):
    with pytest.raises(RpcError) as info:
        await client.no_such_method()
    assert info.value.status is Status.UNIMPLEMENTED
    assert "no_such_method" in info.value.message


@pytest.mark.parametrize(
    "args, kwargs", [((), {}), ((1, 2, 3), {}), ((1,), {"c": 2}), ((1,), {"a": 2})]
)
async def test_arguments_that_do_not_bind_are_invalid_argument(client, args, kwargs):
    with pytest.raises(RpcError) as info:
        await client.add(*args, **kwargs)
    assert info.value.status is Status.INVALID_ARGUMENT
    assert await client.add(1, 2) == 3  # the connection is fine


async def test_handler_rpc_error_reaches_caller_with_details_and_trailers(client):
    with pytest.raises(RpcError) as info:
        await client.fail("rpc")
    error = info.value
    assert (error.status, error.message, error.details) == (Status.NOT_FOUND, "no such thing", {"id": 7})
    assert error.trailers == {"hint": "try 8"}


async def test_handler_exception_is_internal_to_that_caller_only(client, server, caplog):
    caplog.set_level(logging.ERROR, logger="trpc")
    results = {}

    async def other(i):
        results[i] = await client.sleep_then(0.01, i)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(other, i)
        with pytest.raises(RpcError) as info:
            await client.fail("crash")
    assert info.value.status is Status.INTERNAL
    assert "ValueError" in info.value.message
    assert "secret internal detail" not in info.value.message  # not leaked to the client
    assert results == {i: i for i in range(10)}
    assert any("secret internal detail" in r.getMessage() or r.exc_info for r in caplog.records)
    assert await client.greet("still here") == "Hello still here"
    async with trpc.open_client(server.address) as second:
        assert await second.greet("new client") == "Hello new client"


async def test_many_concurrent_calls_share_one_connection(client, server):
    results = {}

    async def one(i):
        results[i] = await client.sleep_then(random.random() * 0.05, {"i": i})

    async with trio.open_nursery() as nursery:
        for i in range(300):
            nursery.start_soon(one, i)
    assert results == {i: {"i": i} for i in range(300)}
    assert server.connections == 1
    assert client.calls_in_flight == 0


async def test_lost_connection_fails_every_pending_call_with_unavailable(service, nursery):
    server = trpc.Server(service)
    scope = trio.CancelScope()

    async def run_server(task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await server.serve_tcp(0, task_status=task_status)

    address = await nursery.start(run_server)
    errors = []
    async with trpc.open_client(address) as client:

        async def pending():
            try:
                await client.block()
            except RpcError as exc:
                errors.append(exc)

        async with trio.open_nursery() as calls:
            for _ in range(5):
                calls.start_soon(pending)
            await service.started.wait()
            await trio.sleep(0.05)
            scope.cancel()  # the server goes away: its connections close
        assert len(errors) == 5
        assert all(e.status is Status.UNAVAILABLE for e in errors)
        with pytest.raises(RpcError) as info:
            await client.greet("x")
        assert info.value.status is Status.UNAVAILABLE


async def test_connection_refused_names_the_address():
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(RpcError) as info:
            async with trpc.open_client(f"127.0.0.1:{port}"):
                pass
    assert info.value.status is Status.UNAVAILABLE
    assert f"127.0.0.1:{port}" in info.value.message
    assert "refused" in info.value.message.lower()


async def test_open_client_never_leaks_an_exception_group(client, server):
    with pytest.raises(KeyError):
        async with trpc.open_client(server.address) as other:
            await other.greet("x")
            raise KeyError("mine")
    with pytest.raises(RpcError):
        async with trpc.open_client(server.address) as other:
            await other.no_such_method()


async def test_not_a_trpc_server_is_unavailable(nursery):
    async def http_server(stream):
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await trio.sleep(1)

    listeners = await nursery.start(trio.serve_tcp, http_server, 0)
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(RpcError) as info:
        async with trpc.open_client(("127.0.0.1", port), connect_timeout=5):
            pass
    assert info.value.status is Status.UNAVAILABLE
    assert "not a trpc peer" in info.value.message


async def test_server_that_never_answers_times_out(nursery, autojump_clock):
    client_stream, _server_stream = trio.testing.memory_stream_pair()
    with pytest.raises(RpcError) as info:
        async with trpc.open_client(client_stream, connect_timeout=3):
            pass
    assert info.value.status is Status.UNAVAILABLE and "3" in info.value.message


async def test_call_context_carries_method_metadata_and_peer(client):
    info = await client.whoami.with_options(metadata={"x-user": "ada", "bin": b"\x01"})()
    assert info["method"] == "tests.services.Svc/whoami"  # the path of the method that runs
    assert info["metadata"] == {"x-user": "ada", "bin": b"\x01"}
    host, port = info["peer"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0


async def test_client_level_metadata(server):
    async with trpc.open_client(server.address, metadata={"tenant": "t1"}) as client:
        info = await client.whoami.with_options(metadata={"x": "y"})()
    assert info["metadata"] == {"tenant": "t1", "x": "y"}


async def test_method_names_that_clash_with_client_attributes(client):
    with pytest.raises(RpcError) as info:
        await client.method("aclose")()
    assert info.value.status is Status.UNIMPLEMENTED
    assert await client.method("greet")("Ada") == "Hello Ada"


async def test_unencodable_argument_is_invalid_argument(client):
    with pytest.raises(RpcError) as info:
        await client.echo(object())
    assert info.value.status is Status.INVALID_ARGUMENT


async def test_too_large_request_is_resource_exhausted_before_sending(service, nursery):
    server = trpc.Server(service, max_message_size=64 * 1024)
    address = await nursery.start(server.serve_tcp, 0)
    async with trpc.open_client(address) as client:
        with pytest.raises(RpcError) as info:
            await client.echo(b"x" * 100_000)
        assert info.value.status is Status.RESOURCE_EXHAUSTED
        assert await client.echo(b"x" * 60_000) == b"x" * 60_000


async def test_too_large_response_is_resource_exhausted(server):
    async with trpc.open_client(server.address, max_message_size=64 * 1024) as client:
        with pytest.raises(RpcError) as info:
            await client.echo(b"y" * 100_000)
        assert info.value.status is Status.RESOURCE_EXHAUSTED
        assert await client.greet("after") == "Hello after"


async def test_large_payloads_cross_many_frames(client):
    blob = bytes(random.getrandbits(8) for _ in range(3 * 1024 * 1024))
    assert await client.echo(blob) == blob


async def test_services_must_not_share_a_service_name():
    class A(trpc.Service, name="tests.services.Svc"):
        @trpc.unary
        async def other(self):
            return 1

    with pytest.raises(TypeError, match="two services are named 'tests.services.Svc'"):
        trpc.Server(A(), Svc())
    with pytest.raises(TypeError):
        trpc.Server(object())


def test_decorators_check_the_function_kind():
    with pytest.raises(TypeError):
        trpc.unary(lambda self: None)
    with pytest.raises(TypeError):

        class Bad(trpc.Service):
            @trpc.server_stream
            async def not_a_generator(self):
                return 1

    class Renamed(trpc.Service):
        @trpc.unary(name="hello")
        async def greet(self):
            return 1

    assert list(Renamed.__trpc_methods__) == ["hello"]
    assert Renamed.__trpc_methods__["hello"].cardinality is trpc.Cardinality.UNARY


async def test_frames_are_coalesced_into_few_writes(service, nursery):
    """200 concurrent calls: their 400 frames each way leave in a handful of send_all calls."""
    server = trpc.Server(service)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    writes = {"client": 0, "server": 0}

    def count_writes(side, send_stream):
        pump = send_stream.send_all_hook  # moves the bytes to the other end

        async def hook():
            writes[side] += 1
            await pump()

        send_stream.send_all_hook = hook

    count_writes("client", client_stream.send_stream)
    count_writes("server", server_stream.send_stream)
    nursery.start_soon(server.serve_stream, server_stream)
    async with trpc.open_client(client_stream) as client:
        await client.greet("warm up")
        before = dict(writes)
        results = []

        async def one(i):
            results.append(await client.add(i, 1))

        async with trio.open_nursery() as calls:
            for i in range(200):
                calls.start_soon(one, i)
    assert sorted(results) == list(range(1, 201))
    assert writes["client"] - before["client"] <= 10
    assert writes["server"] - before["server"] <= 20
