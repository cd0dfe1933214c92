"""Streams: the state table, and the registry of live streams that is its only user.

Theory of operation
-------------------
A stream's state changes only in :meth:`Streams.step`, which looks ``(state, input)`` up in
the role's rows of ``TRANSITIONS``; a pair missing from the table is a protocol error, local
(``SEND_*``: the application asked for something the protocol forbids) or remote (``RECV_*``:
the peer broke the rules).  Fast paths elsewhere may *check* what the table allows (through
:meth:`Streams.allows`), never write a state themselves.

A stream is born IDLE and stepped at once: the client's ``SEND_HEADERS`` opens it on the
client, the server's ``RECV_HEADERS`` on the server.  When it reaches CLOSED it leaves the
registry; a frame later for an id at or below ``last_id`` is for a closed stream (dropped, as
docs/PROTOCOL.md section 7 says), above it for a stream never opened (a protocol error).

CLOSING is the server's state between its TRAILERS and the moment they actually leave: trailers
wait behind response DATA that waits for the client's credit.  For the client the call is still
open, so what the client may send then (DATA, END_STREAM, CANCEL) is legal and must not fail the
connection: DATA is dropped, a CANCEL drops the waiting output and closes the stream, and
``DRAINED`` closes it once the output has left.

Besides the state, one more fact changes with the table: whether the response has started
(server: it sent HEADERS or DATA; client: it received them).  Response HEADERS are allowed only
before it; :meth:`Streams.step` keeps it, for the same inputs.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any, Callable, TypeAlias

from .._errors import LocalProtocolError, RemoteProtocolError

__all__ = ["Role", "StreamState", "StreamInput", "TRANSITIONS", "Stream", "Streams"]

#: An item of a stream's output waiting for credit (``Stream.pending``): ``[memoryview, flags]``
#: for data (a list, not a tuple: the view is replaced in place as credit sends its head), or
#: the bytes of a frame (TRAILERS) that must follow the data.
PendingItem: TypeAlias = "list[Any] | bytes"


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"

    # Members are singletons compared by identity; hashing them by identity too keeps the
    # table lookups (several per message) cheap.
    __hash__ = object.__hash__


class StreamState(enum.Enum):
    #: Created, not yet stepped (never seen outside Streams.open).
    IDLE = "idle"
    OPEN = "open"
    #: We sent END_STREAM (client): only the server's direction is still open.
    HALF_CLOSED_LOCAL = "half-closed (local)"
    #: The peer sent END_STREAM (server): only our direction is still open.
    HALF_CLOSED_REMOTE = "half-closed (remote)"
    #: (server) TRAILERS queued behind DATA still waiting for credit.
    CLOSING = "closing"
    CLOSED = "closed"

    __hash__ = object.__hash__


class StreamInput(enum.Enum):
    """What is sent or received on a stream, and the two things the connection decides."""

    SEND_HEADERS = enum.auto()
    SEND_DATA = enum.auto()
    SEND_END_STREAM = enum.auto()
    SEND_TRAILERS = enum.auto()
    #: (server) TRAILERS that must wait behind DATA short of credit.
    QUEUE_TRAILERS = enum.auto()
    #: (server) the last waiting output of a CLOSING stream left.
    DRAINED = enum.auto()
    SEND_CANCEL = enum.auto()
    RECV_HEADERS = enum.auto()
    RECV_DATA = enum.auto()
    RECV_END_STREAM = enum.auto()
    RECV_TRAILERS = enum.auto()
    RECV_CANCEL = enum.auto()
    #: (client) the server's GOAWAY says it never processed the call.
    REFUSED = enum.auto()

    __hash__ = object.__hash__


_S = StreamState
_I = StreamInput
_C, _SV = Role.CLIENT, Role.SERVER
#: (role, state, input) -> new state.  Anything not listed is a protocol error.
TRANSITIONS: dict[tuple[Role, StreamState, StreamInput], StreamState] = {
    # client: opens, sends, half-closes, cancels; receives response headers, data, trailers
    (_C, _S.IDLE, _I.SEND_HEADERS): _S.OPEN,
    (_C, _S.OPEN, _I.SEND_DATA): _S.OPEN,
    (_C, _S.OPEN, _I.SEND_END_STREAM): _S.HALF_CLOSED_LOCAL,
    (_C, _S.OPEN, _I.SEND_CANCEL): _S.CLOSED,
    (_C, _S.OPEN, _I.RECV_HEADERS): _S.OPEN,
    (_C, _S.OPEN, _I.RECV_DATA): _S.OPEN,
    (_C, _S.OPEN, _I.RECV_TRAILERS): _S.CLOSED,
    (_C, _S.OPEN, _I.REFUSED): _S.CLOSED,
    (_C, _S.HALF_CLOSED_LOCAL, _I.SEND_CANCEL): _S.CLOSED,
    (_C, _S.HALF_CLOSED_LOCAL, _I.RECV_HEADERS): _S.HALF_CLOSED_LOCAL,
    (_C, _S.HALF_CLOSED_LOCAL, _I.RECV_DATA): _S.HALF_CLOSED_LOCAL,
    (_C, _S.HALF_CLOSED_LOCAL, _I.RECV_TRAILERS): _S.CLOSED,
    (_C, _S.HALF_CLOSED_LOCAL, _I.REFUSED): _S.CLOSED,
    # server: receives the call, its data, the half-close, a cancel; answers, ends with trailers
    (_SV, _S.IDLE, _I.RECV_HEADERS): _S.OPEN,
    (_SV, _S.OPEN, _I.RECV_DATA): _S.OPEN,
    (_SV, _S.OPEN, _I.RECV_END_STREAM): _S.HALF_CLOSED_REMOTE,
    (_SV, _S.OPEN, _I.RECV_CANCEL): _S.CLOSED,
    (_SV, _S.OPEN, _I.SEND_HEADERS): _S.OPEN,
    (_SV, _S.OPEN, _I.SEND_DATA): _S.OPEN,
    (_SV, _S.OPEN, _I.SEND_TRAILERS): _S.CLOSED,
    (_SV, _S.OPEN, _I.QUEUE_TRAILERS): _S.CLOSING,
    (_SV, _S.HALF_CLOSED_REMOTE, _I.RECV_CANCEL): _S.CLOSED,
    (_SV, _S.HALF_CLOSED_REMOTE, _I.SEND_HEADERS): _S.HALF_CLOSED_REMOTE,
    (_SV, _S.HALF_CLOSED_REMOTE, _I.SEND_DATA): _S.HALF_CLOSED_REMOTE,
    (_SV, _S.HALF_CLOSED_REMOTE, _I.SEND_TRAILERS): _S.CLOSED,
    (_SV, _S.HALF_CLOSED_REMOTE, _I.QUEUE_TRAILERS): _S.CLOSING,
    # the client does not know yet that the call is over: what it may send stays legal
    (_SV, _S.CLOSING, _I.RECV_DATA): _S.CLOSING,
    (_SV, _S.CLOSING, _I.RECV_END_STREAM): _S.CLOSING,
    (_SV, _S.CLOSING, _I.RECV_CANCEL): _S.CLOSED,
    (_SV, _S.CLOSING, _I.DRAINED): _S.CLOSED,
}

#: Inputs that start the response (see the module's docstring): HEADERS only before it.
_RESPONSE_HEADERS = {Role.CLIENT: _I.RECV_HEADERS, Role.SERVER: _I.SEND_HEADERS}
_RESPONSE_DATA = {Role.CLIENT: _I.RECV_DATA, Role.SERVER: _I.SEND_DATA}
_CLOSED = StreamState.CLOSED


class Stream:
    """Per-stream bookkeeping.  Plain slots: one is created per call.

    ``state`` and ``response_started`` are written by :class:`Streams` alone; the credit
    fields start at the initial windows and change in the flow-control ledger
    (``trpc.wire._flow``) alone."""

    __slots__ = (
        "id",
        "state",
        "response_started",
        "send_window",
        "recv_granted",
        "recv_held",
        "recv_partial",
        "pending",
        "batch",
        "recv_parts",
    )

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.state = StreamState.IDLE
        self.response_started = False
        #: Credit: what we may still send on it; what the peer may still send us (born with
        #: the initial windows the ledger gives); bytes of complete messages handed out but
        #: not consumed; bytes of the message still arriving.
        self.send_window = send_window
        self.recv_granted = recv_window
        self.recv_held = 0
        self.recv_partial = 0
        #: Outgoing items waiting for credit: [memoryview, flags] for data, bytes for a frame
        #: (TRAILERS) that must follow the data.  None when nothing waits.
        self.pending: deque[PendingItem] | None = None
        #: Small messages queued by open_batch()'s caller, not yet framed (None: no batch).
        self.batch: list[bytes] | None = None
        #: Chunks of a message still arriving (MORE flag).
        self.recv_parts: list[bytes] | None = None


class Streams:
    """The live streams of one endpoint, and the table that moves them."""

    __slots__ = ("role", "live", "last_id", "_next", "_headers_input", "_data_input", "_response", "_on_closed")

    def __init__(self, role: Role, on_closed: Callable[[Stream], None]) -> None:
        self.role = role
        #: Called with each stream that reaches CLOSED with output still queued (waiting for
        #: credit, or on its batch) or a message still arriving, once it has left the registry:
        #: the connection drops them.
        self._on_closed = on_closed
        #: Streams not yet CLOSED, by id.
        self.live: dict[int, Stream] = {}
        #: The highest stream id opened so far: lower ids not in ``live`` are closed.
        self.last_id = 0
        #: input -> {state: new state}: this role's rows, looked up without building a key.
        self._next: dict[StreamInput, dict[StreamState, StreamState]] = {inp: {} for inp in StreamInput}
        for (r, state, inp), new in TRANSITIONS.items():
            if r is role:
                self._next[inp][state] = new
        self._headers_input = _RESPONSE_HEADERS[role]
        self._data_input = _RESPONSE_DATA[role]
        self._response = frozenset((self._headers_input, self._data_input))

    def allows(self, state: StreamState, inp: StreamInput) -> bool:
        """Whether the table has a row for ``(state, inp)`` in this role."""
        return state in self._next[inp]

    def next_states(self, inp: StreamInput) -> dict[StreamState, StreamState]:
        """state -> new state, for every state the table lets ``inp`` happen in (for fast
        paths that check many streams against one input)."""
        return dict(self._next[inp])

    def open(self, stream_id: int, inp: StreamInput, send_window: int, recv_window: int) -> Stream:
        """A new stream with a higher id than any before and the initial windows given,
        stepped out of IDLE by ``inp`` and registered."""
        stream = Stream(stream_id, send_window, recv_window)
        new = self._next[inp].get(StreamState.IDLE)
        if new is None:
            raise self._refused(stream, inp, "does not open a stream")
        stream.state = new  # never CLOSED, nor a response input: the rest of step() is moot
        self.last_id = stream_id
        self.live[stream_id] = stream
        return stream

    def step(self, stream: Stream, inp: StreamInput) -> StreamState:
        """Move ``stream`` by ``inp``; returns the new state.  A stream that reaches CLOSED
        leaves the registry.  Raises LocalProtocolError / RemoteProtocolError for a pair the
        table does not have (the stream is then unchanged)."""
        state = stream.state
        new = self._next[inp].get(state)
        if new is None:
            raise self._refused(stream, inp, "is not allowed")
        if inp in self._response:
            if inp is self._headers_input and stream.response_started:
                raise self._refused(stream, inp, "is not allowed after the response started")
            stream.response_started = True
        if new is not state:
            stream.state = new
            if new is _CLOSED:
                del self.live[stream.id]
                if stream.pending is not None or stream.batch is not None or stream.recv_partial:
                    self._on_closed(stream)
        return new

    def _refused(self, stream: Stream, inp: StreamInput, what: str) -> Exception:
        error = LocalProtocolError if inp.name.startswith(("SEND", "QUEUE")) else RemoteProtocolError
        return error(f"{inp.name} {what} on stream {stream.id} in state {stream.state.value} ({self.role.value})")
