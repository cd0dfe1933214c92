"""What the type checkers must see of a typed client: tests/test_typing.py runs mypy --strict and
pyright over this file.  Never imported (reveal_type is for the checkers).  A line whose comment
says "reveal: T" is one where both must reveal the type T; a line whose comment says "error" is
one where both must report an error; no other line may have one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import trpc
from trpc.examples import Entry, Greeter, Store


class GreeterAPI(Protocol):
    @trpc.unary
    async def greet(self, name: str) -> str: ...

    @trpc.server_stream
    def count(self, n: int) -> AsyncIterator[int]: ...


async def check(client: trpc.Client) -> None:
    greeter = client.stub(Greeter, timeout=2)
    reveal_type(await greeter.greet("Ada"))  # reveal: str
    reveal_type(greeter.count(3))  # reveal: AsyncIterator[int]
    reveal_type(await greeter.total([1, 2]))  # reveal: int
    reveal_type(greeter.echo(["a"]))  # reveal: AsyncIterator[str]
    api = client.stub(GreeterAPI, name="hello.Greeter")
    reveal_type(await api.greet("Ada"))  # reveal: str
    reveal_type(api.count(3))  # reveal: AsyncIterator[int]
    store = client.stub(Store)
    reveal_type(await store.get("k"))  # reveal: Entry
    reveal_type(await Greeter().total([1, 2]))  # reveal: int
    reveal_type(Entry(key="a", value=1).value)  # reveal: int
    await greeter.greet(42)  # error
    greeter.count("3")  # error
    await greeter.total(["a"])  # error
    number: int = await greeter.greet("Ada")  # error
    await greeter.greet("Ada", timeout=1)  # error
    await store.put_many([Entry("k"), "not an entry"])  # error
    Entry(key=1)  # error
    Entry("k", 1, b"", 4)  # error
    client.stub(Greeter, timeout="soon")  # error
