"""An independent trpc client over QUIC, written from ``docs/PROTOCOL.md`` alone.

It uses nothing of trpc, and not trpc's QUIC library either: aioquic's sans-IO
``QuicConnection`` over a Trio UDP socket, ``cbor2`` as a generic CBOR codec, ``struct`` and
``zlib``.  Section numbers (§) refer to PROTOCOL.md; §16 is the QUIC mapping, which points back
to §3 (frames), §4 (HEADERS), §5 (messages), §6 (TRAILERS), §7 (cancel reasons) and §9 (GOAWAY).

Theory of operation.  One ``QuicConnection`` is driven by two tasks: the *receiver* feeds it
every datagram and handles the events that come out, and the *driver* sends what it has to send
and fires its timer; whoever changes the connection (a call sending, a grant, a cancel) wakes
the driver.  Event handling never awaits, so it sees a consistent state.  Each call is a
client-initiated bidirectional stream with its own frame scanner; the server's control stream
(id 3) has another.  Both directions of every call keep §16's *call window*: what the server
may put on the stream (65,536 bytes plus our WINDOW_UPDATEs, sent on our control stream, id 2,
as the application takes messages), and what we may put (65,536 plus the server's grants).

Besides being a client, it checks the server: anything the server sends that the document
forbids is recorded in ``Connection.violations``, and answered with CONNECTION_CLOSE
``PROTOCOL_ERROR`` (0x101) as §16 says.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import cbor2
import trio
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicProtocolVersion

# --------------------------------------------------------------------------- constants

ALPN = "trpc/1"  # §16 "Connection"
HEADER = struct.Struct(">IBBI")  # §3: length, type, flags, stream_id
DATA, HEADERS, TRAILERS, CANCEL, WINDOW_UPDATE, PING, GOAWAY, INFO = range(8)  # §3
FRAME_NAMES = {DATA: "DATA", HEADERS: "HEADERS", TRAILERS: "TRAILERS", CANCEL: "CANCEL",
               WINDOW_UPDATE: "WINDOW_UPDATE", PING: "PING", GOAWAY: "GOAWAY", INFO: "INFO"}
CODING_FLAGS = 0x0C  # §3: DATA's 2-bit coding field; over QUIC the only DATA flags (§16)
ZLIB, ZSTD = 1, 2  # coding numbers (§5); INFO key 3 bits are 1 << (number - 1)
MAX_MAP = 65_536  # §3 "CBOR maps": HEADERS, TRAILERS, GOAWAY, INFO payloads
MAX_INCREMENT = 2**31 - 1  # §8, §16: a WINDOW_UPDATE's increment
#: §16: the credit a sender has on a call before any WINDOW_UPDATE for it.
INITIAL_CALL_WINDOW = 262_144
#: §16: sides announce no message limit over QUIC; this default applies to a peer.
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024

# QUIC application error codes (§16's table)
NO_ERROR, REFUSED, PROTOCOL_ERROR = 0, 0x100, 0x101
CLIENT_BIDI, SERVER_BIDI, CLIENT_UNI, SERVER_UNI = 0, 1, 2, 3  # stream id & 3 (RFC 9000)
CLIENT_CONTROL, SERVER_CONTROL = 2, 3  # §16 "Control streams"

# status codes (§6)
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = range(6)
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 8, 12, 13, 14
KNOWN_STATUSES = frozenset(range(17))
INFO_SHAPES = {0: "unary", 1: "server_stream", 2: "client_stream", 3: "bidi_stream"}


class Violation(Exception):
    """Something the server sent that the document forbids."""


class CallEnded(Exception):
    """A call ended without TRAILERS: ``why`` says how (reset, cancelled, connection gone)."""

    def __init__(self, why: str, code: int | None = None) -> None:
        super().__init__(why if code is None else f"{why} (code {code})")
        self.why = why
        self.code = code


def is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def encode_frame(type_: int, flags: int, payload: bytes = b"", stream_id: int = 0) -> bytes:
    """§3's frame; on QUIC the header's ``stream_id`` is 0 except WINDOW_UPDATE's (§16)."""
    return HEADER.pack(len(payload), type_, flags, stream_id) + payload


def encode_args(args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> bytes:
    """§5: the arguments message ``[positional]`` or ``[positional, keyword]``."""
    return cbor2.dumps([list(args), dict(kwargs)] if kwargs else [list(args)])


def decode_map(payload: bytes, what: str) -> dict[Any, Any]:
    """§3 "CBOR maps": at most 65,536 bytes, valid CBOR, a map."""
    if len(payload) > MAX_MAP:
        raise Violation(f"{what} payload of {len(payload)} bytes (over {MAX_MAP})")
    try:
        value = cbor2.loads(payload)
    except Exception as exc:
        raise Violation(f"{what}: not valid CBOR: {exc}") from None
    if not isinstance(value, dict):
        raise Violation(f"{what}: not a map: {value!r}")
    return value


def check_metadata(value: object, what: str) -> dict[str, str | bytes]:
    """§3 "Metadata": text keys, text or bytes values."""
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, bytes)) for k, v in value.items()):
        raise Violation(f"{what}: bad metadata {value!r}")
    return value


@dataclass(frozen=True)
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes

    def __repr__(self) -> str:
        name = FRAME_NAMES.get(self.type, hex(self.type))
        body = self.payload if len(self.payload) <= 32 else f"<{len(self.payload)} bytes>"
        return f"Frame({name}, flags={self.flags:#x}, sid={self.stream_id}, {body!r})"


class FrameScanner:
    """Frames out of one QUIC stream's bytes, fed in any slicing.  ``header`` gives the next
    frame's header as soon as it is whole, so a length can be refused before its body."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def header(self) -> tuple[int, int, int, int] | None:
        """(length, type, flags, stream_id) of the next frame once its header is whole."""
        if len(self._buf) < HEADER.size:
            return None
        length, type_, flags, sid = HEADER.unpack_from(self._buf)
        return length, type_, flags, sid

    def next_frame(self) -> Frame | None:
        head = self.header()
        if head is None or len(self._buf) < HEADER.size + head[0]:
            return None
        length, type_, flags, sid = head
        payload = bytes(self._buf[HEADER.size:HEADER.size + length])
        del self._buf[:HEADER.size + length]
        return Frame(type_, flags, sid, payload)

    @property
    def buffered(self) -> int:
        return len(self._buf)


@dataclass
class Trailers:
    """§6: the call's status."""

    status: int
    message: str = ""
    details: Any = None
    metadata: dict[str, str | bytes] = field(default_factory=dict)
    not_processed: bool = False
    raw: dict[Any, Any] = field(default_factory=dict)


def parse_trailers(payload: bytes) -> Trailers:
    m = decode_map(payload, "TRAILERS")
    status = m.get(1)
    if not is_uint(status):
        raise Violation(f"TRAILERS without a valid status: {m!r}")
    assert isinstance(status, int)
    message = m.get(2, "")
    if not isinstance(message, str):
        raise Violation(f"TRAILERS message is not text: {message!r}")
    metadata = check_metadata(m[4], "TRAILERS") if 4 in m else {}
    not_processed = m.get(5, False)
    if not isinstance(not_processed, bool):
        raise Violation(f"TRAILERS key 5 is not a boolean: {not_processed!r}")
    if not_processed and status == OK:
        raise Violation("TRAILERS say OK and not processed")
    return Trailers(status if status in KNOWN_STATUSES else UNKNOWN, message, m.get(3),
                    metadata, not_processed, m)


@dataclass
class Reply:
    """What a call received: response headers, messages, and how it ended."""

    headers: dict[str, str | bytes] | None
    messages: list[Any]
    trailers: Trailers | None
    ended: CallEnded | None = None

    @property
    def status(self) -> int:
        assert self.trailers is not None, self.ended
        return self.trailers.status

    @property
    def result(self) -> Any:
        assert self.trailers is not None and self.trailers.status == OK, (self.trailers, self.ended)
        assert len(self.messages) == 1, self.messages
        return self.messages[0]


# --------------------------------------------------------------------------- calls


class Call:
    """One call: a client-initiated bidirectional QUIC stream (§16 "Calls")."""

    def __init__(self, conn: Connection, stream_id: int, headers: dict[int, Any]) -> None:
        self.conn = conn
        self.id = stream_id
        self.headers_sent = headers
        # receiving: every byte of the stream counts against what we granted (§16)
        self.scanner = FrameScanner()
        self.received = 0  # bytes the server put on the stream
        self.granted = INITIAL_CALL_WINDOW  # what it may put: 262,144 + our increments
        self.consumed = 0  # bytes counted as read by our policy
        self.grants_sent: list[int] = []
        self.headers: dict[str, str | bytes] | None = None
        self.seen_data = False
        self.trailers: Trailers | None = None
        self.fin = False
        self.reset_code: int | None = None  # the server's RESET_STREAM
        self.stop_code: int | None = None  # the server's STOP_SENDING
        self.cancelled: int | None = None  # our RESET_STREAM / STOP_SENDING code
        self.frames: list[Frame] = []  # every frame the server sent on the stream
        self.message_flags: list[int] = []  # the flags of each DATA frame received
        self._pending: dict[int, int] = {}  # message index -> bytes, not yet read
        self._send_events, self._events = trio.open_memory_channel[tuple[str, Any]](math.inf)
        # sending: what we may put is 65,536 plus the server's grants (§16)
        self.sent = 0
        self.send_limit = INITIAL_CALL_WINDOW
        self.window_updates: list[int] = []  # the server's increments for this call
        self.send_finished = False
        self._credit = trio.Event()

    @property
    def number(self) -> int:
        """How GOAWAY and WINDOW_UPDATE name the call: 1 + the QUIC stream id (§16)."""
        return self.id + 1

    @property
    def ended(self) -> bool:
        """TRAILERS received, reset by either side, or the connection gone."""
        return (self.trailers is not None or self.reset_code is not None
                or self.cancelled is not None or self.conn.closed.is_set())

    # ----- sending
    async def send(self, obj: Any = None, *, raw: bytes | None = None, compress: bool = False,
                   flags: int | None = None, end: bool = False) -> bool:
        """Send one message as one DATA frame (§16), within the call window.  ``compress``:
        zlib, which the server's INFO must accept (§5, §16); ``flags`` overrides the frame's
        flags (to test the server).  Returns False if the call ended before all of it left."""
        body = cbor2.dumps(obj) if raw is None else raw
        coding_flags = 0
        if compress:
            if not self.conn.server_codings & (1 << (ZLIB - 1)):
                raise AssertionError("the server's INFO did not accept zlib (§16)")
            body = zlib.compress(body)
            coding_flags = ZLIB << 2
        frame = encode_frame(DATA, coding_flags if flags is None else flags, body)
        return await self.send_bytes(frame, end=end)

    async def send_bytes(self, data: bytes, *, end: bool = False) -> bool:
        """Put ``data`` on the stream, never beyond the call window: wait for grants."""
        view = memoryview(data)
        while view:
            if self.ended or self.stop_code is not None:
                return False
            room = self.send_limit - self.sent
            if room <= 0:
                credit = self._credit
                await credit.wait()
                continue
            chunk = bytes(view[:room])
            view = view[room:]
            self.sent += len(chunk)
            fin = end and not view
            self.send_finished = self.send_finished or fin  # before TRAILERS can be handled
            self.conn.quic.send_stream_data(self.id, chunk, end_stream=fin)
            self.conn.wake()
            await trio.sleep(0)
        if end and not data:
            await self.end()
        return True

    async def end(self) -> None:
        """The half-close: the stream's FIN (§16; END_STREAM is not used)."""
        if not self.send_finished and not self.ended and self.stop_code is None:
            self.send_finished = True
            self.conn.quic.send_stream_data(self.id, b"", end_stream=True)
            self.conn.wake()
        await trio.sleep(0)

    def cancel(self, code: int = CANCELLED) -> None:
        """§16 "Cancellation": RESET_STREAM and STOP_SENDING, the reason's status as code."""
        if self.ended:
            return
        self.cancelled = code
        self.conn.quic.reset_stream(self.id, code)
        self.conn.quic.stop_stream(self.id, code)
        self.conn.wake()
        self._signal()
        self._send_events.send_nowait(("ended", CallEnded("cancelled by us", code)))

    def _signal(self) -> None:
        self._credit.set()
        self._credit = trio.Event()

    # ----- receiving
    async def receive(self) -> tuple[str, Any]:
        """The next event: ("headers", metadata), ("message", value), ("trailers",
        Trailers) or ("ended", CallEnded).  Taking a message counts its bytes as read,
        which may grant the server more of the call window."""
        kind, value = await self._events.receive()
        if kind == "message":
            index, obj = value
            self.consumed += self._pending.pop(index)
            self.conn.grant(self)
            return kind, obj
        return kind, value

    async def receive_message(self) -> Any:
        """The next response message (response headers skipped); CallEnded if the call
        ends first, TRAILERS included (then ``self.trailers`` holds them)."""
        while True:
            kind, value = await self.receive()
            if kind == "message":
                return value
            if kind == "trailers":
                raise CallEnded(f"TRAILERS with status {value.status}")
            if kind == "ended":
                assert isinstance(value, CallEnded)
                raise value

    async def finish(self) -> Reply:
        """Read the rest of the call."""
        messages = []
        while True:
            kind, value = await self.receive()
            if kind == "headers":
                continue
            if kind == "message":
                messages.append(value)
                continue
            if kind == "trailers":
                return Reply(self.headers, messages, value)
            return Reply(self.headers, messages, None, value)


# --------------------------------------------------------------------------- connection


class Connection:
    """One QUIC connection to a trpc server, and the checker of what the server sends."""

    def __init__(self, quic: QuicConnection, sock: trio.socket.SocketType,
                 address: tuple[str, int], *, codings: int, max_message_size: int,
                 call_window: int, auto_grant: bool) -> None:
        self.quic = quic
        self.sock = sock
        self.address = address
        self.codings = codings  # what we accept (our INFO's key 3)
        self.max_message_size = max_message_size
        self.call_window = call_window  # our receive policy: this much unread, at most
        self.auto_grant = auto_grant
        self.violations: list[Violation] = []
        self.handshake: events.HandshakeCompleted | None = None
        self.terminated: events.ConnectionTerminated | None = None
        self.closed = trio.Event()
        self.calls: dict[int, Call] = {}
        self.last_call_id = -4
        self.control_scanner = FrameScanner()
        self.control_frames: list[Frame] = []  # every frame of the server's control stream
        self.server_info: dict[Any, Any] | None = None
        self.info_received = trio.Event()
        self.server_codings = 0  # the server's INFO key 3
        self.goaway: dict[Any, Any] | None = None
        self.goaway_received = trio.Event()
        self.window_updates: list[tuple[int, int]] = []  # (call number, increment) received
        self.control_sent: list[Frame] = []  # what we put on our control stream
        self.other_streams: list[int] = []  # streams the server opened besides its control
        self.pings_acknowledged: set[int] = set()
        self._ping_acked = trio.Event()
        self._wakeup = trio.Event()
        self._flushed = trio.Event()
        self._goaway_sent = False

    # ----- I/O
    def wake(self) -> None:
        """Something changed: let the driver send what the connection has to send."""
        self._wakeup.set()

    async def flush(self) -> None:
        """Wait until the driver has sent what the connection had to send when called."""
        flushed = self._flushed
        self.wake()
        await flushed.wait()

    async def _drive(self) -> None:
        while True:
            wakeup = self._wakeup = trio.Event()
            flushed, self._flushed = self._flushed, trio.Event()
            for data, addr in self.quic.datagrams_to_send(trio.current_time()):
                await self.sock.sendto(data, addr)
            flushed.set()
            timer = self.quic.get_timer()
            with trio.move_on_at(math.inf if timer is None else timer):
                await wakeup.wait()
            if timer is not None and trio.current_time() >= timer:
                self.quic.handle_timer(trio.current_time())
                self._handle_events()

    async def _receive(self) -> None:
        while True:
            data, addr = await self.sock.recvfrom(65_536)
            self.quic.receive_datagram(data, addr, trio.current_time())
            self._handle_events()
            self.wake()

    def _handle_events(self) -> None:
        while (event := self.quic.next_event()) is not None:
            self.handle_event(event)

    def handle_event(self, event: events.QuicEvent) -> None:
        """Act on one of QUIC's events; what the document forbids is recorded and closes the
        connection with PROTOCOL_ERROR (§16)."""
        if self.violations:
            return  # closing already
        try:
            self._handle(event)
        except Violation as exc:
            self.violations.append(exc)
            self.quic.close(PROTOCOL_ERROR, reason_phrase=str(exc)[:200])
            self.wake()

    def _handle(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            self.handshake = event
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = event
            self.closed.set()
            for call in self.calls.values():
                call._signal()
                if call.trailers is None and call.reset_code is None and call.cancelled is None:
                    call._send_events.send_nowait(("ended", CallEnded(
                        f"connection closed: {event.reason_phrase}", event.error_code)))
        elif isinstance(event, events.PingAcknowledged):
            self.pings_acknowledged.add(event.uid)
            self._ping_acked.set()
            self._ping_acked = trio.Event()
        elif isinstance(event, events.StreamDataReceived):
            self._on_stream_data(event)
        elif isinstance(event, events.StreamReset):
            self._on_reset(event)
        elif isinstance(event, events.StopSendingReceived):
            self._on_stop_sending(event)

    # ----- streams the server sends on
    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        sid = event.stream_id
        if sid == SERVER_CONTROL:
            self._on_control(event.data, event.end_stream)
            return
        kind = sid & 3
        if kind != CLIENT_BIDI:
            if sid not in self.other_streams:
                self.other_streams.append(sid)
                raise Violation(f"the server opened stream {sid}: a peer opens one "
                                "unidirectional stream, its control stream, and no call (§16)")
            return
        call = self.calls.get(sid)
        if call is None:
            raise Violation(f"data on stream {sid}, which we never opened")
        self._on_call_data(call, event.data, event.end_stream)

    def _on_call_data(self, call: Call, data: bytes, fin: bool) -> None:
        if call.cancelled is not None:
            return  # we reset it: what was in flight is dropped
        call.received += len(data)
        if call.received > call.granted:
            raise Violation(f"call {call.number}: the server put {call.received} bytes on the "
                            f"stream, beyond the {call.granted} the call window allows (§16)")
        call.scanner.feed(data)
        while True:
            head = call.scanner.header()
            if head is None:
                break
            length, type_, flags, _ = head
            if type_ == DATA and length > self.max_message_size:
                # §16: the client checks the length from the header and cancels the call
                call.cancel(RESOURCE_EXHAUSTED)
                return
            if type_ in (HEADERS, TRAILERS) and length > MAX_MAP:
                raise Violation(f"{FRAME_NAMES[type_]} of {length} bytes (over {MAX_MAP})")
            frame = call.scanner.next_frame()
            if frame is None:
                break
            self._on_call_frame(call, frame)
            if call.cancelled is not None:
                return
        if fin:
            call.fin = True
            if call.scanner.buffered:
                raise Violation(f"call {call.number}: FIN inside a frame")
            if call.trailers is None:
                raise Violation(f"call {call.number}: FIN without TRAILERS (§16)")
        elif call.trailers is not None and call.scanner.buffered:
            raise Violation(f"call {call.number}: bytes after TRAILERS")

    def _on_call_frame(self, call: Call, frame: Frame) -> None:
        call.frames.append(frame if len(frame.payload) <= 4096
                           else Frame(frame.type, frame.flags, frame.stream_id, b""))
        what = f"call {call.number}: {FRAME_NAMES.get(frame.type, hex(frame.type))}"
        if frame.type not in (DATA, HEADERS, TRAILERS):
            raise Violation(f"{what} on a call stream (§16: only HEADERS, DATA, TRAILERS)")
        if frame.stream_id != 0:
            raise Violation(f"{what} with stream_id {frame.stream_id}, not 0 (§16)")
        if call.trailers is not None:
            raise Violation(f"{what} after TRAILERS")
        if frame.type == HEADERS:
            if frame.flags:
                raise Violation(f"{what} with flags {frame.flags:#x}")
            if call.headers is not None or call.seen_data:
                raise Violation(f"{what}: a second HEADERS, or HEADERS after DATA (§4)")
            m = decode_map(frame.payload, "HEADERS")
            call.headers = check_metadata(m.get(3, {}), "HEADERS")
            call._send_events.send_nowait(("headers", call.headers))
            self._consume_now(call, HEADER.size + len(frame.payload))
        elif frame.type == TRAILERS:
            if frame.flags:
                raise Violation(f"{what} with flags {frame.flags:#x}")
            call.trailers = parse_trailers(frame.payload)
            call._send_events.send_nowait(("trailers", call.trailers))
            call._signal()
            if not call.send_finished:
                # §16: TRAILERS before we finished sending: reset our side with code 0
                self.quic.reset_stream(call.id, NO_ERROR)
                self.wake()
        else:
            self._on_message(call, frame, what)

    def _on_message(self, call: Call, frame: Frame, what: str) -> None:
        flags, payload = frame.flags, frame.payload
        if flags & ~CODING_FLAGS:
            raise Violation(f"{what} with flags {flags:#x}: over QUIC only the coding (§16)")
        coding = (flags & CODING_FLAGS) >> 2
        if coding == 3:
            raise Violation(f"{what} with the reserved coding 3")
        if coding and not self.codings & (1 << (coding - 1)):
            raise Violation(f"{what} compressed with coding {coding}, which our INFO did not "
                            "accept (§16)")
        if not payload and coding:
            raise Violation(f"{what}: a compressed message of length 0 (§16)")
        call.seen_data = True
        call.message_flags.append(flags)
        self._consume_now(call, HEADER.size)  # the header counts as it arrives (§16)
        message = payload
        if coding == ZLIB:
            inflater = zlib.decompressobj()
            try:
                message = inflater.decompress(payload, self.max_message_size + 1)
            except zlib.error:
                call.cancel(INTERNAL)  # §5, §7: did not decompress
                return
            if len(message) > self.max_message_size or inflater.unconsumed_tail:
                call.cancel(RESOURCE_EXHAUSTED)  # §5: expands past the limit
                return
            if not inflater.eof or inflater.unused_data:
                call.cancel(INTERNAL)
                return
        elif coding == ZSTD:
            raise Violation(f"{what} compressed with zstd, which we never accept")
        try:
            obj = cbor2.loads(message)
        except Exception:
            call.cancel(INTERNAL)  # §5: a response that does not decode fails the call
            return
        index = len(call.message_flags)
        call._pending[index] = len(payload)
        call._send_events.send_nowait(("message", (index, obj)))

    def _consume_now(self, call: Call, n: int) -> None:
        call.consumed += n
        self.grant(call)

    def grant(self, call: Call) -> None:
        """Our receive policy (§16 leaves it to us): keep the server's limit ``call_window``
        past what is read, granting once a quarter window is due."""
        if not self.auto_grant or call.ended or self.closed.is_set():
            return
        target = call.consumed + max(self.call_window, INITIAL_CALL_WINDOW)
        if target - call.granted >= self.call_window // 4:
            self.send_window_update(call, target - call.granted)

    def send_window_update(self, call: Call, increment: int) -> None:
        """§16: WINDOW_UPDATE on our control stream, naming the call as 1 + its stream id."""
        call.granted += increment
        call.grants_sent.append(increment)
        self.send_control(WINDOW_UPDATE, struct.pack(">I", increment), call.number)

    def send_control(self, type_: int, payload: bytes, stream_id: int = 0) -> None:
        """One frame on our control stream (id 2, §16)."""
        self.control_sent.append(Frame(type_, 0, stream_id, payload))
        self.send_raw(CLIENT_CONTROL, encode_frame(type_, 0, payload, stream_id))

    def send_raw(self, stream_id: int, data: bytes) -> None:
        """Bytes on a stream as they are, to test how the server takes what it must refuse."""
        self.quic.send_stream_data(stream_id, data)
        self.wake()

    def _on_reset(self, event: events.StreamReset) -> None:
        call = self.calls.get(event.stream_id)
        if call is None:
            raise Violation(f"RESET_STREAM for stream {event.stream_id}, not a call of ours")
        if event.error_code not in (NO_ERROR, REFUSED):
            raise Violation(f"call {call.number}: RESET_STREAM code {event.error_code:#x} from "
                            "the server (§16: 0 or REFUSED)")
        first = call.reset_code is None
        call.reset_code = event.error_code
        call._signal()
        if call.trailers is None and call.cancelled is None and first:
            if event.error_code == NO_ERROR:
                raise Violation(f"call {call.number}: reset with NO_ERROR before its TRAILERS "
                                "(§6: every call not cancelled ends with TRAILERS)")
            call._send_events.send_nowait(("ended", CallEnded("refused: not processed",
                                                               REFUSED)))

    def _on_stop_sending(self, event: events.StopSendingReceived) -> None:
        call = self.calls.get(event.stream_id)
        if event.stream_id == CLIENT_CONTROL:
            raise Violation("STOP_SENDING on our control stream")
        if call is None:
            raise Violation(f"STOP_SENDING for stream {event.stream_id}, not a call of ours")
        if event.error_code not in (NO_ERROR, REFUSED):
            raise Violation(f"call {call.number}: STOP_SENDING code {event.error_code:#x} from "
                            "the server (§16: 0 or REFUSED)")
        call.stop_code = event.error_code
        call._signal()

    # ----- the server's control stream (§16 "Control streams")
    def _on_control(self, data: bytes, fin: bool) -> None:
        self.control_scanner.feed(data)
        while True:
            head = self.control_scanner.header()
            if head is None:
                break
            if head[1] != WINDOW_UPDATE and head[0] > MAX_MAP:
                raise Violation(f"control frame of {head[0]} bytes")
            frame = self.control_scanner.next_frame()
            if frame is None:
                break
            self._on_control_frame(frame)
        if fin and self.control_scanner.buffered:
            raise Violation("the server's control stream ends inside a frame")

    def _on_control_frame(self, frame: Frame) -> None:
        self.control_frames.append(frame)
        name = FRAME_NAMES.get(frame.type, hex(frame.type))
        if len(self.control_frames) == 1 and frame.type != INFO:
            raise Violation(f"the server's control stream starts with {name}, not INFO (§16)")
        if frame.flags:
            raise Violation(f"{name} with flags {frame.flags:#x} on the control stream")
        if frame.type == INFO:
            self._on_info(frame)
        elif frame.type == WINDOW_UPDATE:
            self._on_window_update(frame)
        elif frame.type == GOAWAY:
            if frame.stream_id:
                raise Violation(f"GOAWAY with stream_id {frame.stream_id}")
            m = decode_map(frame.payload, "GOAWAY")
            for key, check in ((1, is_uint), (2, is_uint), (3, lambda v: isinstance(v, str))):
                if key in m and not check(m[key]):
                    raise Violation(f"GOAWAY key {key}: {m[key]!r}")
            self.goaway = m
            self.goaway_received.set()
        else:
            raise Violation(f"{name} on the server's control stream (§16)")

    def _on_info(self, frame: Frame) -> None:
        if frame.stream_id:
            raise Violation(f"INFO with stream_id {frame.stream_id}")
        if self.server_info is not None:
            raise Violation("a second INFO (§16)")
        m = decode_map(frame.payload, "INFO")
        names = m.get(1, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise Violation(f"INFO key 1 is not an array of text: {names!r}")
        shapes = m.get(2, {})
        if not isinstance(shapes, dict) or not all(
                isinstance(p, str) and is_uint(n) for p, n in shapes.items()):
            raise Violation(f"INFO key 2 is not a map from text to uints: {shapes!r}")
        codings = m.get(3, 0)
        if not is_uint(codings):
            raise Violation(f"INFO key 3 is not an unsigned integer: {codings!r}")
        self.server_info = m
        self.server_codings = codings & 3  # other bits reserved: ignored (§2)
        self.info_received.set()

    def _on_window_update(self, frame: Frame) -> None:
        if len(frame.payload) != 4:
            raise Violation(f"WINDOW_UPDATE payload of {len(frame.payload)} bytes")
        (increment,) = struct.unpack(">I", frame.payload)
        if not 1 <= increment <= MAX_INCREMENT:
            raise Violation(f"WINDOW_UPDATE increment {increment}")
        number = frame.stream_id
        if number == 0:
            raise Violation("WINDOW_UPDATE with stream id 0 over QUIC (§16)")
        stream_id = number - 1
        if stream_id & 3 != CLIENT_BIDI or stream_id > self.last_call_id:
            # §16: a side grants for a call once bytes of it have arrived
            raise Violation(f"WINDOW_UPDATE for call {number}, which we never opened")
        self.window_updates.append((number, increment))
        call = self.calls[stream_id]
        if call.ended:
            return  # §16: one naming a call that has ended is ignored
        call.window_updates.append(increment)
        call.send_limit += increment  # §16: section 8's bound on credit does not apply
        call._signal()

    # ----- calls
    def open_call(self, method: str, *, timeout: float | None = None,
                  metadata: dict[str, str | bytes] | None = None,
                  response_coding: int | None = None, extra: dict[int, Any] | None = None,
                  after_goaway: bool = False, headers_frame: bytes | None = None) -> Call:
        """HEADERS (§4) on the next client bidirectional stream; flags 0 over QUIC.
        ``headers_frame``: send these bytes instead (to test the server)."""
        if self.goaway is not None and not after_goaway:
            raise CallEnded("the server sent GOAWAY: no new call (§9)")
        headers: dict[int, Any] = {1: method}
        if timeout is not None:
            headers[2] = max(0, int(timeout * 1_000_000))
        if metadata:
            headers[3] = metadata
        if response_coding is not None:
            headers[4] = response_coding
        headers.update(extra or {})
        stream_id = self.quic.get_next_available_stream_id()
        call = Call(self, stream_id, headers)
        self.calls[stream_id] = call
        self.last_call_id = stream_id
        frame = encode_frame(HEADERS, 0, cbor2.dumps(headers)) if headers_frame is None else headers_frame
        call.sent = len(frame)
        self.quic.send_stream_data(stream_id, frame)
        self.wake()
        return call

    async def call(self, method: str, *args: Any, timeout: float | None = None,
                   metadata: dict[str, str | bytes] | None = None, compress: bool = False,
                   response_coding: int | None = None, **kwargs: Any) -> Reply:
        """A unary or server-streaming call: HEADERS, the arguments and FIN, then all of it."""
        call = self.open_call(method, timeout=timeout, metadata=metadata,
                              response_coding=response_coding)
        await call.send(raw=encode_args(args, kwargs), compress=compress, end=True)
        return await call.finish()

    async def round_trip(self) -> bool:
        """A QUIC PING (§16: keepalive is QUIC's): True once acknowledged, False if the
        connection closes first.  The server has then read all we sent before it."""
        uid = len(self.pings_acknowledged) + 1
        self.quic.send_ping(uid)
        self.wake()
        while uid not in self.pings_acknowledged:
            if self.closed.is_set():
                return False
            acked = self._ping_acked
            with trio.move_on_after(0.05):  # closing wakes no ping waiter: look again
                await acked.wait()
        return True

    def send_goaway(self) -> None:
        """§16: a client closing sends GOAWAY (last stream id 0) on its control stream."""
        if not self._goaway_sent and not self.closed.is_set():
            self._goaway_sent = True
            self.send_control(GOAWAY, cbor2.dumps({1: 0, 2: OK}))


@asynccontextmanager
async def connect(address: tuple[str, int], *, cafile: str, server_name: str | None = None,
                  codings: int = ZLIB, max_message_size: int = DEFAULT_MAX_MESSAGE,
                  call_window: int = 262_144, auto_grant: bool = True,
                  alpn: str = ALPN, two_datagram_hello: bool = False,
                  expect_clean: bool = True) -> AsyncIterator[Connection]:
    """A QUIC connection to a trpc server at ``address``: the handshake (QUIC version 1, ALPN
    ``trpc/1``, the server's certificate verified against ``cafile``), then our control stream
    (id 2), starting with INFO ``{3: codings}`` if we accept any coding (§16).  On exit: GOAWAY
    on the control stream, CONNECTION_CLOSE code 0; with ``expect_clean``, assert that the
    server broke nothing and did not close the connection with an error.

    ``two_datagram_hello`` pads our first flight to two datagrams with a transport parameter
    the server ignores (aioquic's ``quantum_readiness_test``), as qh3's own client's hello
    takes two; by default the hello is aioquic's usual one datagram (see test_quic_spec)."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=[alpn], server_name=server_name or address[0],
        supported_versions=[QuicProtocolVersion.VERSION_1], idle_timeout=30.0,
        quantum_readiness_test=two_datagram_hello)
    configuration.load_verify_locations(cafile=cafile)
    quic = QuicConnection(configuration=configuration)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        conn = Connection(quic, sock, address, codings=codings, max_message_size=max_message_size,
                          call_window=call_window, auto_grant=auto_grant)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn._receive)
            nursery.start_soon(conn._drive)
            quic.connect(address, trio.current_time())
            conn.wake()
            with trio.fail_after(5):
                while conn.handshake is None and not conn.closed.is_set():
                    await trio.sleep(0.001)
            if conn.handshake is None:
                nursery.cancel_scope.cancel()
            else:
                assert conn.handshake.alpn_protocol == ALPN, conn.handshake
                if codings:
                    conn.send_control(INFO, cbor2.dumps({3: codings}))
                try:
                    yield conn
                finally:
                    with trio.CancelScope(shield=True):
                        conn.send_goaway()
                        quic.close(NO_ERROR)
                        with trio.move_on_after(1):
                            await conn.flush()  # the driver sends the GOAWAY and the close
                    nursery.cancel_scope.cancel()
    if conn.handshake is None:
        assert conn.terminated is not None
        raise ConnectionError(f"handshake failed: {conn.terminated.reason_phrase} "
                              f"(code {conn.terminated.error_code:#x})")
    if expect_clean:
        assert not conn.violations, f"the server broke the document: {conn.violations}"
        term = conn.terminated
        assert term is None or term.error_code == NO_ERROR, (
            f"the server closed the connection: code {term.error_code:#x}, {term.reason_phrase!r}")
