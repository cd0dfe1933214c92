"""An independent trpc client, written from ``docs/PROTOCOL.md`` alone.

It uses nothing of trpc: only ``trio`` (TCP), ``struct`` and ``cbor2`` (as a generic CBOR
codec).  Section numbers (§) refer to PROTOCOL.md.

Besides being a client, it is a strict checker of the server: anything the server sends that
the document forbids is recorded in ``Connection.violations`` (and answered with GOAWAY, §9).
"""

from __future__ import annotations

import math
import struct
import zlib
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import cbor2
import trio

# --------------------------------------------------------------------------- constants

MAGIC = b"TRPC"  # §2
PREFACE = struct.Struct(">4sBBHIIIII")  # §2: magic, major, minor, codings, 5 x u32
HEADER = struct.Struct(">IBBI")  # §3: length, type, flags, stream_id
assert PREFACE.size == 28 and HEADER.size == 10

# frame types (§3); INFO since 1.1, sent to us only if our preface says minor >= 1 (§2)
DATA, HEADERS, TRAILERS, CANCEL, WINDOW_UPDATE, PING, GOAWAY, INFO = range(8)
FRAME_NAMES = {
    DATA: "DATA", HEADERS: "HEADERS", TRAILERS: "TRAILERS", CANCEL: "CANCEL",
    WINDOW_UPDATE: "WINDOW_UPDATE", PING: "PING", GOAWAY: "GOAWAY", INFO: "INFO",
}
# flags (§3)
END_STREAM = 0x1
MORE = 0x2
ACK = 0x1
ALLOWED_FLAGS_1_0 = {
    DATA: END_STREAM | MORE, HEADERS: END_STREAM, TRAILERS: 0, CANCEL: 0,
    WINDOW_UPDATE: 0, PING: ACK, GOAWAY: 0,
}
ALLOWED_FLAGS = {**ALLOWED_FLAGS_1_0, INFO: 0}  # what a 1.1 receiver knows
# §3, §5 "Compressed messages" (1.2): DATA's 2-bit coding field
CODING_FLAGS = 0x0C
ALLOWED_FLAGS_1_2 = {**ALLOWED_FLAGS, DATA: END_STREAM | MORE | CODING_FLAGS}
ZLIB, ZSTD = 1, 2  # coding numbers; preface bits 1 << (number - 1)

MAX_CREDIT = 2**31 - 1  # §8
MAX_CBOR_MAP = 65_536  # §3 "CBOR maps", §10
MIN_FRAME, MAX_FRAME = 16_384, 16_777_215  # §2

# status codes (§6)
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = range(6)
ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION = range(6, 10)
ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS = range(10, 16)
UNAUTHENTICATED = 16
KNOWN_STATUSES = set(range(17))


class ProtocolError(Exception):
    """The peer broke the document (§9); ``status`` is what our GOAWAY says."""

    def __init__(self, status: int, message: str):
        super().__init__(f"[{status}] {message}")
        self.status = status
        self.message = message


class CallError(Exception):
    """A call ended locally (connection lost, GOAWAY, local limit)."""

    def __init__(self, status: int, message: str = ""):
        super().__init__(f"[{status}] {message}")
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- preface (§2)


@dataclass
class Settings:
    max_frame_size: int = 2_097_152
    max_message_size: int = 4_194_304
    stream_window: int = 2_097_152
    connection_window: int = 16_777_216
    max_concurrent_streams: int = 100
    major: int = 1
    minor: int = 0
    codings: int = 0  # §2 offset 6 (1.2): accepted codings, a bit set
    magic: bytes = MAGIC

    def encode(self) -> bytes:
        return PREFACE.pack(
            self.magic, self.major, self.minor, self.codings, self.max_frame_size,
            self.max_message_size, self.stream_window, self.connection_window,
            self.max_concurrent_streams,
        )

    @classmethod
    def decode(cls, data: bytes) -> "Settings":
        if len(data) != PREFACE.size:
            raise ProtocolError(INTERNAL, "short preface")
        magic, major, minor, codings, mfs, mms, sw, cw, mcs = PREFACE.unpack(data)
        if magic != MAGIC:
            raise ProtocolError(INTERNAL, f"bad magic {magic!r}")
        if major != 1:
            raise ProtocolError(UNIMPLEMENTED, f"unsupported major version {major}")
        # codings: reserved (read as 0) before 1.2; unknown bits ignored
        codings = codings & 0x3 if minor >= 2 else 0
        if not MIN_FRAME <= mfs <= MAX_FRAME:
            raise ProtocolError(INTERNAL, f"max frame size {mfs} out of range")
        for name, value in (("max message size", mms), ("stream window", sw),
                            ("connection window", cw), ("max concurrent streams", mcs)):
            if not 1 <= value <= MAX_CREDIT:
                raise ProtocolError(INTERNAL, f"{name} {value} out of range")
        return cls(mfs, mms, sw, cw, mcs, major, minor, codings)


DEFAULTS = Settings()


# --------------------------------------------------------------------------- frames (§3)


@dataclass
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes = b""

    def encode(self) -> bytes:
        return encode_frame(self.type, self.flags, self.stream_id, self.payload)

    def __repr__(self) -> str:
        name = FRAME_NAMES.get(self.type, hex(self.type))
        body = self.payload if len(self.payload) <= 32 else f"<{len(self.payload)} bytes>"
        return f"Frame({name}, flags={self.flags:#x}, sid={self.stream_id}, {body!r})"


def encode_frame(type_: int, flags: int, stream_id: int, payload: bytes = b"",
                 length: int | None = None) -> bytes:
    return HEADER.pack(len(payload) if length is None else length, type_, flags,
                       stream_id) + payload


class FrameParser:
    """Incremental frame parser: ``feed`` any slicing of the byte stream, ``next_frame``
    returns frames as they complete.  The length limit is checked from the header alone."""

    def __init__(self, max_frame_size: int):
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Frame | None:
        avail = len(self._buf) - self._pos
        if avail < HEADER.size:
            return None
        length, type_, flags, sid = HEADER.unpack_from(self._buf, self._pos)
        if length > self.max_frame_size:
            raise ProtocolError(RESOURCE_EXHAUSTED,
                                f"frame of {length} bytes exceeds max frame size")
        if avail < HEADER.size + length:
            return None
        start = self._pos + HEADER.size
        payload = bytes(self._buf[start:start + length])
        self._pos = start + length
        return Frame(type_, flags, sid, payload)

    def frames(self) -> list[Frame]:
        out = []
        while (f := self.next_frame()) is not None:
            out.append(f)
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos


# --------------------------------------------------------------------------- CBOR helpers


def encode_args(args=(), kwargs=None) -> bytes:
    """§5: ``[positional]`` or ``[positional, keyword]``."""
    return cbor2.dumps([list(args), dict(kwargs)] if kwargs else [list(args)])


def decode_map(payload: bytes, what: str) -> dict:
    if len(payload) > MAX_CBOR_MAP:
        raise ProtocolError(INTERNAL, f"{what} payload larger than {MAX_CBOR_MAP}")
    try:
        value = cbor2.loads(payload)
    except Exception as exc:
        raise ProtocolError(INTERNAL, f"{what}: bad CBOR: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(INTERNAL, f"{what}: not a map")
    return value


def check_metadata(md: Any, what: str) -> dict:
    if not isinstance(md, dict) or not all(
        isinstance(k, str) and isinstance(v, (str, bytes)) for k, v in md.items()
    ):
        raise ProtocolError(INTERNAL, f"{what}: bad metadata {md!r}")
    return md


def is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# §3 INFO key 2: call shapes by number
INFO_SHAPES = {0: "unary", 1: "server_stream", 2: "client_stream", 3: "bidi_stream"}


# ------------------------------------------------------------------ §13 Reflection
DESCRIBE = "trpc.reflection.v1.Reflection/Describe"
PARAM_KINDS_KNOWN = {"positional_only", "positional_or_keyword", "var_positional",
                     "keyword_only", "var_keyword"}


class BadDocument(Exception):
    pass


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise BadDocument(what)


def _text(m: dict, key: str, where: str, *, null: bool = False):
    _check(key in m, f"{where}.{key} missing")
    v = m[key]
    _check(isinstance(v, str) or (null and v is None), f"{where}.{key}: {v!r}")
    return v


def _default(m: dict, where: str) -> tuple:
    """(has_default, text): "default" absent means no default (not the same as "None")."""
    if "default" not in m:
        return False, None
    _check(isinstance(m["default"], str), f"{where}.default: {m['default']!r}")
    return True, m["default"]


def read_document(doc) -> dict:
    """The §13 document as plain dicts keyed by name, checked by the section's rules; unknown
    keys ignored.  {"services": {name: {"doc", "methods": {name: {...}}}}, "messages": {...}}."""
    _check(isinstance(doc, dict), "document is not a map")
    _check(doc.get("version") == 1 and is_uint(doc.get("version")), f"version {doc.get('version')!r}")
    out = {"services": {}, "messages": {}}
    _check(isinstance(doc.get("services"), list), "services")
    for i, svc in enumerate(doc["services"]):
        where = f"services[{i}]"
        _check(isinstance(svc, dict), where)
        name = _text(svc, "name", where)
        methods = {}
        _check(isinstance(svc.get("methods"), list), f"{where}.methods")
        for j, m in enumerate(svc["methods"]):
            mw = f"{where}.methods[{j}]"
            _check(isinstance(m, dict), mw)
            _check(m.get("shape") in INFO_SHAPES.values(), f"{mw}.shape: {m.get('shape')!r}")
            _check(isinstance(m.get("idempotent"), bool), f"{mw}.idempotent")
            _check(isinstance(m.get("params"), list), f"{mw}.params")
            params = []
            for k, p in enumerate(m["params"]):
                pw = f"{mw}.params[{k}]"
                _check(isinstance(p, dict), pw)
                has, default = _default(p, pw)
                params.append({"name": _text(p, "name", pw), "kind": _text(p, "kind", pw),
                               "annotation": _text(p, "annotation", pw, null=True),
                               "has_default": has, "default": default})
            path = _text(m, "path", mw)
            _check(path == f"{name}/{_text(m, 'name', mw)}", f"{mw}.path {path!r}")  # §4
            methods[m["name"]] = {"path": path, "shape": m["shape"], "idempotent": m["idempotent"],
                                  "doc": _text(m, "doc", mw, null=True), "params": params,
                                  "returns": _text(m, "returns", mw, null=True)}
        out["services"][name] = {"doc": _text(svc, "doc", where, null=True), "methods": methods}
    _check(isinstance(doc.get("messages"), list), "messages")
    for i, msg in enumerate(doc["messages"]):
        where = f"messages[{i}]"
        _check(isinstance(msg, dict) and isinstance(msg.get("fields"), list), where)
        fields = {}
        for k, f in enumerate(msg["fields"]):
            fw = f"{where}.fields[{k}]"
            _check(isinstance(f, dict) and is_uint(f.get("number")), fw)
            has, default = _default(f, fw)
            fields[f["number"]] = {"name": _text(f, "name", fw), "has_default": has, "default": default,
                                   "annotation": _text(f, "annotation", fw, null=True)}
        out["messages"][_text(msg, "name", where)] = {"doc": _text(msg, "doc", where, null=True),
                                                      "fields": fields}
    return out


@dataclass
class Trailers:
    status: int
    message: str = ""
    details: Any = None
    metadata: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    payload: bytes = b""
    not_processed: bool = False  # key 5 (§6, 1.1)


def parse_trailers(payload: bytes) -> Trailers:
    m = decode_map(payload, "TRAILERS")
    status = m.get(1)
    if not is_uint(status):
        raise ProtocolError(INTERNAL, f"TRAILERS without a valid status: {m!r}")
    if status not in KNOWN_STATUSES:
        status = UNKNOWN  # §6
    message = m.get(2, "")
    if not isinstance(message, str):
        raise ProtocolError(INTERNAL, "TRAILERS message is not text")
    metadata = check_metadata(m[4], "TRAILERS") if 4 in m else {}
    not_processed = m.get(5, False)
    if not isinstance(not_processed, bool):
        raise ProtocolError(INTERNAL, "TRAILERS key 5 is not a boolean")
    if not_processed and m[1] == OK:
        raise ProtocolError(INTERNAL, "TRAILERS say OK and not processed")
    return Trailers(status, message, m.get(3), metadata, m, payload, not_processed)


# --------------------------------------------------------------------------- streams


@dataclass
class Reply:
    messages: list
    trailers: Trailers | None
    headers: dict | None

    @property
    def status(self) -> int:
        return self.trailers.status

    @property
    def result(self):
        assert self.trailers is not None and self.trailers.status == OK, self.trailers
        assert len(self.messages) == 1, self.messages
        return self.messages[0]


class Stream:
    def __init__(self, conn: "Connection", sid: int):
        self.conn = conn
        self.id = sid
        self.send_credit = conn.peer.stream_window  # what we may still send (§8)
        self.recv_credit = conn.local.stream_window  # what the peer may still send us
        self.recv_unreturned = 0  # consumed bytes not yet granted back
        self._events_send, self._events = trio.open_memory_channel(math.inf)
        self.partial = bytearray()
        self.coding = 0  # the coding of the message being received (its first frame's)
        self.seen_headers = False
        self.seen_data = False
        self.half_closed = False  # we sent END_STREAM
        self.ended = False  # TRAILERS received, CANCEL sent, or connection gone
        self.end_reason: Any = None
        self.frames: list[Frame] = []  # every frame received on this stream
        self.window_updates: list[int] = []  # increments received for this stream
        self.data_sent: list[tuple[int, int]] = []  # (flags, length) of DATA we sent

    # ----- sending
    async def send_message(self, obj: Any = None, *, raw: bytes | None = None,
                           end_stream: bool = False, check_size: bool = True,
                           zlib_level: int | None = None, coding: int | None = None) -> bool:
        """Send one message, split over DATA frames within the peer's max frame size and
        the stream and connection credit.  Returns False if the stream ended meanwhile.
        ``zlib_level``: compress it with zlib (§5 "Compressed messages"), which the peer's
        preface must accept; ``coding``: put this coding on its first frame (``raw`` is then
        sent as it is: for tests of what the peer refuses)."""
        payload = cbor2.dumps(obj) if raw is None else raw
        assert payload, "a message is at least one byte (§5)"
        if check_size and len(payload) > self.conn.peer.max_message_size:
            raise CallError(RESOURCE_EXHAUSTED, "message larger than the peer accepts")
        if zlib_level is not None:
            assert self.conn.peer.codings & 1, "the peer does not accept zlib (§2)"
            payload, coding = zlib.compress(payload, zlib_level), ZLIB
        first = (coding or 0) << 2
        conn = self.conn
        offset = 0
        while offset < len(payload):
            while not self.ended and (self.send_credit <= 0 or conn.send_credit <= 0):
                await conn._credit_changed.wait()
            if self.ended:
                return False
            n = min(len(payload) - offset, conn.peer.max_frame_size, self.send_credit,
                    conn.send_credit)
            last = offset + n == len(payload)
            flags = 0 if not last else (END_STREAM if end_stream else 0)
            if not last:
                flags |= MORE
            if offset == 0:
                flags |= first  # the coding goes on the first frame only
            self.send_credit -= n
            conn.send_credit -= n
            self.data_sent.append((flags, n))
            conn.send_frame(DATA, flags, self.id, payload[offset:offset + n])
            offset += n
            await trio.lowlevel.checkpoint()
        if end_stream:
            self.half_closed = True
        return True

    def end(self) -> None:
        """Half-close with an empty DATA frame carrying END_STREAM (§5)."""
        self.half_closed = True
        self.conn.send_frame(DATA, END_STREAM, self.id)

    def cancel(self, reason: int = CANCELLED, message: str | None = None) -> None:
        m: dict = {1: reason}
        if message is not None:
            m[2] = message
        self.conn.send_frame(CANCEL, 0, self.id, cbor2.dumps(m))
        self.conn._close_stream(self, ("cancelled", reason))

    # ----- receiving
    async def receive(self) -> tuple:
        """Next event: ("headers", md) | ("message", obj) | ("trailers", Trailers) |
        ("closed", status, message)."""
        event = await self._events.receive()
        if event[0] == "message":
            _, obj, nbytes = event
            self._consumed(nbytes)
            return ("message", obj)
        return event

    def _consumed(self, nbytes: int) -> None:
        """Grant stream credit back as the application consumes (batches of half)."""
        if self.ended or nbytes == 0:
            return
        self.recv_unreturned += nbytes
        if self.recv_unreturned >= max(1, self.conn.local.stream_window // 2):
            inc, self.recv_unreturned = self.recv_unreturned, 0
            self.recv_credit += inc
            self.conn.send_frame(WINDOW_UPDATE, 0, self.id, struct.pack(">I", inc))

    async def receive_message(self):
        event = await self.receive()
        assert event[0] == "message", event
        return event[1]

    async def finish(self) -> Reply:
        """Collect messages until TRAILERS (or local end)."""
        messages, headers = [], None
        while True:
            event = await self.receive()
            if event[0] == "message":
                messages.append(event[1])
            elif event[0] == "headers":
                headers = event[1]
            elif event[0] == "trailers":
                return Reply(messages, event[1], headers)
            else:
                raise CallError(*event[1:])

    def pending_events(self) -> list:
        out = []
        while True:
            try:
                out.append(self._events.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return out


# --------------------------------------------------------------------------- connection


class Connection:
    def __init__(self, tcp: trio.SocketStream, local: Settings, peer: Settings,
                 peer_preface: bytes, leftover: bytes):
        self.tcp = tcp
        self.local = local
        self.peer = peer
        self.peer_preface = peer_preface
        self.parser = FrameParser(local.max_frame_size)
        self.parser.feed(leftover)
        self.streams: dict[int, Stream] = {}  # open streams
        self.all_streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.send_credit = peer.connection_window
        self.recv_credit = local.connection_window
        self.recv_unreturned = 0
        self._credit_changed = trio.Event()
        self._pings: dict[bytes, trio.Event] = {}
        self.goaway: dict | None = None
        self.goaway_received = trio.Event()
        # §3 INFO (1.1): known only if our preface says minor >= 1; DATA's coding (1.2)
        self.allowed_flags = (ALLOWED_FLAGS_1_2 if local.minor >= 2 else ALLOWED_FLAGS
                              if local.minor >= 1 else ALLOWED_FLAGS_1_0)
        self.info: dict | None = None
        self.idempotent: frozenset = frozenset()
        self.methods: dict[str, str] = {}  # INFO key 2: path -> shape (§3)
        self.info_received = trio.Event()
        self.stream_frame_seen = False  # INFO must come before any frame for a stream
        self.closed = trio.Event()  # EOF from the peer or connection torn down
        self.violations: list[ProtocolError] = []
        self.frames: list[Frame] = []  # every frame received (payloads > 4 KiB dropped)
        self.window_updates: list[tuple[int, int]] = []
        self.sent: list[tuple[int, int, int, int]] = []  # (type, flags, sid, length)
        # ("sent"|"recv", type, sid, length or WINDOW_UPDATE increment), in the order we
        # queued / received them: lets a test replay the credit accounting independently
        self.log: list[tuple[str, int, int, int]] = []
        self.eof_mid_frame = False
        self._out_send, self._out_recv = trio.open_memory_channel(math.inf)
        self.writer_done = trio.Event()
        self.write_error: BaseException | None = None

    # ----- sending
    def send_bytes(self, data: bytes) -> None:
        try:
            self._out_send.send_nowait(data)
        except trio.ClosedResourceError:
            pass

    def send_frame(self, type_: int, flags: int, sid: int, payload: bytes = b"",
                   length: int | None = None) -> None:
        n = len(payload) if length is None else length
        self.sent.append((type_, flags, sid, n))
        self.log.append(("sent", type_, sid, n))
        self.send_bytes(encode_frame(type_, flags, sid, payload, length))

    async def _writer(self) -> None:
        try:
            async for data in self._out_recv:
                await self.tcp.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.write_error = exc
        finally:
            self.writer_done.set()

    def _signal_credit(self) -> None:
        self._credit_changed.set()
        self._credit_changed = trio.Event()

    # ----- calls
    def open_stream(self, method: str, *, timeout: float | None = None,
                    metadata: dict | None = None, end_stream: bool = False,
                    sid: int | None = None, extra: dict | None = None,
                    enforce_limit: bool = True) -> Stream:
        """Send HEADERS on a new stream id (§4)."""
        if self.goaway is not None or self.closed.is_set():
            raise CallError(UNAVAILABLE, "connection going away")
        if enforce_limit and len(self.streams) >= self.peer.max_concurrent_streams:
            raise CallError(RESOURCE_EXHAUSTED, "too many open streams")
        sid = self.last_stream_id + 1 if sid is None else sid
        assert sid > self.last_stream_id
        self.last_stream_id = sid
        headers: dict = {1: method}
        if timeout is not None:
            headers[2] = max(0, int(timeout * 1_000_000))
        if metadata:
            headers[3] = metadata
        if extra:
            headers.update(extra)
        stream = Stream(self, sid)
        stream.headers_sent = headers
        stream.half_closed = end_stream
        self.streams[sid] = stream
        self.all_streams[sid] = stream
        self.send_frame(HEADERS, END_STREAM if end_stream else 0, sid, cbor2.dumps(headers))
        return stream

    async def call(self, method: str, *args, timeout: float | None = None,
                   metadata: dict | None = None, **kwargs) -> Reply:
        """A unary or server-streaming call: one arguments message, then collect."""
        stream = self.open_stream(method, timeout=timeout, metadata=metadata)
        await stream.send_message(raw=encode_args(args, kwargs), end_stream=True)
        return await stream.finish()

    async def ping(self, payload: bytes = b"pingpong") -> None:
        assert len(payload) == 8
        event = self._pings[payload] = trio.Event()
        self.send_frame(PING, 0, 0, payload)
        await event.wait()

    def _close_stream(self, stream: Stream, reason: tuple) -> None:
        if stream.ended:
            return
        stream.ended = True
        stream.end_reason = reason
        self.streams.pop(stream.id, None)
        if reason[0] != "trailers":
            stream._events_send.send_nowait(
                ("closed", reason[1], reason[2] if len(reason) > 2 else ""))
        self._signal_credit()  # wake a sender waiting on this stream

    # ----- receiving
    async def _reader(self) -> None:
        try:
            while True:
                for frame in self.parser.frames():
                    self._handle(frame)
                try:
                    data = await self.tcp.receive_some(65_536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    if self.parser.buffered:
                        self.eof_mid_frame = True
                        self.violations.append(ProtocolError(INTERNAL, "EOF mid-frame"))
                    break
                self.parser.feed(data)
        except ProtocolError as exc:
            self._violation(exc)
        finally:
            for stream in list(self.streams.values()):
                self._close_stream(stream, ("closed", UNAVAILABLE, "connection closed"))
            self.closed.set()
            self._signal_credit()

    def _violation(self, exc: ProtocolError) -> None:
        self.violations.append(exc)
        self.send_frame(GOAWAY, 0, 0, cbor2.dumps(
            {1: self.last_stream_id, 2: exc.status, 3: exc.message}))
        self._out_send.close()

    def _known_stream(self, frame: Frame) -> Stream | None:
        """The open stream, None for a closed one (drop), or a protocol error (§7)."""
        sid = frame.stream_id
        if sid == 0 or sid > self.last_stream_id:
            raise ProtocolError(INTERNAL, f"{FRAME_NAMES[frame.type]} for never-opened "
                                          f"stream {sid}")
        return self.streams.get(sid)

    def _handle(self, frame: Frame) -> None:
        self.frames.append(frame if len(frame.payload) <= 4096
                           else Frame(frame.type, frame.flags, frame.stream_id, b""))
        t, flags, sid, payload = frame.type, frame.flags, frame.stream_id, frame.payload
        if t not in self.allowed_flags:
            raise ProtocolError(INTERNAL, f"unknown frame type {t}")
        if flags & ~self.allowed_flags[t]:
            raise ProtocolError(INTERNAL, f"bad flags {flags:#x} on {FRAME_NAMES[t]}")
        if sid:
            self.stream_frame_seen = True
        if t == DATA:
            self._on_data(frame)
        elif t == HEADERS:
            if flags & END_STREAM:
                raise ProtocolError(INTERNAL, "END_STREAM on server HEADERS")
            stream = self._known_stream(frame)
            if stream is None:
                return
            stream.frames.append(frame)
            m = decode_map(payload, "HEADERS")
            if stream.seen_headers or stream.seen_data:
                raise ProtocolError(INTERNAL, "second HEADERS, or HEADERS after DATA")
            stream.seen_headers = True
            md = check_metadata(m.get(3, {}), "HEADERS")
            stream._events_send.send_nowait(("headers", md))
        elif t == TRAILERS:
            stream = self._known_stream(frame)
            if stream is None:
                return
            stream.frames.append(frame)
            if stream.partial:
                raise ProtocolError(INTERNAL, "TRAILERS inside a message")
            trailers = parse_trailers(payload)
            stream._events_send.send_nowait(("trailers", trailers))
            self._close_stream(stream, ("trailers", trailers))
        elif t == CANCEL:
            raise ProtocolError(INTERNAL, "CANCEL from the server")
        elif t == WINDOW_UPDATE:
            if len(payload) != 4:
                raise ProtocolError(INTERNAL, "WINDOW_UPDATE payload not 4 bytes")
            (inc,) = struct.unpack(">I", payload)
            if not 1 <= inc <= MAX_CREDIT:
                raise ProtocolError(INTERNAL, f"WINDOW_UPDATE increment {inc}")
            self.window_updates.append((sid, inc))
            self.log.append(("recv", WINDOW_UPDATE, sid, inc))
            if sid == 0:
                self.send_credit += inc
                if self.send_credit > MAX_CREDIT:
                    raise ProtocolError(INTERNAL, "connection credit overflow")
            else:
                stream = self._known_stream(frame)
                if stream is None:
                    return
                stream.window_updates.append(inc)
                stream.send_credit += inc
                if stream.send_credit > MAX_CREDIT:
                    raise ProtocolError(INTERNAL, "stream credit overflow")
            self._signal_credit()
        elif t == PING:
            if sid != 0 or len(payload) != 8:
                raise ProtocolError(INTERNAL, "bad PING")
            if flags & ACK:
                event = self._pings.pop(payload, None)
                if event is not None:
                    event.set()
            else:
                self.send_frame(PING, ACK, 0, payload)
        elif t == GOAWAY:
            if sid != 0:
                raise ProtocolError(INTERNAL, "GOAWAY on a stream")
            m = decode_map(payload, "GOAWAY")
            self.goaway = m
            self.goaway_received.set()
            last = m.get(1, 0)
            for stream in list(self.streams.values()):
                if stream.id > last:  # §9: not processed, may be retried anywhere
                    self._close_stream(stream, ("closed", UNAVAILABLE, "GOAWAY: not processed"))
                elif m.get(2, 0) != OK:
                    self._close_stream(stream, ("closed", UNAVAILABLE, "GOAWAY"))
        elif t == INFO:
            if sid != 0:
                raise ProtocolError(INTERNAL, "INFO on a stream")
            if self.info is not None:
                raise ProtocolError(INTERNAL, "a second INFO")
            if self.stream_frame_seen:
                raise ProtocolError(INTERNAL, "INFO after a frame for a stream")
            m = decode_map(payload, "INFO")
            names = m.get(1, [])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ProtocolError(INTERNAL, f"INFO key 1 is not an array of text: {names!r}")
            shapes = m.get(2, {})
            if not isinstance(shapes, dict) or not all(
                    isinstance(p, str) and is_uint(n) for p, n in shapes.items()):
                raise ProtocolError(INTERNAL, f"INFO key 2 is not a map of text to uints: {shapes!r}")
            self.info = m
            self.idempotent = frozenset(names)
            # an unknown shape number leaves the method out (§3)
            self.methods = {p: INFO_SHAPES[n] for p, n in shapes.items() if n in INFO_SHAPES}
            self.info_received.set()

    def _on_data(self, frame: Frame) -> None:
        flags, n = frame.flags, len(frame.payload)
        if frame.stream_id == 0:
            raise ProtocolError(INTERNAL, "DATA on stream 0")
        if flags & END_STREAM:
            raise ProtocolError(INTERNAL, "END_STREAM from the server")
        if n == 0:
            raise ProtocolError(INTERNAL, "empty DATA")
        # connection credit: counted even for closed streams (§8)
        self.recv_credit -= n
        if self.recv_credit < 0:
            raise ProtocolError(RESOURCE_EXHAUSTED, "connection credit exceeded")
        stream = self._known_stream(frame)
        # return connection credit as soon as bytes are handed over (batches of half)
        self.recv_unreturned += n
        if self.recv_unreturned >= self.local.connection_window // 2:
            inc, self.recv_unreturned = self.recv_unreturned, 0
            self.recv_credit += inc
            self.send_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", inc))
        if stream is None:
            return
        stream.frames.append(Frame(frame.type, flags, frame.stream_id,
                                   frame.payload if n <= 4096 else b""))
        stream.seen_data = True
        stream.recv_credit -= n
        if stream.recv_credit < 0:
            raise ProtocolError(RESOURCE_EXHAUSTED, f"stream {stream.id} credit exceeded")
        coding = (flags & CODING_FLAGS) >> 2
        if coding:  # §5 "Compressed messages"
            if coding == 3:
                raise ProtocolError(INTERNAL, "DATA with the reserved coding 3")
            if not self.local.codings & (1 << (coding - 1)):
                raise ProtocolError(INTERNAL, f"DATA compressed with coding {coding}, not accepted")
            if stream.partial:
                raise ProtocolError(INTERNAL, "a coding on a frame that continues a message")
            stream.coding = coding
        stream.partial += frame.payload
        if len(stream.partial) > self.local.max_message_size:
            stream.partial = bytearray()
            stream.cancel(RESOURCE_EXHAUSTED, "response message too large")
            return
        if flags & MORE:
            # the bytes of a message still being received do not hold the window (§8)
            stream._consumed(n)
            return
        message, stream.partial = bytes(stream.partial), bytearray()
        coding, stream.coding = stream.coding, 0
        if coding == ZLIB:
            # the limit applies to the message: inflate no further than it (§5)
            inflater = zlib.decompressobj()
            try:
                message = inflater.decompress(message, self.local.max_message_size + 1)
            except zlib.error as exc:
                stream.cancel(INTERNAL, f"corrupt zlib data: {exc}")
                return
            if len(message) > self.local.max_message_size or inflater.unconsumed_tail:
                stream.cancel(RESOURCE_EXHAUSTED, "response message expands past the limit")
                return
            if not inflater.eof or inflater.unused_data:
                stream.cancel(INTERNAL, "not exactly one zlib stream")
                return
        try:
            obj = cbor2.loads(message)
        except Exception as exc:
            raise ProtocolError(INTERNAL, f"undecodable message: {exc}") from None
        stream._events_send.send_nowait(("message", obj, n))

    # ----- closing
    async def aclose(self, goaway: bool = True) -> None:
        if goaway and not self.closed.is_set():
            self.send_frame(GOAWAY, 0, 0, cbor2.dumps({1: 0, 2: OK}))
        self._out_send.close()
        with trio.move_on_after(2):
            await self.writer_done.wait()
        await self.tcp.aclose()


async def handshake(address, local: Settings = DEFAULTS) -> tuple[trio.SocketStream, Settings,
                                                                    bytes, bytes]:
    """Connect, send our preface at once, read and validate the server's (§2)."""
    tcp = await trio.open_tcp_stream(*address)
    await tcp.send_all(local.encode())
    buf = bytearray()
    while len(buf) < PREFACE.size:
        data = await tcp.receive_some(65_536)
        if not data:
            raise ProtocolError(INTERNAL, f"EOF in the preface after {len(buf)} bytes")
        buf += data
        if len(buf) >= 4 and buf[:4] != MAGIC:  # checked as soon as we have it
            raise ProtocolError(INTERNAL, f"bad magic {bytes(buf[:4])!r}")
    preface = bytes(buf[:PREFACE.size])
    return tcp, Settings.decode(preface), preface, bytes(buf[PREFACE.size:])


@asynccontextmanager
async def connect(address, local: Settings = DEFAULTS, *, expect_clean: bool = True):
    tcp, peer, preface, leftover = await handshake(address, local)
    conn = Connection(tcp, local, peer, preface, leftover)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn._writer)
        nursery.start_soon(conn._reader)
        try:
            yield conn
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()
            nursery.cancel_scope.cancel()
    if expect_clean:
        assert not conn.violations, f"server broke the protocol: {conn.violations}"
        assert conn.goaway is None or conn.goaway.get(2) == OK, conn.goaway
