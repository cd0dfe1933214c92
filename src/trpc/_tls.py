"""TLS failures in words: what the client tells its user, and the alert the server sends.

Theory of operation
-------------------
A TLS failure reaches trpc as a ``trio.BrokenResourceError`` whose ``__cause__`` is an
``ssl.SSLError``; its ``reason`` (OpenSSL's name for it) says what happened, and
:func:`describe_tls_failure` turns the reasons a user can act on into a sentence.  In TLS 1.3
the server checks the client's certificate only after the client has finished its side of the
handshake, so a rejected client certificate arrives as an *alert* on the client's first read,
not in ``do_handshake``: the client describes errors of its first read the same way.

For that alert to reach the client at all, the server must send it: ``trio.SSLStream`` drops
what OpenSSL wrote when a handshake fails, so :func:`send_pending_alert` sends it.  It reads
trio's private outgoing buffer, and does nothing if that is not there (a later trio): the
client then only sees the connection close.

Plain TCP meeting TLS: a plaintext trpc client reading a TLS record (:func:`is_tls_record`:
content type alert or handshake, version major 3) where the server's preface should be knows
it talks to a TLS server; a TLS client meeting a plaintext server fails its handshake with
OpenSSL's ``WRONG_VERSION_NUMBER`` (the server's "TRPC" preface is no TLS record).
"""

from __future__ import annotations

import ssl
from typing import Any

import trio

__all__ = ["describe_tls_failure", "is_tls_record", "send_pending_alert"]

#: OpenSSL's reasons -> what they mean for a trpc client.
_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust this certificate's CA",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server rejected the client certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the server rejected the client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server says the client certificate has expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the server says the client certificate is revoked",
    "TLSV1_ALERT_ACCESS_DENIED": "the server denied access to this client certificate",
    # TLS 1.2 servers answer a missing client certificate with a plain handshake failure.
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server refused the handshake (a client certificate it requires, or no "
                                     "cipher in common)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the server and this client have no TLS version in common",
    "WRONG_VERSION_NUMBER": "the server does not speak TLS (connect without TLS?)",
    "UNKNOWN_PROTOCOL": "the server does not speak TLS (connect without TLS?)",
    "RECORD_LAYER_FAILURE": "the server does not speak TLS (connect without TLS?)",
}

#: First byte of a TLS record: alert (21) or handshake (22); the second, the major version, 3.
_TLS_CONTENT_TYPES = (0x15, 0x16)


#: Server handshake failures meaning the client spoke something other than TLS, and the alert
#: record it then gets (fatal, protocol_version) so that it can tell it met a TLS server.
_NOT_TLS = {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL"}
_NOT_TLS_ALERT = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46])


def describe_tls_failure(exc: BaseException) -> str | None:
    """What a TLS failure (``exc``, or the ``ssl.SSLError`` behind it) means, in words; None
    if ``exc`` is not a TLS failure."""
    error = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"the server's certificate is not trusted by this client ({error.verify_message})"
    if isinstance(error, ssl.CertificateError):
        return f"the server's certificate is not trusted by this client ({error})"
    if not isinstance(error, ssl.SSLError):
        return None
    reason = getattr(error, "reason", None)
    text = _REASONS.get(reason or "")
    if text is not None:
        return f"{text} [{reason}]"
    if reason == "UNEXPECTED_EOF_WHILE_READING" or isinstance(error, ssl.SSLEOFError):
        return "the server closed the connection during TLS"
    return f"TLS failed: {reason or error}"


def is_tls_record(data: bytes | bytearray) -> bool:
    """``data`` starts like a TLS alert or handshake record."""
    return len(data) >= 1 and data[0] in _TLS_CONTENT_TYPES and (len(data) == 1 or data[1] == 0x03)


async def send_pending_alert(
    tls: trio.SSLStream[Any], transport: trio.abc.Stream, exc: BaseException
) -> None:
    """After a failed server handshake (``exc``): send what OpenSSL queued (the alert saying
    why) on the transport under ``tls``, or to a client that spoke no TLS at all a plaintext
    protocol_version alert, within a second; errors are ignored (we are closing anyway)."""
    outgoing = getattr(tls, "_outgoing", None)
    if not isinstance(outgoing, ssl.MemoryBIO):
        return
    data = outgoing.read()
    if not data and getattr(exc.__cause__, "reason", None) in _NOT_TLS:
        data = _NOT_TLS_ALERT  # OpenSSL says nothing to a peer that is not speaking TLS
    if not data:
        return
    with trio.move_on_after(1):
        try:
            await transport.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
            pass
