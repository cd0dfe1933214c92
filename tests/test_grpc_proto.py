"""The gRPC wire in protobuf, end to end, against clients no one here wrote: grpcio's sync and
grpc.aio stacks with stubs that grpcio-tools generates from the ``.proto`` ``trpc proto``
prints, grpcio-health-checking's ``HealthStub``, and grpcio-reflection's client-side descriptor
database.

The service under test, ``e2eshop.Shop``, lives here so that ``trpc proto
tests.test_grpc_proto:Shop`` can print its file.  protoc's output is imported once per process
(generated modules register their files in protobuf's default pool).  grpcio blocks (sync) or
runs its own asyncio loop (aio), so its calls run in a thread while the server runs in the
test's Trio loop, as in tests/test_grpc_wire.py."""

from __future__ import annotations

import asyncio
import importlib
import math
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator

import pytest

pytest.importorskip("google.protobuf")
pytest.importorskip("grpc_tools")

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
import trio  # noqa: E402

import trpc  # noqa: E402
from trpc import RpcError, Status  # noqa: E402
from trpc.grpc._proto import proto_files  # noqa: E402

from .test_grpc_wire import in_thread, target  # noqa: E402

T = 20  # bound on every wait
LIMIT = 1 << 20  # the server's max message size in these tests
REPO = Path(__file__).resolve().parent.parent


@trpc.message("e2eshop.Item")
class Item:
    sku: str = trpc.field(1)
    quantity: int = trpc.field(2, default=1)
    price: float = trpc.field(3, default=0.0)
    tags: list[str] = trpc.field(4, default_factory=list)
    note: str | None = trpc.field(5, default=None)


class Shop(trpc.Service, name="e2eshop.Shop"):
    """Every call shape with a message class, plus the methods the wire's semantics need."""

    def __init__(self) -> None:
        self.started = trio.Event()
        self.cancelled = trio.Event()
        self.cancel_reasons: list = []

    @trpc.unary
    async def quote(self, item: Item) -> Item:
        return Item(item.sku, item.quantity, price=2.5 * item.quantity, tags=[*item.tags, "quoted"],
                    note=item.note)

    @trpc.unary
    async def find(self, sku: str, limit: int = 2) -> list[str]:
        return [f"{sku}-{i}" for i in range(limit)]

    @trpc.server_stream
    async def restock(self, sku: str, count: int) -> AsyncIterator[Item]:
        for i in range(count):
            yield Item(sku, i)

    @trpc.client_stream
    async def order(self, items: AsyncIterator[Item]) -> float:
        return sum([item.quantity * item.price async for item in items])

    @trpc.bidi_stream
    async def chat(self, lines: AsyncIterator[str]) -> AsyncIterator[str]:
        async for line in lines:
            yield line.upper()

    @trpc.unary
    async def remaining(self) -> list[float]:
        """The deadline the handler sees: [time_remaining(), whether ``deadline`` is set]."""
        call = trpc.current_call()
        return [call.time_remaining(), float(call.deadline != math.inf)]

    @trpc.unary
    async def block(self) -> None:
        self.started.set()
        try:
            await trio.sleep_forever()
        finally:
            self.cancel_reasons.append(trpc.current_call().cancel_reason)
            self.cancelled.set()

    @trpc.unary
    async def fail(self, code: int, message: str) -> None:
        raise RpcError(Status(code), message)

    @trpc.unary
    async def meta(self) -> dict[str, bytes]:
        call = trpc.current_call()
        call.send_headers({"h-text": "early", "h-bin": b"\x00\xff"})
        call.set_trailers({"t-text": "late", "t-bin": b"\x01\x02"})
        return {key: value if isinstance(value, bytes) else value.encode() for key, value in call.metadata.items()}

    @trpc.unary
    async def echo(self, data: bytes) -> int:
        return len(data)

    @trpc.unary
    async def size(self, n: int) -> bytes:
        return b"x" * n


# ------------------------------------------------------------------------- stubs from trpc proto
@pytest.fixture(scope="module")
def pb(tmp_path_factory) -> dict:
    """protoc's modules for the file ``trpc proto tests.test_grpc_proto:Shop`` prints (the CLI,
    in a subprocess), imported once per process."""
    cached = getattr(pb, "cache", None)
    if cached is not None:
        return cached
    out = tmp_path_factory.mktemp("e2eshop")
    printed = subprocess.run([sys.executable, "-m", "trpc", "proto", "tests.test_grpc_proto:Shop"],
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == proto_files([Shop])["e2eshop.proto"]  # the CLI prints what the API returns
    (out / "e2eshop.proto").write_text(printed.stdout)
    compiled = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"--python_out={out}",
                               f"--grpc_python_out={out}", "e2eshop.proto"],
                              capture_output=True, text=True, cwd=out, timeout=120)
    assert compiled.returncode == 0, compiled.stderr
    sys.path.insert(0, str(out))
    try:
        modules = {"pb2": importlib.import_module("e2eshop_pb2"), "grpc": importlib.import_module("e2eshop_pb2_grpc")}
    finally:
        sys.path.remove(str(out))
    pb.cache = modules
    return modules


@pytest.fixture
def shop() -> Shop:
    return Shop()


@pytest.fixture
async def served(shop, nursery):
    server = trpc.Server(shop, max_message_size=LIMIT)
    server.address = await nursery.start(server.serve_tcp, 0)
    return server


EXPECTED = {
    "unary": ("a", 3, 7.5, ["x", "quoted"], "gift"),
    "unary_defaults": ["s-0", "s-1"],
    "server_stream": [("s", 0), ("s", 1), ("s", 2)],
    "client_stream": 2 * 1.5 + 3 * 2.0,
    "bidi": ["HI", "THERE"],
    "empty_client_stream": 0.0,
}


def sync_calls(pb, address) -> dict:
    m = pb["pb2"]
    with grpc.insecure_channel(target(address)) as channel:
        stub = pb["grpc"].ShopStub(channel)
        quoted = stub.quote(m.Item(sku="a", quantity=3, tags=["x"], note="gift"), timeout=T)
        return {
            "unary": (quoted.sku, quoted.quantity, quoted.price, list(quoted.tags), quoted.note),
            "unary_defaults": list(stub.find(m.ShopFindRequest(sku="s"), timeout=T).value),
            "server_stream": [(i.sku, i.quantity) for i in stub.restock(m.ShopRestockRequest(sku="s", count=3),
                                                                          timeout=T)],
            "client_stream": stub.order(iter([m.Item(sku="a", quantity=2, price=1.5),
                                              m.Item(sku="b", quantity=3, price=2.0)]), timeout=T).value,
            "bidi": [r.value for r in stub.chat(iter([m.ShopChatRequest(value="hi"),
                                                      m.ShopChatRequest(value="there")]), timeout=T)],
            "empty_client_stream": stub.order(iter([]), timeout=T).value,
        }


async def test_a_sync_grpcio_client_with_generated_stubs_makes_every_call_shape(pb, served):
    assert await in_thread(sync_calls, pb, served.address) == EXPECTED


def aio_calls(pb, address) -> dict:
    m = pb["pb2"]

    async def main():
        async with grpc.aio.insecure_channel(target(address)) as channel:
            stub = pb["grpc"].ShopStub(channel)

            async def items():
                yield m.Item(sku="a", quantity=2, price=1.5)
                yield m.Item(sku="b", quantity=3, price=2.0)

            quoted = await stub.quote(m.Item(sku="a", quantity=3, tags=["x"], note="gift"), timeout=T)
            chat = stub.chat(timeout=T)
            answers = []
            for line in ("hi", "there"):  # one request, one answer: the server answers as it reads
                await chat.write(m.ShopChatRequest(value=line))
                answers.append((await chat.read()).value)
            await chat.done_writing()
            assert await chat.read() is grpc.aio.EOF
            return {
                "unary": (quoted.sku, quoted.quantity, quoted.price, list(quoted.tags), quoted.note),
                "unary_defaults": list((await stub.find(m.ShopFindRequest(sku="s"), timeout=T)).value),
                "server_stream": [(i.sku, i.quantity) async for i in
                                  stub.restock(m.ShopRestockRequest(sku="s", count=3), timeout=T)],
                "client_stream": (await stub.order(items(), timeout=T)).value,
                "bidi": answers,
                "empty_client_stream": (await stub.order(iter([]), timeout=T)).value,
            }

    return asyncio.run(main())


async def test_a_grpc_aio_client_with_generated_stubs_makes_every_call_shape(pb, served):
    assert await in_thread(aio_calls, pb, served.address) == EXPECTED


async def test_an_absent_optional_field_reads_as_none_and_a_present_one_as_itself(pb, served):
    m = pb["pb2"]

    def run():
        with grpc.insecure_channel(target(served.address)) as channel:
            stub = pb["grpc"].ShopStub(channel)
            bare = stub.quote(m.Item(sku="b"), timeout=T)
            return bare.HasField("note"), bare.quantity, stub.find(m.ShopFindRequest(sku="s", limit=0), timeout=T)

    has_note, quantity, none_found = await in_thread(run)
    # quantity's default (1) applies when the client leaves it out; note stays None, so absent.
    assert (has_note, quantity, list(none_found.value)) == (False, 1, [])


# ------------------------------------------------------------------------- deadlines, cancellation
async def test_the_handler_sees_the_grpc_timeout_as_its_deadline(pb, served):
    def run():
        with grpc.insecure_channel(target(served.address)) as channel:
            stub = pb["grpc"].ShopStub(channel)
            request = pb["pb2"].ShopRemainingRequest()
            return list(stub.remaining(request, timeout=5).value), list(stub.remaining(request).value)

    (left, has_deadline), (unbounded, no_deadline) = await in_thread(run)
    assert 4 < left <= 5.1 and has_deadline == 1.0  # grpc-core rounds the time left up to its unit
    assert unbounded == math.inf and no_deadline == 0.0


async def test_a_passed_deadline_is_deadline_exceeded_and_cancels_the_handler(pb, served, shop):
    def run():
        with grpc.insecure_channel(target(served.address)) as channel:
            with pytest.raises(grpc.RpcError) as info:
                pb["grpc"].ShopStub(channel).block(pb["pb2"].ShopBlockRequest(), timeout=0.5)
            return info.value.code()

    assert await in_thread(run) == grpc.StatusCode.DEADLINE_EXCEEDED
    with trio.fail_after(T):
        await shop.cancelled.wait()
    # The server's timer races the client's RST_STREAM (which carries no reason).
    assert shop.cancel_reasons[0] in (Status.DEADLINE_EXCEEDED, Status.CANCELLED)


async def test_a_sync_client_cancel_cancels_the_handler(pb, served, shop):
    channel = grpc.insecure_channel(target(served.address))
    try:
        future = await in_thread(pb["grpc"].ShopStub(channel).block.future, pb["pb2"].ShopBlockRequest())
        with trio.fail_after(T):
            await shop.started.wait()
        assert await in_thread(future.cancel)
        with trio.fail_after(T):
            await shop.cancelled.wait()
        assert shop.cancel_reasons == [Status.CANCELLED]
    finally:
        channel.close()


async def test_a_grpc_aio_client_cancel_cancels_the_handler(pb, served, shop):
    token = trio.lowlevel.current_trio_token()

    def run():
        async def main():
            async with grpc.aio.insecure_channel(target(served.address)) as channel:
                call = pb["grpc"].ShopStub(channel).block(pb["pb2"].ShopBlockRequest(), timeout=T)
                await asyncio.to_thread(trio.from_thread.run, shop.started.wait, trio_token=token)
                assert call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                return await call.code()

        return asyncio.run(main())

    assert await in_thread(run) == grpc.StatusCode.CANCELLED
    with trio.fail_after(T):
        await shop.cancelled.wait()
    assert shop.cancel_reasons == [Status.CANCELLED]


# ------------------------------------------------------------------------- statuses, metadata, sizes
@pytest.mark.parametrize("code, message", [
    (Status.NOT_FOUND, "no such item"),
    (Status.FAILED_PRECONDITION, "nicht vorrätig – ü ✓ 100% \r\n done"),
    (Status.UNAVAILABLE, "东京 overloaded 🚚"),
])
async def test_statuses_and_unicode_messages_reach_a_protobuf_client(pb, served, code, message):
    def run():
        with grpc.insecure_channel(target(served.address)) as channel:
            with pytest.raises(grpc.RpcError) as info:
                pb["grpc"].ShopStub(channel).fail(pb["pb2"].ShopFailRequest(code=int(code), message=message),
                                                   timeout=T)
            return info.value.code(), info.value.details()

    status, details = await in_thread(run)
    assert status.value[0] == int(code)
    assert details == message


async def test_request_bytes_that_do_not_parse_are_invalid_argument(served):
    def run():
        with grpc.insecure_channel(target(served.address)) as channel:
            raw = channel.unary_unary("/e2eshop.Shop/quote")  # bytes in, bytes out
            with pytest.raises(grpc.RpcError) as info:
                raw(b"\x0a\x05ab", timeout=T)  # field 1, five bytes long, two bytes given
            return info.value.code()

    assert await in_thread(run) == grpc.StatusCode.INVALID_ARGUMENT


async def test_metadata_travels_both_ways_with_a_protobuf_client(pb, served):
    def run():
        with grpc.insecure_channel(target(served.address)) as channel:
            response, call = pb["grpc"].ShopStub(channel).meta.with_call(
                pb["pb2"].ShopMetaRequest(), timeout=T, metadata=[("m-text", "hi"), ("m-bin", b"\x00\x10\xff")])
            return dict(response.value), dict(call.initial_metadata()), dict(call.trailing_metadata())

    seen, initial, trailing = await in_thread(run)
    assert seen["m-text"] == b"hi" and seen["m-bin"] == b"\x00\x10\xff"
    assert not any(key.startswith("grpc-") or key in ("te", "content-type") for key in seen)
    assert initial["h-text"] == "early" and initial["h-bin"] == b"\x00\xff"
    assert trailing["t-text"] == "late" and trailing["t-bin"] == b"\x01\x02"


async def test_messages_near_the_size_limit_pass_and_over_it_are_resource_exhausted(pb, served):
    m = pb["pb2"]

    def run():
        with grpc.insecure_channel(target(served.address)) as channel:
            stub = pb["grpc"].ShopStub(channel)
            near = m.ShopEchoRequest(data=b"x" * (LIMIT - 8))
            assert near.ByteSize() <= LIMIT
            accepted = stub.echo(near, timeout=T).value
            over = m.ShopEchoRequest(data=b"x" * LIMIT)
            assert over.ByteSize() > LIMIT
            with pytest.raises(grpc.RpcError) as refused:
                stub.echo(over, timeout=T)
            big = len(stub.size(m.ShopSizeRequest(n=3 << 20), timeout=T).value)  # grpcio takes 4 MiB
            return accepted, refused.value, big

    accepted, refused, big = await in_thread(run)
    assert accepted == LIMIT - 8
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "exceeds" in refused.details()
    assert big == 3 << 20


# ------------------------------------------------------------------------- health
async def test_grpcio_health_checkings_client_sees_serving_then_not_serving(served):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def check(service: str):
        with grpc.insecure_channel(target(served.address)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=T).status
            except grpc.RpcError as error:
                return error.code()

    SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert await in_thread(check, "") == SERVING
    assert await in_thread(check, "e2eshop.Shop") == SERVING
    assert await in_thread(check, "no.Such") == grpc.StatusCode.NOT_FOUND
    served.set_health("e2eshop.Shop", "NOT_SERVING")
    assert await in_thread(check, "e2eshop.Shop") == NOT_SERVING
    assert await in_thread(check, "") == SERVING


async def test_grpcio_health_checkings_watch_streams_a_change(served):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def watch():
        with grpc.insecure_channel(target(served.address)) as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="e2eshop.Shop"), timeout=T)
            statuses = [next(call).status]
            trio.from_thread.run_sync(served.set_health, "e2eshop.Shop", "NOT_SERVING")
            statuses.append(next(call).status)
            trio.from_thread.run_sync(served.set_health, "e2eshop.Shop", "SERVING")
            statuses.append(next(call).status)
            call.cancel()
            return statuses

    response = health_pb2.HealthCheckResponse
    assert await in_thread(watch) == [response.SERVING, response.NOT_SERVING, response.SERVING]


# ------------------------------------------------------------------------- reflection
async def test_grpcio_reflections_descriptor_database_lists_services_and_resolves_a_method(pb, served):
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    def run():
        with grpc.insecure_channel(target(served.address)) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = list(database.get_services())
            pool = descriptor_pool.DescriptorPool(database)
            quote = pool.FindMethodByName("e2eshop.Shop.quote")
            restock = pool.FindMethodByName("e2eshop.Shop.restock")
            check = pool.FindMethodByName("grpc.health.v1.Health.Check")
            # The types reflection gave, with no .proto at hand, make a call the server understands.
            item = message_factory.GetMessageClass(quote.input_type)
            call = channel.unary_unary("/e2eshop.Shop/quote", request_serializer=item.SerializeToString,
                                       response_deserializer=message_factory.GetMessageClass(
                                           quote.output_type).FromString)
            answer = call(item(sku="r", quantity=2), timeout=T)
            return services, quote, restock, check, (answer.sku, answer.price, list(answer.tags))

    services, quote, restock, check, answer = await in_thread(run)
    assert set(services) == {"e2eshop.Shop", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                             "grpc.reflection.v1alpha.ServerReflection"}
    assert (quote.input_type.full_name, quote.output_type.full_name) == ("e2eshop.Item", "e2eshop.Item")
    assert [f.name for f in quote.input_type.fields] == ["sku", "quantity", "price", "tags", "note"]
    assert (restock.input_type.full_name, restock.output_type.full_name, restock.server_streaming) == (
        "e2eshop.ShopRestockRequest", "e2eshop.Item", True)
    assert check.output_type.fields_by_name["status"].enum_type.values_by_name["SERVING"].number == 1
    assert answer == ("r", 5.0, ["quoted"])


async def test_reflection_v1_answers_a_grpcio_client_with_the_same_messages(served):
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2  # v1's messages are the same bytes

    def run():
        with grpc.insecure_channel(target(served.address)) as channel:
            info = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                         request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                         response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
            return list(info(iter([reflection_pb2.ServerReflectionRequest(list_services=""),
                                   reflection_pb2.ServerReflectionRequest(file_containing_symbol="e2eshop.Item"),
                                   reflection_pb2.ServerReflectionRequest(file_containing_symbol="e2eshop.Nope")]),
                             timeout=T))

    listed, found, missing = await in_thread(run)
    assert "e2eshop.Shop" in [s.name for s in listed.list_services_response.service]
    [data] = found.file_descriptor_response.file_descriptor_proto
    fdp = descriptor_pb2.FileDescriptorProto.FromString(data)
    assert (fdp.name, fdp.package, [s.name for s in fdp.service]) == ("e2eshop.proto", "e2eshop", ["Shop"])
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_a_client_that_refuses_a_large_response_says_so_and_the_connection_serves_on(pb, served):
    m = pb["pb2"]

    def run():
        options = [("grpc.max_receive_message_length", LIMIT)]
        with grpc.insecure_channel(target(served.address), options=options) as channel:
            stub = pb["grpc"].ShopStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.size(m.ShopSizeRequest(n=LIMIT), timeout=T)  # the field's tag and length make it over
            return refused.value.code(), len(stub.size(m.ShopSizeRequest(n=LIMIT - 8), timeout=T).value)

    assert await in_thread(run) == (grpc.StatusCode.RESOURCE_EXHAUSTED, LIMIT - 8)
