"""The channel: a client's set of backends, their states, and which one a call goes to.

Theory of operation
-------------------
A :class:`Channel` owns a resolver (:mod:`._resolver`), one :class:`~._subchannel.Subchannel`
per backend (one for all of them under ``pick_first``), and the tasks that keep them up, all in
the nursery of ``open_client``.  Its state is gRPC's aggregate of its subchannels' states: READY
if any is, else CONNECTING if any is, else TRANSIENT_FAILURE if any is, else IDLE; SHUTDOWN once
closed.

Subchannels tell the channel of every change, synchronously (``subchannel_changed``); the
channel then rebuilds ``ready``, the list of usable connections in backend order, which is all a
call needs: :meth:`Channel.pick` is one balancer step over that list, with no lock, lookup or
allocation.  A call that finds the list empty goes the slow way (:meth:`Channel.wait_for_pick`):
it fails at once with UNAVAILABLE, naming the last connection error, when the channel is in
TRANSIENT_FAILURE and the call does not wait for ready; otherwise it waits for a change of state
within its deadline.

Balancers (``load_balancing=``):

- ``pick_first``: one connection, to the first address (in the resolver's order) that answers;
  when it is lost, the addresses are tried again from the top.
- ``round_robin``: a connection to every backend; calls go to the READY ones in turn.
- ``least_loaded``: a connection to every backend; each call looks at two READY backends chosen
  at random and goes to the one with fewer calls in flight (the "power of two choices"): a slow
  backend accumulates calls, so it gets fewer new ones, without any global scan.

A stream stays on the connection it started on: picking happens once per call (per attempt).
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any, Callable

import trio

from .._config import Backoff, ConnectionBackoff
from .._errors import RpcError
from .._status import Status
from ._connection import ClientConnection, ConnectOptions
from ._resolver import DNS_MIN_INTERVAL, Resolver, StaticResolver
from ._subchannel import ConnectivityState, Subchannel

__all__ = ["Channel", "LOAD_BALANCING_POLICIES"]

logger = logging.getLogger("trpc")

_S = ConnectivityState
LOAD_BALANCING_POLICIES = ("pick_first", "round_robin", "least_loaded")


class Channel:
    """See the module's docstring.  Made and closed by ``open_client``."""

    def __init__(
        self,
        resolver: Resolver | None,
        options: ConnectOptions,
        *,
        stream: trio.abc.Stream | None = None,
        load_balancing: str = "pick_first",
        backoff: ConnectionBackoff | None = None,
        health_check: bool = False,
        health_service: str = "",
        rng: random.Random | None = None,
    ) -> None:
        if load_balancing not in LOAD_BALANCING_POLICIES:
            raise ValueError(f"load_balancing must be one of {', '.join(LOAD_BALANCING_POLICIES)}, got {load_balancing!r}")
        self.resolver = resolver
        self.options = options
        self.load_balancing = load_balancing
        self.backoff = backoff or ConnectionBackoff()
        self.health_check = health_check
        self.health_service = health_service
        self.random = rng or random.Random()
        #: A caller's stream: one connection, never re-made.
        self._stream = stream
        self.single_use = stream is not None
        self._nursery: trio.Nursery | None = None
        self.subchannels: list[Subchannel] = []
        #: Every connection still open, usable or draining.
        self.connections: set[ClientConnection] = set()
        #: Usable connections of READY subchannels, in backend order: what calls pick from.
        self.ready: list[ClientConnection] = []
        self._state = _S.IDLE
        self._changed = trio.Event()
        self._next = 0
        self._resolve_error: str | None = None
        self._resolve_now = trio.Event()
        self._last_resolution = -math.inf
        self._warned: set[str] = set()
        self.pick: Callable[[], ClientConnection | None] = getattr(self, "_pick_" + load_balancing)

    def __str__(self) -> str:
        return str(self.resolver) if self.resolver is not None else "the given stream"

    def new_backoff(self) -> Backoff:
        return Backoff(self.backoff, self.random)

    # ------------------------------------------------------------------ running
    @property
    def nursery(self) -> trio.Nursery:
        """The nursery :meth:`start` was given: the subchannels, their connections and a
        bidi call's sending task run there."""
        if self._nursery is None:
            raise RuntimeError("the channel has not been started")
        return self._nursery

    def start(self, nursery: trio.Nursery) -> None:
        """Start resolving and connecting, in ``nursery`` (the client's)."""
        self._nursery = nursery
        if self._stream is not None:
            self._set_targets([[self._stream]])
        else:
            nursery.start_soon(self._resolve_loop)

    async def _resolve_loop(self) -> None:
        resolver = self.resolver
        assert resolver is not None  # started only for a channel that resolves
        while True:
            self._last_resolution = trio.current_time()
            self._resolve_now = trio.Event()
            try:
                addresses = await resolver.resolve()
            except OSError as exc:
                self._resolve_error = f"cannot resolve {resolver}: {exc}"
                logger.warning("trpc: %s", self._resolve_error)
                if not self.subchannels:
                    self._update_state()
            else:
                self._resolve_error = None
                if self.load_balancing == "pick_first":
                    self._set_targets([addresses])
                else:
                    self._set_targets([[address] for address in addresses])
            if isinstance(resolver, StaticResolver) or resolver.refresh is None:
                return
            with trio.move_on_at(self._last_resolution + resolver.refresh):
                await self._resolve_now.wait()
            await trio.sleep_until(self._last_resolution + DNS_MIN_INTERVAL)

    def request_resolution(self) -> None:
        """A backend failed: resolve the name again soon (a no-op for static targets)."""
        self._resolve_now.set()

    def _set_targets(self, groups: list[list[Any]]) -> None:
        """Make the subchannels match ``groups`` (one list of targets per subchannel): keep
        those whose targets did not change, start new ones, shut down the rest."""
        old = {tuple(map(str, sub.targets)): sub for sub in self.subchannels}
        subchannels = []
        for targets in groups:
            key = tuple(map(str, targets))
            sub = old.pop(key, None)
            if sub is None:
                sub = Subchannel(self, targets)
                self.nursery.start_soon(sub.run)
            subchannels.append(sub)
        self.subchannels = subchannels
        for sub in old.values():
            sub.shutdown()
        self.subchannel_changed(None)

    # ------------------------------------------------------------------ state
    def subchannel_changed(self, subchannel: Subchannel | None) -> None:
        """Rebuild the ready list and the channel's state (called on every change)."""
        if self.state is _S.SHUTDOWN:
            return
        self.ready = [
            sub.connection
            for sub in self.subchannels
            if sub.state is _S.READY and sub.connection is not None and sub.connection.usable
        ]
        self._update_state()

    def _update_state(self) -> None:
        states = {sub.state for sub in self.subchannels}
        if self.ready:
            state = _S.READY
        elif _S.CONNECTING in states or (not states and self._resolve_error is None):
            state = _S.CONNECTING
        elif _S.TRANSIENT_FAILURE in states or self._resolve_error is not None:
            state = _S.TRANSIENT_FAILURE
        else:
            state = _S.IDLE
        self._set_state(state)
        if self.ready:
            # Waiters want a connection, not only a state: wake them on every new list.
            self._wake()

    @property
    def state(self) -> ConnectivityState:
        """The channel's connectivity state (see the module's docstring)."""
        return self._state

    def _set_state(self, state: ConnectivityState) -> None:
        if state is not self._state:
            self._state = state
            self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_for_change(self) -> None:
        """Wait for the next change of state or of the ready list."""
        await self._changed.wait()

    @property
    def last_error(self) -> str:
        """Why no backend is ready, for UNAVAILABLE errors."""
        if self._resolve_error is not None and not self.subchannels:
            return self._resolve_error
        errors = [sub.last_error for sub in self.subchannels if sub.last_error]
        if not errors:
            return f"no backend of {self} is ready"
        if len(self.subchannels) == 1:
            return errors[-1]
        return f"no backend of {self} is ready (last error: {errors[-1]})"

    def unavailable(self) -> RpcError:
        if self.state is _S.SHUTDOWN:
            return RpcError(Status.UNAVAILABLE, "the client is closed")
        return RpcError(Status.UNAVAILABLE, self.last_error)

    def settled(self) -> bool:
        """READY, or every backend has had one attempt (what ``open_client`` waits for)."""
        if self.state in (_S.READY, _S.SHUTDOWN):
            return True
        if self._resolve_error is not None and not self.subchannels:
            return True
        return bool(self.subchannels) and all(sub.attempted for sub in self.subchannels)

    def warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    # ------------------------------------------------------------------ picking
    def _pick_pick_first(self) -> ClientConnection | None:
        ready = self.ready
        return ready[0] if ready else None

    def _pick_round_robin(self) -> ClientConnection | None:
        ready = self.ready
        if not ready:
            return None
        index = self._next
        self._next = index + 1
        return ready[index % len(ready)]

    def _pick_least_loaded(self) -> ClientConnection | None:
        ready = self.ready
        count = len(ready)
        if count < 2:
            return ready[0] if ready else None
        first = int(self.random.random() * count)
        second = int(self.random.random() * (count - 1))
        if second >= first:
            second += 1
        a, b = ready[first], ready[second]
        return a if a.conn.open_streams <= b.conn.open_streams else b

    async def wait_for_pick(self, wait_for_ready: bool) -> ClientConnection:
        """A connection for a call, waiting as the channel's state and ``wait_for_ready`` say
        (see the module's docstring); raises UNAVAILABLE.  The caller's scope bounds the wait."""
        while True:
            connection = self.pick()
            if connection is not None:
                return connection
            if self.state is _S.SHUTDOWN or (not wait_for_ready and self.state is _S.TRANSIENT_FAILURE):
                # Failing fast still yields (a Trio checkpoint): a caller that retries in a loop
                # must not starve the tasks that would reconnect the channel.
                await trio.lowlevel.checkpoint()
                raise self.unavailable()
            await self._changed.wait()

    async def wait_for_state(self, state: ConnectivityState) -> None:
        while self.state is not state:
            if self.state is _S.SHUTDOWN:
                raise RpcError(Status.UNAVAILABLE, "the client is closed")
            await self._changed.wait()

    # ------------------------------------------------------------------ ending
    def connection_ended(self, connection: ClientConnection) -> None:
        pass

    async def aclose(self) -> None:
        """Close every connection (their calls end with UNAVAILABLE) and stop the subchannels."""
        for sub in self.subchannels:
            sub.shutdown()
        self.ready = []
        self._set_state(_S.SHUTDOWN)
        with trio.CancelScope(shield=True):
            connections = list(self.connections)
            if connections:
                async with trio.open_nursery() as nursery:
                    for connection in connections:
                        nursery.start_soon(connection.aclose)
