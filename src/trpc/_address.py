"""Addresses: where a trpc server is, as text, and how to open a byte stream to it.

Theory of operation
-------------------
A server is reached over TCP (``host:port``) or over a Unix domain socket (``unix:PATH``).
:func:`parse_address` turns the text a person types into an :class:`Address`, and ``str()`` of
an Address gives that text back in one canonical form, so an address printed in a log can be
pasted into ``trpc call``.  :func:`open_stream` opens the byte stream; everything above it
(TLS, the trpc preface, calls) is the same whichever kind of socket is under it.

The text forms:

- ``host:port``: TCP.  An IPv6 address is written in brackets, ``[::1]:50051`` (as it is
  printed); ``::1:50051`` is also read, the last colon introducing the port, since a port is
  always given.  The port is 1 to 65535.
- ``quic://host:port``: QUIC over UDP (trpc.quic, docs/PROTOCOL.md section 16), opened by
  trpc.quic rather than :func:`open_stream`, since it is no byte stream.
- ``unix:PATH``: a Unix socket at PATH, absolute (``unix:/run/app.sock``) or relative to the
  working directory (``unix:app.sock``).  ``unix:///run/app.sock`` is read too: it is gRPC's
  URI form, where what follows ``unix://`` must be an absolute path.  Text starting with
  ``unix:`` is always a Unix address, so a TCP host named ``unix`` needs another spelling
  (its IP address): ``str(Address.tcp("unix", 80))`` is the one Address whose text reads back
  as something else.

Only the *opening* differs between the kinds: TCP gets the kernel's keepalive
(:func:`trpc._keepalive.set_tcp_keepalive`), which means nothing on a Unix socket, where a
peer that vanishes closes its end with its process.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from ._keepalive import set_tcp_keepalive

__all__ = ["Address", "parse_address", "open_stream"]

_UNIX = "unix:"
#: The prefix of a QUIC address (trpc.quic): ``quic://host:port``.
_QUIC = "quic://"


@dataclass(frozen=True)
class Address:
    """Where a server is: ``kind`` is ``"tcp"`` (with ``host`` and ``port``) or ``"unix"``
    (with ``path``).  Build one with :meth:`tcp`, :meth:`unix` or :func:`parse_address`."""

    kind: str
    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind in ("tcp", "quic"):
            if not self.host or self.port is None or self.path is not None:
                raise ValueError("a TCP address has a host and a port, and no path")
            if any(c in "[]/" or c.isspace() or not c.isprintable() for c in self.host):
                raise ValueError(f"not a host name or IP address: {self.host!r}")
            if not 0 < self.port < 65536:
                raise ValueError(f"port out of range: {self.port}")
        elif self.kind == "unix":
            if not self.path or self.host is not None or self.port is not None:
                raise ValueError("a Unix address has a path, and no host or port")
            if "\0" in self.path:
                raise ValueError("a Unix socket path cannot hold a NUL character")
        else:
            raise ValueError(f"address kind must be 'tcp', 'quic' or 'unix', got {self.kind!r}")

    @classmethod
    def tcp(cls, host: str, port: int) -> "Address":
        return cls("tcp", host=host, port=port)

    @classmethod
    def unix(cls, path: str) -> "Address":
        return cls("unix", path=path)

    def __str__(self) -> str:
        if self.kind == "unix":
            assert self.path is not None
            # "unix://x" would read as the URI form, whose path must start with "/".
            return f"unix://{self.path}" if self.path.startswith("//") else f"{_UNIX}{self.path}"
        assert self.host is not None
        if self.kind == "quic":
            return f"{_QUIC}[{self.host}]:{self.port}" if ":" in self.host else f"{_QUIC}{self.host}:{self.port}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Read ``host:port``, ``[v6]:port``, ``unix:PATH`` or ``unix:///abs/path`` (see the module).

    Raises:
        ValueError: ``text`` is none of those, saying what was expected.
    """
    if text.startswith(_UNIX):
        path = text[len(_UNIX):]
        if path.startswith("//"):
            path = path[2:]
            if not path.startswith("/"):
                raise ValueError(f"unix:// must be followed by an absolute path (unix:///tmp/s.sock), got {text!r}")
        if not path:
            raise ValueError(f"expected unix:PATH, got {text!r}")
        return Address.unix(path)
    if text.startswith(_QUIC):
        tcp = parse_address(text[len(_QUIC):])
        if tcp.kind != "tcp":
            raise ValueError(f"expected quic://HOST:PORT, got {text!r}")
        return Address("quic", host=tcp.host, port=tcp.port)
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"expected HOST:PORT or unix:PATH, got {text!r}")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port out of range in {text!r}")
    try:
        return Address.tcp(host, number)
    except ValueError:
        raise ValueError(f"expected HOST:PORT or unix:PATH, got {text!r}") from None


async def open_stream(address: Address, *, deadline: float) -> trio.abc.Stream:
    """Connect to ``address``: a TCP stream with keepalive on, or a Unix socket stream.

    ``deadline`` (Trio time; ``math.inf`` for none) bounds the connect.

    Raises:
        OSError: the connect failed (refused, no such file, host unknown...).
        trio.TooSlowError: ``deadline`` passed first.
        RuntimeError: a Unix address on a platform without Unix sockets.
    """
    with trio.fail_at(deadline):
        if address.kind == "unix":
            return await trio.open_unix_socket(address.path)  # type: ignore[arg-type]
        stream = await trio.open_tcp_stream(address.host, address.port)  # type: ignore[arg-type]
    try:
        set_tcp_keepalive(stream.socket)
    except OSError:  # the connection is already gone: its first read will say so
        pass
    return stream
