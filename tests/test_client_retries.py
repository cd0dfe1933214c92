"""The client's retry decisions (``trpc._client._Retrier``) and its retry budget, without a network:
a failed attempt is a ``ClientCall`` given a status, on a stand-in connection that says which
methods its server declared idempotent."""

from __future__ import annotations

import math

from trpc import ClientConfig, Status
from trpc._client import Client, _Retrier
from trpc.channel._connection import ClientCall


class _Connection:
    """What a retry decision reads of a connection: the server's idempotent methods."""

    def __init__(self, idempotent: frozenset[str]) -> None:
        self.idempotent = idempotent


def _client(config: dict | None = None) -> Client:
    parsed = ClientConfig.from_dict(config) if config is not None else None
    return Client(None, timeout=None, metadata=None, config=parsed)


def _failed(connection: _Connection, status: Status = Status.UNAVAILABLE) -> ClientCall:
    call = ClientCall(1, connection)
    call.status = status
    return call


async def test_without_retry_throttling_every_failed_idempotent_call_is_retried():
    # A host that vanishes strands every call sent to it at once; docs/CONFIG.md: without
    # retryThrottling, retries are never throttled.
    client = _client()
    connection = _Connection(frozenset({"read"}))
    method = client.method("read")
    for _ in range(50):
        assert _Retrier(method, math.inf).delay(_failed(connection)) is not None


async def test_retry_throttling_stops_retries_at_half_the_bucket():
    client = _client({"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}})
    connection = _Connection(frozenset({"read"}))
    method = client.method("read")
    decisions = [_Retrier(method, math.inf).delay(_failed(connection)) is not None for _ in range(6)]
    assert decisions == [True] * 4 + [False] * 2  # 9, 8, 7, 6 tokens left allow; 5 does not


async def test_successes_of_a_method_the_server_declares_idempotent_refill_the_budget():
    client = _client({"retryThrottling": {"maxTokens": 10, "tokenRatio": 1}})
    connection = _Connection(frozenset({"read"}))
    method = client.method("read")
    for _ in range(5):
        _Retrier(method, math.inf).delay(_failed(connection))
    assert client._throttle.tokens == 5
    client._record_success(method, connection)
    assert client._throttle.tokens == 6
    # A method nobody says is idempotent has no retry policy: its successes do not count.
    client._record_success(client.method("write"), connection)
    assert client._throttle.tokens == 6


async def test_a_method_not_declared_idempotent_is_retried_only_when_not_processed():
    client = _client()
    connection = _Connection(frozenset({"read"}))
    method = client.method("write")
    assert _Retrier(method, math.inf).delay(_failed(connection)) is None
    refused = _failed(connection)
    refused.processed = False
    assert _Retrier(method, math.inf).delay(refused) == 0.0
