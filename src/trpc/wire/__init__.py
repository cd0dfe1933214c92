"""The trpc wire, sans-IO: frames and flags, the stream state table, the flow-control ledger,
the control-frame codec, and the connection that composes them.

Nothing here imports Trio or sockets: bytes go in through ``Connection.receive_data`` and come
out of ``Connection.data_to_send``; what happened comes out as :mod:`trpc._events`.  The call
layer (``trpc._server``, ``trpc._client``) talks to a connection only through the methods listed
in :class:`trpc._events.WireConnection`, so a second wire (gRPC over HTTP/2, QUIC) is another
class with those methods, beside this one.

Modules, one concept each:

- ``_frames``: frame types, flags, the preface layout and the protocol's limits.
- ``_control``: the CBOR payloads of HEADERS, TRAILERS, CANCEL and GOAWAY, both ways.
- ``_streams``: the stream state table and the registry of live streams (the only writer of a
  stream's state).
- ``_flow``: the flow-control ledger (the only writer of credit, both directions).
- ``_connection``: :class:`Connection`, which composes the above with a framer.
"""

from ._connection import Connection, message_size
from ._flow import DEFAULT_CONNECTION_WINDOW, DEFAULT_STREAM_WINDOW
from ._frames import (
    DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_INCOMPLETE_BYTES,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_PING_STRIKES,
    DEFAULT_MIN_PING_INTERVAL,
    MAX_HEADERS_SIZE,
    PREFACE,
    PREFACE_MAGIC,
    PROTOCOL_VERSION,
    Flags,
    FrameType,
    PingFlags,
)
from ._streams import Role, StreamInput, StreamState

__all__ = [
    "Connection",
    "ConnectionState",
    "DEFAULT_CONNECTION_WINDOW",
    "DEFAULT_MAX_CONCURRENT_STREAMS",
    "DEFAULT_MAX_INCOMPLETE_BYTES",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_PING_STRIKES",
    "DEFAULT_MIN_PING_INTERVAL",
    "DEFAULT_STREAM_WINDOW",
    "Flags",
    "FrameType",
    "MAX_HEADERS_SIZE",
    "PREFACE",
    "PREFACE_MAGIC",
    "PROTOCOL_VERSION",
    "PingFlags",
    "Role",
    "StreamInput",
    "StreamState",
    "message_size",
]

from ._connection import ConnectionState  # noqa: E402
