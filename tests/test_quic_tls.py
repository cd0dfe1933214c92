"""Mutual TLS over QUIC (trpc.quic._tls): a server that requires client certificates, clients
that present theirs, and the refusals, over loopback UDP with certificates made by trustme."""

from __future__ import annotations

import datetime
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

import trpc
from trpc import RpcError, Status

from .helpers import listening_address

pytest.importorskip("qh3")
pytest.importorskip("cryptography")

import qh3.tls  # noqa: E402
from qh3._hazmat import Buffer  # noqa: E402
from qh3._hazmat import Certificate as X509Certificate  # noqa: E402
from qh3.quic.configuration import QuicConfiguration  # noqa: E402

from trpc.quic import _tls, _transport  # noqa: E402


class Whoami(trpc.Service):
    """Keeps the client certificate each call saw (None: none)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any] | None] = []

    @trpc.unary
    async def whoami(self) -> str:
        certificate = trpc.current_call().peer_certificate
        self.seen.append(certificate)
        if certificate is None:
            return "nobody"
        return str(dict(pair for rdn in certificate["subject"] for pair in rdn)["commonName"])


@dataclass
class Pems:
    """PEM files: the server's, the CA's, and clients' (certificate chain and key in one file)."""

    folder: Path
    ca: trustme.CA
    paths: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, blob: trustme.Blob) -> str:
        path = self.folder / f"{name}.pem"
        blob.write_to_path(str(path))
        self.paths[name] = str(path)
        return str(path)


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> Pems:
    ca = trustme.CA()
    pems = Pems(tmp_path_factory.mktemp("quic-mtls"), ca)
    server = ca.issue_cert("127.0.0.1", "localhost")
    pems.add("server", server.private_key_and_cert_chain_pem)
    pems.add("ca", ca.cert_pem)
    alice = ca.issue_cert("alice.example.org", "127.0.0.1", "::1", "alice@example.org", common_name="alice",
                          organization_name="Example", organization_unit_name="Clients")
    pems.add("alice", alice.private_key_and_cert_chain_pem)
    pems.add("alice-cert", alice.cert_chain_pems[0])
    pems.add("alice-key", alice.private_key_pem)
    pems.add("rsa", ca.issue_cert("rsa.example.org", common_name="rsa", key_type=trustme.KeyType.RSA)
             .private_key_and_cert_chain_pem)
    intermediate = ca.create_child_ca()
    via = intermediate.issue_cert("via.example.org", common_name="via")
    pems.add("via", via.private_key_and_cert_chain_pem)  # leaf, then the intermediate
    pems.add("stranger", trustme.CA().issue_cert("stranger.example.org", common_name="stranger")
             .private_key_and_cert_chain_pem)
    pems.add("mallory-key", ca.issue_cert("mallory.example.org").private_key_pem)
    return pems


@pytest.fixture
def client_context(pems: Pems) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pems.ca.configure_trust(context)
    return context


async def serve(nursery: trio.Nursery, pems: Pems, service: trpc.Service, client_cafile: str | None) -> str:
    server = trpc.Server(service)
    host, port = await nursery.start(lambda task_status: server.serve_quic(
        0, "127.0.0.1", certfile=pems.paths["server"], client_cafile=client_cafile, task_status=task_status))
    return f"quic://{host}:{port}"


async def whoami(target: str, pems: Pems, certfile: str | None, keyfile: str | None = None) -> str:
    context = ssl.create_default_context()
    pems.ca.configure_trust(context)
    async with trpc.open_client(target, ssl_context=context, certfile=certfile, keyfile=keyfile,
                                connect_timeout=10) as client:
        with trio.fail_after(20):
            return str(await client.whoami())


async def refusal(target: str, pems: Pems, certfile: str | None) -> str:
    """The message of the UNAVAILABLE a client with ``certfile`` gets."""
    with pytest.raises(RpcError) as info:
        await whoami(target, pems, certfile)
    assert info.value.status is Status.UNAVAILABLE
    return info.value.message


@pytest.fixture
async def mtls_server(nursery: trio.Nursery, pems: Pems) -> tuple[str, Whoami]:
    service = Whoami()
    return await serve(nursery, pems, service, pems.paths["ca"]), service


@pytest.mark.parametrize("client", ["alice", "rsa", "via"])
async def test_a_client_with_a_certificate_the_ca_signed_is_served_and_its_handler_sees_it(
    mtls_server: tuple[str, Whoami], pems: Pems, client: str
) -> None:
    target, service = mtls_server
    assert await whoami(target, pems, pems.paths[client]) == client
    assert service.seen[-1] is not None


async def test_the_handler_sees_the_same_certificate_dict_over_quic_as_over_tcp(
    mtls_server: tuple[str, Whoami], nursery: trio.Nursery, pems: Pems, client_context: ssl.SSLContext
) -> None:
    target, service = mtls_server
    await whoami(target, pems, pems.paths["alice-cert"], pems.paths["alice-key"])
    over_quic = service.seen[-1]
    # The same certificate over TCP, where ssl's getpeercert() makes the dict.
    tcp_service = Whoami()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(pems.paths["server"])
    server_context.load_verify_locations(pems.paths["ca"])
    server_context.verify_mode = ssl.CERT_REQUIRED
    server = trpc.Server(tcp_service)
    host, port = await nursery.start(lambda task_status: server.serve_tcp(
        0, "127.0.0.1", ssl_context=server_context, task_status=task_status))
    async with trpc.open_client((host, port), ssl_context=client_context, certfile=pems.paths["alice-cert"],
                                keyfile=pems.paths["alice-key"]) as client:
        assert await client.whoami() == "alice"
    over_tcp = tcp_service.seen[-1]
    assert over_tcp is not None and over_quic is not None
    assert set(over_tcp) >= {"subject", "issuer", "version", "serialNumber", "notBefore", "notAfter", "subjectAltName"}
    assert over_quic == over_tcp, (over_quic, over_tcp)


async def test_a_client_without_a_certificate_is_told_the_server_requires_one_and_others_are_still_served(
    mtls_server: tuple[str, Whoami], pems: Pems, caplog: pytest.LogCaptureFixture
) -> None:
    target, _ = mtls_server
    message = await refusal(target, pems, None)
    assert "the server requires a client certificate" in message and "certificate_required" in message
    # The server logs it as it logs a failed TLS handshake over TCP.
    logged = [r.getMessage() for r in caplog.records if r.name == "trpc" and "TLS handshake" in r.getMessage()]
    assert len(logged) == 1 and "the client sent no certificate [certificate_required]" in logged[0], logged
    assert logged[0].startswith("trpc: TLS handshake with quic://127.0.0.1:")
    assert await whoami(target, pems, pems.paths["alice"]) == "alice"


async def test_a_certificate_from_another_ca_is_refused_and_others_are_still_served(
    mtls_server: tuple[str, Whoami], pems: Pems
) -> None:
    target, service = mtls_server
    message = await refusal(target, pems, pems.paths["stranger"])
    assert "does not trust this certificate's CA" in message and "unknown_ca" in message
    assert service.seen == []  # no call of the refused client reached the handler
    assert await whoami(target, pems, pems.paths["alice"]) == "alice"


async def test_a_certificate_presented_with_another_key_is_refused_and_others_are_still_served(
    mtls_server: tuple[str, Whoami], pems: Pems, monkeypatch: pytest.MonkeyPatch
) -> None:
    # open_client checks that a key is its certificate's: sign with another key behind its back,
    # as a client that copied someone's certificate would.
    made = _transport.client_configuration
    mallory = QuicConfiguration(is_client=True)
    mallory.load_cert_chain(pems.paths["alice-cert"], pems.paths["mallory-key"])
    assert mallory.private_key is not None

    def with_mallorys_key(*args: Any, **kwargs: Any) -> Any:
        configuration = made(*args, **kwargs)
        configuration.private_key = mallory.private_key
        return configuration

    monkeypatch.setattr(_transport, "client_configuration", with_mallorys_key)
    target = mtls_server[0]
    message = await refusal(target, pems, pems.paths["alice"])
    assert "decrypt_error" in message
    monkeypatch.setattr(_transport, "client_configuration", made)
    assert await whoami(target, pems, pems.paths["alice"]) == "alice"


async def test_without_client_cafile_no_certificate_is_asked_for(nursery: trio.Nursery, pems: Pems) -> None:
    service = Whoami()
    target = await serve(nursery, pems, service, None)
    assert await whoami(target, pems, pems.paths["alice"]) == "nobody"
    assert await whoami(target, pems, None) == "nobody"
    assert service.seen == [None, None]


async def test_a_server_whose_qh3_sends_no_certificate_request_refuses_rather_than_serves_unauthenticated(
    mtls_server: tuple[str, Whoami], pems: Pems, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if a later qh3 wrote EncryptedExtensions some other way: the request is never written.
    monkeypatch.setattr(qh3.tls, "push_encrypted_extensions", _tls._push_encrypted_extensions)
    message = await refusal(mtls_server[0], pems, pems.paths["alice"])
    assert "internal_error" in message


def test_the_certificate_request_asks_for_tls13_signatures_only_with_an_empty_context() -> None:
    buf = Buffer(capacity=256)
    _tls.push_certificate_request(buf, _tls.CLIENT_SIGNATURE_ALGORITHMS)
    request = qh3.tls.pull_certificate_request(Buffer(data=buf.data))
    assert request.request_context == b""
    assert request.signature_algorithms is not None
    assert request.signature_algorithms == list(_tls.CLIENT_SIGNATURE_ALGORITHMS)
    assert request.other_extensions == []
    assert qh3.tls.SignatureAlgorithm.RSA_PKCS1_SHA256 not in request.signature_algorithms


def _leaf(ca: trustme.CA, usages: list[Any] | None, *, days: int = 1) -> bytes:
    """A client certificate signed by ``ca`` with these extended key usages (None: none), and
    neither a subjectAltName nor an authority key id, as many private CAs make them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    signer = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bob")]))
               .issuer_name(issuer).public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=2)).not_valid_after(now + datetime.timedelta(days=days)))
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]


def test_the_verifier_takes_client_certificates_qh3s_server_verifier_would_refuse(pems: Pems) -> None:
    from cryptography.x509.oid import ExtendedKeyUsageOID

    verifier = _tls.ClientVerifier(pems.paths["ca"])
    for usages in ([ExtendedKeyUsageOID.CLIENT_AUTH], None):
        der = _leaf(pems.ca, usages)
        verifier.verify([der])
        with pytest.raises(qh3.tls.Alert):  # qh3's own: serverAuth and a name required
            qh3.tls.verify_certificate(X509Certificate(der), [], cadata=pems.ca.cert_pem.bytes(),
                                       server_name="bob", assert_server_name=False)


def test_the_verifier_refuses_a_server_only_an_expired_or_a_strangers_certificate(pems: Pems) -> None:
    from cryptography.x509.oid import ExtendedKeyUsageOID

    verifier = _tls.ClientVerifier(pems.paths["ca"])
    cases = [
        (_leaf(pems.ca, [ExtendedKeyUsageOID.SERVER_AUTH]), qh3.tls.AlertDescription.bad_certificate),
        (_leaf(pems.ca, None, days=-1), qh3.tls.AlertDescription.certificate_expired),
        (_leaf(trustme.CA(), None), qh3.tls.AlertDescription.unknown_ca),
        (b"\x30\x03\x02\x01\x00", qh3.tls.AlertDescription.bad_certificate),
    ]
    for der, description in cases:
        with pytest.raises(qh3.tls.Alert) as info:
            verifier.verify([der])
        assert info.value.description == description, info.value


def test_the_verifier_checks_validity_at_the_time_of_each_check(pems: Pems, monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = _tls.ClientVerifier(pems.paths["ca"])
    der = _leaf(pems.ca, None, days=1)
    verifier.verify([der])
    later = _tls._now() + datetime.timedelta(days=2)
    monkeypatch.setattr(_tls, "_now", lambda: later)  # the server has run two days since
    with pytest.raises(qh3.tls.Alert) as info:
        verifier.verify([der])
    assert info.value.description == qh3.tls.AlertDescription.certificate_expired


def test_a_ca_file_without_certificates_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        _tls.ClientVerifier(str(empty))


async def test_open_client_takes_a_certificate_only_with_tls(pems: Pems) -> None:
    with pytest.raises(ValueError, match="needs ssl_context"):
        async with trpc.open_client("quic://127.0.0.1:1", certfile=pems.paths["alice"]):
            pass
    with pytest.raises(ValueError, match="keyfile needs certfile"):
        async with trpc.open_client("127.0.0.1:1", ssl_context=ssl.create_default_context(),
                                    keyfile=pems.paths["alice-key"]):
            pass


async def test_trpc_serve_quic_with_tls_client_ca_serves_trpc_call_with_tls_cert_and_refuses_it_without(
    nursery: trio.Nursery, pems: Pems
) -> None:
    process = await nursery.start(lambda task_status: trio.run_process(
        [sys.executable, "-m", "trpc", "serve", "trpc.examples:Greeter", "--quic", "0", "--tls-cert",
         pems.paths["server"], "--tls-client-ca", pems.paths["ca"]],
        stdout=subprocess.PIPE, check=False, task_status=task_status))
    try:
        address = await listening_address(process)
        assert address.startswith("quic://127.0.0.1:")
        call = [sys.executable, "-m", "trpc", "call", address, "greet", "Ada", "--tls-ca", pems.paths["ca"],
                "--connect-timeout", "10"]
        with trio.fail_after(60):
            served = await trio.run_process(
                [*call, "--tls-cert", pems.paths["alice-cert"], "--tls-key", pems.paths["alice-key"]],
                capture_stdout=True, capture_stderr=True, check=False)
            refused = await trio.run_process(call, capture_stdout=True, capture_stderr=True, check=False)
        assert (served.returncode, served.stdout) == (0, b"Hello Ada\n"), served.stderr
        assert refused.returncode != 0
        assert b"the server requires a client certificate" in refused.stderr, refused.stderr
        assert b"try --tls-cert PEM --tls-key PEM" in refused.stderr, refused.stderr
    finally:
        process.terminate()


# ------------------------------------------------------------ the server's TLS, driven in memory
def _buffers() -> dict[qh3.tls.Epoch, Any]:
    return {epoch: Buffer(capacity=65536) for epoch in
            (qh3.tls.Epoch.INITIAL, qh3.tls.Epoch.HANDSHAKE, qh3.tls.Epoch.ONE_RTT)}


def _identity(certfile: str, keyfile: str | None = None) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=False)
    configuration.load_cert_chain(certfile, keyfile or certfile)
    return configuration


def _client_flight(pems: Pems, certfile: str | None) -> tuple[_tls.ClientAuthContext, list[bytes]]:
    """A server context requiring client certificates, after the client's hello, and the
    handshake messages of the client's second flight (Certificate..., Finished), one by one."""
    server_identity = _identity(pems.paths["server"])
    server = qh3.tls.Context(is_client=False)
    server.certificate = server_identity.certificate
    server.certificate_private_key = server_identity.private_key
    server = _tls.ClientAuthContext.adopt(server, _tls.ClientVerifier(pems.paths["ca"]))
    client = qh3.tls.Context(is_client=True, cadata=pems.ca.cert_pem.bytes(), server_name="localhost")
    if certfile is not None:
        client_identity = _identity(certfile)
        client.certificate = client_identity.certificate
        client.certificate_private_key = client_identity.private_key
    out = _buffers()
    client.handle_message(b"", out)
    hello = out[qh3.tls.Epoch.INITIAL].data
    out = _buffers()
    server.handle_message(hello, out, qh3.tls.Epoch.INITIAL)
    assert server.state is qh3.tls.State.SERVER_EXPECT_FINISHED
    answer = _buffers()
    client.handle_message(out[qh3.tls.Epoch.INITIAL].data, answer, qh3.tls.Epoch.INITIAL)
    client.handle_message(out[qh3.tls.Epoch.HANDSHAKE].data, answer, qh3.tls.Epoch.HANDSHAKE)
    assert client.state is qh3.tls.State.CLIENT_POST_HANDSHAKE
    flight = answer[qh3.tls.Epoch.HANDSHAKE].data
    messages = []
    while flight:
        length = 4 + int.from_bytes(flight[1:4], "big")
        messages.append(flight[:length])
        flight = flight[length:]
    return server, messages


def test_the_client_flight_fed_one_byte_at_a_time_completes_the_handshake(pems: Pems) -> None:
    server, messages = _client_flight(pems, pems.paths["alice"])
    assert [m[0] for m in messages] == [qh3.tls.HandshakeType.CERTIFICATE, qh3.tls.HandshakeType.CERTIFICATE_VERIFY,
                                        qh3.tls.HandshakeType.FINISHED]
    for byte in b"".join(messages):
        server.handle_message(bytes([byte]), _buffers(), qh3.tls.Epoch.HANDSHAKE)
    assert server.state is qh3.tls.State.SERVER_POST_HANDSHAKE
    assert server.peer_certificate is not None and not server.alps_negotiated


@pytest.mark.parametrize("drop", [0, 1])
def test_a_client_flight_without_its_certificate_or_its_signature_is_refused(pems: Pems, drop: int) -> None:
    server, messages = _client_flight(pems, pems.paths["alice"])
    del messages[drop]
    with pytest.raises(qh3.tls.Alert) as info:
        server.handle_message(b"".join(messages), _buffers(), qh3.tls.Epoch.HANDSHAKE)
    expected = qh3.tls.AlertDescription.certificate_required if drop == 0 else qh3.tls.AlertDescription.unexpected_message
    assert info.value.description == expected


def test_a_client_finished_that_does_not_cover_its_certificate_is_refused(pems: Pems) -> None:
    # A Finished from another handshake (another client certificate): qh3's check of the
    # Finished, deferred until it arrives, still runs.
    server, messages = _client_flight(pems, pems.paths["alice"])
    _, others = _client_flight(pems, pems.paths["rsa"])
    with pytest.raises(qh3.tls.Alert) as info:
        server.handle_message(b"".join(messages[:2]) + others[2], _buffers(), qh3.tls.Epoch.HANDSHAKE)
    assert info.value.description == qh3.tls.AlertDescription.decrypt_error


def test_the_client_flight_is_taken_at_the_handshake_epoch_only(pems: Pems) -> None:
    server, messages = _client_flight(pems, pems.paths["alice"])
    with pytest.raises(qh3.tls.Alert) as info:
        server.handle_message(messages[0], _buffers(), qh3.tls.Epoch.ONE_RTT)
    assert info.value.description == qh3.tls.AlertDescription.unexpected_message


def test_a_certificate_message_over_the_limit_is_refused_before_it_is_buffered(pems: Pems) -> None:
    server, _ = _client_flight(pems, pems.paths["alice"])
    header = bytes([qh3.tls.HandshakeType.CERTIFICATE]) + (_tls.MAX_CLIENT_CERTIFICATE_MESSAGE - 3).to_bytes(3, "big")
    with pytest.raises(qh3.tls.Alert) as info:
        server.handle_message(header, _buffers(), qh3.tls.Epoch.HANDSHAKE)
    assert info.value.description == qh3.tls.AlertDescription.bad_certificate
    server, _ = _client_flight(pems, pems.paths["alice"])
    header = bytes([qh3.tls.HandshakeType.CERTIFICATE]) + (_tls.MAX_CLIENT_CERTIFICATE_MESSAGE - 4).to_bytes(3, "big")
    server.handle_message(header, _buffers(), qh3.tls.Epoch.HANDSHAKE)  # at the limit: waits for the rest


def test_a_client_encrypted_extensions_is_refused_when_alps_was_not_negotiated(pems: Pems) -> None:
    server, messages = _client_flight(pems, pems.paths["alice"])
    buf = Buffer(capacity=64)
    qh3.tls.push_encrypted_extensions(buf, qh3.tls.EncryptedExtensions())
    with pytest.raises(qh3.tls.Alert) as info:
        server.handle_message(buf.data + b"".join(messages), _buffers(), qh3.tls.Epoch.HANDSHAKE)
    assert info.value.description == qh3.tls.AlertDescription.unexpected_message


def test_a_plain_qh3_server_context_sends_no_certificate_request(pems: Pems) -> None:
    # The wrapped push_encrypted_extensions acts for trpc's contexts only.
    identity = _identity(pems.paths["server"])
    server = qh3.tls.Context(is_client=False)
    server.certificate = identity.certificate
    server.certificate_private_key = identity.private_key
    client = qh3.tls.Context(is_client=True, cadata=pems.ca.cert_pem.bytes(), server_name="localhost")
    out = _buffers()
    client.handle_message(b"", out)
    flight = _buffers()
    server.handle_message(out[qh3.tls.Epoch.INITIAL].data, flight, qh3.tls.Epoch.INITIAL)
    data = flight[qh3.tls.Epoch.HANDSHAKE].data
    kinds = []
    while data:
        kinds.append(data[0])
        data = data[4 + int.from_bytes(data[1:4], "big"):]
    assert qh3.tls.HandshakeType.CERTIFICATE_REQUEST not in kinds
    assert kinds[0] == qh3.tls.HandshakeType.ENCRYPTED_EXTENSIONS


async def test_over_quic_a_context_that_verifies_the_certificate_but_not_its_name_is_refused_up_front() -> None:
    """qh3 2.1 passes a certificate checked without its name whose subjectAltName is an e-mail
    address, whatever CA signed it; so trpc refuses that configuration over QUIC (naming the
    way out: server_hostname) instead of connecting with it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    with pytest.raises(ValueError, match="server_hostname"):
        async with trpc.open_client("quic://127.0.0.1:9", ssl_context=context):
            pass  # pragma: no cover
    context.verify_mode = ssl.CERT_NONE  # no verification at all: allowed, as over TCP
    with pytest.raises(trpc.RpcError) as caught:  # (no server there: it gets as far as connecting)
        async with trpc.open_client("quic://127.0.0.1:9", ssl_context=context, connect_timeout=0.3):
            pass  # pragma: no cover
    assert caught.value.status is trpc.Status.UNAVAILABLE
