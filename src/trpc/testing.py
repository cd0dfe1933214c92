"""Testing a service: a server and a client joined by an in-memory stream pair.

Theory of operation
-------------------
:func:`open_test_client` builds a :class:`~trpc.Server` (or takes one), makes a pair of
connected in-memory streams (``trio.testing.memory_stream_pair``), serves one end with
``Server.serve_stream`` in a nursery it owns, and opens an ordinary client on the other end
(``open_client`` accepts a connected stream).  Everything between them is the real protocol:
prefaces, INFO, frames, flow control, deadlines, CANCEL, limits, interceptors.  Only the socket
is missing, so nothing waits on the network, and pytest-trio's ``autojump_clock`` can jump over
every sleep and deadline of a test.

The pytest plugin (``trpc._pytest_plugin``, registered under the ``pytest11`` entry point)
offers fixtures built on this; a project that does not ask for them sees no change.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping

import trio
import trio.testing

from ._client import Client, open_client
from ._server import Server

__all__ = ["open_test_client"]


@asynccontextmanager
async def open_test_client(
    *services: Any, client_options: Mapping[str, Any] | None = None, **server_options: Any
) -> AsyncIterator[Client]:
    """Serve ``services`` and yield a :class:`~trpc.Client` connected to them in memory.

    ``async with trpc.testing.open_test_client(Greeter()) as client:`` then
    ``await client.greet("Ada")``: the real wire and protocol, no sockets.

    Args:
        *services: the service instances, as for :class:`~trpc.Server`; or one ready-made
            ``Server`` (to reach ``set_health``, ``shutdown``... from the test).
        client_options: keyword arguments of :func:`~trpc.open_client` (``timeout``,
            ``metadata``, ``interceptors``, ``config``, limits...); not the target.
        **server_options: keyword arguments of :class:`~trpc.Server` (``interceptors``,
            ``max_message_size``, ``max_concurrent_calls``...).

    Leaving the block closes the client (its calls still running end with UNAVAILABLE) and
    stops the server.  Exceptions of the block come out as they are, never in an
    ExceptionGroup.
    """
    if len(services) == 1 and isinstance(services[0], Server):
        if server_options:
            raise TypeError("give server options to the Server you pass, not to open_test_client")
        server = services[0]
    else:
        server = Server(*services, **server_options)
    client_end, server_end = trio.testing.memory_stream_pair()
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, server_end, "memory")
        try:
            async with open_client(client_end, **(client_options or {})) as client:
                yield client
        except BaseException as exc:  # re-raised below, outside the nursery: no ExceptionGroup
            body_error = exc
        finally:
            nursery.cancel_scope.cancel()
    if body_error is not None:
        try:
            raise body_error
        finally:
            body_error = None
