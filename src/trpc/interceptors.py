"""Ready-made interceptors: token authentication, logging and metrics.

Each is a few lines on top of :class:`trpc.ServerInterceptor` / :class:`trpc.ClientInterceptor`
and doubles as an example of writing one::

    server = trpc.Server(Greeter(), interceptors=[
        ServerLogging(), ServerMetrics(), ServerTokenAuth({"s3cret"}),
    ])
    async with trpc.open_client(address, interceptors=[ClientTokenAuth("s3cret")]) as client:
        print(await client.greet("Ada"))

Order matters: the first interceptor is outermost, so above, the logging and the metrics also
see the calls that authentication refuses.
"""

from __future__ import annotations

import abc
import bisect
import hmac
import logging
from typing import Any, Awaitable, Callable, Iterable

import trio

from ._context import CallContext
from ._errors import RpcError
from ._interceptors import CallDetails, ClientInterceptor, ServerInterceptor
from ._status import Status

__all__ = [
    "ServerTokenAuth",
    "ClientTokenAuth",
    "ServerLogging",
    "ClientLogging",
    "Metrics",
    "ServerMetrics",
    "ClientMetrics",
]


def status_of(exc: BaseException | None, call: CallContext | None = None) -> Status:
    """The status a call ends with when ``exc`` comes out of the handler (None: OK)."""
    if exc is None:
        return Status.OK
    if isinstance(exc, RpcError):
        return exc.status
    if isinstance(exc, trio.Cancelled):
        reason = call.cancel_reason if call is not None else None
        return reason or Status.CANCELLED
    return Status.INTERNAL


# ------------------------------------------------------------------------- authentication
class ServerTokenAuth(ServerInterceptor):
    """Refuse calls without a valid bearer token, with UNAUTHENTICATED.

    Args:
        tokens: the valid tokens, or a function ``token -> bool``.
        key: the metadata key carrying ``"<scheme> <token>"`` (default ``authorization``).
        scheme: the scheme word (default ``Bearer``).

    The token is compared in constant time; the handler sees the metadata without the token.
    """

    def __init__(self, tokens: Iterable[str] | Callable[[str], bool], *, key: str = "authorization",
                 scheme: str = "Bearer") -> None:
        if callable(tokens):
            self._check = tokens
        else:
            valid = [token.encode() for token in tokens]
            self._check = lambda token: any(hmac.compare_digest(token.encode(), v) for v in valid)
        self.key = key
        self.prefix = scheme + " "

    async def intercept(self, call: CallContext, proceed: Callable[[], Awaitable[Any]]) -> Any:
        value = call.metadata.pop(self.key, None)
        if not isinstance(value, str) or not value.startswith(self.prefix):
            raise RpcError(Status.UNAUTHENTICATED, f"missing {self.key} metadata ({self.prefix}<token>)")
        if not self._check(value[len(self.prefix):]):
            raise RpcError(Status.UNAUTHENTICATED, "invalid token")
        return await proceed()


class ClientTokenAuth(ClientInterceptor):
    """Send a bearer token with every call (the partner of :class:`ServerTokenAuth`)."""

    def __init__(self, token: str, *, key: str = "authorization", scheme: str = "Bearer") -> None:
        self.key = key
        self.value = f"{scheme} {token}"

    async def intercept(self, call: CallDetails, proceed: Callable[[], Awaitable[Any]]) -> Any:
        call.metadata[self.key] = self.value
        return await proceed()


# -------------------------------------------------------------------------------- logging
class _ServerObserver(ServerInterceptor, abc.ABC):
    """Times each call and works out its status; subclasses say what to do with that."""

    async def intercept(self, call: CallContext, proceed: Callable[[], Awaitable[Any]]) -> Any:
        start = trio.current_time()
        error: BaseException | None = None
        try:
            return await proceed()
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.observe(call, status_of(error, call), trio.current_time() - start)

    @abc.abstractmethod
    def observe(self, call: CallContext, status: Status, seconds: float) -> None:
        """Called once per call, when it has ended."""


class ServerLogging(_ServerObserver):
    """Log one line per call: method, peer, status and duration (INFO; errors at WARNING)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("trpc.calls")

    def observe(self, call: CallContext, status: Status, seconds: float) -> None:
        self.logger.log(
            logging.INFO if status is Status.OK else logging.WARNING,
            "%s from %s: %s in %.1f ms", call.method, call.peer, status.name, seconds * 1000,
        )


class ClientLogging(ClientInterceptor):
    """Log one line per call when it ends, whatever its shape: method, status, duration."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("trpc.calls")

    async def intercept(self, call: CallDetails, proceed: Callable[[], Awaitable[Any]]) -> Any:
        call.add_done_callback(self._log)
        return await proceed()

    def _log(self, call: CallDetails) -> None:
        status = call.status
        assert status is not None  # a done callback: the call has ended
        self.logger.log(
            logging.INFO if status is Status.OK else logging.WARNING,
            "call %s: %s in %.1f ms", call.method, status.name, call.elapsed * 1000,
        )


# -------------------------------------------------------------------------------- metrics
class Metrics:
    """Per-method call counts, errors by status and a latency histogram, read in process.

    ``snapshot()`` returns ``{method: {"count": n, "errors": {"NOT_FOUND": n, ...},
    "latency_buckets": {upper_bound_seconds: n, ..., "inf": n}, "latency_sum": seconds}}``.
    The buckets are cumulative-free (each call counts in exactly one bucket).
    """

    #: Upper bounds of the latency buckets, in seconds (100 us to 10 s, roughly x2.5 apart).
    BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        self._methods: dict[str, dict[str, Any]] = {}

    def record(self, method: str, status: Status, seconds: float) -> None:
        """Count one call of ``method`` that ended with ``status`` after ``seconds``."""
        entry = self._methods.get(method)
        if entry is None:
            entry = self._methods[method] = {
                "count": 0, "errors": {}, "buckets": [0] * (len(self.BUCKETS) + 1), "sum": 0.0,
            }
        entry["count"] += 1
        entry["sum"] += seconds
        entry["buckets"][bisect.bisect_left(self.BUCKETS, seconds)] += 1
        if status is not Status.OK:
            entry["errors"][status.name] = entry["errors"].get(status.name, 0) + 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The counts so far, per method, in the shape the class docstring gives (a copy)."""
        out = {}
        for method, entry in self._methods.items():
            bounds = [*self.BUCKETS, "inf"]
            out[method] = {
                "count": entry["count"],
                "errors": dict(entry["errors"]),
                "latency_buckets": dict(zip(bounds, entry["buckets"])),
                "latency_sum": entry["sum"],
            }
        return out


class ServerMetrics(_ServerObserver, Metrics):
    """:class:`Metrics` of the calls a server handles."""

    def __init__(self) -> None:
        Metrics.__init__(self)

    def observe(self, call: CallContext, status: Status, seconds: float) -> None:
        self.record(call.method, status, seconds)


class ClientMetrics(ClientInterceptor, Metrics):
    """:class:`Metrics` of the calls a client makes (every shape, recorded when they end)."""

    def __init__(self) -> None:
        Metrics.__init__(self)

    async def intercept(self, call: CallDetails, proceed: Callable[[], Awaitable[Any]]) -> Any:
        call.add_done_callback(self._record_done)
        return await proceed()

    def _record_done(self, call: CallDetails) -> None:
        assert call.status is not None  # a done callback: the call has ended
        self.record(call.method, call.status, call.elapsed)
