"""Keepalive: find a peer that stopped answering, without a cost per call.

Theory of operation
-------------------
A peer can stop without closing its connection (its process stopped, its host vanished, a NAT
forgot the flow).  Nothing then arrives, and a call without a deadline would wait forever.  So
each connection has one timer task (``TrioConnection.run_timers``) which, when nothing has been
received for ``time`` seconds, sends a PING with a fresh 8-byte payload and expects its ACK
within ``timeout`` seconds; without it the connection fails, and its calls end with
UNAVAILABLE ("no keepalive answer in N s").

- *Idle* is measured from the reader's ``received_at`` (the clock read it takes once per chunk
  anyway): any bytes received prove the peer alive, so a connection that is receiving is never
  pinged, and bytes that arrive while a ping is out count as its answer.  The calls themselves
  do nothing for keepalive.
- The client pings only while calls are pending (a connection with nothing to wait for needs no
  proof of life, and a server polices pings); the server pings whenever idle, which is how it
  finds clients that stopped while holding a connection.
- ACKs are matched to the payload sent: the core answers every PING itself, so an ACK with
  another payload (a stale one, or one the peer made up) proves nothing more than its bytes.

Pings also keep both sides' view of the connection honest under TCP, which can take many
minutes to give up on a dead peer.  For vanished hosts on otherwise quiet connections, TCP's
own keepalive is turned on too (``set_tcp_keepalive``): it costs nothing while the
connection is busy, and the kernel does it.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._transport import TrioConnection

__all__ = [
    "Keepalive",
    "set_tcp_keepalive",
    "CLIENT_KEEPALIVE_TIME",
    "CLIENT_KEEPALIVE_TIMEOUT",
    "SERVER_KEEPALIVE_TIME",
    "SERVER_KEEPALIVE_TIMEOUT",
]

#: The client pings after this long without receiving anything while calls are pending.  15 s:
#: a dead server is found in at most 25 s (with the timeout), well within what a person or a
#: retry loop waits, and a ping every 15 s on a connection that waits on a slow call is a few
#: bytes.  It must stay above the server's minimum ping interval (10 s by default), or the
#: server polices the client.
CLIENT_KEEPALIVE_TIME = 15.0
#: How long the client waits for the ACK (or any bytes) after a ping.  10 s: an answer takes a
#: round trip plus the time the peer's reader needs to reach it; a live trpc peer answers in
#: milliseconds, and one whose event loop is stalled for 10 s is not serving calls anyway.
CLIENT_KEEPALIVE_TIMEOUT = 10.0
#: The server pings a client after this long without receiving anything, calls or not.  60 s:
#: a stopped client gives back its connection (and cancels its handlers) within 80 s, while
#: thousands of idle connections cost the server a few pings a second.  (gRPC's 2 hours is
#: meant for TCP keepalive's scale; a stopped process still answers TCP keepalive, through its
#: kernel, so only a ping finds it.)
SERVER_KEEPALIVE_TIME = 60.0
#: How long the server waits for the client's ACK.  20 s: generous, since a false alarm
#: cancels every call of a live client.
SERVER_KEEPALIVE_TIMEOUT = 20.0

#: TCP keepalive on every TCP socket, client and server: probe after 60 s without traffic, then
#: every 10 s, and give up after 3 unanswered probes, so a vanished host (or a NAT that forgot
#: the flow) ends a quiet connection within about 90 s instead of the kernel's default of over
#: two hours.  Fixed: the application-level pings above are the tunable mechanism.
TCP_KEEPALIVE_IDLE = 60
TCP_KEEPALIVE_INTERVAL = 10
TCP_KEEPALIVE_COUNT = 3


def set_tcp_keepalive(sock: Any) -> None:
    """Turn on TCP keepalive on a (Trio or standard) TCP socket, with the values above where the
    platform lets us set them (Linux: all three; macOS: ``TCP_KEEPALIVE`` is the idle time).
    Any other socket (a Unix one) is left alone: there is no TCP under it to probe, and a peer
    on the same host that vanishes takes its end of the socket with it."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
    for option, value in (
        (idle, TCP_KEEPALIVE_IDLE),
        (getattr(socket, "TCP_KEEPINTVL", None), TCP_KEEPALIVE_INTERVAL),
        (getattr(socket, "TCP_KEEPCNT", None), TCP_KEEPALIVE_COUNT),
    ):
        if option is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:  # a platform that has the name but not the option
                pass


def check_keepalive(time: float | None, timeout: float) -> None:
    """Raise ValueError for keepalive settings that make no sense."""
    if time is not None and not time > 0:
        raise ValueError("keepalive_time must be positive (or None: no keepalive pings)")
    if not timeout > 0:
        raise ValueError("keepalive_timeout must be positive")


class Keepalive:
    """The keepalive state of one connection, driven by its timer task (see the module).

    Args:
        time: seconds without receiving anything before a ping.
        timeout: seconds to wait for the answer.
        only_with_calls: ping only while the connection has calls open (the client).
    """

    __slots__ = ("time", "timeout", "only_with_calls", "_payload", "_sent_at", "_count")

    def __init__(self, time: float, timeout: float, *, only_with_calls: bool) -> None:
        self.time = time
        self.timeout = timeout
        self.only_with_calls = only_with_calls
        #: The payload of the ping waiting for its answer, None if none is out.
        self._payload: bytes | None = None
        self._sent_at = 0.0
        self._count = 0

    def acknowledged(self, payload: bytes) -> None:
        """A PING ACK arrived: it answers our ping if it carries our payload."""
        if payload == self._payload:
            self._payload = None

    def step(self, connection: TrioConnection, now: float) -> float:
        """Act on the keepalive's deadline if it has passed (ping, or fail the connection);
        return the next time to look again."""
        if self._payload is not None:
            if connection.received_at > self._sent_at:
                self._payload = None  # bytes arrived since the ping: the peer is alive
            elif now >= self._sent_at + self.timeout:
                connection.abort(f"no keepalive answer in {self.timeout:g} s")
                return now + self.time
            else:
                return self._sent_at + self.timeout
        if self.only_with_calls and not connection.conn.open_streams:
            # Nothing to wait for: look again later (a call opened meanwhile is pinged for at
            # that look, if nothing came for it).
            return max(now, connection.received_at) + self.time
        due = connection.received_at + self.time
        if now < due:
            return due
        self._count += 1
        self._payload = self._count.to_bytes(8, "big")
        self._sent_at = now
        connection.ping(self._payload)
        return now + self.timeout
