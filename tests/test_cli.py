"""The ``trpc`` command, run as a real subprocess against real servers on loopback."""

from __future__ import annotations

import json
import subprocess
import sys

import trio

import trpc
from trpc import _cli

from .helpers import listening_address


async def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "trpc", *args], capture_stdout=True, capture_stderr=True, check=False, stdin=stdin
        )


def target(server) -> str:
    host, port = server.address
    return f"{host}:{port}"


async def test_call_prints_the_result(server):
    result = await run_cli("call", target(server), "greet", "Ada")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"Hello Ada\n", b"")


async def test_arguments_are_json_when_they_parse(server):
    result = await run_cli("call", target(server), "add", "2", "40")
    assert result.stdout == b"42\n"
    result = await run_cli("call", target(server), "echo", '{"a": [1, true, null]}')
    assert result.stdout == b'{"a": [1, true, null]}\n'
    result = await run_cli("call", target(server), "echo", '"5"', "--json")
    assert result.stdout == b'"5"\n'


async def test_streamed_replies_one_per_line(server):
    result = await run_cli("call", target(server), "count", "4")
    assert result.stdout == b"0\n1\n2\n3\n"


async def test_client_streaming_from_stdin(server):
    result = await run_cli("call", target(server), "total", "--stdin", stdin=b"1\n2\n3\n")
    assert (result.returncode, result.stdout) == (0, b"6\n")


async def test_errors_print_status_and_exit_nonzero(server):
    result = await run_cli("call", target(server), "no_such", "x")
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().startswith("UNIMPLEMENTED: ")
    result = await run_cli("call", target(server), "fail", "rpc")
    assert result.returncode == 1 and result.stderr.decode().startswith("NOT_FOUND: no such thing")


async def test_timeout_option(server):
    result = await run_cli("call", target(server), "block", "--timeout", "0.2")
    assert result.returncode == 1
    assert b"DEADLINE_EXCEEDED" in result.stderr


async def test_connection_refused_says_which_address():
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = await run_cli("call", f"127.0.0.1:{port}", "greet", "Ada")
    assert result.returncode == 1
    error = result.stderr.decode()
    assert error.startswith("UNAVAILABLE: ") and f"127.0.0.1:{port}" in error and "refused" in error.lower()


async def test_bad_target_is_a_usage_error():
    result = await run_cli("call", "nonsense", "greet")
    assert result.returncode == 2 and b"HOST:PORT" in result.stderr


async def test_version_names_the_framer_and_the_codec(framer):
    from trpc import _cext

    result = await run_cli("--version")
    assert result.returncode == 0
    text = result.stdout.decode()
    assert text.startswith(f"trpc {trpc.__version__} (framer: {framer}")
    assert ("codec: C" if _cext.speedups_error is None else "codec: cbor2") in text


async def test_serve_then_call(nursery):
    """``trpc serve`` in one process, ``trpc call`` in another."""
    process = await nursery.start(
        lambda task_status: trio.run_process(
            [sys.executable, "-m", "trpc", "serve", "trpc.examples:Greeter", "--port", "0"],
            stdout=subprocess.PIPE, check=False, task_status=task_status,
        )
    )
    try:
        address = await listening_address(process)
        assert address.startswith("127.0.0.1:")
        result = await run_cli("call", address, "greet", "Ada")
        assert (result.returncode, result.stdout) == (0, b"Hello Ada\n")
    finally:
        process.terminate()


async def test_serve_serves_several_services_and_prints_their_paths(nursery):
    process = await nursery.start(
        lambda task_status: trio.run_process(
            [sys.executable, "-m", "trpc", "serve", "trpc.examples:Greeter", "tests.services:Svc", "--port", "0"],
            stdout=subprocess.PIPE, check=False, task_status=task_status,
        )
    )
    try:
        address = await listening_address(process)
        lines = b""
        with trio.fail_after(30):
            while lines.count(b"\n") < 4:
                lines += await process.stdout.receive_some()
        services = lines.decode().splitlines()
        assert services[0].startswith("service hello.Greeter: hello.Greeter/greet ")
        assert services[1].startswith("service tests.services.Svc: tests.services.Svc/greet tests.services.Svc/add ")
        assert services[2:] == ["service grpc.health.v1.Health: grpc.health.v1.Health/Check grpc.health.v1.Health/Watch",
                                "service trpc.reflection.v1.Reflection: trpc.reflection.v1.Reflection/Describe"]
        greeted = await run_cli("call", address, "hello.Greeter/greet", "Ada")
        added = await run_cli("call", address, "add", "1", "2")
        assert (greeted.stdout, added.stdout) == (b"Hello Ada\n", b"3\n")
    finally:
        process.terminate()


async def test_serve_refuses_two_services_with_one_name_in_one_line():
    result = await run_cli("serve", "tests.services:Svc", "tests.services:Svc", "--port", "0")
    assert result.returncode != 0
    assert result.stderr.decode().strip() == (
        "trpc: two services are named 'tests.services.Svc' (Svc and Svc): name one with class ...(trpc.Service, name='...')")


async def test_serve_rejects_what_is_not_a_service():
    result = await run_cli("serve", "trpc:Status", "--port", "0")
    assert result.returncode != 0 and b"trpc.Service" in result.stderr
    result = await run_cli("serve", "no_such_module:X", "--port", "0")
    assert result.returncode != 0 and b"cannot import" in result.stderr


async def test_example_demo_runs():
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-m", "trpc.examples.demo"], capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 0, result.stderr
    assert b"Hello Ada" in result.stdout and b"demo: OK" in result.stdout


async def test_tls_serve_and_call_with_client_certificates(tmp_path, nursery):
    """trpc serve with a certificate and a client CA; trpc call with the CA and its own
    certificate (mutual TLS), and without one (refused)."""
    import trustme

    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("client@example.com")
    paths = {}
    for name, blob in [("ca", ca.cert_pem), ("server", server_cert.private_key_and_cert_chain_pem),
                       ("client", client_cert.private_key_and_cert_chain_pem)]:
        paths[name] = tmp_path / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    process = await nursery.start(
        lambda task_status: trio.run_process(
            [sys.executable, "-m", "trpc", "serve", "trpc.examples:Greeter", "--port", "0",
             "--tls-cert", str(paths["server"]), "--tls-client-ca", str(paths["ca"])],
            stdout=subprocess.PIPE, check=False, task_status=task_status,
        )
    )
    try:
        address = await listening_address(process)
        ok = await run_cli("call", address, "greet", "Ada", "--tls-ca", str(paths["ca"]),
                           "--tls-cert", str(paths["client"]))
        assert (ok.returncode, ok.stdout) == (0, b"Hello Ada\n")
        refused = await run_cli("call", address, "greet", "Ada", "--tls-ca", str(paths["ca"]))
        assert refused.returncode == 1 and refused.stderr.startswith(b"UNAVAILABLE")
    finally:
        process.terminate()


# ------------------------------------------------------------------------ --config FILE


def write_config(tmp_path, document) -> str:
    path = tmp_path / "client.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


async def test_config_gives_the_method_its_timeout(server, tmp_path):
    config = write_config(tmp_path, {"methodConfig": [{"name": [{}], "timeout": "30s"},
                                                      {"name": [{"method": "block"}], "timeout": "0.2s"}]})
    result = await run_cli("call", target(server), "block", "--config", config)
    assert result.returncode == 1 and result.stderr == b"DEADLINE_EXCEEDED: no answer within 0.2 s\n"
    result = await run_cli("call", target(server), "greet", "Ada", "--config", config)
    assert (result.returncode, result.stdout) == (0, b"Hello Ada\n")


async def test_timeout_option_wins_over_the_configs(server, tmp_path):
    config = write_config(tmp_path, {"methodConfig": [{"name": [{"method": "block"}], "timeout": "0.2s"}]})
    result = await run_cli("call", target(server), "block", "--config", config, "--timeout", "0.4")
    assert result.returncode == 1 and result.stderr == b"DEADLINE_EXCEEDED: no answer within 0.4 s\n"


async def test_config_limits_the_size_of_the_methods_responses(server, tmp_path):
    config = write_config(tmp_path, {"methodConfig": [{"name": [{"method": "echo"}], "maxResponseMessageBytes": 2048}]})
    result = await run_cli("call", target(server), "echo", "x" * 1000, "--config", config)
    assert (result.returncode, result.stdout) == (0, b"x" * 1000 + b"\n")
    result = await run_cli("call", target(server), "echo", "x" * 3000, "--config", config)
    assert result.returncode == 1 and result.stderr.startswith(b"RESOURCE_EXHAUSTED: ")
    result = await run_cli("call", target(server), "greet", "x" * 3000, "--config", config)
    assert result.returncode == 0  # another method: the client's default limit


async def test_a_bad_config_is_a_one_line_usage_error(server, tmp_path):
    cases = [
        ({"methodConfig": [{"name": [{}], "timeout": "soon"}]}, "methodConfig[0].timeout: must be a duration"),
        ({"methodConfig": [{"name": [{}], "maxResponseMessageBytes": 100}]}, "cannot be the connection's limit"),
        ({"loadBalancingPolicy": "rnd"}, "loadBalancingPolicy: must be one of"),
    ]
    for document, message in cases:
        config = write_config(tmp_path, document)
        result = await run_cli("call", target(server), "greet", "Ada", "--config", config)
        assert (result.returncode, result.stdout) == (2, b"")
        error = result.stderr.decode()
        assert error.count("\n") == 1 and error.startswith(f"trpc: --config {config}: ") and message in error
    result = await run_cli("call", target(server), "greet", "--config", str(tmp_path / "missing.json"))
    assert result.returncode == 2 and result.stderr.decode().count("\n") == 1
    assert b"No such file" in result.stderr


def test_client_options_give_open_client_what_the_config_says_for_the_method():
    config = trpc.ClientConfig.from_dict({"methodConfig": [
        {"name": [{"method": "get"}], "maxResponseMessageBytes": 65536}, {"name": [{}], "timeout": 1}]})
    assert _cli._client_options(None, "get") == {}
    assert _cli._client_options(config, "get") == {"max_message_size": 65536, "config": config}
    assert _cli._client_options(config, "put") == {"config": config}
