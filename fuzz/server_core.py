"""Fuzz target: the sans-IO server core (``trpc.wire.Connection("server")``) under a hostile peer.

Theory of operation.  The server has sent its preface and received a valid client preface; then
everything the peer sends is the fuzzer's.  Each input is a small configuration and a script:

    byte 0     bit 0: the Python framer (else C); bit 1: small windows and message limit on our
               side (1024 bytes); bit 2: at most 2 concurrent calls; bit 3: the client grants
               little credit (64-byte stream and 128-byte connection windows, so replies wait);
               bit 4: end with EOF (b"") if the script did not
    byte 1     how the application answers a call (bits 0-1: at once / at once with a 1-byte
               reply / after its request half-closes / only when the script says), bit 2:
               send response headers first, bit 3: consume messages only when the script says,
               bit 4: replies go through a batch (``open_batch``, framed by ``frame_run`` in C)
    then ops   op & 3 == 0: feed the next byte's worth of bytes (< 240: that many, else
               (b - 240) * 4 KiB) with max_frames = op >> 2 (63: None, all of them);
               1: process_backlog(op >> 2 or None); 2: the application acts on its
               (op >> 2)-th open call (answers it, or consumes what it holds); 3: EOF, then stop.

What must hold, checked after every step (a failure is an AssertionError, a crash):

- receive_data / process_backlog raise nothing but trpc.RemoteProtocolError (and subclasses);
  once one was raised, every later receive_data raises it again and process_backlog yields
  nothing; the application's own (legal) calls raise nothing.
- Output stays bounded: everything data_to_send() returned is at most 8 bytes per input byte,
  plus 1 KiB per application action and 4 KiB.
- The events make sense: CallOpened ids increase, StreamEnded comes at most once per call,
  messages, ends and cancels arrive only for calls the application holds (or answered while
  handling the same batch of events).
- No stream leaks: after EOF, every stream still open in the connection is a call the
  application holds, or one whose trailers wait behind output short of credit; and every call
  the application holds is open in the connection.

Run: ``python fuzz/server_core.py fuzz/corpus/server_core -max_total_time=300`` (fuzz/README.md).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["trpc"]):
    import trpc
    from trpc import _events as ev
    from trpc._framer_c import CFramer
    from trpc._framer_py import PyFramer
    from trpc.wire import PREFACE, PREFACE_MAGIC, Connection, StreamState, message_size


def client_preface(small_credit: bool) -> bytes:
    stream_window, connection_window = (64, 128) if small_credit else (1 << 20, 16 << 20)
    return PREFACE.pack(PREFACE_MAGIC, 1, 0, 0, 1 << 20, 4 << 20, stream_window, connection_window, 100)


class Script:
    """Reads the input: bytes and small integers, 0 when it runs out."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, size: int) -> bytes:
        chunk = self.data[self.pos : self.pos + size]
        self.pos += len(chunk)
        return chunk

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


class App:
    """A plausible application: answers calls, consumes messages, as byte 1 of the input says."""

    def __init__(self, conn: Connection, policy: int) -> None:
        self.conn = conn
        self.answer = policy & 3
        self.headers_first = bool(policy & 4)
        self.consume_later = bool(policy & 8)
        self.batched = bool(policy & 16)
        self.calls: dict[int, dict] = {}  # the calls we hold: id -> {"ended", "held"}
        # Calls we answered: events of the same receive_data may still follow for them (the
        # connection made them before we answered), and are ignored, as a server does.
        self.answered: set[int] = set()
        self.last_id = 0
        self.actions = 0

    def on_events(self, events: list) -> None:
        for event in events:
            kind = type(event)
            if kind is ev.CallOpened:
                assert event.stream_id > self.last_id, f"call ids must increase: {event!r}"
                self.last_id = event.stream_id
                self.calls[event.stream_id] = {"ended": event.end_stream, "held": 0}
                if self.answer in (0, 1) or (self.answer == 2 and event.end_stream):
                    self.respond(event.stream_id)
            elif getattr(event, "stream_id", None) in self.answered:
                continue
            elif kind is ev.MessagesReceived:
                call = self.calls.get(event.stream_id)
                assert call is not None, f"messages for a call we do not hold: {event!r:.200}"
                assert event.payloads and all(message_size(p) > 0 for p in event.payloads)
                size = sum(map(message_size, event.payloads))
                if self.consume_later:
                    call["held"] += size
                else:
                    self.conn.consumed(event.stream_id, size)
            elif kind is ev.StreamEnded:
                call = self.calls.get(event.stream_id)
                assert call is not None and not call["ended"], f"an end we did not expect: {event!r}"
                call["ended"] = True
                if self.answer == 2:
                    self.respond(event.stream_id)
            elif kind is ev.CallCancelled:
                assert self.calls.pop(event.stream_id, None) is not None, f"{event!r}"
                assert self.conn.stream_state(event.stream_id) is StreamState.CLOSED or (
                    event.reason is trpc.Status.RESOURCE_EXHAUSTED
                ), f"{event!r}: the stream is {self.conn.stream_state(event.stream_id)}"

    def act(self, index: int) -> None:
        """The script's action on the index-th call held: consume what it holds, or answer it."""
        if not self.calls:
            return
        stream_id = list(self.calls)[index % len(self.calls)]
        call = self.calls[stream_id]
        if call["held"]:
            self.conn.consumed(stream_id, call["held"])
            call["held"] = 0
        else:
            self.respond(stream_id)

    def respond(self, stream_id: int) -> None:
        if self.conn.stream_state(stream_id) is StreamState.CLOSED:
            return  # cancelled by a later frame of the same batch: its CallCancelled follows
        self.actions += 1
        if self.headers_first:
            self.conn.send_headers(stream_id, {"x": "y"})
        if self.answer == 1 and self.batched:
            self.conn.open_batch(stream_id).extend([b"\xf6", b"\x82\x01\x02", b"\x61a" * 30])
        elif self.answer == 1:
            self.conn.send_message(stream_id, b"\xf6")
        self.conn.send_trailers(stream_id, trpc.Status.OK)
        del self.calls[stream_id]
        self.answered.add(stream_id)


def check(data: bytes) -> None:
    script = Script(data)
    config, policy = script.byte(), script.byte()
    small = 1024 if config & 2 else None
    options = {"max_message_size": small, "stream_window": small, "connection_window": small}
    conn = Connection(
        "server",
        framer=PyFramer if config & 1 else CFramer,
        max_concurrent_streams=2 if config & 4 else 100,
        **{k: v for k, v in options.items() if v},
    )
    conn.initiate()
    app = App(conn, policy)
    sent = len(conn.data_to_send())
    received = 0
    failed = False
    eof = False

    def feed(call, *args, **kwargs) -> None:
        nonlocal failed
        try:
            events = call(*args, **kwargs)
        except trpc.RemoteProtocolError as error:
            failed = True
            app.on_events(error.events)
            return
        assert not failed or not events, f"events after the connection failed: {events!r:.300}"
        app.on_events(events)

    feed(conn.receive_data, client_preface(bool(config & 8)))
    assert not failed, "a valid client preface was refused"
    while not script.done and not eof:
        op = script.byte()
        kind, arg = op & 3, op >> 2
        was_failed = failed
        if kind == 0:
            size = script.byte()
            chunk = script.take(size if size < 240 else (size - 240) * 4096)
            received += len(chunk)
            if chunk:
                feed(conn.receive_data, chunk, max_frames=None if arg == 63 else arg)
                assert failed or not was_failed, "input after a protocol error was accepted"
        elif kind == 1:
            feed(conn.process_backlog, arg or None)
        elif kind == 2:
            if not failed:
                app.act(arg)
        else:
            eof = True
        sent += len(conn.data_to_send())
        assert sent <= 8 * received + 1024 * app.actions + 4096, f"{sent} bytes out for {received} in"
    if config & 16 or eof:
        feed(conn.receive_data, b"")
        sent += len(conn.data_to_send())
        if not failed:
            account(conn, app)
    if failed:
        try:
            conn.receive_data(b"\x00" * 10)
        except trpc.RemoteProtocolError:
            pass
        else:
            raise AssertionError("input after a protocol error was accepted")
        assert conn.process_backlog() == []


def account(conn: Connection, app: App) -> None:
    """After EOF: the connection's open streams are the application's calls, or calls whose
    trailers wait behind output short of credit."""
    live = conn._streams.live
    for stream_id in app.calls:
        assert stream_id in live, f"the application holds call {stream_id}, which the connection closed"
    for stream_id, stream in live.items():
        if stream_id not in app.calls:
            assert stream.state is StreamState.CLOSING and stream.pending, (
                f"stream {stream_id} ({stream.state}) is open, but no call holds it"
            )


def TestOneInput(data: bytes) -> None:
    check(data)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
