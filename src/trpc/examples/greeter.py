"""The example service: ``trpc serve trpc.examples:Greeter``, then
``trpc call 127.0.0.1:50051 greet Ada`` prints ``Hello Ada``."""

from __future__ import annotations

from typing import AsyncIterator

import trio

import trpc


class Greeter(trpc.Service, name="hello.Greeter"):
    """Says hello, in each of the four call shapes."""

    @trpc.unary
    async def greet(self, name: str) -> str:
        return f"Hello {name}"

    @trpc.server_stream
    async def count(self, n: int) -> AsyncIterator[int]:
        """Yields 0, 1, ... n-1."""
        for i in range(n):
            yield i

    @trpc.client_stream
    async def total(self, numbers: AsyncIterator[int]) -> int:
        """The sum of the numbers the client streams."""
        return sum([x async for x in numbers])

    @trpc.bidi_stream
    async def echo(self, messages: AsyncIterator[str]) -> AsyncIterator[str]:
        """Sends every message back as it arrives."""
        async for message in messages:
            yield message

    @trpc.unary
    async def sleep(self, seconds: float) -> float:
        """Sleeps, then returns how long it slept (for trying deadlines)."""
        start = trio.current_time()
        await trio.sleep(seconds)
        return trio.current_time() - start


if __name__ == "__main__":
    trio.run(trpc.serve, Greeter())
