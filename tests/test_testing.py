"""trpc.testing and trpc's pytest plugin: a service tested over the real wire, in memory."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import trio

import trpc
import trpc._pytest_plugin
from trpc import RpcError, Status
from trpc.examples import Greeter
from trpc.interceptors import ClientTokenAuth, ServerTokenAuth
from trpc.testing import open_test_client

from .helpers import run_python

README = Path(__file__).resolve().parent.parent / "README.md"


class Inspect(trpc.Service, name="test.Inspect"):
    @trpc.unary
    async def caller(self) -> str:
        return trpc.current_call().peer

    @trpc.unary
    async def remaining(self) -> float:
        return trpc.current_call().time_remaining()


async def test_the_four_shapes_work_over_the_in_memory_pair():
    async with open_test_client(Greeter(), Inspect()) as client:
        assert await client.greet("Ada") == "Hello Ada"
        assert [n async for n in client.count(3)] == [0, 1, 2]

        async def numbers():
            for n in (1, 2, 3):
                yield n

        assert await client.total(numbers()) == 6
        async with client.echo.open() as stream:
            await stream.send("hi")
            assert await stream.receive() == "hi"
            await stream.done_sending()
        assert await client.caller() == "memory"  # no socket under it


async def test_deadlines_and_sleeps_jump_under_autojump_clock(autojump_clock):
    real_start, start = time.monotonic(), trio.current_time()
    async with open_test_client(Greeter(), Inspect(), client_options={"timeout": 5}) as client:
        with pytest.raises(RpcError) as caught:
            await client.sleep(60)
        assert caught.value.status is Status.DEADLINE_EXCEEDED
        assert 5 <= trio.current_time() - start < 6
        assert await client.sleep.with_options(timeout=None)(30) == pytest.approx(30)
        # The deadline travels on the wire: the handler sees the time the caller had left.
        assert 0 < await client.remaining.with_options(timeout=100)() <= 100
    assert time.monotonic() - real_start < 5  # 35 s of virtual time took a moment


async def test_server_interceptors_and_client_options_apply():
    auth = {"interceptors": [ServerTokenAuth(["sesame"])]}
    async with open_test_client(Greeter(), **auth) as client:
        with pytest.raises(RpcError) as caught:
            await client.greet("Ada")
        assert caught.value.status is Status.UNAUTHENTICATED
    async with open_test_client(Greeter(), client_options={"interceptors": [ClientTokenAuth("sesame")]}, **auth) as client:
        assert await client.greet("Ada") == "Hello Ada"


async def test_server_limits_apply():
    async with open_test_client(Greeter(), max_message_size=1024) as client:
        assert await client.greet("Ada") == "Hello Ada"
        with pytest.raises(RpcError) as caught:
            await client.greet("A" * 2000)
        assert caught.value.status is Status.RESOURCE_EXHAUSTED


async def test_a_ready_made_server_is_served_as_it_is():
    server = trpc.Server(Greeter())
    async with open_test_client(server) as client:
        server.set_health("hello.Greeter", "NOT_SERVING")
        assert await client.method("grpc.health.v1.Health/Check")("hello.Greeter") == "NOT_SERVING"
    with pytest.raises(TypeError):
        async with open_test_client(server, max_message_size=10):
            pass


async def test_an_error_in_the_block_comes_out_as_it_is_not_in_an_exception_group():
    with pytest.raises(KeyError):
        async with open_test_client(Greeter()) as client:
            await client.greet("Ada")
            raise KeyError("mine")


async def test_leaving_the_block_ends_the_calls_still_running():
    async with trio.open_nursery() as nursery:
        outcome = []

        async def call(client) -> None:
            try:
                await client.sleep(1000)
            except RpcError as exc:
                outcome.append(exc.status)

        async with open_test_client(Greeter()) as client:
            nursery.start_soon(call, client)
            await trio.sleep(0.01)
    assert outcome == [Status.UNAVAILABLE]


# ----------------------------------------------------------------- the pytest plugin
def _readme_snippets() -> list[str]:
    """The Python blocks of README's "Testing your service" section, in order."""
    text = README.read_text()
    section = text.split("## Testing your service\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readmes_testing_snippets_are_short_and_complete():
    snippets = _readme_snippets()
    assert len(snippets) == 2
    assert all(len(snippet.splitlines()) < 15 for snippet in snippets)


def test_the_plugin_adds_only_fixtures_named_trpc():
    public = {name for name in vars(trpc._pytest_plugin) if not name.startswith("_")}
    fixtures = {name for name in public if name.startswith("trpc_")}
    assert fixtures == {"trpc_service", "trpc_client", "trpc_server_options", "trpc_client_options"}
    assert not {name for name in public if name.startswith("pytest_")}  # no hooks


def test_readmes_snippets_and_the_plugins_fixtures_work_in_a_project_of_their_own(tmp_path):
    # A tiny project, run by pytest in a process of its own, where trpc is only installed: the
    # plugin comes from the pytest11 entry point, as it does for a user.
    first, second = _readme_snippets()
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    (tmp_path / "test_readme_first.py").write_text(first)
    (tmp_path / "test_readme_second.py").write_text(second)
    (tmp_path / "test_options.py").write_text(
        "import pytest, trpc\n"
        "from trpc.examples import Greeter\n"
        "from trpc.interceptors import ServerTokenAuth\n\n"
        "@pytest.fixture\ndef trpc_service():\n    return Greeter()\n\n"
        "@pytest.fixture\ndef trpc_server_options():\n    return {'interceptors': [ServerTokenAuth(['t'])]}\n\n"
        "async def test_server_options_reach_the_server(trpc_client):\n"
        "    with pytest.raises(trpc.RpcError) as caught:\n"
        "        await trpc_client.greet('Ada')\n"
        "    assert caught.value.status is trpc.Status.UNAUTHENTICATED\n"
    )
    (tmp_path / "test_unused.py").write_text("def test_a_project_without_trpc_fixtures():\n    assert True\n")
    (tmp_path / "test_missing.py").write_text("async def test_without_a_service(trpc_client):\n    pass\n")
    result = run_python(["-m", "pytest", "-rA", "-p", "no:cacheprovider", str(tmp_path)], timeout=120)
    summary = {test.split("::")[-1]: outcome for outcome, test in re.findall(r"^(PASSED|FAILED|ERROR) (\S+)", result.stdout, flags=re.M)}
    assert summary == {
        "test_greeter": "PASSED",
        "test_greet": "PASSED",
        "test_server_options_reach_the_server": "PASSED",
        "test_a_project_without_trpc_fixtures": "PASSED",
        "test_without_a_service": "ERROR",
    }, result.stdout + result.stderr
    assert "needs a trpc_service fixture" in result.stdout
