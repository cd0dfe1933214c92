"""TLS and mutual TLS over real TCP, with certificates made by trustme."""

from __future__ import annotations

import ssl

import pytest
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
