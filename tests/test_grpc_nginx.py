"""trpc's gRPC wire behind nginx (Debian's package): ``grpc_pass`` to two trpc servers, a grpcio
client in front.  Skipped, saying why, where nginx is not installed (.ci/run installs it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from functools import partial

import cbor2
import grpc
import pytest
import trio

import trpc
from trpc import Status

from .test_grpc_wire import T, Wire, in_thread, stubs
from .grpc_cbor import cbor_channel
from .services import Svc

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")


class Who(trpc.Service, name="t.Who"):
    def __init__(self, label: str) -> None:
        self.label = label

    @trpc.unary
    async def whoami(self) -> str:
        return self.label


@pytest.fixture
def wire() -> Wire:
    return Wire()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CONFIG = """
{user}
worker_processes 1;
daemon off;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream trpc {{ server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{ grpc_pass grpc://trpc; }}
    }}
}}
"""


@pytest.fixture
async def proxied(nursery, tmp_path, wire):
    """Two trpc servers (both serving the one ``wire``) behind nginx: nginx's address."""
    addresses = []
    for index in (1, 2):
        server = trpc.Server(Svc(), wire, Who(f"backend-{index}"))
        addresses.append(await nursery.start(server.serve_tcp, 0))
    port = free_port()
    config = tmp_path / "nginx.conf"
    config.write_text(CONFIG.format(
        user="user root;" if os.geteuid() == 0 else "", dir=tmp_path, a=addresses[0][1], b=addresses[1][1], port=port,
    ))
    process = await trio.lowlevel.open_process([NGINX, "-c", str(config), "-p", str(tmp_path)],
                                               stdin=subprocess.DEVNULL)
    try:
        with trio.fail_after(T):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    assert process.poll() is None, (tmp_path / "error.log").read_text()
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                break
        yield ("127.0.0.1", port)
    finally:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
        if process.poll() is None:
            process.kill()
            await process.wait()


async def test_a_grpcio_client_calls_two_trpc_backends_through_nginx(proxied):
    def run():
        with cbor_channel(f"{proxied[0]}:{proxied[1]}") as channel:
            who = channel.unary_unary("/t.Who/whoami", request_serializer=cbor2.dumps, response_deserializer=cbor2.loads)
            names = {who([[]], timeout=T) for _ in range(8)}
            s = stubs(channel)
            return (names, s["greet"]([["nginx"]], timeout=T), list(s["count"]([[3]], timeout=T)),
                    list(s["bidi"](iter([1, 2]), timeout=T)))

    names, greeting, counted, echoed = await in_thread(run)
    assert names == {"backend-1", "backend-2"}
    assert (greeting, counted, echoed) == ("Hello nginx", [0, 1, 2], [1, 2])


async def test_a_deadline_crosses_nginx_and_cancels_the_handler(proxied, wire):
    def run():
        with cbor_channel(f"{proxied[0]}:{proxied[1]}") as channel:
            remaining = stubs(channel)["remaining"]([[]], timeout=5)
            with pytest.raises(grpc.RpcError) as info:
                stubs(channel)["block"]([[]], timeout=0.5)
            return remaining, info.value.code()

    remaining, code = await in_thread(run)
    assert 4 < remaining <= 5.1
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    with trio.fail_after(T):
        await wire.cancelled.wait()
    # The server's deadline (from nginx's grpc-timeout) and the client's, whose reset nginx
    # passes on upstream, run out together: whichever comes first cancels the handler.
    assert wire.cancel_reasons[0] in (Status.DEADLINE_EXCEEDED, Status.CANCELLED, Status.UNAVAILABLE)


async def test_a_cancel_crosses_nginx_and_cancels_the_handler(proxied, wire):
    channel = cbor_channel(f"{proxied[0]}:{proxied[1]}")
    try:
        future = await in_thread(partial(stubs(channel)["block"].future, [[]], timeout=T))
        with trio.fail_after(T):
            await wire.started.wait()
        await in_thread(future.cancel)
        with trio.fail_after(T):
            await wire.cancelled.wait()
        # nginx resets the upstream stream (CANCELLED) or closes its connection (UNAVAILABLE).
        assert wire.cancel_reasons[0] in (Status.CANCELLED, Status.UNAVAILABLE)
    finally:
        channel.close()
