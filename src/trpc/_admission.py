"""Admission of connections on the server: how many may be open, how long one may take to
become a trpc connection, and log lines a flood cannot multiply.

Theory of operation
-------------------
Every accepted socket costs a descriptor from the moment it is accepted, whether or not it
ever speaks.  So the server counts sockets from accept to close (``Server._admit``), and one
beyond ``max_connections`` is closed at once: accepting and closing it keeps the kernel's
backlog moving (a full backlog would refuse real clients as surely as a full descriptor
table), and costs the flood nothing but its own connect.  A socket that is admitted has
``preface_timeout`` seconds, from accept, to finish its TLS handshake (if any) *and* deliver
the client's trpc preface; one budget for both, so a peer cannot hold a descriptor for two
timeouts by dripping first its handshake and then its preface.  After the preface the
connection is an ordinary one (what keeps it alive then is not admission's business).

What admission refuses is logged at WARNING, at most once per ``LOG_INTERVAL`` per reason
with a count of the lines left out, so that 2,000 connections a second from one scanner make
one line every few seconds, not 2,000.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

__all__ = ["DEFAULT_PREFACE_TIMEOUT", "default_max_connections", "LogLimiter"]

#: How long an accepted connection has to become a trpc connection (TLS handshake and client
#: preface together, from accept).  A real client sends its preface at once, on the same round
#: trip as its TCP (or TLS) handshake: 10 s covers a slow network many times over, yet a peer
#: that opens connections and says nothing holds each descriptor for 10 s at most.
DEFAULT_PREFACE_TIMEOUT = 10.0
#: Lines about refused connections: at most one per reason in this many seconds.
LOG_INTERVAL = 10.0
#: Descriptors kept back for what is not a client connection: the listeners, log files, the
#: event loop's own, and above all the outgoing connections handlers make to other services
#: (one each).  A quarter of the soft limit: 256 of the common 1,024, and more for a process
#: whose limit was raised (``ulimit -n``), which raises max_connections with it.
_HEADROOM_FRACTION = 4
#: When the descriptor limit cannot be read (no ``resource`` module), or is unlimited.
_FALLBACK_MAX_CONNECTIONS = 768
_CAP_MAX_CONNECTIONS = 1 << 20


def default_max_connections() -> int:
    """The default limit on open connections: three quarters of the process's soft
    ``RLIMIT_NOFILE`` (read when the :class:`~trpc.Server` is made), so that connections alone
    can never use up the descriptors, and the rest of the process keeps a quarter."""
    try:
        import resource
    except ImportError:  # not POSIX
        return _FALLBACK_MAX_CONNECTIONS
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return _FALLBACK_MAX_CONNECTIONS
    soft = min(soft, _CAP_MAX_CONNECTIONS)
    return max(1, soft - soft // _HEADROOM_FRACTION)


class LogLimiter:
    """WARNING lines that a flood cannot multiply: for each ``reason``, one line per
    ``interval`` seconds (Trio's clock), the next one saying how many were left out."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL) -> None:
        self._logger = logger
        self._interval = interval
        #: reason -> (when its last line was written, lines left out since)
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, reason: str, message: str, *args: Any) -> None:
        now = trio.current_time()
        last, suppressed = self._last.get(reason, (-float("inf"), 0))
        if now - last < self._interval:
            self._last[reason] = (last, suppressed + 1)
            return
        self._last[reason] = (now, 0)
        if suppressed:
            message += f" (and {suppressed} more like it in the last {now - last:.0f} s)"
        self._logger.warning(message, *args)
