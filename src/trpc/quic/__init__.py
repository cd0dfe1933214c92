"""trpc over QUIC: each call on its own QUIC stream, TLS 1.3 built in (docs/PROTOCOL.md section 16).

Serve with :meth:`trpc.Server.serve_quic` (``trpc serve mod:Service --quic PORT --tls-cert
PEM``); connect with ``open_client("quic://host:port", ssl_context=...)``.  The call layer is
the same as over TCP: every call shape, deadlines, cancellation, metadata, interceptors and
limits.  :mod:`trpc.quic._wire` maps trpc's calls onto QUIC streams (sans-IO, over qh3);
:mod:`trpc.quic._transport` runs it on Trio's UDP sockets.
"""

from __future__ import annotations

from ._transport import QuicClientConnection, client_configuration, server_configuration
from ._wire import NO_ERROR, REFUSED, QuicWire

__all__ = ["QuicWire", "QuicClientConnection", "client_configuration", "server_configuration", "REFUSED",
           "NO_ERROR"]
