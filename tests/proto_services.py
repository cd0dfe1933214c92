"""Services and messages whose types all map to protobuf (tests/test_proto.py), in the package
``prototest``; the enum ``Color`` is named after this module (``tests.proto_services.Color``)."""

from __future__ import annotations

import enum
from typing import AsyncIterator

import trpc


class Color(enum.IntEnum):
    NONE = 0
    RED = 1
    GREEN = 2


@trpc.message("prototest.Entry")
class Entry:
    key: str = trpc.field(1)
    value: int = trpc.field(2, default=7)
    tags: list[str] = trpc.field(3, default_factory=list)
    note: str | None = trpc.field(4, default=None)
    counts: dict[str, int] = trpc.field(5, default_factory=dict)
    children: list[Entry] = trpc.field(6, default_factory=list)
    color: Color = trpc.field(7, default=Color.NONE)
    parent: Entry | None = trpc.field(8, default=None)
    ratio: float = trpc.field(9, default=0.0)
    raw: bytes = trpc.field(10, default=b"")
    flag: bool = trpc.field(11, default=False)
    by_id: dict[int, Entry] = trpc.field(12, default_factory=dict)
    shades: list[Color] = trpc.field(14, default_factory=list)


class Store(trpc.Service, name="prototest.Store"):
    @trpc.unary
    async def get(self, key: str, default: int | None = None, *, exact: bool = True) -> Entry:
        return Entry(key, default if default is not None else -1, flag=exact)

    @trpc.unary
    async def put(self, entry: Entry) -> None:
        self.last = entry

    @trpc.unary
    async def count(self, prefix: str) -> int:
        return len(prefix)

    @trpc.server_stream
    async def scan(self, prefix: str, limit: int = 3) -> AsyncIterator[Entry]:
        for i in range(limit):
            yield Entry(f"{prefix}{i}", i)

    @trpc.client_stream
    async def total(self, numbers: AsyncIterator[int]) -> int:
        return sum([n async for n in numbers])

    @trpc.bidi_stream
    async def echo(self, entries: AsyncIterator[Entry]) -> AsyncIterator[str | None]:
        async for entry in entries:
            yield entry.note

    @trpc.unary
    async def paint(self, colors: list[Color], weights: dict[str, float]) -> dict[str, Color]:
        return {name: color for name, color in zip(weights, colors)}


class Other(trpc.Service, name="prototest.Other"):
    """A second service in the same package with a method of the same name."""

    @trpc.unary
    async def get(self, id: int) -> str | None:
        return None if id < 0 else str(id)
