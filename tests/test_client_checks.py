"""The client's checks of how a method is called: its call shape (from the server's INFO frame, or
from the server's answer without one), bidi calls fed by an async iterable, arguments that do not
fit, per-call options, initial metadata, cancel(), and the config found by path for short names."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

import trpc
from trpc import RpcError, Status, UsageError


class Shapes(trpc.Service, name="kv.Store"):
    """One method of each shape; ``runs`` counts handlers that started."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = trio.Event()
        self.cancelled = trio.Event()
        self.closed = trio.Event()
        self.received: list = []

    @trpc.unary
    async def greet(self, name: str) -> str:
        self.runs += 1
        return f"Hello {name}"

    @trpc.unary
    async def add(self, a: int, b: int = 1, *, scale: int = 1) -> int:
        self.runs += 1
        return (a + b) * scale

    @trpc.unary
    async def slow(self, text: str) -> str:
        """Sends its headers, then waits for ``release`` (records a cancellation)."""
        self.runs += 1
        trpc.current_call().send_headers({"stage": "started"})
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled.set()
            raise
        return text

    @trpc.unary
    async def deadline(self) -> float:
        return trpc.current_call().time_remaining()

    @trpc.unary
    async def metadata_seen(self) -> dict:
        return dict(trpc.current_call().metadata)

    @trpc.server_stream
    async def watch(self, start: int = 0):
        """Endless."""
        self.runs += 1
        i = start
        while True:
            yield i
            i += 1
            await trio.sleep(0)

    @trpc.server_stream
    async def count(self, n: int):
        self.runs += 1
        trpc.current_call().send_headers({"count": str(n)})
        for i in range(n):
            yield i

    @trpc.server_stream
    async def ticks(self, n: int):
        """Sends its headers and n items, then waits for ``release`` (records a cancellation)."""
        trpc.current_call().send_headers({"ticks": str(n)})
        for i in range(n):
            yield i
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled.set()
            raise

    @trpc.client_stream
    async def total(self, numbers) -> int:
        self.runs += 1
        return sum([x async for x in numbers])

    @trpc.bidi_stream
    async def chat(self, messages):
        self.runs += 1
        try:
            async for m in messages:
                self.received.append(m)
                yield f"re: {m}"
        except trio.Cancelled:
            self.cancelled.set()
            raise


async def items(values):
    for value in values:
        yield value


def _without_info(server: trpc.Server) -> trpc.Server:
    """A server that declares nothing, as a server of protocol 1.0 (or one whose INFO left
    the methods out): it sends no INFO frame at all."""
    server._connection_options["methods"] = {}
    server._connection_options["idempotent_methods"] = frozenset()
    return server


async def _connect(nursery, service, *, info=True, **client_options):
    server = trpc.Server(service)
    if not info:
        _without_info(server)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream, "memory")
    return client_stream, server


@pytest.fixture
def shapes():
    return Shapes()


@pytest.fixture
async def informed(shapes, nursery):
    stream, _ = await _connect(nursery, shapes)
    async with trpc.open_client(stream) as client:
        await client.greet("warm-up")  # INFO has arrived (it comes before any reply)
        shapes.runs = 0
        yield client


@pytest.fixture
async def uninformed(shapes, nursery):
    stream, _ = await _connect(nursery, shapes, info=False)
    async with trpc.open_client(stream) as client:
        await client.greet("warm-up")
        shapes.runs = 0
        yield client


# ===================================================================== wrong shapes, with INFO
async def _await(call):
    return await call


async def _iterate(call):
    return [x async for x in call]


async def _enter(call):
    async with call as stream:
        return [x async for x in stream]


async def _open(method):
    async with method.open() as stream:
        await stream.done_sending()
        return [x async for x in stream]


# (method, how it is used, the right form the message names)
WRONG_USES = [
    ("greet", lambda c: _await(c.greet(items(["a"]))), "await client.greet(...)"),
    ("greet", lambda c: _iterate(c.greet("a")), "await client.greet(...)"),
    ("greet", lambda c: _iterate(c.greet(items(["a"]))), "await client.greet(...)"),
    ("greet", lambda c: _open(c.greet), "await client.greet(...)"),
    ("watch", lambda c: _await(c.watch(3)), "async for item in client.watch(...)"),
    ("watch", lambda c: _await(c.watch(items([1]))), "async for item in client.watch(...)"),
    ("watch", lambda c: _iterate(c.watch(items([1]))), "async for item in client.watch(...)"),
    ("watch", lambda c: _open(c.watch), "async for item in client.watch(...)"),
    ("total", lambda c: _await(c.total(5)), "await client.total(requests)"),
    ("total", lambda c: _iterate(c.total(5)), "await client.total(requests)"),
    ("total", lambda c: _iterate(c.total(items([5]))), "await client.total(requests)"),
    ("total", lambda c: _enter(c.total(5)), "await client.total(requests)"),
    ("chat", lambda c: _await(c.chat(5)), "async for reply in client.chat(requests)"),
    ("chat", lambda c: _await(c.chat(items([5]))), "async for reply in client.chat(requests)"),
    ("chat", lambda c: _iterate(c.chat(5)), "async for reply in client.chat(requests)"),
    ("chat", lambda c: _enter(c.chat(5)), "async for reply in client.chat(requests)"),
]


@pytest.mark.parametrize("name, use, right_form", WRONG_USES)
async def test_a_wrong_shape_fails_at_once_naming_the_right_form_and_sends_nothing(
    informed, shapes, name, use, right_form, autojump_clock
):
    with trio.fail_after(1):  # at once: no reply awaited, so no hang either
        with pytest.raises(UsageError) as caught:
            await use(informed)
    assert right_form in str(caught.value)
    assert str(caught.value).startswith(f"{name} is ")
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, trpc.TrpcError)
    assert shapes.runs == 0 and informed.calls_in_flight == 0


async def test_the_first_call_on_a_fresh_client_is_checked_too(shapes, nursery, autojump_clock):
    """INFO may not have arrived when open_client returns: the first call waits for it."""
    stream, _ = await _connect(nursery, shapes)
    async with trpc.open_client(stream) as client:
        with trio.fail_after(1):
            with pytest.raises(UsageError, match="async for item in client.watch"):
                await client.watch()
    async with trpc.open_client((await _connect(nursery, shapes))[0]) as client:
        with pytest.raises(UsageError, match="await client.greet"):
            async for _ in client.greet("Ada"):
                pass
    assert shapes.runs == 0


async def test_the_message_says_what_the_caller_did_and_what_the_method_is(informed):
    with pytest.raises(UsageError) as caught:
        await informed.watch(3)
    assert str(caught.value) == (
        "watch is server-streaming, so it cannot be awaited with arguments: call it as async for item in"
        " client.watch(...)"
    )


async def test_a_method_called_by_path_is_named_as_the_caller_reaches_it(informed):
    with pytest.raises(UsageError, match=r"async for item in client\['kv.Store'\].watch\(...\)"):
        await informed["kv.Store"].watch(3)


async def test_every_right_shape_still_works(informed):
    assert await informed.greet("Ada") == "Hello Ada"
    assert [x async for x in informed.count(3)] == [0, 1, 2]
    assert await informed.total(items([1, 2, 3])) == 6
    assert [x async for x in informed.chat(items(["a", "b"]))] == ["re: a", "re: b"]
    async with informed.greet("Ada") as stream:  # a unary call as a stream: headers, trailers
        assert [x async for x in stream] == ["Hello Ada"]
    async with informed.total.open() as stream:
        await stream.send(4)
        await stream.done_sending()
        assert await stream.receive_one() == 4


async def test_the_shape_is_learned_once_per_connection(informed):
    method = informed.greet
    await method("a")
    seen = method._seen
    await method("b")
    assert method._seen is seen is informed._connection.names
    assert method._shape is trpc.Cardinality.UNARY and method._path == "kv.Store/greet"


# ===================================================================== wrong shapes, without INFO
async def test_without_info_an_awaited_endless_stream_fails_on_its_second_message(
    uninformed, shapes, autojump_clock
):
    with trio.fail_after(5):
        with pytest.raises(RpcError) as caught:
            await uninformed.watch()
    assert caught.value.status is Status.INTERNAL
    assert "expected one response message, got more than one before the end" in caught.value.message
    assert "iterate it: async for item in client.watch(...)" in caught.value.message
    with trio.fail_after(5):
        while uninformed.calls_in_flight:  # the call was cancelled: the server stops
            await trio.sleep(0.01)


async def test_without_info_a_stream_of_requests_to_a_unary_method_gets_the_servers_answer(uninformed, shapes):
    with pytest.raises(RpcError) as caught:
        await uninformed.greet(items([[["x"]], [["y"]]]))  # two arguments messages
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert caught.value.message == (
        "greet is unary: it takes exactly one request message, its arguments (the call sent more, as a"
        " client-streaming call does)"
    )


async def test_without_info_a_unary_method_opened_for_sending_gets_the_servers_answer(uninformed, autojump_clock):
    with trio.fail_after(5):  # the server answers the half-close: no hang
        async with uninformed.greet.open() as stream:
            await stream.done_sending()
            with pytest.raises(RpcError) as caught:
                await stream.receive()
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert caught.value.message == (
        "greet: the request message is missing (greet is unary: it takes its arguments as one request message)"
    )


async def test_without_info_the_client_knows_no_shape_and_guesses_from_the_arguments(uninformed):
    """What a client cannot tell without INFO: a unary method iterated yields its one result."""
    assert uninformed._connection.names == {}
    assert [x async for x in uninformed.greet("Ada")] == ["Hello Ada"]
    assert await uninformed.total(items([1, 2])) == 3
    assert [x async for x in uninformed.chat(items(["a"]))] == ["re: a"]


# ===================================================================== bidi with an async iterable
async def test_a_bidi_call_sends_an_async_iterable_while_the_replies_are_read(informed, shapes):
    sent = trio.Event()

    async def requests():
        yield "one"
        await sent.wait()  # the reply to "one" must come before "two" is sent
        yield "two"

    replies = []
    async for reply in informed.chat(requests()):
        replies.append(reply)
        sent.set()
    assert replies == ["re: one", "re: two"] and shapes.received == ["one", "two"]


async def test_breaking_out_of_a_bidi_loop_stops_the_sender_and_cancels_the_call(informed, shapes, autojump_clock):
    closed = trio.Event()

    async def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
                await trio.sleep(0.01)
        finally:
            closed.set()

    with trio.fail_after(5):
        async for reply in informed.chat(endless()):
            if reply == "re: 2":
                break
        await closed.wait()  # the sender stopped and closed the generator
        await shapes.cancelled.wait()  # the server was told
    assert informed.calls_in_flight == 0


async def test_an_error_of_the_request_iterable_reaches_the_reader_as_itself(informed, shapes, autojump_clock):
    async def failing():
        yield "one"
        await trio.sleep(0.1)
        raise ValueError("no more requests")

    replies = []
    with trio.fail_after(5):
        with pytest.raises(ValueError, match="no more requests"):  # not an ExceptionGroup
            async for reply in informed.chat(failing()):
                replies.append(reply)
        await shapes.cancelled.wait()
    assert replies == ["re: one"] and informed.calls_in_flight == 0


async def test_a_bidi_call_with_an_iterable_also_opens_with_async_with(informed):
    async with informed.chat(items(["a", "b"])) as replies:
        assert [x async for x in replies] == ["re: a", "re: b"]


async def test_cancelling_the_reader_stops_the_sender_too(informed, shapes, autojump_clock):
    closed = trio.Event()

    async def endless():
        try:
            while True:
                yield "x"
                await trio.sleep(0.01)
        finally:
            closed.set()

    with trio.move_on_after(0.5):
        async for _ in informed.chat(endless()):
            pass
    with trio.fail_after(5):
        await closed.wait()
        await shapes.cancelled.wait()


# ===================================================================== arguments that do not fit
def _python_says(signature: str, call: str) -> str:
    """Python's own message for a plain function with this signature called so."""
    namespace: dict = {}
    exec(f"def greet{signature}: pass\ndef add{signature}: pass", namespace)
    try:
        eval(call, namespace)
    except TypeError as exc:
        return str(exc)
    raise AssertionError("it bound")


@pytest.mark.parametrize(
    "call, signature, python_call",
    [
        (lambda c: c.greet("a", "b"), "(name)", "greet('a', 'b')"),
        (lambda c: c.greet(), "(name)", "greet()"),
        (lambda c: c.method("greet")(nme="a"), "(name)", "greet(nme='a')"),
        (lambda c: c.method("greet")("a", name="b"), "(name)", "greet('a', name='b')"),
        (lambda c: c.add(1, 2, 3), "(a, b=1, *, scale=1)", "add(1, 2, 3)"),
        (lambda c: c.add(), "(a, b=1, *, scale=1)", "add()"),
        (lambda c: c.add(1, scales=2), "(a, b=1, *, scale=1)", "add(1, scales=2)"),
    ],
)
async def test_arguments_that_do_not_fit_are_reported_as_the_caller_gave_them(informed, call, signature, python_call):
    with pytest.raises(RpcError) as caught:
        await call(informed)
    assert caught.value.status is Status.INVALID_ARGUMENT
    expected = _python_says(signature, python_call)
    assert caught.value.message == expected
    assert "self" not in caught.value.message and "Shapes." not in caught.value.message


async def test_too_many_arguments_counts_what_the_caller_gave(informed):
    with pytest.raises(RpcError) as caught:
        await informed.greet("a", "b")
    assert caught.value.message == "greet() takes 1 positional argument but 2 were given"


def test_explain_mismatch_finds_no_fault_when_the_arguments_bind():
    from trpc._service import explain_mismatch

    async def handler(a, b=2):
        pass

    assert explain_mismatch("f", handler, (1,), {"b": 3}) is None
    assert explain_mismatch("f", handler, (), {"c": 3}) == "f() got an unexpected keyword argument 'c'"


def test_positional_only_parameters_passed_by_keyword_are_named():
    from trpc._service import explain_mismatch

    async def handler(a, /, b):
        pass

    assert explain_mismatch("f", handler, (), {"a": 1, "b": 2}) == _python_says("(a, /, b)", "greet(a=1, b=2)").replace(
        "greet", "f"
    )


# ===================================================================== per-call options
async def test_timeout_in_a_call_is_the_calls_timeout_not_an_argument(informed, autojump_clock):
    remaining = await informed.deadline(timeout=7)
    assert 6 < remaining <= 7
    assert await informed.deadline() == math.inf


async def test_metadata_and_wait_for_ready_in_a_call_are_options_too(informed):
    seen = await informed.metadata_seen(metadata={"who": "ada"}, wait_for_ready=True)
    assert seen["who"] == "ada"


async def test_a_call_option_of_the_wrong_type_is_an_error_not_an_argument(informed, shapes):
    for options in ({"timeout": "soon"}, {"timeout": 0}, {"metadata": ["who"]}, {"wait_for_ready": "yes"}):
        with pytest.raises(UsageError):
            await informed.greet("Ada", **options)
    assert shapes.runs == 0


async def test_the_other_keywords_stay_arguments(informed):
    assert await informed.add(1, b=2, scale=10, timeout=5) == 30


def test_a_service_may_not_name_a_keyword_parameter_as_a_call_option():
    for parameter in ("timeout", "metadata", "wait_for_ready"):
        with pytest.raises(TypeError, match=f"may not be named '{parameter}'"):
            exec(
                f"class Bad(trpc.Service):\n"
                f"    @trpc.unary\n"
                f"    async def f(self, x, {parameter}=None): pass\n",
                {"trpc": trpc},
            )
    with pytest.raises(TypeError, match="may not be named 'timeout'"):

        class KeywordOnly(trpc.Service):
            @trpc.unary
            async def f(self, *, timeout): ...


def test_a_positional_only_parameter_may_have_such_a_name():
    class Fine(trpc.Service):
        @trpc.unary
        async def f(self, timeout, /) -> float:
            return timeout

    assert "f" in Fine.__trpc_methods__


async def test_a_positional_only_timeout_is_passed_positionally(nursery):
    class Sleeper(trpc.Service):
        @trpc.unary
        async def wait(self, timeout, /) -> float:
            return timeout

    stream, _ = await _connect(nursery, Sleeper())
    async with trpc.open_client(stream) as client:
        assert await client.wait(2.5) == 2.5


# ===================================================================== initial metadata, cancel
async def test_initial_metadata_arrives_before_the_call_ends(informed, shapes):
    call = informed.slow("x")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_await, call)
        assert await call.initial_metadata() == {"stage": "started"}
        assert call.status is None  # still running
        shapes.release.set()
    assert call.status is Status.OK


async def test_initial_metadata_of_a_call_without_headers_is_empty_once_it_ends(informed):
    call = informed.greet("Ada")
    assert await call == "Hello Ada"
    assert await call.initial_metadata() == {}


async def test_initial_metadata_before_the_call_is_awaited_starts_it_in_this_task(informed, shapes):
    call = informed.count(2)
    assert await call.initial_metadata() == {"count": "2"}
    assert [x async for x in call] == [0, 1]
    call = informed.greet("Ada")
    assert await call.initial_metadata() == {}
    assert await call == "Hello Ada"


async def test_initial_metadata_started_by_one_use_still_checks_the_next(informed):
    call = informed.count(2)
    await call.initial_metadata()
    with pytest.raises(UsageError, match="async for item in client.count"):
        await call


async def test_cancel_from_another_task_ends_the_awaiting_task_with_cancelled(informed, shapes, autojump_clock):
    call = informed.slow("x")
    outcome = []

    async def awaiter():
        try:
            await call
        except RpcError as exc:
            outcome.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(awaiter)
            await call.initial_metadata()
            assert call.cancel() is True
            assert call.cancel() is False
        await shapes.cancelled.wait()  # the server was told
    assert outcome[0].status is Status.CANCELLED and call.status is Status.CANCELLED


async def test_a_call_cancelled_before_it_starts_sends_nothing(informed, shapes):
    call = informed.greet("Ada")
    assert call.cancel() is True
    with pytest.raises(RpcError) as caught:
        await call
    assert caught.value.status is Status.CANCELLED and shapes.runs == 0


async def test_cancel_after_the_end_is_a_no_op(informed):
    call = informed.greet("Ada")
    await call
    assert call.cancel() is False and call.status is Status.OK


async def test_a_cancelled_idempotent_call_is_not_retried(nursery, autojump_clock):
    class Once(trpc.Service):
        def __init__(self):
            self.runs = 0

        @trpc.unary(idempotent=True)
        async def hang(self) -> None:
            self.runs += 1
            await trio.sleep_forever()

    service = Once()
    stream, _ = await _connect(nursery, service)
    config = {"methodConfig": [{"name": [{}], "retryPolicy": {
        "maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
        "retryableStatusCodes": ["CANCELLED", "UNAVAILABLE"]}}]}
    async with trpc.open_client(stream, config=config) as client:
        call = client.hang()
        with trio.fail_after(5):
            async with trio.open_nursery() as inner:
                inner.start_soon(_swallow, call)
                await trio.sleep(0.1)
                call.cancel()
    assert service.runs == 1


async def _swallow(call):
    with pytest.raises(RpcError):
        await call


async def test_a_stream_can_be_cancelled_from_another_task(informed, autojump_clock):
    async with informed.watch() as stream:
        await stream.receive()
        assert stream.cancel() is True
        with pytest.raises(RpcError) as caught:
            while True:
                await stream.receive()
    assert caught.value.status is Status.CANCELLED


# ===================================================================== config by path
async def test_a_services_config_applies_to_its_methods_called_by_short_name(shapes, nursery, autojump_clock):
    stream, _ = await _connect(nursery, shapes)
    config = {"methodConfig": [{"name": [{"service": "kv.Store"}], "timeout": "3s"}]}
    async with trpc.open_client(stream, config=config) as client:
        remaining = await client.deadline()
        assert 2 < remaining <= 3
        assert client.deadline._path == "kv.Store/deadline"


async def test_a_methods_path_entry_wins_over_its_short_names(shapes, nursery, autojump_clock):
    stream, _ = await _connect(nursery, shapes)
    config = {"methodConfig": [
        {"name": [{"method": "deadline"}], "timeout": "9s"},
        {"name": [{"service": "kv.Store", "method": "deadline"}], "timeout": "4s"},
    ]}
    async with trpc.open_client(stream, config=config) as client:
        assert 3 < await client.deadline() <= 4


async def test_a_short_names_own_entry_applies_when_its_path_has_none(shapes, nursery, autojump_clock):
    stream, _ = await _connect(nursery, shapes)
    config = {"methodConfig": [{"name": [{"method": "deadline"}], "timeout": "9s"}]}
    async with trpc.open_client(stream, config=config) as client:
        assert 8 < await client.deadline() <= 9


async def test_with_options_wins_over_the_config_found_by_path(shapes, nursery, autojump_clock):
    stream, _ = await _connect(nursery, shapes)
    config = {"methodConfig": [{"name": [{"service": "kv.Store"}], "timeout": "3s"}]}
    async with trpc.open_client(stream, config=config) as client:
        assert await client.deadline.with_options(timeout=None)() == math.inf


async def test_without_info_a_config_by_service_does_not_hold_the_first_call(shapes, nursery, autojump_clock):
    """The server declares nothing: the PING answered after its preface says so, and the call
    goes on with the short name's own entries."""
    stream, _ = await _connect(nursery, shapes, info=False)
    config = {"methodConfig": [{"name": [{"service": "kv.Store"}], "timeout": "3s"},
                               {"name": [{"method": "deadline"}], "timeout": "6s"}]}
    async with trpc.open_client(stream, config=config) as client:
        with trio.fail_after(10):  # longer than the entry's: the entry's deadline is what arrives
            assert 5 < await client.deadline() <= 6
        assert client._connection.declared.is_set() and client.deadline._path is None


async def test_an_iterated_call_can_be_cancelled_and_asked_for_headers_from_another_task(informed, shapes):
    call = informed.ticks(3)
    received = []

    async def reader():
        with pytest.raises(RpcError) as caught:
            async for item in call:
                received.append(item)
        assert caught.value.status is Status.CANCELLED

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            assert await call.initial_metadata() == {"ticks": "3"}
            while len(received) < 3:
                await trio.sleep(0.01)
            assert call.cancel() is True
        await shapes.cancelled.wait()
    assert received == [0, 1, 2] and informed.calls_in_flight == 0


@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_a_call_that_starts_over_again_and_again_does_not_deepen_the_stack(informed, monkeypatch, timeout):
    """Each connection that dies between its handshake and its INFO makes an awaited call
    start over; thousands of them (a server that keeps failing so) must not exhaust the
    stack: the call starts over in a loop, not by calling itself."""
    method = informed.greet.with_options(timeout=timeout)
    starts = 0
    real = type(method)._learn

    async def learn_after_many(self, connection):
        nonlocal starts
        starts += 1
        if starts < 3000:  # past Python's recursion limit, were each start-over a call deeper
            return True
        return await real(self, connection)

    monkeypatch.setattr(type(method), "_learn", learn_after_many)
    method._awaitable_on = None
    assert await method("Ada") == "Hello Ada"
    assert starts == 3000
