"""trpc over Unix domain sockets: serving, the socket file's lifetime, the CLI, and addresses."""

from __future__ import annotations

import errno
import os
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
from functools import partial

import pytest
import trio
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trpc
from trpc import RpcError, Status
from trpc._address import Address, open_stream, parse_address
from trpc._keepalive import set_tcp_keepalive
from trpc._server import format_peer

from .helpers import listening_address
from .services import Svc

needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="this platform has no Unix domain sockets")

#: sun_path holds 104 bytes on macOS, 108 on Linux; pytest's tmp_path can be longer (macOS's
#: TMPDIR is), so a shorter directory is used when it is.
_MAX_SOCKET_PATH = 100


@pytest.fixture
def socket_path(tmp_path):
    """A path for a socket that does not exist yet, short enough to bind."""
    path = tmp_path / "trpc.sock"
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        yield str(path)
        return
    directory = tempfile.mkdtemp(prefix="trpc-", dir="/tmp")
    try:
        yield os.path.join(directory, "trpc.sock")
    finally:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


async def connect(path: str) -> trio.abc.Stream:
    return await open_stream(Address.unix(path), deadline=trio.current_time() + 10)


def leave_a_dead_socket(path: str) -> None:
    """What a killed server leaves: a bound socket file nobody listens on."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(path)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


async def wait_until_gone(path: str) -> None:
    for _ in range(1000):
        if not os.path.lexists(path):
            return
        await trio.sleep(0.01)
    raise AssertionError(f"{path} still exists")


# ----------------------------------------------------------------- serving


@needs_unix
async def test_calls_of_all_four_shapes_work_over_a_unix_socket(socket_path, nursery):
    server = trpc.Server(Svc())
    assert await nursery.start(server.serve_unix, socket_path) == socket_path
    assert stat.S_ISSOCK(os.lstat(socket_path).st_mode)

    async def numbers():
        for n in (1, 2, 3):
            yield n

    async with trpc.open_client(await connect(socket_path)) as client:
        assert await client.greet("Ada") == "Hello Ada"
        assert [n async for n in client.count(3)] == [0, 1, 2]
        assert await client.total(numbers()) == 6
        async with client.bidi_echo.open() as stream:
            for word in ("a", "b"):
                await stream.send(word)
                assert await stream.receive() == word
            await stream.done_sending()
            assert [x async for x in stream] == []
        # Both ends name the connection by the server's path.
        assert (await client.whoami())["peer"] == f"unix:{socket_path}"


@needs_unix
async def test_the_module_level_serve_unix_serves_its_services(socket_path, nursery):
    await nursery.start(partial(trpc.serve_unix, Svc(), path=socket_path, max_connections=5))
    stream = await connect(socket_path)
    assert format_peer(stream) == f"unix:{socket_path}"
    async with trpc.open_client(stream) as client:
        assert await client.add(2, 40) == 42


@needs_unix
async def test_a_relative_path_is_relative_to_the_working_directory(socket_path, nursery, monkeypatch):
    monkeypatch.chdir(os.path.dirname(socket_path))
    server = trpc.Server(Svc())
    assert await nursery.start(server.serve_unix, "rel.sock") == "rel.sock"
    stream = await open_stream(parse_address("unix:rel.sock"), deadline=trio.current_time() + 10)
    async with trpc.open_client(stream) as client:
        assert await client.greet("Rel") == "Hello Rel"
    await server.shutdown(1)
    await wait_until_gone(os.path.join(os.path.dirname(socket_path), "rel.sock"))


@needs_unix
async def test_mode_sets_the_socket_files_permissions(socket_path, nursery):
    await nursery.start(partial(trpc.Server(Svc()).serve_unix, socket_path, mode=0o600))
    assert stat.S_IMODE(os.lstat(socket_path).st_mode) == 0o600


@needs_unix
async def test_a_dead_servers_socket_is_replaced(socket_path, nursery):
    leave_a_dead_socket(socket_path)
    await nursery.start(trpc.Server(Svc()).serve_unix, socket_path)
    async with trpc.open_client(await connect(socket_path)) as client:
        assert await client.greet("again") == "Hello again"


@needs_unix
async def test_a_live_server_on_the_path_is_refused_and_keeps_serving(socket_path, nursery):
    await nursery.start(trpc.Server(Svc()).serve_unix, socket_path)
    with pytest.raises(OSError) as info:
        await trpc.Server(Svc()).serve_unix(socket_path)
    assert info.value.errno == errno.EADDRINUSE and "a server is listening" in str(info.value)
    async with trpc.open_client(await connect(socket_path)) as client:
        assert await client.greet("still") == "Hello still"


@needs_unix
async def test_a_file_that_is_not_a_socket_is_left_alone(socket_path, tmp_path):
    with open(socket_path, "w") as file:
        file.write("precious")
    with pytest.raises(OSError) as info:
        await trpc.Server(Svc()).serve_unix(socket_path)
    assert info.value.errno == errno.EEXIST and "not a socket" in str(info.value)
    with open(socket_path) as file:
        assert file.read() == "precious"
    # Nor a symbolic link, even to a dead socket.
    target = socket_path + ".dead"
    leave_a_dead_socket(target)
    os.unlink(socket_path)
    os.symlink(target, socket_path)
    with pytest.raises(OSError) as info:
        await trpc.Server(Svc()).serve_unix(socket_path)
    assert info.value.errno == errno.EEXIST
    assert os.path.islink(socket_path) and os.path.lexists(target)
    os.unlink(socket_path)
    os.unlink(target)


@needs_unix
async def test_the_socket_file_is_removed_when_serving_is_cancelled(socket_path):
    async with trio.open_nursery() as nursery:
        await nursery.start(trpc.Server(Svc()).serve_unix, socket_path)
        assert os.path.lexists(socket_path)
        nursery.cancel_scope.cancel()
    assert not os.path.lexists(socket_path)


@needs_unix
async def test_a_newer_servers_socket_is_not_removed_by_the_older_one(socket_path, nursery):
    async with trio.open_nursery() as old:
        await old.start(trpc.Server(Svc()).serve_unix, socket_path)
        os.unlink(socket_path)  # as an operator might, before starting the new server
        await nursery.start(trpc.Server(Svc()).serve_unix, socket_path)
        old.cancel_scope.cancel()
    async with trpc.open_client(await connect(socket_path)) as client:
        assert await client.greet("new") == "Hello new"


class Gate(trpc.Service):
    def __init__(self) -> None:
        self.entered = trio.Event()
        self.release = trio.Event()

    @trpc.unary
    async def wait(self) -> str:
        self.entered.set()
        await self.release.wait()
        return "done"


@needs_unix
async def test_graceful_shutdown_over_unix_finishes_running_calls_and_removes_the_file(socket_path, nursery):
    gate = Gate()
    server = trpc.Server(gate)
    served = trio.Event()

    async def serve(task_status):
        await server.serve_unix(socket_path, task_status=task_status)
        served.set()

    await nursery.start(serve)
    async with trpc.open_client(await connect(socket_path)) as client:
        async with trio.open_nursery() as calls:
            results = []

            async def call():
                results.append(await client.wait())

            calls.start_soon(call)
            await gate.entered.wait()
            calls.start_soon(server.shutdown, 30)
            # Listening stops at once: the file goes and nobody new gets in...
            await wait_until_gone(socket_path)
            with pytest.raises(OSError):
                await connect(socket_path)
            # ...while the call already running finishes.
            assert not served.is_set()
            gate.release.set()
        assert results == ["done"]
    with trio.fail_after(10):
        await served.wait()
    assert server.connections == 0


@needs_unix
async def test_max_connections_admits_unix_connections_as_tcp_ones(socket_path, nursery):
    server = trpc.Server(Svc(), max_connections=1)
    await nursery.start(server.serve_unix, socket_path)
    async with trpc.open_client(await connect(socket_path)) as client:
        assert await client.greet("first") == "Hello first"
        with pytest.raises(RpcError) as info:
            async with trpc.open_client(await connect(socket_path), connect_timeout=5):
                pass
        assert info.value.status is Status.UNAVAILABLE
        assert server.refused_connections == 1


@needs_unix
async def test_tcp_keepalive_is_not_set_on_unix_sockets(socket_path, nursery):
    server = trpc.Server(Svc())
    await nursery.start(server.serve_unix, socket_path)
    async with trpc.open_client(await connect(socket_path)) as client:
        await client.greet("x")
        (connection,) = server._connections
        accepted = connection.stream.socket
        assert accepted.family == socket.AF_UNIX
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


class RecordingSocket:
    def __init__(self, family):
        self.family = family
        self.options = []

    def setsockopt(self, level, option, value):
        self.options.append((level, option, value))


def test_set_tcp_keepalive_leaves_non_tcp_sockets_alone():
    tcp = RecordingSocket(socket.AF_INET)
    set_tcp_keepalive(tcp)
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in tcp.options
    if hasattr(socket, "AF_UNIX"):
        unix = RecordingSocket(socket.AF_UNIX)
        set_tcp_keepalive(unix)
        assert unix.options == []


@needs_unix
async def test_tls_works_over_a_unix_socket(socket_path, nursery):
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    await nursery.start(partial(trpc.Server(Svc()).serve_unix, socket_path, ssl_context=server_context))
    tls = trio.SSLStream(await connect(socket_path), client_context, server_hostname="localhost")
    async with trpc.open_client(tls) as client:
        assert await client.greet("secret") == "Hello secret"
    # A plain client does not get a trpc server.
    with pytest.raises(RpcError) as info:
        async with trpc.open_client(await connect(socket_path), connect_timeout=5):
            pass
    assert info.value.status is Status.UNAVAILABLE


# ----------------------------------------------------------------- the command line


async def run_cli(*args: str) -> subprocess.CompletedProcess:
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "trpc", *args], capture_stdout=True, capture_stderr=True, check=False
        )


async def read_line(process) -> str:
    line = b""
    with trio.fail_after(30):
        while not line.endswith(b"\n"):
            line += await process.stdout.receive_some(1)
    return line.decode()


@needs_unix
async def test_cli_serves_on_a_unix_socket_and_calls_it(socket_path, nursery):
    """``trpc serve --unix`` in one process, ``trpc call unix:...`` in another; with --port
    too, the same server answers on TCP; SIGTERM removes the socket file."""
    leave_a_dead_socket(socket_path)
    process = await nursery.start(
        lambda task_status: trio.run_process(
            [sys.executable, "-m", "trpc", "serve", "trpc.examples:Greeter", "--unix", socket_path, "--port", "0"],
            stdout=subprocess.PIPE, check=False, task_status=task_status,
        )
    )
    try:
        assert await listening_address(process) == f"unix:{socket_path}"
        tcp = (await read_line(process)).split()[2]
        for target in (f"unix:{socket_path}", f"unix://{socket_path}", tcp):
            result = await run_cli("call", target, "greet", "Ada")
            assert (result.returncode, result.stdout, result.stderr) == (0, b"Hello Ada\n", b""), target
        busy = await run_cli("serve", "trpc.examples:Greeter", "--unix", socket_path)
        assert busy.returncode == 1 and b"a server is listening" in busy.stderr
    finally:
        process.terminate()
    with trio.fail_after(30):
        await process.wait()
    assert not os.path.lexists(socket_path)
    gone = await run_cli("call", f"unix:{socket_path}", "greet", "Ada")
    assert gone.returncode == 64 + 14  # UNAVAILABLE
    assert gone.stderr.startswith(f"UNAVAILABLE: cannot connect to unix:{socket_path}".encode())


async def test_cli_refuses_a_bad_address_as_a_usage_error():
    result = await run_cli("call", "unix://relative", "greet")
    assert result.returncode == 2 and b"absolute path" in result.stderr


# ----------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "text, address, canonical",
    [
        ("127.0.0.1:50051", Address.tcp("127.0.0.1", 50051), "127.0.0.1:50051"),
        ("localhost:1", Address.tcp("localhost", 1), "localhost:1"),
        ("[::1]:50051", Address.tcp("::1", 50051), "[::1]:50051"),
        ("::1:50051", Address.tcp("::1", 50051), "[::1]:50051"),
        ("unix:/run/app.sock", Address.unix("/run/app.sock"), "unix:/run/app.sock"),
        ("unix:app.sock", Address.unix("app.sock"), "unix:app.sock"),
        ("unix:./a/b", Address.unix("./a/b"), "unix:./a/b"),
        ("unix:///run/app.sock", Address.unix("/run/app.sock"), "unix:/run/app.sock"),
        ("unix:////x", Address.unix("//x"), "unix:////x"),
    ],
)
def test_addresses_parse_and_print_canonically(text, address, canonical):
    assert parse_address(text) == address
    assert str(address) == canonical
    assert parse_address(canonical) == address


@pytest.mark.parametrize(
    "text",
    ["", "nonsense", "host:", ":50051", "host:0", "host:65536", "host:-1", "host:http", "host:５",
     "[::1]", "unix:", "unix://", "unix://relative/path", "unix:a\0b", "a b:1", "[::1:1", "x/y:1"],
)
def test_bad_addresses_raise_value_error(text):
    with pytest.raises(ValueError):
        parse_address(text)


def test_address_fields_must_fit_the_kind():
    for bad in (dict(kind="tcp", host="h"), dict(kind="tcp", host="h", port=1, path="/p"),
                dict(kind="unix"), dict(kind="unix", path="/p", port=1), dict(kind="udp", host="h", port=1)):
        with pytest.raises(ValueError):
            Address(**bad)


hosts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1).filter(
    lambda h: h != "unix" and not any(c in "[]/" or c.isspace() or not c.isprintable() for c in h)
)
addresses = st.one_of(
    st.builds(Address.tcp, hosts, st.integers(1, 65535)),
    st.builds(Address.unix, st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                                     min_size=1)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(addresses)
def test_every_address_reads_back_from_its_text(address):
    assert parse_address(str(address)) == address


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(), st.builds(lambda a, b: a + ":" + b, st.text(), st.text()),
                 st.text().map(lambda t: "unix:" + t)))
def test_any_text_parses_to_an_address_that_reads_back_or_raises_value_error(text):
    try:
        address = parse_address(text)
    except ValueError:
        return
    assert parse_address(str(address)) == address


@needs_unix
async def test_open_stream_gives_up_at_its_deadline(socket_path, nursery):
    await nursery.start(trpc.Server(Svc()).serve_unix, socket_path)
    with pytest.raises(trio.TooSlowError):
        await open_stream(Address.unix(socket_path), deadline=trio.current_time() - 1)


@needs_unix
async def test_open_stream_reports_a_missing_socket_as_oserror(socket_path):
    with pytest.raises(OSError) as info:
        await connect(socket_path)
    assert info.value.errno == errno.ENOENT
