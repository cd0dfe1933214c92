"""Test helpers: a client and a server protocol core wired back to back (h11's helpers style)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from contextlib import asynccontextmanager

import cbor2
import trio

import trpc

from trpc._events import MessagesReceived, PrefaceReceived
from trpc._codec import inflate
from trpc.wire._compression import Compressed
from trpc.wire import PREFACE, PREFACE_MAGIC, Connection

HEADER = struct.Struct(">IBBI")


def types(events) -> list:
    """The events' classes, in order."""
    return [type(event) for event in events]


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), ftype, flags, stream_id) + payload


def preface(
    major: int = 1,
    minor: int = 0,
    max_frame: int = 1 << 20,
    max_message: int = 4 << 20,
    stream_window: int = 1 << 20,
    connection_window: int = 16 << 20,
    max_streams: int = 100,
    magic: bytes = PREFACE_MAGIC,
) -> bytes:
    return PREFACE.pack(magic, major, minor, 0, max_frame, max_message, stream_window, connection_window, max_streams)


def headers(method: str, **fields) -> bytes:
    payload = {1: method}
    if "timeout_us" in fields:
        payload[2] = fields["timeout_us"]
    if "metadata" in fields:
        payload[3] = fields["metadata"]
    return cbor2.dumps(payload)


class Pair:
    """A client and a server Connection; ``exchange()`` carries bytes until both are quiet."""

    def __init__(self, framer: type, *, chunk: int | None = None, client_options=None, server_options=None):
        self.client = Connection("client", framer=framer, **(client_options or {}))
        self.server = Connection("server", framer=framer, **(server_options or {}))
        self.chunk = chunk
        self.client.initiate()
        self.server.initiate()
        events = self.exchange()
        assert any(isinstance(e, PrefaceReceived) for e in events["client"])
        assert any(isinstance(e, PrefaceReceived) for e in events["server"])

    def _feed(self, conn: Connection, data: bytes) -> list:
        if not self.chunk:
            return conn.receive_data(data)
        events = []
        for i in range(0, len(data), self.chunk):
            events.extend(conn.receive_data(data[i : i + self.chunk]))
        return events

    def exchange(self) -> dict[str, list]:
        events: dict[str, list] = {"client": [], "server": []}
        while True:
            to_server = self.client.data_to_send()
            to_client = self.server.data_to_send()
            if not to_server and not to_client:
                return events
            if to_server:
                events["server"].extend(self._feed(self.server, to_server))
            if to_client:
                events["client"].extend(self._feed(self.client, to_client))


def messages(events, stream_id: int | None = None) -> list[bytes]:
    """The message payloads in ``events`` (for one stream, or all), in order, as the application
    reads them: a compressed one decompressed (raising trpc.RpcError if it does not)."""
    return [
        inflate(payload, "message") if type(payload) is Compressed else payload
        for event in events
        if isinstance(event, MessagesReceived) and stream_id in (None, event.stream_id)
        for payload in event.payloads
    ]


@asynccontextmanager
async def serve_and_connect(nursery, service, **server_options):
    """Serve ``service`` on a free loopback port in ``nursery``; yield a client connected to it
    over real TCP, with ``client.service`` and ``client.server`` set for the test."""
    server = trpc.Server(service, **server_options)
    address = await nursery.start(server.serve_tcp, 0)
    async with trpc.open_client(address) as client:
        client.service = service
        client.server = server
        yield client


def run_python(args: list[str] | str, *, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """Python in a fresh process (``args``: the code for ``-c``, or a list of arguments), with
    no ``TRPC_*`` variable of ours but those in ``env``; output captured as text."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TRPC_")}
    argv = ["-c", args] if isinstance(args, str) else args
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, env={**clean, **env}, timeout=timeout
    )


async def listening_address(process) -> str:
    """The HOST:PORT a ``trpc serve`` child process prints on its first line of output
    (``listening on HOST:PORT``), read within 30 s."""
    line = b""
    with trio.fail_after(30):
        while not line.endswith(b"\n"):
            line += await process.stdout.receive_some(1)
    assert line.startswith(b"listening on "), line
    return line.split()[2].decode()
