"""Which sans-IO QUIC library trpc.quic stands on: aioquic or qh3, measured without sockets.

Two connections of the library under test are wired back to back in memory (datagrams handed
from one to the other, no network), so what is timed is the library's own work per call and
per byte: the part of a QUIC call trpc cannot make faster.  Three figures per library:

- handshake: connect and finish TLS 1.3 (ms per connection);
- small calls: a 64-byte request on a new bidirectional stream, echoed and finished (calls/s);
- bulk: one 1 MiB message echoed on a stream (MB/s).

Run: ``python bench/quic_library.py`` (both libraries must be installed; trustme makes the
certificate).  docs/PERFORMANCE.md has the figures and the choice they made.
"""

from __future__ import annotations

import importlib
import ssl
import sys
import tempfile
import time
from typing import Any

import trustme

_SERVER = ("127.0.0.1", 4433)
_CLIENT = ("127.0.0.1", 5555)


def _pair(lib: str, cert: str, key: str, ca: str) -> tuple[Any, Any, float]:
    conf_mod = importlib.import_module(f"{lib}.quic.configuration")
    conn_mod = importlib.import_module(f"{lib}.quic.connection")
    client_conf = conf_mod.QuicConfiguration(is_client=True, alpn_protocols=["trpc/1"], server_name="localhost")
    client_conf.load_verify_locations(cafile=ca)
    server_conf = conf_mod.QuicConfiguration(is_client=False, alpn_protocols=["trpc/1"])
    server_conf.load_cert_chain(cert, key)
    now = time.monotonic()
    client = conn_mod.QuicConnection(configuration=client_conf)
    client.connect(_SERVER, now=now)
    first = client.datagrams_to_send(now=now)
    server = conn_mod.QuicConnection(configuration=server_conf,
                                     original_destination_connection_id=client.original_destination_connection_id)
    for data, _ in first:
        server.receive_datagram(data, _CLIENT, now=now)
    _pump(client, server)
    return client, server, time.monotonic() - now


def _pump(client: Any, server: Any) -> None:
    """Hand datagrams back and forth until neither side has any to send."""
    for _ in range(10_000):
        now = time.monotonic()
        moved = False
        for data, _ in client.datagrams_to_send(now=now):
            server.receive_datagram(data, _CLIENT, now=now)
            moved = True
        for data, _ in server.datagrams_to_send(now=now):
            client.receive_datagram(data, _SERVER, now=now)
            moved = True
        if not moved:
            return


def _echo(client: Any, server: Any, payload: bytes, calls: int) -> None:
    stream_data = importlib.import_module(type(server).__module__.split(".")[0] + ".quic.events").StreamDataReceived
    pending = calls
    received: dict[int, int] = {}
    while pending:
        for _ in range(min(pending, 64)):
            client.send_stream_data(client.get_next_available_stream_id(), payload, end_stream=True)
        _pump(client, server)
        while (event := server.next_event()) is not None:
            if isinstance(event, stream_data):
                server.send_stream_data(event.stream_id, event.data, end_stream=event.end_stream)
        _pump(client, server)
        while (event := client.next_event()) is not None:
            if isinstance(event, stream_data) and event.end_stream:
                pending -= 1
            elif isinstance(event, stream_data):
                received[event.stream_id] = received.get(event.stream_id, 0) + len(event.data)


def main() -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    with tempfile.TemporaryDirectory() as tmp:
        cert, key, ca_file = f"{tmp}/c.pem", f"{tmp}/k.pem", f"{tmp}/ca.pem"
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        ca.cert_pem.write_to_path(ca_file)
        for lib in sys.argv[1:] or ["aioquic", "qh3"]:
            handshakes = [_pair(lib, cert, key, ca_file)[2] for _ in range(20)]
            client, server, _ = _pair(lib, cert, key, ca_file)
            start = time.perf_counter()
            _echo(client, server, b"x" * 64, 4000)
            small = 4000 / (time.perf_counter() - start)
            start = time.perf_counter()
            _echo(client, server, b"x" * (1 << 20), 16)
            bulk = 16 * 2 * (1 << 20) / (time.perf_counter() - start) / 1e6
            print(f"{lib:8s} handshake {1e3 * min(handshakes):6.2f} ms   small calls {small:8.0f}/s   "
                  f"1 MiB echo {bulk:7.1f} MB/s")


if __name__ == "__main__":
    main()
