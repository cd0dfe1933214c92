"""gRPC's interop test service, ``grpc.testing.TestService``, written as a trpc service.

Theory of operation
-------------------
gRPC's interop test descriptions (doc/interop-test-descriptions.md in grpc/grpc) define a
service every gRPC implementation serves so that any client can exercise it.  This module is
that service in trpc: the messages are ``@trpc.message`` classes named and numbered as the
interop ``messages.proto`` names and numbers them (only the fields the client scenarios use),
so ``trpc proto tests.interop_service:TestService --out DIR`` prints a ``.proto`` whose stubs
speak to this server as grpcio's interop stubs would, byte for byte on the fields kept.

Where trpc's mapping and the interop file part (docs/PROTOCOL.md section 15 is the mapping):

- ``int`` is ``int64`` where the interop file says ``int32``: the same varint on the wire for
  every value an ``int32`` holds.
- ``PayloadType`` is an enum named after this module (``tests.interop_service.PayloadType``,
  value ``PAYLOAD_TYPE_COMPRESSABLE``) where the interop file has ``grpc.testing.PayloadType``
  with the value ``COMPRESSABLE``: the number (0) is what travels, so the wire agrees.
- The ``google.protobuf.BoolValue`` fields (``response_compressed``, ``expect_compressed``,
  ``compressed``) are left out: a well-known wrapper type has no trpc spelling.  Only the
  compression scenarios read them.

Metadata: a request header ``x-grpc-test-echo-initial`` comes back in the response headers, and
``x-grpc-test-echo-trailing-bin`` in the trailers (:func:`_echo_metadata`).  A request whose
``response_status`` has a non-zero code ends the call with that code and message before any
response to it, and no later request is read.
``UnimplementedCall`` is deliberately absent, so that calling it exercises the server's answer
to an unknown method.
"""

from __future__ import annotations

import enum
from typing import AsyncIterator

import trio

import trpc
from trpc import RpcError, Status

__all__ = [
    "EchoStatus",
    "Empty",
    "Payload",
    "PayloadType",
    "ResponseParameters",
    "SimpleRequest",
    "SimpleResponse",
    "StreamingInputCallRequest",
    "StreamingInputCallResponse",
    "StreamingOutputCallRequest",
    "StreamingOutputCallResponse",
    "TestService",
]

#: The metadata keys the interop descriptions say the server echoes.
ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"


class PayloadType(enum.Enum):
    """The kind of body a payload carries; the interop service knows one."""

    COMPRESSABLE = 0


@trpc.message("grpc.testing.Empty")
class Empty:
    """No fields."""


@trpc.message("grpc.testing.Payload")
class Payload:
    type: PayloadType = trpc.field(1)
    body: bytes = trpc.field(2)


@trpc.message("grpc.testing.EchoStatus")
class EchoStatus:
    code: int = trpc.field(1)
    message: str = trpc.field(2)


@trpc.message("grpc.testing.SimpleRequest")
class SimpleRequest:
    response_type: PayloadType = trpc.field(1)
    response_size: int = trpc.field(2)
    payload: Payload = trpc.field(3)
    fill_username: bool = trpc.field(4)
    fill_oauth_scope: bool = trpc.field(5)
    response_status: EchoStatus = trpc.field(7)


@trpc.message("grpc.testing.SimpleResponse")
class SimpleResponse:
    payload: Payload = trpc.field(1)
    username: str = trpc.field(2)
    oauth_scope: str = trpc.field(3)


@trpc.message("grpc.testing.StreamingInputCallRequest")
class StreamingInputCallRequest:
    payload: Payload = trpc.field(1)


@trpc.message("grpc.testing.StreamingInputCallResponse")
class StreamingInputCallResponse:
    aggregated_payload_size: int = trpc.field(1)


@trpc.message("grpc.testing.ResponseParameters")
class ResponseParameters:
    size: int = trpc.field(1)
    interval_us: int = trpc.field(2)


@trpc.message("grpc.testing.StreamingOutputCallRequest")
class StreamingOutputCallRequest:
    response_type: PayloadType = trpc.field(1)
    response_parameters: list[ResponseParameters] = trpc.field(2)
    payload: Payload = trpc.field(3)
    response_status: EchoStatus = trpc.field(7)


@trpc.message("grpc.testing.StreamingOutputCallResponse")
class StreamingOutputCallResponse:
    payload: Payload = trpc.field(1)


def _payload(size: int) -> Payload:
    """A COMPRESSABLE payload of ``size`` zero bytes, as the interop server answers."""
    if size < 0:
        raise RpcError(Status.INVALID_ARGUMENT, f"a payload size of {size} is negative")
    return Payload(PayloadType.COMPRESSABLE, bytes(size))


def _echo_metadata() -> None:
    """Send back the echo headers the client set: the initial one now, the trailing one with
    the status."""
    call = trpc.current_call()
    initial = call.metadata.get(ECHO_INITIAL)
    if initial is not None:
        call.send_headers({ECHO_INITIAL: initial})
    trailing = call.metadata.get(ECHO_TRAILING)
    if trailing is not None:
        call.set_trailers({ECHO_TRAILING: trailing})


def _check_status(status: EchoStatus) -> None:
    """End the call with the status the request asks for, if it asks for one (code not 0)."""
    if status.code != 0:
        raise RpcError(Status(status.code), status.message)


async def _responses(request: StreamingOutputCallRequest) -> AsyncIterator[StreamingOutputCallResponse]:
    """One response per response parameter, each after its interval."""
    for parameters in request.response_parameters:
        if parameters.interval_us > 0:
            await trio.sleep(parameters.interval_us / 1e6)
        yield StreamingOutputCallResponse(_payload(parameters.size))


class TestService(trpc.Service, name="grpc.testing.TestService"):
    """The interop methods.  ``entered`` and ``exited`` count handler runs by method name, so
    tests can see a cancellation reach the handler."""

    __test__ = False  # not a pytest class, despite the name the interop descriptions give it

    def __init__(self) -> None:
        self.entered: dict[str, int] = {}
        self.exited: dict[str, int] = {}
        self._changed = trio.Event()

    def _note(self, counts: dict[str, int], method: str) -> None:
        counts[method] = counts.get(method, 0) + 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_exited(self, method: str, count: int = 1) -> None:
        """Wait until ``method``'s handler has ended ``count`` times."""
        while self.exited.get(method, 0) < count:
            await self._changed.wait()

    @trpc.unary(name="EmptyCall")
    async def empty_call(self, request: Empty) -> Empty:
        return Empty()

    @trpc.unary(name="UnaryCall")
    async def unary_call(self, request: SimpleRequest) -> SimpleResponse:
        _echo_metadata()
        _check_status(request.response_status)
        return SimpleResponse(_payload(request.response_size), "", "")

    @trpc.server_stream(name="StreamingOutputCall")
    async def streaming_output_call(
            self, request: StreamingOutputCallRequest) -> AsyncIterator[StreamingOutputCallResponse]:
        _echo_metadata()
        _check_status(request.response_status)
        async for response in _responses(request):
            yield response

    @trpc.client_stream(name="StreamingInputCall")
    async def streaming_input_call(
            self, requests: AsyncIterator[StreamingInputCallRequest]) -> StreamingInputCallResponse:
        self._note(self.entered, "StreamingInputCall")
        try:
            total = 0
            async for request in requests:
                total += len(request.payload.body)
            return StreamingInputCallResponse(total)
        finally:
            self._note(self.exited, "StreamingInputCall")

    @trpc.bidi_stream(name="FullDuplexCall")
    async def full_duplex_call(
            self, requests: AsyncIterator[StreamingOutputCallRequest]) -> AsyncIterator[StreamingOutputCallResponse]:
        """Answers each request as it arrives."""
        self._note(self.entered, "FullDuplexCall")
        try:
            _echo_metadata()
            async for request in requests:
                _check_status(request.response_status)
                async for response in _responses(request):
                    yield response
        finally:
            self._note(self.exited, "FullDuplexCall")

    @trpc.bidi_stream(name="HalfDuplexCall")
    async def half_duplex_call(
            self, requests: AsyncIterator[StreamingOutputCallRequest]) -> AsyncIterator[StreamingOutputCallResponse]:
        """Reads every request first, then answers them in order."""
        _echo_metadata()
        buffered = [request async for request in requests]
        for request in buffered:
            _check_status(request.response_status)
            async for response in _responses(request):
                yield response
