"""Framed messages without RPC: any Trio stream as a channel of CBOR objects.

``FramedChannel(stream)`` is a ``trio.abc.Channel``: ``await ch.send(obj)`` writes one frame
holding ``obj`` encoded as CBOR; ``await ch.receive()`` returns the next object.  It uses the
same framers (C or pure Python) and the same 10-byte frame header as the RPC protocol, with no
preface and no streams: every frame is type DATA (0), flags 0, stream id 0, and carries one
object (``docs/PROTOCOL.md``, "Framed channels").

A clean close by the peer at a frame boundary ends ``receive()`` with ``trio.EndOfChannel`` (so
``async for`` stops); a close in the middle of a frame, an oversize frame or bytes that are not
CBOR raise a :class:`~trpc.RemoteProtocolError`; a broken stream raises
:class:`~trpc.TransportError`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

from ._codec import _dumps, _loads
from ._errors import LocalProtocolError, RemoteProtocolError, TransportError
from ._framer import get_framer
from ._framer_py import DEFAULT_MAX_FRAME_SIZE, HEADER
from ._transport import RECEIVE_SIZE

__all__ = ["FramedChannel"]

_pack_header = HEADER.pack


class FramedChannel(trio.abc.Channel[Any]):
    """A channel of CBOR objects over a Trio byte stream.

    Args:
        stream: any ``trio.abc.Stream`` (``SocketStream``, ``SSLStream``, in-memory).
        max_frame_size: the largest encoded object accepted, in bytes (also enforced on send,
            so both ends agree); at most 16 MiB - 1.
        framer: ``"c"`` or ``"python"``; default ``TRPC_FRAMER`` or C when available.

    One task may send while another receives; two concurrent senders (or receivers) are an
    error (``trio.BusyResourceError``), as for Trio's own streams.
    """

    def __init__(self, stream: trio.abc.Stream, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                 framer: str | None = None) -> None:
        self.stream = stream
        self.max_frame_size = max_frame_size
        self._framer = get_framer(framer)(max_frame_size)
        self._frames: deque[bytes] = deque()
        self._eof = False
        #: An error found after some good frames: raised once those have been received.
        self._error: RemoteProtocolError | None = None
        self._send_lock = trio.StrictFIFOLock()
        self._receiving = False

    async def send(self, value: Any) -> None:
        """Send one object.

        Raises:
            LocalProtocolError: it encodes to more than ``max_frame_size`` bytes.
            TransportError: the stream is broken or closed.
        """
        try:
            payload = _dumps(value)
        except Exception as exc:
            raise LocalProtocolError(f"cannot encode {type(value).__name__} as CBOR: {exc}") from None
        if len(payload) > self.max_frame_size:
            raise LocalProtocolError(f"object encodes to {len(payload)} bytes; the limit is {self.max_frame_size}")
        if self._send_lock.locked():
            raise trio.BusyResourceError("another task is sending on this channel")
        async with self._send_lock:
            try:
                await self.stream.send_all(_pack_header(len(payload), 0, 0, 0) + payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise TransportError(f"send failed: {exc or type(exc).__name__}") from exc

    async def receive(self) -> Any:
        """The next object; ``trio.EndOfChannel`` once the peer has closed cleanly."""
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this channel")
        self._receiving = True
        try:
            while not self._frames:
                if self._error is not None:
                    raise self._error
                if self._eof:
                    raise trio.EndOfChannel
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise TransportError(f"receive failed: {exc or type(exc).__name__}") from exc
                if not data:
                    self._eof = True
                    self._framer.close()  # TruncatedFrameError if a frame was cut off
                    continue
                try:
                    frames = self._framer.feed(data)
                except RemoteProtocolError as exc:
                    frames, self._error = exc.frames, exc
                for ftype, flags, stream_id, payload in frames:
                    if ftype or flags or stream_id:
                        self._error = RemoteProtocolError(
                            f"unexpected frame (type {ftype}, flags {flags}, stream {stream_id}) on a framed channel"
                        )
                        break
                    self._frames.append(payload)
            payload = self._frames.popleft()
        finally:
            self._receiving = False
        try:
            return _loads(payload)
        except Exception as exc:
            raise RemoteProtocolError(f"a frame does not hold valid CBOR: {exc}") from None

    async def aclose(self) -> None:
        """Close the underlying stream."""
        await self.stream.aclose()
