"""The reflection service: one document per server, built and encoded once, read back by
``client.reflect()`` into dataclasses (docs/PROTOCOL.md section 13)."""

from __future__ import annotations

import dataclasses
import typing
from typing import TYPE_CHECKING, AsyncIterator, Literal, Optional

import pytest

import trpc
from trpc import Cardinality, RpcError, Status
from trpc._reflection import DESCRIBE_METHOD, build_document, type_text

if TYPE_CHECKING:
    from decimal import Decimal  # never imported: its annotation cannot be resolved


@trpc.message("refl.Entry")
class Entry:
    """One key and its value."""

    key: str = trpc.field(1)
    tags: list[str] = trpc.field(3, default_factory=list)
    value: int | None = trpc.field(2, default=None)


@trpc.message("refl.Plain")
@dataclasses.dataclass
class Plain:
    x: int = trpc.field(1)


class Store(trpc.Service, name="refl.Store"):
    """A key-value store.

    Keys are text.
    """

    @trpc.unary(idempotent=True)
    async def get(self, key: str, *, default: Entry | None = None) -> Entry:
        """The entry under ``key``."""
        return Entry(key, value=1)

    @trpc.unary
    async def put(self, entry: Entry, /, *more: Entry, replace: bool = True, **options: str) -> None:
        return None

    @trpc.server_stream(name="Scan")
    async def scan(self, prefix: str = "a") -> AsyncIterator[Entry]:
        yield Entry(prefix)

    @trpc.client_stream
    async def load(self, entries: AsyncIterator[Entry]) -> int:
        return 0

    @trpc.bidi_stream
    async def price(self, amounts: AsyncIterator[Decimal]) -> AsyncIterator[Decimal]:
        yield 1

    @trpc.unary
    async def bare(self, a, b=(1, "x")):
        return a


def test_annotations_read_as_they_do_in_source():
    assert type_text(int) == "int" and type_text(None) == "None" and type_text(type(None)) == "None"
    assert type_text(Optional[int]) == "int | None" and type_text(int | str) == "int | str"
    assert type_text(list[Entry]) == "list[Entry]" and type_text(typing.List[int]) == "List[int]"
    assert type_text(dict[str, tuple[int, ...]]) == "dict[str, tuple[int, ...]]"
    assert type_text(AsyncIterator[str]) == "AsyncIterator[str]"
    assert type_text(Literal["a", 1]) == "Literal['a', 1]"
    assert type_text(typing.Callable[[int], str]) == "Callable[[int], str]"
    assert type_text(typing.Any) == "Any" and type_text("Later") == "Later"


def document() -> dict:
    server = trpc.Server(Store(), health=False, grpc=False)  # (gRPC would add its own reflection)
    return build_document(server._table.services, server.methods.values())


def test_the_document_describes_each_method_of_a_service():
    doc = document()
    assert doc["version"] == 1
    (store, reflection) = doc["services"]
    assert store["name"] == "refl.Store" and store["doc"] == "A key-value store.\n\nKeys are text."
    assert reflection["name"] == "trpc.reflection.v1.Reflection"
    get, put, scan, load, price, bare = store["methods"]
    assert get == {
        "name": "get", "path": "refl.Store/get", "shape": "unary", "idempotent": True,
        "doc": "The entry under ``key``.",
        "params": [
            {"name": "key", "kind": "positional_or_keyword", "annotation": "str"},
            {"name": "default", "kind": "keyword_only", "annotation": "Entry | None", "default": "None"},
        ],
        "returns": "Entry",
    }
    assert [(p["name"], p["kind"], p["annotation"], p.get("default")) for p in put["params"]] == [
        ("entry", "positional_only", "Entry", None), ("more", "var_positional", "Entry", None),
        ("replace", "keyword_only", "bool", "True"), ("options", "var_keyword", "str", None),
    ]
    assert put["returns"] == "None" and put["doc"] is None and not put["idempotent"]
    assert (scan["name"], scan["path"], scan["shape"]) == ("Scan", "refl.Store/Scan", "server_stream")
    assert scan["params"] == [{"name": "prefix", "kind": "positional_or_keyword", "annotation": "str",
                               "default": "'a'"}]
    assert scan["returns"] == "AsyncIterator[Entry]"
    assert load["shape"] == "client_stream" and load["params"][0]["annotation"] == "AsyncIterator[Entry]"
    # Decimal cannot be resolved (TYPE_CHECKING): the annotations stay as written
    assert price["shape"] == "bidi_stream"
    assert (price["params"][0]["annotation"], price["returns"]) == ("AsyncIterator[Decimal]", "AsyncIterator[Decimal]")
    assert bare["params"] == [{"name": "a", "kind": "positional_or_keyword", "annotation": None},
                              {"name": "b", "kind": "positional_or_keyword", "annotation": None,
                               "default": "(1, 'x')"}]
    assert bare["returns"] is None


def test_the_document_describes_every_registered_message_class_in_field_number_order():
    messages = {m["name"]: m for m in document()["messages"]}
    assert messages["refl.Entry"] == {
        "name": "refl.Entry", "doc": "One key and its value.",
        "fields": [
            {"number": 1, "name": "key", "annotation": "str"},
            {"number": 2, "name": "value", "annotation": "int | None", "default": "None"},
            {"number": 3, "name": "tags", "annotation": "list[str]", "default": "[]"},
        ],
    }
    assert messages["refl.Plain"]["doc"] is None  # not dataclass's made-up "Plain(x: int)"
    assert list(messages) == sorted(messages)


def test_a_class_defined_in_a_function_keeps_its_raw_annotations():
    @trpc.message("refl.Local")
    class Local:
        a: Local | None = trpc.field(1, default=None)

    class Uses(trpc.Service, name="refl.Uses"):
        @trpc.unary
        async def f(self, x: Local) -> Local:
            return x

    server = trpc.Server(Uses(), health=False, reflection=False)
    doc = build_document(server._table.services, server.methods.values())
    (method,) = doc["services"][0]["methods"]
    assert method["params"][0]["annotation"] == "Local" and method["returns"] == "Local"
    (local,) = [m for m in doc["messages"] if m["name"] == "refl.Local"]
    assert local["fields"][0]["annotation"] == "Local | None"


async def test_a_client_reads_the_document_into_dataclasses(nursery):
    address = await nursery.start(trpc.Server(Store()).serve_tcp, 0)
    async with trpc.open_client(address) as client:
        reflection = await client.reflect()
    assert isinstance(reflection, trpc.Reflection) and reflection.version == 1
    assert [s.name for s in reflection.services] == [
        "refl.Store", "grpc.health.v1.Health", "trpc.reflection.v1.Reflection",
        "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
    get = reflection.method("refl.Store/get")
    assert reflection.method("get") is get and reflection.service("refl.Store").methods[0] is get
    assert get == trpc.MethodDescription(
        name="get", path="refl.Store/get", shape=Cardinality.UNARY, idempotent=True,
        doc="The entry under ``key``.",
        params=[trpc.ParamDescription("key", "positional_or_keyword", "str", None, False),
                trpc.ParamDescription("default", "keyword_only", "Entry | None", "None", True)],
        returns="Entry",
    )
    assert reflection.method("Scan").shape is Cardinality.SERVER_STREAM
    assert reflection.method(DESCRIBE_METHOD).idempotent
    entry = reflection.message("refl.Entry")
    assert entry.fields[2] == trpc.FieldDescription(3, "tags", "list[str]", "[]", True)
    assert entry.fields[0] == trpc.FieldDescription(1, "key", "str", None, False)
    for lookup, name in ((reflection.service, "x.Y"), (reflection.method, "nope"), (reflection.message, "x")):
        with pytest.raises(KeyError):
            lookup(name)


def test_a_short_name_two_services_share_is_ambiguous_in_the_reflection():
    doc = {"version": 1, "messages": [], "services": [
        {"name": n, "doc": None, "methods": [
            {"name": "get", "path": f"{n}/get", "shape": "unary", "idempotent": False, "doc": None,
             "params": [], "returns": None}]} for n in ("a.A", "b.B")]}
    reflection = trpc.Reflection.from_document(doc)
    with pytest.raises(KeyError, match="ambiguous: a.A/get, b.B/get"):
        reflection.method("get")
    assert reflection.method("b.B/get").path == "b.B/get"


GOOD = {
    "version": 1, "later": {"any": "thing"},
    "services": [{"name": "a.A", "doc": None, "new": 1, "methods": [
        {"name": "m", "path": "a.A/m", "shape": "bidi_stream", "idempotent": False, "doc": "d", "more": [],
         "params": [{"name": "p", "kind": "some_later_kind", "annotation": None, "default": "1"}],
         "returns": None}]}],
    "messages": [{"name": "a.M", "doc": None, "fields": [{"number": 1, "name": "f", "annotation": "int"}]}],
}


def test_reading_ignores_keys_it_does_not_know():
    reflection = trpc.Reflection.from_document(GOOD)
    assert reflection.method("m").params == [trpc.ParamDescription("p", "some_later_kind", None, "1", True)]
    assert reflection.message("a.M").fields == [trpc.FieldDescription(1, "f", "int", None, False)]


def _broken(path: str, value):
    doc = __import__("copy").deepcopy(GOOD)
    *parents, last = path
    target = doc
    for key in parents:
        target = target[key]
    target[last] = value
    return doc


@pytest.mark.parametrize("path,value,where", [
    (("version",), 2, "version 2 is not supported"),
    (("version",), True, "version must be an integer"),
    (("services",), {}, "services must be an array"),
    (("services", 0, "name"), None, "services[0].name must be text"),
    (("services", 0, "methods", 0, "shape"), "stream", "services[0].methods[0].shape must be one of"),
    (("services", 0, "methods", 0, "idempotent"), 1, "services[0].methods[0].idempotent must be a boolean"),
    (("services", 0, "methods", 0, "params", 0, "default"), None, "services[0].methods[0].params[0].default must be text"),
    (("messages", 0, "fields", 0, "number"), 0, "messages[0].fields[0].number must be a positive integer"),
    (("messages", 0, "fields", 0), [], "messages[0].fields[0] must be a map"),
])
def test_reading_is_strict_about_the_keys_it_knows(path, value, where):
    with pytest.raises(ValueError) as error:
        trpc.Reflection.from_document(_broken(path, value))
    assert where in str(error.value)


async def test_a_malformed_document_from_the_server_is_internal(nursery):
    class Liar(trpc.Service, name="trpc.reflection.v1.Reflection"):
        @trpc.unary
        async def Describe(self):
            return {"version": 1, "services": "none"}

    address = await nursery.start(trpc.Server(Liar(), reflection=False).serve_tcp, 0)
    async with trpc.open_client(address) as client:
        with pytest.raises(RpcError) as error:
            await client.reflect()
    assert error.value.status is Status.INTERNAL and "services must be an array" in error.value.message


async def test_reflection_false_leaves_the_service_out(nursery):
    server = trpc.Server(Store(), reflection=False)
    assert DESCRIBE_METHOD not in server.methods
    async with trpc.open_client(await nursery.start(server.serve_tcp, 0)) as client:
        with pytest.raises(RpcError) as error:
            await client.reflect()
    assert error.value.status is Status.UNIMPLEMENTED


async def test_the_document_is_built_and_encoded_once_per_server(nursery, monkeypatch):
    server = trpc.Server(Store())

    def no_more(*args, **kwargs):
        raise AssertionError("built or encoded again")

    for name in ("build_document", "_describe_method", "_describe_message", "type_text"):
        monkeypatch.setattr(f"trpc._reflection.{name}", no_more)
    monkeypatch.setattr("trpc._server.build_document", no_more)
    async with trpc.open_client(await nursery.start(server.serve_tcp, 0)) as client:
        first = await client.method(DESCRIBE_METHOD)()
        second = await client.method(DESCRIBE_METHOD)()
    assert first == second and first["services"][0]["name"] == "refl.Store"
    # the handler hands the same encoded bytes to every call
    service = server._table.services["trpc.reflection.v1.Reflection"]
    answer = await service.describe()
    assert answer is await service.describe() and type(answer.payload) is bytes
