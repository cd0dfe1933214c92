"""Interceptors: code wrapped around every call, on the server and on the client.

Theory of operation
-------------------
An interceptor is an object with ``async def intercept(self, call, proceed)``.  It runs *around*
the call: it may look at and change the call (method, metadata, timeout), refuse it by raising
:class:`~trpc.RpcError` before calling ``await proceed()``, and see the outcome: what
``proceed()`` returns or raises, and how long it took.  Interceptors form a chain in the order
given, the first one outermost.

On the server, ``call`` is the :class:`~trpc.CallContext`, ``proceed()`` runs the handler to the
end (for every call shape: a streaming handler's messages are all sent when it returns) and
returns the handler's result (None for server- and bidi-streaming).  Interceptors run in the
handler's task, inside its cancel scope: they see the deadline and cancellation exactly as the
handler does (``trio.Cancelled`` comes out of ``proceed()``).

On the client, ``call`` is a :class:`CallDetails`.  For a call that is awaited (unary,
client-streaming) ``proceed()`` makes the call and returns its result.  For a stream the caller
drives itself (server-streaming, bidi, ``method.open()``), ``proceed()`` opens the stream and
returns the :class:`~trpc.ClientStream`; the end of the call is reported to callbacks registered
with :meth:`CallDetails.add_done_callback`, which fire once for every shape.  Client interceptors
run in the caller's task, under the caller's cancel scopes.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import trio

from ._status import Status

__all__ = ["ServerInterceptor", "ClientInterceptor", "CallDetails"]


class ServerInterceptor:
    """Base class for server interceptors (subclass and override :meth:`intercept`)."""

    async def intercept(self, call: Any, proceed: Callable[[], Awaitable[Any]]) -> Any:
        """Wrap one call.  The default just proceeds.

        Args:
            call: the :class:`~trpc.CallContext`; ``call.metadata`` may be changed in place.
            proceed: runs the rest of the chain and the handler; returns its result.

        Raises:
            RpcError: to refuse the call (before proceeding) or change its outcome.
        """
        return await proceed()


class ClientInterceptor:
    """Base class for client interceptors (subclass and override :meth:`intercept`)."""

    async def intercept(self, call: "CallDetails", proceed: Callable[[], Awaitable[Any]]) -> Any:
        """Wrap one call.  The default just proceeds.

        Args:
            call: the :class:`CallDetails`; its ``metadata`` and ``timeout`` may be changed.
            proceed: makes the call (awaited calls: returns the result; streams: returns the
                opened :class:`~trpc.ClientStream`).
        """
        return await proceed()


class CallDetails:
    """The client-side description of one call, as interceptors see it.

    Attributes:
        method: the method's wire name.
        metadata: request metadata (a fresh dict per call: change it freely).
        timeout: the call's own timeout in seconds, or None (the caller's scopes still apply).
        streaming: False for an awaited call (unary, client-streaming), True for a stream the
            caller drives (server-streaming, bidi).
        start_time: ``trio.current_time()`` when the call started.
        status: the final :class:`~trpc.Status` once the call has ended, else None.
    """

    __slots__ = ("method", "metadata", "timeout", "streaming", "start_time", "status", "message", "_callbacks")

    def __init__(self, method: str, metadata: dict[str, Any], timeout: float | None, streaming: bool) -> None:
        self.method = method
        self.metadata = metadata
        self.timeout = timeout
        self.streaming = streaming
        self.start_time = trio.current_time()
        self.status: Status | None = None
        self.message = ""
        self._callbacks: list[Callable[["CallDetails"], Any]] = []

    def add_done_callback(self, callback: Callable[["CallDetails"], Any]) -> None:
        """Call ``callback(details)`` once when the call ends (``details.status`` is then set)."""
        self._callbacks.append(callback)

    @property
    def elapsed(self) -> float:
        """Seconds since the call started."""
        return trio.current_time() - self.start_time

    def _done(self, status: Status, message: str = "") -> None:
        if self.status is not None:
            return
        self.status = status
        self.message = message
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def __repr__(self) -> str:
        return f"<CallDetails {self.method} status={self.status}>"


async def run_chain(interceptors: tuple[Any, ...], call: Any, invoke: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``invoke`` inside the chain of interceptors, the first one outermost."""

    async def proceed_from(index: int) -> Any:
        if index == len(interceptors):
            return await invoke()
        return await interceptors[index].intercept(call, lambda: proceed_from(index + 1))

    return await proceed_from(0)
