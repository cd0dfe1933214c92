"""The client: call a server's methods as if they were local, over a channel of connections.

Theory of operation
-------------------
``open_client`` makes a :class:`~trpc.channel.Channel` (a resolver, subchannels that connect
and reconnect with backoff, a balancer; see :mod:`trpc.channel`) and runs it in a nursery that
the context manager owns; it never lets an ExceptionGroup out.  Calls run in the *caller's*
task: a unary call picks a connection (one step of the balancer over the list of ready
connections), queues its HEADERS and its message (one write for both), parks, and is woken by the
reader when the trailers arrive.  No task, channel or lock per call.  A stream stays on the
connection it started on.

Deadlines come from Trio: the call reads ``trio.current_effective_deadline()``, so any enclosing
``move_on_after`` / ``fail_after`` scope, or a server handler's own deadline when the call is
nested in one, travels to the server as the time remaining.  An explicit ``timeout=`` (on the
client, per method, or in the client's config) adds a scope of trpc's own, which raises
``RpcError(DEADLINE_EXCEEDED)``; a deadline of the caller's own scope behaves as Trio says for
that scope (``move_on_*`` is silent, ``fail_*`` raises ``TooSlowError``).  If the caller is
cancelled while a call is in flight, a CANCEL frame tells the server why: the deadline passed,
the caller was cancelled, or (for a nested call) the reason its own caller gave.

Retries (the slow path, taken only when an attempt has failed; see ``_Retrier``):

- *transparent*: a call the server says it never processed (refused while shutting down, over
  a limit, above a GOAWAY's last stream id) is sent again, to whichever connection the balancer
  picks, whatever the method: it had no effect;
- *by policy*: a call of an idempotent method (the config says so, or the server declares it in
  its INFO frame) that failed with a retryable status is tried again after a backoff, up to the
  policy's ``max_attempts``, never past the call's deadline, and, when the config sets
  ``retryThrottling``, only while that token bucket has tokens (every call a retry policy
  covers fills or drains it; without one, retries are not throttled).

A streaming call is retried only until the first response (headers or message) arrives: the
request messages sent so far are kept (up to ``RETRY_BUFFER`` bytes) and sent again.  Every
attempt after the first carries its number in the metadata key ``trpc-attempt``.

Streaming calls use :class:`ClientStream`, an explicit send/receive object; server-streaming
calls can simply be iterated (``async for x in client.count(5)``), client-streaming calls take
an async iterable (``await client.total(numbers())``), and so do bidi-streaming ones, iterated
(``async for reply in client.chat(requests())``): a task in the client's nursery sends the
requests while the caller reads, and the caller's loop object owns the call, so leaving the
loop (dropping it) cancels the call and that task; what the iterable raises is raised to the
reader as it is, never inside an ExceptionGroup.

What a method is comes from the server's INFO frame, once per connection: its shape and the
path a short name stands for (``ClientConnection.names``).  A :class:`Method` keeps what it
learned and which connection's declarations it learned it from, so the unary path tests one
identity per call; a use that does not fit the shape raises :class:`~trpc.UsageError` before
anything is sent, and the config entry of the path (``{"service": "kv.Store"}``) applies to a
call by short name.  ``timeout=``, ``metadata=`` and ``wait_for_ready=`` in a call are options
of that call (``trpc._service.CALL_OPTIONS``), never arguments.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import ssl
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Coroutine, Generator, Sequence, TypeVar, cast

import trio

from ._codec import _loads, decode, encode, encode_arguments, inflate
from ._config import ClientConfig, RetryPolicy, RetryThrottle
from ._context import _current_or_none
from ._errors import LocalProtocolError, MessageTooLargeError, RpcError, UsageError
from ._framer import get_framer
from ._interceptors import CallDetails, run_chain
from ._reflection import DESCRIBE_METHOD, Reflection
from ._keepalive import CLIENT_KEEPALIVE_TIME, CLIENT_KEEPALIVE_TIMEOUT, check_keepalive
from ._framer_py import DEFAULT_MAX_FRAME_SIZE
from .wire._compression import DEFAULT_COMPRESSION_THRESHOLD, Compressed, parse_coding
from .wire import (
    DEFAULT_CONNECTION_WINDOW,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_STREAM_WINDOW,
    message_size,
)
from ._service import CALL_OPTIONS, SHAPE_WORDS, Cardinality
from ._status import Status
from ._stub import make_stub
from .channel._channel import Channel
from .channel._connection import ClientCall, ClientConnection, ConnectOptions
from .channel._resolver import make_resolver
from .channel._subchannel import ConnectivityState

__all__ = [
    "Client", "ClientStream", "Method", "ServiceMethods", "open_client", "parse_target", "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_RETRY_POLICY", "RETRY_BUFFER", "ATTEMPT_KEY",
]

logger = logging.getLogger("trpc")

#: How long one connection attempt may take (TCP connect, TLS handshake and the server's
#: preface, all together), unless the connection backoff is longer then (gRPC's
#: MIN_CONNECT_TIMEOUT, whose default there is 20 s).  10 s: long enough for a loaded server,
#: short enough that a black-holed address fails while a person waits.  A client ``timeout=``
#: that is shorter bounds them instead.
DEFAULT_CONNECT_TIMEOUT = 10.0

#: Bytes of received messages a stream reader takes before it returns their credit (sooner if
#: its queue runs dry).  16 KiB: a small fraction of the 2 MiB window, far fewer calls than one
#: per message.
_ACK_BATCH = 16384

#: The retry policy of a method that is idempotent (by the config, or by the server's word) when
#: the config gives it none: 3 attempts, on UNAVAILABLE only (the connection was lost or the
#: server could not take the call), 0.1 s then 0.2 s of backoff (randomized).  Enough to ride
#: over one backend's crash or restart, too little to pile load on a struggling service.
DEFAULT_RETRY_POLICY = RetryPolicy(
    max_attempts=3,
    initial_backoff=0.1,
    max_backoff=1.0,
    backoff_multiplier=2.0,
    retryable_status_codes=frozenset({Status.UNAVAILABLE}),
)
#: Request bytes a streaming call keeps, until its first response, so that it can be sent
#: again on a retry; a call that sends more is no longer retried (it is "committed", as gRPC
#: says).  256 KiB: gRPC's own per-call retry buffer.
RETRY_BUFFER = 256 * 1024
#: A call may be retried transparently (the server never processed it) this many times: the
#: refusals come from servers shutting down or full, and a call that meets eight in a row had
#: better fail and say so.
_MAX_TRANSPARENT = 8
#: The metadata key that carries the attempt number on every attempt after the first.
ATTEMPT_KEY = "trpc-attempt"

_S = TypeVar("_S")
_T = TypeVar("_T")

_current_time = trio.current_time
_current_effective_deadline = trio.current_effective_deadline
_UNSET: Any = object()
_OK = Status.OK
_READY = ConnectivityState.READY


def parse_target(target: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6addr]:port"`` -> (host, port)."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {target!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port out of range in {target!r}")
    return host, number


def _too_large(exc: MessageTooLargeError) -> RpcError:
    return RpcError(
        Status.RESOURCE_EXHAUSTED, f"request message of {exc.size} bytes exceeds the server's limit of {exc.limit}"
    )


def _cancel_reason(deadline: float) -> tuple[Status, str]:
    """Why the current task's call is being cancelled, for the CANCEL frame."""
    if deadline != math.inf and _current_time() >= deadline:
        return Status.DEADLINE_EXCEEDED, "the caller's deadline passed"
    upstream = _current_or_none()
    if upstream is not None and upstream.cancel_reason is not None:
        return upstream.cancel_reason, upstream.cancel_message or f"upstream call {upstream.method} was cancelled"
    return Status.CANCELLED, "the caller was cancelled"


class Client:
    """A channel to a trpc service; get one from :func:`open_client`.

    Methods of the server are attributes: ``await client.greet("Ada")`` sends the short name
    ``"greet"``, which the server resolves if exactly one of its services has such a method.
    ``client["kv.Store"].get(...)`` calls a service's method by its path (``"kv.Store/get"``),
    as does ``client.method("kv.Store/get")``.  A method whose name clashes with an attribute of
    this class is reached with ``client.method("aclose")``.  Those calls are untyped; for calls
    that type checkers check against the service's own signatures, make a stub of the service
    class (or of a Protocol that describes it): :meth:`stub`.
    """

    def __init__(
        self,
        channel: Channel,
        *,
        timeout: float | None,
        metadata: dict[str, Any] | None,
        interceptors: Sequence[Any] = (),
        config: ClientConfig | None = None,
        wait_for_ready: bool = False,
        compression: int = 0,
    ) -> None:
        self._channel = channel
        #: The coding of every call's request messages and asked for its responses (a
        #: ``trpc.wire._compression.Coding``; 0: none), unless a method or a call says otherwise.
        self._compression = compression
        self._timeout = timeout
        self._metadata = dict(metadata or {})
        self._interceptors = tuple(interceptors)
        self._config = config
        self._wait_for_ready = wait_for_ready
        throttling = config.retry_throttling if config is not None else None
        #: The retry budget; None when the config sets no ``retryThrottling`` (as in gRPC,
        #: retries are then never throttled).
        self._throttle = RetryThrottle(throttling) if throttling is not None else None
        self._random = random.Random()
        self._closing = False

    def __getattr__(self, name: str) -> "Method":
        if name.startswith("_"):
            raise AttributeError(name)
        method = self.method(name)
        self.__dict__[name] = method  # cached: next time a plain attribute hit
        return method

    def __getitem__(self, service: str) -> "ServiceMethods":
        """The methods of the server's service ``service`` (``"kv.Store"``) as attributes,
        called by path: ``client["kv.Store"].get(key)`` sends ``"kv.Store/get"``."""
        if not isinstance(service, str) or not service or "/" in service:
            raise TypeError(f"a service name is non-empty text without '/', not {service!r}")
        return ServiceMethods(self, service)

    async def reflect(self) -> Reflection:
        """What the server serves, from its reflection service (docs/PROTOCOL.md "Reflection").

        Raises:
            RpcError: UNIMPLEMENTED from a server without reflection; INTERNAL for a document
                this client cannot read (the message says where it is wrong).
        """
        document = await self.method(DESCRIBE_METHOD)()
        try:
            return Reflection.from_document(document)
        except ValueError as exc:
            raise RpcError(Status.INTERNAL, f"the server's reflection document is malformed: {exc}") from None

    def method(self, name: str) -> "Method":
        """The server method ``name``: a path (``"kv.Store/get"``), or a short name (for names
        that are not identifiers or clash with ours)."""
        return Method(self, name, self._metadata)

    def stub(
        self,
        service: type[_S] | Callable[..., _S],
        *,
        name: str | None = None,
        timeout: float | None = _UNSET,
        metadata: Mapping[str, str | bytes] | None = None,
        wait_for_ready: bool | None = None,
        compression: str | None = _UNSET,
    ) -> _S:
        """The methods of ``service`` on this client, typed as the class declares them.

        ``service`` is a :class:`~trpc.Service` subclass, or a ``typing.Protocol`` whose
        methods are decorated as the service's are (bodies ``...``), so that a client need not
        import the server's code.  Type checkers see the stub as an instance of ``service``:
        ``await stub.greet("Ada")`` is what ``greet`` returns, ``stub.count(3)`` an async
        iterator of what ``count`` yields, a client- or bidi-streaming method takes its
        requests as any iterable or async iterable, and a wrong argument is a type error.  Only
        the decorated methods exist on the stub.

        Args:
            service: the class that declares the methods (typed ``type[S] | Callable[..., S]``
                only so that mypy takes a Protocol, which it refuses where ``type[S]`` is
                expected; anything but a class raises TypeError).
            name: the service's full name (``"hello.Greeter"``); default: a Service subclass's
                own, else none, and each method is called by its short name.
            timeout, metadata, wait_for_ready, compression: options of every call the stub
                makes, as :meth:`Method.with_options` takes them; make another stub for other
                options.

        Raises:
            TypeError: ``service`` is not a class, or declares no method.
            UsageError: an option of the wrong type.
        """
        options: dict[str, Any] = {}
        if timeout is not _UNSET:
            options["timeout"] = timeout
        if metadata is not None:
            options["metadata"] = dict(metadata)
        if wait_for_ready is not None:
            options["wait_for_ready"] = wait_for_ready
        if compression is not _UNSET:
            options["compression"] = compression
        return cast(_S, make_stub(service, name, self.method, options))

    # ------------------------------------------------------------------ the channel
    @property
    def state(self) -> ConnectivityState:
        """The channel's connectivity state (gRPC's: READY if any backend is, ...)."""
        return self._channel.state

    async def wait_for_state(self, state: ConnectivityState) -> None:
        """Wait until the channel is in ``state`` (UNAVAILABLE if it closes first)."""
        await self._channel.wait_for_state(state)

    @property
    def peer(self) -> str:
        """The backend calls go to first (pick_first), or the target."""
        ready = self._channel.ready
        return ready[0].peer if ready else str(self._channel)

    @property
    def calls_in_flight(self) -> int:
        """Calls on this channel's connections that have not ended yet."""
        return sum(connection.conn.open_streams for connection in self._channel.connections)

    @property
    def framer_name(self) -> str:
        """The frame scanner this client's connections use: ``"c"`` or ``"python"``."""
        name: str = self._channel.options.framer.name
        return name

    @property
    def _connection(self) -> ClientConnection | None:
        """The first ready connection (for tests and debugging)."""
        ready = self._channel.ready
        return ready[0] if ready else None

    # ------------------------------------------------------------------ plumbing
    async def _connection_for(self, wait_for_ready: bool, record: "_Call | None" = None) -> ClientConnection:
        """A connection that can take a call now: the balancer's pick, waiting for a ready
        backend if ``wait_for_ready`` (within the caller's deadline), or for a free slot
        under the server's concurrent-call limit.

        ``record``: the call object of an awaited call, which ``cancel()`` may cancel while it
        waits here (RpcError CANCELLED), and whose ``initial_metadata()`` waiters learn when it
        stops waiting."""
        if record is None:
            return await self._wait_for_connection(wait_for_ready)
        control = record._control_for()
        try:
            with trio.CancelScope() as control.scope:
                if control.cancelled:
                    control.scope.cancel()
                return await self._wait_for_connection(wait_for_ready)
            raise control.cancelled_error()
        finally:
            control.scope = None
            control.changed.set()

    async def _wait_for_connection(self, wait_for_ready: bool) -> ClientConnection:
        channel = self._channel
        while True:
            if self._closing:
                raise RpcError(Status.UNAVAILABLE, "the client is closed")
            connection = channel.pick()
            if connection is None:
                connection = await channel.wait_for_pick(wait_for_ready)
            conn = connection.conn
            if conn.can_open_call:
                return connection
            while not conn.can_open_call and connection.usable:
                await connection.slot_waiters.park()

    def _open(
        self, connection: ClientConnection, name: str, metadata: dict[str, Any], deadline: float, message: Any = None,
        coding: int = 0,
    ) -> ClientCall:
        """Open a call; with ``message``, also send it as the call's one request message and
        half-close (``call.unsent`` says whether some of it waits for credit).  ``coding``:
        compress the request so and ask for responses so (0: neither)."""
        timeout = None if deadline == math.inf else max(0.0, deadline - _current_time())
        sent = True
        try:
            if message is None:
                stream_id = connection.open_call(name, metadata, timeout, coding=coding)
            else:
                stream_id, sent = connection.open_unary_call(name, message, metadata, timeout, coding)
        except MessageTooLargeError as exc:
            raise _too_large(exc) from None
        except LocalProtocolError as exc:
            if connection.conn.accepting_calls:
                raise RpcError(Status.INVALID_ARGUMENT, str(exc)) from None
            raise RpcError(Status.UNAVAILABLE, str(exc)) from None
        call = ClientCall(stream_id, connection)
        connection.calls[stream_id] = call
        if not sent:
            call.unsent = True
        return call

    async def _send(self, call: ClientCall, payload: bytes | list[bytes], end_stream: bool = False, coding: int = 0) -> bool:
        """Queue a message (compressed with ``coding`` if not 0, when the server accepts it);
        wait while it waits for credit.  False if the call already ended."""
        if call.status is not None:
            return False
        connection = call.connection
        try:
            sent = connection.send_message(call.id, payload, end_stream, coding)
        except MessageTooLargeError as exc:
            raise _too_large(exc) from None
        if not sent:
            await connection.wait_for_credit(call.id, call.credit_wakeup, call.ended)
        if connection._stalled:
            await connection.wait_for_room()
        return True

    @staticmethod
    def _cancel(call: ClientCall, reason: Status, message: str) -> None:
        """End a call from this side: it reports ``reason`` as its status (what the caller
        sees it end with), and the server is told why.  Whoever waits on the call (another
        task: ``cancel()`` is called from one) is woken."""
        connection = call.connection
        connection.calls.pop(call.id, None)
        if call.status is None:
            call.status = reason
            call.message = message
            call.wake()
            if connection.broken is None:
                connection.cancel(call.id, reason, message)
                if connection.slot_waiters:
                    connection.slot_waiters.unpark()
                if not connection.usable:
                    connection.check_drained()

    @staticmethod
    def _finish(call: ClientCall) -> None:
        call.connection.calls.pop(call.id, None)

    async def _unary(
        self, method: "Method", payload: Any, timeout: float | None, record: "_Call", own: Any = None
    ) -> Any:
        if timeout is not None:
            start = _current_time()
            with trio.CancelScope(deadline=start + timeout) as scope:
                return await self._unary(method, payload, None, record, (scope, start))
            if scope.cancelled_caught:
                timeout = timeout if method._timeout is None else method._timeout
                raise RpcError(Status.DEADLINE_EXCEEDED, f"{method.name}: deadline exceeded ({timeout} s)")
        while True:
            deadline = _current_effective_deadline()
            if deadline != math.inf and deadline <= _current_time():
                if record._control is not None:
                    record._control.changed.set()
                await trio.lowlevel.checkpoint()  # no time left: the caller's scope cancels us here
            connection = self._channel.pick()
            if connection is None or not connection.conn.can_open_call:
                connection = await self._connection_for(method._wait_for_ready, record)
            if connection.names is method._awaitable_on or not await method._learn(connection):
                break
            # It waited for the server's INFO, or that told the method's path, whose config
            # sets another timeout, which applies to this call too: start over, in this loop
            # (connections that keep dying before their INFO must not deepen the stack; a
            # UsageError above if the server says the method streams).
            if own is not None:
                scope, start = own
                scope.deadline = math.inf if method._timeout is None else start + method._timeout
            elif method._timeout is not None:
                return await self._unary(method, payload, method._timeout, record)  # once: then own is set
        call = self._open(connection, method.name, method._metadata, deadline, payload, method._compression)
        record._result = call
        try:
            if call.unsent:  # part of the request waits for credit
                await connection.wait_for_credit(call.id, call.credit_wakeup, call.ended)
            wakeup = call.wakeup
            while call.status is None:
                await wakeup.park()
                if call.status is None and len(call.inbox) > 1:
                    raise method._not_one(call)  # a stream of responses, maybe endless
        except BaseException:
            if call.status is None:
                self._cancel(call, *_cancel_reason(deadline))
            raise
        connection.calls.pop(call.id, None)
        if call.status is _OK:
            return self._value(method, call, connection)
        return await _Retrier(method, deadline).unary(call, payload, record)

    def _value(self, method: "Method", call: ClientCall, connection: ClientConnection) -> Any:
        """The result of a unary call (an attempt) that ended OK."""
        if self._throttle is not None:
            self._record_success(method, connection)
        if len(call.inbox) == 1:
            if method._max_response is not None and message_size(call.inbox[0]) > method._max_response:
                raise method._response_too_large(message_size(call.inbox[0]))
            return decode(call.inbox[0], what="response", limit=method._max_response)
        raise method._not_one(call)

    def _record_success(self, method: "Method", connection: ClientConnection) -> None:
        """A call ended OK: it refills the retry budget if a retry policy covered it (the
        config's, or the default one of a method the server declares idempotent)."""
        if method._policy_for(connection) is not None and self._throttle is not None:
            self._throttle.record_success()

    async def aclose(self) -> None:
        """Cancel every call still in flight (reason UNAVAILABLE), say GOAWAY on every
        connection and close them; the channel is SHUTDOWN."""
        if self._closing:
            return
        self._closing = True
        # The cached methods refer back to this client: drop them, so that no reference cycle
        # keeps the client (and its connections' buffers) alive until the garbage collector runs.
        for name in [name for name, value in self.__dict__.items() if type(value) is Method]:
            del self.__dict__[name]
        await self._channel.aclose()


class _Retrier:
    """The decisions of one call's retries (see the module's docstring): made when an attempt
    has failed, never on the way of a call that succeeds."""

    __slots__ = ("method", "client", "deadline", "attempts", "transparent")

    def __init__(self, method: "Method", deadline: float) -> None:
        self.method = method
        self.client = method._client
        self.deadline = deadline
        #: Attempts made so far (all kinds), and how many of them were transparent retries.
        self.attempts = 1
        self.transparent = 0

    def delay(self, call: ClientCall) -> float | None:
        """Whether to try ``call`` (an attempt that failed) again, and after how long."""
        client = self.client
        if client._closing:
            return None
        if not call.processed:
            if self.transparent >= _MAX_TRANSPARENT:
                return None
            self.transparent += 1
            return 0.0
        method = self.method
        policy = method._policy_for(call.connection)
        if policy is None or call.status not in policy.retryable_status_codes:
            return None
        throttle = client._throttle
        if throttle is not None and not throttle.record_failure():
            return None
        if self.attempts - self.transparent >= policy.max_attempts:
            return None
        delay = policy.delay(self.attempts - self.transparent, client._random)
        if _current_time() + delay >= self.deadline:
            return None
        return delay

    def metadata(self) -> dict[str, Any]:
        return {**self.method._metadata, ATTEMPT_KEY: str(self.attempts)}

    async def unary(self, call: ClientCall, payload: Any, record: "_Call") -> Any:
        method = self.method
        client = self.client
        deadline = self.deadline
        while True:
            if record._control is not None and record._control.cancelled:
                break  # cancel() ended it: never tried again
            delay = self.delay(call)
            if delay is None:
                break
            if delay:
                control = record._control_for()
                with trio.CancelScope() as control.scope:
                    if control.cancelled:
                        control.scope.cancel()
                    await trio.sleep(delay)
                control.scope = None
                if control.cancelled:
                    raise control.cancelled_error()
            self.attempts += 1
            connection = await client._connection_for(method._wait_for_ready, record)
            call = client._open(connection, method.name, self.metadata(), deadline, payload, method._compression)
            record._result = call
            # The wait of Client._unary, repeated rather than shared so that a call that needs
            # no retry does not pay a coroutine more for it.
            try:
                if call.unsent:
                    await connection.wait_for_credit(call.id, call.credit_wakeup, call.ended)
                while call.status is None:
                    await call.wakeup.park()
                    if call.status is None and len(call.inbox) > 1:
                        raise method._not_one(call)
            except BaseException:
                if call.status is None:
                    client._cancel(call, *_cancel_reason(deadline))
                raise
            connection.calls.pop(call.id, None)
            if call.status is _OK:
                return client._value(method, call, connection)
        if call.status is Status.DEADLINE_EXCEEDED and deadline != math.inf:
            # The server's clock ran out before ours (they run at slightly different rates):
            # let the caller's own scope fire, so it sees what Trio promises for that scope.
            await trio.sleep_until(deadline)
        raise call.error()


class ServiceMethods:
    """One service's methods as attributes (``client["kv.Store"]``): each is
    ``client.method("kv.Store/<name>")``, made once and kept."""

    def __init__(self, client: Client, service: str) -> None:
        self._client = client
        self._service = service

    def __getattr__(self, name: str) -> "Method":
        if name.startswith("_"):
            raise AttributeError(name)
        method = self.method(name)
        self.__dict__[name] = method
        return method

    def method(self, name: str) -> "Method":
        """The service's method ``name`` (for names that are not identifiers or clash)."""
        return self._client.method(f"{self._service}/{name}")

    def __repr__(self) -> str:
        return f"<ServiceMethods {self._service}>"


#: How a caller used a method: the shapes each use fits, and the words for it in a UsageError.
class _Use:
    __slots__ = ("shapes", "words")

    def __init__(self, shapes: tuple[Cardinality, ...], words: str) -> None:
        self.shapes = shapes
        self.words = words


_C = Cardinality
_AWAIT = _Use((_C.UNARY,), "awaited with arguments")
_AWAIT_ITEMS = _Use((_C.CLIENT_STREAM,), "awaited with an async iterable of request messages")
_ITERATE = _Use((_C.SERVER_STREAM,), "iterated with arguments (async for)")
_ITERATE_ITEMS = _Use((_C.BIDI_STREAM,), "iterated with an async iterable of request messages (async for)")
_ENTER = _Use((_C.UNARY, _C.SERVER_STREAM), "opened with arguments (async with)")
_ENTER_ITEMS = _Use((_C.CLIENT_STREAM, _C.BIDI_STREAM), "opened with an async iterable of request messages (async with)")
_OPEN = _Use((_C.CLIENT_STREAM, _C.BIDI_STREAM), "opened with .open() to send request messages")
#: Every use of a call object that has already started (initial_metadata() before await or
#: async for): what it sent says which shapes may follow.
_STARTED = {True: _ENTER_ITEMS, False: _ENTER}

#: The form that fits each shape, ``{}`` the method as the caller reaches it.
_RIGHT_FORM = {
    _C.UNARY: "await {}(...)",
    _C.SERVER_STREAM: "async for item in {}(...)",
    _C.CLIENT_STREAM: "await {}(requests), requests an async iterable of the request messages"
                      " (or async with {}.open() as stream)",
    _C.BIDI_STREAM: "async for reply in {}(requests), requests an async iterable of the request messages"
                    " (or async with {}.open() as stream)",
}
_CANCELLED_MESSAGE = "the call was cancelled (cancel())"
#: A ClientStream used before it was opened.
_NOT_OPEN = "the stream is not open yet: use it in async with, or await its start() first"


def _is_items(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """The arguments of a call are one async iterable: the request messages of a client- or
    bidi-streaming call (what a server that declared no shapes leaves the client to go by)."""
    return len(args) == 1 and not kwargs and hasattr(args[0], "__aiter__")


def _check_options(options: dict[str, Any]) -> None:
    """Refuse per-call options of the wrong type (rather than send them, or fail later)."""
    timeout = options.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise UsageError(f"timeout= is seconds, a number above 0, or None; got {timeout!r}")
    metadata = options.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise UsageError(f"metadata= is a dict of metadata, got {type(metadata).__name__}")
    wait_for_ready = options.get("wait_for_ready")
    if wait_for_ready is not None and not isinstance(wait_for_ready, bool):
        raise UsageError(f"wait_for_ready= is True or False, got {wait_for_ready!r}")
    compression = options.get("compression", _UNSET)
    if compression is not _UNSET:
        try:
            parse_coding(compression)
        except ValueError as exc:
            raise UsageError(f"compression= {exc}") from None


class Method:
    """A server method, bound to a client.  Call it; or ``open()`` it for explicit streaming.

    Calling it takes the method's arguments, and three keywords that are options of that one
    call, never arguments (a service may not name a parameter so, see :class:`~trpc.Service`):
    ``timeout`` (seconds, or None), ``metadata`` (added to the method's) and
    ``wait_for_ready``; ``client.greet("Ada", timeout=1)`` is
    ``client.greet.with_options(timeout=1)("Ada")``.

    What the method is (its path, its call shape, its entry in the client's config) is learned
    from the server's INFO frame once per connection and kept here, so a call looks nothing up.
    A use that does not fit the shape raises :class:`~trpc.UsageError` before anything is sent.
    """

    __slots__ = (
        "_client", "name", "_timeout", "_metadata", "_wait_for_ready", "_config", "_retry_policy", "_max_request",
        "_max_response", "_set_timeout", "_set_wait", "_path", "_shape", "_seen", "_awaitable_on",
        "_compression", "_set_compression",
    )

    def __init__(
        self,
        client: Client,
        name: str,
        metadata: dict[str, Any],
        *,
        timeout: Any = _UNSET,
        wait_for_ready: bool | None = None,
        compression: Any = _UNSET,
    ) -> None:
        self._client = client
        self.name = name
        self._metadata = metadata
        #: What with_options() set (they win over the config and the client's defaults).
        self._set_timeout = timeout
        self._set_wait = wait_for_ready
        self._set_compression = compression
        #: The path ``name`` stands for, and its shape, as the last connection's INFO said
        #: (None: not known); ``_seen`` is that connection's ``names``, ``_awaitable_on`` the
        #: same once an ``await`` has been checked against it (the unary path's one test).
        self._path: str | None = name if "/" in name else None
        self._shape: Cardinality | None = None
        self._seen: Any = None
        self._awaitable_on: Any = None
        self._configure()
        channel = client._channel
        if channel is not None and channel.ready:  # learn what it is now, if a server has said
            self._resolve(channel.ready[0])

    def _configure(self) -> None:
        """Take this method's settings from the client's config (by path once it is known),
        the client's defaults and what with_options() set."""
        client = self._client
        config = client._config.method(self.name, self._path) if client._config is not None else None
        timeout = client._timeout
        wait_for_ready = client._wait_for_ready
        if config is not None:
            if config.timeout is not None:
                timeout = config.timeout
            if config.wait_for_ready is not None:
                wait_for_ready = config.wait_for_ready
        self._timeout = timeout if self._set_timeout is _UNSET else self._set_timeout
        self._wait_for_ready = wait_for_ready if self._set_wait is None else self._set_wait
        #: The coding of this method's request messages, also asked for its responses.
        compression = client._compression
        if config is not None and config.compression is not None:
            compression = parse_coding(config.compression)
        self._compression: int = (
            compression if self._set_compression is _UNSET else parse_coding(self._set_compression)
        )
        self._config = config
        #: The retry policy when the config says the method is idempotent (else decided per
        #: failed attempt, from what the server declared: see _policy_for).
        self._retry_policy = None
        #: The config's limits on this method's message sizes (None: the connection's only).
        self._max_request: int | None = None
        self._max_response: int | None = None
        if config is not None:
            if config.idempotent:
                self._retry_policy = config.retry_policy or DEFAULT_RETRY_POLICY
            self._max_request = config.max_request_message_size
            self._max_response = config.max_response_message_size

    def _resolve(self, connection: ClientConnection) -> None:
        """Learn the path and shape of this method from what ``connection``'s INFO declared."""
        names = connection.names
        entry = names.get(self.name)
        if entry is not None:
            path, self._shape = entry
            if path != self._path:
                self._path = path
                self._configure()
        else:
            self._shape = None
        self._seen = names

    def _check(self, connection: ClientConnection, use: _Use) -> bool:
        """Raise UsageError if ``use`` does not fit the shape the server declared.  True when
        what ``connection`` declared changed this method's timeout (its path was learned)."""
        timeout = self._timeout
        if connection.names is not self._seen:
            self._resolve(connection)
        shape = self._shape
        if shape is not None and shape not in use.shapes:
            raise self._misuse(shape, use)
        if use is _AWAIT:
            self._awaitable_on = self._seen
        return self._timeout != timeout

    async def _learn(self, connection: ClientConnection) -> bool:
        """The unary path's check against a connection not seen yet (see _check), once what
        the server declares is known (it comes with, or just after, the server's preface).
        True when the call must start over: it waited (the connection's state may have
        changed meanwhile), or its timeout changed."""
        if not connection.declared.is_set():
            await connection.declared.wait()
            self._check(connection, _AWAIT)
            return True
        return self._check(connection, _AWAIT)

    def _misuse(self, shape: Cardinality, use: _Use) -> UsageError:
        where = self._display()
        return UsageError(
            f"{self.name} is {SHAPE_WORDS[shape]}, so it cannot be {use.words}: call it as "
            + _RIGHT_FORM[shape].format(where, where)
        )

    def _display(self) -> str:
        """How the caller reaches this method: ``client.greet``, ``client["kv.Store"].get``."""
        service, slash, name = self.name.rpartition("/")
        if not name.isidentifier():
            return f"client.method({self.name!r})"
        return f"client[{service!r}].{name}" if slash else f"client.{name}"

    def _not_one(self, call: ClientCall) -> RpcError:
        """The error of an awaited call whose server did not send exactly one response."""
        return RpcError(
            Status.INTERNAL,
            f"{self.name}: expected one response message, got "
            + (f"{len(call.inbox)}" if call.status is not None else "more than one before the end")
            + f" (if {self.name} streams its responses, iterate it: async for item in {self._display()}(...))",
        )

    def _check_request(self, payload: Any) -> None:
        """Raise RESOURCE_EXHAUSTED for a request message over the config's limit."""
        size = message_size(payload)
        if self._max_request is not None and size > self._max_request:
            raise RpcError(
                Status.RESOURCE_EXHAUSTED,
                f"{self.name}: request message of {size} bytes exceeds the method's limit of {self._max_request}"
                " (maxRequestMessageBytes)",
            )

    def _response_too_large(self, size: int) -> RpcError:
        return RpcError(
            Status.RESOURCE_EXHAUSTED,
            f"{self.name}: response message of {size} bytes exceeds the method's limit of {self._max_response}"
            " (maxResponseMessageBytes)",
        )

    def _policy_for(self, connection: ClientConnection) -> RetryPolicy | None:
        """The retry policy of a failed attempt on ``connection``: only for idempotent methods."""
        config = self._config
        if config is not None and config.idempotent is not None:
            return self._retry_policy
        if self.name in connection.idempotent:
            return (config.retry_policy if config is not None else None) or DEFAULT_RETRY_POLICY
        return None

    def with_options(
        self, *, timeout: float | None = _UNSET, metadata: dict[str, Any] | None = None, wait_for_ready: bool | None = None,
        compression: str | None = _UNSET,
    ) -> "Method":
        """The same method with another timeout, extra metadata for each call, another
        ``wait_for_ready`` (wait for a ready backend instead of failing at once), or another
        ``compression`` (``"zlib"``, ``"zstd"`` or None: the coding of the request messages,
        which the server is asked to use for its responses too; docs/PROTOCOL.md section 5).

        Raises:
            UsageError: an option of the wrong type (a timeout that is not a number above 0,
                an unknown coding, zstd without the zstandard package).
        """
        options: dict[str, Any] = {"timeout": None if timeout is _UNSET else timeout, "metadata": metadata,
                                   "wait_for_ready": wait_for_ready}
        if compression is not _UNSET:
            options["compression"] = compression
        _check_options(options)
        return self._replace(
            timeout=self._set_timeout if timeout is _UNSET else timeout,
            metadata={**self._metadata, **(metadata or {})},
            wait_for_ready=self._set_wait if wait_for_ready is None else wait_for_ready,
            compression=self._set_compression if compression is _UNSET else compression,
        )

    def _replace(self, *, name: str | None = None, timeout: Any = _UNSET, metadata: dict[str, Any] | None = None,
                 wait_for_ready: bool | None = None, compression: Any = _UNSET) -> "Method":
        return Method(
            self._client,
            self.name if name is None else name,
            self._metadata if metadata is None else metadata,
            timeout=self._set_timeout if timeout is _UNSET else timeout,
            wait_for_ready=self._set_wait if wait_for_ready is None else wait_for_ready,
            compression=self._set_compression if compression is _UNSET else compression,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> "_Call":
        """A call of this method with these arguments: await it, iterate it, or enter it (see
        :class:`_Call`).  The keywords ``timeout``, ``metadata`` and ``wait_for_ready`` are
        options of this one call (as :meth:`with_options`), never arguments of the handler."""
        if kwargs and not CALL_OPTIONS.isdisjoint(kwargs):
            options = {key: kwargs.pop(key) for key in CALL_OPTIONS & kwargs.keys()}
            return _Call(self.with_options(**options), args, kwargs)
        return _Call(self, args, kwargs)

    def open(self) -> "ClientStream":
        """Open a call whose request messages you send yourself (client- or bidi-streaming).

        For example::

            async with client.echo.open() as stream:
                await stream.send("hi")
                print(await stream.receive())
                await stream.done_sending()

        A method the server declared unary or server-streaming raises UsageError when the
        stream starts.
        """
        return ClientStream(self, None, use=_OPEN)

    def __repr__(self) -> str:
        return f"<trpc method {self.name} on {self._client.peer}>"


class _CallControl:
    """What ``cancel()`` and ``initial_metadata()`` need of an awaited call that has not opened
    its stream yet (it waits for a connection, or its interceptors run): made only when one of
    them is used, or the call waits, so a call that does neither pays nothing for it."""

    __slots__ = ("cancelled", "scope", "changed")

    def __init__(self) -> None:
        #: cancel() was called: the call must not open, nor be retried.
        self.cancelled = False
        #: The scope of what the call waits on before it opens (cancel() cancels it).
        self.scope: trio.CancelScope | None = None
        #: Set when the call's progress changes (it stopped waiting, or ended before opening).
        self.changed = trio.Event()

    @staticmethod
    def cancelled_error() -> RpcError:
        return RpcError(Status.CANCELLED, _CANCELLED_MESSAGE)


class _Call:
    """What calling a :class:`Method` returns.

    - ``await`` it: the one response (unary; client-streaming when the only argument is an
      async iterable, whose items are the request messages);
    - ``async for`` over it: the responses of a server-streaming call, or of a bidi-streaming
      call when the only argument is an async iterable of the request messages (sent by a
      task of the client's beside the caller's reads);
    - ``async with`` it: the :class:`ClientStream` of the call, for its responses, headers and
      trailers, cancelled on exit if unfinished;
    - ``await call.initial_metadata()``: the response headers; ``call.cancel()``: cancel it.

    A use that does not fit the method's shape (as the server declared it) raises
    :class:`~trpc.UsageError` before anything is sent.
    """

    __slots__ = ("_method", "_args", "_kwargs", "_stream", "_coro", "_result", "_control")

    def __init__(self, method: Method, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._method = method
        self._args = args
        self._kwargs = kwargs
        self._stream: ClientStream | None = None
        self._coro: Any = None
        #: The finished call's record (headers, trailers, status), once awaited.
        self._result: ClientCall | None = None
        self._control: _CallControl | None = None

    def _control_for(self) -> _CallControl:
        control = self._control
        if control is None:
            control = self._control = _CallControl()
        return control

    def _coroutine(self) -> Coroutine[Any, Any, Any]:
        """The coroutine that performs an awaited call (created on first use)."""
        coro: Coroutine[Any, Any, Any] | None = self._coro
        if coro is None:
            method = self._method
            if method._client._interceptors:
                coro = self._intercepted()
            else:
                coro = self._direct(method)
            self._coro = coro
        return coro

    def _direct(self, method: Method) -> Coroutine[Any, Any, Any]:
        args = self._args
        if len(args) == 1 and not self._kwargs and hasattr(args[0], "__aiter__"):
            return self._client_stream(method, args[0])
        try:
            payload = encode_arguments(args, self._kwargs)
        except Exception as exc:
            return _raise(RpcError(Status.INVALID_ARGUMENT, f"cannot encode the arguments: {exc}"))
        if method._max_request is not None:
            try:
                method._check_request(payload)
            except RpcError as exc:
                return _raise(exc)
        return method._client._unary(method, payload, method._timeout, self)

    async def _intercepted(self) -> Any:
        method = self._method
        client = method._client
        details = CallDetails(method.name, dict(method._metadata), method._timeout, streaming=False)
        deadline = _current_effective_deadline()

        async def invoke() -> Any:
            control = self._control
            if control is not None:
                if control.cancelled:
                    raise control.cancelled_error()
                control.changed.set()  # its waiters look again once the call has opened
            return await self._direct(method._replace(name=details.method, timeout=details.timeout, metadata=details.metadata))

        try:
            result = await run_chain(client._interceptors, details, invoke)
        except RpcError as exc:
            details._done(exc.status, exc.message)
            raise
        except trio.Cancelled:
            details._done(*_cancel_reason(deadline))
            raise
        except BaseException as exc:
            details._done(Status.UNKNOWN, repr(exc))
            raise
        finally:
            if self._control is not None:
                self._control.changed.set()
        details._done(Status.OK)
        return result

    # While and after the call: what the server sent besides the result.
    async def initial_metadata(self) -> dict[str, Any]:
        """The response headers (metadata the server sent before any response message): waits
        until they arrive or the call ends; ``{}`` if the server sent none (as gRPC).

        A call runs in the task that awaits (or iterates) it: ask from another task while it
        runs.  Asked before any task has started the call, it starts the call here (it sends
        the request), and ``await call`` or ``async for`` then take its responses, as with
        gRPC's ``call = stub.f(x); await call.initial_metadata(); await call``.  With retries,
        the headers are those of the attempt running when asked (``{}`` if it failed without
        any).
        """
        while True:
            stream = self._stream
            if stream is not None:
                return await stream.initial_metadata()
            record = self._result
            if record is not None:
                await record.wait_for_headers()
                return dict(record.headers) if record.headers is not None else {}
            coro = self._coro
            if coro is None:
                # Nobody has started the call: start it here; await or async for take it on.
                self._stream = self._open_stream(_STARTED[_is_items(self._args, self._kwargs)])
                self._coro = _Later(self._finish_started)
                continue
            if _has_ended(coro):
                await trio.lowlevel.checkpoint()
                return {}  # it ended before it opened (an error, or cancelled)
            # It has started in another task and waits before opening (for a connection, or in
            # its interceptors): those say when that changes.
            control = self._control_for()
            control.changed = trio.Event()
            await control.changed.wait()

    def cancel(self) -> bool:
        """Cancel the call, from any task: the task awaiting it gets RpcError CANCELLED, and
        the server is told (a CANCEL frame).  A call not started yet fails so when awaited.

        Returns:
            False if the call had already ended (or been cancelled), else True.
        """
        if self._stream is not None:
            return self._stream.cancel()
        control = self._control_for()
        if control.cancelled:
            return False
        record = self._result
        if record is not None:
            if record.status is not None:
                return False
            control.cancelled = True
            Client._cancel(record, Status.CANCELLED, _CANCELLED_MESSAGE)
            return True
        coro = self._coro
        if coro is None:
            control.cancelled = True
            self._coro = _raise(control.cancelled_error())
            return True
        if _has_ended(coro):
            return False
        control.cancelled = True
        if control.scope is not None:
            control.scope.cancel()
        return True

    @property
    def headers(self) -> dict[str, Any] | None:
        """Response headers of the finished call (None if the server sent none)."""
        record = self._record()
        return None if record is None else record.headers

    @property
    def trailers(self) -> dict[str, Any]:
        """Trailing metadata of the finished call."""
        record = self._record()
        return {} if record is None else record.trailers

    @property
    def status(self) -> Status | None:
        """The finished call's status (None before it has ended)."""
        record = self._record()
        return None if record is None else record.status

    def _record(self) -> ClientCall | None:
        if self._result is not None:
            return self._result
        return None if self._stream is None else self._stream._call

    # A coroutine in every respect, so ``nursery.start_soon(client.greet, "Ada")`` works too.
    def __await__(self) -> Generator[Any, None, Any]:
        return self._coroutine().__await__()

    def send(self, value: Any) -> Any:
        return self._coroutine().send(value)

    def throw(self, *exc_info: Any) -> Any:
        return self._coroutine().throw(*exc_info)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()

    async def _client_stream(self, method: Method, items: AsyncIterable[Any]) -> Any:
        self._stream = ClientStream(method, None, intercept=False, use=_AWAIT_ITEMS)
        async with self._stream as stream:
            async for item in items:
                if not await stream.send(item):
                    break  # the server already ended the call; its status follows
            await stream.done_sending()
            return await stream.receive_one()

    async def _finish_started(self) -> Any:
        """``await call`` after initial_metadata() started it: the one response."""
        stream = self._stream
        assert stream is not None  # initial_metadata() opened it
        try:
            stream._check_use(_AWAIT_ITEMS if stream._items is not None else _AWAIT)
            return await stream.receive_one()
        finally:
            await stream.aclose()

    def __aiter__(self) -> AsyncIterator[Any]:
        stream = self._stream
        if stream is not None:  # started by initial_metadata()
            stream._check_use(_ITERATE_ITEMS if stream._items is not None else _ITERATE)
            return _Replies(stream) if stream._items is not None else stream
        # Kept here too, for cancel() and initial_metadata() from another task.
        if _is_items(self._args, self._kwargs):
            stream = self._stream = ClientStream(self._method, None, use=_ITERATE_ITEMS, items=self._args[0])
            return _Replies(stream)
        stream = self._stream = self._open_stream(_ITERATE)  # it opens itself on the first __anext__
        return stream

    def _open_stream(self, use: _Use) -> "ClientStream":
        if _is_items(self._args, self._kwargs):
            return ClientStream(self._method, None, use=use, items=self._args[0])
        try:
            payload = encode_arguments(self._args, self._kwargs)
        except Exception as exc:
            raise RpcError(Status.INVALID_ARGUMENT, f"cannot encode the arguments: {exc}") from None
        if self._method._max_request is not None:
            self._method._check_request(payload)
        return ClientStream(self._method, payload, use=use)

    async def __aenter__(self) -> "ClientStream":
        if self._stream is None:
            self._stream = self._open_stream(_STARTED[_is_items(self._args, self._kwargs)])
        return await self._stream.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._stream is not None  # __aenter__ made it
        await self._stream.__aexit__(*exc_info)


def _has_ended(coro: Any) -> bool:
    return type(coro) is not _Later and inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


class _Later:
    """The coroutine of ``await call`` for a call that initial_metadata() started, made only
    if the call is awaited (not iterated), so that none is left never awaited."""

    __slots__ = ("_factory", "_coro")

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        self._factory = factory
        self._coro: Any = None

    def _get(self) -> Coroutine[Any, Any, Any]:
        coro: Coroutine[Any, Any, Any] | None = self._coro
        if coro is None:
            coro = self._factory()
            self._coro = coro
        return coro

    def __await__(self) -> Generator[Any, None, Any]:
        return self._get().__await__()

    def send(self, value: Any) -> Any:
        return self._get().send(value)

    def throw(self, *exc_info: Any) -> Any:
        return self._get().throw(*exc_info)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()


class _Replies:
    """``async for reply in client.chat(requests)``: the responses of a bidi-streaming call
    whose request messages a task of the client's sends meanwhile.  The caller holds this
    object and the sending task does not, so a caller that leaves the loop early drops it, and
    that cancels the call and stops the sender at once (Python does not close an iterator
    that ``break`` leaves)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: "ClientStream") -> None:
        self._stream = stream

    def __aiter__(self) -> "_Replies":
        return self

    async def __anext__(self) -> Any:
        return await self._stream.__anext__()

    async def aclose(self) -> None:
        """Cancel the call if it has not ended, and stop sending."""
        await self._stream.aclose()

    def __del__(self) -> None:
        try:
            self._stream._close_sync()
        except Exception:  # outside Trio (interpreter exit): nothing left to tell
            pass


async def _raise(exc: BaseException) -> Any:
    raise exc


class ClientStream:
    """An open call: ``send()`` request messages, ``receive()`` response messages.

    Use as an async context manager; leaving it before the call has ended cancels the call.
    ``receive()`` raises ``trio.EndOfChannel`` once the server has finished with OK, and
    :class:`~trpc.RpcError` if it finished with another status (after every message the server
    sent before that status has been received).  Iterating with ``async for`` receives until the end.
    """

    def __init__(
        self, method: Method, first: bytes | list[bytes] | None, *, intercept: bool = True, use: _Use = _OPEN,
        items: AsyncIterable[Any] | None = None,
    ) -> None:
        self._method = method
        #: How the caller uses the call, checked against the shape the server declared.
        self._use = use
        #: The request messages a task of the client's sends (a bidi call iterated with
        #: ``async for``), its cancel scope once it runs, and what it failed with.
        self._items = items
        self._sender: trio.CancelScope | None = None
        self._sender_error: BaseException | None = None
        #: start() has begun (and has finished); what waits before the call opens, for
        #: cancel(); initial_metadata() waiters on that (made when one waits).
        self._starting = False
        self._started = False
        self._wait_scope: trio.CancelScope | None = None
        self._progress: trio.Event | None = None
        self._cancelled = False
        self._client = method._client
        self._first = first
        self._details: CallDetails | None = None
        self._intercept = intercept and bool(method._client._interceptors)
        self._call: ClientCall | None = None
        self._deadline = math.inf
        self._own_deadline = math.inf
        self._sending_done = first is not None and items is None
        self._count = 0
        self._unacked = 0
        #: The request messages sent so far, kept to be sent again if the call is retried;
        #: None once it is committed (a response arrived, or more than RETRY_BUFFER was sent).
        self._replay: list[Any] | None = []
        self._replay_size = 0
        self._retrier: _Retrier | None = None

    async def __aenter__(self) -> "ClientStream":
        """Open the call; leaving the block cancels it if it has not ended."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the call (``async with`` does this); a no-op once it has begun.

        Raises:
            UsageError: the server declared a shape this use does not fit (nothing was sent).
            RpcError: CANCELLED after cancel().
        """
        if self._starting:
            await trio.lowlevel.checkpoint()
            return
        self._starting = True
        try:
            await self._begin()
        finally:
            self._started = True
            if self._progress is not None:
                self._progress.set()
        if self._items is not None and self._call is not None:
            self._sender = trio.CancelScope()
            self._client._channel.nursery.start_soon(self._send_items, self._items, self._sender)

    async def _begin(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._cancelled:
            raise _CallControl.cancelled_error()
        if self._intercept:
            method = self._method
            details = self._details = CallDetails(method.name, dict(method._metadata), method._timeout, streaming=True)

            async def invoke() -> "ClientStream":
                self._method = method._replace(name=details.method, timeout=details.timeout, metadata=details.metadata)
                await self._start()
                return self

            try:
                await run_chain(self._client._interceptors, details, invoke)
            except RpcError as exc:
                details._done(exc.status, exc.message)
                raise
            except BaseException:
                details._done(Status.CANCELLED, "the stream did not open")
                raise
            return
        await self._start()

    def _ended(self, status: Status | None, message: str = "") -> None:
        if self._details is not None and status is not None:
            self._details._done(status, message)

    async def _start(self) -> None:
        client = self._client
        if self._method._timeout is not None:
            self._own_deadline = _current_time() + self._method._timeout
        self._deadline = min(_current_effective_deadline(), self._own_deadline)
        if self._deadline <= _current_time():
            await self._with_deadline(trio.lowlevel.checkpoint())  # no time left: cancelled here
        method = self._method
        connection = client._channel.pick()
        if connection is None or not connection.conn.can_open_call:
            with trio.CancelScope() as self._wait_scope:
                connection = await self._with_deadline(client._connection_for(method._wait_for_ready))
            self._wait_scope = None
            if self._cancelled or connection is None:  # None: cancel() cancelled the wait
                raise _CallControl.cancelled_error()
        if not connection.declared.is_set():  # the first call on a new connection
            await self._with_deadline(connection.declared.wait())
        method._check(connection, self._use)  # a UsageError if the server declared another shape
        first = self._first
        self._call = client._open(connection, method.name, method._metadata, self._deadline, None, method._compression)
        if first is not None:
            self._first = None
            self._keep(first)
            try:
                await self._with_deadline(client._send(self._call, first, True, method._compression))
            except BaseException:
                await self.aclose()
                raise

    def _keep(self, payload: Any) -> None:
        """Keep a request message for a retry, while the call is not committed."""
        replay = self._replay
        if replay is not None:
            self._replay_size += len(payload) if type(payload) is bytes else message_size(payload)
            if self._replay_size > RETRY_BUFFER:
                self._replay = None
            else:
                replay.append(payload)

    async def _retry(self) -> bool:
        """The attempt ended with an error before any response: start another if the retry
        rules allow (see the module's docstring).  True when a new attempt is running."""
        call = self._call
        assert call is not None  # an attempt has ended
        replay = self._replay
        if replay is None or call.headers is not None or self._cancelled:
            return False
        client = self._client
        method = self._method
        retrier = self._retrier
        if retrier is None:
            retrier = self._retrier = _Retrier(method, self._deadline)
        delay = retrier.delay(call)
        if delay is None:
            return False
        client._finish(call)
        if delay:
            await self._with_deadline(trio.sleep(delay))
        retrier.attempts += 1
        connection = await self._with_deadline(client._connection_for(method._wait_for_ready))
        call = self._call = client._open(
            connection, method.name, retrier.metadata(), self._deadline, None, method._compression
        )
        last = len(replay) - 1
        for index, payload in enumerate(replay):
            end = self._sending_done and index == last
            if not await self._with_deadline(client._send(call, payload, end, method._compression)):
                return True  # this attempt ended too: the caller looks at how
        if self._sending_done and not replay and call.status is None:
            connection.end_stream(call.id)
        return True

    def _succeeded(self) -> None:
        if self._client._throttle is not None:
            assert self._call is not None  # the call has ended OK
            self._client._record_success(self._method, self._call.connection)

    async def aclose(self) -> None:
        """Cancel the call if it has not ended, and stop sending request messages; a no-op
        afterwards."""
        if self._sender is not None:
            self._sender.cancel()
        call = self._call
        if call is not None and call.status is None:
            reason, message = _cancel_reason(self._deadline)
            self._client._cancel(call, reason, message)
            self._ended(reason, message)
        elif call is not None:
            self._client._finish(call)
            self._ended(call.status, call.message)
        await trio.lowlevel.checkpoint()

    def _close_sync(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
        call = self._call
        if call is not None and call.status is None:
            try:
                reason = _cancel_reason(self._deadline)
            except RuntimeError:  # outside Trio (garbage collection at exit)
                reason = (Status.CANCELLED, "the caller stopped reading")
            self._client._cancel(call, *reason)
            self._ended(*reason)

    async def _with_deadline(self, awaitable: Awaitable[_T]) -> _T:
        if self._own_deadline == math.inf:
            return await awaitable
        with trio.move_on_at(self._own_deadline):
            return await awaitable
        if self._call is not None:
            self._client._cancel(self._call, Status.DEADLINE_EXCEEDED, "the call's timeout passed")
        self._ended(Status.DEADLINE_EXCEEDED, "the call's timeout passed")
        raise RpcError(Status.DEADLINE_EXCEEDED, f"{self._method.name}: deadline exceeded")

    # ----------------------------------------------------------- sending
    async def send(self, message: Any) -> bool:
        """Send one request message.  Returns False if the call has already ended (the
        message was not sent; ``receive()`` reports how it ended)."""
        if self._sending_done:
            raise trio.ClosedResourceError("done_sending() was already called")
        try:
            payload = encode(message)
        except Exception as exc:
            raise RpcError(Status.INVALID_ARGUMENT, f"cannot encode the message: {exc}") from None
        if self._method._max_request is not None:
            self._method._check_request(payload)
        call = self._call
        if call is None:
            raise UsageError(_NOT_OPEN)
        self._keep(payload)
        if await self._with_deadline(self._client._send(call, payload, False, self._method._compression)):
            return True
        # The call has ended: if it may be retried, the new attempt has been sent this
        # message too (it was kept); else receive() reports how it ended.
        return await self._retry()

    async def done_sending(self) -> None:
        """Half-close: the server's ``async for`` over the request messages ends."""
        if self._sending_done:
            return
        call = self._call
        if call is None:
            raise UsageError(_NOT_OPEN)
        self._sending_done = True
        connection = call.connection
        if call.status is None and connection.broken is None:
            connection.end_stream(call.id)
        await trio.lowlevel.checkpoint()

    # ----------------------------------------------------------- receiving
    async def receive(self) -> Any:
        """The next response message; ``trio.EndOfChannel`` after the last one."""
        call = self._call
        if call is None:
            raise UsageError(_NOT_OPEN)
        inbox = call.inbox
        if not inbox:
            if call.status is None:
                await self._with_deadline(self._wait(call))
            if not inbox:
                if call.status is not _OK and await self._retry():
                    return await self.receive()
                self._client._finish(call)
                self._ended(call.status, call.message)
                if self._sender_error is not None:
                    raise self._sender_error
                if call.status is _OK:
                    self._succeeded()
                    raise trio.EndOfChannel
                raise call.error()
        else:
            self._count += 1
            if not self._count & 127:
                await trio.lowlevel.checkpoint()
        return self._take(call, inbox)

    def _take(self, call: ClientCall, inbox: Any) -> Any:
        """Pop and decode the next message (the queue is not empty)."""
        payload = inbox.popleft()
        self._replay = None  # a response arrived: the call is committed to this attempt
        # Credit goes back in batches (the core grants only half-windows anyway), and at once
        # when the queue runs dry, so the server never waits on a reader that is waiting too.
        size = len(payload) if type(payload) is bytes else message_size(payload)
        self._unacked += size
        limit = self._method._max_response
        if limit is not None and size > limit:
            error = self._method._response_too_large(size)
            if call.status is None:
                self._client._cancel(call, Status.RESOURCE_EXHAUSTED, error.message)
                self._ended(Status.RESOURCE_EXHAUSTED, error.message)
            raise error
        if (self._unacked >= _ACK_BATCH or not inbox) and call.status is None:
            call.connection.consumed(call.id, self._unacked)
            self._unacked = 0
        if type(payload) is bytes:
            try:
                return _loads(payload)
            except Exception:
                pass
        elif type(payload) is Compressed:
            try:
                payload = inflate(payload, "response message", limit)
            except RpcError as error:  # it expands past the limit, or does not decompress
                if call.status is None:
                    self._client._cancel(call, error.status, error.message)
                    self._ended(error.status, error.message)
                raise
        return decode(payload, what="response message")  # parts, or raises the RpcError

    async def _wait(self, call: ClientCall) -> None:
        inbox = call.inbox
        while not inbox and call.status is None:
            await call.wakeup.park()

    async def receive_one(self) -> Any:
        """The single response of a client-streaming call, checking that there is just one."""
        while True:
            call = self._call
            if call is None:
                raise UsageError(_NOT_OPEN)
            while call.status is None:
                await self._with_deadline(call.wakeup.park())
            if call.status is _OK or call.inbox or not await self._retry():
                break
        self._client._finish(call)
        self._ended(call.status, call.message)
        if self._sender_error is not None:
            raise self._sender_error
        if call.status is not _OK:
            raise call.error()
        self._succeeded()
        if len(call.inbox) != 1:
            raise self._method._not_one(call)
        payload = call.inbox.popleft()
        if self._method._max_response is not None and message_size(payload) > self._method._max_response:
            raise self._method._response_too_large(message_size(payload))
        return decode(payload, what="response", limit=self._method._max_response)

    def __aiter__(self) -> "ClientStream":
        return self

    async def __anext__(self) -> Any:
        call = self._call
        if call is None:  # ``async for x in client.count(5)``: open on first use
            await self.start()
            call = self._call
            assert call is not None  # start() opened it, or raised
        inbox = call.inbox
        if inbox:
            # The fast path of receive(), inlined: messages are waiting.
            self._count += 1
            if not self._count & 127:
                await trio.lowlevel.checkpoint()
            return self._take(call, inbox)
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def __del__(self) -> None:
        # Dropped before the end (``break`` out of ``async for``): tell the server at once.
        try:
            self._close_sync()
        except Exception:  # outside Trio (interpreter exit): nothing left to tell
            pass

    # ----------------------------------------------------------- the request iterable
    async def _send_items(self, items: AsyncIterable[Any], scope: trio.CancelScope) -> None:
        """The sender of ``async for reply in client.chat(requests)``, in the client's nursery:
        sends each request message, then half-closes.  It never raises: what the iterable (or
        sending) fails with cancels the call and is raised to the reader instead; ``aclose()``,
        the reader leaving the loop, or the client closing cancel it."""
        with scope:
            try:
                iterator = items.__aiter__()
                try:
                    while True:
                        try:
                            item = await iterator.__anext__()
                        except StopAsyncIteration:
                            break
                        if not await self.send(item):
                            return  # the call has ended: the reader reports how
                    await self.done_sending()
                finally:
                    aclose = getattr(iterator, "aclose", None)
                    if aclose is not None:
                        await aclose()
            except Exception as exc:
                self._sender_error = exc
                call = self._call
                assert call is not None  # the sender starts once the call is open
                if call.status is None:
                    message = f"the request messages failed: {type(exc).__name__}"
                    self._client._cancel(call, Status.CANCELLED, message)
                    self._ended(Status.CANCELLED, message)
                else:
                    call.wake()

    def _check_use(self, use: _Use) -> None:
        """``await`` or ``async for`` on a call that initial_metadata() started: does that use
        fit the shape the server declared?"""
        self._use = use
        shape = self._method._shape
        if shape is not None and shape not in use.shapes:
            raise self._method._misuse(shape, use)

    # ----------------------------------------------------------- headers, cancel
    async def initial_metadata(self) -> dict[str, Any]:
        """The response headers: waits until they arrive or the call ends; ``{}`` if the
        server sent none (as gRPC).  Opens the call if nothing has yet."""
        while self._call is None:
            if not self._starting:
                await self.start()
            elif self._started:  # it did not open: the error went to whoever started it
                await trio.lowlevel.checkpoint()
                return {}
            else:
                self._progress = trio.Event()
                await self._progress.wait()
        call = self._call
        await call.wait_for_headers()
        return dict(call.headers) if call.headers is not None else {}

    def cancel(self) -> bool:
        """Cancel the call, from any task: whoever reads it gets RpcError CANCELLED, and the
        server is told (a CANCEL frame).

        Returns:
            False if the call had already ended (or been cancelled), else True.
        """
        if self._cancelled:
            return False
        call = self._call
        if call is not None and call.status is not None:
            return False
        self._cancelled = True
        if self._sender is not None:
            self._sender.cancel()
        if call is None:
            if self._wait_scope is not None:
                self._wait_scope.cancel()
            return True
        self._client._cancel(call, Status.CANCELLED, _CANCELLED_MESSAGE)
        self._ended(Status.CANCELLED, _CANCELLED_MESSAGE)
        return True

    # ----------------------------------------------------------- results
    @property
    def status(self) -> Status | None:
        """The call's final status, once it has ended."""
        return None if self._call is None else self._call.status

    @property
    def headers(self) -> dict[str, Any] | None:
        """Response headers, once the server has sent them."""
        return None if self._call is None else self._call.headers

    @property
    def trailers(self) -> dict[str, Any]:
        """Trailing metadata, once the call has ended."""
        return {} if self._call is None else self._call.trailers


@asynccontextmanager
async def open_client(
    target: Any,
    *,
    timeout: float | None = None,
    metadata: dict[str, str | bytes] | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    framer: str | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    stream_window: int = DEFAULT_STREAM_WINDOW,
    connection_window: int = DEFAULT_CONNECTION_WINDOW,
    max_incomplete_bytes: int | None = None,
    interceptors: Sequence[Any] = (),
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    keepalive_time: float | None = CLIENT_KEEPALIVE_TIME,
    keepalive_timeout: float = CLIENT_KEEPALIVE_TIMEOUT,
    load_balancing: str | None = None,
    config: ClientConfig | dict[str, Any] | str | None = None,
    wait_for_ready: bool | None = None,
    health_check: bool | None = None,
    health_service: str = "",
    compression: str | None = None,
    compression_threshold: int = DEFAULT_COMPRESSION_THRESHOLD,
) -> AsyncIterator[Client]:
    """Open a channel to a trpc service; yields a :class:`Client`.

    Args:
        target: where the service is: ``"host:port"``, ``"[v6]:port"``, ``(host, port)``,
            ``"unix:/path"``; several backends as ``"h1:p,h2:p"`` or a list of addresses;
            ``"dns:///name:port"`` for every A and AAAA record of a name (resolved again
            every 30 s and when a backend fails); or an already connected Trio stream (TLS,
            an in-memory stream pair...), which is used once and never re-made.
        timeout: default timeout for every call (seconds); ``None``: only the caller's scopes.
        metadata: sent with every call (per-call metadata is added to it).
        connect_timeout: limit for one connection attempt: connecting, the TLS handshake and
            receiving the server's preface, together (default 10 s; longer when the connection
            backoff is longer); a shorter ``timeout`` bounds them instead, and a caller's own
            deadline around ``open_client`` is left to the caller's scope.
        framer: ``"c"`` or ``"python"``; default ``TRPC_FRAMER`` or C when available.
        max_message_size: largest response message accepted (RESOURCE_EXHAUSTED beyond).
        max_incomplete_bytes: bytes of response messages still arriving the server may make
            this client hold (see ``trpc.wire.DEFAULT_MAX_INCOMPLETE_BYTES``).
        interceptors: :class:`~trpc.ClientInterceptor` objects wrapped around every call, the
            first one outermost.
        ssl_context: connect with TLS using this client-side ``ssl.SSLContext`` (its CAs, and
            whether it verifies the server, also make the TLS of ``quic://`` targets).
        server_hostname: the name to check the servers' certificates against (default: the
            host of each address).
        certfile: the client's certificate chain (PEM) for mutual TLS, presented to a server that
            asks for one, over TCP and QUIC alike; ``keyfile``: its private key (PEM; default: in
            ``certfile``).  Needs ``ssl_context``, into which it is loaded
            (``ssl_context.load_cert_chain``) for TCP; a certificate loaded into the context by
            hand also serves TCP, but only these files reach QUIC.
        keepalive_time: while calls are pending, ping the server after this many seconds
            without receiving anything (default 15; ``None``: never).  Keep it above the
            server's ``keepalive_min_ping_interval`` (10 s by default), or it polices us.
        keepalive_timeout: fail the connection (its calls end with UNAVAILABLE, and may be
            retried elsewhere) when a ping gets no answer in this many seconds (default 10).
        load_balancing: ``"pick_first"`` (the default: one connection, to the first address
            that answers), ``"round_robin"`` or ``"least_loaded"`` (see
            :mod:`trpc.channel`); default: the config's, else pick_first.
        config: a :class:`~trpc.ClientConfig` (or a dict of its JSON form, or a path to a JSON
            file): timeouts, retry policies, ``wait_for_ready`` and message sizes per method,
            the balancer, retry throttling, connection backoff (docs/CONFIG.md).  What a
            method's entry sets wins over the arguments here.
        wait_for_ready: calls wait for a ready backend (within their deadline) instead of
            failing at once with UNAVAILABLE while none is; ``open_client`` then returns
            without waiting for a connection.  Per method: ``method.with_options(...)``.
        health_check: send calls only to backends whose health service says SERVING for
            ``health_service`` (default "", the whole server); default: the config's, else off.
        compression: ``"zlib"`` or ``"zstd"`` (``pip install 'trpc-trio[zstd]'``): compress
            request messages so, and ask the server to compress its responses so (it decides),
            on every call; per method or per call, ``compression=`` as a call option.  A
            message is compressed only if the server accepts the coding, it is at least
            ``compression_threshold`` bytes (default 1024) and it shrinks (docs/PROTOCOL.md
            section 5, "Compressed messages").  Default None: nothing is compressed.  Responses
            the server compresses are accepted whatever this says.

    Raises:
        RpcError: UNAVAILABLE if no backend can be reached (each tried once) and the client
            does not wait for ready; over mutual TLS, its message says why a server refused
            this client's certificate (or its lack of one).
        ValueError: ``certfile`` or ``keyfile`` without ``ssl_context``, or ``keyfile``
            without ``certfile``; a ``quic://`` target with an ``ssl_context`` that verifies
            the server's certificate but not its name (``check_hostname`` off: give
            ``server_hostname`` instead).
        ssl.SSLError, OSError: ``certfile`` and ``keyfile`` are not a certificate chain and its
            key, or cannot be read.
    """
    check_keepalive(keepalive_time, keepalive_timeout)
    if (isinstance(target, str) and target.startswith("quic://") and ssl_context is not None
            and ssl_context.verify_mode != ssl.CERT_NONE and not ssl_context.check_hostname):
        # qh3 (2.1) checks a certificate without its name wrongly: one whose subjectAltName is
        # an e-mail address passes whatever CA signed it.  So over QUIC the name is checked.
        raise ValueError("over QUIC a verified certificate is checked with its name: keep ssl_context.check_hostname,"
                         " and give server_hostname= the name the server's certificate holds")
    if keyfile is not None and certfile is None:
        raise ValueError("keyfile needs certfile")
    if certfile is not None:
        if ssl_context is None:
            raise ValueError("certfile (a client certificate, for mutual TLS) needs ssl_context")
        ssl_context.load_cert_chain(certfile, keyfile)
    coding = parse_coding(compression)
    if isinstance(config, dict):
        config = ClientConfig.from_dict(config)
    elif isinstance(config, str):
        config = ClientConfig.from_file(config)
    options = ConnectOptions(
        framer=get_framer(framer),
        max_message_size=max_message_size,
        max_frame_size=max_frame_size,
        stream_window=stream_window,
        connection_window=connection_window,
        max_incomplete_bytes=max_incomplete_bytes,
        ssl_context=ssl_context,
        server_hostname=server_hostname,
        keepalive_time=keepalive_time,
        keepalive_timeout=keepalive_timeout,
        connect_timeout=connect_timeout,
        timeout=timeout,
        compression_threshold=compression_threshold,
        certfile=certfile,
        keyfile=keyfile,
    )
    if load_balancing is None:
        load_balancing = (config.load_balancing if config is not None else None) or "pick_first"
    if health_check is None:
        health_check = bool(config.health_check) if config is not None else False
    if wait_for_ready is None:
        default = config.method("") if config is not None else None
        wait_for_ready = bool(default is not None and default.wait_for_ready)
    if isinstance(target, trio.abc.Stream):
        channel = Channel(None, options, stream=target, health_check=health_check, health_service=health_service)
    else:
        channel = Channel(
            make_resolver(target),
            options,
            load_balancing=load_balancing,
            backoff=config.connection_backoff if config is not None else None,
            health_check=health_check,
            health_service=health_service,
        )
    client = Client(
        channel, timeout=timeout, metadata=metadata, interceptors=interceptors, config=config,
        wait_for_ready=wait_for_ready, compression=coding,
    )
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        channel.start(nursery)
        try:
            if not wait_for_ready:
                while not channel.settled():
                    await channel.wait_for_change()
                if channel.state is not _READY:
                    raise channel.unavailable()
            yield client
        except BaseException as exc:  # re-raised below, outside the nursery: no ExceptionGroup
            body_error = exc
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()
    if body_error is not None:
        try:
            raise body_error
        finally:
            body_error = None
