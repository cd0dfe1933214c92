"""The health service: Check and Watch over real clients, the statuses a Server keeps, shutdown,
and ``trpc health``."""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager

import cbor2
import pytest
import trio
import trio.testing

import trpc
from trpc import HealthStatus, RpcError, Status
from trpc import _cli
from trpc._health import CHECK_METHOD, HEALTH_SERVICE, WATCH_METHOD

from . import wire_spec_client as w
from .services import Svc

#: The test service's name, under which the server registers it for health checks.
SVC = trpc.service_name(Svc)

SERVING, NOT_SERVING = HealthStatus.SERVING, HealthStatus.NOT_SERVING


@asynccontextmanager
async def connected(nursery, server, **client_options):
    """A client joined to ``server`` by an in-memory stream pair (autojump_clock is safe)."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream, "memory")
    async with trpc.open_client(client_stream, **client_options) as client:
        yield client


def check(client, *args):
    return client.method(CHECK_METHOD)(*args)


def watch(client, *args):
    return client.method(WATCH_METHOD)(*args)


async def next_status(stream) -> str:
    with trio.fail_after(5):
        return await stream.receive()


async def assert_nothing_sent(stream) -> None:
    """No message arrives within a second (of the autojump clock)."""
    await trio.testing.wait_all_tasks_blocked()
    with trio.move_on_after(1):
        message = await stream.receive()
        pytest.fail(f"the watch sent {message!r}")


# ------------------------------------------------------------------ the statuses


def test_health_status_has_grpcs_numbers_and_parses_names():
    assert [(s.name, int(s)) for s in HealthStatus] == [
        ("UNKNOWN", 0), ("SERVING", 1), ("NOT_SERVING", 2), ("SERVICE_UNKNOWN", 3)
    ]
    assert HealthStatus.parse("NOT_SERVING") is NOT_SERVING
    assert HealthStatus.parse(SERVING) is SERVING
    with pytest.raises(ValueError):
        HealthStatus.parse("serving")
    with pytest.raises(TypeError):
        HealthStatus.parse(1)
    assert HealthStatus.from_wire("SERVING") is SERVING
    assert HealthStatus.from_wire("DRAINING") is HealthStatus.UNKNOWN
    assert HealthStatus.from_wire(1) is HealthStatus.UNKNOWN


def test_the_server_and_each_service_start_serving_and_set_health_changes_them():
    server = trpc.Server(Svc())
    assert server.health() is SERVING and server.health(SVC) is SERVING
    assert server.health("Other") is HealthStatus.SERVICE_UNKNOWN
    server.set_health(SVC, "NOT_SERVING")
    server.set_health("Other", HealthStatus.UNKNOWN)
    statuses = (server.health(), server.health(SVC), server.health("Other"))
    assert statuses == (SERVING, NOT_SERVING, HealthStatus.UNKNOWN)


def test_set_health_refuses_what_is_not_a_name_and_a_status():
    server = trpc.Server(Svc())
    with pytest.raises(ValueError):
        server.set_health("", "BUSY")
    with pytest.raises(ValueError, match="SERVICE_UNKNOWN"):
        server.set_health("", HealthStatus.SERVICE_UNKNOWN)
    with pytest.raises(TypeError):
        server.set_health(None, SERVING)
    with pytest.raises(TypeError):
        server.set_health("", 2)
    assert server.health() is SERVING


def test_a_user_service_with_the_health_service_name_clashes_unless_health_is_off():
    class Mine(trpc.Service, name=HEALTH_SERVICE):
        @trpc.unary(name="Check")
        async def check(self, service=""):
            return "mine"

    with pytest.raises(TypeError, match="two services"):
        trpc.Server(Mine())
    assert CHECK_METHOD in trpc.Server(Mine(), health=False).methods


# ------------------------------------------------------------------ Check


async def test_check_answers_the_status_name_of_the_server_and_of_each_service(nursery):
    server = trpc.Server(Svc())
    async with connected(nursery, server) as client:
        assert await check(client) == "SERVING"
        assert await check(client, "") == "SERVING"
        assert await check(client, SVC) == "SERVING"
        server.set_health("", NOT_SERVING)
        assert await check(client) == "NOT_SERVING"
        assert await check(client, SVC) == "SERVING"


async def test_check_of_an_unknown_service_ends_not_found(nursery):
    server = trpc.Server(Svc())
    async with connected(nursery, server) as client:
        with pytest.raises(RpcError) as error:
            await check(client, "Nope")
    assert error.value.status is Status.NOT_FOUND and "'Nope'" in error.value.message


async def test_a_service_name_that_is_not_text_is_invalid_argument(nursery):
    server = trpc.Server(Svc())
    async with connected(nursery, server) as client:
        for call in (check(client, 5), watch(client, ["x"]).__aiter__().__anext__()):
            with pytest.raises(RpcError) as error:
                await call
            assert error.value.status is Status.INVALID_ARGUMENT


async def test_health_false_leaves_the_service_out(nursery):
    server = trpc.Server(Svc(), health=False)
    assert CHECK_METHOD not in server.methods and WATCH_METHOD not in server.methods
    async with connected(nursery, server) as client:
        with pytest.raises(RpcError) as error:
            await check(client)
        assert error.value.status is Status.UNIMPLEMENTED
        assert await client.greet("Ada") == "Hello Ada"
    server.set_health("", NOT_SERVING)  # the statuses are kept all the same
    assert server.health() is NOT_SERVING


async def test_a_client_written_from_the_protocol_document_checks_health(nursery):
    server = trpc.Server(Svc())
    address = await nursery.start(server.serve_tcp, 0)
    server.set_health(SVC, "NOT_SERVING")
    with trio.fail_after(10):
        async with w.connect(address) as conn:
            assert (await conn.call(CHECK_METHOD, "")).result == "SERVING"
            assert (await conn.call(CHECK_METHOD, SVC)).result == "NOT_SERVING"
            assert (await conn.call(CHECK_METHOD, "Nope")).status == w.NOT_FOUND
            assert (await conn.call(CHECK_METHOD)).result == "SERVING"  # [[]]: the default ""
            assert (await conn.call(CHECK_METHOD, service=SVC)).result == "NOT_SERVING"
            assert (await conn.call(CHECK_METHOD, 7)).status == w.INVALID_ARGUMENT
    assert cbor2.dumps("SERVING") == bytes.fromhex("67 53 45 52 56 49 4e 47")  # the document's example


# ------------------------------------------------------------------ Watch


async def test_watch_sends_the_status_at_once_then_each_change_in_order(nursery, autojump_clock):
    server = trpc.Server(Svc())
    async with connected(nursery, server) as client:
        async with watch(client) as stream:
            assert await next_status(stream) == "SERVING"
            for status in ("NOT_SERVING", "SERVING", "UNKNOWN", "NOT_SERVING"):
                server.set_health("", status)
                assert await next_status(stream) == status
            await assert_nothing_sent(stream)


async def test_watch_never_sends_the_same_status_twice_in_a_row(nursery, autojump_clock):
    server = trpc.Server(Svc())
    async with connected(nursery, server) as client:
        async with watch(client, SVC) as stream:
            assert await next_status(stream) == "SERVING"
            server.set_health(SVC, SERVING)
            await assert_nothing_sent(stream)
            # Changed and changed back before the watch ran: nothing new to say.
            server.set_health(SVC, NOT_SERVING)
            server.set_health(SVC, SERVING)
            await assert_nothing_sent(stream)
            server.set_health("", NOT_SERVING)  # another name
            await assert_nothing_sent(stream)
            server.set_health(SVC, NOT_SERVING)
            assert await next_status(stream) == "NOT_SERVING"


async def test_watch_of_an_unknown_service_says_so_then_sends_its_status_once_registered(nursery, autojump_clock):
    server = trpc.Server(Svc())
    async with connected(nursery, server) as client:
        async with watch(client, "Later") as stream:
            assert await next_status(stream) == "SERVICE_UNKNOWN"
            await assert_nothing_sent(stream)
            server.set_health("Later", NOT_SERVING)
            assert await next_status(stream) == "NOT_SERVING"


async def test_watch_ends_when_the_client_cancels_it(nursery, autojump_clock):
    server = trpc.Server(Svc())
    async with connected(nursery, server) as client:
        async with watch(client) as stream:
            assert await next_status(stream) == "SERVING"
            assert server._health.watches == 1
        await trio.testing.wait_all_tasks_blocked()
        assert server._health.watches == 0 and server.running_calls == 0


async def test_a_slow_watcher_gets_the_latest_status_and_the_server_holds_one_message_for_it(
    nursery, autojump_clock
):
    """The client reads nothing while the status flips a thousand times: the server queues at
    most one status beyond the client's credit, and the reader then gets a short history
    that alternates and ends with the latest status."""
    window = 1024  # the least stream window: a hundred status messages of credit
    server = trpc.Server(Svc())
    async with connected(nursery, server, stream_window=window) as client:
        async with watch(client) as stream:
            assert await next_status(stream) == "SERVING"
            (connection,) = server._connections
            (call,) = [call for call in connection.calls.values() if call.info.path == WATCH_METHOD]
            largest = len(cbor2.dumps("NOT_SERVING"))
            for i in range(1000):
                server.set_health("", NOT_SERVING if i % 2 == 0 else SERVING)
                await trio.testing.wait_all_tasks_blocked()
                assert connection.conn.send_buffered(call.id) <= largest
            final = "SERVING"  # i = 999
            received = []
            with trio.fail_after(10):
                while not received or received[-1] != final or connection.conn.send_buffered(call.id):
                    received.append(await stream.receive())
                    await trio.testing.wait_all_tasks_blocked()
            await assert_nothing_sent(stream)
    assert len(received) <= window // len(cbor2.dumps("SERVING")) + 2
    assert all(a != b for a, b in zip(["SERVING", *received], received))
    assert received[-1] == final


# ------------------------------------------------------------------ shutdown


async def test_shutdown_makes_every_status_not_serving_and_ends_the_watches(nursery, autojump_clock):
    server = trpc.Server(Svc())
    server.set_health("Extra", SERVING)
    grace = 30
    async with connected(nursery, server) as client:
        seen = {}

        async def watch_to_the_end(name):
            async with watch(client, name) as stream:
                seen[name] = [message async for message in stream]  # ends with OK

        async with trio.open_nursery() as watchers:
            for name in ("", SVC, "Extra", "Unknown"):
                watchers.start_soon(watch_to_the_end, name)
            await trio.testing.wait_all_tasks_blocked()
            assert server._health.watches == 4
            started = trio.current_time()
            await server.shutdown(grace)
    assert trio.current_time() - started < grace  # the watches did not hold the shutdown
    assert seen == {
        "": ["SERVING", "NOT_SERVING"],
        SVC: ["SERVING", "NOT_SERVING"],
        "Extra": ["SERVING", "NOT_SERVING"],
        "Unknown": ["SERVICE_UNKNOWN"],
    }
    assert (server.health(), server.health(SVC), server.health("Extra")) == (NOT_SERVING,) * 3
    server.set_health("", SERVING)  # ignored from now on
    assert server.health() is NOT_SERVING


async def test_watchers_learn_not_serving_before_the_goaway(nursery):
    """Frame order on the wire, as a client written from the protocol document records it."""
    server = trpc.Server(Svc())
    address = await nursery.start(server.serve_tcp, 0)
    with trio.fail_after(10):
        async with w.connect(address) as conn:
            stream = conn.open_stream(WATCH_METHOD)
            await stream.send_message(raw=w.encode_args([""]), end_stream=True)
            assert await stream.receive_message() == "SERVING"
            async with trio.open_nursery() as shutting_down:
                shutting_down.start_soon(server.shutdown, 5)
                assert await stream.receive_message() == "NOT_SERVING"
                event = await stream.receive()
                assert event[0] == "trailers" and event[1].status == w.OK
                await conn.goaway_received.wait()
            frames = [(f.type, f.stream_id, f.payload) for f in conn.frames]
    last_message = frames.index((w.DATA, stream.id, cbor2.dumps("NOT_SERVING")))
    goaway = [i for i, f in enumerate(frames) if f[0] == w.GOAWAY]
    assert goaway and last_message < goaway[0]


async def test_a_watcher_that_reads_nothing_does_not_hold_back_the_goaway(nursery, autojump_clock):
    server = trpc.Server(Svc())
    async with connected(nursery, server, stream_window=1024) as stuck, connected(nursery, server) as other:
        async with watch(stuck) as stream:
            assert await next_status(stream) == "SERVING"
            for i in range(300):  # more changes than the stuck client has credit for
                server.set_health("", NOT_SERVING if i % 2 == 0 else SERVING)
                await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as shutting_down:
                shutting_down.start_soon(server.shutdown, 30)
                await trio.sleep(1)
                with pytest.raises(RpcError) as error:
                    await other.greet("Ada")  # refused: the GOAWAY came long before the grace
                assert error.value.status is Status.UNAVAILABLE
                shutting_down.cancel_scope.cancel()


# ------------------------------------------------------------------ trpc health


def health_args(*argv: str):
    return _cli._parser().parse_args(["health", *argv])


@pytest.fixture
def cli_to(monkeypatch, nursery):
    """Point ``trpc health``'s client at ``server`` over an in-memory stream (so that the
    autojump clock is safe); returns the HOST:PORT to give it (which it parses, not uses)."""

    def point(server):
        def open_memory_client(target, **options):
            client_stream, server_stream = trio.testing.memory_stream_pair()
            nursery.start_soon(server.serve_stream, server_stream, "memory")
            return trpc.open_client(client_stream, **options)

        monkeypatch.setattr(_cli, "open_client", open_memory_client)
        return "127.0.0.1:1"

    return point


async def test_cli_exits_0_serving_and_1_not_serving_or_unknown(cli_to, capsys, autojump_clock):
    server = trpc.Server(Svc())
    target = cli_to(server)
    assert await _cli._health(health_args(target)) == 0
    assert capsys.readouterr().out == "SERVING\n"
    server.set_health(SVC, "NOT_SERVING")
    assert await _cli._health(health_args(target, SVC)) == 1
    assert capsys.readouterr().out == "NOT_SERVING\n"
    assert await _cli._health(health_args(target, "Nope")) == 1
    output = capsys.readouterr()
    assert output.out == "" and output.err.startswith("NOT_FOUND: ")


async def test_cli_exits_64_plus_the_status_without_a_health_service_or_an_answer_and_2_for_bad_arguments(cli_to, capsys, autojump_clock):
    target = cli_to(trpc.Server(Svc(), health=False))
    assert await _cli._health(health_args(target)) == 64 + 12
    assert capsys.readouterr().err.startswith("UNIMPLEMENTED: ")

    class Silent(trpc.Service, name=HEALTH_SERVICE):
        @trpc.unary(name="Check")
        async def check(self, service=""):
            await trio.sleep_forever()

    target = cli_to(trpc.Server(Silent(), health=False))
    assert await _cli._health(health_args(target, "--timeout", "2")) == 64 + 4
    assert capsys.readouterr().err == "DEADLINE_EXCEEDED: no answer within 2.0 s\n"
    assert await _cli._health(health_args(target, "-m", "no-equals-sign")) == 2
    assert capsys.readouterr().err == "trpc: metadata must be KEY=VALUE (or 'KEY: VALUE'), got 'no-equals-sign'\n"


async def test_cli_exits_with_unavailable_when_it_cannot_connect(capsys):
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert await _cli._health(health_args(f"127.0.0.1:{port}")) == 64 + 14
    assert capsys.readouterr().err.startswith("UNAVAILABLE: ")


async def test_cli_watch_prints_each_change_until_the_server_ends_it(cli_to, capsys, nursery, autojump_clock):
    server = trpc.Server(Svc())
    target = cli_to(server)
    result = []

    async def run():
        result.append(await _cli._health(health_args(target, "--watch")))

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    server.set_health("", NOT_SERVING)
    await trio.testing.wait_all_tasks_blocked()
    server.set_health("", SERVING)
    await trio.testing.wait_all_tasks_blocked()
    await server.shutdown(10)
    await trio.testing.wait_all_tasks_blocked()
    assert result == [1]  # the last status printed: NOT_SERVING
    assert capsys.readouterr().out == "SERVING\nNOT_SERVING\nSERVING\nNOT_SERVING\n"


async def test_cli_watch_with_a_timeout_exits_by_the_last_status(cli_to, capsys, autojump_clock):
    server = trpc.Server(Svc())
    assert await _cli._health(health_args(cli_to(server), "--watch", "--timeout", "5")) == 0
    assert capsys.readouterr().out == "SERVING\n"


async def test_trpc_health_command_against_a_real_server(nursery):
    server = trpc.Server(Svc())
    host, port = await nursery.start(server.serve_tcp, 0)

    async def run(*args):
        with trio.fail_after(60):
            return await trio.run_process(
                [sys.executable, "-m", "trpc", "health", *args], capture_stdout=True, capture_stderr=True, check=False
            )

    result = await run(f"{host}:{port}")
    assert (result.returncode, result.stdout) == (0, b"SERVING\n")
    server.set_health("", NOT_SERVING)
    result = await run(f"{host}:{port}", "--timeout", "10")
    assert (result.returncode, result.stdout) == (1, b"NOT_SERVING\n")
    result = await run("nonsense")
    assert result.returncode == 2 and b"HOST:PORT" in result.stderr
