"""HPACK on the gRPC wire's call path: header blocks encoded here, and a decoder that remembers
request blocks.

Theory of operation
-------------------
h2 encodes and decodes header blocks with ``hpack``, at a cost per header of several Python
calls, and a call has three blocks (request, response headers, trailers) that are nearly the
same on every call.  Both directions keep HPACK's one piece of shared state, the dynamic
table, exactly as h2 alone would:

- **out** (:func:`encode_block`): every field is a literal *without indexing* (RFC 7541
  section 6.2.2), its name an index of the static table when it is there, or the static
  entry ``:status: 200`` whole; no Huffman.  Such a block never adds to the peer's dynamic
  table, so blocks from here and blocks from h2's own encoder (which indexes) may follow each
  other in any order: the peer's table holds h2's entries only, as h2's encoder believes.  A
  block is a pure function of its fields, so the fixed ones (``:status 200`` with a content
  type, ``grpc-status: 0``) are encoded once and kept.  A dynamic table size update h2's
  encoder owes the peer goes first in the next block, whoever encodes it
  (:func:`pending_size_updates`).
- **in** (:class:`RequestDecoder`): a block made only of indexed fields (each byte 0x81-0xFE:
  one index below 127) reads the tables and changes nothing, so the same bytes decode to the
  same fields until the dynamic table changes; and it changes only in a block with a literal
  or a size update, which this decoder hands to ``hpack`` and after which it forgets what it
  remembered.  grpcio sends exactly such blocks once its first request has filled the table.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from hpack import Decoder, Encoder, HeaderTuple

__all__ = ["RequestDecoder", "encode_block", "pending_size_updates"]

#: Static-table indexes (RFC 7541 appendix A) of the names the server sends.
_STATIC_NAMES = {b":status": 8, b"content-type": 31}
#: The static entry ``:status: 200``, indexed whole.
_STATUS_200 = b"\x88"
#: Blocks remembered per decoder at most: a client sending ever new all-indexed blocks costs
#: a decode each, not memory.  A gRPC client has a few kinds of request (methods, metadata).
_MAX_REMEMBERED = 64


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 section 5.1) with ``first``'s high bits above its prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_block(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A header block of literals without indexing (see the module's docstring): it leaves the
    peer's dynamic table as it was.  Names must be lowercase bytes, as HTTP/2 requires."""
    parts = []
    for name, value in headers:
        if name == b":status" and value == b"200":
            parts.append(_STATUS_200)
            continue
        index = _STATIC_NAMES.get(name)
        if index is None:
            parts.append(b"\x00" + _integer(len(name), 7, 0) + name)
        else:
            parts.append(_integer(index, 4, 0))
        parts.append(_integer(len(value), 7, 0) + value)
    return b"".join(parts)


def pending_size_updates(encoder: Encoder) -> bytes:
    """The dynamic table size updates ``encoder`` (h2's) owes the peer, taken from it: they
    must open the next header block sent (RFC 7541 section 4.2), as ``hpack`` would put them."""
    table = encoder.header_table
    if not table.resized:
        return b""
    updates = b"".join(_integer(size, 5, 0x20) for size in encoder.table_size_changes)
    encoder.table_size_changes = []
    table.resized = False
    return updates


class RequestDecoder(Decoder):
    """``hpack.Decoder`` that answers a block of indexed fields it has decoded before from
    memory (see the module's docstring); any other block goes to ``hpack``."""

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        self._remembered: dict[bytes, Sequence[HeaderTuple]] = {}
        self._limit = max_header_list_size

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        remembered = self._remembered
        if self._limit != self.max_header_list_size:  # remembered under another limit
            remembered.clear()
            self._limit = self.max_header_list_size
        if raw and data:
            headers = remembered.get(data)
            if headers is not None:
                return list(headers)
        decoded = list(super().decode(data, raw))
        if not data or not 0x80 < min(data) or not max(data) < 0xFF:
            remembered.clear()  # a literal or a size update: the dynamic table may have changed
        elif raw:
            if len(remembered) >= _MAX_REMEMBERED:
                remembered.clear()
            remembered[bytes(data)] = tuple(decoded)
        return decoded
