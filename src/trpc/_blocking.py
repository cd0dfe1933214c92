"""The blocking client: trpc from a script, a REPL or a notebook, without ``async``.

Theory of operation
-------------------
:func:`connect` starts one thread per client that runs ``trio.run``; inside it an ordinary
:func:`~trpc.open_client` opens the channel, and a nursery (the *job nursery*) runs whatever the
calling threads ask for.  Every blocking call is a *job*: the calling thread hands an async
function of the async client to the Trio thread with ``TrioToken.run_sync_soon`` (which never
blocks), the job runs it as a task under a cancel scope of its own and puts the outcome in a
``concurrent.futures.Future``, and the calling thread waits on that future.  Nothing here speaks
the protocol: deadlines, retries, metadata, interceptors and errors are the async client's.

Why a thread and not ``trio.lowlevel.start_guest_run``: a guest run needs a host loop that
keeps running in the calling thread, and a script has none, while a notebook's asyncio loop is
blocked for as long as the cell's synchronous call waits, so the guest would never be driven
and the call would deadlock.  A thread of its own runs Trio whatever the caller does, and a
call from inside a running asyncio loop is just a function that blocks.

Interrupting: a ``KeyboardInterrupt`` (Ctrl-C) or any other exception raised in the calling
thread while it waits cancels the job's scope from the Trio thread; the async client then sends
CANCEL (reason CANCELLED) as for any cancelled caller, and the calling thread waits for the job
to end before re-raising, so when the exception reaches the caller the server has been told.
A stream being iterated is closed the same way (its call is cancelled).

Threads: jobs are independent tasks, so any number of threads may call at once.  A streaming
call's iterator belongs to the thread that uses it (as any Python iterator).  Calling from the
client's own Trio thread (a handler served by it) would wait on itself, and raises instead.

Shapes: the async client's call is chosen by the method's shape, which the server declared
in its INFO frame (docs/PROTOCOL.md section 3): unary and client-streaming calls return the
response, server-streaming and bidi calls return a :class:`BlockingStream`.  A method the
server did not declare is called as unary (the server then says UNIMPLEMENTED).

Closing: :meth:`BlockingClient.close` (or leaving the ``with`` block) cancels the jobs still
running (their callers get UNAVAILABLE "the client is closed"), closes the async client (GOAWAY)
and joins the thread.  The thread is a daemon thread, so a client nobody closed never holds up
the interpreter's exit; a client that is garbage collected unclosed is closed then.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import weakref
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import trio

from ._client import Client, ClientStream, Method, open_client
from ._errors import RpcError
from ._reflection import Reflection
from ._service import Cardinality
from ._status import Status
from .channel._subchannel import ConnectivityState

__all__ = ["BlockingClient", "BlockingMethod", "BlockingStream", "connect", "CLOSE_TIMEOUT"]

#: How long closing a client waits for its thread to finish the GOAWAY and close the
#: connections before it leaves the (daemon) thread to die with the process: 5 s, far more than
#: closing takes on a live connection, short enough that a dead network cannot hang a script's
#: exit for long.
CLOSE_TIMEOUT = 5.0

_CLOSED_MESSAGE = "the client is closed"

#: What a blocking call runs in the Trio thread: an async function of the async client's.
_Job = Callable[..., Awaitable[Any]]


class _Runner:
    """The Trio thread of one client and the jobs it runs.  Kept apart from
    :class:`BlockingClient` so that the thread holds no reference to the client, which can
    then be garbage collected (and closed) when its user drops it."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.client: Client | None = None
        self.jobs: trio.Nursery | None = None
        self.closed = False
        self._stop: trio.Event | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the Trio thread
    def start(self, target: Any, options: dict[str, Any]) -> None:
        """Start the thread and wait until the client is open (or failed to open)."""
        opened: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.thread = threading.Thread(
            target=trio.run, args=(self._main, target, options, opened), name=f"trpc client {target!r}", daemon=True
        )
        self.thread.start()
        try:
            opened.result()
        except BaseException:
            self.close()
            raise

    async def _main(self, target: Any, options: dict[str, Any], opened: concurrent.futures.Future[None]) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        try:
            async with open_client(target, **options) as client:
                self.client = client
                async with trio.open_nursery() as jobs:
                    self.jobs = jobs
                    opened.set_result(None)
                    if not self.closed:  # else close() came before there was a _stop to set
                        await self._stop.wait()
                    jobs.cancel_scope.cancel()
        except BaseException as exc:
            if not opened.done():
                opened.set_exception(exc)
                return
            raise
        finally:
            self.jobs = None

    def _spawn(
        self, future: concurrent.futures.Future[Any], scope: trio.CancelScope, fn: _Job, args: tuple[Any, ...]
    ) -> None:
        """In the Trio thread: start a job, or fail it when the client is closed."""
        if self.jobs is None or self._stop is None or self._stop.is_set():
            future.set_exception(RpcError(Status.UNAVAILABLE, _CLOSED_MESSAGE))
            return
        self.jobs.start_soon(self._job, future, scope, fn, args)

    @staticmethod
    async def _job(
        future: concurrent.futures.Future[Any], scope: trio.CancelScope, fn: _Job, args: tuple[Any, ...]
    ) -> None:
        value: Any = None
        try:
            with scope:
                value = await fn(*args)
        except trio.Cancelled:  # the job nursery: the client is closing
            future.set_exception(RpcError(Status.UNAVAILABLE, _CLOSED_MESSAGE))
            raise
        except BaseException as exc:
            future.set_exception(exc)
        else:
            if scope.cancelled_caught:  # interrupted: the caller raises its own exception
                future.set_exception(RpcError(Status.CANCELLED, "the call was interrupted"))
            else:
                future.set_result(value)

    # ------------------------------------------------------------------ calling threads
    def run(self, fn: _Job, *args: Any) -> Any:
        """Run ``await fn(*args)`` in the Trio thread and return its result (or raise its
        exception).  An exception raised in this thread while it waits (KeyboardInterrupt)
        cancels the job, waits for it to end, and propagates."""
        if threading.current_thread() is self.thread:
            raise RuntimeError("a blocking trpc call from the client's own Trio thread would wait on itself")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        scope = trio.CancelScope()
        token = self.token
        if self.closed or token is None:
            raise RpcError(Status.UNAVAILABLE, _CLOSED_MESSAGE)
        # True before the job is handed over: an interrupt may come at any bytecode from here
        # on, and the job may then be running already (at worst it never started, and the
        # wait below gives up after CLOSE_TIMEOUT).
        submitted = True
        try:
            try:
                token.run_sync_soon(self._spawn, future, scope, fn, args)
            except trio.RunFinishedError:
                submitted = False
                raise RpcError(Status.UNAVAILABLE, _CLOSED_MESSAGE) from None
            return future.result()
        except BaseException:
            if submitted and not future.done():
                self._cancel(token, scope)
                concurrent.futures.wait([future], timeout=CLOSE_TIMEOUT)
            raise

    @staticmethod
    def _cancel(token: trio.lowlevel.TrioToken, scope: trio.CancelScope) -> None:
        try:
            token.run_sync_soon(scope.cancel)
        except trio.RunFinishedError:
            pass

    def run_soon(self, fn: _Job, *args: Any) -> None:
        """Start ``await fn(*args)`` in the Trio thread without waiting for it (cleanup that
        must run there, such as closing a dropped stream); nothing if the client is closed."""
        token = self.token
        if token is None:
            return
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            token.run_sync_soon(self._spawn, future, trio.CancelScope(), fn, args)
        except trio.RunFinishedError:
            pass

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        if self.token is not None and self._stop is not None:
            try:
                self.token.run_sync_soon(self._stop.set)
            except trio.RunFinishedError:
                pass
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(CLOSE_TIMEOUT)


def _declared_shape(methods: dict[str, Cardinality], name: str) -> Cardinality | None:
    """The shape ``methods`` (a connection's INFO) gives ``name``, a path or a short name that
    exactly one path ends with; None when it gives none."""
    shape = methods.get(name)
    if shape is None and "/" not in name:
        shapes = [shape for path, shape in methods.items() if path.rpartition("/")[2] == name]
        shape = shapes[0] if len(shapes) == 1 else None
    return shape


async def _async_items(items: Iterator[Any]) -> AsyncIterator[Any]:
    """The items of a plain iterator, as an async iterator.  Items of a list, tuple or range
    are taken in the Trio thread; any other iterator (a generator reading input, say) is
    advanced in a worker thread, so that a slow one never stalls the client's other calls."""
    if isinstance(items, (list, tuple, range)):
        for item in items:
            yield item
        return
    iterator = iter(items)
    end = object()
    while True:
        item = await trio.to_thread.run_sync(next, iterator, end, abandon_on_cancel=True)
        if item is end:
            return
        yield item


class BlockingClient:
    """A channel to a trpc service for code that does not use ``async``; get one from
    :func:`connect`.

    Methods of the server are attributes, as on :class:`~trpc.Client`: ``client.greet("Ada")``
    returns the response; ``client.count(3)`` (server-streaming) returns an iterator of the
    responses; ``client.total([1, 2, 3])`` (client-streaming) sends the iterable's items and
    returns the response; ``client.echo(items)`` (bidi) returns an iterator of the responses
    while the items are sent.  ``client["kv.Store"].get(key)`` and ``client.method(path)``
    call by path.  Errors are the async client's :class:`~trpc.RpcError`.  Safe to use from
    several threads at once.
    """

    def __init__(self, runner: _Runner) -> None:
        self._runner = runner
        self._finalizer = weakref.finalize(self, runner.close)

    def __getattr__(self, name: str) -> "BlockingMethod":
        if name.startswith("_"):
            raise AttributeError(name)
        return self.method(name)

    def __getitem__(self, service: str) -> "_BlockingService":
        """The methods of the server's service ``service`` (``"kv.Store"``), called by path."""
        if not isinstance(service, str) or not service or "/" in service:
            raise TypeError(f"a service name is non-empty text without '/', not {service!r}")
        return _BlockingService(self, service)

    def method(self, name: str) -> "BlockingMethod":
        """The server method ``name``: a path (``"kv.Store/get"``) or a short name."""
        return BlockingMethod(self._runner, self._async_client.method(name))

    @property
    def _async_client(self) -> Client:
        client = self._runner.client
        if client is None or self._runner.closed:
            raise RpcError(Status.UNAVAILABLE, _CLOSED_MESSAGE)
        return client

    def reflect(self) -> Reflection:
        """What the server serves (see :meth:`trpc.Client.reflect`)."""
        reflection: Reflection = self._runner.run(self._async_client.reflect)
        return reflection

    @property
    def state(self) -> ConnectivityState:
        """The channel's connectivity state."""
        return self._async_client.state

    def wait_for_state(self, state: ConnectivityState) -> None:
        """Wait until the channel is in ``state`` (UNAVAILABLE if it closes first)."""
        self._runner.run(self._async_client.wait_for_state, state)

    @property
    def peer(self) -> str:
        """The backend calls go to first (pick_first), or the target."""
        return self._async_client.peer

    def close(self) -> None:
        """Cancel the calls still running (UNAVAILABLE "the client is closed"), close the
        channel and join its thread (for at most ``CLOSE_TIMEOUT`` seconds).  Idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        """Whether the client was closed (``close()``, or leaving its ``with`` block)."""
        return self._runner.closed

    def __enter__(self) -> "BlockingClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<trpc.BlockingClient {'closed' if self.closed else self.peer}>"


class _BlockingService:
    """One service's methods as attributes (``client["kv.Store"]``)."""

    def __init__(self, client: BlockingClient, service: str) -> None:
        self._client = client
        self._service = service

    def __getattr__(self, name: str) -> "BlockingMethod":
        if name.startswith("_"):
            raise AttributeError(name)
        return self._client.method(f"{self._service}/{name}")


class BlockingMethod:
    """A server method bound to a :class:`BlockingClient`: call it (see the client's
    docstring for what each shape takes and returns)."""

    __slots__ = ("_runner", "_method")

    def __init__(self, runner: _Runner, method: Method) -> None:
        self._runner = runner
        self._method = method

    @property
    def name(self) -> str:
        return self._method.name

    def with_options(self, **options: Any) -> "BlockingMethod":
        """The same method with other call options (``timeout=``, ``metadata=``,
        ``wait_for_ready=``, ``compression=``): those of :meth:`trpc.Method.with_options`."""
        return BlockingMethod(self._runner, self._method.with_options(**options))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs:
            # A client- or bidi-streaming call takes one iterable; turn it into an iterator
            # here, so that something that is not iterable fails in the caller's thread.
            return self._runner.run(self._invoke, args, kwargs, _iterator_or_none(args[0]))
        return self._runner.run(self._invoke, args, kwargs, None)

    async def _invoke(self, args: tuple[Any, ...], kwargs: dict[str, Any], items: Iterator[Any] | None) -> Any:
        """In the Trio thread: make the call the method's shape asks for."""
        method = self._method
        shape = await self._shape()
        if shape is None or not shape.client_streams:
            if shape is not None and shape.server_streams:
                call = method(*args, **kwargs)
                stream = await call.__aenter__()
                return BlockingStream(self._runner, stream, None)
            return await method(*args, **kwargs)
        if items is None:
            raise RpcError(
                Status.INVALID_ARGUMENT,
                f"{method.name} is {shape.name.lower().replace('_', '-')}: it takes one iterable of request messages",
            )
        if not shape.server_streams:
            return await method(_async_items(items))
        jobs = self._runner.jobs
        if jobs is None:
            raise RpcError(Status.UNAVAILABLE, _CLOSED_MESSAGE)
        stream = await method.open().__aenter__()
        blocking = BlockingStream(self._runner, stream, items)
        jobs.start_soon(blocking._feed)
        return blocking

    async def _shape(self) -> Cardinality | None:
        """The method's shape as the server declared it on a ready connection (None: not
        declared), waiting, within the method's timeout, for that connection's INFO (it comes a
        round trip after the connection is ready) and, if the method waits for ready, for a
        ready connection."""
        method = self._method
        channel = method._client._channel
        timeout = method._timeout
        with trio.move_on_after(math.inf if timeout is None else timeout):
            if not channel.ready and method._wait_for_ready:
                await method._client.wait_for_state(ConnectivityState.READY)
            for connection in channel.ready:
                await connection.declared.wait()
                return _declared_shape(connection.methods, method.name)
        return None

    def __repr__(self) -> str:
        return f"<trpc blocking method {self.name}>"


def _iterator_or_none(value: Any) -> Iterator[Any] | None:
    """An iterator over ``value`` if it is an iterable of request messages (not text, bytes or
    a mapping, which are single messages); else None."""
    if isinstance(value, (str, bytes, bytearray, memoryview, dict)):
        return None
    if isinstance(value, (list, tuple, range)):
        return value  # type: ignore[return-value]  # taken in the Trio thread (_async_items)
    try:
        items: Iterator[Any] = iter(value)
        return items
    except TypeError:
        return None


class BlockingStream:
    """The responses of a server-streaming or bidi call, as a plain iterator.

    Iterate it (``for reply in client.count(3)``); ``next()`` raises the call's
    :class:`~trpc.RpcError` if it ended with another status than OK.  For a bidi call, a task
    sends the request items meanwhile; if taking an item raises, the call is cancelled and the
    exception is raised from the iteration.  ``close()`` (or leaving ``with``, or dropping the
    iterator) cancels a call that has not ended.  ``headers``, ``trailers`` and ``status`` hold
    what the server sent.
    """

    def __init__(self, runner: _Runner, stream: ClientStream, items: Iterator[Any] | None) -> None:
        self._runner = runner
        self._stream = stream
        self._items = items
        self._feed_error: BaseException | None = None
        self._receiving: trio.CancelScope | None = None
        self._done = False

    async def _feed(self) -> None:
        """In the Trio thread (a bidi call): send the request items, then half-close."""
        stream = self._stream
        assert self._items is not None  # a bidi call's stream has its items
        try:
            async for item in _async_items(self._items):
                if not await stream.send(item):
                    return  # the call has ended; the responses say how
            await stream.done_sending()
        except trio.Cancelled:
            raise
        except BaseException as exc:
            self._feed_error = exc
            if self._receiving is not None:
                self._receiving.cancel()
            await stream.aclose()

    async def _receive(self) -> Any:
        with trio.CancelScope() as self._receiving:
            try:
                return await self._stream.__anext__()
            except RpcError:
                if self._feed_error is None:
                    raise
                # The feeder failed and cancelled the call: its error is the one to report.
            finally:
                self._receiving = None
        # The feeder cancelled this scope, or the call, after failing.
        assert self._feed_error is not None
        raise self._feed_error

    def __iter__(self) -> "BlockingStream":
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        if self._feed_error is not None:
            self.close()
            raise self._feed_error
        try:
            return self._runner.run(self._receive)
        except StopAsyncIteration:
            self._done = True
            raise StopIteration from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Cancel the call if it has not ended (the server sees CANCELLED)."""
        if self._done:
            return
        self._done = True
        if not self._runner.closed:
            try:
                self._runner.run(self._stream.aclose)
            except RpcError:  # the client closed meanwhile: the call ended with it
                pass

    def __enter__(self) -> "BlockingStream":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped before its end: the call is cancelled in the Trio thread, where the async
        # stream is also let go of (it must never be finalized in another thread).
        if not self._done:
            self._done = True
            try:
                self._runner.run_soon(self._stream.aclose)
            except Exception:  # interpreter exit: the connection goes with the process
                pass

    @property
    def status(self) -> Status | None:
        """The call's final status, once it has ended."""
        return self._stream.status

    @property
    def headers(self) -> dict[str, Any] | None:
        """Response headers, once the server has sent them."""
        return self._stream.headers

    @property
    def trailers(self) -> dict[str, Any]:
        """Trailing metadata, once the call has ended."""
        return self._stream.trailers


def connect(target: Any, **options: Any) -> BlockingClient:
    """Open a channel to a trpc service for blocking calls; returns a :class:`BlockingClient`
    (use it in ``with``, or call ``close()``).

    ``target`` and every option are those of :func:`trpc.open_client` (``timeout=``,
    ``metadata=``, ``wait_for_ready=``, ``config=``, TLS, ...).  Works in scripts, REPLs and
    notebooks, including inside a running asyncio loop (the client runs Trio in a thread of its
    own; see trpc._blocking).

    Raises:
        RpcError: UNAVAILABLE if no backend can be reached (as ``open_client``).
    """
    runner = _Runner()
    runner.start(target, options)
    return BlockingClient(runner)
