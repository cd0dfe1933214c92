"""Which datagrams may open a QUIC connection on a server, sans-IO: the first line of defence
of ``QuicEndpoint``.

Theory of operation
-------------------
A datagram whose destination connection id names no connection may start one, and a
connection is state (a TLS handshake, a task, a slot of ``max_connections``) that the server
holds until the handshake finishes or its timeout passes.  So before any state is made:

- **size**: a client's first datagram is at least 1,200 bytes (RFC 9000, section 14.1);
  smaller ones are dropped unread, which also keeps what the server sends back in reply to
  an unvalidated address (a Version Negotiation, a Retry) smaller than what it received.
- **version**: a long-header packet of a version this server does not speak gets a Version
  Negotiation packet listing the versions it does, and no state.
- **address validation under pressure**: while more than ``RETRY_ABOVE`` handshakes are in
  progress (a flood of Initials, likely from forged addresses), a client's Initial without a
  token gets a Retry packet carrying a token (:class:`RetryTokens`) instead of a connection:
  a client at a real address sends its Initial again with the token, which proves it
  receives at that address; a forged address never sees the Retry.  A token is bound to the
  client's address and port and to the connection ids of the exchange, and expires after
  ``TOKEN_LIFETIME``.  An Initial whose token does not check out is dropped.
- **authentication**: the endpoint then feeds the datagram to a new QUIC connection and keeps
  it only if QUIC could decrypt and authenticate a packet of it: an Initial with the right
  header and garbage after it costs the server nothing past that.
- **a whole ClientHello in one datagram** from an address not yet validated also gets a Retry
  (:func:`retry`), and its connection is dropped: qh3 2.1's server cannot answer such a hello
  while the address is unvalidated (its packet builder fails, and the connection never
  recovers), and answers it well once a Retry has validated the address.  Clients whose
  hello takes two datagrams (qh3's, with its post-quantum key share) are not affected.

The endpoint owns the sockets and the count of handshakes in progress; this module only
parses, decides, and builds the packets to send back.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct
from typing import Any

from qh3._hazmat import Buffer
from qh3.quic.packet import QuicPacketType, encode_quic_retry, encode_quic_version_negotiation, pull_quic_header

__all__ = ["MIN_INITIAL", "RETRY_ABOVE", "TOKEN_LIFETIME", "RetryTokens", "Admission", "admit", "retry"]

#: The smallest datagram that may open a connection: RFC 9000's 1,200 bytes for a client's
#: first datagram.
MIN_INITIAL = 1200
#: Handshakes in progress on one endpoint past which new clients must prove their address
#: with a Retry round trip: 64, far more than legitimate clients start at once on a server
#: that is not being flooded (a reconnecting crowd pays one extra round trip, no more), so
#: the common case never pays it.
RETRY_ABOVE = 64
#: Seconds a Retry token stays valid: 10, the server's default handshake timeout, well past
#: any round trip a client takes to send its Initial again.
TOKEN_LIFETIME = 10.0
#: Bytes of the token's HMAC-SHA256 kept: 16, forgery odds 2^-128.
_MAC_SIZE = 16
#: Length of the connection id a Retry packet gives the client (QUIC's configuration default).
_CID_LENGTH = 8
_ISSUED = struct.Struct("!d")


def _address_bytes(address: Any) -> bytes:
    """An IPv4/IPv6 address and port as bytes, for binding a token to them."""
    return ipaddress.ip_address(address[0]).packed + int(address[1]).to_bytes(2, "big")


class RetryTokens:
    """Mints and checks Retry tokens: ``issued time | len | original DCID | len | retry SCID
    | MAC``, the MAC an HMAC-SHA256 (keyed by a secret drawn per endpoint) over the client's
    address too, so a token is good only from where it was sent, for ``TOKEN_LIFETIME``."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else os.urandom(32)

    def _mac(self, address: Any, body: bytes) -> bytes:
        return hmac.new(self._key, _address_bytes(address) + body, hashlib.sha256).digest()[:_MAC_SIZE]

    def mint(self, address: Any, original_dcid: bytes, retry_scid: bytes, now: float) -> bytes:
        body = _ISSUED.pack(now) + bytes([len(original_dcid)]) + original_dcid + bytes([len(retry_scid)]) + retry_scid
        return body + self._mac(address, body)

    def check(self, address: Any, token: bytes, now: float) -> tuple[bytes, bytes] | None:
        """``(original DCID, retry SCID)`` from a token this endpoint minted for ``address``
        less than ``TOKEN_LIFETIME`` ago; None for any other token."""
        if len(token) < _ISSUED.size + 2 + _MAC_SIZE:
            return None
        body, mac = token[:-_MAC_SIZE], token[-_MAC_SIZE:]
        if not hmac.compare_digest(mac, self._mac(address, body)):
            return None
        (issued,) = _ISSUED.unpack_from(body)
        if not 0 <= now - issued <= TOKEN_LIFETIME:
            return None
        at = _ISSUED.size
        original = body[at + 1:at + 1 + body[at]]
        at += 1 + body[at]
        if at >= len(body):
            return None
        retry = body[at + 1:at + 1 + body[at]]
        if at + 1 + body[at] != len(body):
            return None
        return original, retry


class Admission:
    """What to do with a datagram that names no connection: ``reply`` (a packet to send back,
    or None) and, when a connection may be opened, its ``original_dcid`` and ``retry_scid``
    (the latter None when no Retry was made); ``open`` says which."""

    __slots__ = ("open", "reply", "original_dcid", "retry_scid")

    def __init__(self, open: bool, reply: bytes | None = None, original_dcid: bytes = b"",
                 retry_scid: bytes | None = None) -> None:
        self.open = open
        self.reply = reply
        self.original_dcid = original_dcid
        self.retry_scid = retry_scid


_DROP = Admission(False)


def admit(data: bytes, address: Any, now: float, *, versions: list[int], tokens: RetryTokens,
          validate: bool) -> Admission:
    """Decide for one datagram that names no connection (see the module docstring);
    ``validate``: the endpoint is under pressure, so a client must come back with a token."""
    if len(data) < MIN_INITIAL or not data[0] & 0x80:
        return _DROP  # too small to open anything, or a short header naming a gone connection
    try:
        header = pull_quic_header(Buffer(data=data), host_cid_length=_CID_LENGTH)
    except ValueError:
        return _DROP
    if header.version is not None and header.version not in versions:
        return Admission(False, encode_quic_version_negotiation(
            source_cid=header.destination_cid, destination_cid=header.source_cid, supported_versions=versions))
    if header.packet_type != QuicPacketType.INITIAL or len(header.destination_cid) < 8:
        return _DROP  # only an Initial opens a connection, and a client's first DCID is 8 bytes or more
    if header.token:
        checked = tokens.check(address, header.token, now)
        if checked is None:
            return _DROP
        return Admission(True, None, checked[0], checked[1])
    if validate:
        return Admission(False, _retry(header, address, now, tokens))
    return Admission(True, None, header.destination_cid)


def retry(data: bytes, address: Any, now: float, tokens: RetryTokens) -> bytes:
    """A Retry packet for the client Initial ``data`` (one ``admit`` let open without a token)."""
    return _retry(pull_quic_header(Buffer(data=data), host_cid_length=_CID_LENGTH), address, now, tokens)


def _retry(header: Any, address: Any, now: float, tokens: RetryTokens) -> bytes:
    retry_scid = os.urandom(_CID_LENGTH)
    token = tokens.mint(address, header.destination_cid, retry_scid, now)
    assert header.version is not None
    return encode_quic_retry(version=header.version, source_cid=retry_scid, destination_cid=header.source_cid,
                             original_destination_cid=header.destination_cid, retry_token=token)
