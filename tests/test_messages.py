"""Message classes with stable field numbers: CBOR tag 27, and schemas that evolve."""

from __future__ import annotations

import dataclasses

import cbor2
import pytest
import trio
import trio.testing

import trpc
from trpc import RpcError, Status
from trpc._codec import decode, encode
from trpc._messages import _registry


@trpc.message("test.Point")
class Point:
    x: int = trpc.field(1)
    y: int = trpc.field(2, default=0)


@trpc.message("test.Path")
class Path:
    name: str = trpc.field(1)
    points: list = trpc.field(2, default_factory=list)


def test_wire_form_is_tag_27_with_numbers():
    tag = cbor2.loads(encode(Point(3, 4)))
    assert tag.tag == 27 and list(tag.value) == ["test.Point", {1: 3, 2: 4}]
    assert encode(Point(3, 4)) == bytes.fromhex("d8 1b 82 6a") + b"test.Point" + bytes.fromhex("a2 01 03 02 04")


def test_round_trip_nested_and_in_containers():
    path = Path("walk", [Point(1, 2), Point(3)])
    decoded = decode(encode(path))
    assert decoded == path and type(decoded.points) is list  # not cbor2 6's tuple
    value = {"paths": [path], "origin": Point(0, 0), "nested": Path("n", [{"k": [1]}])}
    assert decode(encode(value)) == value
    assert type(decode(encode(value))["nested"].points[0]) is dict


def test_a_newer_writer_an_older_reader_and_back():
    """Old reader: skips field 3 it does not know.  New reader: defaults what old writers lack."""
    newer = cbor2.dumps(cbor2.CBORTag(27, ["test.Point", {1: 1, 2: 2, 3: "altitude"}]))
    assert decode(newer) == Point(1, 2)
    older = cbor2.dumps(cbor2.CBORTag(27, ["test.Point", {1: 7}]))
    assert decode(older) == Point(7, 0)


def test_renaming_a_python_field_keeps_the_wire_contract():
    try:

        @trpc.message("test.Renamed")
        class V1:
            count: int = trpc.field(1)

        wire = encode(V1(5))
        del _registry["test.Renamed"]  # the next release of the program

        @trpc.message("test.Renamed")
        class V2:
            total: int = trpc.field(1)

        assert decode(wire) == V2(total=5)
    finally:
        _registry.pop("test.Renamed", None)


def test_unknown_names_and_malformed_content_stay_tags():
    unknown = decode(cbor2.dumps(cbor2.CBORTag(27, ["nobody.Knows", {1: 1}])))
    assert isinstance(unknown, cbor2.CBORTag) and list(unknown.value) == ["nobody.Knows", {1: 1}]
    odd = decode(cbor2.dumps(cbor2.CBORTag(27, "not a list")))
    assert isinstance(odd, cbor2.CBORTag) and odd.value == "not a list"
    other = decode(cbor2.dumps(cbor2.CBORTag(4000, 1)))
    assert isinstance(other, cbor2.CBORTag) and other.tag == 4000


def test_missing_required_field_is_a_decode_error():
    with pytest.raises(RpcError) as info:
        decode(cbor2.dumps(cbor2.CBORTag(27, ["test.Point", {2: 1}])), status=Status.INVALID_ARGUMENT)
    assert info.value.status is Status.INVALID_ARGUMENT


def test_definition_errors():
    with pytest.raises(TypeError, match="no field number"):

        @trpc.message("test.Bad1")
        class Bad1:
            a: int = 1

    with pytest.raises(TypeError, match="share number"):

        @trpc.message("test.Bad2")
        class Bad2:
            a: int = trpc.field(1)
            b: int = trpc.field(1)

    with pytest.raises(TypeError, match="already registered"):

        @trpc.message("test.Point")
        class Other:
            a: int = trpc.field(1)

    with pytest.raises(TypeError):
        trpc.field(0)
    with pytest.raises(TypeError):
        trpc.message("")


class Geometry(trpc.Service):
    @trpc.unary
    async def mirror(self, point: Point) -> Point:
        return dataclasses.replace(point, x=-point.x)

    @trpc.unary
    async def reject(self, point: Point):
        raise RpcError(Status.OUT_OF_RANGE, "too far", point)


async def test_messages_across_the_wire(nursery):
    server = trpc.Server(Geometry())
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream)
    async with trpc.open_client(client_stream) as client:
        assert await client.mirror(Point(3, 4)) == Point(-3, 4)
        with pytest.raises(RpcError) as info:
            await client.reject(Point(9, 9))
        assert info.value.details == Point(9, 9)  # messages in error details too
