"""trpc's pytest plugin: fixtures for testing a service (registered under ``pytest11``).

Only fixtures, all named ``trpc_*``, and nothing happens unless a test asks for one: no hook,
no option, no marker, so a project that does not use them sees no change.  They need
pytest-trio (``trio_mode = true``, or ``@pytest.mark.trio`` on the test).

A project defines ``trpc_service`` (the service to test) and asks for ``trpc_client``::

    @pytest.fixture
    def trpc_service():
        return Greeter()

    async def test_greet(trpc_client):
        assert await trpc_client.greet("Ada") == "Hello Ada"

``trpc_server_options`` and ``trpc_client_options`` (dicts, empty by default) may be
overridden, in a module or a class, to test with interceptors or limits.  The fixtures are
thin: a test that needs two clients, or a client per parameter, calls
:func:`trpc.testing.open_test_client` itself, as ``trpc_client`` does.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest

# trpc itself is imported only by a test that asks for a client: every pytest run of a project
# with trpc installed loads this module.


@pytest.fixture
def trpc_service() -> Any:
    """The service ``trpc_client`` serves: define this fixture in your tests."""
    pytest.fail(
        "trpc_client needs a trpc_service fixture: define one that returns your service "
        "(or a trpc.Server), e.g. `@pytest.fixture\\ndef trpc_service(): return Greeter()`",
        pytrace=False,
    )


@pytest.fixture
def trpc_server_options() -> dict[str, Any]:
    """Keyword arguments of ``trpc.Server`` for ``trpc_client`` (override to change)."""
    return {}


@pytest.fixture
def trpc_client_options() -> dict[str, Any]:
    """Keyword arguments of ``trpc.open_client`` for ``trpc_client`` (override to change)."""
    return {}


@pytest.fixture
async def trpc_client(
    trpc_service: Any, trpc_server_options: dict[str, Any], trpc_client_options: dict[str, Any]
) -> AsyncIterator[Any]:
    """A client of ``trpc_service``, served in memory (``trpc.testing.open_test_client``)."""
    from .testing import open_test_client

    async with open_test_client(trpc_service, client_options=trpc_client_options, **trpc_server_options) as client:
        yield client
