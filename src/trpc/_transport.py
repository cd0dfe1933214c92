"""The thin Trio layer under client and server: one reader task, one writer task, one wake-up.

Theory of operation
-------------------
A :class:`TrioConnection` drives a sans-IO :class:`~trpc.wire.Connection` over any Trio
``Stream`` (TCP, TLS, in-memory).  Exactly two tasks touch the stream:

- the **reader** receives chunks, feeds them to the protocol core and hands the resulting events
  to ``handle_event`` (implemented by the client or the server side).  A chunk holding many
  frames is processed in turns (about half of it each), with the tasks woken by one turn run,
  and their replies sent, before the next: so the peer gets the first replies while the rest
  are still being worked on, instead of both sides taking turns (see ``_TURN_MIN``);
- the **writer** sleeps until someone queues output, then sends *everything* queued so far in
  one ``send_all``.  Any task may queue frames (queuing is synchronous, so frames can never be
  torn or interleaved); a burst of calls or messages therefore leaves in few system calls.

The call layer (client and server) queues output only through the methods of this class
(``open_call``, ``send_message``, ``send_trailers``, ``cancel``, ...): each one queues on the
sans-IO connection and makes sure the bytes will leave (it wakes the writer, or writes a lone
call's bytes at once), so no caller has to remember a wake-up.  The one exception is a batch
(``open_batch``), a list its owner appends to without a call per message: the owner wakes the
writer when it starts a batch (``wake_writer``).  The wire connection underneath may be any
object with the methods of :class:`trpc._events.WireConnection`.

If the writer falls behind (the peer reads slowly), the reader stops reading until the output
drains, so a peer cannot make us buffer without bound by sending requests (or pings) and never
reading the answers.  Producers of messages (handlers, a streaming client) wait likewise
(``wait_for_room``) while the socket takes nothing and more than ``SEND_HIGH_WATER`` bytes wait
for it: flow control alone would not stop them, since a peer may grant credit it never reads.

Trio's stream exceptions are caught here, and only here; the client and server turn the
reason into UNAVAILABLE for every call still running on the connection.

A third task, the **timer** (``run_timers``), sleeps until the connection's next deadline:
keepalive pings and their timeouts (:mod:`trpc._keepalive`), and whatever the subclass adds
(``_timers``: the server's connection age and idle limits).  Nothing per call or per frame:
the reader's per-chunk ``received_at`` is all keepalive needs.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Sequence, cast

import trio

from ._errors import RemoteProtocolError
from ._tls import describe_tls_failure, is_tls_record
from ._events import (
    CborValue,
    CompressingConnection,
    ConnectionClosed,
    Event,
    GoAwayReceived,
    InfoReceived,
    PingAcknowledged,
    PingReceived,
    Payload,
    PrefaceReceived,
    SendCreditAvailable,
    WireConnection,
)
from ._keepalive import Keepalive
from ._status import Status

__all__ = ["TrioConnection", "Parker", "RECEIVE_SIZE", "WRITE_HIGH_WATER", "SEND_HIGH_WATER"]

logger = logging.getLogger("trpc")

#: Bytes asked of the stream per receive: 64 KiB, the size Linux hands back from one recv on
#: loopback under load; bigger buys nothing, smaller costs more reads per frame batch.
RECEIVE_SIZE = 65536
#: Queued output, beyond what flow control already bounds, past which the reader pauses until
#: the writer catches up.  DATA we queue is bounded by the peer's connection window; what a
#: peer can make us queue without limit is control frames (PING acks, refusals of calls over
#: the limit) while it never reads.  So the reader pauses once the queue exceeds the peer's
#: connection window plus this margin: 4 MiB, several socket buffers' worth.  (Pausing on
#: legitimate DATA could deadlock two peers whose writers both wait for the other to read.)
WRITE_HIGH_WATER = 4 << 20
#: Bytes queued for a connection's socket, and not taken by it, past which a task that produces
#: messages waits for the socket to drain (``wait_for_room``), whatever credit the peer granted:
#: a peer that announces huge windows and never reads cannot make us buffer what we produce.
#: 4 MiB: several socket buffers' worth, so a reader that is merely slow never makes a producer
#: wait, and a peer that reads nothing holds at most this much, plus the one message (at most
#: its max message size) or batch queued before the producer checks.
SEND_HIGH_WATER = 4 << 20

#: The reader processes a received chunk's frames in *turns*, letting the tasks they woke run
#: between two turns.  A 64 KiB read can hold hundreds of calls.  Processed in one go, every
#: reply would be ready only after the last call ran and would leave in one write, so the peer
#: would sit idle meanwhile: the two sides would take turns, each waiting for the other's whole
#: batch.  Processed in halves, the first half's replies leave while the second half runs, and
#: the peer works on them in parallel (docs/PERFORMANCE.md, "Where the time goes in a unary
#: call", has what it gives).  A chunk of fewer than 2 x _TURN_MIN frames goes in one turn (a
#: turn costs two scheduling rounds, and the peer one more read, which only a chunk of many
#: calls repays); no turn exceeds _TURN_MAX frames, which bounds
#: how long one connection's burst holds up other tasks (a unary request is two frames,
#: HEADERS and DATA; a reply two, DATA and TRAILERS).
_TURN_MIN = 8
_TURN_MAX = 128

#: Parts at least this large are written on their own instead of being joined with their
#: neighbours (joining would copy them).  64 KiB: a copy that size costs less than a write.
_SEND_BIG = 65536

_checkpoint = trio.lowlevel.checkpoint
_current_time = trio.current_time
_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
_read = os.read
_write = os.write
#: Plain TCP sockets are read and written with os.read/os.write on their descriptor (POSIX only).
_POSIX = os.name == "posix"
_reschedule = trio.lowlevel.reschedule
_current_task = trio.lowlevel.current_task
_wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
_SUCCEEDED = trio.lowlevel.Abort.SUCCEEDED


class Parker:
    """A one-task wake-up: ``await park()`` sleeps until ``unpark()``; no allocation per use.

    ``unpark()`` before ``park()`` is remembered, so a wake-up is never lost.  Cheaper than a
    fresh ``trio.Event`` per wait, which matters because the writer waits once per batch and a
    call once per response.
    """

    __slots__ = ("_task", "_flag")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._flag = False

    def unpark(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            _reschedule(task)
        else:
            self._flag = True

    async def park(self) -> None:
        if self._flag:
            self._flag = False
            return
        if self._task is not None:
            raise trio.BusyResourceError("another task is already waiting here")
        self._task = _current_task()
        await _wait_task_rescheduled(self._abort)

    def _abort(self, raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._task = None
        return _SUCCEEDED


def _coalesce(parts: Sequence[bytes | memoryview]) -> Sequence[bytes | memoryview]:
    """The buffers to write for ``parts``: runs of small parts joined into one, large parts
    (a big message's payload) on their own, so that they are never copied."""
    if len(parts) == 1:
        return parts
    total = 0
    for part in parts:
        total += len(part)
    if total < _SEND_BIG:
        return [b"".join(parts)]
    buffers: list[bytes | memoryview] = []
    run: list[bytes | memoryview] = []
    for part in parts:
        if len(part) >= _SEND_BIG:
            if run:
                buffers.append(b"".join(run))
                run = []
            buffers.append(part)
        else:
            run.append(part)
    if run:
        buffers.append(b"".join(run))
    return buffers


#: Why a plain connection failed when the peer answered with a TLS record.
_SPEAKS_TLS = "the peer speaks TLS, and this side plain TCP"


def _stream_error(exc: BaseException) -> str:
    """Why a stream failed, in words: a TLS failure described (trio's BrokenResourceError
    says nothing by itself), else the exception's text or its name."""
    return describe_tls_failure(exc) or str(exc) or type(exc).__name__


class TrioConnection:
    """Runs a sans-IO wire connection (a :class:`~trpc._events.WireConnection`) over a Trio
    stream.  Subclasses handle the events."""

    def __init__(self, stream: trio.abc.Stream, conn: WireConnection, peer: str) -> None:
        self.stream = stream
        self.conn = conn
        self.peer = peer
        self._writer_wakeup = Parker()
        self._drained = trio.Event()
        self._drained.set()
        self._writing = False
        #: The writer is waiting for the stream to take bytes (a full socket), and how many
        #: bytes it holds taken from the queue and not yet written (see wait_for_room).
        self._stalled = False
        self._in_writer = 0
        #: The writer task has ended (cancelled, or the stream broke): flush has no one to wait for.
        self._writer_gone = False
        #: Set when the byte stream is known dead; the reason, for errors shown to users.
        self.broken: str | None = None
        self.closed = trio.Event()
        self._reader_scope = trio.CancelScope()
        #: ``trio.current_time()`` when the reader last received bytes: when the calls and
        #: messages it is handing on arrived (read once per chunk, not once per call).
        self.received_at = 0.0
        #: Keepalive pings (see trpc._keepalive), run by run_timers; None: no pings.
        self.keepalive: Keepalive | None = None
        self._timer_wakeup = Parker()
        #: The timer task's sleep while it sleeps (else None): a deadline that comes forward
        #: can be moved in it without waking the task (trpc.quic does, on most sends).
        self._timer_scope: trio.CancelScope | None = None
        #: The Trio socket under a plain TCP stream (POSIX), which the reader, the writer and
        #: send_soon use directly (see _receive); None for other streams (TLS, in-memory).
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) and _POSIX else None
        #: The call layer's calls by stream id: its objects (queues, wake-ups), which the events
        #: of a stream reach.  Whether a stream is open, and how many are, the wire connection
        #: says; a call leaves this registry when the call layer is done with it.
        self.calls: dict[int, Any] = {}

    # ----------------------------------------------------------- queuing output
    def open_call(
        self, method: str, metadata: dict[str, str | bytes] | None, timeout: float | None, end_stream: bool = False, coding: int = 0
    ) -> int:
        """Open a call (client); see ``Connection.open_call``.  ``coding`` (not 0): ask for the
        responses compressed so."""
        if coding:
            stream_id = self.conn.open_call(
                method, metadata=metadata, timeout=timeout, end_stream=end_stream, response_compression=coding
            )
        else:
            stream_id = self.conn.open_call(method, metadata=metadata, timeout=timeout, end_stream=end_stream)
        self._writer_wakeup.unpark()
        return stream_id

    def open_unary_call(
        self, method: str, message: Payload, metadata: dict[str, str | bytes] | None, timeout: float | None, coding: int = 0
    ) -> tuple[int, bool]:
        """Open a call with its one request message (client), sent at once if it is the only
        call in flight (see ``_send_soon``); see ``Connection.open_unary_call``.  ``coding``
        (not 0): compress the request so, and ask for the response so."""
        if coding:
            result = self.conn.open_unary_call(
                method, message, metadata=metadata, timeout=timeout, compression=coding, response_compression=coding
            )
        else:
            result = self.conn.open_unary_call(method, message, metadata=metadata, timeout=timeout)
        self._send_soon()
        return result

    def send_message(self, stream_id: int, payload: Payload, end_stream: bool = False, coding: int = 0) -> bool:
        """Queue a message, compressed with ``coding`` if not 0 (``Connection.send_compressed``
        decides); False if some waits for credit (see ``Connection.send_message``)."""
        if coding:
            sent = cast(CompressingConnection, self.conn).send_compressed(stream_id, payload, coding, end_stream=end_stream)
        else:
            sent = self.conn.send_message(stream_id, payload, end_stream=end_stream)
        self._writer_wakeup.unpark()
        return sent

    def end_stream(self, stream_id: int) -> None:
        """Half-close (client)."""
        self.conn.end_stream(stream_id)
        self._writer_wakeup.unpark()

    def send_headers(self, stream_id: int, metadata: dict[str, str | bytes] | None) -> None:
        """Response headers (server)."""
        self.conn.send_headers(stream_id, metadata)
        self._writer_wakeup.unpark()

    def send_trailers(self, stream_id: int, status: Status, message: str = "", details: CborValue = None,
                      metadata: dict[str, str | bytes] | None = None) -> None:
        """End a call with its status (server), sent at once if it was the only call running."""
        self.conn.send_trailers(stream_id, status, message, details, metadata)
        self._send_soon()

    def refuse_call(self, stream_id: int, status: Status, message: str = "") -> None:
        """End a call never run, saying so (server; see ``Connection.refuse_call``): the
        client may retry it anywhere."""
        self.conn.refuse_call(stream_id, status, message)
        self._send_soon()

    def cancel(self, stream_id: int, reason: Status, message: str) -> None:
        """Cancel a call (client); a no-op for a call that has ended."""
        self.conn.cancel(stream_id, reason, message)
        self._writer_wakeup.unpark()

    def consumed(self, stream_id: int, size: int) -> None:
        """The application took ``size`` bytes of messages: return credit when due."""
        conn = self.conn
        conn.consumed(stream_id, size)
        if conn.has_data_to_send:
            self._writer_wakeup.unpark()

    def goaway(self, status: Status, message: str) -> None:
        """Say we are going away (once)."""
        self.conn.goaway(status, message)
        self._writer_wakeup.unpark()

    def ping(self, payload: bytes) -> None:
        """Send a PING (8 bytes); its ACK comes back as PingAcknowledged."""
        self.conn.ping(payload)
        self._writer_wakeup.unpark()

    def open_batch(self, stream_id: int) -> list[bytes]:
        """A stream's batch (see ``Connection.open_batch``).  Its owner appends to it and
        calls ``wake_writer`` when a batch starts, so the writer frames it when it runs."""
        return self.conn.open_batch(stream_id)

    def wake_writer(self) -> None:
        """Let the writer send what is queued (for a batch's owner, and for the preface)."""
        self._writer_wakeup.unpark()

    async def wait_for_credit(self, stream_id: int, wakeup: Parker, ended: Callable[[], bool]) -> None:
        """After a send that left output waiting for credit: wait until the peer's credit has
        let all of this stream's messages go, or ``ended()`` says the call is over (its owner
        unparks ``wakeup`` on SendCreditAvailable and when the call ends)."""
        self._writer_wakeup.unpark()
        conn = self.conn
        while conn.send_buffered(stream_id) and not ended():
            await wakeup.park()

    def _send_soon(self) -> None:
        """After queuing the output of one call (a request, a reply).

        When that call is alone on the connection (no other call in flight, so nothing else
        will join its frames in the next write) and the writer is idle, the bytes are written
        right here with one non-blocking system call, saving the hop to the writer task: that
        is most of a lone call's latency.  Under load, and for streams other than plain TCP,
        the writer coalesces as usual.  Whatever the socket does not take at once is left, in
        order, for the writer.  So is output of _SEND_BIG bytes or more (a large message): this
        write would join its parts into one fresh buffer, a copy and the page faults of a new
        allocation, where the writer sends the large parts as they are.
        """
        if (self._socket is not None and not self._writing and self.broken is None and self.conn.open_streams <= 1
                and self.conn.output_size < _SEND_BIG):
            data = self.conn.data_to_send()
            try:
                sent = _write(self._socket.fileno(), data)
            except OSError:  # would block, or an error the writer will meet and report
                sent = 0
            if sent == len(data):
                return
            self.conn.requeue(data[sent:])
        self._writer_wakeup.unpark()

    async def writer(self) -> None:
        """Send queued output until cancelled or the stream breaks."""
        conn = self.conn
        send_all = self._send_all_stream if self._socket is None else self._send_all
        wakeup = self._writer_wakeup
        try:
            while True:
                await wakeup.park()
                parts = conn.data_to_send_list()
                if not parts:
                    continue
                self._writing = True
                self._drained = trio.Event()
                while parts:
                    buffers = _coalesce(parts)
                    self._in_writer = sum(map(len, buffers))
                    for data in buffers:
                        await send_all(data)
                    parts = conn.data_to_send_list()
                self._writing = self._stalled = False
                self._in_writer = 0
                self._drained.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(f"sending failed: {_stream_error(exc)}")
        finally:
            self._writing = self._stalled = False
            self._in_writer = 0
            self._writer_gone = True
            self._drained.set()

    async def _send_all_stream(self, data: bytes | memoryview) -> None:
        """``send_all`` of a stream other than plain TCP, counted as stalled while it runs (it
        may wait for the peer; we cannot tell)."""
        self._stalled = True
        await self.stream.send_all(data)
        self._stalled = False

    async def wait_for_room(self) -> None:
        """Wait while the socket takes nothing and more than SEND_HIGH_WATER bytes wait for it
        (see the module's docstring).  Returns at once when the connection is broken; a
        cancel point only when it waits."""
        while self._stalled and self.broken is None and self._in_writer + self.conn.output_size > SEND_HIGH_WATER:
            self._writer_wakeup.unpark()
            await self._drained.wait()

    async def _send_all(self, data: bytes | memoryview) -> None:
        """``SocketStream.send_all`` for the writer, without its layers: the writer is the only
        task that sends, and errors are handled by the caller.  A cancel point only if the
        socket is full (the writer parks between batches, which is its schedule point)."""
        sock = self._socket
        assert sock is not None  # the writer's choice for a plain TCP stream only
        while True:
            try:
                sent = _write(sock.fileno(), data)
            except BlockingIOError:
                self._stalled = True
                await _wait_writable(sock)
                continue
            if sent == len(data):
                return
            data = memoryview(data)[sent:]

    async def flush(self) -> None:
        """Wait until everything queued so far has been handed to the stream."""
        self.wake_writer()
        await trio.lowlevel.checkpoint()
        while self.conn.has_data_to_send or self._writing:
            await self._drained.wait()
            if self.broken or self._writer_gone:
                return  # nothing will send it (the writer was cancelled, or the stream broke)
            if self.conn.has_data_to_send:
                self.wake_writer()
                await trio.lowlevel.checkpoint()

    # ----------------------------------------------------------- reading
    async def _receive(self, max_bytes: int) -> bytes:
        """``SocketStream.receive_some`` for the reader of a plain TCP stream, without its
        layers (a context manager and an async one per read, a share of a lone call's work
        that docs/PERFORMANCE.md measures).  Same schedule point: data there at once is
        followed by a checkpoint, otherwise the wait for it is one."""
        sock = self._socket
        assert sock is not None  # the reader's choice for a plain TCP stream only
        try:
            data = _read(sock.fileno(), max_bytes)
        except BlockingIOError:
            while True:
                await _wait_readable(sock)
                try:
                    return _read(sock.fileno(), max_bytes)
                except BlockingIOError:
                    pass
        await _checkpoint()
        return data

    async def reader(self, first: bytes | bytearray = b"") -> None:
        """Receive, parse and dispatch until the peer closes or breaks the connection.
        ``first``: bytes already received from the stream (the server reads some to tell
        which wire the client speaks), processed before any others."""
        conn = self.conn
        receive_some = self.stream.receive_some if self._socket is None else self._receive
        handle = self.handle_event
        data: bytes | bytearray
        try:
            with self._reader_scope:
                while True:
                    try:
                        if first:
                            data, first = first, b""
                        else:
                            data = await receive_some(RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        self._fail(f"receiving failed: {_stream_error(exc)}")
                        return
                    now = self.received_at = _current_time()
                    try:
                        # Parse the chunk, then process its frames in turns (see _TURN_*).
                        for event in conn.receive_data(data, max_frames=0, now=now):
                            handle(event)  # the preface, or the end of the connection
                        waiting = conn.backlog
                        if waiting:
                            turn = waiting if waiting < 2 * _TURN_MIN else min(_TURN_MAX, (waiting + 1) >> 1)
                            while True:
                                for event in conn.process_backlog(turn):
                                    handle(event)
                                if not conn.backlog:
                                    break
                                # Let the tasks this turn woke run (first checkpoint), then
                                # the writer send what they queued (second), before the next
                                # turn wakes more: so a turn's replies leave before the next
                                # turn's calls start, whatever order Trio runs a batch in.
                                if conn.has_data_to_send:
                                    self.wake_writer()
                                await _checkpoint()
                                await _checkpoint()
                    except RemoteProtocolError as exc:
                        for event in exc.events:
                            handle(event)
                        # The text, not the exception: a handler that keeps records would keep
                        # its traceback, and with it this connection.
                        logger.warning("trpc: protocol error from %s: %s", self.peer, str(exc))
                        # Tell the peer why (the GOAWAY is queued), but do not wait long for it.
                        with trio.move_on_after(1):
                            await self.flush()
                        if conn.peer_preface is None and is_tls_record(data):
                            self._fail(_SPEAKS_TLS)  # what came instead of a preface: a TLS record
                        else:
                            self._fail(f"protocol error: {exc}")
                        return
                    if not data:
                        self._fail("the peer closed the connection")
                        return
                    if conn.has_data_to_send:
                        self.wake_writer()
                        if self._writing and conn.output_size > conn.peer_connection_window + WRITE_HIGH_WATER:
                            await self._drained.wait()
        finally:
            self.closed.set()

    # ----------------------------------------------------------- timers
    async def run_timers(self) -> None:
        """The connection's timer task: sleep until the next deadline (keepalive, and the
        subclass's ``_timers``), act on it, repeat; returns once the connection is broken.
        Run it beside the reader and the writer."""
        keepalive = self.keepalive
        wakeup = self._timer_wakeup
        # The connection's start counts as activity: idle time runs from here.
        self.received_at = max(self.received_at, _current_time())
        while self.broken is None:
            now = _current_time()
            deadline = self._timers(now)
            if keepalive is not None and self.broken is None:
                deadline = min(deadline, keepalive.step(self, now))
            if self.broken is not None:
                return
            with trio.move_on_at(deadline) as scope:
                self._timer_scope = scope
                try:
                    await wakeup.park()
                finally:
                    self._timer_scope = None

    def wake_timers(self) -> None:
        """Make the timer task look at its deadlines again now (one changed)."""
        self._timer_wakeup.unpark()

    def _timers(self, now: float) -> float:
        """The subclass's deadlines: act on those that have passed at ``now``; return the next
        one (math.inf for none)."""
        return math.inf

    def _on_ping_ack(self, event: PingAcknowledged) -> None:
        if self.keepalive is not None:
            self.keepalive.acknowledged(event.payload)

    # ----------------------------------------------------------- ending
    def abort(self, reason: str) -> None:
        """End the connection from this side: stop reading and end what runs on it."""
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        """The connection is dead: stop reading, and let the subclass end what runs on it."""
        if self.broken is None:
            self.broken = reason
            self._reader_scope.cancel()
            self.connection_lost(reason)

    def connection_lost(self, reason: str) -> None:
        """The byte stream is dead: subclasses end everything still running on it."""

    def handle_event(self, event: Event) -> None:
        """React to one protocol event (called by the reader, synchronously)."""
        self._DISPATCH[type(event)](self, event)

    def _on_credit(self, event: SendCreditAvailable) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None:
            call.credit_wakeup.unpark()

    def _ignore(self, event: Event) -> None:
        pass

    #: Event class -> handler, for handle_event: plain functions in a class attribute (a table
    #: of bound methods would be a reference cycle, keeping a closed connection in memory until
    #: the garbage collector runs).  Subclasses extend it with theirs.
    _DISPATCH: dict[type[Event], Callable[[Any, Any], None]] = {
        SendCreditAvailable: _on_credit,
        PrefaceReceived: _ignore,
        PingReceived: _ignore,
        PingAcknowledged: _on_ping_ack,
        GoAwayReceived: _ignore,
        InfoReceived: _ignore,
        ConnectionClosed: _ignore,
    }

    async def close_stream(self) -> None:
        """Close the byte stream now (abruptly for the peer if output was still queued)."""
        try:
            await trio.aclose_forcefully(self.stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
