"""What a client needs to know to retry a failed call: which methods are idempotent."""

from __future__ import annotations

import trpc


# ===================================================================== the decorators
def test_the_decorators_record_idempotent_and_default_to_not():
    class Bank(trpc.Service):
        @trpc.unary(idempotent=True)
        async def balance(self):
            return 1

        @trpc.unary
        async def pay(self):
            return 2

        @trpc.server_stream(idempotent=True, name="history")
        async def statements(self):
            yield 3

        @trpc.client_stream(idempotent=True)
        async def upload(self, items):
            return 4

        @trpc.bidi_stream()
        async def chat(self, items):
            yield 5

        @trpc.unary(name="transfer")
        async def move(self):
            return 6

    methods = Bank.__trpc_methods__
    assert {name: info.idempotent for name, info in methods.items()} == {
        "balance": True, "pay": False, "history": True, "upload": True, "chat": False, "transfer": False,
    }
    assert methods["history"].attribute == "statements"


def test_an_overriding_method_decides_idempotent_anew():
    class Base(trpc.Service):
        @trpc.unary(idempotent=True)
        async def get(self):
            return 1

    class Child(Base):
        @trpc.unary
        async def get(self):
            return 2

    assert Base.__trpc_methods__["get"].idempotent and not Child.__trpc_methods__["get"].idempotent


