"""The protobuf mapping (trpc.grpc._proto): descriptors, codecs, the .proto text that protoc
compiles, the standard health and reflection services, and ``trpc proto``."""

from __future__ import annotations

import enum
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

pytest.importorskip("google.protobuf")

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402

import trpc  # noqa: E402
from trpc._health import HealthRegistry, HealthService  # noqa: E402
from trpc.grpc import _proto  # noqa: E402
from trpc.grpc._proto import build_codecs, build_schema, proto_files  # noqa: E402
from trpc.grpc._standard import ServerReflectionService  # noqa: E402

from . import proto_services  # noqa: E402
from .proto_services import Color, Entry, Other, Store  # noqa: E402

F = descriptor_pb2.FieldDescriptorProto


def methods_of(*services: Any) -> dict:
    return {info.path: (getattr(service, info.attribute), info)
            for service in services for info in type(service).__trpc_methods__.values()}


@pytest.fixture(scope="module")
def schema() -> _proto.ProtoSchema:
    return build_schema(methods_of(Store(), Other()))


def message(schema: _proto.ProtoSchema, name: str) -> Any:
    return schema.pool.FindMessageTypeByName(name)


# ------------------------------------------------------------------------- the mapping
def test_each_annotation_kind_becomes_its_proto3_field(schema):
    fields = {f.name: f for f in message(schema, "prototest.Entry").fields}
    assert (fields["key"].type, fields["key"].is_repeated, fields["key"].has_presence) == (F.TYPE_STRING, False, False)
    assert fields["value"].type == F.TYPE_INT64 and fields["value"].has_presence  # a default: optional
    assert fields["tags"].is_repeated and fields["tags"].type == F.TYPE_STRING
    assert fields["note"].has_presence and fields["note"].containing_oneof.name == "_note"
    assert fields["counts"].message_type.GetOptions().map_entry
    assert [f.type for f in fields["counts"].message_type.fields] == [F.TYPE_STRING, F.TYPE_INT64]
    assert fields["children"].message_type.full_name == "prototest.Entry"
    assert fields["color"].enum_type.full_name == "tests.proto_services.Color"
    assert [(v.name, v.number) for v in fields["color"].enum_type.values] == [
        ("COLOR_NONE", 0), ("COLOR_RED", 1), ("COLOR_GREEN", 2)]
    assert fields["parent"].message_type.full_name == "prototest.Entry" and fields["parent"].has_presence
    assert (fields["ratio"].type, fields["raw"].type, fields["flag"].type) == (F.TYPE_DOUBLE, F.TYPE_BYTES, F.TYPE_BOOL)
    assert [f.type for f in fields["by_id"].message_type.fields] == [F.TYPE_INT64, F.TYPE_MESSAGE]
    assert fields["shades"].is_repeated and fields["shades"].type == F.TYPE_ENUM
    assert sorted(f.number for f in fields.values()) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14]


def test_parameters_become_a_request_message_numbered_by_position(schema):
    method = schema.pool.FindMethodByName("prototest.Store.get")
    request = method.input_type
    assert request.full_name == "prototest.StoreGetRequest"
    assert [(f.name, f.number, f.has_presence) for f in request.fields] == [
        ("key", 1, False), ("default", 2, True), ("exact", 3, True)]
    assert method.output_type.full_name == "prototest.Entry"  # a message result is itself


def test_one_message_parameter_is_the_request_and_none_is_an_empty_response(schema):
    method = schema.pool.FindMethodByName("prototest.Store.put")
    assert method.input_type.full_name == "prototest.Entry"
    assert method.output_type.full_name == "prototest.StorePutResponse" and not method.output_type.fields


def test_stream_items_are_wrapped_unless_they_are_messages(schema):
    shapes = {m.name: (m.client_streaming, m.server_streaming, m.input_type.full_name, m.output_type.full_name)
              for m in schema.pool.FindServiceByName("prototest.Store").methods}
    assert shapes["scan"] == (False, True, "prototest.StoreScanRequest", "prototest.Entry")
    assert shapes["total"] == (True, False, "prototest.StoreTotalRequest", "prototest.StoreTotalResponse")
    assert shapes["echo"] == (True, True, "prototest.Entry", "prototest.StoreEchoResponse")
    value = message(schema, "prototest.StoreEchoResponse").fields_by_name["value"]
    assert value.number == 1 and value.has_presence  # str | None
    assert message(schema, "prototest.StoreTotalRequest").fields_by_name["value"].type == F.TYPE_INT64


def test_two_services_of_one_package_name_their_messages_apart(schema):
    assert schema.pool.FindMethodByName("prototest.Other.get").input_type.full_name == "prototest.OtherGetRequest"
    assert list(schema.files) == ["tests/proto_services.proto", "prototest.proto"]
    assert list(schema.files["prototest.proto"].dependency) == ["tests/proto_services.proto"]


def test_a_file_is_found_by_any_symbol_it_defines_a_method_among_them(schema):
    for symbol in ("prototest.Store", "prototest.Store.get", "prototest.Entry", "prototest.Entry.key",
                   "prototest.StoreGetRequest"):
        assert schema.file_for_symbol(symbol) == "prototest.proto", symbol
    assert schema.file_for_symbol("tests.proto_services.Color") == "tests/proto_services.proto"
    for unknown in ("prototest.Store.nope", "prototest.Nope", "nope"):
        with pytest.raises(KeyError):
            schema.file_for_symbol(unknown)


class Shade(enum.Enum):
    LIGHT = 1


@trpc.message("prototest.bad.Holder")
class Holder:
    items: set[int] = trpc.field(1)


@trpc.message("not a name")
class BadName:
    x: int = trpc.field(1)


class Unmappable(trpc.Service, name="prototest.Unmappable"):
    @trpc.unary
    async def tuple_(self, pair: tuple[int, int]) -> int: ...

    @trpc.unary
    async def untyped(self, a) -> int: ...

    @trpc.unary
    async def no_return(self, a: int): ...

    @trpc.unary
    async def union(self, a: int | str) -> int: ...

    @trpc.unary
    async def nested_list(self, a: list[list[int]]) -> int: ...

    @trpc.unary
    async def optional_list(self, a: list[int] | None) -> int: ...

    @trpc.unary
    async def float_keys(self, a: dict[float, int]) -> int: ...

    @trpc.unary
    async def bare_list(self, a: list) -> int: ...

    @trpc.unary
    async def anything(self, a: Any) -> int: ...

    @trpc.unary
    async def star(self, *a: int) -> int: ...

    @trpc.unary
    async def enum_without_zero(self, a: Shade) -> int: ...

    @trpc.unary
    async def bad_field(self, a: Holder) -> int: ...

    @trpc.unary
    async def bad_message_name(self) -> BadName: ...

    @trpc.server_stream
    async def not_a_stream(self) -> list[int]:
        yield 1

    @trpc.unary(name="has-dash")
    async def dash(self) -> int: ...


REASONS = {
    "tuple_": "parameter 'pair' is tuple[int, int]: a tuple has no protobuf type",
    "untyped": "parameter 'a': it has no annotation",
    "no_return": "return: it has no return annotation",
    "union": "parameter 'a' is int | str: a union other than T | None has no protobuf type",
    "nested_list": "parameter 'a' is list[list[int]]: a list's items are a scalar, an enum or a message",
    "optional_list": "parameter 'a' is list[int] | None: a repeated or map field cannot be None",
    "float_keys": "parameter 'a' is dict[float, int]: a map's keys are str, int or bool",
    "bare_list": "parameter 'a' is list: a list or dict needs its item types",
    "anything": "parameter 'a' is Any: Any has no protobuf type",
    "star": "parameter 'a': *args and **kwargs have no protobuf field",
    "enum_without_zero": "parameter 'a' is Shade: a proto3 enum needs a member whose value is 0",
    "bad_field": "parameter 'a': message prototest.bad.Holder field 'items' is set[int]: a set has no protobuf type",
    "bad_message_name": "return is BadName: its message name 'not a name' is not a protobuf name",
    "not_a_stream": "return is list[int]: a stream is annotated AsyncIterator[T]",
    "has-dash": "method: its name 'has-dash' is not a protobuf identifier",
}


@pytest.mark.parametrize("method", sorted(REASONS))
def test_a_type_that_does_not_map_is_named_with_its_method_and_parameter(method):
    codecs = build_codecs(methods_of(Unmappable()))
    reason = codecs[f"prototest.Unmappable/{method}"]
    assert isinstance(reason, str) and "\n" not in reason
    assert reason.startswith(f"prototest.Unmappable/{method}: {REASONS[method]}")
    with pytest.raises(trpc.ProtoMappingError) as caught:
        proto_files([Unmappable]) if method == "tuple_" else build_schema(
            {path: value for path, value in methods_of(Unmappable()).items() if path.endswith("/" + method)},
            strict=True)
    assert str(caught.value) == reason
    assert caught.value.path == f"prototest.Unmappable/{method}"


def test_the_server_logs_one_line_naming_the_methods_without_a_mapping(caplog):
    caplog.set_level("INFO", logger="trpc")  # (INFO: a server need not map to protobuf)
    codecs = build_codecs(methods_of(Store(), Unmappable()))
    assert isinstance(codecs["prototest.Store/get"], _proto.MethodCodec)
    lines = [record.getMessage() for record in caplog.records if "protobuf mapping" in record.getMessage()]
    assert len(lines) == 1 and "prototest.Unmappable/star (" in lines[0] and "prototest.Store" not in lines[0]


@trpc.message("prototest.clash.ThingGetRequest")
class Taken:
    x: int = trpc.field(1)


class Thing(trpc.Service, name="prototest.clash.Thing"):
    @trpc.unary
    async def get(self, a: Taken, b: int) -> int: ...


def test_a_generated_message_may_not_take_a_message_classes_name():
    reason = build_codecs(methods_of(Thing()))["prototest.clash.Thing/get"]
    assert "prototest.clash.ThingGetRequest would take the name" in reason


def test_without_protobuf_asking_for_it_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.protobuf", None)
    with pytest.raises(trpc.ProtoMappingError, match=r"protobuf: not installed .*pip install 'trpc\[grpc\]'"):
        build_codecs(methods_of(Store()))
    assert _proto.grpc_services(object()) == []


# ------------------------------------------------------------------------- codecs
@pytest.fixture(scope="module")
def codecs() -> dict:
    return build_codecs(methods_of(Store(), Other()))


def full_entry() -> Entry:
    child = Entry("child", 1, note="")
    return Entry("k", 0, ["a", "b"], "n", {"x": 1}, [child], Color.GREEN, Entry("p"), 1.5, b"\x00\xff", True,
                 {-3: Entry("m", color=Color.RED)}, [Color.RED, Color.NONE])


def test_a_message_survives_a_round_trip_with_every_kind_of_field(codecs):
    codec = codecs["prototest.Store/put"]
    entry = full_entry()
    assert codec.decode_request(_encode_message(entry)) == ([entry], {})


def _encode_message(value: Entry) -> bytes:
    """An Entry's bytes, as the codec of a method that returns one writes them."""
    return build_codecs(methods_of(Store()))["prototest.Store/get"].encode_response(value)


def test_absent_fields_take_the_python_defaults_or_zero_or_none(codecs):
    codec = codecs["prototest.Store/put"]
    [entry], _ = codec.decode_request(b"")
    assert entry == Entry("", 7, parent=None)  # key: zero value; value: its default 7; note: None
    get = codecs["prototest.Store/get"]
    # default: int | None: absent is None; exact: bool = True: absent is left to the handler
    assert get.decode_request(b"") == ([], {"key": "", "default": None})
    request = get.request_type(key="a", default=0, exact=False).SerializeToString()
    assert get.decode_request(request) == ([], {"key": "a", "default": 0, "exact": False})


def test_a_wrapped_result_is_field_one_and_none_is_absent(codecs):
    codec = codecs["prototest.Other/get"]
    assert codec.response_type.FromString(codec.encode_response("5")).value == "5"
    assert codec.encode_response(None) == b""
    assert codec.response_type.FromString(codec.encode_response("")).HasField("value")  # "" is not None
    count = codecs["prototest.Store/count"]
    assert count.encode_response(0) == b""  # int64 0: nothing on the wire (proto3)
    assert count.response_type.FromString(count.encode_response(2**40)).value == 2**40


def test_stream_items_decode_and_encode(codecs):
    total = codecs["prototest.Store/total"]
    assert total.decode_item(total.request_type(value=-4).SerializeToString()) == -4
    echo = codecs["prototest.Store/echo"]
    entry = Entry("e", note="hi")
    assert echo.decode_item(_encode_message(entry)) == entry
    assert echo.response_type.FromString(echo.encode_item("hi")).value == "hi"
    assert not echo.response_type.FromString(echo.encode_item(None)).HasField("value")
    scan = codecs["prototest.Store/scan"]
    assert scan.decode_request(scan.request_type(prefix="p").SerializeToString()) == ([], {"prefix": "p"})
    assert scan.response_type.FromString(scan.encode_item(Entry("z", 3))).value == 3


def test_enums_lists_and_maps_as_parameters_and_results(codecs):
    codec = codecs["prototest.Store/paint"]
    request = codec.request_type(colors=[1, 2], weights={"a": 0.5, "b": 2.0}).SerializeToString()
    args, kwargs = codec.decode_request(request)
    assert kwargs == {"colors": [Color.RED, Color.GREEN], "weights": {"a": 0.5, "b": 2.0}}
    assert type(kwargs["colors"][0]) is Color
    response = codec.response_type.FromString(codec.encode_response({"a": Color.GREEN, "b": 1}))
    assert dict(response.value) == {"a": 2, "b": 1}


def test_bytes_that_do_not_decode_are_invalid_argument_and_a_wrong_result_is_internal(codecs):
    codec = codecs["prototest.Store/get"]
    with pytest.raises(trpc.RpcError) as caught:
        codec.decode_request(b"\xff\xff\xff")
    assert caught.value.status is trpc.Status.INVALID_ARGUMENT and "prototest.Store/get" in caught.value.message
    paint = codecs["prototest.Store/paint"]
    with pytest.raises(trpc.RpcError) as caught:
        paint.decode_request(paint.request_type(colors=[9]).SerializeToString())  # no Color has 9
    assert caught.value.status is trpc.Status.INVALID_ARGUMENT
    with pytest.raises(trpc.RpcError) as caught:
        codec.encode_response("not an entry")
    assert caught.value.status is trpc.Status.INTERNAL
    with pytest.raises(trpc.RpcError) as caught:
        codecs["prototest.Store/count"].encode_response(2**64)
    assert caught.value.status is trpc.Status.INTERNAL


async def test_decoded_arguments_bind_to_the_handler():
    store = Store()
    codec = build_codecs(methods_of(store))["prototest.Store/get"]
    args, kwargs = codec.decode_request(codec.request_type(key="a", default=5).SerializeToString())
    entry = await store.get(*args, **kwargs)
    assert entry == Entry("a", 5, flag=True)
    assert codec.response_type.FromString(codec.encode_response(entry)).value == 5


# ------------------------------------------------------------------------- protoc
@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict:
    """What protoc generates from the text trpc prints, imported (once per process: the
    generated modules register their files in protobuf's default pool)."""
    pytest.importorskip("grpc_tools")
    cached = getattr(generated, "cache", None)
    if cached is not None:
        return cached
    out = tmp_path_factory.mktemp("proto")
    texts = proto_files([Store, Other])
    for name, text in texts.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    result = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"--python_out={out}",
                             f"--grpc_python_out={out}", *texts], capture_output=True, text=True, cwd=out)
    assert result.returncode == 0, result.stderr
    import tests

    tests.__path__.append(str(out / "tests"))  # the enum's file is tests/proto_services.proto
    sys.path.insert(0, str(out))
    try:
        modules = {"prototest": importlib.import_module("prototest_pb2"),
                   "grpc": importlib.import_module("prototest_pb2_grpc"),
                   "colors": importlib.import_module("tests.proto_services_pb2")}
    finally:
        sys.path.remove(str(out))
    generated.cache = modules
    return modules


def test_protoc_compiles_the_printed_text_and_its_classes_read_the_codecs_bytes(generated, codecs):
    pb = generated["prototest"]
    entry = full_entry()
    data = codecs["prototest.Store/get"].encode_response(entry)
    parsed = pb.Entry.FromString(data)
    assert (parsed.key, list(parsed.tags), parsed.note, dict(parsed.counts)) == ("k", ["a", "b"], "n", {"x": 1})
    assert (parsed.children[0].key, parsed.color, parsed.parent.key, parsed.by_id[-3].color) == (
        "child", generated["colors"].COLOR_GREEN, "p", 1)
    assert parsed.SerializeToString(deterministic=True) == pb.Entry.FromString(data).SerializeToString(deterministic=True)
    request = pb.StoreGetRequest(key="q", default=3, exact=True).SerializeToString()
    assert codecs["prototest.Store/get"].decode_request(request) == ([], {"key": "q", "default": 3, "exact": True})
    assert pb.StoreGetRequest(key="q", default=3, exact=True).SerializeToString() == \
        codecs["prototest.Store/get"].request_type(key="q", default=3, exact=True).SerializeToString()
    assert [m.name for m in pb.DESCRIPTOR.services_by_name["Store"].methods] == [
        "get", "put", "count", "scan", "total", "echo", "paint"]
    assert hasattr(generated["grpc"], "StoreStub") and hasattr(generated["grpc"], "OtherServicer")


def test_protocs_descriptors_equal_the_ones_the_codecs_use(generated, schema):
    for module, name in ((generated["prototest"], "prototest.proto"), (generated["colors"], "tests/proto_services.proto")):
        theirs = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(theirs)
        ours = descriptor_pb2.FileDescriptorProto()
        schema.pool.FindFileByName(name).CopyToProto(ours)
        for proto in (theirs, ours):
            for message_proto in proto.message_type:
                for f in message_proto.field:
                    f.ClearField("json_name")
        assert ours == theirs


# ------------------------------------------------------------------------- standard services
def test_the_health_codecs_speak_grpcs_messages_with_trpcs_statuses():
    health = HealthService(HealthRegistry(["prototest.Store"]))
    codecs = build_codecs(methods_of(health))
    check, watch = codecs["grpc.health.v1.Health/Check"], codecs["grpc.health.v1.Health/Watch"]
    request = check.request_type(service="prototest.Store").SerializeToString()
    assert check.decode_request(request) == (["prototest.Store"], {})
    assert check.response_type.FromString(check.encode_response("SERVING")).status == 1
    assert watch.response_type.FromString(watch.encode_item("SERVICE_UNKNOWN")).status == 3
    assert watch.response_type.FromString(watch.encode_item("SOMETHING_NEW")).status == 0


def test_the_standard_files_match_grpcios_own():
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
    reflection_pb2 = pytest.importorskip("grpc_reflection.v1alpha.reflection_pb2")
    from trpc.grpc import _standard

    ours = _standard.files(_proto._protobuf())

    def shape(proto: Any) -> Any:
        return sorted((m.name, sorted((f.name, f.number, f.type, f.label, f.type_name) for f in m.field))
                      for m in proto.message_type), [(s.name, [(m.name, m.input_type, m.output_type,
                                                              m.client_streaming, m.server_streaming)
                                                             for m in s.method]) for s in proto.service]

    for module, name in ((health_pb2, _standard.HEALTH_FILE), (reflection_pb2, _standard.REFLECTION_V1ALPHA_FILE)):
        theirs = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(theirs)
        mine = shape(ours[name])
        expected = shape(theirs)
        # grpcio's health.proto may have more (List); every message and method of ours is theirs
        assert set(map(repr, mine[0])) <= set(map(repr, expected[0])), name
        for service, methods in mine[1]:
            assert set(methods) <= set(dict(expected[1])[service])


async def ask(reflection: ServerReflectionService, *requests: dict) -> list:
    schema, request_type, response_type = reflection._ready()

    async def stream() -> AsyncIterator[bytes]:
        for request in requests:
            yield request_type(**request).SerializeToString()

    return [response_type.FromString(data) async for data in reflection.info(stream())]


async def test_reflection_lists_services_and_its_files_resolve_a_methods_types():
    store = Store()
    health = HealthService(HealthRegistry())
    table: dict = {}
    services = [ServerReflectionService(lambda: table), _standard_alpha(lambda: table)]
    table.update(methods_of(store, health, *services, Unmappable()))
    listed, found = await ask(services[0], {"list_services": ""}, {"file_containing_symbol": "prototest.Store"})
    assert [s.name for s in listed.list_services_response.service] == [
        "prototest.Store", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection"]  # Unmappable has nothing in protobuf
    pool = descriptor_pool.DescriptorPool()
    files = [descriptor_pb2.FileDescriptorProto.FromString(data)
             for data in found.file_descriptor_response.file_descriptor_proto]
    assert files[0].name == "prototest.proto"
    for fdp in reversed(files):  # dependencies come after the file asked for
        pool.Add(fdp)
    method = pool.FindMethodByName("prototest.Store.get")
    assert (method.input_type.full_name, method.output_type.full_name) == ("prototest.StoreGetRequest", "prototest.Entry")
    entry_class = message_factory.GetMessageClass(method.output_type)
    assert Entry.__trpc_message__  # the resolved class reads what the codec writes:
    assert entry_class.FromString(_encode_message(Entry("x", 4))).value == 4


def _standard_alpha(source):
    from trpc.grpc._standard import ServerReflectionV1Alpha

    return ServerReflectionV1Alpha(source)


async def test_reflection_answers_files_by_name_and_not_found_for_the_unknown():
    table: dict = {}
    reflection = _standard_alpha(lambda: table)
    table.update(methods_of(Store(), reflection))
    by_name, missing, no_symbol, extensions, no_extension = await ask(
        reflection, {"file_by_filename": "grpc/reflection/v1/reflection.proto", "host": "h"},
        {"file_by_filename": "nope.proto"}, {"file_containing_symbol": "prototest.Nope"},
        {"all_extension_numbers_of_type": "prototest.Entry"},
        {"file_containing_extension": {"containing_type": "prototest.Entry", "extension_number": 100}})
    assert by_name.valid_host == "h" and by_name.original_request.file_by_filename.endswith("reflection.proto")
    [data] = by_name.file_descriptor_response.file_descriptor_proto
    assert descriptor_pb2.FileDescriptorProto.FromString(data).package == "grpc.reflection.v1"
    for answer in (missing, no_symbol, no_extension):
        assert answer.error_response.error_code == trpc.Status.NOT_FOUND.value
    assert extensions.all_extension_numbers_response.base_type_name == "prototest.Entry"
    assert list(extensions.all_extension_numbers_response.extension_number) == []


async def test_reflection_is_a_service_a_trpc_server_can_serve(nursery):
    """Every Server with gRPC on (the default) and protobuf installed serves it."""
    server = trpc.Server(Store())
    reflection = [service for service in server._table.services.values()
                  if type(service).__name__ == "ServerReflectionService"]
    address = await nursery.start(server.serve_tcp, 0)
    schema, request_type, response_type = reflection[0]._ready()
    async with trpc.open_client(address) as client:
        async with client.method("grpc.reflection.v1.ServerReflection/ServerReflectionInfo").open() as call:
            await call.send(request_type(list_services="").SerializeToString())
            await call.done_sending()
            answers = [response_type.FromString(data) async for data in call]
    assert "prototest.Store" in [s.name for s in answers[0].list_services_response.service]


# ------------------------------------------------------------------------- trpc proto
def run_proto(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trpc", "proto", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_trpc_proto_prints_a_file_protoc_compiles(tmp_path):
    pytest.importorskip("grpc_tools")
    (tmp_path / "greeter.py").write_text(
        "import trpc\n"
        "from typing import AsyncIterator\n"
        "class Greeter(trpc.Service, name='hello.Greeter'):\n"
        "    @trpc.unary\n"
        "    async def greet(self, name: str) -> str: ...\n"
        "    @trpc.server_stream\n"
        "    async def many(self, name: str, times: int = 2) -> AsyncIterator[str]:\n"
        "        yield name\n")
    result = run_proto("greeter:Greeter", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'package hello;' in result.stdout and "rpc greet(.hello.GreeterGreetRequest)" in result.stdout
    (tmp_path / "hello.proto").write_text(result.stdout)
    compiled = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "hello.proto"],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert compiled.returncode == 0, compiled.stderr
    assert (tmp_path / "hello_pb2.py").exists()


def test_trpc_proto_writes_one_file_per_package_and_says_when_it_must(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    result = run_proto("tests.proto_services:Store", cwd=repo)
    assert result.returncode == 2 and "give --out DIR" in result.stderr
    result = run_proto("tests.proto_services:Store", "tests.proto_services:Other", "--out", str(tmp_path), cwd=repo)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "prototest.proto").read_text().count("service ") == 2
    assert (tmp_path / "tests" / "proto_services.proto").exists()


def test_trpc_proto_says_in_one_line_what_does_not_map(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    result = run_proto("tests.test_proto:Unmappable", cwd=repo)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("trpc: prototest.Unmappable/")
