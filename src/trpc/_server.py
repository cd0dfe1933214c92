"""The server: accept connections, run each call as a task, answer with messages and a status.

Theory of operation
-------------------
:class:`Server` holds the method table (built once from the services) and the limits.
``serve_tcp`` (or ``serve_unix``, on a Unix domain socket: see trpc._unix) listens and runs
``serve_stream`` for each accepted connection in its own nursery, after admission
(``_admit``: the connection limit) and, with an ``ssl_context``, the TLS handshake; the two
differ only in how they open their listeners (``_serve_listeners`` runs both).
``serve_stream`` works over any Trio stream (TLS, in-memory) and is what tests use.

Per connection, a :class:`_ServerConnection` (a :class:`~trpc._transport.TrioConnection`) reads
frames and dispatches events.  A call whose client sends one message (unary, server-streaming)
gets its task only once that message has arrived, with the bytes handed straight to it; a call
whose client streams gets its task at once and pulls messages from a per-call queue.  Every
handler runs inside a cancel scope carrying the caller's deadline (measured on this
process's clock, from when the call arrived), so a CANCEL frame, a passed deadline or a lost
connection cancels the handler and, through Trio's scopes, every outgoing call it has in flight.

Handler tasks are reused: starting a Trio task costs more than waking a waiting one (measured
in docs/PERFORMANCE.md), so a task whose call is over waits (up to ``_IDLE_WORKERS`` per connection) for the
connection's next call.  Each call still runs in a fresh copy of the context its task started
with (``_in_context`` drives the handler's coroutine one step at a time inside that copy), so
context variables never carry over from one call to the next.  The cancel scope is shared by
a task's run of calls, since entering and leaving one is a large part of a small call's
handling: a call's deadline is set on it while the call runs, and a cancellation
ends the run, so the next call starts in a fresh scope (``_work``).  What a handler can tell
apart is only ``trio.lowlevel.current_task()``, which may be the task of an earlier call.

The handler's result (or each streamed item) is encoded and queued on the connection together
with the trailers, so a unary reply is one write.  Exceptions become statuses: ``RpcError`` as
raised, anything else INTERNAL (logged here, never sent in full to the client).

Methods are found by the name the client sends (HEADERS key 1): a path ``"kv.Store/get"``, or
a short name ``"get"`` that exactly one service has, both in one dict
(:class:`~trpc._service.MethodTable`); a name that misses is refused with UNIMPLEMENTED saying
whether the service, the method or the short name's uniqueness was the problem.

Beside the user's services the server serves its health service (trpc._health), whose
statuses it owns in one registry: ``set_health`` and ``health`` reach it, and ``shutdown``
makes every status NOT_SERVING before its GOAWAY; and its reflection service
(trpc._reflection), whose document it builds and encodes once, here.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import socket as _socket
import ssl
import types
from collections import deque
from contextlib import aclosing
from functools import partial
from typing import Any, Awaitable, Callable, Literal, Sequence, TypedDict, TypeVar, cast

import trio

from ._admission import DEFAULT_PREFACE_TIMEOUT, LogLimiter, default_max_connections
from ._codec import _dumps, decode, decode_arguments, encode
from .wire._compression import DEFAULT_COMPRESSION_THRESHOLD, Coding, coding_bit, parse_coding
from ._context import CallContext, _current
from ._errors import LocalProtocolError, MessageTooLargeError, RpcError
from ._events import (
    CompressingConnection,
    CallCancelled,
    CallOpened,
    CborValue,
    GoAwayReceived,
    MessageCodec,
    MessagesReceived,
    Payload,
    Received,
    PrefaceReceived,
    StreamEnded,
    WireConnection,
)
from .wire import (
    DEFAULT_CONNECTION_WINDOW,
    DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_PING_STRIKES,
    DEFAULT_MIN_PING_INTERVAL,
    DEFAULT_STREAM_WINDOW,
    Connection,
    StreamState,
    message_size,
)
from ._framer_py import DEFAULT_MAX_FRAME_SIZE
from ._health import HealthRegistry, HealthService, HealthStatus
from ._interceptors import run_chain
from ._keepalive import SERVER_KEEPALIVE_TIME, SERVER_KEEPALIVE_TIMEOUT, Keepalive, check_keepalive, set_tcp_keepalive
from ._reflection import ReflectionService, build_document
from ._service import SHAPE_WORDS, Cardinality, MethodInfo, MethodTable, Service, explain_mismatch
from ._status import Status
from ._tls import send_pending_alert
from ._transport import RECEIVE_SIZE, Parker, TrioConnection
from ._unix import open_unix_listener

__all__ = ["Server", "serve", "serve_unix", "DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_MAX_CONCURRENT_CALLS", "DEFAULT_MAX_BUFFERED_BYTES"]

logger = logging.getLogger("trpc")

#: Where ``trpc.serve`` listens unless told otherwise: loopback only (exposing a service to the
#: network is a decision to make explicitly), on gRPC's customary port.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
#: The default time a TLS client has to complete its handshake: the preface timeout, since the
#: handshake counts within it (see trpc._admission).  Kept under this name for old callers.
TLS_HANDSHAKE_TIMEOUT = DEFAULT_PREFACE_TIMEOUT
#: After ``max_connection_age``, how long the calls already running get to finish before the
#: connection closes (``max_connection_age_grace``).  10 s, as ``Server.shutdown``'s grace:
#: ordinary calls finish; a call that streams for ever is ended (UNAVAILABLE) and may be
#: retried on the client's next connection.
DEFAULT_MAX_CONNECTION_AGE_GRACE = 10.0
#: A streaming handler's small messages go on the stream's batch (Connection.open_batch): a
#: list append per message, framed together.  After this many messages the handler frames its
#: batch, waits if credit ran out, and yields to the scheduler even when it never blocks, so
#: the writer can put the batch on the wire and other calls get their turn.  A power of two
#: (the loop tests it with a mask).
_BATCH_MESSAGES = 128
#: Messages up to this size go on the batch; larger ones through send_message, one call each
#: (next to their size, the call no longer matters).  With _BATCH_MESSAGES, this bounds what a
#: batch holds beyond the credit checks to 128 KiB per stream.
_BATCH_MESSAGE_SIZE = 1024
#: A handler reading the client's messages yields to the scheduler after this many even when
#: they are all there already, so that other calls get their turn.
_YIELD_EVERY = 128
#: Handler tasks a connection keeps waiting for its next call once their call is over (a call
#: that finds none starts a task of its own).  Starting a Trio task costs more than handing a
#: call to a waiting one does; 64 covers a client with 64 calls in flight.  What the waiting
#: tasks hold until the connection closes is measured in docs/PERFORMANCE.md.
_IDLE_WORKERS = 64
#: Calls the whole server runs at once, all connections together (``max_concurrent_calls``);
#: beyond, a call is refused at once with RESOURCE_EXHAUSTED, so a flood of connections x
#: streams cannot make the server start handlers without bound.  4096: far more calls than one
#: Python process serves with low latency; each costs a task (a few KB) plus what its client may
#: send it unasked, at most its stream window (2 MiB by default).
DEFAULT_MAX_CONCURRENT_CALLS = 4096
#: Bytes of request messages received and not yet read by their handlers (client-streaming
#: calls' queues), all connections together (``max_buffered_bytes``); the call whose messages
#: would go beyond ends with RESOURCE_EXHAUSTED.  Flow control bounds each call by its stream
#: window (2 MiB), which 4096 calls could turn into 8 GiB; 512 MiB bounds the whole server far
#: below that while leaving room for hundreds of busy client streams.
DEFAULT_MAX_BUFFERED_BYTES = 512 << 20
#: Bytes of request messages a handler takes before their credit goes back (see the client).
_ACK_BATCH = 16384
_checkpoint = trio.lowlevel.checkpoint


#: The Unix socket family, where the platform has one.
_AF_UNIX = getattr(_socket, "AF_UNIX", None)


def format_peer(stream: Any) -> str:
    """A printable address for the far end of a stream: ``host:port``, ``[v6]:port``, or
    ``unix:PATH`` for a Unix socket (the path of the server's socket, which is what a client
    dials: the client's own end is usually unnamed)."""
    socket = getattr(stream, "socket", None)
    if socket is None:
        inner = getattr(stream, "transport_stream", None)  # trio.SSLStream
        return format_peer(inner) if inner is not None else type(stream).__name__
    unix = _AF_UNIX is not None and getattr(socket, "family", None) == _AF_UNIX
    try:
        address = socket.getpeername()
        if unix and not address:
            address = socket.getsockname()
    except OSError:
        return "unknown"
    if isinstance(address, tuple):
        host, port = address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if unix:
        if isinstance(address, bytes):  # a Linux abstract name: its leading NUL shown as "@"
            address = address.replace(b"\0", b"@", 1).decode(errors="backslashreplace")
        return f"unix:{address}" if address else "unix"
    return str(address)




def _no_arguments(info: MethodInfo) -> str:
    """INVALID_ARGUMENT's message for a unary or server-streaming call that sent no request
    message (a client that took it for a client-streaming call, which may send none)."""
    return (f"{info.name}: the request message is missing ({info.name} is {SHAPE_WORDS[info.cardinality]}:"
            " it takes its arguments as one request message)")


class _ServerCall:
    """One running call on the server."""

    __slots__ = (
        "id",
        "info",
        "handler",
        "context",
        "scope",
        "cancel_requested",
        "inbox",
        "buffered",
        "ended",
        "started",
        "finished",
        "inbox_wakeup",
        "credit_wakeup",
        "codec",
        "coding",
    )

    def __init__(self, stream_id: int, handler: Callable[..., Any], info: MethodInfo, context: CallContext):
        self.id = stream_id
        self.info = info
        self.handler = handler
        self.context = context
        #: The cancel scope the handler runs in once its task has it (see _work); until then
        #: a cancellation is only recorded (cancel_requested), and applied when it starts.
        self.scope: trio.CancelScope | None = None
        self.cancel_requested = False
        self.inbox: deque[Received] = deque()
        #: Bytes of request messages in the inbox (counted in the server's max_buffered_bytes).
        self.buffered = 0
        self.ended = False  # the client sent END_STREAM
        self.started = False  # the handler task exists
        self.finished = False  # the stream is closed: nothing more may be sent on it
        self.inbox_wakeup = Parker()
        self.credit_wakeup = Parker()
        #: How the call's messages are encoded when not in CBOR (see trpc.grpc); None: CBOR.
        self.codec: MessageCodec | None = None
        #: The coding its responses are compressed with (``trpc.wire._compression.Coding``;
        #: 0: none), chosen when it opens (``_ServerConnection._response_coding``).
        self.coding = 0

    def is_finished(self) -> bool:
        return self.finished


class _Worker:
    """A handler task waiting for its next call (see _ServerConnection._work)."""

    __slots__ = ("wakeup", "job")

    def __init__(self) -> None:
        self.wakeup = Parker()
        self.job: tuple[_ServerCall, Received | None] | None = None


@types.coroutine
def _in_context(context: contextvars.Context, coro: Any) -> Any:
    """Await ``coro`` with ``context`` as its context: each step of it runs in
    ``context.run``, and what it yields to Trio (and what Trio sends back, or throws in) passes
    through unchanged.  A task that runs one call after another gives each call a context of
    its own this way, as a task of its own would."""
    send: Any = None
    throw: BaseException | None = None
    while True:
        try:
            if throw is None:
                message = context.run(coro.send, send)
            else:
                message = context.run(coro.throw, throw)
        except StopIteration as stop:
            return stop.value
        finally:
            # What was passed in (Trio's outcome, or the exception it threw) may become the
            # step's exception; its traceback holds this frame, so holding it here too would be
            # a cycle keeping the call, and its connection, alive until the garbage collector.
            send = throw = None
        try:
            send = yield message
        except BaseException as exc:  # Trio throws in: pass it to the call
            throw = exc


def _cancel_handler(call: _ServerCall) -> None:
    """Cancel a call's handler: its scope now if it is running, else as soon as it starts."""
    call.cancel_requested = True
    if call.scope is not None:
        call.scope.cancel()


class _RequestStream:
    """The client's messages, as an async iterator handed to streaming handlers."""

    __slots__ = ("_call", "_connection", "_count", "_unacked")

    def __init__(self, call: _ServerCall, connection: "_ServerConnection") -> None:
        self._call = call
        self._connection = connection
        self._count = 0
        self._unacked = 0

    def __aiter__(self) -> "_RequestStream":
        return self

    async def __anext__(self) -> Any:
        call = self._call
        inbox = call.inbox
        while not inbox:
            if call.ended:
                raise StopAsyncIteration
            await call.inbox_wakeup.park()
        self._count += 1
        if not self._count % _YIELD_EVERY:
            await _checkpoint()
        payload = inbox.popleft()
        size = len(payload) if type(payload) is bytes else message_size(payload)
        call.buffered -= size
        self._connection.server._buffered -= size
        # Credit back in batches, and at once when the queue runs dry (see the client's).
        self._unacked += size
        if self._unacked >= _ACK_BATCH or not inbox:
            self._connection.consumed(call.id, self._unacked)
            self._unacked = 0
        codec = call.codec
        if codec is not None:
            return codec.decode_item(payload if type(payload) is bytes else b"".join(cast("list[bytes]", payload)))
        return decode(payload, what="request message", status=Status.INVALID_ARGUMENT)


class _ServerConnection(TrioConnection):
    def __init__(self, server: "Server", stream: trio.abc.Stream, conn: WireConnection, peer: str) -> None:
        super().__init__(stream, conn, peer)
        self.server = server
        self.calls: dict[int, _ServerCall]
        self.nursery: trio.Nursery | None = None
        self._idle_workers: list[_Worker] = []
        #: Lifetime limits (see _timers): when the connection started, when it last became
        #: free of calls, and the end of the age drain (None until the age is reached).
        self.started_at = self.calls_ended_at = trio.current_time()
        self._drain_until: float | None = None
        #: Whether the end of a connection's last call must be timed (an idle or age limit
        #: is set): off by default, so a call costs nothing for it.
        self._watch_calls = server._max_connection_idle is not None or server._max_connection_age is not None

    def peer_certificate(self) -> dict[str, Any] | None:
        """The client's TLS certificate (``getpeercert()``'s dict), if it presented one."""
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            return stream.getpeercert() or None
        return None

    # ------------------------------------------------------------------ admission
    def expect_preface_by(self, deadline: float) -> None:
        """Stop reading (so serve_stream closes the connection) if the client's preface has not
        arrived by ``deadline``: the reader's own scope carries the deadline until then."""
        self._reader_scope.deadline = deadline

    def _on_preface(self, event: PrefaceReceived) -> None:
        self._reader_scope.deadline = math.inf

    def preface_timed_out(self) -> bool:
        """The reader stopped because the preface deadline passed (see expect_preface_by)."""
        return self.broken is None and self.conn.peer_preface is None and self._reader_scope.cancelled_caught

    # ------------------------------------------------------------------ events
    def _on_call_opened(self, event: CallOpened) -> None:
        entry = self.server._methods.get(event.method)
        if entry is None:
            self._refuse(event.stream_id, Status.UNIMPLEMENTED, self.server._table.explain_unknown(event.method))
            return
        handler, info = entry
        if event.timeout is not None and event.timeout <= 0:
            self._refuse(event.stream_id, Status.DEADLINE_EXCEEDED, f"{info.name}: no time left on arrival")
            return
        server = self.server
        if server._open_calls >= server.max_concurrent_calls:
            self._refuse(
                event.stream_id,
                Status.RESOURCE_EXHAUSTED,
                f"the server runs at most {server.max_concurrent_calls} calls at once; try again later",
                processed=False,
            )
            return
        arrived = self.received_at
        deadline = math.inf if event.timeout is None else arrived + event.timeout
        context = CallContext(info.path, self.peer, event.metadata, deadline, info.cardinality, arrived)
        context._connection = self
        context._stream_id = event.stream_id
        call = _ServerCall(event.stream_id, handler, info, context)
        call.ended = event.end_stream
        call.codec = event.codec
        if event.compression or server._compresses:
            call.coding = self._response_coding(event.compression, info)
        self.calls[event.stream_id] = call
        server._open_calls += 1
        if info.cardinality.client_streams:
            self._start(call, None)
        elif event.end_stream:
            self._finish(call, Status.INVALID_ARGUMENT, _no_arguments(info))

    def _response_coding(self, asked: int, info: MethodInfo) -> int:
        """The coding of a call's responses: the one the client asked for (HEADERS key 4) if
        this side accepts it too, else the method's or the server's; 0 if the client does not
        accept that one (the gRPC wire's connections have no codings: always 0)."""
        peer: int | None = getattr(self.conn, "peer_codings", None)
        if peer is None:  # a wire without compression
            return 0
        conn = cast(CompressingConnection, self.conn)
        if asked in (Coding.ZLIB, Coding.ZSTD) and coding_bit(Coding(asked)) & peer & conn.accepted_codings:
            return asked
        coding: Coding = self.server._codings.get(info.path, self.server._compression)
        return int(coding) if coding and coding_bit(coding) & peer else 0

    def _refuse(self, stream_id: int, status: Status, message: str, *, processed: bool = True) -> None:
        """End a call that never got a task.  ``processed=False`` for a refusal that says
        nothing about the call (a limit of the server's), which the client may retry anywhere:
        the trailers say so.  A call whose deadline had passed on arrival is not one: it never
        ran either, but a retry would be as late (docs/PROTOCOL.md section 6)."""
        if self.conn.stream_state(stream_id) is StreamState.CLOSED:
            return  # the client cancelled it in the same batch of frames
        if processed:
            self.send_trailers(stream_id, status, message)
        else:
            self.refuse_call(stream_id, status, message)

    def _on_message(self, event: MessagesReceived) -> None:
        call = self.calls.get(event.stream_id)
        if call is None:
            return
        payloads = event.payloads
        if call.info.cardinality.client_streams:
            size = sum(map(message_size, payloads))
            server = self.server
            if server._buffered + size > server.max_buffered_bytes:
                self._abort(
                    call,
                    Status.RESOURCE_EXHAUSTED,
                    f"the server holds {server.max_buffered_bytes} bytes of unread request messages at most",
                )
                return
            call.inbox.extend(payloads)
            call.buffered += size
            server._buffered += size
            call.inbox_wakeup.unpark()
            return
        if not call.started:
            self._start(call, payloads[0])
            if len(payloads) == 1:
                return
        info = call.info
        self._abort(
            call, Status.INVALID_ARGUMENT,
            f"{info.name} is {SHAPE_WORDS[info.cardinality]}: it takes exactly one request message, its arguments"
            " (the call sent more, as a client-streaming call does)",
        )

    def _on_stream_ended(self, event: StreamEnded) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None:
            call.ended = True
            if not call.started and not call.info.cardinality.client_streams:
                # Half-closed without the one request message: no handler will ever run.
                self._finish(call, Status.INVALID_ARGUMENT, _no_arguments(call.info))
                return
            call.inbox_wakeup.unpark()

    def _on_call_cancelled(self, event: CallCancelled) -> None:
        call = self._forget(event.stream_id)
        if call is None:
            return
        call.finished = True  # the stream is closed (trailers, if any, were queued by the core)
        call.context._cancel(event.reason, event.message)
        logger.info(
            "trpc: %s from %s cancelled by the client: %s%s",
            call.info.name, self.peer, event.reason.name, f" ({event.message})" if event.message else "",
        )
        _cancel_handler(call)
        call.inbox_wakeup.unpark()
        call.credit_wakeup.unpark()

    def _on_goaway(self, event: GoAwayReceived) -> None:
        logger.debug("trpc: client %s is going away: %s", self.peer, event.message)

    # ------------------------------------------------------------------ lifetime
    def _calls_ended(self) -> None:
        """The connection's last running call ended (only called when ``_watch_calls``)."""
        self.calls_ended_at = trio.current_time()
        if self._drain_until is not None:
            self.wake_timers()  # draining after the age limit: close now

    def _timers(self, now: float) -> float:
        """The server's limits on a connection's life (run by the timer task, see
        ``TrioConnection.run_timers``): ``max_connection_age`` (GOAWAY, then close once the
        running calls are done or the grace is over) and ``max_connection_idle`` (close once
        no call has run for that long)."""
        server = self.server
        if self._drain_until is not None:
            if not self.calls or now >= self._drain_until:
                self.abort(f"the connection reached its maximum age ({server._max_connection_age:g} s)")
                return math.inf
            return self._drain_until
        deadline = math.inf
        age = server._max_connection_age
        if age is not None:
            deadline = self.started_at + age
            if now >= deadline:
                self.goaway(Status.OK, f"the connection reached its maximum age ({age:g} s); reconnect")
                self._drain_until = now + server._max_connection_age_grace
                return self._timers(now)
        idle = server._max_connection_idle
        if idle is not None:
            if self.calls:
                deadline = min(deadline, now + idle)  # the earliest the idle time could end
            elif now >= self.calls_ended_at + idle:
                self.goaway(Status.OK, f"the connection was idle for {idle:g} s")
                self.abort(f"idle for {idle:g} s (max_connection_idle)")
                return math.inf
            else:
                deadline = min(deadline, self.calls_ended_at + idle)
        return deadline

    def connection_lost(self, reason: str) -> None:
        calls = list(self.calls.values())
        for call in calls:
            self._forget(call.id)
        for call in calls:
            call.finished = True
            call.context._cancel(Status.UNAVAILABLE, reason)
            _cancel_handler(call)
            call.inbox_wakeup.unpark()
            call.credit_wakeup.unpark()

    # ------------------------------------------------------------------ calls
    def _forget(self, stream_id: int) -> _ServerCall | None:
        """Take a call out of the registry and the server's counts (None if it was not there);
        the one place a call leaves, so the idle and age limits learn when the last one did."""
        call = self.calls.pop(stream_id, None)
        if call is not None:
            self.server._open_calls -= 1
            self.server._buffered -= call.buffered
            call.buffered = 0
            if self._watch_calls and not self.calls:
                self._calls_ended()
        return call

    def _start(self, call: _ServerCall, payload: Received | None) -> None:
        call.started = True
        self.server._running += 1
        idle = self._idle_workers
        if idle:
            worker = idle.pop()
            worker.job = (call, payload)
            worker.wakeup.unpark()
        else:
            assert self.nursery is not None  # set before the reader hands on any call
            self.nursery.start_soon(self._work, call, payload)

    async def _work(self, call: _ServerCall | None, payload: Received | None) -> None:
        """A handler task: runs ``call``, then, while fewer than _IDLE_WORKERS wait, waits for
        the next call of this connection and runs it.

        Every call runs in a fresh copy of the context this task started with, so context
        variables set by one call are never seen by the next, exactly as with a task per call.
        One cancel scope serves a run of calls (entering and leaving a Trio scope per call would
        cost much: docs/PERFORMANCE.md): a call with a deadline sets it on the scope while it runs, and a cancellation
        (the deadline, the client's CANCEL, an abort, a lost connection) unwinds its call to
        the scope, which ends the run; the next call gets a fresh scope.
        """
        base = contextvars.copy_context()
        worker: _Worker | None = None
        ran: _ServerCall | None = None
        while call is not None:
            with trio.CancelScope() as scope:
                while call is not None:
                    ran, call.scope = call, scope
                    if call.cancel_requested:  # cancelled before it started
                        scope.cancel()
                    deadline = call.context.deadline
                    if deadline != math.inf:
                        scope.deadline = deadline
                    await _in_context(base.copy(), self._run(call, payload))
                    ran.scope = call = payload = None  # hold nothing of it while waiting
                    # Only _cancel_handler (which sets cancel_requested) and a deadline can
                    # cancel the scope; without either, skip cancel_called (it reads the clock).
                    if (ran.cancel_requested or deadline != math.inf) and scope.cancel_called:
                        break  # the handler returned although cancelled: the scope is spent
                    if deadline != math.inf:
                        scope.deadline = math.inf
                    call, payload, worker = await self._next_call(worker)
            if scope.cancel_called:
                if ran is not None:
                    ran.scope = None
                    if scope.cancelled_caught and not ran.finished:
                        # Our scope fired for the deadline (a client CANCEL, an abort or a lost
                        # connection marks the call finished before it cancels).
                        self._finish(ran, Status.DEADLINE_EXCEEDED, f"{ran.info.name}: deadline exceeded")
                    ran = None
                call, payload, worker = await self._next_call(worker)

    async def _next_call(self, worker: _Worker | None) -> tuple[_ServerCall | None, Received | None, _Worker | None]:
        """Wait for this connection's next call, unless enough tasks wait already; returns
        ``(call, payload, worker)``, with call None when this task should end."""
        idle = self._idle_workers
        if len(idle) >= _IDLE_WORKERS:
            return None, None, worker
        if worker is None:
            worker = _Worker()
        idle.append(worker)
        try:
            await worker.wakeup.park()
        except BaseException:  # cancelled while waiting: the connection is closing
            if worker in idle:
                idle.remove(worker)
            elif worker.job is not None:
                # _start handed us a call in the moment between the cancellation and this
                # task running: it will not run, so end it here rather than lose it.
                call, worker.job = worker.job[0], None
                if not call.finished:
                    call.finished = True
                    self._forget(call.id)
                    try:
                        self._refuse(call.id, Status.UNAVAILABLE, "the connection is closing", processed=False)
                    except LocalProtocolError:  # the stream ended under us (connection failed)
                        pass
                self.server._call_ended()
            raise
        job = worker.job
        assert job is not None  # _start hands a call over before the wake-up
        (call, payload), worker.job = job, None
        return call, payload, worker

    def _finish(self, call: _ServerCall, status: Status, message: str = "", details: CborValue = None) -> None:
        """Send the trailers (once) and forget the call."""
        if call.finished:
            return
        call.finished = True
        self._forget(call.id)
        try:
            self.send_trailers(call.id, status, message, details, call.context._trailing_metadata)
        except LocalProtocolError:  # the stream ended under us (connection failed)
            return

    def _abort(self, call: _ServerCall, status: Status, message: str) -> None:
        """End a call from outside its task: trailers now, then cancel the handler."""
        self._finish(call, status, message)
        _cancel_handler(call)

    def _encode(self, call: _ServerCall, value: CborValue) -> Payload:
        """A response value as message bytes."""
        try:
            return encode(value) if call.codec is None else call.codec.encode_response(value)
        except RpcError:
            raise
        except Exception as exc:
            raise RpcError(Status.INTERNAL, f"{call.info.name}: cannot encode the response: {exc}") from None

    def _queue(self, call: _ServerCall, payload: Payload) -> bool:
        """Queue one response message on the wire connection (False: some waits for credit);
        one the client would refuse ends the call with RESOURCE_EXHAUSTED.  The writer is
        not woken: the caller sends the message with the next thing it queues (a unary
        reply's trailers), or wakes it (``_send``, ``wait_for_credit``)."""
        try:
            if call.coding:
                return cast(CompressingConnection, self.conn).send_compressed(call.id, payload, call.coding)
            return self.conn.send_message(call.id, payload)
        except MessageTooLargeError as exc:
            raise RpcError(
                Status.RESOURCE_EXHAUSTED,
                f"{call.info.name}: response message of {exc.size} bytes exceeds the client's limit of {exc.limit}",
            ) from None

    async def _send(self, call: _ServerCall, payload: Payload) -> None:
        """Send one response message, waiting for credit if the client is slow."""
        if call.finished:
            # The call ended while the handler was still producing (cancelled by the client).
            await _checkpoint()
            return
        if self._queue(call, payload):
            self.wake_writer()
        else:
            await self.wait_for_credit(call.id, call.credit_wakeup, call.is_finished)
        if self._stalled:
            await self.wait_for_room()

    async def wait_until_sent(self, stream_id: int) -> None:
        """Wait until the client's credit has let every message the call on ``stream_id``
        queued go (none waits here for credit), or the call is over.  For a streaming handler
        that would rather coalesce its output than queue it: the health service's Watch sends
        the latest status only once the client has taken the previous one."""
        call = self.calls.get(stream_id)
        if call is None or call.finished or self.conn.flush_batch(stream_id):
            await _checkpoint()
            return
        await self.wait_for_credit(stream_id, call.credit_wakeup, call.is_finished)

    async def _invoke(self, call: _ServerCall, payload: Received | None) -> Any:
        """Decode the arguments, run the handler and send what it produces.

        Returns the result of a unary or client-streaming handler (None for the streaming
        ones), for interceptors to see.
        """
        info = call.info
        codec = call.codec
        args: Sequence[Any]
        kwargs: dict[str, Any]
        if payload is None:
            args, kwargs = [_RequestStream(call, self)], {}
        elif codec is None:
            args, kwargs = decode_arguments(payload)
        else:
            args, kwargs = codec.decode_request(payload if type(payload) is bytes else b"".join(cast("list[bytes]", payload)))
        try:
            target = call.handler(*args, **kwargs)
        except TypeError as exc:  # raised before the body runs: the arguments do not bind
            reason = explain_mismatch(info.name, call.handler, args, kwargs) or f"{info.name}: {exc}"
            raise RpcError(Status.INVALID_ARGUMENT, reason) from None
        if info.cardinality.server_streams:
            # The per-message loop, kept tight: encode, append to the stream's batch, and every
            # _BATCH_MESSAGES frame the batch, wait for credit if it ran out, and yield.  The
            # first message of a batch wakes the writer: it frames the batch whenever this task
            # blocks (in the generator or here), so no message waits for the next one.
            conn = self.conn
            stream_id = call.id
            batch = [] if call.finished else self.open_batch(stream_id)
            small = min(_BATCH_MESSAGE_SIZE, conn.batch_limit)
            if call.coding:  # a batch goes uncompressed: only messages below the threshold
                small = min(small, cast(CompressingConnection, conn).compression_threshold - 1)
            unpark_writer = self.wake_writer
            count = 0
            async with aclosing(target) as items:
                async for item in items:
                    try:
                        if codec is not None:
                            payload = codec.encode_item(item)
                        else:
                            payload = _dumps(item) if type(item) is not bytes else encode(item)
                    except RpcError:
                        raise
                    except Exception as exc:
                        raise RpcError(Status.INTERNAL, f"{info.name}: cannot encode a response: {exc}") from None
                    if type(payload) is bytes and len(payload) <= small:
                        if not batch:
                            unpark_writer()
                        batch.append(payload)
                        count += 1
                        if count & (_BATCH_MESSAGES - 1):
                            continue
                    else:
                        # A larger message: on its own (send_message frames the batch first;
                        # _send drops it if the client has gone).
                        await self._send(call, payload)
                        count += 1
                        if count & (_BATCH_MESSAGES - 1):
                            continue
                    if call.finished:  # the client has gone: nothing more will be sent
                        batch.clear()
                    elif not conn.flush_batch(stream_id):
                        await self.wait_for_credit(stream_id, call.credit_wakeup, call.is_finished)
                    unpark_writer()
                    if self._stalled:
                        await self.wait_for_room()
                    await _checkpoint()
            return None
        result = await target
        if self._stalled:
            await self.wait_for_room()
        # The reply's message leaves with its trailers (_finish), in one write.
        if not call.finished and not self._queue(call, self._encode(call, result)):
            await self.wait_for_credit(call.id, call.credit_wakeup, call.is_finished)  # rare
        return result

    async def _run(self, call: _ServerCall, payload: Received | None) -> None:
        _current.set(call.context)
        info = call.info
        status, message, details = Status.OK, "", None
        try:
            # In the cancel scope _work runs it in: a cancellation ends this coroutine with
            # Cancelled, and _work (where the scope catches it) ends the call.
            interceptors = self.server._interceptors
            if interceptors:
                await run_chain(interceptors, call.context, partial(self._invoke, call, payload))
            else:
                await self._invoke(call, payload)
        except RpcError as exc:
            status, message, details = exc.status, exc.message, exc.details
            if exc.trailers:
                call.context.set_trailers(exc.trailers)
        except Exception as exc:
            if call.finished:
                logger.debug("trpc: %s raised after the call had ended: %s", info.name, repr(exc))
            else:
                logger.exception("trpc: handler %s failed (call from %s)", info.name, self.peer)
            status = Status.INTERNAL
            message = f"{info.name} failed with {type(exc).__name__}; see the server log"
        finally:
            self.server._call_ended()
        self._finish(call, status, message, details)


_ServerConnection._DISPATCH = {
    **TrioConnection._DISPATCH,
    CallOpened: _ServerConnection._on_call_opened,
    MessagesReceived: _ServerConnection._on_message,
    StreamEnded: _ServerConnection._on_stream_ended,
    CallCancelled: _ServerConnection._on_call_cancelled,
    GoAwayReceived: _ServerConnection._on_goaway,
    PrefaceReceived: _ServerConnection._on_preface,
}


#: The options of trpc's wire connection that the gRPC wire takes as they are (its limits and
#: ping policing: docs/LIMITS.md applies to both).
#: What serves one accepted stream (see ``Server._connection_server``).
_StreamServer = Callable[[trio.SocketStream], Awaitable[None]]
_ListenerT = TypeVar("_ListenerT", bound=trio.abc.Listener[trio.SocketStream])


class _ConnectionOptions(TypedDict):
    """The options of every trpc wire connection of a server (``Connection``'s arguments)."""

    max_message_size: int
    max_concurrent_streams: int
    max_frame_size: int
    stream_window: int
    connection_window: int
    max_incomplete_bytes: int | None
    min_ping_interval: float | None
    max_ping_strikes: int
    idempotent_methods: frozenset[str]
    methods: dict[str, Cardinality]
    compression_threshold: int


_GRPC_SHARED_OPTIONS: tuple[Literal[
    "max_message_size", "max_concurrent_streams", "max_frame_size", "stream_window", "connection_window",
    "max_incomplete_bytes", "min_ping_interval", "max_ping_strikes",
], ...] = (
    "max_message_size", "max_concurrent_streams", "max_frame_size", "stream_window", "connection_window",
    "max_incomplete_bytes", "min_ping_interval", "max_ping_strikes",
)


class Server:
    """Serves one or more :class:`~trpc.Service` objects.

    Args:
        *services: the service instances, each with its own service name (two services may
            have methods of the same name: clients call them by path, ``"kv.Store/get"``).
        max_message_size: largest request message accepted (RESOURCE_EXHAUSTED beyond).
        max_concurrent_streams: calls one connection may have running at once.
        max_concurrent_calls: calls the whole server runs at once, all connections together;
            calls beyond get RESOURCE_EXHAUSTED at once (``DEFAULT_MAX_CONCURRENT_CALLS``).
        max_incomplete_bytes: bytes of request messages still arriving that one connection
            may make the server hold (see ``trpc.wire.DEFAULT_MAX_INCOMPLETE_BYTES``).
        max_buffered_bytes: bytes of request messages received and not yet read by their
            handlers, all connections together (``DEFAULT_MAX_BUFFERED_BYTES``).
        max_frame_size: largest frame payload accepted.
        stream_window, connection_window: flow-control credit granted to clients.
        framer: ``"c"`` or ``"python"``; default: ``TRPC_FRAMER`` or C when available.
        interceptors: :class:`~trpc.ServerInterceptor` objects wrapped around every call, the
            first one outermost.
        max_connections: connections open at once (from accept, TLS handshakes included); one
            more is accepted and closed at once.  Default: three quarters of the process's
            descriptor limit (``trpc._admission.default_max_connections``).
        preface_timeout: seconds an accepted connection has to finish its TLS handshake (if
            any) and send the client preface, else it is closed (default 10).
        keepalive_time: ping a client after this many seconds without receiving anything from
            it (default 60; ``None``: never), to find clients that stopped.
        keepalive_timeout: close the connection (cancelling its calls) when a ping gets no
            answer in this many seconds (default 20).
        keepalive_min_ping_interval: ping policing: seconds a client must leave between two
            PINGs (default 10; ``None``: answer every ping).  After
            ``keepalive_max_ping_strikes`` early pings in a row (default 2), the next one ends
            the connection with GOAWAY RESOURCE_EXHAUSTED "too many pings".
        max_connection_idle: close a connection on which no call has run for this many
            seconds (default ``None``: never; idle connections are cheap and clients keep
            them for their next call).
        max_connection_age: after this many seconds, send GOAWAY so that the client opens a
            new connection (default ``None``: never); the calls running then get
            ``max_connection_age_grace`` seconds (default 10) to finish before it closes.
        health: serve the health service (``grpc.health.v1.Health/Check`` and ``/Watch``,
            docs/PROTOCOL.md "Health"; default True).  The statuses exist either way:
            :meth:`set_health`, :meth:`health`.
        reflection: serve the reflection service (``trpc.reflection.v1.Reflection/Describe``,
            docs/PROTOCOL.md "Reflection"; default True): the document is built when the
            server is, from the services and the message classes registered by then.
        grpc: also speak gRPC (HTTP/2, trpc.grpc; docs/PROTOCOL.md section 14) on the same
            listeners, told apart by the client's first bytes or by ALPN (default True).
        compression: ``"zlib"`` or ``"zstd"``: compress responses so for clients that accept
            it (trpc's wire, protocol 1.2), unless the method's decorator says otherwise or the
            client asks for another coding the server accepts (docs/PROTOCOL.md section 5,
            "Compressed messages").  Default None: responses are compressed only when a client
            asks.  Whatever it says, the server accepts zlib, and zstd where the zstandard
            package is installed.
        compression_threshold: messages shorter than this many bytes (encoded) go
            uncompressed (default 1024).
        Every limit and why its default: docs/LIMITS.md.
    """

    def __init__(
        self,
        *services: Any,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        connection_window: int = DEFAULT_CONNECTION_WINDOW,
        max_concurrent_calls: int | None = None,
        max_incomplete_bytes: int | None = None,
        max_buffered_bytes: int | None = None,
        framer: str | None = None,
        interceptors: Sequence[Any] = (),
        max_connections: int | None = None,
        preface_timeout: float = DEFAULT_PREFACE_TIMEOUT,
        keepalive_time: float | None = SERVER_KEEPALIVE_TIME,
        keepalive_timeout: float = SERVER_KEEPALIVE_TIMEOUT,
        keepalive_min_ping_interval: float | None = DEFAULT_MIN_PING_INTERVAL,
        keepalive_max_ping_strikes: int = DEFAULT_MAX_PING_STRIKES,
        max_connection_idle: float | None = None,
        max_connection_age: float | None = None,
        max_connection_age_grace: float = DEFAULT_MAX_CONNECTION_AGE_GRACE,
        health: bool = True,
        reflection: bool = True,
        grpc: bool = True,
        compression: str | None = None,
        compression_threshold: int = DEFAULT_COMPRESSION_THRESHOLD,
    ) -> None:
        from ._framer import get_framer

        if not services:
            raise TypeError("Server needs at least one service")
        #: The dispatch table: every service by name, every method by path and short name.
        self._table = MethodTable(services)
        #: Every service's serving status (see trpc._health): "" and each service's name.
        self._health = HealthRegistry(self._table.services)
        describe = ReflectionService() if reflection else None
        extra: tuple[Service, ...] = ((HealthService(self._health),) if health else ()) + ((describe,) if describe else ())
        if reflection and grpc:
            # gRPC's own reflection (v1 and v1alpha), in protobuf, for grpcurl and friends:
            # only with the protobuf package (trpc.grpc._proto), which it answers from.
            from .grpc._proto import grpc_services

            extra += tuple(grpc_services(self))
        if extra:
            self._table = MethodTable((*services, *extra))
        if describe is not None:
            describe.publish(build_document(self._table.services, [info for _, info in self._table.methods.values()]))
        #: Every name a client may send (paths and unambiguous short names) -> (handler, info).
        self._methods = self._table.lookup
        #: Announced to every client of protocol 1.1 or later (the INFO frame): the names of
        #: the idempotent methods (each path, and its short name where that is unambiguous,
        #: since a client may send either), and every method's shape by path.
        self.idempotent_methods = frozenset(
            name for path, (_, info) in self._table.methods.items() if info.idempotent
            for name in self._table.short_names(path)
        )
        self._interceptors = tuple(interceptors)
        self._framer = get_framer(framer)
        self._connection_options = _ConnectionOptions(
            max_message_size=max_message_size,
            max_concurrent_streams=max_concurrent_streams,
            max_frame_size=max_frame_size,
            stream_window=stream_window,
            connection_window=connection_window,
            max_incomplete_bytes=max_incomplete_bytes,
            min_ping_interval=keepalive_min_ping_interval,
            max_ping_strikes=keepalive_max_ping_strikes,
            idempotent_methods=self.idempotent_methods,
            methods={path: info.cardinality for path, (_, info) in self._table.methods.items()},
            compression_threshold=compression_threshold,
        )
        #: The coding of responses when a client asks for none the server accepts (0: none),
        #: and the methods whose decorator says another; whether any of them compresses.
        self._compression = parse_coding(compression)
        self._codings = {
            path: parse_coding(info.compression)
            for path, (_, info) in self._table.methods.items() if info.compression is not None
        }
        self._compresses = bool(self._compression or any(self._codings.values()))
        Connection("server", framer=self._framer, **self._connection_options)  # validate now
        self._set_grpc(grpc)
        if max_concurrent_calls is None:
            max_concurrent_calls = DEFAULT_MAX_CONCURRENT_CALLS
        if max_concurrent_calls < 1:
            raise ValueError("max_concurrent_calls must be at least 1")
        self.max_concurrent_calls = max_concurrent_calls
        if max_buffered_bytes is None:
            max_buffered_bytes = DEFAULT_MAX_BUFFERED_BYTES
        if max_buffered_bytes < 1:
            raise ValueError("max_buffered_bytes must be at least 1")
        self.max_buffered_bytes = max_buffered_bytes
        #: Bytes in the inboxes of every connection's calls: what max_buffered_bytes bounds.
        self._buffered = 0
        #: Calls open on every connection (a task running or about to): what
        #: max_concurrent_calls bounds.
        self._open_calls = 0
        if max_connections is None:
            max_connections = default_max_connections()
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if not preface_timeout > 0:
            raise ValueError(f"preface_timeout must be positive, got {preface_timeout}")
        self.max_connections = max_connections
        self.preface_timeout = preface_timeout
        #: Sockets accepted by serve_tcp or serve_unix and not yet closed (trpc connections, and
        #: those still in their TLS handshake or preface); refused_connections counts those
        #: closed at once.
        self._sockets = 0
        self.refused_connections = 0
        self._admission_log = LogLimiter(logger)
        self._set_lifetimes(keepalive_time, keepalive_timeout, max_connection_idle, max_connection_age,
                            max_connection_age_grace)
        self._running = 0
        self._connections: set[_ServerConnection] = set()
        #: The cancel scopes of the running serve_tcp and serve_unix listeners (shutdown closes them).
        self._listening: set[trio.CancelScope] = set()
        #: Set when no call runs any more, while a shutdown waits for that.
        self._idle: trio.Event | None = None
        self.shutting_down = False
        #: The cancel scopes of connections waiting for their first bytes (shutdown ends them).
        self._sniffing: set[trio.CancelScope] = set()

    def _set_grpc(self, enabled: bool) -> None:
        """Get ready to speak gRPC too (trpc.grpc): its options, the same limits as trpc's
        wire, and the protobuf codecs, built now so that a method whose types do not map
        fails here rather than at its first call."""
        #: The trpc.grpc module, or None when gRPC is off (``grpc=False``).
        self._grpc: Any = None
        #: Protobuf codecs by every name a client may send (see trpc.grpc).
        self._grpc_codecs: dict[str, Any] = {}
        if not enabled:
            return
        import importlib.util

        from . import grpc as grpc_wire

        self._grpc = grpc_wire
        if importlib.util.find_spec("trpc.grpc._proto") is not None:
            from ._errors import ProtoMappingError
            from .grpc._proto import build_codecs

            # A codec for each method whose types map to protobuf; for the others, the reason
            # (logged once by build_codecs): a protobuf call to one ends with UNIMPLEMENTED.
            try:
                by_path = build_codecs(self._table.methods)
            except ProtoMappingError:  # protobuf is not installed: gRPC in CBOR only
                by_path = {}
            self._grpc_codecs = {
                name: by_path[info.path] for name, (_, info) in self._methods.items()
                if not isinstance(by_path.get(info.path, ""), str)
            }
        # The same limits as trpc's wire: one set of options, the trpc connection's.
        options = self._connection_options
        self._grpc_options = dict(
            {name: options[name] for name in _GRPC_SHARED_OPTIONS},
            codecs=self._grpc_codecs,
            known=frozenset(self._methods),
        )

    def _set_lifetimes(self, keepalive_time: float | None, keepalive_timeout: float, max_idle: float | None,
                       max_age: float | None, age_grace: float) -> None:
        """Check and keep the keepalive and connection lifetime settings."""
        check_keepalive(keepalive_time, keepalive_timeout)
        for name, value in (("max_connection_idle", max_idle), ("max_connection_age", max_age)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive (or None: no limit)")
        if not age_grace >= 0:
            raise ValueError("max_connection_age_grace must be at least 0")
        self._keepalive_time = keepalive_time
        self._keepalive_timeout = keepalive_timeout
        self._max_connection_idle = max_idle
        self._max_connection_age = max_age
        self._max_connection_age_grace = age_grace

    @property
    def running_calls(self) -> int:
        """Handlers running right now, across all connections."""
        return self._running

    def _call_ended(self) -> None:
        """A call counted by _start is over (its handler returned, or it never ran)."""
        self._running -= 1
        if not self._running and self._idle is not None:
            self._idle.set()

    @property
    def connections(self) -> int:
        """Connections open right now."""
        return len(self._connections)

    @property
    def methods(self) -> dict[str, MethodInfo]:
        """Every method served, by path (``"kv.Store/get"``), services in the order given."""
        return {path: info for path, (_, info) in self._table.methods.items()}

    def set_health(self, service: str, status: HealthStatus | str) -> None:
        """Set the serving status of ``service`` (``""``: the whole server), registering
        the name if it is new; Check and Watch report it, and every Watch of it learns the
        change.  Every name starts SERVING: ``""`` and the name of each service the server
        was built with (``"kv.Store"``).  Ignored once :meth:`shutdown` has begun (all NOT_SERVING).

        Args:
            service: the name clients check.
            status: a :class:`~trpc.HealthStatus` or its name, e.g. ``"NOT_SERVING"``.

        Raises:
            TypeError, ValueError: not a name and a status (SERVICE_UNKNOWN cannot be set).
        """
        self._health.set(service, status)

    def health(self, service: str = "") -> HealthStatus:
        """The serving status of ``service`` (``""``: the whole server); SERVICE_UNKNOWN
        for a name never registered."""
        return self._health.get(service)

    async def serve_stream(self, stream: trio.abc.Stream, peer: str | None = None) -> None:
        """Serve one connection over ``stream`` until the client leaves; closes the stream.
        The client's preface must arrive within ``preface_timeout`` seconds."""
        await self._serve_connection(stream, peer, trio.current_time() + self.preface_timeout)

    async def _first_bytes(
        self, stream: trio.abc.Stream, peer: str, preface_deadline: float
    ) -> bytes | bytearray | None:
        """The client's first bytes, which say which wire it speaks; None (and the stream
        closed) if none came within the preface timeout, or the server is shutting down."""
        data = None
        scope = trio.CancelScope(deadline=preface_deadline)
        self._sniffing.add(scope)
        try:
            with scope:
                try:
                    data = await stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
        finally:
            self._sniffing.discard(scope)
        if scope.cancelled_caught and not self.shutting_down:
            self._admission_log.warning(
                "preface", "trpc: closed a connection from %s: no trpc preface within %s s", peer, self.preface_timeout,
            )
        if not data:
            await trio.aclose_forcefully(stream)
            return None
        return data

    async def _serve_connection(self, stream: trio.abc.Stream, peer: str | None, preface_deadline: float) -> None:
        first: bytes | bytearray | None  # (declared apart, so that the checkers narrow it)
        first = b""
        speaks_grpc = False
        if self._grpc is not None:
            # Which wire: ALPN says it under TLS; otherwise the client's first bytes do.
            alpn = stream.selected_alpn_protocol() if isinstance(stream, trio.SSLStream) else None
            if alpn == self._grpc.ALPN_GRPC:
                speaks_grpc = True
            elif alpn != self._grpc.ALPN_TRPC:
                peer = peer or format_peer(stream)
                first = await self._first_bytes(stream, peer, preface_deadline)
                if first is None:
                    return
                speaks_grpc = self._grpc.looks_like_http2(first)
        if speaks_grpc:
            assert self._grpc is not None  # speaks_grpc only when gRPC is on
            conn = self._grpc.GrpcConnection(**self._grpc_options)
        else:
            conn = Connection("server", framer=self._framer, **self._connection_options)
        conn.initiate()
        await self._run_connection(_ServerConnection(self, stream, conn, peer or format_peer(stream)), first,
                                   preface_deadline)

    async def _run_connection(self, connection: _ServerConnection, first: bytes | bytearray, preface_deadline: float) -> None:
        """Run one connection (its reader, writer and timers) until it ends, then close it: for
        every wire, trpc.quic's connections included."""
        if self._keepalive_time is not None:
            connection.keepalive = Keepalive(self._keepalive_time, self._keepalive_timeout, only_with_calls=False)
        self._connections.add(connection)
        logger.debug("trpc: connection from %s", connection.peer)
        try:
            async with trio.open_nursery() as nursery:
                connection.nursery = nursery
                nursery.start_soon(connection.writer)
                nursery.start_soon(connection.run_timers)
                connection.wake_writer()  # the preface
                connection.expect_preface_by(preface_deadline)
                await connection.reader(first)
                if connection.preface_timed_out():
                    self._admission_log.warning(
                        "preface", "trpc: closed a connection from %s: no trpc preface within %s s",
                        connection.peer, self.preface_timeout,
                    )
                    connection.abort(f"no trpc preface within {self.preface_timeout} s")
                # The client is gone (or broke the protocol): its calls cannot be answered.
                connection.connection_lost(connection.broken or "connection closed")
                with trio.move_on_after(1):
                    await connection.flush()
                nursery.cancel_scope.cancel()
        finally:
            self._connections.discard(connection)
            await connection.close_stream()
            logger.debug("trpc: connection from %s closed: %s", connection.peer, connection.broken)

    async def _serve_tls_connection(self, ssl_context: ssl.SSLContext, stream: trio.SocketStream) -> None:
        """The TLS handshake, then the connection; both within one preface_timeout."""
        peer = format_peer(stream)
        deadline = trio.current_time() + self.preface_timeout
        tls = trio.SSLStream(stream, ssl_context, server_side=True)
        with trio.move_on_at(deadline) as scope:
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self._handshake_failed(tls, stream, peer, exc)
                return
        if scope.cancelled_caught:
            self._admission_log.warning(
                "tls-timeout", "trpc: TLS handshake with %s: not done within %s s", peer, self.preface_timeout
            )
            await trio.aclose_forcefully(stream)
            return
        await self._serve_connection(tls, peer, deadline)

    async def serve_tcp(
        self,
        port: int = DEFAULT_PORT,
        host: str | None = DEFAULT_HOST,
        *,
        ssl_context: ssl.SSLContext | None = None,
        handler_nursery: trio.Nursery | None = None,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on TCP and serve every connection, until cancelled.

        ``port=0`` picks a free port.  ``task_status.started`` reports the bound ``(host, port)``
        of the first listener, so ``await nursery.start(server.serve_tcp, 0)`` returns it.
        With ``ssl_context`` (a server-side ``ssl.SSLContext``), every connection is TLS; make
        the context require client certificates for mutual TLS, and read the client's
        certificate in a handler from ``trpc.current_call().peer_certificate``.  The context's
        ALPN protocols are set to the wires served (``h2``, ``trpc/1``).
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        await self.serve_listeners(listeners, ssl_context=ssl_context, handler_nursery=handler_nursery,
                                   task_status=task_status)

    async def serve_listeners(
        self,
        listeners: list[trio.SocketListener],
        *,
        ssl_context: ssl.SSLContext | None = None,
        handler_nursery: trio.Nursery | None = None,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve TCP listeners opened elsewhere, as ``serve_tcp`` serves its own: for sockets
        with options ``serve_tcp`` does not set (``SO_REUSEPORT``, see trpc._workers) or
        inherited from a parent process.  Takes the listeners over: they are closed when
        listening stops.  ``task_status.started`` reports the first one's ``(host, port)``.
        """
        address = listeners[0].socket.getsockname()[:2]
        serve = self._connection_server(ssl_context)

        async def serve_with_keepalive(stream: trio.SocketStream) -> None:
            try:
                set_tcp_keepalive(stream.socket)
            except OSError:  # already reset by the peer: serving it will say so
                pass
            await serve(stream)

        where = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
        await self._serve_listeners(listeners, serve_with_keepalive, where, address, handler_nursery, task_status)

    async def serve_unix(
        self,
        path: str | os.PathLike[str],
        *,
        backlog: int | None = None,
        mode: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        handler_nursery: trio.Nursery | None = None,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on a Unix domain socket at ``path`` and serve every connection, until
        cancelled: as ``serve_tcp``, with the same limits, admission, keepalive pings and
        graceful shutdown (TCP's own keepalive aside, which a Unix socket does not have).

        A socket left at ``path`` by a dead server is replaced; a live server there, or a file
        that is not a socket, raises ``OSError`` before anything is served.  The socket file
        is removed when the listener closes (on shutdown or cancellation).
        ``task_status.started`` reports ``path`` (as a string).

        Args:
            path: where the socket goes (see ``trpc._unix.open_unix_listener``).
            backlog: the listen backlog (default: as large as the kernel allows).
            mode: permissions of the socket file (``0o600``: this user only); connecting
                needs write permission on it.  Default: what the umask gives.
            ssl_context: serve TLS, as ``serve_tcp`` does.
        """
        listener = await open_unix_listener(path, backlog=backlog, mode=mode)
        await self._serve_listeners(
            [listener], self._connection_server(ssl_context), f"unix:{listener.path}", listener.path,
            handler_nursery, task_status,
        )

    async def serve_quic(
        self,
        port: int,
        host: str = DEFAULT_HOST,
        *,
        certfile: str,
        keyfile: str | None = None,
        client_cafile: str | None = None,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on UDP and serve every QUIC connection (trpc.quic; docs/PROTOCOL.md section 16),
        until cancelled or shut down, with the same limits, admission and shutdown as
        ``serve_tcp``; run it beside ``serve_tcp`` to serve both.  QUIC is always TLS 1.3:
        ``certfile`` (PEM, the chain) and ``keyfile`` (PEM; omitted when ``certfile`` holds
        it) are the server's identity.  With ``client_cafile`` (PEM CA certificates), every
        client must present a certificate signed by one of them (mutual TLS): a client without
        one, or with one not trusted or not its own, is refused in the handshake (that
        connection only), and a handler reads the client's certificate from
        ``trpc.current_call().peer_certificate``.  ``task_status.started`` reports ``(host,
        port)``.  Needs the ``qh3`` package (and ``cryptography`` for ``client_cafile``:
        ``pip install 'trpc-trio[quic]'``).

        Raises:
            ValueError: no certificate and key in ``certfile``/``keyfile``, or no CA
                certificate in ``client_cafile``.
            OSError: a file cannot be read, or the port cannot be bound.
        """
        from .quic._transport import serve_quic, server_configuration

        configuration = server_configuration(certfile, keyfile, client_cafile=client_cafile)
        configuration.refusal_log = self._admission_log
        await serve_quic(self, port, host or DEFAULT_HOST, configuration, task_status=task_status)

    def _connection_server(self, ssl_context: ssl.SSLContext | None) -> _StreamServer:
        """What serves one accepted stream: serve_stream, or the TLS handshake first.  The
        TLS context is made to offer the wires served by ALPN: ``h2`` (gRPC, unless
        ``grpc=False``) and ``trpc/1``."""
        if ssl_context is None:
            return self.serve_stream
        if self._grpc is not None:
            ssl_context.set_alpn_protocols([self._grpc.ALPN_GRPC, self._grpc.ALPN_TRPC])
        else:
            ssl_context.set_alpn_protocols(["trpc/1"])
        return partial(self._serve_tls_connection, ssl_context)

    async def _serve_listeners(
        self, listeners: list[_ListenerT], serve: _StreamServer, where: str, address: Any,
        handler_nursery: trio.Nursery | None, task_status: trio.TaskStatus[Any],
    ) -> None:
        """Accept on ``listeners`` until shutdown or cancellation, passing every stream through
        admission (``_admit``) to ``serve``; ``task_status.started(address)`` once listening.
        The listeners close (a Unix socket's file goes with them) as soon as listening stops;
        this returns once the connections are over too."""
        handler = partial(self._admit, serve)
        listen_scope = trio.CancelScope()

        async def listen(task_status: trio.TaskStatus[list[_ListenerT]]) -> None:
            with listen_scope:
                await trio.serve_listeners(handler, listeners, handler_nursery=connections, task_status=task_status)

        try:
            async with trio.open_nursery() as nursery:
                # Connections live in this nursery (or the caller's), not the listeners': a
                # shutdown closes the listeners and lets the connections finish their calls.
                connections = handler_nursery or nursery
                await nursery.start(listen)
                self._listening.add(listen_scope)
                logger.info("trpc: listening on %s", where)
                task_status.started(address)
        finally:
            self._listening.discard(listen_scope)

    async def _admit(self, serve: _StreamServer, stream: trio.SocketStream) -> None:
        """Serve an accepted socket, or close it at once if max_connections are open (see
        trpc._admission): counted from accept to close, TLS handshakes included."""
        if self._sockets >= self.max_connections:
            self.refused_connections += 1
            self._admission_log.warning(
                "max-connections", "trpc: refused a connection from %s: %d connections open (max_connections)",
                format_peer(stream), self._sockets,
            )
            await trio.aclose_forcefully(stream)
            return
        self._sockets += 1
        try:
            await serve(stream)
        finally:
            self._sockets -= 1

    async def _handshake_failed(
        self, tls: trio.SSLStream[trio.SocketStream], stream: trio.SocketStream, peer: str, exc: BaseException
    ) -> None:
        """Log a failed TLS handshake (rate-limited, per reason), tell the client why (the
        alert OpenSSL wrote), and close."""
        reason = getattr(exc.__cause__, "reason", None) or type(exc.__cause__ or exc).__name__
        self._admission_log.warning(
            f"tls:{reason}", "trpc: TLS handshake with %s failed: %s", peer, str(exc.__cause__ or exc)
        )
        await send_pending_alert(tls, stream, exc)
        await trio.aclose_forcefully(stream)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop gracefully: every health status becomes NOT_SERVING for good, and every
        health Watch sends it and ends; stop listening; send GOAWAY on every connection (calls
        already received still complete; new ones are refused with UNAVAILABLE, which clients
        may retry elsewhere); wait up to ``grace`` seconds in all for running calls to finish,
        then cancel what still runs and close every connection.  ``serve_tcp`` and
        ``serve_unix`` return once all is closed (a Unix socket's file is removed when
        listening stops).

        The GOAWAY waits for the watches' last messages, so that watchers learn NOT_SERVING
        first, but not for a watch whose client has not taken its previous message.
        """
        deadline = trio.current_time() + grace
        self.shutting_down = True
        self._health.shut_down()
        for scope in list(self._listening) + list(self._sniffing):
            scope.cancel()
        with trio.move_on_at(deadline):
            await self._health.wait_for_watches()
        for connection in list(self._connections):
            connection.goaway(Status.OK, "the server is shutting down")
        if self._running:
            self._idle = trio.Event()
            with trio.move_on_at(deadline):
                await self._idle.wait()
            if self._running:
                logger.warning("trpc: shutdown: cancelling %d calls still running after %s s", self._running, grace)
        for connection in list(self._connections):
            connection.abort("the server is shutting down")  # serve_stream flushes and closes
        with trio.move_on_after(2):
            while self._connections:
                await trio.sleep(0.01)


async def serve(
    *services: Any,
    host: str | None = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve ``services`` over TCP until cancelled: ``trio.run(trpc.serve, Greeter())``.

    Listens on ``host``:``port`` (default 127.0.0.1:50051), with TLS if ``ssl_context`` is
    given.  ``options`` are :class:`Server`'s.
    """
    await Server(*services, **options).serve_tcp(port, host, ssl_context=ssl_context, task_status=task_status)


async def serve_unix(
    *services: Any,
    path: str | os.PathLike[str],
    mode: int | None = None,
    backlog: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve ``services`` on a Unix domain socket until cancelled:
    ``trio.run(partial(trpc.serve_unix, Greeter(), path="/run/greeter.sock"))``.

    ``path``, ``mode``, ``backlog`` and ``ssl_context`` are :meth:`Server.serve_unix`'s;
    ``options`` are :class:`Server`'s.
    """
    await Server(*services, **options).serve_unix(
        path, mode=mode, backlog=backlog, ssl_context=ssl_context, task_status=task_status
    )
