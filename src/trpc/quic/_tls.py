"""Client certificates over QUIC: the server's half of mutual TLS, which qh3's server lacks.

Theory of operation
-------------------
qh3's TLS 1.3 (``qh3.tls.Context``, pure Python) answers a CertificateRequest as a client but
never sends one as a server.  :class:`ClientAuthContext` adds that, in a subclass, without
copying qh3's handshake; :class:`ServerQuicConnection` installs it on every server connection
whose configuration (:class:`ServerConfiguration`) carries a :class:`ClientVerifier`:

1. **The request.**  The server's flight is EncryptedExtensions, CertificateRequest,
   Certificate, CertificateVerify, Finished (RFC 8446 section 4.3.2), each added to the
   transcript as it is written.  qh3 writes EncryptedExtensions inside
   ``with push_message(key_schedule, buf)``, which hashes everything written in the block; the
   module function ``push_encrypted_extensions`` is wrapped (once, at import) so that, for a
   handshake this module runs (:data:`_requesting` is set around ``_server_handle_hello``,
   and to nothing for every other qh3 user), a CertificateRequest follows it in the same
   block: in the transcript, in order.  A handshake whose request was not sent (a qh3 whose
   server no longer calls that function) is refused, never let through unauthenticated.
2. **The client's Finished.**  qh3 computes the client's Finished before it arrives, from the
   transcript of the server's flight, unless ALPS was negotiated, when it computes it on
   arrival; with a client certificate the client's Certificate and CertificateVerify come
   between, so the context marks the handshake as qh3 marks an ALPS one (``_alps_negotiated``,
   the only switch qh3 has for "verify the Finished when it comes"); ALPS itself (a client
   EncryptedExtensions) is accepted only if it really was negotiated (:attr:`alps_negotiated`
   keeps the true answer; trpc's servers never offer it).
3. **The client's answer.**  Certificate and CertificateVerify arrive in qh3's state
   SERVER_EXPECT_FINISHED, which would refuse them: :meth:`ClientAuthContext.handle_message`
   takes the complete handshake messages of that state itself, at the HANDSHAKE epoch only,
   checks the chain (:class:`ClientVerifier`) and the signature over the transcript, adds both
   to the transcript, and hands the Finished on to qh3.  An empty Certificate is refused with
   the alert certificate_required, an untrusted chain with unknown_ca (or bad_certificate,
   certificate_expired), a wrong signature with decrypt_error: qh3 turns the alert into QUIC's
   CONNECTION_CLOSE with that crypto error, which ends that connection only; the server logs
   it as it logs a failed TLS handshake over TCP (rate-limited, per alert).
4. **No resumption.**  A resumed handshake (a session ticket) has no certificates in it, so
   such a context neither issues tickets nor accepts them.

The chain is checked with ``cryptography`` (``x509.verification``, its client policy): qh3's
own verifier is for servers' certificates (it demands the serverAuth key usage and a name,
which client certificates rarely have).  :func:`certificate_dict` turns the client's
certificate into the dict ``ssl.SSLSocket.getpeercert()`` gives, for
``trpc.current_call().peer_certificate``.

What is relied on in qh3 (2.1.0): ``QuicConnection._create_tls`` builds the connection's
``QuicTlsBridge``, whose ``tls`` is the ``Context``; ``Context._server_handle_hello`` calls the
module's ``push_encrypted_extensions`` within ``push_message`` and ends in state
SERVER_EXPECT_FINISHED; ``_alps_negotiated`` defers the Finished check to
``_server_handle_finished``; ``_peer_certificate`` / ``_peer_certificate_chain`` hold the peer's
certificates; ``get_session_ticket_cb`` / ``new_session_ticket_cb`` are resumption's hooks;
a client's ``_certificate_request`` is the request it received; ``QuicConnection._remote_addr``
is the peer's address by the time the bridge is built.
tests/test_quic_tls.py fails if any of that changes.
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import ipaddress
import ssl
from dataclasses import dataclass
from typing import Any, cast

import qh3.tls as qtls
from qh3._hazmat import Buffer, SignatureError, verify_with_public_key
from qh3._hazmat import Certificate as X509Certificate
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.quic.tls_bridge import QuicTlsBridge

from .._admission import LogLimiter

__all__ = ["ClientVerifier", "ClientAuthContext", "ServerConfiguration", "ServerQuicConnection",
           "certificate_dict", "push_certificate_request", "CLIENT_SIGNATURE_ALGORITHMS",
           "MAX_CLIENT_CERTIFICATE_MESSAGE", "certificate_requested", "describe_crypto_error"]

_SA = qtls.SignatureAlgorithm
#: The signatures a client's CertificateVerify may use: those TLS 1.3 allows there (RFC 8446
#: section 4.2.3: no PKCS#1 v1.5, no SHA-1) and qh3 can check; qh3's client picks RSA-PSS for an
#: RSA key and the curve's ECDSA for an EC key.
CLIENT_SIGNATURE_ALGORITHMS: tuple[int, ...] = (
    _SA.ECDSA_SECP256R1_SHA256, _SA.ECDSA_SECP384R1_SHA384, _SA.ECDSA_SECP521R1_SHA512,
    _SA.RSA_PSS_RSAE_SHA256, _SA.RSA_PSS_RSAE_SHA384, _SA.RSA_PSS_RSAE_SHA512, _SA.ED25519,
)
#: The largest client Certificate (or other handshake message) taken while waiting for the
#: client's Finished: 64 KiB, room for a chain of several certificates; a larger one is refused
#: (bad_certificate) rather than buffered, since it arrives before the client is authenticated.
MAX_CLIENT_CERTIFICATE_MESSAGE = 64 << 10

_CERTIFICATE_CONTEXT = b"TLS 1.3, client CertificateVerify"
_HT = qtls.HandshakeType


class _Alert(qtls.Alert):
    """A TLS alert with the description given (qh3 has a class for only some of them)."""

    def __init__(self, description: qtls.AlertDescription, message: str) -> None:
        super().__init__(message)
        self.description = description


def push_certificate_request(buf: Buffer, signature_algorithms: tuple[int, ...]) -> None:
    """Write a TLS 1.3 CertificateRequest (RFC 8446 section 4.3.2): an empty
    certificate_request_context (a request during the handshake) and one extension,
    signature_algorithms."""
    buf.push_uint8(_HT.CERTIFICATE_REQUEST)
    with qtls.push_block(buf, 3):
        qtls.push_opaque(buf, 1, b"")
        with qtls.push_block(buf, 2):
            with qtls.push_extension(buf, qtls.ExtensionType.SIGNATURE_ALGORITHMS):
                qtls.push_list(buf, 2, buf.push_uint16, list(signature_algorithms))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class ClientVerifier:
    """Checks a client's certificate chain against the CA certificates in ``cafile`` (PEM), as
    OpenSSL checks a client's for ``ssl.CERT_REQUIRED`` over TCP: a path to one of them through
    the intermediates the client sent, each certificate valid now, the CAs' extensions as the
    Web PKI wants them, and the client's certificate fit for client authentication (its key
    usages, where it names any, allow a TLS client and a signature).  Its other extensions,
    and whether it has a name at all, are not this check's business: client certificates carry
    what their issuers like (a critical subjectAltName, no authority key id...).

    Raises:
        ValueError: ``cafile`` holds no PEM certificate.
        OSError: it cannot be read.
        ImportError: the ``cryptography`` package is missing (``pip install 'trpc-trio[quic]'``).
    """

    def __init__(self, cafile: str) -> None:
        from cryptography import x509
        from cryptography.x509 import verification
        from cryptography.x509.oid import ExtendedKeyUsageOID

        with open(cafile, "rb") as f:
            data = f.read()
        try:
            anchors = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise ValueError(f"no PEM certificate in {cafile}") from None

        def for_clients(_policy: Any, _certificate: Any, usage: Any) -> None:
            if usage is not None and not {ExtendedKeyUsageOID.CLIENT_AUTH,
                                          ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(usage):
                raise ValueError("the certificate's extended key usage does not allow a TLS client")

        def signs(_policy: Any, _certificate: Any, usage: Any) -> None:
            if usage is not None and not usage.digital_signature:
                raise ValueError("the certificate's key usage does not allow signatures")

        agnostic = verification.Criticality.AGNOSTIC
        leaf = (verification.ExtensionPolicy.permit_all()
                .may_be_present(x509.ExtendedKeyUsage, agnostic, for_clients)
                .may_be_present(x509.KeyUsage, agnostic, signs))
        self.cafile = cafile
        # A verifier checks validity at the time it was built: one is built for each check.
        self._policy = (verification.PolicyBuilder().store(verification.Store(anchors))
                        .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                                            ee_policy=leaf))
        self._x509 = x509
        self._error = verification.VerificationError

    def verify(self, chain: list[bytes]) -> None:
        """Check ``chain`` (DER: the client's certificate, then the intermediates it sent).

        Raises:
            qh3.tls.Alert: unknown_ca (no path to a trusted CA), certificate_expired, or
                bad_certificate (unparsable, or unfit for client authentication).
        """
        x509 = self._x509
        try:
            certificates = [x509.load_der_x509_certificate(der) for der in chain]
        except ValueError as exc:
            raise _Alert(qtls.AlertDescription.bad_certificate, f"the client certificate cannot be parsed: {exc}") from None
        try:
            self._policy.time(_now()).build_client_verifier().verify(certificates[0], certificates[1:])
        except self._error as exc:
            text = str(exc)
            if "candidates exhausted" in text or "issuer" in text:
                description = qtls.AlertDescription.unknown_ca
            elif "validation time" in text:
                description = qtls.AlertDescription.certificate_expired
            else:
                description = qtls.AlertDescription.bad_certificate
            raise _Alert(description, f"client certificate refused: {text}") from None


@dataclass
class ServerConfiguration(QuicConfiguration):
    """qh3's configuration, the verifier of clients' certificates (None: none is asked for),
    and where a refused client is logged (the server's rate-limited log, ``LogLimiter``)."""

    client_verifier: ClientVerifier | None = None
    refusal_log: LogLimiter | None = None


#: The context whose ``_server_handle_hello`` is running, so that the wrapped
#: ``push_encrypted_extensions`` adds a CertificateRequest for it and for no other qh3 user.
_requesting: contextvars.ContextVar[ClientAuthContext | None] = contextvars.ContextVar(
    "trpc_quic_requesting", default=None)
#: qh3's own (the wrapper of an earlier import of this module keeps it as ``__wrapped__``).
_push_encrypted_extensions = getattr(qtls.push_encrypted_extensions, "__wrapped__", qtls.push_encrypted_extensions)


@functools.wraps(_push_encrypted_extensions)
def _push_encrypted_extensions_then_request(buf: Buffer, extensions: qtls.EncryptedExtensions) -> None:
    _push_encrypted_extensions(buf, extensions)
    context = _requesting.get()
    if context is not None:
        context._request_certificate(buf)


qtls.push_encrypted_extensions = _push_encrypted_extensions_then_request

# What the context expects next while qh3 waits for the client's Finished.
_EXPECT_CERTIFICATE, _EXPECT_VERIFY, _EXPECT_FINISHED = range(3)


class ClientAuthContext(qtls.Context):
    """qh3's server context, asking for and checking a client certificate (see the module's
    docstring).  Made from the context qh3 built, by :meth:`adopt`."""

    _verifier: ClientVerifier
    _peer: str
    _log: LogLimiter | None
    _stage: int
    _pending: bytes
    _requested: bool
    _client_alps: bool

    @classmethod
    def adopt(cls, context: qtls.Context, verifier: ClientVerifier, *, peer: str = "a client",
              log: LogLimiter | None = None) -> ClientAuthContext:
        """Turn qh3's server ``context``, before its handshake starts, into one that requires a
        client certificate ``verifier`` accepts; a refusal of ``peer`` is logged to ``log``.
        The object is kept (its class changes), so everything qh3's bridge set on it stays."""
        if context.state is not qtls.State.SERVER_EXPECT_CLIENT_HELLO:
            raise RuntimeError("a client certificate can only be required before the handshake")
        context.__class__ = cls
        adopted = cast(ClientAuthContext, context)
        adopted._verifier = verifier
        adopted._peer = peer
        adopted._log = log
        adopted._stage = _EXPECT_CERTIFICATE
        adopted._pending = b""
        adopted._requested = False
        adopted._client_alps = False
        # No resumption: a resumed handshake carries no certificate to check.
        adopted.get_session_ticket_cb = None
        adopted.new_session_ticket_cb = None
        return adopted

    @property
    def alps_negotiated(self) -> bool:
        """Whether ALPS was really negotiated (``_alps_negotiated`` also defers the Finished)."""
        return self._client_alps

    def _server_handle_hello(self, input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer,
                             onertt_buf: Buffer) -> None:
        token = _requesting.set(self)
        try:
            super()._server_handle_hello(input_buf, initial_buf, handshake_buf, onertt_buf)
        finally:
            _requesting.reset(token)
        if not self._requested:
            raise _Alert(qtls.AlertDescription.internal_error,
                         "no CertificateRequest was sent (qh3's server handshake changed)")

    def _request_certificate(self, buf: Buffer) -> None:
        """Write the CertificateRequest, right after EncryptedExtensions (within its
        ``push_message``, so in the transcript), and have qh3 check the client's Finished when it
        arrives, not from the transcript known now."""
        if self._requested:
            return
        if self._session_resumed:
            raise _Alert(qtls.AlertDescription.internal_error, "resumption with a client certificate required")
        push_certificate_request(buf, CLIENT_SIGNATURE_ALGORITHMS)
        self._requested = True
        self._client_alps = self._alps_negotiated
        self._alps_negotiated = True

    def handle_message(self, input_data: bytes, output_buf: dict[qtls.Epoch, Buffer], epoch: int = -1) -> None:
        if self.state is not qtls.State.SERVER_EXPECT_FINISHED:
            super().handle_message(input_data, output_buf, epoch)
            return
        try:
            self._take_client_flight(input_data, output_buf, epoch)
        except qtls.Alert as exc:
            if self._log is not None:
                name = getattr(exc.description, "name", exc.description)
                self._log.warning(f"tls:{name}", "trpc: TLS handshake with %s failed: %s [%s]", self._peer,
                                  str(exc) or name, name)
            raise

    def _take_client_flight(self, input_data: bytes, output_buf: dict[qtls.Epoch, Buffer], epoch: int) -> None:
        pending = self._pending + input_data
        while len(pending) >= 4:
            length = 4 + int.from_bytes(pending[1:4], "big")
            if length > MAX_CLIENT_CERTIFICATE_MESSAGE:
                raise _Alert(qtls.AlertDescription.bad_certificate,
                             f"a handshake message of {length} bytes (at most {MAX_CLIENT_CERTIFICATE_MESSAGE})")
            if len(pending) < length:
                break
            message, pending = pending[:length], pending[length:]
            if epoch >= 0 and epoch != qtls.Epoch.HANDSHAKE:
                raise qtls.AlertUnexpectedMessage("a client handshake message outside the HANDSHAKE epoch")
            kind = message[0]
            if kind == _HT.CERTIFICATE and self._stage == _EXPECT_CERTIFICATE:
                self._take_certificate(message)
            elif kind == _HT.CERTIFICATE_VERIFY and self._stage == _EXPECT_VERIFY:
                self._take_certificate_verify(message)
            elif kind == _HT.ENCRYPTED_EXTENSIONS and self._stage == _EXPECT_CERTIFICATE and self._client_alps:
                super().handle_message(message, output_buf, epoch)
            elif kind == _HT.FINISHED and self._stage == _EXPECT_FINISHED:
                super().handle_message(message, output_buf, epoch)  # qh3 checks it
                self._pending = b""
                if pending:
                    super().handle_message(pending, output_buf, epoch)
                return
            elif kind in (_HT.CERTIFICATE, _HT.CERTIFICATE_VERIFY, _HT.FINISHED) and self._stage == _EXPECT_CERTIFICATE:
                raise _Alert(qtls.AlertDescription.certificate_required, "the client sent no Certificate")
            else:
                raise qtls.AlertUnexpectedMessage(f"unexpected handshake message {kind} from the client")
        self._pending = pending

    def _take_certificate(self, message: bytes) -> None:
        certificate = qtls.pull_certificate(Buffer(data=message))
        if certificate.request_context:
            raise qtls.AlertIllegalParameter("a client Certificate for a request not made")
        if not certificate.certificates:
            raise _Alert(qtls.AlertDescription.certificate_required, "the client sent no certificate")
        chain = [der for der, _extensions in certificate.certificates]
        self._verifier.verify(chain)
        self._peer_certificate = X509Certificate(chain[0])
        self._peer_certificate_chain = [X509Certificate(der) for der in chain[1:]]
        assert self.key_schedule is not None
        self.key_schedule.update_hash(message)
        self._stage = _EXPECT_VERIFY

    def _take_certificate_verify(self, message: bytes) -> None:
        verify = qtls.pull_certificate_verify(Buffer(data=message))
        if verify.algorithm not in CLIENT_SIGNATURE_ALGORITHMS:
            raise qtls.AlertIllegalParameter(f"a client CertificateVerify with signature {verify.algorithm},"
                                             " which was not offered")
        assert self.key_schedule is not None and self._peer_certificate is not None
        try:
            verify_with_public_key(self._peer_certificate.public_key(), verify.algorithm,
                                   self.key_schedule.certificate_verify_data(_CERTIFICATE_CONTEXT), verify.signature)
        except SignatureError:
            raise qtls.AlertDecryptError("the client's CertificateVerify does not match its certificate") from None
        self.key_schedule.update_hash(message)
        self._stage = _EXPECT_FINISHED


class ServerQuicConnection(QuicConnection):
    """qh3's server connection, whose TLS requires a client certificate when its configuration
    (a :class:`ServerConfiguration`) has a ``client_verifier``."""

    def _create_tls(self, remote_source_cid: bytes | None) -> QuicTlsBridge:
        bridge = super()._create_tls(remote_source_cid)
        verifier = getattr(self._configuration, "client_verifier", None)
        if verifier is not None:
            address = self._remote_addr
            peer = f"quic://{address[0]}:{address[1]}" if address else "a client"
            bridge.tls = ClientAuthContext.adopt(bridge.tls, verifier, peer=peer,
                                                 log=getattr(self._configuration, "refusal_log", None))
        return bridge


# ---------------------------------------------------------------- the client's words for it
#: QUIC's crypto errors (0x100 + a TLS alert, RFC 9001 section 4.8) a client can act on.
_CRYPTO_ERRORS = {
    qtls.AlertDescription.certificate_required: "the server requires a client certificate",
    qtls.AlertDescription.unknown_ca: "the server does not trust this certificate's CA",
    qtls.AlertDescription.bad_certificate: "the server rejected the client certificate",
    qtls.AlertDescription.certificate_expired: "the server says the client certificate has expired",
    qtls.AlertDescription.decrypt_error: "the server could not verify this client's signature (the key is not"
                                         " the client certificate's?)",
}
_CRYPTO_ERROR = 0x100


def certificate_requested(quic: QuicConnection) -> bool:
    """The server asked this client for a certificate (qh3's client keeps the request in its
    context's ``_certificate_request``)."""
    return getattr(quic.tls, "_certificate_request", None) is not None


def describe_crypto_error(error_code: int, reason: str) -> str | None:
    """What a QUIC CONNECTION_CLOSE with a TLS alert the peer sent means to a client, in words
    (as ``trpc._tls.describe_tls_failure`` says it for TLS over TCP); None for other errors."""
    if not _CRYPTO_ERROR <= error_code < _CRYPTO_ERROR + 0x100:
        return None
    try:
        alert = qtls.AlertDescription(error_code - _CRYPTO_ERROR)
    except ValueError:
        return f"TLS failed: alert {error_code - _CRYPTO_ERROR}" + (f" ({reason})" if reason else "")
    text = _CRYPTO_ERRORS.get(alert)
    if text is None:
        return f"TLS failed: {alert.name}" + (f" ({reason})" if reason else "")
    return f"{text} [{alert.name}]"


# ---------------------------------------------------------------- getpeercert()'s shape
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _attribute_name(dotted: str) -> str:
    """OpenSSL's long name for an OID, as getpeercert() names it (the dotted form if unknown)."""
    try:
        return ssl._ASN1Object(dotted).longname
    except (ValueError, AttributeError):
        return dotted


def _name(name: Any) -> tuple[tuple[tuple[str, str], ...], ...]:
    return tuple(
        tuple((_attribute_name(attribute.oid.dotted_string),
               attribute.value if isinstance(attribute.value, str) else attribute.value.hex())
              for attribute in rdn)
        for rdn in name.rdns
    )


def _time(when: datetime.datetime) -> str:
    """OpenSSL's ASN1_TIME_print form: ``Nov  3 04:05:06 2026 GMT``."""
    return f"{_MONTHS[when.month - 1]} {when.day:2d} {when:%H:%M:%S} {when.year} GMT"


def _ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address | Any) -> str:
    if isinstance(address, ipaddress.IPv6Address):  # CPython writes every group, in capitals
        packed = address.packed
        return ":".join(f"{int.from_bytes(packed[i:i + 2], 'big'):X}" for i in range(0, 16, 2))
    return str(address)


def certificate_dict(der: bytes) -> dict[str, Any]:
    """A certificate (DER) as ``ssl.SSLSocket.getpeercert()`` gives it: subject, issuer,
    version, serialNumber, notBefore, notAfter, and subjectAltName, OCSP, caIssuers,
    crlDistributionPoints where the certificate has them."""
    from cryptography import x509
    from cryptography.x509.oid import AuthorityInformationAccessOID

    certificate = x509.load_der_x509_certificate(der)
    serial = certificate.serial_number
    digits = format(abs(serial), "X")
    result: dict[str, Any] = {
        "subject": _name(certificate.subject),
        "issuer": _name(certificate.issuer),
        "version": certificate.version.value + 1,
        "serialNumber": ("-" if serial < 0 else "") + digits.rjust(len(digits) + len(digits) % 2, "0"),
        "notBefore": _time(certificate.not_valid_before_utc),
        "notAfter": _time(certificate.not_valid_after_utc),
    }
    extensions = certificate.extensions
    try:
        names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        alt: list[tuple[str, Any]] = []
        for general in names:
            if isinstance(general, x509.DNSName):
                alt.append(("DNS", general.value))
            elif isinstance(general, x509.RFC822Name):
                alt.append(("email", general.value))
            elif isinstance(general, x509.UniformResourceIdentifier):
                alt.append(("URI", general.value))
            elif isinstance(general, x509.IPAddress):
                alt.append(("IP Address", _ip(general.value)))
            elif isinstance(general, x509.DirectoryName):
                alt.append(("DirName", _name(general.value)))
            elif isinstance(general, x509.RegisteredID):
                alt.append(("Registered ID", _attribute_name(general.value.dotted_string)))
            else:
                alt.append(("othername", "<unsupported>"))
        result["subjectAltName"] = tuple(alt)
    try:
        access = extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        pass
    else:
        for method, key in ((AuthorityInformationAccessOID.OCSP, "OCSP"),
                            (AuthorityInformationAccessOID.CA_ISSUERS, "caIssuers")):
            uris = tuple(d.access_location.value for d in access
                         if d.access_method == method and isinstance(d.access_location, x509.UniformResourceIdentifier))
            if uris:
                result[key] = uris
    try:
        points = extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        pass
    else:
        uris = tuple(name.value for point in points for name in (point.full_name or ())
                     if isinstance(name, x509.UniformResourceIdentifier))
        if uris:
            result["crlDistributionPoints"] = uris
    return result
