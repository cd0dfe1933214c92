import os

import pytest

from trpc._framer import FRAMERS, c_framer_error


@pytest.fixture(params=["c", "python"])
def framer_name(request) -> str:
    """Each framer by name.  Without the compiled module the "c" case is skipped, unless
    TRPC_REQUIRE_C=1 (as in CI), where it fails."""
    name = request.param
    if name not in FRAMERS:
        reason = f"the C framer is unavailable: {c_framer_error}"
        if os.environ.get("TRPC_REQUIRE_C") == "1":
            pytest.fail(f"TRPC_REQUIRE_C=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return name


@pytest.fixture
def framer_cls(framer_name: str) -> type:
    return FRAMERS[framer_name]


@pytest.fixture(autouse=True)
def framer(framer_name, monkeypatch) -> str:
    """Every test runs once per framer: ``TRPC_FRAMER`` decides what servers, clients and
    protocol cores use when a test does not name one."""
    monkeypatch.setenv("TRPC_FRAMER", framer_name)
    return framer_name


# ----------------------------------------------------------------- servers and clients
import trio  # noqa: E402
import trio.testing  # noqa: E402

import trpc  # noqa: E402

from .services import Svc  # noqa: E402


@pytest.fixture
def service() -> Svc:
    return Svc()


@pytest.fixture
async def server(service, nursery):
    """A running server on a free loopback port; ``server.address`` is (host, port)."""
    server = trpc.Server(service)
    server.address = await nursery.start(server.serve_tcp, 0)
    return server


@pytest.fixture
async def client(server):
    """A client connected to ``server`` over real TCP."""
    async with trpc.open_client(server.address) as client:
        yield client


@pytest.fixture
async def memory_client(service, nursery):
    """A client and a server joined by an in-memory stream pair (no sockets: autojump_clock
    can jump safely, since nothing waits on the network)."""
    server = trpc.Server(service)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream, "memory")
    async with trpc.open_client(client_stream) as client:
        client.server = server
        yield client
