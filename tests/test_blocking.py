"""trpc.connect: the blocking client, against a real server on loopback in a Trio thread of its own.

These tests are plain functions (no Trio in the test's own thread): the blocking client is for
code that has no event loop, or one of asyncio's.
"""

from __future__ import annotations

import asyncio
import queue
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import trio

import trpc
from trpc import RpcError, Status
from trpc.examples import Greeter

from .helpers import run_python

#: Bounds every wait of these tests on something that happens in another thread.
WAIT = 10


class Watched(trpc.Service, name="test.Watched"):
    """Methods whose cancellation the test thread can watch (threading events, not Trio's)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.cancel_reasons: list = []
        #: When set, a call to ``block`` or ``forever`` sends SIGINT to the main thread once it
        #: has started (the test's Ctrl-C, at a moment when the caller is waiting on the call).
        self.interrupt_main = False

    def _interrupt(self) -> None:
        self.started.set()
        if self.interrupt_main:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def _record(self) -> None:
        self.cancel_reasons.append(trpc.current_call().cancel_reason)
        self.cancelled.set()

    @trpc.unary
    async def block(self) -> None:
        """Waits until cancelled."""
        try:
            self._interrupt()
            await trio.sleep_forever()
        finally:
            self._record()

    @trpc.server_stream
    async def forever(self):
        """Yields 0, 1, 2... until cancelled."""
        try:
            i = 0
            while True:
                yield i
                if i == 0:
                    self._interrupt()
                i += 1
                await trio.sleep(0.001)
        finally:
            self._record()

    @trpc.unary
    async def metadata(self) -> dict:
        return {k: v for k, v in trpc.current_call().metadata.items() if k.startswith("x-")}

    @trpc.unary
    async def fail(self) -> None:
        raise RpcError(Status.NOT_FOUND, "no such thing", {"id": 7})

    @trpc.bidi_stream
    async def double(self, numbers):
        async for n in numbers:
            yield 2 * n


class ServerThread:
    """A trpc server on a free loopback port, in a thread running Trio."""

    def __init__(self, *services) -> None:
        self.server = trpc.Server(*services)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        assert self._ready.wait(WAIT)

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(self.server.serve_tcp, 0, "127.0.0.1")
            self.address = f"{host}:{port}"
            self._token = trio.lowlevel.current_trio_token()
            self._scope = nursery.cancel_scope
            self._ready.set()

    def stop(self) -> None:
        self._token.run_sync_soon(self._scope.cancel)
        self._thread.join(WAIT)
        assert not self._thread.is_alive()


@pytest.fixture
def watched() -> Watched:
    return Watched()


@pytest.fixture
def address(watched):
    server = ServerThread(Greeter(), watched)
    yield server.address
    server.stop()


@pytest.fixture
def client(address):
    with trpc.connect(address) as client:
        yield client


@pytest.fixture
def sigint_raises_keyboard_interrupt():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------- the four shapes
def test_a_unary_call_returns_the_response(client):
    assert client.greet("Ada") == "Hello Ada"


def test_a_server_stream_is_a_plain_iterator(client):
    # The first call after connecting: its shape comes from the INFO frame, which follows the
    # connection's readiness by a round trip (ClientConnection.declared).
    replies = client.count(4)
    assert iter(replies) is replies
    assert list(replies) == [0, 1, 2, 3]
    assert replies.status is Status.OK


def test_a_client_stream_takes_a_list_or_any_iterable(client):
    assert client.total([1, 2, 3]) == 6
    assert client.total(x for x in range(5)) == 10
    assert client.total([]) == 0


def test_a_bidi_call_iterates_replies_while_the_items_are_sent(client):
    assert list(client.echo(["a", "b", "c"])) == ["a", "b", "c"]
    # Each item is made only after the reply to the one before has been read: the feeder and
    # the iteration really run at the same time (the generator runs in a worker thread).
    turns: queue.Queue = queue.Queue()

    def ping_pong():
        for i in range(5):
            yield i
            assert turns.get(timeout=WAIT) == i

    replies = []
    for reply in client.echo(ping_pong()):
        replies.append(reply)
        turns.put(reply)
    assert replies == [0, 1, 2, 3, 4]


def test_methods_are_reached_by_path_too(client):
    assert client["hello.Greeter"].greet("Ada") == "Hello Ada"
    assert client.method("test.Watched/double")([1, 2]) is not None


def test_a_streaming_method_given_no_iterable_is_invalid_argument(client):
    with pytest.raises(RpcError) as caught:
        client.total(5)
    assert caught.value.status is Status.INVALID_ARGUMENT


# ----------------------------------------------------------------- options and errors
def test_a_timeout_ends_the_call_with_deadline_exceeded(client, address):
    with pytest.raises(RpcError) as caught:
        client.sleep.with_options(timeout=0.05)(30)
    assert caught.value.status is Status.DEADLINE_EXCEEDED
    with trpc.connect(address, timeout=0.05) as impatient:
        with pytest.raises(RpcError) as caught:
            impatient.sleep(30)
    assert caught.value.status is Status.DEADLINE_EXCEEDED


def test_metadata_of_the_client_and_of_the_method_reach_the_server(address):
    with trpc.connect(address, metadata={"x-client": "c"}) as client:
        assert client.metadata() == {"x-client": "c"}
        assert client.metadata.with_options(metadata={"x-call": "m"})() == {"x-client": "c", "x-call": "m"}


def test_errors_are_the_async_clients_rpc_errors(client):
    with pytest.raises(RpcError) as caught:
        client.fail()
    assert (caught.value.status, caught.value.message, caught.value.details) == (Status.NOT_FOUND, "no such thing", {"id": 7})
    with pytest.raises(RpcError) as caught:
        client.no_such_method()
    assert caught.value.status is Status.UNIMPLEMENTED


def test_connecting_to_nothing_raises_unavailable():
    with pytest.raises(RpcError) as caught:
        trpc.connect("127.0.0.1:1", connect_timeout=2)
    assert caught.value.status is Status.UNAVAILABLE


# ----------------------------------------------------------------- Ctrl-C
@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
def test_ctrl_c_during_a_unary_call_cancels_it_on_the_wire(client, watched, sigint_raises_keyboard_interrupt):
    watched.interrupt_main = True
    with pytest.raises(KeyboardInterrupt):
        client.block()
    assert watched.cancelled.wait(WAIT)
    assert watched.cancel_reasons == [Status.CANCELLED]
    watched.interrupt_main = False
    assert client.greet("again") == "Hello again"  # the client is still usable


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
def test_ctrl_c_while_iterating_a_server_stream_cancels_it_on_the_wire(client, watched, sigint_raises_keyboard_interrupt):
    watched.interrupt_main = True
    with pytest.raises(KeyboardInterrupt):
        for _ in client.forever():
            pass
    assert watched.cancelled.wait(WAIT)
    assert watched.cancel_reasons == [Status.CANCELLED]


def test_leaving_a_stream_early_cancels_its_call(client, watched):
    with client.forever() as replies:
        assert next(replies) == 0
    assert watched.cancelled.wait(WAIT)
    assert watched.cancel_reasons == [Status.CANCELLED]


def test_an_iterable_that_raises_cancels_the_bidi_call_and_the_error_reaches_the_caller(client):
    def numbers():
        yield 1
        raise ValueError("no more numbers")

    with pytest.raises(ValueError, match="no more numbers"):
        for _ in client.double(numbers()):
            pass


# ----------------------------------------------------------------- threads, loops, closing
def test_calls_from_many_threads_at_once_all_get_their_own_answer(client):
    def work(n: int) -> list:
        return [client.greet(f"{n}-{i}") for i in range(20)] + [sum(client.count(n))]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for n, result in enumerate(results):
        assert result == [f"Hello {n}-{i}" for i in range(20)] + [sum(range(n))]


def test_a_call_from_inside_a_running_asyncio_loop_works(client):
    # As in a Jupyter cell: a coroutine on asyncio's loop calls the client synchronously.
    async def cell():
        asyncio.get_running_loop()
        return client.greet("Jupyter"), list(client.count(3))

    assert asyncio.run(cell()) == ("Hello Jupyter", [0, 1, 2])


def test_a_blocking_call_from_the_clients_own_trio_thread_raises_instead_of_waiting_on_itself(client):
    async def inside():
        return client.greet("me")

    with pytest.raises(RuntimeError, match="own Trio thread"):
        client._runner.run(inside)


def test_closing_cancels_running_calls_and_joins_the_thread(address, watched):
    client = trpc.connect(address)
    outcome: queue.Queue = queue.Queue()

    def call() -> None:
        try:
            client.block()
        except RpcError as exc:
            outcome.put(exc.status)

    caller = threading.Thread(target=call)
    caller.start()
    assert watched.started.wait(WAIT)
    client.close()
    assert outcome.get(timeout=WAIT) is Status.UNAVAILABLE
    caller.join(WAIT)
    assert not client._runner.thread.is_alive()
    assert watched.cancelled.wait(WAIT)
    with pytest.raises(RpcError) as caught:
        client.greet("after")
    assert caught.value.status is Status.UNAVAILABLE
    client.close()  # again: nothing


def test_an_unclosed_client_does_not_hold_up_the_interpreters_exit(address):
    script = (
        "import trpc, sys\n"
        f"client = trpc.connect({address!r})\n"
        "print(client.greet('exit'))\n"
        "stream = client.count(1000000)\n"
        "next(stream)\n"
    )
    result = run_python(script, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello exit\n"
