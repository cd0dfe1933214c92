"""Services the tests serve."""

from __future__ import annotations

import trio

import trpc
from trpc import RpcError, Status


class Svc(trpc.Service):
    """greet and count are declared idempotent (so a client of protocol 1.1 gets an INFO)."""

    def __init__(self) -> None:
        self.started = trio.Event()
        self.cancelled = trio.Event()
        self.cancel_reasons: list = []
        self.finished = 0

    @trpc.unary(idempotent=True)
    async def greet(self, name: str) -> str:
        return f"Hello {name}"

    @trpc.unary
    async def add(self, a, b=0):
        return a + b

    @trpc.unary
    async def echo(self, value):
        return value

    @trpc.unary
    async def nothing(self):
        return None

    @trpc.unary
    async def fail(self, kind: str):
        if kind == "rpc":
            raise RpcError(Status.NOT_FOUND, "no such thing", {"id": 7}, trailers={"hint": "try 8"})
        raise ValueError("secret internal detail")

    @trpc.unary
    async def sleep_then(self, seconds: float, value):
        await trio.sleep(seconds)
        return value

    @trpc.unary
    async def block(self):
        """Blocks until cancelled; records that and why."""
        self.started.set()
        try:
            await trio.sleep_forever()
        finally:
            self.cancel_reasons.append(trpc.current_call().cancel_reason)
            self.cancelled.set()

    @trpc.unary
    async def remaining(self):
        return trpc.current_call().time_remaining()

    @trpc.unary
    async def whoami(self):
        call = trpc.current_call()
        return {"method": call.method, "metadata": call.metadata, "peer": call.peer}

    @trpc.server_stream(idempotent=True)
    async def count(self, n: int):
        for i in range(n):
            yield i

    @trpc.client_stream
    async def total(self, numbers):
        return sum([x async for x in numbers])

    @trpc.bidi_stream
    async def bidi_echo(self, messages):
        async for m in messages:
            yield m
