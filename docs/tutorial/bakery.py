"""The tutorial's service: a bakery's counter (docs/tutorial.md).

``trpc serve bakery:Bakery --port 50051`` in this folder serves it.
"""

from __future__ import annotations

from typing import AsyncIterator

import trpc


@trpc.message("bakery.Delivery")
class Delivery:
    """Loaves brought to the counter."""

    bread: str = trpc.field(1)
    loaves: int = trpc.field(2, default=1)


class Bakery(trpc.Service, name="bakery.Counter"):
    """Sells bread, in each of the four call shapes."""

    def __init__(self) -> None:
        self.shelf = {"rye": 3, "spelt": 1}

    @trpc.unary
    async def buy(self, bread: str, loaves: int = 1) -> int:
        """Take loaves off the shelf; returns how many are left."""
        left = self.shelf.get(bread, 0)
        if loaves > left:
            raise trpc.RpcError(trpc.Status.FAILED_PRECONDITION, f"only {left} {bread} left")
        self.shelf[bread] = left - loaves
        return left - loaves

    @trpc.server_stream
    async def menu(self) -> AsyncIterator[str]:
        """Every bread on the shelf, in name order."""
        for bread in sorted(self.shelf):
            yield bread

    @trpc.client_stream
    async def deliver(self, deliveries: AsyncIterator[Delivery]) -> int:
        """Put each delivery on the shelf; returns the loaves received."""
        received = 0
        async for delivery in deliveries:
            self.shelf[delivery.bread] = self.shelf.get(delivery.bread, 0) + delivery.loaves
            received += delivery.loaves
        return received

    @trpc.bidi_stream
    async def ask(self, breads: AsyncIterator[str]) -> AsyncIterator[str]:
        """Answer each bread asked about, as it arrives, with the loaves left."""
        async for bread in breads:
            yield f"{bread}: {self.shelf.get(bread, 0)}"
