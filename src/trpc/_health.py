"""The health service: gRPC's ``grpc.health.v1.Health`` semantics on trpc's wire.

Theory of operation
-------------------
Every :class:`~trpc.Server` owns one :class:`HealthRegistry`, the only holder of serving
statuses: a dict from service name to :class:`HealthStatus`.  The name ``""`` is the whole
server; each service the server was built with is registered under its full name (``kv.Store``,
as gRPC registers its services).  All are SERVING from the start;
``Server.set_health`` changes them, and ``Server.shutdown`` moves the registry to its final
state, every name NOT_SERVING, after which it changes no more.

Unless the server is built with ``health=False``, :class:`HealthService` (an ordinary
:class:`~trpc.Service`) is served beside the user's services: the service
``grpc.health.v1.Health`` with the methods ``Check`` and ``Watch``, whose paths are gRPC's.
Both take one argument, the service name.  The wire carries statuses as their names (text), the
``HealthStatus`` members' names; ``docs/PROTOCOL.md`` ("Health") is the contract.

A Watch keeps the last status it sent and sends the registry's current one whenever they
differ, so it never sends the same status twice in a row.  It waits for a change on a
``ParkingLot`` that every change wakes.  It coalesces: after each message it waits until the
client's credit has let the message go (``wait_until_sent`` on the server connection), and
only then reads the registry again, so a client that does not read makes the server hold at
most one status message for it, never a backlog of stale ones; the changes in between
collapse into the latest.

On shutdown every Watch sends its final status and ends (OK).  ``Server.shutdown`` waits for
that before its GOAWAY, except for watches still waiting for their client to take a message
(``_Watch.waiting_on_client``): a client that reads nothing must not hold back the shutdown.
"""

from __future__ import annotations

import enum
import logging
from contextlib import aclosing
from typing import Any, AsyncGenerator, AsyncIterator, Iterable

import trio

from ._context import current_call
from ._errors import RpcError
from ._service import Service, server_stream, unary
from ._status import Status

__all__ = ["HealthStatus", "HealthRegistry", "HealthService", "HEALTH_SERVICE", "CHECK_METHOD", "WATCH_METHOD"]

logger = logging.getLogger("trpc")

#: The health service's name, and the paths of its two methods: gRPC's.
HEALTH_SERVICE = "grpc.health.v1.Health"
CHECK_METHOD = f"{HEALTH_SERVICE}/Check"
WATCH_METHOD = f"{HEALTH_SERVICE}/Watch"


class HealthStatus(enum.IntEnum):
    """A service's serving status: gRPC's ``HealthCheckResponse.ServingStatus``, same numbers.
    On the trpc wire a status travels as its name (``"SERVING"``)."""

    #: The status is not known (a value a newer server may send that this side does not know).
    UNKNOWN = 0
    #: The service accepts calls.
    SERVING = 1
    #: The service does not accept calls now (it may later); every status after shutdown.
    NOT_SERVING = 2
    #: Watch only: no service of that name is registered (Check answers NOT_FOUND instead).
    SERVICE_UNKNOWN = 3

    @classmethod
    def parse(cls, value: "HealthStatus | str") -> "HealthStatus":
        """A status from a member or its name (``"SERVING"``).

        Raises:
            ValueError: a text that names no status.
            TypeError: anything else.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value]
            except KeyError:
                raise ValueError(f"no health status is named {value!r}") from None
        raise TypeError(f"a health status is a trpc.HealthStatus or its name, not {value!r}")

    @classmethod
    def from_wire(cls, name: Any) -> "HealthStatus":
        """The status for a name read off the wire; anything unknown becomes UNKNOWN."""
        if isinstance(name, str) and name in cls.__members__:
            return cls[name]
        return cls.UNKNOWN


class _Watch:
    """One running Watch, as the registry sees it."""

    __slots__ = ("waiting_on_client",)

    def __init__(self) -> None:
        #: Its last message is handed to the server and waits for the client's credit.
        self.waiting_on_client = False


class HealthRegistry:
    """The serving status of each service name on one server (see the module docstring)."""

    def __init__(self, services: Iterable[str] = ()) -> None:
        self._statuses: dict[str, HealthStatus] = dict.fromkeys(["", *services], HealthStatus.SERVING)
        #: Parked on by watches waiting for a status to change.
        self._changed = trio.lowlevel.ParkingLot()
        #: Parked on by a shutdown waiting for watches to send their final status.
        self._progress = trio.lowlevel.ParkingLot()
        self._watches: set[_Watch] = set()
        #: Set by ``shut_down``: every status is NOT_SERVING for good.
        self.final = False

    def get(self, service: str = "") -> HealthStatus:
        """The status of ``service``; SERVICE_UNKNOWN for a name never registered."""
        return self._statuses.get(service, HealthStatus.SERVICE_UNKNOWN)

    def set(self, service: str, status: HealthStatus | str) -> None:
        """Register ``service`` with ``status``, or change its status.  Ignored (logged at
        debug level) once the registry is final, as gRPC's health server does.

        Raises:
            TypeError: ``service`` is not text, or ``status`` is not a status.
            ValueError: ``status`` names no status, or is SERVICE_UNKNOWN (which only Watch
                reports, for a name never registered).
        """
        if not isinstance(service, str):
            raise TypeError(f"a service name is text, not {service!r}")
        status = HealthStatus.parse(status)
        if status is HealthStatus.SERVICE_UNKNOWN:
            raise ValueError("SERVICE_UNKNOWN is what Watch reports for a name never registered; it cannot be set")
        if self.final:
            logger.debug("trpc: health of %r not set to %s: the server is shutting down", service, status.name)
            return
        if self._statuses.get(service) is not status:
            self._statuses[service] = status
            self._changed.unpark_all()

    def shut_down(self) -> None:
        """Make every registered status NOT_SERVING, for good, and wake the watches."""
        self.final = True
        for service in self._statuses:
            self._statuses[service] = HealthStatus.NOT_SERVING
        self._changed.unpark_all()

    @property
    def watches(self) -> int:
        """Watch calls running now."""
        return len(self._watches)

    async def wait_for_watches(self) -> None:
        """After ``shut_down``: wait until every watch has sent its final status and ended,
        or waits for its client to take a message (see the module docstring)."""
        while not all(watch.waiting_on_client for watch in self._watches):
            await self._progress.park()

    async def watch(self, service: str) -> AsyncGenerator[HealthStatus, None]:
        """The statuses of ``service`` as a Watch sends them: the current one, then each
        change, never the same twice in a row, coalesced while the client does not read
        (must run inside the Watch handler: it waits on the call's credit); ends after the
        final status once the registry is final."""
        context = current_call()
        watch = _Watch()
        self._watches.add(watch)
        sent: HealthStatus | None = None
        try:
            while True:
                status = self.get(service)
                if status is sent:
                    if self.final:
                        return
                    await self._changed.park()
                    continue
                watch.waiting_on_client = True
                self._progress.unpark_all()
                yield status
                sent = status
                if not self.final:
                    # Coalescing: read the registry again only once the client has room.
                    await context._connection.wait_until_sent(context._stream_id)
                watch.waiting_on_client = False
        finally:
            self._watches.discard(watch)
            self._progress.unpark_all()


def _service_name(service: Any) -> str:
    if not isinstance(service, str):
        raise RpcError(Status.INVALID_ARGUMENT, f"the service name is text, not {type(service).__name__}")
    return service


class HealthService(Service, name=HEALTH_SERVICE):
    """The health service a :class:`~trpc.Server` serves unless built with ``health=False``.

    ``Check(service="")`` answers the status's name, or ends NOT_FOUND for a name never
    registered; ``Watch(service="")`` streams the status's name now and at each change.
    """

    def __init__(self, registry: HealthRegistry) -> None:
        self._registry = registry

    @unary(name="Check")
    async def check(self, service: str = "") -> str:
        status = self._registry.get(_service_name(service))
        if status is HealthStatus.SERVICE_UNKNOWN:
            raise RpcError(Status.NOT_FOUND, f"no service {service!r} is registered for health checks")
        return status.name

    @server_stream(name="Watch")
    async def watch(self, service: str = "") -> AsyncIterator[str]:
        async with aclosing(self._registry.watch(_service_name(service))) as statuses:
            async for status in statuses:
                yield status.name
