"""Tests of the tutorial's service without a network (docs/howto/testing.md).

The suite collects this file (``testpaths`` in pyproject.toml), so the how-to's test runs.
"""

import pytest

import trpc
from bakery import Bakery, Delivery
from counting import CallCounter


async def test_buying_takes_loaves_off_the_shelf():
    async with trpc.testing.open_test_client(Bakery()) as client:
        assert await client.buy("rye", 2) == 1
        with pytest.raises(trpc.RpcError) as caught:
            await client.buy("rye", 2)
        assert caught.value.status is trpc.Status.FAILED_PRECONDITION


async def test_a_delivery_puts_a_new_bread_on_the_menu():
    async def deliveries():
        yield Delivery("wheat", loaves=2)

    async with trpc.testing.open_test_client(Bakery()) as client:
        assert await client.deliver(deliveries()) == 2
        assert [bread async for bread in client.menu()] == ["rye", "spelt", "wheat"]


async def test_the_interceptor_counts_calls_by_status():
    counter = CallCounter()
    async with trpc.testing.open_test_client(Bakery(), interceptors=[counter]) as client:
        await client.buy("spelt")
        with pytest.raises(trpc.RpcError):
            await client.buy("spelt")
    assert counter.counts == {("bakery.Counter/buy", "OK"): 1, ("bakery.Counter/buy", "FAILED_PRECONDITION"): 1}


@pytest.fixture
def trpc_service():
    return Bakery()


async def test_the_plugin_fixture_gives_a_client(trpc_client):
    assert await trpc_client.buy("spelt") == 0
