"""Frames, flags, the preface and the protocol's limits (docs/PROTOCOL.md sections 2, 3, 10).

Every frame is a 10-byte header (length, type, flags, stream id) and a payload; the framers
(``trpc._framer``) find frames in received bytes, and ``pack_header`` writes a header.  Flags
are one enum per frame type that has any, so that a PING's ACK prints as ACK, not as the
END_STREAM bit it shares with DATA.
"""

from __future__ import annotations

import enum
import struct

from .._framer_py import DEFAULT_MAX_FRAME_SIZE, HEADER, MAX_FRAME_SIZE_LIMIT, MIN_FRAME_SIZE_LIMIT

__all__ = [
    "ALPN_TRPC",
    "FrameType",
    "Flags",
    "PingFlags",
    "PREFACE",
    "PREFACE_MAGIC",
    "PROTOCOL_VERSION",
    "INFO_MINOR_VERSION",
    "COMPRESSION_MINOR_VERSION",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_CONCURRENT_STREAMS",
    "DEFAULT_MAX_INCOMPLETE_BYTES",
    "DEFAULT_MIN_PING_INTERVAL",
    "DEFAULT_MAX_PING_STRIKES",
    "MAX_HEADERS_SIZE",
    "MAX_WINDOW",
    "MAX_STREAM_ID",
    "MIN_FRAME_SIZE_LIMIT",
    "MAX_FRAME_SIZE_LIMIT",
    "pack_header",
]


class FrameType(enum.IntEnum):
    """The frame types of protocol version 1 (INFO since 1.1).  Any other type is a protocol
    error."""

    DATA = 0x0
    HEADERS = 0x1
    TRAILERS = 0x2
    CANCEL = 0x3
    WINDOW_UPDATE = 0x4
    PING = 0x5
    GOAWAY = 0x6
    #: (1.1) Server to client, stream 0, once: what the server declares about itself.  Sent
    #: only to a client whose preface announced minor version 1 or later.
    INFO = 0x7


class Flags(enum.IntFlag):
    """Flags of DATA and HEADERS frames."""

    NONE = 0
    #: DATA, HEADERS (client): the sender sends nothing more on this stream.
    END_STREAM = 0x1
    #: DATA: the message continues in the next DATA frame of this stream.
    MORE = 0x2
    #: (1.2) DATA, the first frame of a message only: the coding field (bits 2-3) of a
    #: compressed message, 1 zlib, 2 zstd (``trpc.wire._compression``); 3 is reserved.
    ZLIB = 0x4
    ZSTD = 0x8
    CODING = 0xC


class PingFlags(enum.IntFlag):
    """Flags of PING frames."""

    NONE = 0
    #: This PING answers one received.
    ACK = 0x1


#: Every header is packed here: length, type, flags, stream id.
pack_header = HEADER.pack

# --- The preface -------------------------------------------------------------------------------
PREFACE_MAGIC = b"TRPC"
#: (major, minor).  Peers with another major version cannot talk; minor versions only add
#: things an older peer can ignore (1.1: TRAILERS key 5), or new frame types, which are sent
#: only to a peer whose preface announced the minor version that added them (1.1: INFO), or
#: new uses of the preface's reserved field that an older peer leaves 0 (1.2: the codings it
#: accepts, so nothing is ever compressed towards an older peer).
PROTOCOL_VERSION = (1, 2)
#: The minor version from which a client may receive INFO frames.
INFO_MINOR_VERSION = 1
#: The minor version from which the preface's field at offset 6 says what codings the sender
#: accepts (before it, the field is reserved and read as "none").
COMPRESSION_MINOR_VERSION = 2
#: magic, major, minor, accepted codings, max frame size, max message size, stream window,
#: connection window, max concurrent streams.  28 bytes, big-endian.
PREFACE = struct.Struct(">4sBBHIIIII")

# --- Limits (each endpoint announces its own in its preface) -----------------------------------
#: Largest message (one encoded CBOR item) accepted.  4 MiB, as in gRPC: large enough for
#: ordinary payloads, small enough that one call cannot make a server buffer much.  Checked as
#: DATA arrives, before the rest of an oversized message is buffered.
DEFAULT_MAX_MESSAGE_SIZE = 4 << 20
#: Calls one client may have running at once on one connection, announced in the server's
#: preface: trpc's client queues further calls until one ends; a client that opens more anyway
#: has them refused with RESOURCE_EXHAUSTED.  So a flood of streams costs the server a bounded
#: amount of memory (streams x (stream window + max message size) at the very most).
DEFAULT_MAX_CONCURRENT_STREAMS = 100
#: Bytes of incomplete messages (sent over several DATA frames, the last not yet arrived) one
#: connection may make us hold, all its streams together; the call whose bytes go beyond ends
#: with RESOURCE_EXHAUSTED.  Flow control cannot bound them (a message larger than the stream
#: window must be able to complete, so its bytes do not count against it), and without this a
#: peer could hold streams x max message size (100 x 4 MiB) per connection.  32 MiB: eight
#: messages of the default 4 MiB arriving at once on one connection; never below the max
#: message size, so one message can always complete.
DEFAULT_MAX_INCOMPLETE_BYTES = 32 << 20
#: Ping policing (docs/PROTOCOL.md section 9), on trpc's server: the least time a client must
#: leave between two PINGs.  10 s: trpc's client pings at most once per its keepalive time
#: (15 s by default, and only after 15 s without receiving anything), so it stays clear of this
#: with 5 s to spare for network delays; a peer pinging in a loop is stopped after a few pings,
#: where answering every one would let it keep the server busy for free.  (gRPC's server
#: allows one ping per 5 minutes without calls; trpc's client pings only with calls pending,
#: so one rule serves both cases.)
DEFAULT_MIN_PING_INTERVAL = 10.0
#: Early PINGs forgiven in a row (a PING in time forgives them) before the next one ends the
#: connection with GOAWAY RESOURCE_EXHAUSTED "too many pings".  2, as gRPC: two pings bunched
#: by the network are no offence; a loop is caught at its third ping.
DEFAULT_MAX_PING_STRIKES = 2
#: Largest HEADERS / TRAILERS / CANCEL / GOAWAY / INFO payload (the CBOR map with method,
#: metadata, status...).  64 KiB: metadata is for small things; bulk belongs in messages.
MAX_HEADERS_SIZE = 64 << 10
#: Largest credit a window may reach, and largest announced limit: a 31-bit count, as in HTTP/2.
MAX_WINDOW = (1 << 31) - 1
#: Stream ids are 32-bit; when they run out the client opens a new connection.
MAX_STREAM_ID = (1 << 32) - 1

#: The ALPN protocol id of trpc's wire over TLS; a server that also speaks gRPC on the port
#: tells the wires apart by it (docs/PROTOCOL.md section 14).
ALPN_TRPC = "trpc/1"
