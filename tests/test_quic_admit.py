"""Which datagrams may open a QUIC connection on trpc's server (quic/_admit.py), sans-IO and
over real UDP on loopback: garbage costs no state, a flood of Initials from forged addresses
is met with Retry once handshakes pile up, and real clients are served throughout."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

pytest.importorskip("qh3")

import trpc  # noqa: E402
from qh3._hazmat import Buffer  # noqa: E402
from qh3.quic.connection import QuicConnection  # noqa: E402
from qh3.quic.packet import QuicPacketType, QuicProtocolVersion, pull_quic_header  # noqa: E402
from trpc.quic import client_configuration  # noqa: E402
from trpc.quic import _transport  # noqa: E402
from trpc.quic._admit import MIN_INITIAL, TOKEN_LIFETIME, RetryTokens, admit  # noqa: E402

from .services import Svc  # noqa: E402

_HERE = ("127.0.0.1", 40000)
_V1 = [int(QuicProtocolVersion.VERSION_1)]


def _client_initial(server: tuple[str, int] = ("127.0.0.1", 1)) -> bytes:
    """A real client's first datagram (qh3's)."""
    context = ssl.create_default_context()
    quic = QuicConnection(configuration=client_configuration(context, "localhost"))
    quic.connect(server, now=1.0)
    return quic.datagrams_to_send(now=1.0)[0][0]


def _long_header(version: int, dcid: bytes, body: int = MIN_INITIAL) -> bytes:
    """An Initial's header (token length 0, length 1200) with random bytes after it."""
    return bytes([0xC3]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid + bytes([8]) + os.urandom(8) \
        + b"\x00\x44\xb0" + os.urandom(body)


def test_a_datagram_under_1200_bytes_or_with_a_short_header_opens_nothing_and_gets_no_reply() -> None:
    tokens = RetryTokens()
    initial = _client_initial()
    for data in (initial[:MIN_INITIAL - 1], b"\x40" + os.urandom(1300), b""):
        admission = admit(data, _HERE, 1.0, versions=_V1, tokens=tokens, validate=False)
        assert not admission.open and admission.reply is None


def test_a_real_clients_initial_opens_a_connection_at_once_when_the_server_is_not_under_pressure() -> None:
    initial = _client_initial()
    admission = admit(initial, _HERE, 1.0, versions=_V1, tokens=RetryTokens(), validate=False)
    header = pull_quic_header(Buffer(data=initial), host_cid_length=8)
    assert admission.open and admission.reply is None
    assert admission.original_dcid == header.destination_cid and admission.retry_scid is None


def test_an_unknown_version_gets_a_version_negotiation_listing_ours_and_no_state() -> None:
    admission = admit(_long_header(0x1A2A3A4A, os.urandom(8)), _HERE, 1.0, versions=_V1, tokens=RetryTokens(),
                      validate=False)
    assert not admission.open and admission.reply is not None
    reply = pull_quic_header(Buffer(data=admission.reply), host_cid_length=8)
    assert reply.packet_type == QuicPacketType.VERSION_NEGOTIATION and reply.supported_versions == _V1


def test_under_pressure_an_initial_without_a_token_gets_a_retry_whose_token_then_opens_the_connection() -> None:
    tokens = RetryTokens()
    initial = _client_initial()
    first = pull_quic_header(Buffer(data=initial), host_cid_length=8)
    admission = admit(initial, _HERE, 1.0, versions=_V1, tokens=tokens, validate=True)
    assert not admission.open and admission.reply is not None
    retry = pull_quic_header(Buffer(data=admission.reply), host_cid_length=8)
    assert retry.packet_type == QuicPacketType.RETRY and retry.destination_cid == first.source_cid
    assert tokens.check(_HERE, retry.token, 2.0) == (first.destination_cid, retry.source_cid)


def test_a_retry_token_is_good_only_from_its_address_unaltered_and_until_it_expires() -> None:
    tokens = RetryTokens()
    token = tokens.mint(_HERE, b"o" * 8, b"r" * 8, 100.0)
    assert tokens.check(_HERE, token, 100.0 + TOKEN_LIFETIME) == (b"o" * 8, b"r" * 8)
    assert tokens.check(("127.0.0.1", 40001), token, 100.0) is None
    assert tokens.check(("127.0.0.2", 40000), token, 100.0) is None
    assert tokens.check(_HERE, token, 100.0 + TOKEN_LIFETIME + 0.1) is None
    assert tokens.check(_HERE, token, 99.0) is None  # from the future
    tampered = bytearray(token)
    tampered[10] ^= 1
    assert tokens.check(_HERE, bytes(tampered), 100.0) is None
    assert tokens.check(_HERE, token[:-1], 100.0) is None
    assert RetryTokens().check(_HERE, token, 100.0) is None  # another endpoint's key


def test_an_initial_with_a_token_that_does_not_check_out_is_dropped() -> None:
    initial = _client_initial()
    tokens = RetryTokens()
    # A header with a forged token: token length 16, then the token.
    header = pull_quic_header(Buffer(data=initial), host_cid_length=8)
    forged = bytes([0xC3]) + b"\x00\x00\x00\x01" + bytes([8]) + header.destination_cid + bytes([8]) + os.urandom(8) \
        + b"\x10" + os.urandom(16) + b"\x44\xb0" + os.urandom(MIN_INITIAL)
    for validate in (False, True):
        admission = admit(forged, _HERE, 1.0, versions=_V1, tokens=tokens, validate=validate)
        assert not admission.open and admission.reply is None


# ----------------------------------------------------------------- over real UDP

@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, str]:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("admit") / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(path))
    return ca, str(path)


async def _serve(nursery: trio.Nursery, pem: str) -> tuple[trpc.Server, int]:
    server = trpc.Server(Svc())
    _, port = await nursery.start(lambda task_status: server.serve_quic(0, "127.0.0.1", certfile=pem,
                                                                       task_status=task_status))
    return server, port


async def _greet(ca: trustme.CA, port: int) -> Any:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with trio.fail_after(10):
        async with trpc.open_client(f"quic://127.0.0.1:{port}", ssl_context=context) as client:
            return await client.greet("Ada")


async def test_initials_with_a_good_header_and_garbage_after_it_leave_no_connection_behind(
    nursery: trio.Nursery, pems: tuple[trustme.CA, str],
) -> None:
    ca, pem = pems
    server, port = await _serve(nursery, pem)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(50):
            sock.sendto(_long_header(1, os.urandom(8)), ("127.0.0.1", port))
    await trio.sleep(0.2)
    assert server._sockets == 0
    assert await _greet(ca, port) == "Hello Ada"


async def test_a_flood_of_initials_from_forged_addresses_holds_at_most_retry_above_handshakes_and_clients_still_get_in(
    nursery: trio.Nursery, pems: tuple[trustme.CA, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_transport, "RETRY_ABOVE", 8)
    ca, pem = pems
    server, port = await _serve(nursery, pem)
    for _ in range(40):  # each from its own port, never answering: what forged sources look like
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(_client_initial(("127.0.0.1", port)), ("127.0.0.1", port))
    await trio.sleep(0.3)
    assert server._sockets == 8
    assert await _greet(ca, port) == "Hello Ada"  # through a Retry


async def test_every_client_proving_its_address_with_a_retry_is_served_as_usual(
    nursery: trio.Nursery, pems: tuple[trustme.CA, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_transport, "RETRY_ABOVE", 0)
    ca, pem = pems
    _, port = await _serve(nursery, pem)
    for _ in range(3):
        assert await _greet(ca, port) == "Hello Ada"
