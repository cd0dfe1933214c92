"""Flow control: the ledger of credit, both directions, per stream and per connection.

Theory of operation
-------------------
Credit is counted in DATA payload bytes (docs/PROTOCOL.md section 8).  :class:`Ledger` is the
only writer of every credit figure: the connection's (here) and each stream's (the credit slots
of :class:`~trpc.wire._streams.Stream`, which a new stream gets from ``peer_stream_window`` and
``stream_window``).  The connection asks it what fits, tells it what it
framed or received, and sends the WINDOW_UPDATE increments it returns.

Sending: a DATA payload may go out only within ``room(stream)``, the smaller of the stream's and
the connection's credit; ``spend`` takes it from both.  WINDOW_UPDATE frames add to them
(``credit_stream`` / ``credit_connection``), and credit beyond 2^31-1 is the peer's error.

Receiving: ``receive`` takes a stream's DATA from the credit the peer holds for that stream, and
``receive_connection`` from the connection's (DATA for a closed stream too).  Connection credit
goes back as soon as the bytes are handed on, in increments of half the window; stream credit
goes back as the application consumes messages (``consumed``), also in increments of at least
half the window, so a stream holds at most its window of unconsumed messages.  A message still
arriving counts against the window only while complete messages wait too: alone it may grow up
to the max message size, or a message larger than the window could never complete.
"""

from __future__ import annotations

from typing import Iterable

from .._errors import RemoteProtocolError
from .._status import Status
from ._frames import MAX_WINDOW
from ._streams import Stream

__all__ = ["Ledger", "DEFAULT_STREAM_WINDOW", "DEFAULT_CONNECTION_WINDOW"]

#: Initial per-stream credit: how many DATA bytes a peer may send on a stream before the
#: application here consumes some.  2 MiB: a 1 MiB message (and its CBOR head) fits with room
#: for the next, so messages of that size flow without waiting a round trip for credit, while
#: what one stream can make us buffer stays bounded.
DEFAULT_STREAM_WINDOW = 2 << 20
#: Initial per-connection credit.  trpc returns it as soon as bytes are handed to a stream, so
#: it bounds the bytes in flight, not what is buffered (the stream windows and the stream count
#: bound that); 16 MiB lets many streams run at full speed together.
DEFAULT_CONNECTION_WINDOW = 16 << 20


def _overdrawn(what: str, size: int, credit: int) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"the peer sent {size} bytes {what} with only {credit} bytes of credit", error_code=Status.RESOURCE_EXHAUSTED
    )


class Ledger:
    """Credit of one connection and its streams.

    Args:
        stream_window: the credit we grant the peer on each new stream.
        connection_window: the credit we grant the peer on the connection.
    """

    __slots__ = (
        "stream_window", "connection_window", "peer_stream_window", "send_credit", "recv_credit", "_unannounced",
        "incomplete",
    )

    def __init__(self, stream_window: int, connection_window: int) -> None:
        self.stream_window = stream_window
        self.connection_window = connection_window
        #: Bytes of messages still arriving (MORE), all streams together: what a peer makes
        #: us hold that no flow control returns to it until each message completes.
        self.incomplete = 0
        #: The peer's grants, from its preface: 0 until it arrives (nothing may be sent).
        self.peer_stream_window = 0
        #: Connection credit we hold for sending.
        self.send_credit = 0
        #: Connection credit the peer holds for sending to us, and what we earned back but
        #: have not announced yet.
        self.recv_credit = connection_window
        self._unannounced = 0

    # ------------------------------------------------------------------ streams
    def peer_windows(self, stream_window: int, connection_window: int, streams: Iterable[Stream]) -> None:
        """The peer's preface arrived: its initial windows apply, to the streams already open
        too (they had no credit yet)."""
        self.peer_stream_window = stream_window
        self.send_credit = connection_window
        for stream in streams:
            stream.send_window += stream_window

    # ------------------------------------------------------------------ sending
    def room(self, stream: Stream) -> int:
        """How many DATA bytes may go out on ``stream`` now."""
        credit = stream.send_window
        return credit if credit <= self.send_credit else self.send_credit

    def spend(self, stream: Stream, size: int) -> None:
        """``size`` bytes of DATA were framed on ``stream`` (within ``room``)."""
        stream.send_window -= size
        self.send_credit -= size

    def try_spend(self, stream: Stream, size: int) -> bool:
        """Spend ``size`` bytes of credit on ``stream`` if both windows have them."""
        if size <= stream.send_window and size <= self.send_credit:
            stream.send_window -= size
            self.send_credit -= size
            return True
        return False

    def credit_stream(self, stream: Stream, increment: int) -> None:
        """A WINDOW_UPDATE for ``stream``."""
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise RemoteProtocolError(f"stream {stream.id} credit above 2^31-1")

    def credit_connection(self, increment: int) -> None:
        """A WINDOW_UPDATE for the connection."""
        self.send_credit += increment
        if self.send_credit > MAX_WINDOW:
            raise RemoteProtocolError("connection credit above 2^31-1")

    # ------------------------------------------------------------------ receiving
    def receive(self, stream: Stream, size: int) -> None:
        """``size`` bytes of DATA arrived on ``stream``: charge its credit (not the
        connection's: see ``receive_connection``)."""
        if size > stream.recv_granted:
            raise _overdrawn(f"on stream {stream.id}", size, stream.recv_granted)
        stream.recv_granted -= size

    def deliver(self, stream: Stream, size: int) -> None:
        """``size`` bytes of DATA on ``stream``, each frame a whole message, handed on: charge
        the stream's credit and hold the bytes until consumed.  The caller checked that they
        fit (``size <= stream.recv_granted``): the receiving fast path."""
        stream.recv_granted -= size
        stream.recv_held += size

    def hold(self, stream: Stream, size: int) -> None:
        """A complete message of ``size`` bytes (already charged) was handed on."""
        stream.recv_held += size
        if stream.recv_partial:
            self.incomplete -= stream.recv_partial
            stream.recv_partial = 0

    def partial(self, stream: Stream, size: int) -> int:
        """``size`` more bytes of a message still arriving; returns the message's size so far."""
        stream.recv_partial += size
        self.incomplete += size
        return stream.recv_partial

    def drop_partial(self, stream: Stream) -> None:
        """The message still arriving on ``stream`` will not be handed on (the call ended)."""
        self.incomplete -= stream.recv_partial
        stream.recv_partial = 0

    def receive_connection(self, size: int) -> int:
        """``size`` bytes of DATA arrived on the connection and were handed on (or dropped):
        charge the connection's credit and earn it back.  Returns the increment to announce in
        a WINDOW_UPDATE for stream 0, or 0."""
        if size > self.recv_credit:
            raise _overdrawn("on the connection", size, self.recv_credit)
        unannounced = self._unannounced + size
        if unannounced >= self.connection_window >> 1:
            self._unannounced = 0
            self.recv_credit += unannounced - size
            return unannounced
        self._unannounced = unannounced
        self.recv_credit -= size
        return 0

    def consumed(self, stream: Stream, size: int) -> int:
        """The application took ``size`` bytes of messages from ``stream``.  Returns the
        increment to announce in a WINDOW_UPDATE for the stream, or 0."""
        stream.recv_held -= size
        return self.stream_grant(stream)

    def stream_grant(self, stream: Stream) -> int:
        """The stream credit to give back now (and count as given), or 0: what the window
        lacks, once that is at least half of it."""
        held = stream.recv_held
        charged = held + stream.recv_partial if held else 0
        want = self.stream_window - stream.recv_granted - charged
        if want >= self.stream_window >> 1:
            stream.recv_granted += want
            return want
        return 0
