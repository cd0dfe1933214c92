"""Subchannels: one backend's connection, kept up with backoff, and its connectivity state.

Theory of operation
-------------------
A :class:`Subchannel` owns the connection to one backend (for ``pick_first``, to the first of an
ordered list of addresses that answers) and one task, :meth:`Subchannel.run`, in the channel's
nursery.  The task loops: connect; while the connection is usable, be READY; when it stops
being usable (the server's GOAWAY, a broken stream, a keepalive that got no answer), connect
again at once, while the old connection drains its calls on its own.

States are gRPC's (:class:`ConnectivityState`).  A connection attempt that fails makes the
subchannel TRANSIENT_FAILURE, and it stays so, "sticky", through the next attempts until one
succeeds (as gRPC's balancers report it since gRFC A62): callers that do not wait for ready fail
at once instead of waiting on attempts that have been failing.  Between attempts it waits as
gRPC's connection-backoff algorithm says: each attempt gets a deadline ``now + backoff``; an
attempt may take ``max(backoff, connect_timeout)``; after a failure the next attempt starts at
that deadline; the backoff grows by the multiplier up to the maximum, with jitter, and is reset
by a success (:class:`trpc._config.Backoff` computes the delays).

With ``health_check``, a READY connection counts only while the server's health service says
SERVING for the configured service name: a ``Watch`` call runs on the connection for as long as it
lives.  A server without a health service (UNIMPLEMENTED) is taken as serving, and logged once.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Any

import trio

from .._codec import decode, encode_arguments
from .._errors import RpcError
from .._health import WATCH_METHOD, HealthStatus
from .._status import Status
from ..wire._connection import message_size
from ._connection import ClientCall, ClientConnection, ConnectLimit, open_connection

if TYPE_CHECKING:
    from ._channel import Channel

__all__ = ["ConnectivityState", "Subchannel"]

logger = logging.getLogger("trpc")



class ConnectivityState(enum.Enum):
    """gRPC's connectivity states, of a subchannel and of a whole channel."""

    #: Not connected, and not trying yet.
    IDLE = "idle"
    #: A connection attempt is under way.
    CONNECTING = "connecting"
    #: Connected: calls can start.
    READY = "ready"
    #: The last attempt failed; the next one waits for the backoff (calls that do not wait for
    #: ready fail at once).
    TRANSIENT_FAILURE = "transient_failure"
    #: Closed for good.
    SHUTDOWN = "shutdown"


_S = ConnectivityState


class Subchannel:
    """One backend of a channel (see the module's docstring)."""

    def __init__(self, channel: "Channel", targets: list[Any]) -> None:
        self._channel = channel
        #: Where to connect, in order: addresses, or a single already connected stream.
        self.targets = targets
        self._state = _S.IDLE
        #: The usable connection while READY (or while waiting for health), else None.
        self.connection: ClientConnection | None = None
        #: Why the last attempt failed or the last connection ended, for UNAVAILABLE errors.
        self.last_error: str | None = None
        #: Whether the health service says SERVING (always True without health checks).
        self.serving = not channel.health_check
        self._backoff = channel.new_backoff()
        self._failing = False
        self._attempts = 0
        self._scope = trio.CancelScope()
        self._lost = trio.Event()
        #: The running health watch's scope: it ends with the connection's usefulness, so
        #: that a connection told to go away can drain.
        self._health_scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<Subchannel {','.join(map(str, self.targets))} {self.state.name}>"

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> ConnectivityState:
        return self._state

    def _set(self, state: ConnectivityState) -> None:
        if state is not self._state:
            self._state = state
            self._channel.subchannel_changed(self)

    @property
    def attempted(self) -> bool:
        """At least one connection attempt has finished (either way)."""
        return self._attempts > 0

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        """Connect, stay connected, reconnect: until ``shutdown()``."""
        channel = self._channel
        with self._scope:
            while True:
                now = trio.current_time()
                delay = self._backoff.next_delay()
                attempt_deadline = now + delay
                self._set(_S.TRANSIENT_FAILURE if self._failing else _S.CONNECTING)
                connection = await self._connect(now, delay)
                self._attempts += 1
                if connection is None:
                    self._failing = True
                    self._set(_S.TRANSIENT_FAILURE)
                    channel.request_resolution()
                    if channel.single_use:
                        return  # a stream given by the caller cannot be opened again
                    await trio.sleep_until(attempt_deadline)
                    continue
                self._failing = False
                self._backoff.reset()
                self.connection = connection
                self._lost = trio.Event()
                connection.on_unusable = self._connection_unusable
                if not connection.usable:  # a GOAWAY that came with the preface
                    self._lost.set()
                if channel.health_check:
                    self.serving = False
                    self._health_scope = trio.CancelScope()
                    channel.nursery.start_soon(self._watch_health, connection, self._health_scope)
                self._set(_S.READY if self.serving else _S.CONNECTING)
                await self._lost.wait()
                self.connection = None
                if connection.broken is not None:
                    self.last_error = f"connection to {connection.peer} lost: {connection.broken}"
                    channel.request_resolution()
                if channel.single_use:
                    self._set(_S.TRANSIENT_FAILURE)
                    return
                self._set(_S.IDLE)

    async def _connect(self, now: float, delay: float) -> ClientConnection | None:
        """One attempt: each target in order until one answers; None if none did."""
        channel = self._channel
        options = channel.options
        for target in self.targets:
            # gRPC's rule: an attempt may take the longer of the backoff and the minimum
            # connect timeout; trpc's own: a client timeout= that is shorter bounds it.
            seconds = channel.backoff.attempt_timeout(delay, options.connect_timeout)
            setting = "connect_timeout" if channel.backoff.min_connect_timeout is None else "minConnectTimeout"
            if seconds > channel.backoff.attempt_timeout(0, options.connect_timeout):
                setting = "the connection backoff"
            if options.timeout is not None and options.timeout < seconds:
                seconds, setting = options.timeout, "timeout"
            limit = ConnectLimit(trio.current_time() + seconds, seconds, setting)
            try:
                connection = await open_connection(target, options, limit)
                await channel.nursery.start(self._run_connection, connection, limit)
            except RpcError as exc:
                self.last_error = exc.message
                logger.debug("trpc: %s", exc.message)
                continue
            return connection
        return None

    async def _run_connection(self, connection: ClientConnection, limit: ConnectLimit, *, task_status: Any) -> None:
        channel = self._channel
        channel.connections.add(connection)
        try:
            await connection.run(limit, task_status=task_status)
        finally:
            channel.connections.discard(connection)
            channel.connection_ended(connection)

    def _connection_unusable(self, connection: ClientConnection) -> None:
        """The connection stopped taking calls (synchronously, from its reader or a closer)."""
        if connection is self.connection:
            self.connection = None
            self._lost.set()
            self._stop_health()
            self._set(_S.IDLE)

    def _stop_health(self) -> None:
        if self._health_scope is not None:
            self._health_scope.cancel()
            self._health_scope = None

    def shutdown(self) -> None:
        """Stop for good; a connection drains its calls and then closes by itself."""
        self._scope.cancel()
        self._stop_health()
        connection = self.connection
        self.connection = None
        if connection is not None:
            connection.on_unusable = None
            connection.usable = False
            connection.check_drained()
        self._set(_S.SHUTDOWN)

    # ------------------------------------------------------------------ health
    async def _watch_health(self, connection: ClientConnection, scope: trio.CancelScope) -> None:
        """Follow the server's health for as long as the connection is usable."""
        channel = self._channel
        call = ClientCall(0, connection)
        with scope:
            await self._follow_health(connection, call)
        if scope.cancelled_caught:
            return
        connection.calls.pop(call.id, None)
        if call.status is Status.UNIMPLEMENTED:
            channel.warn_once(
                "health", "trpc: %s has no health service; health checks are off for it", connection.peer
            )
            self._health(connection, True)
        elif connection is self.connection and connection.broken is None:
            # The watch ended while the connection lives on: no longer known to be serving.
            logger.warning("trpc: health watch on %s ended: %s %s", connection.peer, call.status, call.message)
            self._health(connection, False)

    async def _follow_health(self, connection: ClientConnection, call: ClientCall) -> None:
        channel = self._channel
        try:
            call.id = connection.open_call(WATCH_METHOD, None, None)
            connection.calls[call.id] = call
            connection.send_message(call.id, encode_arguments((channel.health_service,), {}), end_stream=True)
            while True:
                while not call.inbox and call.status is None:
                    await call.wakeup.park()
                if not call.inbox:
                    break
                payload = call.inbox.popleft()
                connection.consumed(call.id, message_size(payload))
                self._health(connection, HealthStatus.from_wire(decode(payload)) is HealthStatus.SERVING)
        except trio.Cancelled:
            if call.status is None and connection.broken is None:
                connection.calls.pop(call.id, None)
                connection.cancel(call.id, Status.CANCELLED, "the health check stopped")
                if not connection.usable:
                    connection.check_drained()
            raise
        except Exception as exc:  # a connection that refused the call, a reply we cannot read
            call.status = call.status or Status.INTERNAL
            call.message = call.message or repr(exc)

    def _health(self, connection: ClientConnection, serving: bool) -> None:
        if connection is not self.connection:
            return
        self.serving = serving
        self._set(_S.READY if serving else _S.TRANSIENT_FAILURE)
