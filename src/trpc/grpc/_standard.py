"""The standard gRPC services in protobuf: health's messages for trpc's health service, and
server reflection (``grpc.reflection.v1`` and ``v1alpha``).

Theory of operation
-------------------
Their ``.proto`` files are gRPC's (``grpc/health/v1/health.proto``,
``grpc/reflection/v1/reflection.proto``, ``grpc/reflection/v1alpha/reflection.proto``), written
here as FileDescriptorProtos field by field (:func:`files`), so that no generated code and no
grpcio package is needed at run time; tests check them against grpcio's own.

Health has no service here: trpc's :class:`~trpc._health.HealthService` is served as it is, and
its two methods get codecs that read a ``HealthCheckRequest`` into its one argument, the service
name, and write the text status it answers (``"SERVING"``) as a ``HealthCheckResponse`` with
gRPC's number (:class:`~trpc.HealthStatus` holds both).

Reflection is :class:`ServerReflectionService`, a trpc service with one bidirectional method whose
items are protobuf bytes (a ``ServerReflectionRequest`` in, a ``ServerReflectionResponse`` out),
so its codec passes bytes through and the handler works the same over any wire.  It answers
from a :class:`~trpc.grpc._proto.ProtoSchema` of the server's methods, built at the first
request and kept: ``list_services`` (the services with a protobuf mapping, health and reflection
among them), ``file_by_filename`` and ``file_containing_symbol`` (the file and every file it
imports, transitively), and, as there are no extensions, NOT_FOUND for
``file_containing_extension`` and an empty list for ``all_extension_numbers_of_type`` of a known
message.  v1alpha is the same service under its older name: its messages are v1's, byte for byte.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Mapping, cast

from .._health import HEALTH_SERVICE, HealthService, HealthStatus
from .._service import MethodInfo, Service, bidi_stream
from .._status import Status

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from .._events import MessageCodec

__all__ = ["HEALTH_FILE", "REFLECTION_FILE", "REFLECTION_V1ALPHA_FILE", "ServerReflectionService",
           "ServerReflectionV1Alpha", "files", "special_kind", "codec"]

HEALTH_FILE = "grpc/health/v1/health.proto"
REFLECTION_FILE = "grpc/reflection/v1/reflection.proto"
REFLECTION_V1ALPHA_FILE = "grpc/reflection/v1alpha/reflection.proto"
REFLECTION_SERVICE = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA_SERVICE = "grpc.reflection.v1alpha.ServerReflection"

_STRING, _INT32, _BYTES, _MESSAGE, _ENUM = 9, 5, 12, 11, 14
_OPTIONAL, _REPEATED = 1, 3


def _file(pb: Any, name: str, package: str, messages: list[tuple[Any, ...]], services: list[tuple[Any, ...]]) -> Any:
    """A FileDescriptorProto from (message name, [(field, number, type, label, type name,
    oneof index)], [oneof names], [(enum name, [values])]) and (service, [(method, input,
    output, client streams, server streams)])."""
    fdp = pb.descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    for message_name, fields, oneofs, enums in messages:
        message = fdp.message_type.add(name=message_name)
        for oneof in oneofs:
            message.oneof_decl.add(name=oneof)
        for enum_name, values in enums:
            enum = message.enum_type.add(name=enum_name)
            for number, value in enumerate(values):
                enum.value.add(name=value, number=number)
        for field_name, number, kind, label, type_name, oneof in fields:
            f = message.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                f.type_name = type_name
            if oneof is not None:
                f.oneof_index = oneof
    for service_name, methods in services:
        service = fdp.service.add(name=service_name)
        for method, request, response, client_streams, server_streams in methods:
            service.method.add(name=method, input_type=request, output_type=response,
                               client_streaming=client_streams, server_streaming=server_streams)
    return fdp


def _reflection_file(pb: Any, name: str, package: str) -> Any:
    p = f".{package}."
    return _file(pb, name, package, [
        ("ServerReflectionRequest", [
            ("host", 1, _STRING, _OPTIONAL, "", None),
            ("file_by_filename", 3, _STRING, _OPTIONAL, "", 0),
            ("file_containing_symbol", 4, _STRING, _OPTIONAL, "", 0),
            ("file_containing_extension", 5, _MESSAGE, _OPTIONAL, p + "ExtensionRequest", 0),
            ("all_extension_numbers_of_type", 6, _STRING, _OPTIONAL, "", 0),
            ("list_services", 7, _STRING, _OPTIONAL, "", 0),
        ], ["message_request"], []),
        ("ExtensionRequest", [
            ("containing_type", 1, _STRING, _OPTIONAL, "", None),
            ("extension_number", 2, _INT32, _OPTIONAL, "", None),
        ], [], []),
        ("ServerReflectionResponse", [
            ("valid_host", 1, _STRING, _OPTIONAL, "", None),
            ("original_request", 2, _MESSAGE, _OPTIONAL, p + "ServerReflectionRequest", None),
            ("file_descriptor_response", 4, _MESSAGE, _OPTIONAL, p + "FileDescriptorResponse", 0),
            ("all_extension_numbers_response", 5, _MESSAGE, _OPTIONAL, p + "ExtensionNumberResponse", 0),
            ("list_services_response", 6, _MESSAGE, _OPTIONAL, p + "ListServiceResponse", 0),
            ("error_response", 7, _MESSAGE, _OPTIONAL, p + "ErrorResponse", 0),
        ], ["message_response"], []),
        ("FileDescriptorResponse", [("file_descriptor_proto", 1, _BYTES, _REPEATED, "", None)], [], []),
        ("ExtensionNumberResponse", [
            ("base_type_name", 1, _STRING, _OPTIONAL, "", None),
            ("extension_number", 2, _INT32, _REPEATED, "", None),
        ], [], []),
        ("ListServiceResponse", [("service", 1, _MESSAGE, _REPEATED, p + "ServiceResponse", None)], [], []),
        ("ServiceResponse", [("name", 1, _STRING, _OPTIONAL, "", None)], [], []),
        ("ErrorResponse", [
            ("error_code", 1, _INT32, _OPTIONAL, "", None),
            ("error_message", 2, _STRING, _OPTIONAL, "", None),
        ], [], []),
    ], [("ServerReflection", [("ServerReflectionInfo", p + "ServerReflectionRequest",
                                p + "ServerReflectionResponse", True, True)])])


def files(pb: Any) -> dict[str, Any]:
    """file name -> FileDescriptorProto of health, reflection v1 and v1alpha."""
    p = ".grpc.health.v1."
    health = _file(pb, HEALTH_FILE, "grpc.health.v1", [
        ("HealthCheckRequest", [("service", 1, _STRING, _OPTIONAL, "", None)], [], []),
        ("HealthCheckResponse", [("status", 1, _ENUM, _OPTIONAL, p + "HealthCheckResponse.ServingStatus", None)],
         [], [("ServingStatus", [status.name for status in sorted(HealthStatus)])]),
    ], [("Health", [("Check", p + "HealthCheckRequest", p + "HealthCheckResponse", False, False),
                    ("Watch", p + "HealthCheckRequest", p + "HealthCheckResponse", False, True)])])
    return {
        HEALTH_FILE: health,
        REFLECTION_FILE: _reflection_file(pb, REFLECTION_FILE, "grpc.reflection.v1"),
        REFLECTION_V1ALPHA_FILE: _reflection_file(pb, REFLECTION_V1ALPHA_FILE, "grpc.reflection.v1alpha"),
    }


def special_kind(handler: Callable[..., Any], info: MethodInfo) -> str | None:
    """"health" for the methods of trpc's health service, "reflection" for the reflection
    services', None for any other method."""
    owner = getattr(handler, "__self__", None)
    cls = owner if isinstance(owner, type) else type(owner) if owner is not None else None
    if cls is None:  # a class's function (trpc proto): mapped like any other method
        return None
    if issubclass(cls, HealthService) and info.service == HEALTH_SERVICE:
        return "health"
    if issubclass(cls, ServerReflectionService):
        return "reflection"
    return None


def codec(kind: str, path: str, pool: Any, pb: Any) -> MessageCodec:
    """The codec of a health or reflection method (see the module docstring)."""
    from ._proto import MethodCodec

    if kind == "health":
        def message_class(name: str) -> type[Message]:
            return cast("type[Message]", pb.message_factory.GetMessageClass(pool.FindMessageTypeByName(name)))

        request = message_class("grpc.health.v1.HealthCheckRequest")
        response = message_class("grpc.health.v1.HealthCheckResponse")

        def encode(message: Any, status: Any) -> None:
            message.status = HealthStatus.from_wire(status.name if isinstance(status, HealthStatus) else status).value

        return MethodCodec(path, request, response, decode_request=lambda message: ([message.service], {}),
                           encode_response=encode)
    return _BytesCodec(path)


class _BytesCodec:
    """Bytes in, bytes out: the reflection service's items are protobuf bytes already."""

    def __init__(self, path: str) -> None:
        self.path = path

    def decode_item(self, data: bytes) -> bytes:
        return data if type(data) is bytes else bytes(data)

    def encode_item(self, value: bytes) -> bytes:
        return value

    encode_response = encode_item

    def decode_request(self, data: bytes) -> tuple[list[Any], dict[str, Any]]:
        raise AssertionError(f"{self.path} takes a request stream")


class ServerReflectionService(Service, name=REFLECTION_SERVICE):
    """gRPC server reflection (``grpc.reflection.v1.ServerReflection``), answering from the
    protobuf descriptors of ``methods()`` (path -> (handler, MethodInfo)), read at the first
    request; see the module docstring."""

    def __init__(self, methods: Callable[[], Mapping[str, tuple[Callable[..., Any], MethodInfo]]]) -> None:
        self._methods = methods
        self._schema: Any = None
        # Message classes made at run time from descriptors: their fields are not known to the
        # checkers, hence type[Any].
        self._classes: tuple[type[Any], type[Any]] | None = None

    def _ready(self) -> tuple[Any, type[Any], type[Any]]:
        if self._schema is None:
            from ._proto import _protobuf, build_schema

            pb = _protobuf()
            self._schema = build_schema(self._methods())
            pool = self._schema.pool
            self._classes = tuple(
                pb.message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.reflection.v1.{name}"))
                for name in ("ServerReflectionRequest", "ServerReflectionResponse"))
        return (self._schema, *self._classes)  # type: ignore[misc]

    @bidi_stream(name="ServerReflectionInfo")
    async def info(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Each request (ServerReflectionRequest bytes) answered by one ServerReflectionResponse."""
        schema, request_type, response_type = self._ready()
        async for data in requests:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                response = response_type()
                response.error_response.error_code = Status.INVALID_ARGUMENT.value
                response.error_response.error_message = "a request is ServerReflectionRequest bytes"
                yield response.SerializeToString()
                continue
            request = request_type.FromString(bytes(data))
            yield self.answer(schema, request, response_type()).SerializeToString()

    def answer(self, schema: Any, request: Any, response: Any) -> Any:
        """Fill ``response`` with the answer to ``request`` (both protobuf messages)."""
        response.valid_host = request.host
        response.original_request.CopyFrom(request)
        which = request.WhichOneof("message_request")

        def not_found(message: str) -> Any:
            response.error_response.error_code = Status.NOT_FOUND.value
            response.error_response.error_message = message
            return response

        def send_files(name: str) -> Any:
            for fdp in schema.with_dependencies(name):
                response.file_descriptor_response.file_descriptor_proto.append(fdp.SerializeToString())
            return response

        if which == "list_services":
            served = self._served(schema)
            for name in served:
                response.list_services_response.service.add(name=name)
            return response
        if which == "file_by_filename":
            try:
                return send_files(request.file_by_filename)
            except KeyError:
                return not_found(f"no file {request.file_by_filename!r}")
        if which == "file_containing_symbol":
            try:
                return send_files(schema.file_for_symbol(request.file_containing_symbol))
            except KeyError:
                return not_found(f"no symbol {request.file_containing_symbol!r}")
        if which == "all_extension_numbers_of_type":
            try:
                schema.pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
            except KeyError:
                return not_found(f"no message type {request.all_extension_numbers_of_type!r}")
            response.all_extension_numbers_response.base_type_name = request.all_extension_numbers_of_type
            return response
        if which == "file_containing_extension":
            return not_found("this server defines no extensions")
        response.error_response.error_code = Status.INVALID_ARGUMENT.value
        response.error_response.error_message = "the request asks for nothing this server knows"
        return response

    @staticmethod
    def _served(schema: Any) -> list[str]:
        """The services a client can call in protobuf, each once."""
        return list(schema.services)


class ServerReflectionV1Alpha(ServerReflectionService, name=REFLECTION_V1ALPHA_SERVICE):
    """The same reflection under ``grpc.reflection.v1alpha.ServerReflection``, which older
    clients (grpcurl, grpcio-reflection's before v1) ask for."""
