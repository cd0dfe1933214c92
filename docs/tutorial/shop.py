"""The tutorial's client: each call shape against a running Bakery (docs/tutorial.md).

``python shop.py 127.0.0.1:50051`` in this folder, while ``trpc serve bakery:Bakery`` runs.
"""

from __future__ import annotations

import sys

import trio

import trpc
from bakery import Delivery


async def main(target: str = "127.0.0.1:50051") -> None:
    async with trpc.open_client(target, timeout=10) as client:
        # Unary: one request, one response.
        print("rye left:", await client.buy("rye", 2))

        # Server streaming: iterate over the responses.
        async for bread in client.menu():
            print("on the menu:", bread)

        # Client streaming: pass an async iterable of the requests.
        async def deliveries():
            yield Delivery("rye", loaves=4)
            yield Delivery("wheat", loaves=2)

        print("received:", await client.deliver(deliveries()))

        # Bidirectional streaming: open the call, send and receive as you like.
        async with client.ask.open() as stream:
            for bread in ["rye", "wheat"]:
                await stream.send(bread)
                print(await stream.receive())
            await stream.done_sending()
            async for _ in stream:  # the end of the call (the server sends nothing more)
                pass

        # A handler's RpcError arrives as the same RpcError.
        try:
            await client.buy("spelt", 5)
        except trpc.RpcError as error:
            print(error.status.name, error.message)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:])
