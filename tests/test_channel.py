"""The client as a channel: backends, connectivity states, backoff, balancing, retries, health.

Most tests run on a *fake network* (``net``): addresses map to in-process servers reached over
in-memory stream pairs, and an address with no server refuses at once.  With Trio's
``autojump_clock`` every timing rule (backoff, DNS refresh, deadlines) is checked exactly and
without real sleeps.  Real sockets and processes are in ``test_channel_processes.py``.
"""

from __future__ import annotations

import errno
import socket
from collections import Counter

import pytest
import trio
import trio.testing

import trpc
from trpc import ConnectivityState, RpcError, Status
from trpc._address import Address
from trpc.channel import _connection


class Backend(trpc.Service):
    """A backend that says who it is, and can be made slow or failing."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.delay = 0.0
        self.fail_with: Status | None = None
        #: With fail_with: how many calls fail (None: all of them).
        self.failures: int | None = None
        self.calls = 0
        self.attempts: list[str | None] = []
        self.times: list[float] = []

    @trpc.unary
    async def who(self) -> str:
        self.calls += 1
        self.attempts.append(trpc.current_call().metadata.get("trpc-attempt"))
        self.times.append(trio.current_time())
        if self.delay:
            await trio.sleep(self.delay)
        if self.fail_with is not None:
            raise RpcError(self.fail_with, f"{self.name} fails")
        return self.name

    @trpc.unary
    async def get(self) -> str:
        """Like ``who``; the tests' configs call it idempotent."""
        return await self.who()

    def _maybe_fail(self) -> None:
        if self.fail_with is not None and (self.failures is None or self.failures > 0):
            if self.failures is not None:
                self.failures -= 1
            raise RpcError(self.fail_with, f"{self.name} fails")

    @trpc.unary
    async def plain(self) -> str:
        """Fails as told (not declared idempotent)."""
        self.calls += 1
        self._maybe_fail()
        return self.name

    @trpc.unary
    async def sleep_then(self, seconds: float, value):
        await trio.sleep(seconds)
        return value

    @trpc.server_stream
    async def count(self, n: int):
        self.calls += 1
        self._maybe_fail()
        for i in range(n):
            yield i

    @trpc.client_stream
    async def total(self, numbers) -> int:
        self.calls += 1
        self._maybe_fail()
        return sum([n async for n in numbers])


class FakeNetwork:
    """Addresses -> servers over in-memory streams; see the module's docstring."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.servers: dict[str, trpc.Server] = {}
        self.attempts: list[tuple[str, float]] = []

    def up(self, address: str, service: trpc.Service, **options) -> trpc.Server:
        server = self.servers[address] = trpc.Server(service, **options)
        return server

    def down(self, address: str) -> None:
        del self.servers[address]

    async def open_stream(self, address: Address, *, deadline: float) -> trio.abc.Stream:
        self.attempts.append((str(address), trio.current_time()))
        await trio.sleep(0)
        server = self.servers.get(str(address))
        if server is None:
            raise OSError(errno.ECONNREFUSED, "Connection refused")
        client_stream, server_stream = trio.testing.memory_stream_pair()
        self.nursery.start_soon(server.serve_stream, server_stream, str(address))
        return client_stream

    def times(self, address: str) -> list[float]:
        return [t for a, t in self.attempts if a == address]


@pytest.fixture
def net(nursery, monkeypatch) -> FakeNetwork:
    network = FakeNetwork(nursery)
    monkeypatch.setattr(_connection, "open_stream", network.open_stream)
    return network


NO_JITTER = {"connectionBackoff": {"baseDelay": 1, "multiplier": 1.6, "jitter": 0, "maxDelay": 5}}


# ------------------------------------------------------------------ targets and states
async def test_a_list_of_addresses_is_one_channel_and_pick_first_uses_the_first_that_answers(net, autojump_clock):
    net.up("10.0.0.2:1", Backend("b"))
    net.up("10.0.0.3:1", Backend("c"))
    async with trpc.open_client("10.0.0.1:1,10.0.0.2:1,10.0.0.3:1") as client:
        assert client.state is ConnectivityState.READY
        assert {await client.who() for _ in range(10)} == {"b"}
        assert client.peer == "10.0.0.2:1"
    assert client.state is ConnectivityState.SHUTDOWN


async def test_a_target_can_be_a_list(net, autojump_clock):
    net.up("10.0.0.1:1", Backend("a"))
    async with trpc.open_client(["10.0.0.9:1", ("10.0.0.1", 1)]) as client:
        assert await client.who() == "a"


@pytest.mark.parametrize("target", ["dns:///", "dns:///nohostport", "unix:", "h:1,", "h:x", 42])
async def test_a_target_that_is_none_is_refused(target):
    with pytest.raises((ValueError, TypeError)):
        async with trpc.open_client(target):
            pass


async def test_with_no_backend_open_client_fails_naming_the_connection_error(net, autojump_clock):
    with pytest.raises(RpcError) as info:
        async with trpc.open_client("10.0.0.1:1"):
            pass
    assert info.value.status is Status.UNAVAILABLE
    assert info.value.message == "cannot connect to 10.0.0.1:1: Connection refused"


async def test_states_follow_a_backend_that_goes_and_comes_back(net, autojump_clock):
    backend = Backend("a")
    server = net.up("10.0.0.1:1", backend)
    async with trpc.open_client("10.0.0.1:1", config=NO_JITTER) as client:
        assert client.state is ConnectivityState.READY
        net.down("10.0.0.1:1")
        await server.shutdown(grace=1)
        with trio.fail_after(1):
            await client.wait_for_state(ConnectivityState.TRANSIENT_FAILURE)
        with pytest.raises(RpcError) as info:
            await client.who()  # fails at once: no waiting
        assert info.value.status is Status.UNAVAILABLE and "Connection refused" in info.value.message
        net.up("10.0.0.1:1", backend)
        start = trio.current_time()
        await client.wait_for_state(ConnectivityState.READY)
        assert trio.current_time() - start <= 1.6  # the next attempt of the backoff
        assert await client.who() == "a"


# ------------------------------------------------------------------ backoff
async def test_reconnect_delays_follow_grpcs_backoff_exactly_and_are_capped(net, autojump_clock):
    async with trpc.open_client("10.0.0.1:1", config=NO_JITTER, wait_for_ready=True):
        await trio.sleep(30)
    times = net.times("10.0.0.1:1")
    delays = [round(b - a, 6) for a, b in zip(times, times[1:])]
    assert delays[:7] == [1.0, 1.6, 2.56, 4.096, 5.0, 5.0, 5.0]


async def test_backoff_jitter_stays_within_its_bounds(net, autojump_clock):
    config = {"connectionBackoff": {"baseDelay": 1, "multiplier": 2, "jitter": 0.2, "maxDelay": 8}}
    async with trpc.open_client("10.0.0.1:1", config=config, wait_for_ready=True):
        await trio.sleep(200)
    times = net.times("10.0.0.1:1")
    delays = [b - a for a, b in zip(times, times[1:])]
    assert delays[0] == pytest.approx(1.0)
    backoff = 1.0
    for delay in delays[1:]:
        backoff = min(backoff * 2, 8)
        assert backoff * 0.8 - 1e-9 <= delay <= backoff * 1.2 + 1e-9
    assert len(set(delays[4:])) > 1  # jittered, not constant


async def test_a_successful_connection_resets_the_backoff(net, autojump_clock):
    backend = Backend("a")
    async with trpc.open_client("10.0.0.1:1", config=NO_JITTER, wait_for_ready=True) as client:
        await trio.sleep(10)  # attempts at 0, 1, 2.6, 5.16, 9.256
        server = net.up("10.0.0.1:1", backend)
        await client.wait_for_state(ConnectivityState.READY)  # the attempt at 14.256
        net.down("10.0.0.1:1")
        await server.shutdown(grace=0)
        await trio.sleep(5)
    times = net.times("10.0.0.1:1")[6:]  # after the one that succeeded
    assert [round(t - times[0], 6) for t in times[:3]] == [0.0, 1.0, 2.6]


# ------------------------------------------------------------------ fail fast or wait
async def test_wait_for_ready_calls_wait_for_a_backend_and_others_fail_fast(net, autojump_clock):
    async with trpc.open_client("10.0.0.1:1", wait_for_ready=True, config=NO_JITTER) as client:
        results = []

        async def waiting():
            results.append(await client.who())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting)
            await trio.sleep(2)
            with pytest.raises(RpcError) as info:
                await client.who.with_options(wait_for_ready=False)()
            assert info.value.status is Status.UNAVAILABLE
            assert "Connection refused" in info.value.message
            net.up("10.0.0.1:1", Backend("a"))
        assert results == ["a"]
        assert trio.current_time() == pytest.approx(2.6)  # the third attempt found it


async def test_wait_for_ready_ends_at_the_calls_deadline(net, autojump_clock):
    async with trpc.open_client("10.0.0.1:1", wait_for_ready=True) as client:
        with pytest.raises(RpcError) as info:
            await client.who.with_options(timeout=3)()
        assert info.value.status is Status.DEADLINE_EXCEEDED
        assert trio.current_time() == pytest.approx(3)


async def test_the_config_can_make_a_method_wait_for_ready(net, autojump_clock):
    config = {"methodConfig": [{"name": [{"method": "who"}], "waitForReady": True}], **NO_JITTER}
    async with trpc.open_client("10.0.0.1:1", wait_for_ready=True, config=config) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.who)
            await trio.sleep(0.5)
            with pytest.raises(RpcError):
                await client.get.with_options(wait_for_ready=False)()
            net.up("10.0.0.1:1", Backend("a"))


# ------------------------------------------------------------------ balancing
async def _spread(client, calls: int, callers: int) -> Counter:
    seen: Counter = Counter()

    async def caller(n):
        for _ in range(n):
            seen[await client.who()] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(caller, calls // callers)
    return seen


async def test_round_robin_spreads_calls_evenly(net, autojump_clock):
    for name in "abc":
        net.up(f"10.0.0.{ord(name)}:1", Backend(name))
    target = ",".join(f"10.0.0.{ord(name)}:1" for name in "abc")
    async with trpc.open_client(target, load_balancing="round_robin") as client:
        await client.wait_for_state(ConnectivityState.READY)
        await trio.sleep(1)  # every backend connected
        seen = await _spread(client, 3000, 10)
    assert sum(seen.values()) == 3000
    assert all(abs(count - 1000) <= 100 for count in seen.values()), seen


async def test_least_loaded_sends_few_calls_to_a_slow_backend(net, autojump_clock):
    backends = {name: Backend(name) for name in "abc"}
    backends["c"].delay = 0.1
    for name in "ab":
        backends[name].delay = 0.01
    for name, backend in backends.items():
        net.up(f"10.0.0.{ord(name)}:1", backend)
    target = ",".join(f"10.0.0.{ord(name)}:1" for name in "abc")
    async with trpc.open_client(target, load_balancing="least_loaded") as client:
        await trio.sleep(1)
        seen = await _spread(client, 3000, 30)
    assert seen["c"] < 0.2 * 3000, seen


async def test_a_stream_stays_on_the_backend_it_started_on(net, autojump_clock):
    for name in "ab":
        net.up(f"10.0.0.{ord(name)}:1", Backend(name))
    async with trpc.open_client("10.0.0.97:1,10.0.0.98:1", load_balancing="round_robin") as client:
        await trio.sleep(1)
        async with client.count(100) as stream:
            connection = stream._call.connection
            async for _ in stream:
                assert stream._call.connection is connection


# ------------------------------------------------------------------ DNS
class Records(trio.abc.HostnameResolver):
    def __init__(self) -> None:
        self.records: list[str] = []
        self.queries = 0

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        self.queries += 1
        if host != b"svc.test" and host != "svc.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (ip, port) if ":" not in ip else (ip, port, 0, 0)) for ip in self.records]

    async def getnameinfo(self, sockaddr, flags):
        raise NotImplementedError


@pytest.fixture
async def records():
    resolver = Records()
    old = trio.socket.set_custom_hostname_resolver(resolver)
    try:
        yield resolver
    finally:
        trio.socket.set_custom_hostname_resolver(old)


async def test_dns_every_record_is_a_backend_and_changes_are_followed(net, records, autojump_clock):
    for name, ip in [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "fd00::3")]:
        net.up(f"[{ip}]:50051" if ":" in ip else f"{ip}:50051", Backend(name))
    records.records = ["10.0.0.1", "10.0.0.2"]
    async with trpc.open_client("dns:///svc.test:50051", load_balancing="round_robin") as client:
        await trio.sleep(1)
        assert set((await _spread(client, 100, 4))) == {"a", "b"}
        records.records = ["10.0.0.2", "fd00::3"]
        await trio.sleep(31)  # the periodic refresh
        assert set((await _spread(client, 100, 4))) == {"b", "c"}
    assert records.queries == 2


async def test_dns_a_failing_backend_asks_for_a_new_resolution(net, records, autojump_clock):
    server = net.up("10.0.0.1:50051", Backend("a"))
    net.up("10.0.0.2:50051", Backend("b"))
    records.records = ["10.0.0.1"]
    async with trpc.open_client("dns:///svc.test:50051") as client:
        assert await client.who() == "a"
        records.records = ["10.0.0.2"]
        net.down("10.0.0.1:50051")
        await server.shutdown(grace=0)
        start = trio.current_time()
        await client.wait_for_state(ConnectivityState.READY)
        await trio.sleep(0)
        assert await client.who.with_options(wait_for_ready=True)() == "b"
        assert trio.current_time() - start < 5  # well before the 30 s refresh


async def test_a_name_that_does_not_resolve_fails_with_the_reason(records, autojump_clock):
    with pytest.raises(RpcError) as info:
        async with trpc.open_client("dns:///nowhere.test:1"):
            pass
    assert info.value.status is Status.UNAVAILABLE and "cannot resolve" in info.value.message


# ------------------------------------------------------------------ retries
IDEMPOTENT_GET = {"name": [{"method": "get"}], "idempotent": True, "retryPolicy": {
    "maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"]}}


async def test_an_idempotent_call_is_retried_and_each_attempt_carries_its_number(net, autojump_clock):
    backend = Backend("a")
    backend.fail_with = Status.UNAVAILABLE
    net.up("10.0.0.1:1", backend)
    async with trpc.open_client("10.0.0.1:1", config={"methodConfig": [IDEMPOTENT_GET]}) as client:
        with pytest.raises(RpcError) as info:
            await client.get()
        assert info.value.status is Status.UNAVAILABLE
        assert backend.attempts == [None, "2", "3", "4", "5"]
        backend.attempts.clear()
        with pytest.raises(RpcError):
            await client.who()  # not idempotent: once
        assert backend.attempts == [None]


async def test_retries_stop_at_the_deadline(net, autojump_clock):
    backend = Backend("a")
    backend.fail_with = Status.UNAVAILABLE
    net.up("10.0.0.1:1", backend)
    policy = dict(IDEMPOTENT_GET, retryPolicy={**IDEMPOTENT_GET["retryPolicy"], "initialBackoff": "1s", "maxBackoff": "1s"})
    async with trpc.open_client("10.0.0.1:1", config={"methodConfig": [policy]}) as client:
        with pytest.raises(RpcError) as info:
            await client.get.with_options(timeout=1.5)()
        # The last attempt's own error, as soon as the next backoff would cross the deadline.
        assert info.value.status is Status.UNAVAILABLE
        assert trio.current_time() < 1.5
        assert 1 <= len(backend.times) <= 5 and max(backend.times) < 1.5


async def test_a_status_not_in_the_policy_is_not_retried(net, autojump_clock):
    backend = Backend("a")
    backend.fail_with = Status.INTERNAL
    net.up("10.0.0.1:1", backend)
    async with trpc.open_client("10.0.0.1:1", config={"methodConfig": [IDEMPOTENT_GET]}) as client:
        with pytest.raises(RpcError):
            await client.get()
        assert backend.calls == 1


async def test_the_retry_throttle_bounds_attempts_against_a_backend_that_always_fails(net, autojump_clock):
    backend = Backend("a")
    backend.fail_with = Status.UNAVAILABLE
    net.up("10.0.0.1:1", backend)
    config = {"methodConfig": [IDEMPOTENT_GET], "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}
    async with trpc.open_client("10.0.0.1:1", config=config) as client:
        for _ in range(1000):
            with pytest.raises(RpcError):
                await client.get()
    assert 1000 <= backend.calls <= 1100, backend.calls


async def test_streams_are_retried_until_their_first_response(net, autojump_clock):
    backend = Backend("a")
    backend.fail_with = Status.UNAVAILABLE
    net.up("10.0.0.1:1", backend)
    config = {"methodConfig": [dict(IDEMPOTENT_GET, name=[{"method": "count"}, {"method": "total"}])]}
    async with trpc.open_client("10.0.0.1:1", config=config) as client:
        backend.failures = 2
        assert [i async for i in client.count(3)] == [0, 1, 2]
        assert backend.calls == 3

        async def numbers():
            for i in range(4):
                yield i
                await trio.sleep(0.01)

        backend.calls, backend.failures = 0, 2
        assert await client.total(numbers()) == 6  # the request messages were sent again
        assert backend.calls == 3

    # (A new client: this one's retry throttle has spent 4 of its 10 tokens.)
    async with trpc.open_client("10.0.0.1:1", config=config) as client:
        backend.calls, backend.failures = 0, None
        with pytest.raises(RpcError):
            await client.total(numbers())
        assert backend.calls == 5  # maxAttempts


async def test_a_stream_is_not_retried_after_a_response_message(net, autojump_clock):
    class Flaky(Backend):
        @trpc.server_stream
        async def count(self, n: int):
            self.calls += 1
            yield 0
            raise RpcError(Status.UNAVAILABLE, "gone after one")

    backend = Flaky("a")
    net.up("10.0.0.1:1", backend)
    config = {"methodConfig": [dict(IDEMPOTENT_GET, name=[{"method": "count"}])]}
    async with trpc.open_client("10.0.0.1:1", config=config) as client:
        received = []
        with pytest.raises(RpcError):
            async for i in client.count(3):
                received.append(i)
        assert received == [0] and backend.calls == 1


# ------------------------------------------------------------------ health
async def test_health_check_skips_a_backend_that_is_not_serving(net, autojump_clock):
    servers = {name: net.up(f"10.0.0.{ord(name)}:1", Backend(name)) for name in "ab"}
    target = "10.0.0.97:1,10.0.0.98:1"
    async with trpc.open_client(target, load_balancing="round_robin", health_check=True) as client:
        await trio.sleep(1)
        assert set((await _spread(client, 40, 2))) == {"a", "b"}
        servers["b"].set_health("", trpc.HealthStatus.NOT_SERVING)
        await trio.sleep(0.1)
        assert set((await _spread(client, 40, 2))) == {"a"}
        servers["b"].set_health("", trpc.HealthStatus.SERVING)
        await trio.sleep(0.1)
        assert set((await _spread(client, 40, 2))) == {"a", "b"}


async def test_health_check_takes_a_server_without_health_service_as_serving(net, autojump_clock):
    net.up("10.0.0.1:1", Backend("a"), health=False)
    async with trpc.open_client("10.0.0.1:1", health_check=True) as client:
        assert await client.who.with_options(wait_for_ready=True)() == "a"


# ------------------------------------------------------------------ real sockets
async def test_a_unix_socket_target(nursery, tmp_path):
    path = str(tmp_path / "s.sock")
    if len(path) > 100:
        pytest.skip("tmp_path too long for a Unix socket path")
    server = trpc.Server(Backend("u"))
    await nursery.start(server.serve_unix, path)
    async with trpc.open_client(f"unix:{path}") as client:
        assert await client.who() == "u"


# ------------------------------------------------------------------ what the server says
class Declared(Backend):
    @trpc.unary(idempotent=True)
    async def read(self) -> str:
        self.calls += 1
        self._maybe_fail()
        return self.name


async def test_a_method_the_server_declares_idempotent_is_retried_with_the_default_policy(net, autojump_clock):
    backend = Declared("a")
    backend.fail_with, backend.failures = Status.UNAVAILABLE, 2
    net.up("10.0.0.1:1", backend)
    async with trpc.open_client("10.0.0.1:1") as client:
        assert await client.read() == "a"
        assert backend.calls == 3  # DEFAULT_RETRY_POLICY: three attempts
        backend.calls, backend.failures = 0, 1
        with pytest.raises(RpcError):
            await client.plain()  # not declared: never retried
        assert backend.calls == 1


async def test_the_config_can_say_a_declared_method_is_not_idempotent(net, autojump_clock):
    backend = Declared("a")
    backend.fail_with, backend.failures = Status.UNAVAILABLE, 1
    net.up("10.0.0.1:1", backend)
    config = {"methodConfig": [{"name": [{"method": "read"}], "idempotent": False}]}
    async with trpc.open_client("10.0.0.1:1", config=config) as client:
        with pytest.raises(RpcError):
            await client.read()
        assert backend.calls == 1


async def test_a_call_the_server_refused_unprocessed_is_retried_elsewhere_whatever_the_method(net, autojump_clock):
    a, b = Backend("a"), Backend("b")
    a.delay = 10
    net.up("10.0.0.97:1", a, max_concurrent_calls=1)
    net.up("10.0.0.98:1", b)
    async with trpc.open_client("10.0.0.97:1,10.0.0.98:1", load_balancing="round_robin") as client:
        await trio.sleep(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.who)  # holds a's one slot for 10 s
            await trio.sleep(0.1)
            results = [await client.who() for _ in range(6)]
        # Half of them went to a first, were refused without running, and ran on b.
        assert results == ["b"] * 6
        assert a.calls == 1 and b.calls == 6


async def test_a_server_going_away_finishes_its_calls_and_new_ones_go_elsewhere(net, autojump_clock):
    a, b = Backend("a"), Backend("b")
    server_a = net.up("10.0.0.97:1", a)
    net.up("10.0.0.98:1", b)
    async with trpc.open_client("10.0.0.97:1,10.0.0.98:1", load_balancing="round_robin") as client:
        await trio.sleep(1)
        results = []

        async def slow():
            results.append(await client.sleep_then(5, "slow done"))

        a.delay = 0
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(slow)  # one lands on each backend
            await trio.sleep(1)
            net.down("10.0.0.97:1")
            nursery.start_soon(server_a.shutdown, 30)
            await trio.sleep(0.1)
            assert {await client.who() for _ in range(10)} == {"b"}
        assert results == ["slow done"] * 2



# ------------------------------------------------------------------ message sizes per method
async def test_the_config_limits_a_methods_message_sizes(net, autojump_clock):
    net.up("10.0.0.1:1", Backend("a"))
    config = {"methodConfig": [{"name": [{"method": "sleep_then"}, {"method": "count"}],
                                "maxRequestMessageBytes": 100, "maxResponseMessageBytes": 50}]}
    async with trpc.open_client("10.0.0.1:1", config=config) as client:
        assert await client.sleep_then(0, "x" * 40) == "x" * 40
        with pytest.raises(RpcError) as info:
            await client.sleep_then(0, "x" * 60)  # the response is too large
        assert info.value.status is Status.RESOURCE_EXHAUSTED and "maxResponseMessageBytes" in info.value.message
        with pytest.raises(RpcError) as info:
            await client.sleep_then(0, "x" * 200)  # the request is
        assert info.value.status is Status.RESOURCE_EXHAUSTED and "maxRequestMessageBytes" in info.value.message
        assert await client.who() == "a"  # other methods: the connection's limits only


async def test_a_connection_told_to_go_away_drains_and_closes_health_watch_included(net, autojump_clock):
    backend = Backend("a")
    server = net.up("10.0.0.1:1", backend, max_connection_age=5, max_connection_age_grace=100)
    async with trpc.open_client("10.0.0.1:1", health_check=True) as client:
        first = client._connection
        assert await client.sleep_then(7, "done") == "done"  # crosses the age's GOAWAY
        with trio.fail_after(1):
            await first.closed.wait()  # the client closed it once the call was over
        await trio.sleep(0.1)
        assert first not in client._channel.connections
        assert client._connection is not first and await client.who() == "a"
    assert len(server._connections) <= 1
