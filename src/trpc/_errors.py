"""trpc's exception hierarchy, rooted in one class.

Everything trpc raises on purpose derives from :class:`TrpcError`:

- :class:`RpcError` is the *expected* outcome of a call that did not succeed: it carries a
  :class:`~trpc.Status`, a message and optional details, exactly as the peer (or the local
  client, for deadlines and lost connections) reported them.
- :class:`ProtocolError` means the bytes on the wire broke the rules in ``docs/PROTOCOL.md``.
  :class:`RemoteProtocolError` is raised when the *peer* broke them (garbage, oversize or
  truncated frames, frames in the wrong state); :class:`LocalProtocolError` when local code asked
  the protocol core for something the rules forbid.  The framer's errors are remote protocol
  errors with their own subclasses so tests (and users) can tell them apart.
- :class:`ConfigError` means a client configuration (``docs/CONFIG.md``) broke its rules; it is
  also a ``ValueError``, and names the JSON path of the bad value.
- :class:`UsageError` means the calling code used a method in a way it cannot be called: the
  wrong call shape (``await`` on a server-streaming method, ``async for`` over a unary one), a
  per-call option where an argument was meant.  Nothing was sent.  It is also a ``TypeError``,
  as Python's own error for a call that does not fit the function.
- :class:`TransportError` wraps failures of the underlying byte stream (Trio's
  ``BrokenResourceError``, ``ClosedResourceError``, ``OSError``); they are translated in one
  place, the Trio transport layer, and never leak from the public API in their raw form.
- :class:`ProtoMappingError` means a method's types have no protobuf mapping (docs/PROTOCOL.md,
  "gRPC: protobuf mapping"); the message names the method, the parameter and the type.
- :class:`WorkerStartError` means ``trpc.serve_workers`` could not start its worker processes
  (a factory that does not import, a port in use); its message is the one-line reason.

This module imports nothing but the standard library so that the sans-IO core, the framers and
the Trio layer can all share it.
"""

from __future__ import annotations

from typing import Any

from ._status import Status

__all__ = [
    "TrpcError",
    "ConfigError",
    "RpcError",
    "ProtocolError",
    "LocalProtocolError",
    "MessageTooLargeError",
    "RemoteProtocolError",
    "FrameTooLargeError",
    "TruncatedFrameError",
    "TransportError",
    "WorkerStartError",
    "ProtoMappingError",
    "UsageError",
]


class TrpcError(Exception):
    """Base class of every exception trpc raises on purpose."""


class RpcError(TrpcError):
    """A call ended with a status other than OK.

    Attributes:
        status: the :class:`~trpc.Status` the call ended with.
        message: a human-readable explanation (may be empty).
        details: any CBOR-encodable value the server attached, or ``None``.
        trailers: trailing metadata the server sent with the status (a dict, may be empty).
    """

    def __init__(
        self,
        status: Status,
        message: str = "",
        details: Any = None,
        *,
        trailers: dict[str, Any] | None = None,
    ) -> None:
        status = Status(status)
        super().__init__(status, message, details)
        self.status = status
        self.message = message
        self.details = details
        self.trailers = trailers if trailers is not None else {}

    def __str__(self) -> str:
        text = f"{self.status.name}: {self.message}" if self.message else self.status.name
        if self.details is not None:
            text += f" (details: {self.details!r})"
        return text

    def __repr__(self) -> str:
        return f"RpcError({self.status!r}, {self.message!r}, {self.details!r})"


class ProtocolError(TrpcError):
    """The rules of the wire protocol (docs/PROTOCOL.md) were broken.

    Attributes:
        error_code: the status a GOAWAY reports this error with (by default the class's).
        events: (raised by ``Connection.receive_data``) the events of the frames received
            before the bad one, which the application should still handle.
        frames: (raised by a framer) the frames complete before the bad one.
    """

    #: The GOAWAY error code of this class's errors, unless the constructor says otherwise.
    error_code = Status.INTERNAL

    def __init__(self, message: str, *, error_code: Status | None = None, events: list[Any] | None = None,
                 frames: list[Any] | None = None) -> None:
        super().__init__(message)
        if error_code is not None:
            self.error_code = error_code
        self.events = [] if events is None else events
        self.frames = [] if frames is None else frames


class LocalProtocolError(ProtocolError):
    """Local code asked the protocol core for something the protocol forbids."""


class MessageTooLargeError(LocalProtocolError):
    """A message to send is larger than the peer accepts (its preface's max message size).

    The call layer reports it as RESOURCE_EXHAUSTED for that call; the connection is fine.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the peer's limit of {limit}")
        self.size = size
        self.limit = limit


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol; the connection cannot continue."""


class FrameTooLargeError(RemoteProtocolError):
    """A frame header announced a payload longer than the receiver's limit.

    Raised as soon as the header is read, before any of the payload is buffered.
    """

    error_code = Status.RESOURCE_EXHAUSTED


class TruncatedFrameError(RemoteProtocolError):
    """The byte stream ended in the middle of a frame."""


class ConfigError(TrpcError, ValueError):
    """A client configuration broke the rules of docs/CONFIG.md.

    Attributes:
        path: where, as a JSON path into the document (``methodConfig[2].retryPolicy.maxAttempts``);
            empty for the document as a whole.  Raised by the dataclasses themselves (built in
            Python, not from JSON), it is the field's Python name (``max_attempts``).
        reason: what is wrong with the value there.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path or 'config'}: {reason}")
        self.path = path
        self.reason = reason


class UsageError(TrpcError, TypeError):
    """A method was called in a way its call shape (or the call options) does not allow.

    Raised before anything is sent, by the client, when it knows the method's shape (the
    server's INFO frame declared it; docs/PROTOCOL.md section 3); its message names the form
    that fits: ``count is server-streaming: iterate it, async for item in client.count(...)``.
    Without that knowledge the client cannot tell, and the first wrong use fails with the
    server's answer instead (an :class:`RpcError`).
    """


class TransportError(TrpcError):
    """The underlying byte stream failed (reset, closed, unreachable)."""


class WorkerStartError(TrpcError):
    """``trpc.serve_workers`` could not start its workers; the message is the reason, one line
    (``cannot import app: No module named 'app'``, ``cannot listen on 127.0.0.1:50051: ...``)."""


class ProtoMappingError(TrpcError):
    """A method's parameters, return or a message's fields have no protobuf mapping
    (docs/PROTOCOL.md, "gRPC: protobuf mapping"), or protobuf is not installed.

    The message is one line: ``kv.Store/get: parameter 'key' is tuple[int, int]: a tuple has no
    protobuf type``.

    Attributes:
        path: the method's path (``"kv.Store/get"``), or ``""`` when no method is concerned.
        where: what could not be mapped (``"parameter 'key'"``, ``"return"``,
            ``"message shop.Order field 'tags'"``).
        annotation: the annotation as text (``"tuple[int, int]"``), or ``""``.
        reason: why it does not map.
    """

    def __init__(self, path: str, where: str, annotation: str, reason: str) -> None:
        head = f"{path}: " if path else ""
        typed = f" is {annotation}" if annotation else ""
        super().__init__(f"{head}{where}{typed}: {reason}")
        self.path = path
        self.where = where
        self.annotation = annotation
        self.reason = reason
