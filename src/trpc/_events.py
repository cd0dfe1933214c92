"""Events: what the sans-IO connection reports after it has parsed received bytes.

``Connection.receive_data(data)`` returns a list of these.  They are small keyword-only
dataclasses with slots (h11/h2 style): plain data, no behaviour.  Treat them as read-only; they
are not ``frozen`` only because a frozen dataclass costs twice as much to create, and several
are created per call.  Which side can see which event is noted on each class; the full rules
are in ``docs/PROTOCOL.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._status import Status

__all__ = [
    "Event",
    "PrefaceReceived",
    "CallOpened",
    "HeadersReceived",
    "MessagesReceived",
    "StreamEnded",
    "CallEnded",
    "CallCancelled",
    "SendCreditAvailable",
    "PingReceived",
    "PingAcknowledged",
    "GoAwayReceived",
    "ConnectionClosed",
]

_EVENT = dict(slots=True, kw_only=True)


class Event:
    """Base class of every event."""

    __slots__ = ()


@dataclass(**_EVENT)
class PrefaceReceived(Event):
    """The peer's preface arrived and was valid (both sides)."""

    version: tuple[int, int]
    max_frame_size: int
    initial_window: int


@dataclass(**_EVENT)
class CallOpened(Event):
    """The client opened a call (server side).

    ``timeout`` is the time the client had left, in seconds, when it sent the call, or ``None``
    for no deadline.  ``end_stream`` is true when the client will send no request message.
    """

    stream_id: int
    method: str
    metadata: dict[str, str | bytes]
    timeout: float | None
    end_stream: bool = False


@dataclass(**_EVENT)
class HeadersReceived(Event):
    """The server sent response headers, before any response message (client side)."""

    stream_id: int
    metadata: dict[str, str | bytes]


@dataclass(**_EVENT)
class MessagesReceived(Event):
    """Complete messages arrived on a stream (both sides), in order.

    ``payloads`` holds each message's encoded bytes (reassembled if it spanned several DATA
    frames): all the consecutive messages one ``receive_data`` call found for the stream, so
    that a stream of small messages costs one event per received chunk, not one per message.
    A message that came as a small head frame then a large body frame is the list
    ``[head, body]`` rather than their concatenation (``trpc._codec.decode`` takes either;
    ``message_size`` gives its length).
    The receiver must call ``Connection.consumed(stream_id, nbytes)`` as its application takes
    them, or the peer's send credit for the stream runs out.
    """

    stream_id: int
    payloads: list[bytes]


@dataclass(**_EVENT)
class StreamEnded(Event):
    """The client half-closed its direction: it sends no more messages (server side)."""

    stream_id: int


@dataclass(**_EVENT)
class CallEnded(Event):
    """The call ended with a status (client side).

    Usually the server's trailers; also produced locally when the connection must end a call
    itself (a response message over the size limit ends it with RESOURCE_EXHAUSTED).
    """

    stream_id: int
    status: Status
    message: str = ""
    details: Any = None
    metadata: dict[str, str | bytes] = field(default_factory=dict)


@dataclass(**_EVENT)
class CallCancelled(Event):
    """The call must stop (server side): the client cancelled it, or the connection ended it.

    ``reason`` says why: CANCELLED (the caller's cancel scope), DEADLINE_EXCEEDED (the caller's
    deadline), UNAVAILABLE (the client is shutting down), RESOURCE_EXHAUSTED (a request message
    over the size limit; trailers were already queued).
    """

    stream_id: int
    reason: Status
    message: str = ""


@dataclass(**_EVENT)
class SendCreditAvailable(Event):
    """Queued outgoing data on this stream went out after the peer granted credit (both sides)."""

    stream_id: int


@dataclass(**_EVENT)
class PingReceived(Event):
    """The peer pinged; the acknowledgement is already queued (both sides)."""

    payload: bytes


@dataclass(**_EVENT)
class PingAcknowledged(Event):
    """The peer acknowledged one of our pings (both sides)."""

    payload: bytes


@dataclass(**_EVENT)
class GoAwayReceived(Event):
    """The peer is going away (both sides).

    Calls with ``stream_id <= last_stream_id`` will still be completed by the peer; later ones
    were never processed and are safe to retry elsewhere.
    """

    last_stream_id: int
    status: Status
    message: str = ""


@dataclass(**_EVENT)
class ConnectionClosed(Event):
    """The peer closed the byte stream cleanly, at a frame boundary (both sides)."""
