"""A typed client: stubs made from the service class, and from a Protocol that describes it.

``python -m trpc.examples.typed_client`` serves :class:`~trpc.examples.Greeter` in memory and
calls each of its four shapes through ``client.stub(...)``.  ``mypy --strict`` and ``pyright``
check every call here against the methods' signatures (tests/test_typing.py runs both): a client
that passed ``greet(42)``, or read ``count``'s items as text, would not type-check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import trio

import trpc
import trpc.testing
from trpc.examples.greeter import Greeter


class GreeterAPI(Protocol):
    """What a client that must not import the server's code writes instead of importing
    ``Greeter``: the methods it calls, decorated as the service's are, with ``...`` bodies.
    A server-streaming (or bidi) method is declared with ``def`` returning an async iterator."""

    @trpc.unary
    async def greet(self, name: str) -> str: ...

    @trpc.server_stream
    def count(self, n: int) -> AsyncIterator[int]: ...

    @trpc.client_stream
    async def total(self, numbers: AsyncIterator[int]) -> int: ...

    @trpc.bidi_stream
    def echo(self, messages: AsyncIterator[str]) -> AsyncIterator[str]: ...


async def use(greeter: GreeterAPI) -> list[str]:
    """Each shape once, through a stub typed as ``GreeterAPI`` (a stub of ``Greeter`` is one)."""
    lines: list[str] = []
    hello: str = await greeter.greet("Ada")
    lines.append(hello)
    counted: list[int] = [i async for i in greeter.count(3)]
    lines.append(f"count(3): {counted}")
    total: int = await greeter.total([1, 2, 3])  # any iterable or async iterable of int
    lines.append(f"total([1, 2, 3]): {total}")
    echoed: list[str] = [reply async for reply in greeter.echo(["a", "b"])]
    lines.append(f"echo(['a', 'b']): {echoed}")
    return lines


async def main() -> list[str]:
    async with trpc.testing.open_test_client(Greeter()) as client:
        # From the service class itself: its name (hello.Greeter) and its methods.
        greeter: Greeter = client.stub(Greeter, timeout=5)
        lines = await use(greeter)
        # From the Protocol: the service's name given, so calls go to hello.Greeter/<method>.
        api: GreeterAPI = client.stub(GreeterAPI, name="hello.Greeter")
        lines += await use(api)
        return lines


if __name__ == "__main__":
    for line in trio.run(main):
        print(line)
