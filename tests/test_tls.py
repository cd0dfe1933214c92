"""TLS and mutual TLS over real TCP, with certificates made by trustme."""

from __future__ import annotations

import logging
import ssl

import pytest
import trio
import trustme

import trpc
from trpc import RpcError, Status


class Whoami(trpc.Service):
    @trpc.unary
    async def subject(self):
        certificate = trpc.current_call().peer_certificate
        if certificate is None:
            return None
        return dict(pair for rdn in certificate["subject"] for pair in rdn)


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def server_context(ca):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def client_context(ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_tls_call(nursery, server_context, client_context):
    server = trpc.Server(Whoami())
    host, port = await nursery.start(lambda task_status: server.serve_tcp(0, ssl_context=server_context, task_status=task_status))
    async with trpc.open_client((host, port), ssl_context=client_context) as client:
        assert await client.subject() is None  # no client certificate: plain TLS
    # A client that does not trust the server's CA is refused, with the reason.
    with pytest.raises(RpcError) as info:
        async with trpc.open_client((host, port), ssl_context=ssl.create_default_context()):
            pass
    assert info.value.status is Status.UNAVAILABLE and "TLS handshake" in info.value.message
    # And a plain-TCP client does not get a trpc server.
    with pytest.raises(RpcError) as info:
        async with trpc.open_client((host, port), connect_timeout=3):
            pass
    assert info.value.status is Status.UNAVAILABLE


async def test_mutual_tls(nursery, ca, server_context, client_context):
    server_context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_context)
    server = trpc.Server(Whoami())
    host, port = await nursery.start(lambda task_status: server.serve_tcp(0, ssl_context=server_context, task_status=task_status))
    ca.issue_cert("client-7@example.com", common_name="client-7").configure_cert(client_context)
    async with trpc.open_client((host, port), ssl_context=client_context) as client:
        assert (await client.subject())["commonName"] == "client-7"
    anonymous = ssl.create_default_context()
    ca.configure_trust(anonymous)
    with pytest.raises(RpcError) as info:
        async with trpc.open_client((host, port), ssl_context=anonymous) as client:
            await client.subject()
    assert info.value.status is Status.UNAVAILABLE


async def test_a_silent_tls_client_is_dropped(nursery, server_context, monkeypatch, autojump_clock):
    """A connection that never starts its handshake is closed after the handshake timeout."""
    import trio.testing

    server = trpc.Server(Whoami())
    client_stream, server_stream = trio.testing.memory_stream_pair()
    done = trio.Event()

    async def serve():
        await server._serve_tls_connection(server_context, server_stream)
        done.set()

    nursery.start_soon(serve)
    await done.wait()
    assert trio.current_time() == pytest.approx(trpc._server.TLS_HANDSHAKE_TIMEOUT)
    assert server.connections == 0


# ----------------------------------------------------------------- failures named (two CAs)
@pytest.fixture(scope="module")
def other_ca():
    return trustme.CA()


async def expect_unavailable(address, context, text, **options):
    with trio.fail_after(10):
        with pytest.raises(RpcError) as info:
            async with trpc.open_client(address, ssl_context=context, connect_timeout=5, **options) as client:
                await client.subject()
    assert info.value.status is Status.UNAVAILABLE
    assert text in info.value.message, info.value.message


@pytest.fixture
async def mtls_address(nursery, ca, server_context):
    server_context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_context)
    server = trpc.Server(Whoami())
    return await nursery.start(lambda task_status: server.serve_tcp(0, "127.0.0.1", ssl_context=server_context, task_status=task_status))


async def test_a_client_without_a_certificate_is_told_the_server_requires_one(mtls_address, client_context, caplog):
    caplog.set_level(logging.WARNING, "trpc")
    await expect_unavailable(mtls_address, client_context, "the server requires a client certificate")
    await expect_unavailable(mtls_address, client_context, "the server requires a client certificate")
    # The server says so at WARNING, once for the two (rate-limited per reason).
    lines = [r.getMessage() for r in caplog.records if "TLS handshake with" in r.getMessage()]
    assert len(lines) == 1 and "did not return a certificate" in lines[0]


async def test_a_certificate_from_another_ca_is_told_the_server_does_not_trust_its_ca(mtls_address, ca, other_ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    other_ca.issue_cert("client@example.com").configure_cert(context)
    await expect_unavailable(mtls_address, context, "the server does not trust this certificate's CA")


async def test_a_server_certificate_from_another_ca_is_not_trusted_by_the_client(mtls_address, other_ca):
    context = ssl.create_default_context()
    other_ca.configure_trust(context)
    await expect_unavailable(mtls_address, context, "the server's certificate is not trusted by this client")


async def test_a_plaintext_client_is_told_the_server_speaks_tls(mtls_address):
    await expect_unavailable(mtls_address, None, "the peer speaks TLS")


async def test_a_tls_client_is_told_the_server_does_not_speak_tls(nursery, client_context):
    server = trpc.Server(Whoami())
    address = await nursery.start(server.serve_tcp, 0)
    await expect_unavailable(address, client_context, "the server does not speak TLS")
