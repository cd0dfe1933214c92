"""Targets and resolvers: what the addresses of a channel's backends are, now and later.

Theory of operation
-------------------
``open_client`` takes a *target*: one address (``"host:port"``, ``"[v6]:port"``, ``(host,
port)``, ``"unix:/path"``), several (``"h1:p,h2:p"`` or a list of addresses), or a name to
resolve (``"dns:///name:port"``, gRPC's form; an authority between the second and third slash
is accepted and ignored).  :func:`make_resolver` turns it into a resolver whose ``resolve()``
returns the current list of addresses.

A static target resolves once.  A ``dns:`` target asks Trio's resolver
(``trio.socket.getaddrinfo``, so a test or an application can install its own with
``trio.socket.set_custom_hostname_resolver``) for every A and AAAA record: each distinct address
is one backend.  The channel resolves it again every ``DNS_REFRESH`` seconds, and sooner when a
backend fails (``request()``), but never twice within ``DNS_MIN_INTERVAL``.
"""

from __future__ import annotations

import abc
import socket
from typing import Any, Sequence

import trio

from .._address import Address, parse_address

__all__ = ["Resolver", "StaticResolver", "DnsResolver", "make_resolver", "DNS_REFRESH", "DNS_MIN_INTERVAL"]

#: A ``dns:`` target is resolved again this often even when nothing fails: 30 s, so that
#: backends added behind the name take calls within half a minute, at the cost of one query.
DNS_REFRESH = 30.0
#: A failing backend asks for a new resolution, but the name is never resolved twice within
#: this many seconds: 2 s, so a flapping backend cannot turn the channel into a query storm,
#: while a backend that moved is found again quickly.
DNS_MIN_INTERVAL = 2.0


class Resolver(abc.ABC):
    """Where a channel's backends are.  ``refresh`` is None for targets that never change."""

    refresh: float | None = None

    @abc.abstractmethod
    async def resolve(self) -> list[Address]:
        """The backends' addresses now; OSError when they cannot be found."""


class StaticResolver(Resolver):
    """A fixed list of addresses."""

    def __init__(self, addresses: Sequence[Address]) -> None:
        if not addresses:
            raise ValueError("a target needs at least one address")
        self.addresses = list(addresses)

    async def resolve(self) -> list[Address]:
        return list(self.addresses)

    def __str__(self) -> str:
        return ",".join(map(str, self.addresses))


class DnsResolver(Resolver):
    """Every A and AAAA record of ``host``, with ``port``, through Trio's resolver."""

    def __init__(self, host: str, port: int, refresh: float = DNS_REFRESH) -> None:
        self.host = host
        self.port = port
        self.refresh = refresh

    async def resolve(self) -> list[Address]:
        """The addresses, in the resolver's order, each once.  Raises OSError (``socket.gaierror``
        for a name that does not resolve)."""
        records = await trio.socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        addresses: list[Address] = []
        for family, _type, _proto, _name, sockaddr in records:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = Address.tcp(str(sockaddr[0]), self.port)
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise OSError(f"{self.host} has no A or AAAA record")
        return addresses

    def __str__(self) -> str:
        return f"dns:///{self.host}:{self.port}"


def _parse_dns(target: str) -> DnsResolver:
    rest = target[len("dns:"):]
    if rest.startswith("//"):
        authority, slash, rest = rest[2:].partition("/")
        if not slash:
            raise ValueError(f"expected dns:///NAME:PORT, got {target!r}")
    address = parse_address(rest)
    if address.kind != "tcp" or address.host is None or address.port is None:
        raise ValueError(f"expected dns:///NAME:PORT, got {target!r}")
    return DnsResolver(address.host, address.port)


def make_resolver(target: Any) -> Resolver:
    """The resolver for a target (see the module's docstring).  Raises ValueError for a target
    that is not one."""
    if isinstance(target, Resolver):
        return target
    if isinstance(target, tuple) and len(target) == 2 and isinstance(target[1], int):
        host, port = target
        return StaticResolver([parse_address(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")])
    if isinstance(target, (list, tuple)):
        addresses: list[Address] = []
        for item in target:
            resolved = make_resolver(item)
            if not isinstance(resolved, StaticResolver):
                raise ValueError(f"a list of addresses cannot hold {item!r}")
            addresses.extend(resolved.addresses)
        return StaticResolver(addresses)
    if isinstance(target, Address):
        return StaticResolver([target])
    if not isinstance(target, str):
        raise TypeError(f"expected a target (str, (host, port), a list of them, or a Trio stream), got {target!r}")
    target = target.strip()
    if target.startswith("dns:"):
        return _parse_dns(target)
    if target.startswith("unix:"):
        return StaticResolver([parse_address(target)])
    return StaticResolver([parse_address(part.strip()) for part in target.split(",")])
