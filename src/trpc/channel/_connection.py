"""One client connection: connect, exchange prefaces, run, drain and close.

Theory of operation
-------------------
A :class:`ClientConnection` is the client's side of one byte stream (TCP, TLS, a Unix socket, an
in-memory stream): a :class:`~trpc._transport.TrioConnection` whose events fill the calls of the
call layer (:class:`ClientCall`: an inbox of messages, a status, two wake-ups).  A subchannel
(:mod:`trpc.channel._subchannel`) makes one with :func:`open_connection` and runs it with
:meth:`ClientConnection.run` in the channel's nursery: the reader, the writer and the timer task
run until the stream ends; ``run`` reports "ready" (through ``task_status``) once the server's
preface has arrived, or raises UNAVAILABLE before that, saying why.

A connection is *usable* (new calls may start on it) from the server's preface until the first
of: the server's GOAWAY, a broken stream, the client closing it.  The subchannel is told at
once, synchronously (``on_unusable``), so the balancer never picks a connection that would refuse
a call.  A connection that is no longer usable but still has calls *drains*: those calls run to
their end, then the client closes it (a GOAWAY of its own, then the stream).
"""

from __future__ import annotations

import logging
import math
import os
import ssl
from collections import deque
from typing import Any, Callable

import trio

from .._errors import RpcError
from .._events import (
    CallEnded, GoAwayReceived, HeadersReceived, InfoReceived, MessagesReceived, PingAcknowledged, Received,
    PrefaceReceived,
)
from .._server import format_peer
from .._service import Cardinality
from .._status import Status
from .._tls import describe_tls_failure
from .._transport import _SPEAKS_TLS, Parker, TrioConnection
from .._address import Address, open_stream
from .._keepalive import Keepalive
from ..wire._frames import ALPN_TRPC
from ..wire._compression import DEFAULT_COMPRESSION_THRESHOLD
from ..wire import Connection
from ..wire._frames import INFO_MINOR_VERSION

__all__ = [
    "ClientCall", "ClientConnection", "ConnectLimit", "ConnectOptions", "open_connection", "open_stream_to", "CLOSE_GRACE",
]

logger = logging.getLogger("trpc")

#: How long closing a connection waits to tell the server (CANCEL, GOAWAY) before it just closes.
CLOSE_GRACE = 1.0

_current_time = trio.current_time
#: The payload of the PING that tells when a 1.1 server's INFO would have arrived.
_DECLARED_PING = b"trpcinfo"


class ClientCall:
    """Client-side state of one call attempt; filled in by the reader, read by the caller's task."""

    __slots__ = (
        "id", "connection", "inbox", "status", "message", "details", "trailers", "headers", "wakeup",
        "credit_wakeup", "unsent", "processed", "watchers",
    )

    def __init__(self, stream_id: int, connection: "ClientConnection") -> None:
        self.id = stream_id
        #: The connection the call runs on (every later action on the call goes there).
        self.connection = connection
        #: Part of the request went unframed for lack of credit (see Client._open).
        self.unsent = False
        self.inbox: deque[Received] = deque()
        self.status: Status | None = None
        self.message = ""
        self.details: Any = None
        self.trailers: dict[str, Any] = {}
        self.headers: dict[str, Any] | None = None
        self.wakeup = Parker()
        self.credit_wakeup = Parker()
        #: False when the server said it never ran the call (TRAILERS "not processed", or the
        #: call was above a GOAWAY's last stream id): it may be retried anywhere.
        self.processed = True
        #: Set when the response headers arrive or the call ends; made only when another task
        #: asks to wait for that (``initial_metadata()``), so a call that nobody watches pays
        #: nothing for it.
        self.watchers: trio.Event | None = None

    def wake(self) -> None:
        """The call has ended (its status is set): wake whoever waits on it."""
        self.wakeup.unpark()
        self.credit_wakeup.unpark()
        if self.watchers is not None:
            self.watchers.set()

    async def wait_for_headers(self) -> None:
        """Wait until the response headers have arrived or the call has ended."""
        if self.headers is None and self.status is None:
            if self.watchers is None:
                self.watchers = trio.Event()
            await self.watchers.wait()
        else:
            await trio.lowlevel.checkpoint()

    def error(self) -> RpcError:
        assert self.status is not None  # asked only of a call that has ended
        return RpcError(self.status, self.message, self.details, trailers=self.trailers)

    def ended(self) -> bool:
        """The call has a status (the server's, or the one it was ended with here)."""
        return self.status is not None


class ClientConnection(TrioConnection):
    """The client's side of one connection (see the module's docstring)."""

    def __init__(self, stream: trio.abc.Stream, conn: Any, peer: str) -> None:
        super().__init__(stream, conn, peer)
        self.calls: dict[int, ClientCall]
        self.ready = trio.Event()
        #: Calls waiting for the server's concurrent-call limit to let them start.
        self.slot_waiters = trio.lowlevel.ParkingLot()
        #: Wire names of the methods the server declares idempotent (its INFO frame).
        self.idempotent: frozenset[str] = frozenset()
        #: Each method's call shape by path (``"kv.Store/get"``), as the INFO frame declared
        #: them (empty: none declared, e.g. a server of protocol 1.0).
        self.methods: dict[str, Cardinality] = {}
        #: Every name a client may send for a method in :attr:`methods` (its path, and its
        #: short name when no other declared method has it) -> (path, shape); built once, when
        #: INFO arrives, for the client's methods to look up once per connection.
        self.names: dict[str, tuple[str, Cardinality]] = {}
        #: Set once what the server declares is known: its INFO arrived, or it will send none
        #: (its preface says protocol 1.0; or the answer to the PING sent right after a 1.1
        #: server's preface came first, and INFO would have come before it), or the
        #: connection ended.  INFO follows the server's preface by up to a round
        #: trip: a call that needs what it says (its shape, the path its short name stands
        #: for) waits for this, once per connection.
        self.declared = trio.Event()
        #: New calls may start here (see the module's docstring).
        self.usable = False
        #: Called once, synchronously, when the connection stops being usable.
        self.on_unusable: Callable[["ClientConnection"], None] | None = None
        #: Set once a connection that is no longer usable has no call left.
        self.drained = trio.Event()
        self._closing = False

    # ------------------------------------------------------------------ events
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
            if not event.processed:
                call.processed = False
            call.wakeup.unpark()
            call.credit_wakeup.unpark()
            if call.watchers is not None:
                call.watchers.set()
        if not self.usable:
            self.check_drained()

    def _on_headers(self, event: HeadersReceived) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None:
            call.headers = event.metadata
            if call.watchers is not None:
                call.watchers.set()

    def _on_preface(self, event: PrefaceReceived) -> None:
        self.ready.set()
        if event.version[0] == 1 and event.version[1] < INFO_MINOR_VERSION:
            self.declared.set()
        else:
            self.ping(_DECLARED_PING)

    def _on_ping_ack(self, event: PingAcknowledged) -> None:
        if event.payload == _DECLARED_PING:
            self.declared.set()
        super()._on_ping_ack(event)

    def _on_info(self, event: InfoReceived) -> None:
        self.idempotent = event.idempotent
        self.methods = event.methods
        names: dict[str, tuple[str, Cardinality]] = {}
        shorts: dict[str, list[str]] = {}
        for path, shape in event.methods.items():
            names[path] = (path, shape)
            shorts.setdefault(path.rpartition("/")[2], []).append(path)
        for short, paths in shorts.items():
            # The server resolves a short name that one service alone has (PROTOCOL.md section
            # 4); INFO may leave methods out, so this can miss an ambiguity the server sees,
            # which it then reports itself (UNIMPLEMENTED).
            if len(paths) == 1 and short not in names:
                names[short] = names[paths[0]]
        self.names = names
        self.declared.set()

    def _on_goaway(self, event: GoAwayReceived) -> None:
        logger.debug("trpc: server %s is going away: %s %s", self.peer, event.status.name, event.message)
        self._unusable()
        self.slot_waiters.unpark_all()
        self.check_drained()

    def connection_lost(self, reason: str) -> None:
        self.ready.set()
        self.declared.set()
        self._unusable()
        self.slot_waiters.unpark_all()
        for call in self.calls.values():
            if call.status is None:
                call.status = Status.UNAVAILABLE
                call.message = f"connection to {self.peer} lost: {reason}"
                call.wake()
        self.drained.set()

    def _unusable(self) -> None:
        if self.usable:
            self.usable = False
            callback, self.on_unusable = self.on_unusable, None
            if callback is not None:
                callback(self)

    def check_drained(self) -> None:
        """A connection no longer usable: note when its last call is over."""
        if not self.drained.is_set() and self.conn.open_streams == 0:
            self.drained.set()

    def unavailable(self) -> RpcError:
        return RpcError(Status.UNAVAILABLE, f"connection to {self.peer} is closed: {self.broken}")

    # ------------------------------------------------------------------ life
    async def run(self, limit: "ConnectLimit", *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the connection until it ends; ``task_status.started()`` once the server's
        preface has arrived.  Before that, a failure raises UNAVAILABLE saying why."""
        error: RpcError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.writer)
            nursery.start_soon(self.reader)
            nursery.start_soon(self.run_timers)
            self.wake_writer()
            try:
                with trio.move_on_at(limit.deadline) as scope:
                    await self.ready.wait()
            except trio.Cancelled:
                # The caller's scope (its writer is cancelled too): nothing to tell the server.
                self.abort("cancelled before the server's preface arrived")
                raise
            if scope.cancelled_caught:
                error = RpcError(Status.UNAVAILABLE, f"{self.peer} did not answer with a trpc preface {limit}")
            elif self.broken is not None:
                hint = " (connect with an ssl_context)" if self.broken == _SPEAKS_TLS else ""
                error = RpcError(Status.UNAVAILABLE, f"cannot talk to {self.peer}: {self.broken}{hint}")
            if error is None:
                self.usable = not self._closing and self.conn.accepting_calls
                task_status.started(self)
                # Until the stream ends, or the connection has drained after it stopped
                # taking calls (then we close it).
                await self.drained.wait()
                if self.broken is None:
                    await self.aclose()
            else:
                self.abort(error.message)
            nursery.cancel_scope.cancel()
        await self.close_stream()
        if error is not None:
            raise error

    async def aclose(self, reason: str = "the client is shutting down") -> None:
        """Cancel every call still on the connection (reason UNAVAILABLE), say GOAWAY and close.
        Safe to call more than once and from any task."""
        if self._closing:
            return
        self._closing = True
        self._unusable()
        with trio.CancelScope(shield=True):
            if self.broken is None:
                for call in list(self.calls.values()):
                    if call.status is None:
                        self.calls.pop(call.id, None)
                        call.status = Status.UNAVAILABLE
                        call.message = "the client was closed"
                        self.cancel(call.id, Status.UNAVAILABLE, reason)
                        call.wake()
                self.goaway(Status.OK, "client closing")
                with trio.move_on_after(CLOSE_GRACE):
                    await self.flush()
            self.connection_lost("the client was closed")
            await self.close_stream()


ClientConnection._DISPATCH = {
    **TrioConnection._DISPATCH,
    MessagesReceived: ClientConnection._on_message,
    CallEnded: ClientConnection._on_call_ended,
    HeadersReceived: ClientConnection._on_headers,
    PrefaceReceived: ClientConnection._on_preface,
    GoAwayReceived: ClientConnection._on_goaway,
    InfoReceived: ClientConnection._on_info,
    PingAcknowledged: ClientConnection._on_ping_ack,
}


class ConnectLimit:
    """When a connection attempt gives up (TCP, TLS and the server's preface together), and
    which setting said so.

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
    ) -> "ConnectLimit":
        seconds, setting = connect_timeout, "connect_timeout"
        if timeout is not None and timeout < seconds:
            seconds, setting = timeout, "timeout"
        if caller_deadline <= now + seconds:
            return cls(math.inf, caller_deadline - now, "the caller's deadline")
        return cls(now + seconds, seconds, setting)

    def __str__(self) -> str:
        setting = self.setting + "=" if self.setting.isidentifier() else self.setting
        return f"within {self.seconds:g} s ({setting})"


def _os_reason(exc: OSError) -> str:
    """The most specific reason in a failed connect ("Connection refused"), not Trio's summary."""
    cause: BaseException | None = exc.__cause__
    # An exception group's first member, down to a leaf (by attribute: on Python 3.10 the group
    # is the exceptiongroup backport's class, not a builtin).
    while (members := getattr(cause, "exceptions", None)):
        cause = members[0]
    if isinstance(cause, OSError):
        # Trio's per-address error keeps the errno but words strerror as "Error connecting to
        # ('h', p): Connection refused"; the errno's own words are the specific part.
        if cause.errno:
            return os.strerror(cause.errno)
        if cause.strerror:
            return cause.strerror
    return exc.strerror or str(exc)


async def open_stream_to(
    target: "Address | trio.abc.Stream",
    limit: ConnectLimit,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[trio.abc.Stream, str]:
    """Connect to ``target`` (and do the TLS handshake) within ``limit``; return the stream and
    the peer's name for messages.  Raises UNAVAILABLE saying why it failed."""
    if isinstance(target, trio.abc.Stream):
        return target, format_peer(target)
    where = str(target)
    try:
        with trio.fail_at(limit.deadline):
            stream = await open_stream(target, deadline=limit.deadline)
    except trio.TooSlowError:
        raise RpcError(Status.UNAVAILABLE, f"cannot connect to {where}: no answer {limit}") from None
    except OSError as exc:
        raise RpcError(Status.UNAVAILABLE, f"cannot connect to {where}: {_os_reason(exc)}") from None
    if ssl_context is None:
        return stream, where
    # A Unix socket has no host name: check the certificate against "localhost", as gRPC does.
    hostname = server_hostname or (target.host if target.kind == "tcp" else "localhost")
    # ALPN names the wire, so that a server that also speaks gRPC on the port knows at once
    # (docs/PROTOCOL.md section 14); the context is the caller's, and says so to every server.
    ssl_context.set_alpn_protocols([ALPN_TRPC])
    tls = trio.SSLStream(stream, ssl_context, server_hostname=hostname)
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


class ConnectOptions:
    """How every connection of a channel is made: what ``open_client`` was given."""

    __slots__ = (
        "framer", "max_message_size", "max_frame_size", "stream_window", "connection_window",
        "max_incomplete_bytes", "ssl_context", "server_hostname", "keepalive_time", "keepalive_timeout",
        "connect_timeout", "timeout", "compression_threshold", "certfile", "keyfile",
    )
    framer: Any
    max_message_size: int
    max_frame_size: int
    stream_window: int
    connection_window: int
    max_incomplete_bytes: int | None
    ssl_context: ssl.SSLContext | None
    server_hostname: str | None
    keepalive_time: float | None
    keepalive_timeout: float
    connect_timeout: float
    timeout: float | None
    compression_threshold: int
    #: The client's certificate (PEM files) for mutual TLS over QUIC; over TCP it is in ssl_context.
    certfile: str | None
    keyfile: str | None

    def __init__(self, **options: Any) -> None:
        options.setdefault("compression_threshold", DEFAULT_COMPRESSION_THRESHOLD)
        options.setdefault("certfile", None)
        options.setdefault("keyfile", None)
        for name in self.__slots__:
            setattr(self, name, options.pop(name))
        if options:
            raise TypeError(f"unknown connect options: {sorted(options)}")


async def open_connection(target: "Address | trio.abc.Stream", options: ConnectOptions, limit: ConnectLimit) -> ClientConnection:
    """Connect to ``target`` and queue our preface; run the result with ``ClientConnection.run``.
    Raises UNAVAILABLE when the stream cannot be opened."""
    if isinstance(target, Address) and target.kind == "quic":
        from ..quic._transport import open_quic_connection  # qh3 is imported only for QUIC

        return await open_quic_connection(target, options, limit)
    stream, peer = await open_stream_to(target, limit, options.ssl_context, options.server_hostname)
    conn = Connection(
        "client",
        framer=options.framer,
        max_message_size=options.max_message_size,
        max_frame_size=options.max_frame_size,
        stream_window=options.stream_window,
        connection_window=options.connection_window,
        max_incomplete_bytes=options.max_incomplete_bytes,
        compression_threshold=options.compression_threshold,
    )
    conn.initiate()
    connection = ClientConnection(stream, conn, peer)
    if options.keepalive_time is not None:
        connection.keepalive = Keepalive(options.keepalive_time, options.keepalive_timeout, only_with_calls=True)
    return connection
