"""trpc over QUIC as documented (docs/PROTOCOL.md section 16), tested with an independent client.

``quic_spec_client`` was written from the document alone, on aioquic (trpc's own QUIC code uses
qh3), so these tests hold the server to the document against a second QUIC stack.  Each test
runs trpc's server on loopback UDP, port 0, drives one behaviour through that client, and
asserts the result and that the client recorded no violation.  Every wait is bounded.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import cbor2
import pytest
import trio
import trustme

import trpc
from trpc import Status

from .services import Svc

pytest.importorskip("aioquic", reason="the independent QUIC client is built on aioquic")
pytest.importorskip("qh3", reason="trpc's QUIC server needs qh3")

from . import quic_spec_client as q  # noqa: E402
from .quic_spec_client import (  # noqa: E402
    DATA, GOAWAY, HEADERS, INFO, INITIAL_CALL_WINDOW, NO_ERROR, OK, REFUSED, WINDOW_UPDATE,
    Connection, connect, encode_args, encode_frame,
)

T = 5  # seconds: the bound on any single wait
SVC = "tests.services.Svc"
MiB = 1024 * 1024


class Bulk(trpc.Service, name="spec.Bulk"):
    """Large messages and response metadata, for flow control, limits and headers."""

    @trpc.server_stream
    async def chunks(self, n: int, size: int) -> AsyncIterator[bytes]:
        for i in range(n):
            yield bytes([i % 256]) * size

    @trpc.unary
    async def blob(self, size: int) -> bytes:
        return b"z" * size

    @trpc.client_stream
    async def measure(self, parts: AsyncIterator[bytes]) -> int:
        return sum([len(p) async for p in parts])

    @trpc.unary
    async def decorated(self, value: str) -> str:
        call = trpc.current_call()
        call.send_headers({"x-head": "h", "x-bin": b"\x00\x01"})
        call.set_trailers({"x-tail": "t"})
        return value


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("quic-spec-pems")
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"cert": folder / "cert.pem", "key": folder / "key.pem", "ca": folder / "ca.pem"}
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    return {name: str(path) for name, path in paths.items()}


Serve = Callable[..., Awaitable[tuple[str, int]]]


@pytest.fixture
def serve(nursery: trio.Nursery, pems: dict[str, str], service: Svc) -> Serve:
    """``await serve(**server_options)``: a trpc server of ``Svc`` and ``Bulk`` over QUIC."""

    async def start(*services: Any, **options: Any) -> tuple[str, int]:
        server = trpc.Server(*(services or (service, Bulk())), **options)
        address: tuple[str, int] = await nursery.start(lambda task_status: server.serve_quic(
            0, "127.0.0.1", certfile=pems["cert"], keyfile=pems["key"], task_status=task_status))
        return address

    return start


async def wait_until(predicate: Callable[[], bool], timeout: float = T) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.002)


# ================================================================ connection and control streams


async def test_the_handshake_verifies_the_certificate_and_the_server_speaks_first_with_info(
    serve: Serve, pems: dict[str, str]
) -> None:
    address = await serve()
    async with connect(address, cafile=pems["ca"]) as conn:
        with trio.fail_after(T):
            await conn.info_received.wait()
        info = conn.server_info
        assert info is not None and conn.control_frames[0].type == INFO
        assert {"greet", f"{SVC}/greet", f"{SVC}/count"} <= set(info[1])
        assert info[2][f"{SVC}/greet"] == 0 and info[2][f"{SVC}/count"] == 1
        assert info[2][f"{SVC}/total"] == 2 and info[2][f"{SVC}/bidi_echo"] == 3
        assert info[2]["spec.Bulk/chunks"] == 1
        assert conn.server_codings & 1  # the server accepts zlib (key 3, section 16)


async def test_a_client_that_does_not_trust_the_servers_certificate_never_connects(
    serve: Serve, tmp_path: Any
) -> None:
    address = await serve()
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    with pytest.raises(ConnectionError):
        async with connect(address, cafile=str(stranger)):
            pass  # pragma: no cover


async def test_a_client_offering_another_alpn_is_refused(serve: Serve, pems: dict[str, str]) -> None:
    address = await serve()
    with pytest.raises(ConnectionError):
        async with connect(address, cafile=pems["ca"], alpn="h3"):
            pass  # pragma: no cover


# ============================================================================ call shapes


async def test_a_unary_call_is_headers_data_and_fin_answered_by_data_and_trailers(
    serve: Serve, pems: dict[str, str]
) -> None:
    async with connect(await serve(), cafile=pems["ca"]) as conn:
        with trio.fail_after(T):
            reply = await conn.call("greet", "Ada")
        assert reply.result == "Hello Ada"
        call = conn.calls[0]
        # response HEADERS are optional (section 4); then one message, TRAILERS, FIN
        assert [f.type for f in call.frames if f.type != HEADERS] == [DATA, q.TRAILERS]
        assert call.frames[-2].payload == cbor2.dumps("Hello Ada") and call.fin
        assert reply.trailers is not None and reply.trailers.raw == {1: 0}
        with trio.fail_after(T):
            assert (await conn.call(f"{SVC}/add", 2, b=3)).result == 5
            assert (await conn.call("nothing")).result is None
        assert [c for c in conn.calls] == [0, 4, 8]  # client bidirectional streams


async def test_every_call_shape_works_on_its_own_stream(serve: Serve, pems: dict[str, str]) -> None:
    async with connect(await serve(), cafile=pems["ca"]) as conn:
        with trio.fail_after(T):
            reply = await conn.call("count", 5)
            assert reply.messages == [0, 1, 2, 3, 4] and reply.status == OK

            call = conn.open_call("total")
            for i in range(10):
                await call.send(i)
            await call.end()
            assert (await call.finish()).result == 45

            empty = conn.open_call("total")
            await empty.end()  # no request message: an empty client stream
            assert (await empty.finish()).result == 0

            bidi = conn.open_call("bidi_echo")
            for word in ["a", "b", "c"]:
                await bidi.send(word)
                assert await bidi.receive_message() == word
            await bidi.end()
            reply = await bidi.finish()
            assert reply.messages == [] and reply.status == OK


# ============================================================ errors, metadata, deadlines


async def test_trailers_carry_status_message_details_and_metadata(
    serve: Serve, pems: dict[str, str]
) -> None:
    async with connect(await serve(), cafile=pems["ca"]) as conn:
        with trio.fail_after(T):
            reply = await conn.call("fail", "rpc")
            assert reply.messages == [] and reply.trailers is not None
            assert reply.trailers.status == NOT_FOUND
            assert reply.trailers.message == "no such thing"
            assert reply.trailers.details == {"id": 7}
            assert reply.trailers.metadata == {"hint": "try 8"}

            reply = await conn.call("fail", "boom")
            assert reply.status == q.INTERNAL and "secret" not in reply.trailers.message  # type: ignore[union-attr]

            reply = await conn.call("missing")
            assert reply.status == q.UNIMPLEMENTED
            assert reply.trailers.message == 'unknown method "missing"'  # type: ignore[union-attr]
            assert (await conn.call("greet")).status == q.INVALID_ARGUMENT


NOT_FOUND = q.NOT_FOUND


async def test_metadata_goes_both_ways_in_headers_and_trailers(
    serve: Serve, pems: dict[str, str]
) -> None:
    async with connect(await serve(), cafile=pems["ca"]) as conn:
        with trio.fail_after(T):
            reply = await conn.call("whoami", metadata={"x-user": "ada", "x-raw": b"\xff"})
            assert reply.result["metadata"]["x-user"] == "ada"
            assert reply.result["metadata"]["x-raw"] == b"\xff"
            assert reply.result["method"] == f"{SVC}/whoami"

            reply = await conn.call("decorated", "v")
        assert reply.result == "v"
        assert reply.headers == {"x-head": "h", "x-bin": b"\x00\x01"}
        assert reply.trailers is not None and reply.trailers.metadata == {"x-tail": "t"}
        assert [f.type for f in conn.calls[4].frames] == [HEADERS, DATA, q.TRAILERS]


async def test_a_deadline_in_headers_bounds_the_handler(
    serve: Serve, pems: dict[str, str], service: Svc
) -> None:
    async with connect(await serve(), cafile=pems["ca"]) as conn:
        with trio.fail_after(T):
            remaining = (await conn.call("remaining", timeout=5)).result
            assert 0 < remaining <= 5
            reply = await conn.call("block", timeout=0.05)
            assert reply.status == q.DEADLINE_EXCEEDED
            await service.cancelled.wait()
            assert service.cancel_reasons == [Status.DEADLINE_EXCEEDED]
            reply = await conn.call("greet", "late", timeout=0)
            assert reply.status == q.DEADLINE_EXCEEDED
            assert reply.trailers is not None and not reply.trailers.not_processed
