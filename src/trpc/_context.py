"""The call context: what a handler can learn about the call it is serving.

Inside a handler, :func:`current_call` returns the :class:`CallContext` of the call being served
(a ``contextvars.ContextVar``: each handler task has its own, and tasks the handler starts inherit
it).  Outgoing calls made from a handler read it too, to pass the reason for a cancellation on to
the next hop.
"""

from __future__ import annotations

import contextvars
import math
from typing import Any

import trio

from ._errors import LocalProtocolError
from ._status import Status

__all__ = ["CallContext", "current_call"]


class CallContext:
    """The server-side view of one call.

    Attributes:
        method: the method's wire name.
        peer: the client's address, as text (``"host:port"``, or a description for other streams).
        metadata: the request metadata the client sent (a dict of str to str or bytes);
            server interceptors may change it before the handler sees it.
        deadline: the call's deadline on this process's Trio clock (``math.inf`` for none).
        cardinality: the method's :class:`~trpc.Cardinality`.
        start_time: ``trio.current_time()`` when the call arrived (when the bytes that opened
            it were received).
        cancel_message: text the client sent with its cancellation.
    """

    __slots__ = (
        "method",
        "peer",
        "metadata",
        "deadline",
        "cardinality",
        "start_time",
        "_connection",
        "_stream_id",
        "_cancel_reason",
        "cancel_message",
        "_response_metadata",
        "_trailing_metadata",
    )

    def __init__(
        self,
        method: str,
        peer: str,
        metadata: dict[str, Any],
        deadline: float,
        cardinality: Any = None,
        start_time: float | None = None,
    ) -> None:
        self.method = method
        self.peer = peer
        self.metadata = metadata
        self.deadline = deadline
        self.cardinality = cardinality
        self.start_time = trio.current_time() if start_time is None else start_time
        self._connection: Any = None
        self._stream_id = 0
        self._cancel_reason: Status | None = None
        self.cancel_message = ""
        self._response_metadata: dict[str, Any] | None = None
        self._trailing_metadata: dict[str, Any] | None = None

    @property
    def cancel_reason(self) -> Status | None:
        """``None`` while the call runs; once it is being cancelled, why.

        CANCELLED: the caller's scope was cancelled.  DEADLINE_EXCEEDED: the caller's
        deadline, or the call's own deadline here, passed.  UNAVAILABLE: the client or its
        connection went away.  RESOURCE_EXHAUSTED: a request message was too large.
        """
        if self._cancel_reason is not None:
            return self._cancel_reason
        if self.deadline != math.inf:
            if trio.current_time() >= self.deadline:
                return Status.DEADLINE_EXCEEDED
        return None

    def _cancel(self, reason: Status, message: str) -> None:
        self._cancel_reason = reason
        self.cancel_message = message

    @property
    def peer_certificate(self) -> dict[str, Any] | None:
        """The client's TLS certificate (``ssl.SSLSocket.getpeercert()``'s dict) when the
        connection is TLS (over TCP, a Unix socket or QUIC) and the client presented one
        (mutual TLS), else None."""
        connection = self._connection
        if connection is None:
            return None
        certificate: dict[str, Any] | None = connection.peer_certificate()
        return certificate

    def time_remaining(self) -> float:
        """Seconds left before the deadline (``math.inf`` if there is none)."""
        if self.deadline == math.inf:
            return math.inf
        return max(0.0, self.deadline - trio.current_time())

    def send_headers(self, metadata: dict[str, str | bytes]) -> None:
        """Send response headers now (at most once, before the first response message).

        Raises:
            LocalProtocolError: headers or a response message were already sent, or the call
                has ended.
        """
        connection = self._connection
        if connection is None:
            raise LocalProtocolError("this call has no connection to send headers on")
        connection.send_headers(self._stream_id, metadata)

    def set_trailers(self, metadata: dict[str, str | bytes]) -> None:
        """Add trailing metadata, sent with the call's status."""
        if self._trailing_metadata is None:
            self._trailing_metadata = {}
        self._trailing_metadata.update(metadata)

    def __repr__(self) -> str:
        return f"<CallContext {self.method} from {self.peer}>"


_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar("trpc_current_call")


def current_call() -> CallContext:
    """The context of the call the current task is serving.

    Raises:
        RuntimeError: called outside a trpc handler.
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("trpc.current_call() is only available inside a trpc handler") from None


def _current_or_none() -> CallContext | None:
    return _current.get(None)
