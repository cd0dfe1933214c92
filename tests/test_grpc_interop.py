"""gRPC's interop client scenarios (doc/interop-test-descriptions.md in grpc/grpc), run by
grpcio's sync client against trpc's gRPC wire.

The server is tests/interop_service.py's ``grpc.testing.TestService`` on a real loopback TCP
port, in the test's Trio loop; the client's stubs are what grpcio-tools generates from the
files ``trpc proto tests.interop_service:TestService --out DIR`` writes (the CLI, in a
subprocess).  Each scenario is one test and asserts what its description requires of the
client.  grpcio blocks, so its calls run in a thread (``in_thread``).

Scenarios not here: the compression ones (the interop messages' ``BoolValue`` fields have no
trpc spelling, see tests/interop_service.py), and those about auth, TLS, load balancing and
channel options, which are not about the wire this file exercises.

protoc names the generated modules after the files' paths, ``grpc.testing_pb2`` and
``tests.interop_service_pb2``, inside packages that already exist (grpcio's ``grpc``, this
repository's ``tests``); :func:`_load` puts each in ``sys.modules`` under that name, so the
generated imports find them without the out directory shadowing either package.
"""

from __future__ import annotations

import importlib.util
import queue
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest

pytest.importorskip("google.protobuf")
pytest.importorskip("grpc_tools")

import grpc  # type: ignore[import-untyped]  # noqa: E402
import trio  # noqa: E402

import trpc  # noqa: E402
from trpc.grpc._proto import proto_files  # noqa: E402

from .interop_service import ECHO_INITIAL, ECHO_TRAILING, TestService  # noqa: E402
from .test_grpc_wire import in_thread, target  # noqa: E402

T = 20  # bound on every wait
REPO = Path(__file__).resolve().parent.parent
PB = dict[str, ModuleType]  # the generated modules: "pb2" (messages) and "grpc" (stubs)
Address = tuple[str, int]

# The interop descriptions' sizes.
LARGE_REQUEST, LARGE_RESPONSE = 271828, 314159
STREAM_REQUESTS = [27182, 8, 1828, 45904]
STREAM_RESPONSES = [31415, 9, 2653, 58979]
SPECIAL_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"
ECHO_INITIAL_VALUE = "test_initial_metadata_value"
ECHO_TRAILING_VALUE = b"\xab\xab\xab"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pb(tmp_path_factory: pytest.TempPathFactory) -> PB:
    """protoc's modules for the files ``trpc proto`` writes for the interop service, imported
    once per process (generated modules register their files in protobuf's default pool)."""
    cached: PB | None = getattr(pb, "cache", None)
    if cached is not None:
        return cached
    out = tmp_path_factory.mktemp("interop")
    printed = subprocess.run([sys.executable, "-m", "trpc", "proto", "tests.interop_service:TestService",
                              "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert printed.returncode == 0, printed.stderr
    files = proto_files([TestService])
    assert sorted(files) == ["grpc/testing.proto", "tests/interop_service.proto"]
    for name, text in files.items():  # the CLI writes what the API returns
        assert (out / name).read_text() == text
    compiled = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"--python_out={out}",
                               f"--grpc_python_out={out}", *files], capture_output=True, text=True, cwd=out,
                              timeout=120)
    assert compiled.returncode == 0, compiled.stderr
    _load("tests.interop_service_pb2", out / "tests" / "interop_service_pb2.py")
    modules = {"pb2": _load("grpc.testing_pb2", out / "grpc" / "testing_pb2.py")}
    modules["grpc"] = _load("grpc.testing_pb2_grpc", out / "grpc" / "testing_pb2_grpc.py")
    pb.cache = modules  # type: ignore[attr-defined]
    return modules


@pytest.fixture
def service() -> TestService:
    return TestService()


@pytest.fixture
async def address(service: TestService, nursery: trio.Nursery) -> Address:
    server = trpc.Server(service)
    host, port = await nursery.start(server.serve_tcp, 0)
    return host, port


def stub(pb: PB, channel: grpc.Channel) -> Any:
    return pb["grpc"].TestServiceStub(channel)


def output_request(pb: PB, response_sizes: list[int], payload_size: int = 0,
                   **fields: Any) -> Any:
    m = pb["pb2"]
    return m.StreamingOutputCallRequest(
        response_parameters=[m.ResponseParameters(size=size) for size in response_sizes],
        payload=m.Payload(body=bytes(payload_size)), **fields)


def large_request(pb: PB, **fields: Any) -> Any:
    m = pb["pb2"]
    return m.SimpleRequest(response_size=LARGE_RESPONSE, payload=m.Payload(body=bytes(LARGE_REQUEST)), **fields)


class Feed:
    """A request iterator the test feeds one message at a time (``None`` ends it), so that a
    bidirectional call can wait for each answer before sending the next request."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def __iter__(self) -> Iterator[Any]:
        while (item := self._queue.get(timeout=T)) is not None:
            yield item


async def wait_idle(service: TestService, method: str) -> None:
    """Every run of ``method``'s handler that began has ended."""
    with trio.fail_after(T):
        await service.wait_exited(method, service.entered.get(method, 0))


# ------------------------------------------------------------------------- the message scenarios
async def test_empty_unary_answers_an_empty_message_with_an_empty_message(pb: PB, address: Address) -> None:
    def run() -> Any:
        with grpc.insecure_channel(target(address)) as channel:
            return stub(pb, channel).EmptyCall(pb["pb2"].Empty(), timeout=T)

    answer = await in_thread(run)
    assert answer == pb["pb2"].Empty() and answer.ByteSize() == 0


async def test_large_unary_answers_a_payload_of_the_size_asked_for(pb: PB, address: Address) -> None:
    def run() -> Any:
        with grpc.insecure_channel(target(address)) as channel:
            return stub(pb, channel).UnaryCall(large_request(pb), timeout=T)

    answer = await in_thread(run)
    assert answer.payload.body == bytes(LARGE_RESPONSE)
    assert answer.payload.type == 0  # COMPRESSABLE


async def test_client_streaming_aggregates_the_sizes_of_every_payload_sent(pb: PB, address: Address) -> None:
    m = pb["pb2"]

    def run() -> Any:
        with grpc.insecure_channel(target(address)) as channel:
            requests = (m.StreamingInputCallRequest(payload=m.Payload(body=bytes(size))) for size in STREAM_REQUESTS)
            return stub(pb, channel).StreamingInputCall(requests, timeout=T)

    assert (await in_thread(run)).aggregated_payload_size == sum(STREAM_REQUESTS) == 74922


async def test_server_streaming_answers_one_payload_per_size_in_order(pb: PB, address: Address) -> None:
    def run() -> list[int]:
        with grpc.insecure_channel(target(address)) as channel:
            responses = stub(pb, channel).StreamingOutputCall(output_request(pb, STREAM_RESPONSES), timeout=T)
            return [len(response.payload.body) for response in responses]

    assert await in_thread(run) == STREAM_RESPONSES


async def test_ping_pong_answers_each_request_before_the_next_is_sent(pb: PB, address: Address) -> None:
    def run() -> tuple[list[int], bool]:
        feed = Feed()
        with grpc.insecure_channel(target(address)) as channel:
            call = stub(pb, channel).FullDuplexCall(iter(feed), timeout=T)
            sizes = []
            for request_size, response_size in zip(STREAM_REQUESTS, STREAM_RESPONSES):
                feed.put(output_request(pb, [response_size], request_size))
                sizes.append(len(next(call).payload.body))  # the next request waits for this answer
            feed.put(None)
            ended = next(call, None) is None
            return sizes, ended and call.code() == grpc.StatusCode.OK

    assert await in_thread(run) == (STREAM_RESPONSES, True)


async def test_empty_stream_ends_ok_with_no_responses(pb: PB, address: Address) -> None:
    def run() -> tuple[list[Any], Any]:
        with grpc.insecure_channel(target(address)) as channel:
            call = stub(pb, channel).FullDuplexCall(iter([]), timeout=T)
            return list(call), call.code()

    assert await in_thread(run) == ([], grpc.StatusCode.OK)


async def test_half_duplex_answers_every_request_in_order(pb: PB, address: Address) -> None:
    def run() -> list[int]:
        with grpc.insecure_channel(target(address)) as channel:
            requests = [output_request(pb, [size]) for size in STREAM_RESPONSES]
            return [len(r.payload.body) for r in stub(pb, channel).HalfDuplexCall(iter(requests), timeout=T)]

    assert await in_thread(run) == STREAM_RESPONSES


# ------------------------------------------------------------------------- deadlines, cancellation
async def test_timeout_on_sleeping_server_ends_with_deadline_exceeded(pb: PB, address: Address, service: TestService) -> None:
    def run() -> Any:
        feed = Feed()  # never ended: the server waits for more requests until the deadline
        with grpc.insecure_channel(target(address)) as channel:
            call = stub(pb, channel).FullDuplexCall(iter(feed), timeout=0.001)
            feed.put(output_request(pb, [], 27182))
            with pytest.raises(grpc.RpcError) as info:
                next(call)
            feed.put(None)
            return info.value.code()

    assert await in_thread(run) == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_idle(service, "FullDuplexCall")


async def test_cancel_after_begin_ends_the_call_cancelled(pb: PB, address: Address, service: TestService) -> None:
    def run() -> tuple[bool, Any]:
        release = threading.Event()

        def nothing() -> Iterator[Any]:  # sends no request until the call is cancelled
            release.wait(T)
            yield from ()

        with grpc.insecure_channel(target(address)) as channel:
            future = stub(pb, channel).StreamingInputCall.future(nothing(), timeout=T)
            cancelled = future.cancel()
            release.set()
            return cancelled, future.code()

    assert await in_thread(run) == (True, grpc.StatusCode.CANCELLED)
    await wait_idle(service, "StreamingInputCall")


async def test_cancel_after_first_response_ends_the_call_cancelled_and_the_handler_with_it(pb: PB, address: Address, service: TestService) -> None:
    def run() -> tuple[int, Any]:
        feed = Feed()
        with grpc.insecure_channel(target(address)) as channel:
            call = stub(pb, channel).FullDuplexCall(iter(feed), timeout=T)
            feed.put(output_request(pb, [STREAM_RESPONSES[0]], STREAM_REQUESTS[0]))
            first = len(next(call).payload.body)
            call.cancel()
            feed.put(None)
            with pytest.raises(grpc.RpcError) as info:
                next(call)
            return first, info.value.code()

    assert await in_thread(run) == (STREAM_RESPONSES[0], grpc.StatusCode.CANCELLED)
    assert service.entered["FullDuplexCall"] == 1
    await wait_idle(service, "FullDuplexCall")


# ------------------------------------------------------------------------- metadata, statuses
ECHO = [(ECHO_INITIAL, ECHO_INITIAL_VALUE), (ECHO_TRAILING, ECHO_TRAILING_VALUE)]


async def test_custom_metadata_is_echoed_in_headers_and_trailers_of_a_unary_call(pb: PB, address: Address) -> None:
    def run() -> tuple[int, dict[str, Any], dict[str, Any]]:
        with grpc.insecure_channel(target(address)) as channel:
            answer, call = stub(pb, channel).UnaryCall.with_call(large_request(pb), timeout=T, metadata=ECHO)
            return len(answer.payload.body), dict(call.initial_metadata()), dict(call.trailing_metadata())

    size, initial, trailing = await in_thread(run)
    assert size == LARGE_RESPONSE
    assert initial[ECHO_INITIAL] == ECHO_INITIAL_VALUE and ECHO_TRAILING not in initial
    assert trailing[ECHO_TRAILING] == ECHO_TRAILING_VALUE and ECHO_INITIAL not in trailing


async def test_custom_metadata_is_echoed_in_headers_and_trailers_of_a_full_duplex_call(pb: PB, address: Address) -> None:
    def run() -> tuple[list[int], dict[str, Any], dict[str, Any]]:
        with grpc.insecure_channel(target(address)) as channel:
            call = stub(pb, channel).FullDuplexCall(
                iter([output_request(pb, [LARGE_RESPONSE], LARGE_REQUEST)]), timeout=T, metadata=ECHO)
            sizes = [len(response.payload.body) for response in call]
            return sizes, dict(call.initial_metadata()), dict(call.trailing_metadata())

    sizes, initial, trailing = await in_thread(run)
    assert sizes == [LARGE_RESPONSE]
    assert initial[ECHO_INITIAL] == ECHO_INITIAL_VALUE
    assert trailing[ECHO_TRAILING] == ECHO_TRAILING_VALUE


@pytest.mark.parametrize("message", ["test status message", SPECIAL_MESSAGE],
                         ids=["status_code_and_message", "special_status_message"])
async def test_the_status_a_unary_request_asks_for_ends_the_call_with_its_message_intact(pb: PB, address: Address, message: str) -> None:
    m = pb["pb2"]

    def run() -> tuple[Any, str | None]:
        with grpc.insecure_channel(target(address)) as channel:
            request = m.SimpleRequest(response_status=m.EchoStatus(code=2, message=message))
            with pytest.raises(grpc.RpcError) as info:
                stub(pb, channel).UnaryCall(request, timeout=T)
            return info.value.code(), info.value.details()

    assert await in_thread(run) == (grpc.StatusCode.UNKNOWN, message)


async def test_the_status_a_full_duplex_request_asks_for_ends_the_call_with_its_message(pb: PB, address: Address) -> None:
    m = pb["pb2"]

    def run() -> tuple[Any, str | None]:
        with grpc.insecure_channel(target(address)) as channel:
            request = output_request(pb, [], response_status=m.EchoStatus(code=2, message="test status message"))
            call = stub(pb, channel).FullDuplexCall(iter([request]), timeout=T)
            with pytest.raises(grpc.RpcError) as info:
                list(call)
            return info.value.code(), info.value.details()

    assert await in_thread(run) == (grpc.StatusCode.UNKNOWN, "test status message")


# ------------------------------------------------------------------------- unimplemented
@pytest.mark.parametrize("path", ["/grpc.testing.TestService/UnimplementedCall",
                                  "/grpc.testing.UnimplementedService/UnimplementedCall"],
                         ids=["unimplemented_method", "unimplemented_service"])
async def test_a_method_the_server_does_not_have_is_unimplemented(pb: PB, address: Address, path: str) -> None:
    empty = pb["pb2"].Empty

    def run() -> Any:
        with grpc.insecure_channel(target(address)) as channel:
            call = channel.unary_unary(path, request_serializer=empty.SerializeToString,
                                       response_deserializer=empty.FromString)
            with pytest.raises(grpc.RpcError) as info:
                call(empty(), timeout=T)
            return info.value.code()

    assert await in_thread(run) == grpc.StatusCode.UNIMPLEMENTED
