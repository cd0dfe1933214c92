"""trpc: a gRPC-style RPC framework for Trio.

A service is a class; a client calls its methods over TCP as if they were local::

    class Greeter(trpc.Service):
        @trpc.unary
        async def greet(self, name: str) -> str:
            return f"Hello {name}"

    trio.run(trpc.serve, Greeter())                      # server

    async with trpc.open_client("127.0.0.1:50051") as client:
        print(await client.greet("Ada"))                 # client

Everything public is re-exported here from private modules; ``docs/PROTOCOL.md`` describes the
wire.  Deadlines and cancellation follow Trio's cancel scopes across the wire.
"""

from ._framed import FramedChannel
from ._client import Client, ClientStream, Method, ServiceMethods, open_client
from ._blocking import BlockingClient, connect
from .channel import ConnectivityState
from ._config import ClientConfig, ConnectionBackoff, MethodConfig, RetryPolicy, RetryThrottling
from ._context import CallContext, current_call
from ._errors import (
    ConfigError,
    FrameTooLargeError,
    LocalProtocolError,
    ProtocolError,
    ProtoMappingError,
    RemoteProtocolError,
    RpcError,
    TransportError,
    TruncatedFrameError,
    TrpcError,
    WorkerStartError,
    UsageError,
)
from ._framer import get_framer
from ._health import HealthStatus
from ._interceptors import CallDetails, ClientInterceptor, ServerInterceptor
from ._messages import field, message
from ._server import DEFAULT_HOST, DEFAULT_PORT, Server, serve, serve_unix
from ._reflection import (
    FieldDescription,
    MessageDescription,
    MethodDescription,
    ParamDescription,
    Reflection,
    ServiceDescription,
)
from ._service import Cardinality, Service, bidi_stream, client_stream, server_stream, service_name, unary
from ._status import Status
from ._version import __version__
from ._workers import serve_workers

__all__ = [
    "BlockingClient",
    "Cardinality",
    "CallContext",
    "CallDetails",
    "ClientInterceptor",
    "Client",
    "ClientConfig",
    "ClientStream",
    "ConnectivityState",
    "ConfigError",
    "ConnectionBackoff",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "FieldDescription",
    "FrameTooLargeError",
    "FramedChannel",
    "HealthStatus",
    "LocalProtocolError",
    "MessageDescription",
    "Method",
    "MethodConfig",
    "MethodDescription",
    "ParamDescription",
    "ProtocolError",
    "ProtoMappingError",
    "Reflection",
    "RemoteProtocolError",
    "RetryPolicy",
    "RetryThrottling",
    "RpcError",
    "Server",
    "ServerInterceptor",
    "Service",
    "ServiceDescription",
    "ServiceMethods",
    "Status",
    "TransportError",
    "TrpcError",
    "TruncatedFrameError",
    "WorkerStartError",
    "UsageError",
    "__version__",
    "bidi_stream",
    "client_stream",
    "connect",
    "current_call",
    "field",
    "get_framer",
    "message",
    "open_client",
    "serve",
    "serve_unix",
    "serve_workers",
    "server_stream",
    "service_name",
    "unary",
]

# Public names say they live here (tracebacks and reprs read ``trpc.RpcError``).

def _name_public_module() -> None:
    for name in __all__:
        obj = globals()[name]
        if "._" in getattr(obj, "__module__", ""):  # trpc._client, trpc.channel._subchannel...
            try:
                obj.__module__ = "trpc"
            except (AttributeError, TypeError):
                pass


_name_public_module()
del _name_public_module

from . import interceptors  # noqa: E402, F401  (the ready-made ones; imports the names above)
from . import testing  # noqa: E402, F401  (open_test_client: trpc.testing.open_test_client)
