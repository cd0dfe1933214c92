"""client.stub(...): a service's methods on a client, read from the service class or from a
typing.Protocol that describes it, making real calls of each shape over the in-memory pair
(what the type checkers see of the same stubs is tests/test_typing.py's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest
import trio

import trpc
import trpc.testing
from trpc.examples import Entry, Greeter, Store
from trpc.examples.typed_client import GreeterAPI


class Probe(trpc.Service, name="probe.Probe"):
    """Reports what the call carried, and sleeps for deadlines."""

    @trpc.unary
    async def metadata(self, key: str) -> Any:
        return trpc.current_call().metadata.get(key)

    @trpc.unary
    async def nap(self, seconds: float) -> float:
        await trio.sleep(seconds)
        return seconds

    def not_a_method(self) -> str:
        return "server side only"


async def _numbers() -> AsyncIterator[int]:
    for n in (4, 5, 6):
        yield n


async def test_a_stub_of_the_service_class_calls_each_of_the_four_shapes():
    async with trpc.testing.open_test_client(Greeter()) as client:
        greeter = client.stub(Greeter)
        assert await greeter.greet("Ada") == "Hello Ada"
        assert [i async for i in greeter.count(3)] == [0, 1, 2]
        assert await greeter.total([1, 2, 3]) == 6
        assert await greeter.total(_numbers()) == 15
        assert [reply async for reply in greeter.echo(["a", "b"])] == ["a", "b"]


async def test_a_stub_of_a_protocol_with_the_services_name_calls_the_service_by_path():
    async with trpc.testing.open_test_client(Greeter(), Store()) as client:
        api = client.stub(GreeterAPI, name="hello.Greeter")
        assert await api.greet("Ada") == "Hello Ada"
        assert [i async for i in api.count(2)] == [0, 1]
        assert await api.total(range(4)) == 6
        assert [reply async for reply in api.echo(iter(["x"]))] == ["x"]
        assert "hello.Greeter" in repr(api)


async def test_a_stub_of_a_protocol_without_a_name_calls_by_short_names():
    async with trpc.testing.open_test_client(Greeter()) as client:
        api = client.stub(GreeterAPI)
        assert await api.greet("Ada") == "Hello Ada"
        assert "short names" in repr(api)


async def test_a_protocol_named_wrongly_reaches_no_service():
    async with trpc.testing.open_test_client(Greeter()) as client:
        api = client.stub(GreeterAPI, name="hello.Nobody")
        with pytest.raises(trpc.RpcError) as info:
            await api.greet("Ada")
        assert info.value.status is trpc.Status.UNIMPLEMENTED


async def test_a_stubs_options_apply_to_every_call(autojump_clock):
    async with trpc.testing.open_test_client(Probe()) as client:
        tagged = client.stub(Probe, metadata={"who": "stub"})
        assert await tagged.metadata("who") == "stub"
        assert await client.stub(Probe).metadata("who") is None
        hurried = client.stub(Probe, timeout=1)
        with pytest.raises(trpc.RpcError) as info:
            await hurried.nap(5)
        assert info.value.status is trpc.Status.DEADLINE_EXCEEDED
        assert await client.stub(Probe, timeout=10).nap(5) == 5


async def test_a_stub_has_only_the_decorated_methods():
    async with trpc.testing.open_test_client(Probe()) as client:
        probe = client.stub(Probe)
        with pytest.raises(AttributeError):
            probe.not_a_method()


async def test_a_stub_carries_messages_both_ways():
    async with trpc.testing.open_test_client(Store()) as client:
        store = client.stub(Store)
        assert await store.put_many([Entry("a", 1), Entry("b", 2)]) == 2
        assert await store.get("b") == Entry("b", 2)
        assert [entry.key async for entry in store.scan("")] == ["a", "b"]


async def test_a_stub_is_made_only_from_a_class_that_declares_methods():
    class Empty(Protocol):
        def nothing(self) -> None: ...

    async with trpc.testing.open_test_client(Greeter()) as client:
        with pytest.raises(TypeError, match="declares no method"):
            client.stub(Empty)
        with pytest.raises(TypeError, match="made from a class"):
            client.stub(Greeter())  # type: ignore[arg-type]
        with pytest.raises(trpc.UsageError):
            client.stub(Greeter, timeout=-1)
        with pytest.raises(TypeError, match="identifiers joined by dots"):
            client.stub(GreeterAPI, name="hello.Greeter/greet")


async def test_a_streaming_request_method_called_directly_takes_any_iterable():
    greeter = Greeter()
    assert await greeter.total([1, 2]) == 3
    assert await greeter.total(_numbers()) == 15
    assert [reply async for reply in greeter.echo(("p", "q"))] == ["p", "q"]


def test_a_protocols_streaming_response_declared_with_def_is_refused_in_a_service():
    with pytest.raises(TypeError, match="async generator function"):
        class Wrong(trpc.Service):
            @trpc.server_stream
            def count(self, n: int) -> AsyncIterator[int]: ...

    with pytest.raises(TypeError, match="async generator function"):
        @trpc.server_stream  # type: ignore[arg-type]  # the checkers refuse it too
        async def not_a_generator(self: Any) -> int:
            return 1


class Renamed(trpc.Service, name="probe.Renamed"):
    @trpc.bidi_stream(name="Shout")
    async def shout(self, words: AsyncIterator[str]) -> AsyncIterator[str]:
        async for word in words:
            yield word.upper()


class RenamedImpl(Renamed):
    """An implementation of a named service keeps its name (and its methods' names)."""


async def test_a_stub_calls_a_method_by_its_wire_name_through_its_python_attribute():
    async with trpc.testing.open_test_client(RenamedImpl()) as client:
        for cls in (Renamed, RenamedImpl):
            renamed = client.stub(cls)
            assert [word async for word in renamed.shout(["hi", "yo"])] == ["HI", "YO"]
        with pytest.raises(trpc.RpcError) as info:
            await client.stub(Renamed, name="probe.Other").shout(["x"]).__anext__()
        assert info.value.status is trpc.Status.UNIMPLEMENTED
