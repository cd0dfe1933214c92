"""Channels: a client's backends, connections, balancing and connectivity states.

- :mod:`._resolver`: targets (one address, several, ``dns:///name:port``, ``unix:/path``) and
  the resolvers that turn them into addresses, again and again.
- :mod:`._connection`: one client connection to one backend (connect, preface, drain, close).
- :mod:`._subchannel`: one backend kept connected with gRPC's connection backoff; its
  connectivity state.
- :mod:`._channel`: the subchannels together, the channel's state, and the balancers that pick
  a connection per call.

The call layer on top (retries, wait-for-ready, the per-method config) is :mod:`trpc._client`.
Public names are re-exported by :mod:`trpc`.
"""

from ._channel import LOAD_BALANCING_POLICIES, Channel
from ._resolver import DNS_MIN_INTERVAL, DNS_REFRESH, DnsResolver, StaticResolver, make_resolver
from ._subchannel import ConnectivityState, Subchannel

__all__ = [
    "Channel",
    "ConnectivityState",
    "DNS_MIN_INTERVAL",
    "DNS_REFRESH",
    "DnsResolver",
    "LOAD_BALANCING_POLICIES",
    "StaticResolver",
    "Subchannel",
    "make_resolver",
]
