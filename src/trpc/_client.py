"""The client: call a server's methods as if they were local.

Theory of operation
-------------------
``open_client`` connects, exchanges prefaces and starts two background tasks (reader and writer,
see :mod:`trpc._transport`) in a nursery that the context manager owns; it never lets an
ExceptionGroup out.  Calls run in the *caller's* task: a unary call queues its HEADERS and its
message (one write for both), parks, and is woken by the reader when the trailers arrive.  No task,
channel or lock per call.

Deadlines come from Trio: the call reads ``trio.current_effective_deadline()``, so any enclosing
``move_on_after`` / ``fail_after`` scope, or a server handler's own deadline when the call is
nested in one, travels to the server as the time remaining.  An explicit ``timeout=`` (on the
client or per method) adds a scope of trpc's own, which raises ``RpcError(DEADLINE_EXCEEDED)``;
a deadline of the caller's own scope behaves as Trio says for that scope (``move_on_*`` is
silent, ``fail_*`` raises ``TooSlowError``).  If the caller is cancelled while a call is in
flight, a CANCEL frame tells the server why: the deadline passed, the caller was cancelled, or
(for a nested call) the reason its own caller gave.

Streaming calls use :class:`ClientStream`, an explicit send/receive object; server-streaming
calls can simply be iterated (``async for x in client.count(5)``), and client-streaming calls take
an async iterable (``await client.total(numbers())``).
"""

from __future__ import annotations

import logging
import math
import ssl
from collections import deque
from contextlib import asynccontextmanager
from typing import Any, AsyncIterable, AsyncIterator, Sequence

import trio

from ._codec import _loads, decode, encode, encode_arguments
from ._context import _current_or_none
from ._errors import LocalProtocolError, MessageTooLargeError, RpcError
from ._events import (
    CallEnded,
    GoAwayReceived,
    HeadersReceived,
    MessagesReceived,
    PrefaceReceived,
)
from ._framer import get_framer
from ._interceptors import CallDetails, run_chain
from ._keepalive import CLIENT_KEEPALIVE_TIME, CLIENT_KEEPALIVE_TIMEOUT, Keepalive, check_keepalive, set_tcp_keepalive
from ._framer_py import DEFAULT_MAX_FRAME_SIZE
from .wire import (
    DEFAULT_CONNECTION_WINDOW,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_STREAM_WINDOW,
    Connection,
    message_size,
)
from ._server import format_peer
from ._status import Status
from ._tls import describe_tls_failure
from ._transport import _SPEAKS_TLS, Parker, TrioConnection

__all__ = ["Client", "ClientStream", "open_client", "parse_target", "DEFAULT_CONNECT_TIMEOUT"]

logger = logging.getLogger("trpc")

#: How long ``open_client`` waits for TCP connect, TLS handshake and the server's preface, all
#: together.  10 s: long enough for a loaded server, short enough that a black-holed address
#: fails while a person waits.  A client ``timeout=`` that is shorter bounds them instead.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: How long closing a client waits to tell the server (CANCEL/GOAWAY) before it just closes.
_CLOSE_GRACE = 1.0

#: Bytes of received messages a stream reader takes before it returns their credit (sooner if
#: its queue runs dry).  16 KiB: a small fraction of the 2 MiB window, far fewer calls than one
#: per message.
_ACK_BATCH = 16384

_current_time = trio.current_time
_current_effective_deadline = trio.current_effective_deadline
_UNSET: Any = object()


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


class _ClientCall:
    """Client-side state of one call; filled in by the reader, read by the caller's task."""

    __slots__ = (
        "id", "inbox", "status", "message", "details", "trailers", "headers", "wakeup", "credit_wakeup", "unsent"
    )

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        #: Part of the request went unframed for lack of credit (see Client._open).
        self.unsent = False
        self.inbox: deque[bytes] = deque()
        self.status: Status | None = None
        self.message = ""
        self.details: Any = None
        self.trailers: dict = {}
        self.headers: dict | None = None
        self.wakeup = Parker()
        self.credit_wakeup = Parker()

    def error(self) -> RpcError:
        return RpcError(self.status, self.message, self.details, trailers=self.trailers)

    def ended(self) -> bool:
        """The call has a status (the server's, or the one it was ended with here)."""
        return self.status is not None


class _ClientConnection(TrioConnection):
    def __init__(self, stream: trio.abc.Stream, conn: Connection, peer: str) -> None:
        super().__init__(stream, conn, peer)
        self.calls: dict[int, _ClientCall]
        self.ready = trio.Event()
        #: Calls waiting for the server's concurrent-call limit to let them start.
        self.slot_waiters = trio.lowlevel.ParkingLot()

    def _on_message(self, event: MessagesReceived) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None:
            call.inbox.extend(event.payloads)
            call.wakeup.unpark()

    def _on_call_ended(self, event: CallEnded) -> None:
        if self.slot_waiters:
            self.slot_waiters.unpark()
        call = self.calls.get(event.stream_id)
        if call is not None:
            call.status = event.status
            call.message = event.message
            call.details = event.details
            call.trailers = event.metadata
            call.wakeup.unpark()
            call.credit_wakeup.unpark()

    def _on_headers(self, event: HeadersReceived) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None:
            call.headers = event.metadata

    def _on_preface(self, event: PrefaceReceived) -> None:
        self.ready.set()

    def _on_goaway(self, event: GoAwayReceived) -> None:
        logger.debug("trpc: server %s is going away: %s %s", self.peer, event.status.name, event.message)

    def connection_lost(self, reason: str) -> None:
        self.ready.set()
        self.slot_waiters.unpark_all()
        for call in self.calls.values():
            if call.status is None:
                call.status = Status.UNAVAILABLE
                call.message = f"connection to {self.peer} lost: {reason}"
                call.wakeup.unpark()
                call.credit_wakeup.unpark()

    def unavailable(self) -> RpcError:
        return RpcError(Status.UNAVAILABLE, f"connection to {self.peer} is closed: {self.broken}")


_ClientConnection._DISPATCH = {
    **TrioConnection._DISPATCH,
    MessagesReceived: _ClientConnection._on_message,
    CallEnded: _ClientConnection._on_call_ended,
    HeadersReceived: _ClientConnection._on_headers,
    PrefaceReceived: _ClientConnection._on_preface,
    GoAwayReceived: _ClientConnection._on_goaway,
}


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
    """A connection to a trpc server; get one from :func:`open_client`.

    Methods of the server are attributes: ``await client.greet("Ada")``.  A method whose name
    clashes with an attribute of this class is reached with ``client.method("aclose")``.
    """

    def __init__(
        self,
        connection: _ClientConnection,
        *,
        timeout: float | None,
        metadata: dict | None,
        interceptors: Sequence[Any] = (),
    ) -> None:
        self._connection = connection
        self._timeout = timeout
        self._metadata = dict(metadata or {})
        self._interceptors = tuple(interceptors)
        self._closing = False

    def __getattr__(self, name: str) -> "Method":
        if name.startswith("_"):
            raise AttributeError(name)
        method = Method(self, name, self._timeout, self._metadata)
        self.__dict__[name] = method  # cached: next time a plain attribute hit
        return method

    def method(self, name: str) -> "Method":
        """The server method ``name`` (for names that are not identifiers or clash with ours)."""
        return Method(self, name, self._timeout, self._metadata)

    @property
    def peer(self) -> str:
        return self._connection.peer

    @property
    def calls_in_flight(self) -> int:
        """Calls on this connection that have not ended yet."""
        return self._connection.conn.open_streams

    @property
    def framer_name(self) -> str:
        return self._connection.conn.framer_name

    # ------------------------------------------------------------------ plumbing
    def _open(
        self, name: str, metadata: dict, deadline: float, end_stream: bool = False, message: Any = None
    ) -> _ClientCall:
        """Open a call; with ``message``, also send it as the call's one request message and
        half-close (``call.sent`` says whether all of it is framed or some waits for credit)."""
        connection = self._connection
        if connection.broken is not None:
            raise connection.unavailable()
        if self._closing:
            raise RpcError(Status.UNAVAILABLE, "the client is closed")
        timeout = None if deadline == math.inf else max(0.0, deadline - _current_time())
        sent = True
        try:
            if message is None:
                stream_id = connection.open_call(name, metadata, timeout, end_stream)
            else:
                stream_id, sent = connection.open_unary_call(name, message, metadata, timeout)
        except MessageTooLargeError as exc:
            raise _too_large(exc) from None
        except LocalProtocolError as exc:
            if connection.conn.accepting_calls:
                raise RpcError(Status.INVALID_ARGUMENT, str(exc)) from None
            raise RpcError(Status.UNAVAILABLE, str(exc)) from None
        call = _ClientCall(stream_id)
        connection.calls[stream_id] = call
        if not sent:
            call.unsent = True
        return call

    async def _wait_for_slot(self) -> None:
        """Wait while the server's limit on concurrent calls is reached (no-op otherwise)."""
        connection = self._connection
        conn = connection.conn
        while not conn.can_open_call and connection.broken is None and conn.accepting_calls:
            await connection.slot_waiters.park()

    async def _send(self, call: _ClientCall, payload: bytes, end_stream: bool = False) -> bool:
        """Queue a message; wait while it waits for credit.  False if the call already ended."""
        if call.status is not None:
            return False
        connection = self._connection
        try:
            sent = connection.send_message(call.id, payload, end_stream)
        except MessageTooLargeError as exc:
            raise _too_large(exc) from None
        if not sent:
            await connection.wait_for_credit(call.id, call.credit_wakeup, call.ended)
        if connection._stalled:
            await connection.wait_for_room()
        return True

    def _cancel(self, call: _ClientCall, reason: Status, message: str) -> None:
        """End a call from this side: it reports ``reason`` as its status (what the caller
        sees it end with), and the server is told why."""
        connection = self._connection
        connection.calls.pop(call.id, None)
        if call.status is None:
            call.status = reason
            call.message = message
            if connection.broken is None:
                connection.cancel(call.id, reason, message)
                if connection.slot_waiters:
                    connection.slot_waiters.unpark()

    def _finish(self, call: _ClientCall) -> None:
        self._connection.calls.pop(call.id, None)

    def _consumed(self, call: _ClientCall, size: int) -> None:
        self._connection.consumed(call.id, size)

    async def _unary(
        self, name: str, payload: bytes, timeout: float | None, metadata: dict, record: Any = None
    ) -> Any:
        if timeout is not None:
            with trio.CancelScope(deadline=_current_time() + timeout) as scope:
                return await self._unary(name, payload, None, metadata, record)
            if scope.cancelled_caught:
                raise RpcError(Status.DEADLINE_EXCEEDED, f"{name}: deadline exceeded ({timeout} s)")
        deadline = _current_effective_deadline()
        if deadline != math.inf and deadline <= _current_time():
            await trio.lowlevel.checkpoint()  # no time left: the caller's scope cancels us here
        connection = self._connection
        if not connection.conn.can_open_call:
            await self._wait_for_slot()
        call = self._open(name, metadata, deadline, message=payload)
        if record is not None:
            record._result = call
        try:
            if call.unsent:  # part of the request waits for credit
                await connection.wait_for_credit(call.id, call.credit_wakeup, call.ended)
            wakeup = call.wakeup
            while call.status is None:
                await wakeup.park()
        except BaseException:
            if call.status is None:
                self._cancel(call, *_cancel_reason(deadline))
            raise
        connection.calls.pop(call.id, None)
        if call.status is Status.OK:
            if len(call.inbox) == 1:
                return decode(call.inbox[0], what="response")
            raise RpcError(Status.INTERNAL, f"{name}: expected one response message, got {len(call.inbox)}")
        if call.status is Status.DEADLINE_EXCEEDED and deadline != math.inf:
            # The server's clock ran out before ours (they run at slightly different rates):
            # let the caller's own scope fire, so it sees what Trio promises for that scope.
            await trio.sleep_until(deadline)
        raise call.error()

    async def aclose(self) -> None:
        """Cancel every call still in flight (reason UNAVAILABLE), say GOAWAY, close the stream."""
        if self._closing:
            return
        self._closing = True
        # The cached methods refer back to this client: drop them, so that no reference cycle
        # keeps the client (and its connection's buffers) alive until the garbage collector runs.
        for name in [name for name, value in self.__dict__.items() if type(value) is Method]:
            del self.__dict__[name]
        connection = self._connection
        with trio.CancelScope(shield=True):
            if connection.broken is None:
                for call in list(connection.calls.values()):
                    self._cancel(call, Status.UNAVAILABLE, "the client is shutting down")
                    call.message = "the client was closed"
                    call.wakeup.unpark()
                    call.credit_wakeup.unpark()
                connection.goaway(Status.OK, "client closing")
                with trio.move_on_after(_CLOSE_GRACE):
                    await connection.flush()
            connection.connection_lost("the client was closed")
            await connection.close_stream()


class Method:
    """A server method, bound to a client.  Call it; or ``open()`` it for explicit streaming."""

    __slots__ = ("_client", "name", "_timeout", "_metadata")

    def __init__(self, client: Client, name: str, timeout: float | None, metadata: dict) -> None:
        self._client = client
        self.name = name
        self._timeout = timeout
        self._metadata = metadata

    def with_options(self, *, timeout: float | None = _UNSET, metadata: dict | None = None) -> "Method":
        """The same method with another timeout, or extra metadata for each call."""
        return Method(
            self._client,
            self.name,
            self._timeout if timeout is _UNSET else timeout,
            {**self._metadata, **(metadata or {})},
        )

    def __call__(self, *args: Any, **kwargs: Any) -> "_Call":
        return _Call(self, args, kwargs)

    def open(self) -> "ClientStream":
        """Open a call whose request messages you send yourself (client- or bidi-streaming)::

            async with client.echo.open() as stream:
                await stream.send("hi")
                print(await stream.receive())
                await stream.done_sending()
        """
        return ClientStream(self, None)

    def __repr__(self) -> str:
        return f"<trpc method {self.name} on {self._client.peer}>"


class _Call:
    """What calling a :class:`Method` returns.

    - ``await`` it: the one response (unary; client-streaming when the only argument is an
      async iterable, whose items are the request messages);
    - ``async for`` over it: the responses of a server-streaming call;
    - ``async with`` it: the :class:`ClientStream` of the call, for its responses, headers and
      trailers, cancelled on exit if unfinished.
    """

    __slots__ = ("_method", "_args", "_kwargs", "_stream", "_coro", "_result")

    def __init__(self, method: Method, args: tuple, kwargs: dict) -> None:
        self._method = method
        self._args = args
        self._kwargs = kwargs
        self._stream: ClientStream | None = None
        self._coro: Any = None
        #: The finished call's record (headers, trailers, status), once awaited.
        self._result: _ClientCall | None = None

    def _coroutine(self) -> Any:
        """The coroutine that performs an awaited call (created on first use)."""
        coro = self._coro
        if coro is None:
            method = self._method
            if method._client._interceptors:
                coro = self._intercepted()
            else:
                coro = self._direct(method)
            self._coro = coro
        return coro

    def _direct(self, method: Method) -> Any:
        args = self._args
        if len(args) == 1 and not self._kwargs and hasattr(args[0], "__aiter__"):
            return self._client_stream(method, args[0])
        try:
            payload = encode_arguments(args, self._kwargs)
        except Exception as exc:
            return _raise(RpcError(Status.INVALID_ARGUMENT, f"cannot encode the arguments: {exc}"))
        return method._client._unary(method.name, payload, method._timeout, method._metadata, self)

    async def _intercepted(self) -> Any:
        method = self._method
        client = method._client
        details = CallDetails(method.name, dict(method._metadata), method._timeout, streaming=False)
        deadline = _current_effective_deadline()

        async def invoke() -> Any:
            return await self._direct(Method(client, details.method, details.timeout, details.metadata))

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
        details._done(Status.OK)
        return result

    # After the call: what the server sent besides the result.
    @property
    def headers(self) -> dict | None:
        """Response headers of the finished call (None if the server sent none)."""
        record = self._record()
        return None if record is None else record.headers

    @property
    def trailers(self) -> dict:
        """Trailing metadata of the finished call."""
        record = self._record()
        return {} if record is None else record.trailers

    @property
    def status(self) -> Status | None:
        """The finished call's status (None before it has ended)."""
        record = self._record()
        return None if record is None else record.status

    def _record(self) -> _ClientCall | None:
        if self._result is not None:
            return self._result
        return None if self._stream is None else self._stream._call

    # A coroutine in every respect, so ``nursery.start_soon(client.greet, "Ada")`` works too.
    def __await__(self):
        return self._coroutine().__await__()

    def send(self, value: Any) -> Any:
        return self._coroutine().send(value)

    def throw(self, *exc_info: Any) -> Any:
        return self._coroutine().throw(*exc_info)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()

    async def _client_stream(self, method: Method, items: AsyncIterable) -> Any:
        async with ClientStream(method, None, intercept=False) as stream:
            self._result = stream._call
            async for item in items:
                if not await stream.send(item):
                    break  # the server already ended the call; its status follows
            await stream.done_sending()
            return await stream.receive_one()

    def __aiter__(self) -> AsyncIterator:
        return self._open_stream()  # a ClientStream opens itself on the first __anext__

    def _open_stream(self) -> "ClientStream":
        try:
            payload = encode_arguments(self._args, self._kwargs)
        except Exception as exc:
            raise RpcError(Status.INVALID_ARGUMENT, f"cannot encode the arguments: {exc}") from None
        return ClientStream(self._method, payload)

    async def __aenter__(self) -> "ClientStream":
        self._stream = self._open_stream()
        return await self._stream.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._stream.__aexit__(*exc_info)


async def _raise(exc: BaseException) -> Any:
    raise exc


class ClientStream:
    """An open call: ``send()`` request messages, ``receive()`` response messages.

    Use as an async context manager; leaving it before the call has ended cancels the call.
    ``receive()`` raises ``trio.EndOfChannel`` once the server has finished with OK, and
    :class:`~trpc.RpcError` if it finished with another status (after every message the server
    sent before that status has been received).  Iterating with ``async for`` receives until the end.
    """

    def __init__(self, method: Method, first: bytes | None, *, intercept: bool = True) -> None:
        self._method = method
        self._client = method._client
        self._first = first
        self._details: CallDetails | None = None
        self._intercept = intercept and bool(method._client._interceptors)
        self._call: _ClientCall | None = None
        self._deadline = math.inf
        self._own_deadline = math.inf
        self._sending_done = first is not None
        self._count = 0
        self._unacked = 0

    # ----------------------------------------------------------- lifecycle
    async def __aenter__(self) -> "ClientStream":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the call (``async with`` does this)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._intercept:
            method = self._method
            details = self._details = CallDetails(method.name, dict(method._metadata), method._timeout, streaming=True)

            async def invoke() -> "ClientStream":
                self._method = Method(self._client, details.method, details.timeout, details.metadata)
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

    def _ended(self, status: Status, message: str = "") -> None:
        if self._details is not None:
            self._details._done(status, message)

    async def _start(self) -> None:
        client = self._client
        if self._method._timeout is not None:
            self._own_deadline = _current_time() + self._method._timeout
        self._deadline = min(_current_effective_deadline(), self._own_deadline)
        if self._deadline <= _current_time():
            await self._with_deadline(trio.lowlevel.checkpoint())  # no time left: cancelled here
        await self._with_deadline(client._wait_for_slot())
        first = self._first
        self._call = client._open(self._method.name, self._method._metadata, self._deadline)
        if first is not None:
            self._first = None
            try:
                await self._with_deadline(client._send(self._call, first, end_stream=True))
            except BaseException:
                await self.aclose()
                raise

    async def aclose(self) -> None:
        """Cancel the call if it has not ended; a no-op afterwards."""
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
        call = self._call
        if call is not None and call.status is None:
            try:
                reason = _cancel_reason(self._deadline)
            except RuntimeError:  # outside Trio (garbage collection at exit)
                reason = (Status.CANCELLED, "the caller stopped reading")
            self._client._cancel(call, *reason)
            self._ended(*reason)

    async def _with_deadline(self, awaitable: Any) -> Any:
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
        return await self._with_deadline(self._client._send(self._call, payload))

    async def done_sending(self) -> None:
        """Half-close: the server's ``async for`` over the request messages ends."""
        if self._sending_done:
            return
        self._sending_done = True
        call = self._call
        connection = self._client._connection
        if call.status is None and connection.broken is None:
            connection.end_stream(call.id)
        await trio.lowlevel.checkpoint()

    # ----------------------------------------------------------- receiving
    async def receive(self) -> Any:
        """The next response message; ``trio.EndOfChannel`` after the last one."""
        call = self._call
        inbox = call.inbox
        if not inbox:
            if call.status is None:
                await self._with_deadline(self._wait(call))
            if not inbox:
                self._client._finish(call)
                self._ended(call.status, call.message)
                if call.status is Status.OK:
                    raise trio.EndOfChannel
                raise call.error()
        else:
            self._count += 1
            if not self._count & 127:
                await trio.lowlevel.checkpoint()
        return self._take(call, inbox)

    def _take(self, call: _ClientCall, inbox: deque) -> Any:
        """Pop and decode the next message (the queue is not empty)."""
        payload = inbox.popleft()
        # Credit goes back in batches (the core grants only half-windows anyway), and at once
        # when the queue runs dry, so the server never waits on a reader that is waiting too.
        self._unacked += len(payload) if type(payload) is bytes else message_size(payload)
        if (self._unacked >= _ACK_BATCH or not inbox) and call.status is None:
            self._client._consumed(call, self._unacked)
            self._unacked = 0
        if type(payload) is bytes:
            try:
                return _loads(payload)
            except Exception:
                pass
        return decode(payload, what="response message")  # parts, or raises the RpcError

    async def _wait(self, call: _ClientCall) -> None:
        inbox = call.inbox
        while not inbox and call.status is None:
            await call.wakeup.park()

    async def receive_one(self) -> Any:
        """The single response of a client-streaming call, checking that there is just one."""
        call = self._call
        while call.status is None:
            await self._with_deadline(call.wakeup.park())
        self._client._finish(call)
        self._ended(call.status, call.message)
        if call.status is not Status.OK:
            raise call.error()
        if len(call.inbox) != 1:
            raise RpcError(Status.INTERNAL, f"{self._method.name}: expected one response message, got {len(call.inbox)}")
        return decode(call.inbox.popleft(), what="response")

    def __aiter__(self) -> "ClientStream":
        return self

    async def __anext__(self) -> Any:
        call = self._call
        if call is None:  # ``async for x in client.count(5)``: open on first use
            await self.start()
            call = self._call
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

    # ----------------------------------------------------------- results
    @property
    def status(self) -> Status | None:
        """The call's final status, once it has ended."""
        return None if self._call is None else self._call.status

    @property
    def headers(self) -> dict | None:
        """Response headers, once the server has sent them."""
        return None if self._call is None else self._call.headers

    @property
    def trailers(self) -> dict:
        """Trailing metadata, once the call has ended."""
        return {} if self._call is None else self._call.trailers


@asynccontextmanager
async def open_client(
    target: str | tuple[str, int] | trio.abc.Stream,
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
    keepalive_time: float | None = CLIENT_KEEPALIVE_TIME,
    keepalive_timeout: float = CLIENT_KEEPALIVE_TIMEOUT,
) -> AsyncIterator[Client]:
    """Connect to a trpc server; yields a :class:`Client`.

    Args:
        target: ``"host:port"``, ``(host, port)``, or an already connected Trio stream (TLS, an
            in-memory stream pair...).
        timeout: default timeout for every call (seconds); ``None``: only the caller's scopes.
        metadata: sent with every call (per-call metadata is added to it).
        connect_timeout: limit for connecting, the TLS handshake and receiving the server's
            preface, together (default 10 s); a shorter ``timeout`` bounds them instead, and a
            caller's own deadline is left to the caller's scope (see ``_ConnectLimit``).
        framer: ``"c"`` or ``"python"``; default ``TRPC_FRAMER`` or C when available.
        max_message_size: largest response message accepted (RESOURCE_EXHAUSTED beyond).
        max_incomplete_bytes: bytes of response messages still arriving the server may make
            this client hold (see ``trpc.wire.DEFAULT_MAX_INCOMPLETE_BYTES``).
        interceptors: :class:`~trpc.ClientInterceptor` objects wrapped around every call, the
            first one outermost.
        ssl_context: connect with TLS using this client-side ``ssl.SSLContext`` (load a client
            certificate into it for mutual TLS).
        server_hostname: the name to check the server's certificate against (default: the
            host of ``target``).
        keepalive_time: while calls are pending, ping the server after this many seconds
            without receiving anything (default 15; ``None``: never).  Keep it above the
            server's ``keepalive_min_ping_interval`` (10 s by default), or it polices us.
        keepalive_timeout: fail the connection (its calls end with UNAVAILABLE) when a ping
            gets no answer in this many seconds (default 10).  See docs/LIMITS.md.

    Raises:
        RpcError: UNAVAILABLE if the server cannot be reached or is not a trpc server.
    """
    check_keepalive(keepalive_time, keepalive_timeout)
    conn = Connection(
        "client",
        framer=get_framer(framer),
        max_message_size=max_message_size,
        max_frame_size=max_frame_size,
        stream_window=stream_window,
        connection_window=connection_window,
        max_incomplete_bytes=max_incomplete_bytes,
    )
    limit = _ConnectLimit.choose(trio.current_time(), connect_timeout, timeout, _current_effective_deadline())
    stream, peer = await _connect(target, limit, ssl_context, server_hostname)
    conn.initiate()
    connection = _ClientConnection(stream, conn, peer)
    if keepalive_time is not None:
        connection.keepalive = Keepalive(keepalive_time, keepalive_timeout, only_with_calls=True)
    client = Client(connection, timeout=timeout, metadata=metadata, interceptors=interceptors)
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.writer)
        nursery.start_soon(connection.reader)
        nursery.start_soon(connection.run_timers)
        connection.wake_writer()
        try:
            try:
                with trio.move_on_at(limit.deadline) as scope:
                    await connection.ready.wait()
            except trio.Cancelled:
                # The caller's scope (its writer is cancelled too): nothing to tell the server.
                connection.abort("cancelled before the server's preface arrived")
                raise
            if scope.cancelled_caught:
                raise RpcError(Status.UNAVAILABLE, f"{peer} did not answer with a trpc preface {limit}")
            if connection.broken is not None:
                hint = " (connect with an ssl_context)" if connection.broken == _SPEAKS_TLS else ""
                raise RpcError(Status.UNAVAILABLE, f"cannot talk to {peer}: {connection.broken}{hint}")
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


def _os_reason(exc: OSError) -> str:
    """The most specific reason in a failed connect ("Connection refused"), not Trio's summary."""
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return exc.strerror or str(exc)


class _ConnectLimit:
    """When ``open_client`` gives up connecting (TCP, TLS and the server's preface together),
    and which setting said so.

    The sooner of ``connect_timeout`` and the client's ``timeout=`` is trpc's own limit, and
    its passing raises UNAVAILABLE naming it ("did not answer within 3 s (timeout=)"): the
    server could not be reached, which is what a caller retrying elsewhere wants to know.  A
    caller's own deadline (a ``move_on_after`` or ``fail_after`` around ``open_client``, a
    handler's deadline) is left to the caller's scope, which behaves as Trio says for it
    (``move_on_*`` just cancels); when it comes first, trpc sets no limit of its own, so the
    caller's scope is the one that fires.
    """

    __slots__ = ("deadline", "seconds", "setting")

    def __init__(self, deadline: float, seconds: float, setting: str) -> None:
        self.deadline = deadline
        self.seconds = seconds
        self.setting = setting

    @classmethod
    def choose(
        cls, now: float, connect_timeout: float, timeout: float | None, caller_deadline: float
    ) -> "_ConnectLimit":
        seconds, setting = connect_timeout, "connect_timeout"
        if timeout is not None and timeout < seconds:
            seconds, setting = timeout, "timeout"
        if caller_deadline <= now + seconds:
            return cls(math.inf, caller_deadline - now, "the caller's deadline")
        return cls(now + seconds, seconds, setting)

    def __str__(self) -> str:
        return f"within {self.seconds:g} s ({self.setting}=)"


async def _connect(
    target: Any, limit: _ConnectLimit, ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None
) -> tuple[trio.abc.Stream, str]:
    if isinstance(target, trio.abc.Stream):
        return target, format_peer(target)
    if isinstance(target, str):
        host, port = parse_target(target)
    else:
        host, port = target
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with trio.fail_at(limit.deadline):
            stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise RpcError(Status.UNAVAILABLE, f"cannot connect to {where}: no answer {limit}") from None
    except OSError as exc:
        raise RpcError(Status.UNAVAILABLE, f"cannot connect to {where}: {_os_reason(exc)}") from None
    try:
        set_tcp_keepalive(stream.socket)
    except OSError:  # the connection is already gone: the preface wait will say so
        pass
    if ssl_context is None:
        return stream, where
    tls = trio.SSLStream(stream, ssl_context, server_hostname=server_hostname or host)
    try:
        with trio.fail_at(limit.deadline):
            await tls.do_handshake()
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise RpcError(Status.UNAVAILABLE, f"TLS handshake with {where} not done {limit}") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await trio.aclose_forcefully(stream)
        reason = describe_tls_failure(exc) or exc.__cause__ or exc
        raise RpcError(Status.UNAVAILABLE, f"TLS handshake with {where} failed: {reason}") from None
    return tls, where
