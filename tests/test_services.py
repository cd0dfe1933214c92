"""Services have names: methods are addressed by path, short names work when unambiguous, and
UNIMPLEMENTED says which part of a name is unknown (docs/PROTOCOL.md section 4)."""

from __future__ import annotations

import pytest

import trpc
from trpc import RpcError, Status
from trpc._service import MethodTable


class Store(trpc.Service, name="kv.Store"):
    @trpc.unary(idempotent=True)
    async def get(self, key):
        return f"store {key}"

    @trpc.unary
    async def put(self, key, value):
        return True


class Cache(trpc.Service, name="kv.Cache"):
    @trpc.unary
    async def get(self, key):
        return f"cache {key}"

    @trpc.server_stream
    async def keys(self):
        yield "a"


class Unnamed(trpc.Service):
    @trpc.unary
    async def hello(self):
        return "hi"


def test_a_service_is_named_explicitly_or_after_its_module_and_class():
    assert trpc.service_name(Store) == Store.__trpc_service__ == "kv.Store"
    assert trpc.service_name(Store()) == "kv.Store"
    assert trpc.service_name(Unnamed) == "tests.test_services.Unnamed"


def test_a_class_defined_in_a_function_is_named_without_locals():
    class Local(trpc.Service):
        pass

    assert trpc.service_name(Local) == (
        "tests.test_services.test_a_class_defined_in_a_function_is_named_without_locals.Local")


def test_a_class_of_the_main_script_is_named_without_main():
    Main = type("Main", (trpc.Service,), {"__module__": "__main__", "__qualname__": "Main"})
    assert trpc.service_name(Main) == "Main"


def test_a_subclass_keeps_the_name_its_base_was_given_and_may_give_its_own():
    class Impl(Store):
        pass

    class Renamed(Store, name="kv.Store2"):
        pass

    class Derived(Unnamed):
        pass

    assert trpc.service_name(Impl) == "kv.Store" and trpc.service_name(Renamed) == "kv.Store2"
    assert trpc.service_name(Derived).endswith("Derived")  # a derived name is not inherited
    assert Renamed.__trpc_methods__["get"].path == "kv.Store2/get"


@pytest.mark.parametrize("bad", ["", "kv.", ".kv", "kv..Store", "kv/Store", "1kv", "kv Store", "kv-Store", 5])
def test_a_service_name_that_is_not_dotted_identifiers_is_a_type_error(bad):
    with pytest.raises(TypeError, match="identifiers joined by dots"):
        class Bad(trpc.Service, name=bad):
            pass


@pytest.mark.parametrize("bad", ["", "a/b"])
def test_a_method_name_with_a_slash_or_empty_is_a_type_error(bad):
    with pytest.raises(TypeError, match="method name"):
        trpc.unary(name=bad)(Store.get)


def test_method_info_carries_its_service_and_path():
    info = Store.__trpc_methods__["get"]
    assert (info.name, info.service, info.path, info.idempotent) == ("get", "kv.Store", "kv.Store/get", True)


def test_services_whose_methods_share_names_share_a_server():
    server = trpc.Server(Store(), Cache(), health=False, reflection=False)
    assert list(server.methods) == ["kv.Store/get", "kv.Store/put", "kv.Cache/get", "kv.Cache/keys"]
    # get is ambiguous, so only its paths are declared idempotent
    assert server.idempotent_methods == {"kv.Store/get"}


def test_two_services_with_one_name_are_a_type_error():
    class Other(trpc.Service, name="kv.Store"):
        pass

    with pytest.raises(TypeError, match="two services are named 'kv.Store'"):
        trpc.Server(Store(), Other())


def test_the_table_finds_paths_and_unambiguous_short_names_in_one_dict():
    table = MethodTable([Store(), Cache()])
    assert set(table.lookup) == {"kv.Store/get", "kv.Store/put", "kv.Cache/get", "kv.Cache/keys", "put", "keys"}
    assert table.lookup["put"] is table.lookup["kv.Store/put"]
    assert table.ambiguous == {"get": ["kv.Store/get", "kv.Cache/get"]}
    assert table.short_names("kv.Store/put") == ("kv.Store/put", "put")
    assert table.short_names("kv.Store/get") == ("kv.Store/get",)


async def _serve(nursery, *services, **options):
    server = trpc.Server(*services, **options)
    return await nursery.start(server.serve_tcp, 0)


async def test_a_client_calls_by_short_name_by_service_and_by_path(nursery):
    address = await _serve(nursery, Store(), Cache())
    async with trpc.open_client(address) as client:
        assert await client.put("k", 1) is True  # short name, one service has it
        assert await client["kv.Store"].get("k") == "store k"
        assert await client["kv.Cache"].get("k") == "cache k"
        assert [k async for k in client["kv.Cache"].keys()] == ["a"]
        assert await client.method("kv.Cache/get")("x") == "cache x"
        assert await client["kv.Store"].method("get")("y") == "store y"
        assert client["kv.Store"].get.name == "kv.Store/get"
        with pytest.raises(TypeError):
            client["kv/Store"]


@pytest.mark.parametrize("name,message", [
    ("get", 'short name "get" is ambiguous: call it by its path, one of kv.Store/get, kv.Cache/get'),
    ("x.Y/get", 'unknown service "x.Y"'),
    ("kv.Store/gett", 'service "kv.Store" has no method "gett"'),
    ("gett", 'unknown method "gett"'),
    ("kv.Cache/put", 'service "kv.Cache" has no method "put"'),
])
async def test_unimplemented_says_whether_the_service_the_method_or_the_short_name_is_wrong(nursery, name, message):
    address = await _serve(nursery, Store(), Cache())
    async with trpc.open_client(address) as client:
        with pytest.raises(RpcError) as error:
            await client.method(name)("k")
    assert error.value.status is Status.UNIMPLEMENTED and error.value.message == message


async def test_the_handler_sees_the_path_whatever_name_the_client_sent(nursery):
    class Who(trpc.Service, name="who.Am"):
        @trpc.unary
        async def i(self):
            return trpc.current_call().method

    address = await _serve(nursery, Who())
    async with trpc.open_client(address) as client:
        assert await client.i() == await client["who.Am"].i() == "who.Am/i"


async def test_the_health_service_registers_each_service_by_name(nursery):
    server = trpc.Server(Store(), Cache())
    assert server.health("kv.Store") is server.health("kv.Cache") is trpc.HealthStatus.SERVING
    assert server.health("Store") is trpc.HealthStatus.SERVICE_UNKNOWN
    address = await nursery.start(server.serve_tcp, 0)
    async with trpc.open_client(address) as client:
        assert await client["grpc.health.v1.Health"].Check("kv.Cache") == "SERVING"


async def test_the_client_connection_keeps_the_shapes_the_server_declared(nursery):
    address = await _serve(nursery, Store(), Cache(), health=False, reflection=False)
    async with trpc.open_client(address) as client:
        await client.put("k", 1)
        assert client._connection.methods == {
            "kv.Store/get": trpc.Cardinality.UNARY, "kv.Store/put": trpc.Cardinality.UNARY,
            "kv.Cache/get": trpc.Cardinality.UNARY, "kv.Cache/keys": trpc.Cardinality.SERVER_STREAM,
        }
        assert client._connection.idempotent == {"kv.Store/get"}
