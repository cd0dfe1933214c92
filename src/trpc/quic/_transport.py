"""The Trio side of the QUIC wire: UDP sockets, routing by connection id, one timer per connection.

Theory of operation
-------------------
A QUIC connection is a :class:`~trpc.quic._wire.QuicWire` driven by the same call layer as
every other wire: :class:`QuicServerConnection` is the server's connection class and
:class:`QuicClientConnection` the client's, each with the Trio parts that differ for datagrams
replaced (the mixin :class:`_Datagrams`):

- **receiving** is done by one task per UDP socket.  On the server, :class:`QuicEndpoint`
  waits until the socket is readable, drains a burst of datagrams (up to ``_BURST``), hands
  each to the connection its destination connection id names (a new connection for an
  Initial packet with an unknown one), then lets every connection it touched report its
  events to the call layer and sends what they have due, in one go.  On the client the
  connection's own reader is that task, for its one socket.  Handlers run as the call layer
  runs them (its workers), never a task per datagram.
- **sending**: whatever queues output (the call layer, through the wire's methods) wakes the
  connection's writer, or, for a lone call, sends at once (``_send_soon``).  After every
  receive, send or timer, the datagrams due are collected and sent, and QUIC's timer re-read.
- **one timer per connection**: the connection's timer task (``run_timers``, which also runs
  keepalive and the server's idle and age limits) sleeps until QUIC's next deadline (loss
  detection, acknowledgements, idle timeout) and hands it to QUIC, or until the wire's next
  probe for a small flight's loss is due (``QuicWire.probe``); a send that brings either
  forward moves the sleep's deadline, without waking the task.
- **migration**: QUIC routes by connection id, not address, so a client whose address
  changes keeps its connection; :meth:`QuicClientConnection.rebind` moves the client to a
  new local port (what a NAT rebinding does to it) while its calls run.

A datagram the kernel will not take at once is dropped: QUIC's loss recovery resends it,
which is what a full socket buffer means for a datagram protocol.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import struct
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import trio
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.tls import State as TlsState

from .._address import Address
from .._events import Event
from .._keepalive import Keepalive
from .._server import _ServerConnection
from ..channel._connection import ClientConnection, ConnectLimit, ConnectOptions
from .._errors import RemoteProtocolError, RpcError
from .._status import Status
from ..wire._frames import ALPN_TRPC
from ._admit import RETRY_ABOVE, RetryTokens, admit, retry
from ._tls import ClientVerifier, ServerConfiguration, ServerQuicConnection, certificate_dict
from ._wire import PROTOCOL_ERROR, QuicWire

if TYPE_CHECKING:
    from .._server import Server

__all__ = ["QuicEndpoint", "QuicServerConnection", "QuicClientConnection", "open_quic_connection",
           "server_configuration", "client_configuration"]

logger = logging.getLogger("trpc")


class _QuietCleanCloses(logging.Filter):
    """qh3 logs every close by the peer as a WARNING on its ``quic`` logger, a clean close
    (error code 0, what every client's ``aclose`` sends) included: those records are dropped,
    closes with an error are kept.  (qh3 2.1's record: ``"Native peer close: %r"`` with the
    tuple ``("peer_closed", is_transport, error_code, frame_type, reason)``.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg == "Native peer close: %r" and isinstance(args, tuple) and args:
            native = args[0]
            return not (isinstance(native, tuple) and len(native) > 2 and native[2] == 0)
        return True


logging.getLogger("quic").addFilter(_QuietCleanCloses())

#: Datagrams read from a socket before the connections they reached report and send: 64, so
#: that a burst of acknowledgements costs one round of event handling, while one socket's
#: burst holds up other tasks for a bounded time.
_BURST = 64
#: Bytes read from a socket before the connections they reached report (a GRO read may hold
#: dozens of datagrams): 256 KiB, so that a bulk transfer's burst is handed on, and the calls
#: it woke run, within a few milliseconds.
_BURST_BYTES = 256 << 10
#: The largest UDP payload read: a datagram is never larger.
_DATAGRAM = 65536
#: The length of the connection ids this side issues (QUIC's configuration default).
_CID_LENGTH = 8
#: The largest datagram sent: 1452 bytes, what an Ethernet path carries under IPv6 and UDP
#: headers (1500 - 40 - 8), so bulk data takes 13% fewer packets than QUIC's minimum of 1280.
#: Fixed rather than probed: qh3's path MTU probing sends a probe with most sends, which costs
#: a datagram per small call.
_MAX_DATAGRAM = 1452
#: The kernel's socket buffers asked for: 512 KiB (the kernel doubles it).  Enough that a burst
#: of a fast sender's datagrams is not dropped before the reader drains it; no more, because
#: datagrams queued there wait in front of every stream's: a larger buffer lets a bulk
#: transfer's congestion window grow into it, and a small call's reply then waits behind it.
_SOCKET_BUFFER = 512 << 10

_current_time = trio.current_time
#: The payload of the PING a client sends from its new address after ``rebind``.
_MOVED_PING = b"trpcmove"


def server_configuration(certfile: str, keyfile: str | None = None, *, client_cafile: str | None = None,
                         idle_timeout: float = 60.0) -> ServerConfiguration:
    """The server's QUIC configuration: its certificate chain and key (PEM files), and, with
    ``client_cafile``, the CA certificates (PEM) a client's certificate must be signed by: every
    client is then asked for one (mutual TLS, trpc.quic._tls)."""
    configuration = ServerConfiguration(is_client=False, alpn_protocols=[ALPN_TRPC], idle_timeout=idle_timeout,
                                        connection_id_length=_CID_LENGTH, max_datagram_size=_MAX_DATAGRAM,
                                        probe_datagram_size=False)
    # qh3 reads the key from keyfile only: a PEM holding both is named twice.
    configuration.load_cert_chain(certfile, keyfile or certfile)
    if configuration.private_key is None or configuration.certificate is None:
        raise ValueError(f"no certificate and private key in {certfile}" + (f" and {keyfile}" if keyfile else ""))
    if client_cafile is not None:
        configuration.client_verifier = ClientVerifier(client_cafile)
    return configuration


def client_configuration(ssl_context: ssl.SSLContext | None, server_name: str, idle_timeout: float = 60.0, *,
                         certfile: str | None = None, keyfile: str | None = None) -> QuicConfiguration:
    """The client's QUIC configuration from the ``ssl_context`` given to ``open_client``: the
    CA certificates it trusts (``get_ca_certs``) and whether it verifies the server at all
    (``verify_mode``, ``check_hostname``).  Without a context, the system's CAs are trusted.
    ``certfile`` and ``keyfile`` (PEM; the key may be in ``certfile``) are the client's
    certificate for a server that asks for one (mutual TLS): an ``ssl.SSLContext`` cannot give
    back the certificate loaded into it, so ``open_client`` passes the files themselves."""
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[ALPN_TRPC], server_name=server_name,
                                      idle_timeout=idle_timeout, connection_id_length=_CID_LENGTH,
                                      max_datagram_size=_MAX_DATAGRAM, probe_datagram_size=False)
    if ssl_context is not None:
        cas = ssl_context.get_ca_certs(binary_form=True)
        if cas:
            configuration.load_verify_locations(
                cadata="".join(ssl.DER_cert_to_PEM_cert(der) for der in cas).encode())
        configuration.verify_mode = ssl_context.verify_mode
        configuration.verify_hostname = ssl_context.check_hostname
    if certfile is not None:
        # As for the server, qh3 reads the key from keyfile only.
        configuration.load_cert_chain(certfile, keyfile or certfile)
        if configuration.private_key is None or configuration.certificate is None:
            raise ValueError(f"no certificate and private key in {certfile}" + (f" and {keyfile}" if keyfile else ""))
    return configuration


# Linux's UDP segmentation offload (GSO: one send of many equal datagrams) and its receive twin
# (GRO: the kernel hands back a run of one peer's datagrams in one buffer, with their size).
# Per-datagram system calls are most of a bulk transfer's cost, so both are used where the
# kernel has them (linux/udp.h: SOL_UDP 17, UDP_SEGMENT 103, UDP_GRO 104).
_SOL_UDP = 17
_UDP_SEGMENT = 103
_UDP_GRO = 104
#: Datagrams joined into one GSO send at most: the kernel's limit (UDP_MAX_SEGMENTS)...
_GSO_SEGMENTS = 64
#: ...and their bytes: one UDP payload.
_GSO_BYTES = 65000
_CMSG_SPACE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
_pack_segment = struct.Struct("=H").pack
_unpack_int = struct.Struct("=i").unpack_from


def _burst(udp: "_Udp") -> Iterator[tuple[bytes, int, Any]]:
    """The datagrams waiting on ``udp`` now, as ``(data, segment size, address)``: at most
    ``_BURST`` reads and about ``_BURST_BYTES``, what one turn of a reader takes in before the
    connections they reached report and send.  An error a read reports (an ICMP error from an
    earlier send) is not ours to act on: it is logged and skipped."""
    received = 0
    for _ in range(_BURST):
        if received > _BURST_BYTES:
            return
        try:
            data, segment, address = udp.receive()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.debug("trpc: QUIC socket: %s", exc)
            continue
        received += len(data)
        yield data, segment, address


class _Udp:
    """A non-blocking UDP socket that sends runs of datagrams with GSO and receives them with
    GRO where Linux offers them, one datagram per system call elsewhere."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.gso = sys.platform == "linux"
        self.gro = False
        if sys.platform == "linux" and _CMSG_SPACE:
            try:
                sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass

    def receive(self) -> tuple[bytes, int, Any]:
        """One datagram, or a GRO run of them: ``(data, segment_size, address)``; raises
        BlockingIOError when none is waiting."""
        if not self.gro:
            data, address = self.sock.recvfrom(_DATAGRAM)
            return data, len(data), address
        data, ancillary, _flags, address = self.sock.recvmsg(_DATAGRAM, _CMSG_SPACE)
        segment = len(data)
        for level, kind, payload in ancillary:
            if level == _SOL_UDP and kind == _UDP_GRO and len(payload) >= 4:
                segment = _unpack_int(payload)[0] or segment
        return data, segment, address

    def send(self, datagrams: list[tuple[bytes, Any]]) -> None:
        """Send datagrams in order; one the kernel will not take now is dropped (QUIC resends)."""
        count = len(datagrams)
        i = 0
        while i < count:
            data, address = datagrams[i]
            size = len(data)
            j = i + 1
            if self.gso:
                total = size
                while j < count and j - i < _GSO_SEGMENTS:
                    following, to = datagrams[j]
                    if to != address or len(following) > size or total + len(following) > _GSO_BYTES:
                        break
                    total += len(following)
                    j += 1
                    if len(following) < size:
                        break  # only the last segment of a run may be shorter
            try:
                if j - i == 1:
                    self.sock.sendto(data, address)
                else:
                    # The run's datagrams as the message's buffers: the kernel gathers
                    # them, so they are not joined into one bytes object first.
                    self.sock.sendmsg([d for d, _ in datagrams[i:j]],
                                      [(_SOL_UDP, _UDP_SEGMENT, _pack_segment(size))], 0, address)
            except (BlockingIOError, InterruptedError):
                pass  # the kernel's buffer is full: lost, and QUIC resends it
            except OSError as exc:
                if j - i > 1:  # no GSO on this path after all: one datagram at a time from now
                    self.gso = False
                    continue
                logger.debug("trpc: QUIC datagram to %s not sent: %s", address, exc)
            i = j


def _open_socket(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
            except OSError:
                pass
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _authenticated(quic: QuicConnection) -> bool:
    """QUIC decrypted and authenticated a packet of what it was given.  (qh3 2.1 keeps this on
    its Rust core, made only once a packet parses: ``_core`` is None before.)"""
    core = getattr(quic, "_core", None)
    return core is not None and bool(core.received_authenticated_packet)


def _hello_received(quic: QuicConnection) -> bool:
    """The server's TLS has taken the client's whole ClientHello."""
    context = quic.tls
    return context is not None and context.state is not TlsState.SERVER_EXPECT_CLIENT_HELLO


async def _let_handlers_answer() -> None:
    """Let the tasks a burst of events woke run before the acknowledgements it calls for are
    sent: a handler's reply (a caller's next request) then leaves in the same datagram as the
    ACK, instead of one datagram for each.  Two checkpoints, since Trio may run a batch of
    ready tasks in any order."""
    await trio.lowlevel.checkpoint()
    await trio.lowlevel.checkpoint()


def _destination_cid(data: bytes) -> bytes:
    """A datagram's destination connection id (what routes it to its connection)."""
    if not data:
        return b""
    if data[0] & 0x80:  # long header: version (4 bytes), DCID length, DCID
        if len(data) < 6:
            return b""
        return bytes(data[6:6 + data[5]])
    return bytes(data[1:1 + _CID_LENGTH])


class _Datagrams:
    """What a QUIC connection does differently from a byte stream's (see the module's
    docstring); mixed in before the call layer's connection class."""

    broken: str | None
    peer: str
    _timer_scope: trio.CancelScope | None
    _writer_wakeup: Any
    _reader_scope: trio.CancelScope
    closed: trio.Event

    def _init_datagrams(self, sock: socket.socket, wire: QuicWire, udp: "_Udp | None" = None) -> None:
        #: The wire connection (also ``conn``, as the call layer knows it).
        self.wire = wire
        self.socket = sock
        self.udp = udp or _Udp(sock)
        #: The deadline the timer task sleeps until, as far as QUIC's timer is concerned.
        self._timer_at = math.inf
        self._writer_gone_quic = False

    if TYPE_CHECKING:  # the call layer's connection classes define these
        def handle_event(self, event: Any) -> None: ...
        def wake_timers(self) -> None: ...
        def _fail(self, reason: str) -> None: ...

    def pump(self) -> None:
        """Take the wire's events (after datagrams or a timer) and hand them on; a peer that
        broke the protocol gets CONNECTION_CLOSE with PROTOCOL_ERROR, and the connection ends.
        Once the connection has ended, nothing more is handed on (the call layer's side of it
        is closing)."""
        if self.broken is not None:
            return
        try:
            events = self.wire.events(_current_time())
        except RemoteProtocolError as exc:
            logger.warning("trpc: protocol error from %s: %s", self.peer, str(exc))
            self.wire.close(f"protocol error: {exc}", PROTOCOL_ERROR)
            self.transmit()
            self._fail(f"protocol error: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - QUIC's own failure ends this connection only
            self.crash(exc)
            return
        try:
            self.deliver(events)
        except Exception as exc:  # noqa: BLE001 - see crash
            self.crash(exc)

    def crash(self, exc: BaseException) -> None:
        """QUIC (or this layer) failed on this connection in a way no peer should cause:
        end this connection alone, logged with the failure, and never the endpoint or task
        that was serving it and others."""
        if self.broken is None:
            logger.error("trpc: QUIC connection with %s failed: %r", self.peer, exc, exc_info=exc)
            if self.wire.terminated is None:
                self.wire.terminated = f"QUIC failed: {exc}"
            self._fail(f"internal error: {exc}")

    def deliver(self, events: list[Event]) -> None:
        """Hand the wire's events to the call layer; end the connection if QUIC did."""
        handle = self.handle_event
        for event in events:
            handle(event)
        if self.wire.terminated is not None and self.broken is None:
            self._fail(self.wire.terminated)

    def transmit(self) -> None:
        """Send every datagram due now, and re-read QUIC's timer (nothing after a crash)."""
        conn = self.wire
        try:
            datagrams = conn.datagrams_to_send(_current_time())
        except Exception as exc:  # noqa: BLE001 - see crash
            self.crash(exc)
            return
        if datagrams:
            self.udp.send(datagrams)
        at = conn.quic.get_timer()
        at = conn.probe_at if at is None else min(at, conn.probe_at)
        if at < self._timer_at:
            # QUIC's deadline (or the probe's) came forward: the sleeping timer task's deadline
            # follows, without a task switch (a timer task that is not sleeping reads it when
            # it next computes one).  A deadline that moved later is left: the task wakes at
            # the earlier one, finds nothing due, and sleeps again (rarer and cheaper than
            # moving its deadline on every send and receive, which most of them do).
            self._timer_at = at
            scope = self._timer_scope
            if scope is not None and at < scope.deadline:
                scope.deadline = at

    def _quic_timer(self, now: float) -> float:
        """QUIC's deadline, acted on if it has passed: the next one (math.inf for none)."""
        conn = self.wire
        at = conn.quic.get_timer()
        if at is not None and at <= now:
            try:
                conn.fire_timer(now)
            except Exception as exc:  # noqa: BLE001 - see crash
                self.crash(exc)
                return math.inf
            self.pump()
            self.transmit()
            at = conn.quic.get_timer()
        if conn.probe_at <= now:
            conn.probe(now)
            self.transmit()
            at = conn.quic.get_timer()
        self._timer_at = min(math.inf if at is None else at, conn.probe_at)
        return self._timer_at

    def _send_soon(self) -> None:
        self.transmit()

    async def writer(self) -> None:
        """Send what the call layer queued, each time it wakes this task."""
        wakeup = self._writer_wakeup
        try:
            while True:
                await wakeup.park()
                self.transmit()
        finally:
            self._writer_gone_quic = True

    async def flush(self) -> None:
        """Send everything queued so far (a datagram socket takes it at once, or drops it)."""
        self.transmit()
        await trio.lowlevel.checkpoint()

    async def wait_for_room(self) -> None:
        """Room is the wire's to say (``send_message`` and SendCreditAvailable): nothing here."""

    async def close_stream(self) -> None:
        """Close the QUIC connection (CONNECTION_CLOSE, sent at once)."""
        self.wire.close(self.broken or "closed")
        self.transmit()
        self.closed_quic()

    def closed_quic(self) -> None:
        """The connection is over: the subclass lets go of what it holds (socket, routes)."""


class QuicServerConnection(_Datagrams, _ServerConnection):
    """One QUIC connection of the server (see the module's docstring)."""

    def __init__(self, server: "Server", endpoint: "QuicEndpoint", wire: QuicWire, peer: str) -> None:
        _ServerConnection.__init__(self, server, cast(trio.abc.Stream, None), cast(Any, wire), peer)
        self._init_datagrams(endpoint.socket, wire, endpoint.udp)
        self.endpoint = endpoint
        self._peer_certificate: dict[str, Any] | None = None

    def _timers(self, now: float) -> float:
        return min(_ServerConnection._timers(self, now), self._quic_timer(now))

    async def reader(self, first: bytes | bytearray = b"") -> None:
        """The endpoint reads for every connection: wait until this one ends."""
        try:
            with self._reader_scope:
                await trio.sleep_forever()
        finally:
            self.closed.set()

    def closed_quic(self) -> None:
        self.endpoint.forget(self)

    def peer_certificate(self) -> dict[str, Any] | None:
        """The client's certificate (``getpeercert()``'s dict), if the server asked for one;
        made once, at the first call that asks."""
        if self._peer_certificate is None:
            certificate = self.wire.quic.get_peercert()
            if certificate is None:
                return None
            self._peer_certificate = certificate_dict(certificate.public_bytes())
        return self._peer_certificate


class QuicEndpoint:
    """A server's UDP socket: one task reads it, routes datagrams to connections by connection
    id, and starts a connection for each new client."""

    def __init__(self, server: "Server", sock: socket.socket, configuration: QuicConfiguration,
                 nursery: trio.Nursery) -> None:
        self.server = server
        self.socket = sock
        #: The socket, read with GRO where Linux has it (and shared by the connections' sends).
        self.udp = _Udp(sock)
        self.configuration = configuration
        self.nursery = nursery
        self._routes: dict[bytes, QuicServerConnection] = {}
        #: Connections whose handshake has not finished: past RETRY_ABOVE of them, new
        #: clients prove their address first (quic/_admit.py).
        self._handshakes: set[QuicServerConnection] = set()
        self._tokens = RetryTokens()
        self._serving = 0
        #: Set while no connection of this endpoint is open.
        self.idle = trio.Event()
        self.idle.set()

    def forget(self, connection: QuicServerConnection) -> None:
        for cid in [cid for cid, owner in self._routes.items() if owner is connection]:
            del self._routes[cid]

    async def run(self) -> None:
        """Read, route, report and send, until cancelled."""
        sock = self.socket
        udp = self.udp
        routes = self._routes
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = _current_time()
            touched: dict[int, QuicServerConnection] = {}
            for data, segment, address in _burst(udp):
                cid = _destination_cid(data)
                connection = routes.get(cid)
                if connection is None:
                    if not self.server.shutting_down:
                        try:
                            connection = self._open(cid, data, segment, address, now)
                        except Exception as exc:  # noqa: BLE001 - one client's failure, not the endpoint's
                            logger.error("trpc: opening a QUIC connection for %s failed: %r", address, exc,
                                         exc_info=exc)
                            continue
                        if connection is not None:
                            touched[id(connection)] = connection
                    continue
                if connection.broken is not None:
                    continue  # it is closing: what it receives no longer matters
                connection.wire.peer_address = address
                connection.received_at = now  # calls' arrival (their deadlines), keepalive
                try:
                    if segment < len(data):
                        connection.wire.quic.receive_gro_buffer(data, segment, address, now)
                    else:
                        connection.wire.quic.receive_datagram(data, address, now)
                except Exception as exc:  # noqa: BLE001 - see QuicServerConnection.crash
                    connection.crash(exc)
                    continue
                touched[id(connection)] = connection
            for connection in touched.values():
                connection.pump()
                wire = connection.wire
                if self._handshakes and wire.peer_preface is not None:
                    self._handshakes.discard(connection)
                for cid in wire.issued:
                    routes[cid] = connection
                for cid in wire.retired:
                    routes.pop(cid, None)
                wire.issued.clear()
                wire.retired.clear()
            await _let_handlers_answer()
            for connection in touched.values():
                connection.transmit()

    def _open(self, cid: bytes, data: bytes, segment: int, address: Any, now: float) -> QuicServerConnection | None:
        """A datagram that names no connection (``segment``: the size of each of the datagrams
        ``data`` holds, as ``_burst`` gives them): the connection it opens, fed its first
        datagrams, or None (dropped, or answered without state: quic/_admit.py)."""
        server = self.server
        first = data if segment >= len(data) else data[:segment]
        admission = admit(first, address, now, versions=self.configuration.supported_versions, tokens=self._tokens,
                          validate=len(self._handshakes) >= RETRY_ABOVE)
        if admission.reply is not None:
            self.udp.send([(admission.reply, address)])
        if not admission.open:
            return None
        if server._sockets >= server.max_connections:
            server.refused_connections += 1
            return None
        quic = ServerQuicConnection(configuration=self.configuration,
                                    original_destination_connection_id=admission.original_dcid,
                                    retry_source_connection_id=admission.retry_scid)
        if segment < len(data):
            quic.receive_gro_buffer(data, segment, address, now)
        else:
            quic.receive_datagram(data, address, now)
        if not _authenticated(quic):
            return None  # an Initial's header with garbage after it: no state kept
        if admission.retry_scid is None and segment >= len(data) and _hello_received(quic):
            # A whole ClientHello in one datagram, from an unvalidated address: qh3 fails to
            # answer it (quic/_admit.py), so the client proves its address first.
            self.udp.send([(retry(first, address, now, self._tokens), address)])
            return None
        options = cast(dict[str, Any], server._connection_options)
        wire = QuicWire("server", quic, max_message_size=options["max_message_size"],
                        max_concurrent_streams=options["max_concurrent_streams"],
                        idempotent_methods=options["idempotent_methods"], methods=options["methods"],
                        stream_window=options["stream_window"],
                        compression_threshold=options["compression_threshold"])
        wire.peer_address = address
        connection = QuicServerConnection(server, self, wire, f"quic://{address[0]}:{address[1]}")
        connection.received_at = now
        self._handshakes.add(connection)
        self._routes[cid] = connection
        self._routes[quic.host_cid] = connection
        server._sockets += 1
        self._serving += 1
        self.idle = trio.Event()
        self.nursery.start_soon(self._serve, connection)
        return connection

    async def _serve(self, connection: QuicServerConnection) -> None:
        try:
            await self.server._run_connection(connection, b"", _current_time() + self.server.preface_timeout)
        except Exception as exc:  # noqa: BLE001 - one connection's failure never ends the endpoint
            logger.error("trpc: QUIC connection with %s failed: %r", connection.peer, exc, exc_info=exc)
        finally:
            self._handshakes.discard(connection)
            self.server._sockets -= 1
            self._serving -= 1
            if not self._serving:
                self.idle.set()
            self.forget(connection)


async def serve_quic(server: "Server", port: int, host: str, configuration: QuicConfiguration,
                     task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``server`` over QUIC on ``host``:``port`` until cancelled (see
    ``Server.serve_quic``)."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    bound = cast(tuple[str, int], sockaddr[:2])
    sock = _open_socket(family, bound[0], bound[1])
    scope = trio.CancelScope()
    try:
        async with trio.open_nursery() as nursery:
            endpoint = QuicEndpoint(server, sock, configuration, nursery)
            address = cast(tuple[str, int], sock.getsockname()[:2])
            server._listening.add(scope)
            nursery.start_soon(endpoint.run)
            with scope:
                logger.info("trpc: listening on quic://%s:%d", address[0], address[1])
                task_status.started(address)
                await trio.sleep_forever()
            # A shutdown (Server.shutdown cancels the scope): no new connection is opened, and
            # the endpoint keeps reading for those that finish their calls, until they are gone.
            await endpoint.idle.wait()
            nursery.cancel_scope.cancel()
    finally:
        server._listening.discard(scope)
        sock.close()


class QuicClientConnection(_Datagrams, ClientConnection):
    """The client's side of one QUIC connection: its reader reads its own UDP socket."""

    def __init__(self, sock: socket.socket, wire: QuicWire, peer: str, server_address: Any) -> None:
        ClientConnection.__init__(self, cast(trio.abc.Stream, None), wire, peer)
        self._init_datagrams(sock, wire)
        self.server_address = server_address
        self._rebound = False

    def _timers(self, now: float) -> float:
        return self._quic_timer(now)

    def deliver(self, events: list[Event]) -> None:
        """As for every QUIC connection; and calls waiting for the server's stream limit are
        woken once QUIC says the server raised it (MAX_STREAMS comes apart from any call's end)."""
        _Datagrams.deliver(self, events)
        if self.slot_waiters and self.wire.can_open_call:
            self.slot_waiters.unpark_all()

    def rebind(self) -> tuple[str, int]:
        """Move to a new UDP socket on a new local port, as a NAT rebinding would, keeping the
        connection and its calls (QUIC migration); returns the new local address."""
        old = self.socket
        host = old.getsockname()[0]
        self.socket = _open_socket(old.family, host, 0)
        self.udp = _Udp(self.socket)
        self._rebound = True
        trio.lowlevel.notify_closing(old)
        old.close()
        # Tell the server at once where we are now (it answers to the address its last
        # datagram came from): a PING, under a fresh connection id as RFC 9000 section 9.5 asks.
        self.wire.quic.change_connection_id()
        self.wire.ping(_MOVED_PING)
        self.transmit()
        return cast(tuple[str, int], self.socket.getsockname()[:2])

    async def reader(self, first: bytes | bytearray = b"") -> None:
        """Read this connection's socket: a burst of datagrams, their events, the datagrams
        due; until the connection ends."""
        conn = self.wire
        try:
            with self._reader_scope:
                while self.broken is None:
                    sock = self.socket
                    try:
                        await trio.lowlevel.wait_readable(sock)
                    except (trio.ClosedResourceError, OSError, ValueError):  # ValueError: closed before the wait
                        if sock is not self.socket:
                            continue  # rebound: read the new socket
                        return  # closed by close_stream
                    now = self.received_at = _current_time()
                    try:
                        for data, segment, address in _burst(self.udp):
                            if segment < len(data):
                                conn.quic.receive_gro_buffer(data, segment, address, now)
                            else:
                                conn.quic.receive_datagram(data, address, now)
                    except OSError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - see crash
                        self.crash(exc)
                        return
                    self.pump()
                    await _let_handlers_answer()
                    self.transmit()
        except OSError as exc:
            self._fail(f"receiving failed: {exc}")
        finally:
            self.closed.set()

    def closed_quic(self) -> None:
        trio.lowlevel.notify_closing(self.socket)
        self.socket.close()


async def open_quic_connection(target: Address, connect: ConnectOptions, limit: ConnectLimit) -> ClientConnection:
    """A client connection to ``quic://host:port``, its handshake started; run it with
    ``ClientConnection.run`` (ready once the handshake is done)."""
    options: Any = connect  # its attributes are set from its __slots__
    assert target.host is not None and target.port is not None
    try:
        with trio.fail_at(limit.deadline):
            infos = await trio.socket.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)
    except (OSError, trio.TooSlowError) as exc:
        raise RpcError(Status.UNAVAILABLE, f"cannot connect to {target}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    local = "::" if family == socket.AF_INET6 else "0.0.0.0"
    if sockaddr[0] in ("127.0.0.1", "::1"):
        local = sockaddr[0]
    sock = _open_socket(family, local, 0)
    configuration = client_configuration(options.ssl_context, options.server_hostname or target.host,
                                         certfile=options.certfile, keyfile=options.keyfile)
    quic = QuicConnection(configuration=configuration)
    quic.connect(sockaddr, now=_current_time())
    wire = QuicWire("client", quic, max_message_size=options.max_message_size, stream_window=options.stream_window,
                    compression_threshold=options.compression_threshold)
    wire.peer_address = sockaddr
    connection = QuicClientConnection(sock, wire, str(target), sockaddr)
    if options.keepalive_time is not None:
        connection.keepalive = Keepalive(options.keepalive_time, options.keepalive_timeout, only_with_calls=True)
    return connection
