"""The ``trpc`` command, run as a real subprocess against real servers on loopback."""

from __future__ import annotations

import io
import re
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
from functools import partial

import pytest
import trio
import trio.testing

import trpc
from trpc import _cli
from trpc.examples import Greeter

from .helpers import listening_address
from .services import Svc


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
    assert (result.returncode, result.stdout, result.stderr) == (64 + 12, b"", b'UNIMPLEMENTED: unknown method "no_such"\n')
    result = await run_cli("call", target(server), "fail", "rpc")
    assert (result.returncode, result.stderr) == (64 + 5, b'NOT_FOUND: no such thing\ndetails: {"id": 7}\n')


async def test_timeout_option(server):
    result = await run_cli("call", target(server), "block", "--timeout", "0.2")
    assert (result.returncode, result.stderr) == (64 + 4, b"DEADLINE_EXCEEDED: no answer within 0.2 s\n")


async def test_connection_refused_says_which_address():
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = await run_cli("call", f"127.0.0.1:{port}", "greet", "Ada")
    assert result.returncode == 64 + 14
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
            while lines.count(b"\n") < 6:
                lines += await process.stdout.receive_some()
        services = lines.decode().splitlines()
        assert services[0].startswith("service hello.Greeter: hello.Greeter/greet ")
        assert services[1].startswith("service tests.services.Svc: tests.services.Svc/greet tests.services.Svc/add ")
        assert services[2:] == [
            "service grpc.health.v1.Health: grpc.health.v1.Health/Check grpc.health.v1.Health/Watch",
            "service trpc.reflection.v1.Reflection: trpc.reflection.v1.Reflection/Describe",
            "service grpc.reflection.v1.ServerReflection: grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "service grpc.reflection.v1alpha.ServerReflection:"
            " grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        greeted = await run_cli("call", address, "hello.Greeter/greet", "Ada")
        added = await run_cli("call", address, "add", "1", "2")
        assert (greeted.stdout, added.stdout) == (b"Hello Ada\n", b"3\n")
    finally:
        process.terminate()


async def test_serve_refuses_two_services_with_one_name_in_one_line():
    result = await run_cli("serve", "tests.services:Svc", "tests.services:Svc", "--port", "0")
    assert result.returncode == 2
    assert result.stderr.decode() == (
        "trpc: two services are named 'tests.services.Svc' (Svc and Svc): name one with class ...(trpc.Service, name='...')\n")


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
        assert refused.returncode == 64 + 14 and refused.stderr.startswith(b"UNAVAILABLE")
        assert refused.stderr.endswith(b"; try --tls-cert PEM --tls-key PEM\n") and refused.stderr.count(b"\n") == 1
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
    assert result.returncode == 64 + 4 and result.stderr == b"DEADLINE_EXCEEDED: no answer within 0.2 s\n"
    result = await run_cli("call", target(server), "greet", "Ada", "--config", config)
    assert (result.returncode, result.stdout) == (0, b"Hello Ada\n")


async def test_timeout_option_wins_over_the_configs(server, tmp_path):
    config = write_config(tmp_path, {"methodConfig": [{"name": [{"method": "block"}], "timeout": "0.2s"}]})
    result = await run_cli("call", target(server), "block", "--config", config, "--timeout", "0.4")
    assert result.returncode == 64 + 4 and result.stderr == b"DEADLINE_EXCEEDED: no answer within 0.4 s\n"


async def test_config_limits_the_size_of_the_methods_responses(server, tmp_path):
    config = write_config(tmp_path, {"methodConfig": [{"name": [{"method": "echo"}], "maxResponseMessageBytes": 2048}]})
    result = await run_cli("call", target(server), "echo", "x" * 1000, "--config", config)
    assert (result.returncode, result.stdout) == (0, b"x" * 1000 + b"\n")
    result = await run_cli("call", target(server), "echo", "x" * 3000, "--config", config)
    assert result.returncode == 64 + 8 and result.stderr.startswith(b"RESOURCE_EXHAUSTED: ")
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


# ------------------------------------------------------------------------ in process
# The commands below run in this process (``_cli.run``) against a server over an in-memory
# stream: the process boundary is not their point, and a subprocess costs a third of a second.
# Messages come back as Entry instances here (this process registered kv.Entry), and as
# CBOR tags in a ``trpc`` subprocess, which knows no message class: both print alike.

from trpc.examples import Entry, Store  # noqa: E402


class Failing(trpc.Service, name="t.Failing"):
    @trpc.unary
    async def fail_with(self, code: int):
        raise trpc.RpcError(trpc.Status(code), f"failed with {code}")

    @trpc.unary
    async def headed(self):
        call = trpc.current_call()
        call.send_headers({"h": "1"})
        call.set_trailers({"t": b"\x00"})
        return "done"


@pytest.fixture
def cli(monkeypatch, nursery, capsys):
    """``await cli(server, *argv, stdin=...)`` runs ``trpc *argv`` in process against
    ``server`` (over an in-memory stream; the TARGET given is parsed, not used) and returns
    ``(exit status, stdout, stderr)``."""
    serving = {}

    def open_memory_client(target, **options):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(serving["server"].serve_stream, server_stream, "memory")
        return trpc.open_client(client_stream, **options)

    monkeypatch.setattr(_cli, "open_client", open_memory_client)

    async def run(server, *argv, stdin: str | None = None):
        serving["server"] = server
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        argv = [argv[0], "127.0.0.1:1", *argv[1:]]
        try:
            code = await _cli.run(_cli._parser().parse_args(argv))
        except SystemExit as exc:  # argparse
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def kv():
    return trpc.Server(Store(), Svc(), Failing())


ENTRY_TEXT = """message kv.Entry
  One key and its value.
  1 key: str
  2 value: int = 0
  3 blob: bytes = b''
"""


async def test_list_prints_the_services_then_one_services_paths(cli, kv):
    assert await cli(kv, "list") == (0, "kv.Store\ntests.services.Svc\nt.Failing\ngrpc.health.v1.Health\n"
                                        "trpc.reflection.v1.Reflection\ngrpc.reflection.v1.ServerReflection\n"
                                        "grpc.reflection.v1alpha.ServerReflection\n", "")
    assert await cli(kv, "list", "kv.Store", "--json") == (
        0, '["kv.Store/get", "kv.Store/put", "kv.Store/scan", "kv.Store/put_many"]\n', "")
    assert await cli(kv, "list", "kv.Nope") == (
        1, "", "trpc: no service 'kv.Nope' (services: kv.Store, tests.services.Svc, t.Failing, grpc.health.v1.Health,"
               " trpc.reflection.v1.Reflection, grpc.reflection.v1.ServerReflection,"
               " grpc.reflection.v1alpha.ServerReflection)\n")


async def test_describe_a_message_a_method_and_a_service_readably(cli, kv):
    assert await cli(kv, "describe", "kv.Entry") == (0, ENTRY_TEXT, "")
    assert await cli(kv, "describe", "get") == (0, "method kv.Store/get\n  get(key: str) -> Entry\n"
                                                   "    unary, idempotent; path kv.Store/get\n"
                                                   "    The entry under key (NOT_FOUND if there is none).\n", "")
    code, out, err = await cli(kv, "describe", "kv.Store")
    assert code == 0 and out.startswith("service kv.Store\n  A key-value store of Entry messages.\n\n"
                                        "  get(key: str) -> Entry\n")
    assert "  scan(prefix: str = '') -> AsyncIterator[Entry]\n    server_stream; path kv.Store/scan\n" in out
    code, out, err = await cli(kv, "describe", "tests.services.Svc/add")
    assert out.splitlines()[1] == "  add(a, b=0)"


async def test_describe_json_is_the_reflection_with_a_kind(cli, kv):
    code, out, err = await cli(kv, "describe", "kv.Entry", "--json")
    assert code == 0 and json.loads(out) == {
        "kind": "message", "name": "kv.Entry", "doc": "One key and its value.", "fields": [
            {"number": 1, "name": "key", "annotation": "str", "default": None, "has_default": False},
            {"number": 2, "name": "value", "annotation": "int", "default": "0", "has_default": True},
            {"number": 3, "name": "blob", "annotation": "bytes", "default": "b''", "has_default": True}]}
    code, out, err = await cli(kv, "describe", "kv.Store/scan", "--format", "json")
    assert json.loads(out)["kind"] == "method" and json.loads(out)["shape"] == "server_stream"


async def test_describe_refuses_unknown_and_ambiguous_symbols_in_one_line(cli, kv):
    assert await cli(kv, "describe", "nope") == (1, "", "trpc: the server has no service, method or message 'nope'\n")
    assert await cli(kv, "describe", "kv.Store/nope") == (1, "", "trpc: no method 'kv.Store/nope'\n")
    server = trpc.Server(Svc(), Greeter())
    code, out, err = await cli(server, "describe", "greet")
    assert (code, out) == (1, "") and err == (
        "trpc: method name 'greet' is ambiguous: tests.services.Svc/greet, hello.Greeter/greet\n")


async def test_list_and_describe_without_reflection_exit_with_unimplemented(cli):
    code, out, err = await cli(trpc.Server(Svc(), reflection=False), "list")
    assert (code, out) == (64 + 12, "")
    assert err == ('UNIMPLEMENTED: unknown service "trpc.reflection.v1.Reflection" (the server serves no reflection:'
                   ' Server(reflection=False)?)\n')


async def test_keyword_arguments_are_name_equals_value(cli, kv):
    assert await cli(kv, "call", "add", "a=2", "b=40") == (0, "42\n", "")
    assert await cli(kv, "call", "add", "2", "b=40") == (0, "42\n", "")
    assert await cli(kv, "call", "greet", "name=Ada") == (0, "Hello Ada\n", "")
    assert await cli(kv, "call", "echo", '"x=1"') == (0, "x=1\n", "")  # text with "=": quote it as JSON
    assert await cli(kv, "call", "add", "a=1", "a=2") == (2, "", "trpc: keyword argument 'a' is given twice\n")


async def test_data_is_an_object_of_keywords_an_array_of_positionals_or_one_value(cli, kv, tmp_path):
    assert await cli(kv, "call", "add", "-d", '{"a": 2, "b": 40}') == (0, "42\n", "")
    assert await cli(kv, "call", "add", "-d", "[2, 40]") == (0, "42\n", "")
    assert await cli(kv, "call", "echo", "-d", '"Ada"') == (0, "Ada\n", "")
    (tmp_path / "args.json").write_text('{"a": 1, "b": 2}')
    assert await cli(kv, "call", "add", "-d", f"@{tmp_path / 'args.json'}") == (0, "3\n", "")
    assert await cli(kv, "call", "add", "-d", "@-", stdin="[5, 6]") == (0, "11\n", "")
    missing = tmp_path / "missing.json"
    assert await cli(kv, "call", "add", "-d", f"@{missing}") == (2, "", f"trpc: -d @{missing}: No such file or directory\n")
    code, out, err = await cli(kv, "call", "add", "-d", "{a: 1}")
    assert (code, out) == (2, "") and err.startswith("trpc: -d is not JSON: ") and err.count("\n") == 1
    assert await cli(kv, "call", "add", "1", "-d", "[2]") == (2, "", "trpc: give the arguments as ARGs or as -d, not both\n")


async def test_json_args_refuses_what_is_not_json(cli, kv):
    assert await cli(kv, "call", "greet", "Ada", "--json-args") == (
        2, "", "trpc: ARG 'Ada' is not JSON (--json-args; write text as \"...\"): Expecting value: line 1 column 1 (char 0)\n")
    assert (await cli(kv, "call", "greet", "name=Ada", "--json-args"))[0] == 2
    assert await cli(kv, "call", "greet", '"Ada"', "--json-args") == (0, "Hello Ada\n", "")
    code, out, err = await cli(kv, "call", "total", "--stdin", "--json-args", stdin="1\ntwo\n")
    assert (code, out) == (2, "") and err.startswith("trpc: line 2 of standard input is not JSON")


async def test_a_message_goes_out_and_comes_back_by_field_name(cli, kv):
    entry = '{"@type": "kv.Entry", "key": "alpha", "value": 1, "blob": {"$bytes": "AAEC/w=="}}'
    assert await cli(kv, "call", "put", entry) == (
        0, '{"@type": "kv.Entry", "key": "alpha", "value": 0, "blob": {"$bytes": ""}}\n', "")
    assert await cli(kv, "call", "get", "alpha") == (0, entry + "\n", "")
    assert await cli(kv, "call", "put", "-d", '{"entry": {"@type": "kv.Entry", "key": "beta"}}') == (
        0, '{"@type": "kv.Entry", "key": "beta", "value": 0, "blob": {"$bytes": ""}}\n', "")
    assert await cli(kv, "call", "kv.Store/scan", "--max-messages", "1") == (0, entry + "\n", "")
    # Field numbers work as keys too: what a server without reflection would need.
    assert await cli(kv, "call", "echo", '{"@type": "kv.Entry", "1": "k", "2": 5}') == (
        0, '{"@type": "kv.Entry", "key": "k", "value": 5, "blob": {"$bytes": ""}}\n', "")


async def test_unknown_fields_and_messages_are_errors_that_name_them(cli, kv):
    assert await cli(kv, "call", "put", '{"@type": "kv.Entry", "kee": "x", "value": 1, "vlaue": 2}') == (
        1, "", 'trpc: argument 1: message kv.Entry has no field "kee", "vlaue" (its fields: key, value, blob)\n')
    code, out, err = await cli(kv, "call", "put", "entry={\"@type\": \"kv.Entyr\"}")
    assert (code, out) == (1, "")  # the messages are every class registered in this process: the suite's too
    assert re.fullmatch(r'trpc: argument entry: the server describes no message "kv.Entyr" \(its messages: '
                        r'([^,()]+, )*kv\.Entry(, [^,()]+)*\)\n', err)


async def test_bytes_maps_and_tags_round_trip(cli, kv):
    for document in ['{"$bytes": "AAEC/w=="}', '{"$map": [[1, "one"], [null, "none"]]}',
                     '{"$tag": 9999, "$value": [1, {"$bytes": ""}]}', '{"a": [1, 2.5, null, true]}']:
        assert await cli(kv, "call", "echo", document) == (0, document + "\n", ""), document
    assert await cli(kv, "call", "echo", '{"$bytes": "no!"}') == (
        2, "", "trpc: argument 1: \"$bytes\" must hold base64 text, not 'no!'\n")


async def test_format_json_quotes_text_and_refuses_nan_unless_allowed(cli, kv):
    assert await cli(kv, "call", "greet", "Ada", "--format", "json") == (0, '"Hello Ada"\n', "")
    assert await cli(kv, "call", "echo", "NaN") == (0, "NaN\n", "")  # text: for people
    assert await cli(kv, "call", "echo", "[1, Infinity]", "--format", "json") == (
        1, "", "trpc: a response cannot be written as JSON: inf is not JSON (--allow-nan writes NaN and Infinity)\n")
    assert await cli(kv, "call", "echo", "NaN", "--format", "json", "--allow-nan") == (0, "NaN\n", "")


async def test_call_shapes_are_checked_before_sending(cli, kv):
    assert await cli(kv, "call", "total", "1") == (
        1, "", "trpc: tests.services.Svc/total is client-streaming: its request messages come from standard input;"
               " add --stdin (one JSON value per line)\n")
    assert await cli(kv, "call", "bidi_echo") == (
        1, "", "trpc: tests.services.Svc/bidi_echo is bidi-streaming: its request messages come from standard"
               " input; add --stdin (one JSON value per line)\n")
    assert await cli(kv, "call", "greet", "--stdin", stdin="Ada\n") == (
        1, "", "trpc: tests.services.Svc/greet is unary: it takes one request, from ARGs or -d, not --stdin\n")
    assert await cli(kv, "call", "count", "--stdin", stdin="3\n") == (
        1, "", "trpc: tests.services.Svc/count is server-streaming: it takes one request, from ARGs or -d, not --stdin\n")
    assert await cli(kv, "call", "total", "--stdin", stdin="1\n\n2\n39\n") == (0, "42\n", "")
    assert await cli(kv, "call", "bidi_echo", "--stdin", stdin='a\n{"@type": "kv.Entry", "key": "k"}\n') == (
        0, 'a\n{"@type": "kv.Entry", "key": "k", "value": 0, "blob": {"$bytes": ""}}\n', "")


async def test_max_messages_stops_a_stream_early(cli, kv):
    assert await cli(kv, "call", "count", "10", "--max-messages", "3") == (0, "0\n1\n2\n", "")
    assert await cli(kv, "call", "bidi_echo", "--stdin", "--max-messages", "1", stdin="1\n2\n3\n") == (0, "1\n", "")
    assert await cli(kv, "call", "greet", "Ada", "--max-messages", "1") == (0, "Hello Ada\n", "")
    code, out, err = await cli(kv, "call", "count", "3", "--max-messages", "0")
    assert (code, out) == (2, "") and "--max-messages: must be 1 or more, not 0" in err and err.count("\n") == 1


async def test_verbose_prints_headers_trailers_status_and_time(cli, kv):
    code, out, err = await cli(kv, "call", "headed", "-v")
    assert (code, out) == (0, "done\n")
    lines = err.splitlines()
    assert lines[0].startswith("method: t.Failing/headed (unary) at ")
    assert lines[1:4] == ['headers: {"h": "1"}', 'trailers: {"t": {"$bytes": "AA=="}}', "status: OK"]
    assert re.fullmatch(r"time: \d+\.\d ms", lines[4]) and len(lines) == 5
    code, out, err = await cli(kv, "call", "fail", "rpc", "-v")
    assert (code, out) == (64 + 5, "")
    assert err.splitlines()[1:4] == ["headers: none", 'trailers: {"hint": "try 8"}', "status: NOT_FOUND: no such thing"]
    assert err.splitlines()[5:] == ["NOT_FOUND: no such thing", 'details: {"id": 7}']
    code, out, err = await cli(kv, "call", "count", "5", "--max-messages", "2", "-v")
    assert "status: none, stopped after 2 messages (--max-messages)" in err.splitlines()


async def test_error_details_are_always_shown_with_messages_by_field_name(cli):
    class Detailed(trpc.Service, name="t.Detailed"):
        @trpc.unary
        async def fail(self):
            raise trpc.RpcError(trpc.Status.ABORTED, "conflict", [Entry("k", 2), b"\x01"])

    assert await cli(trpc.Server(Detailed()), "call", "fail") == (64 + 10, "", (
        'ABORTED: conflict\ndetails: [{"@type": "kv.Entry", "key": "k", "value": 2, "blob": {"$bytes": ""}},'
        ' {"$bytes": "AQ=="}]\n'))


@pytest.mark.parametrize("status", [s for s in trpc.Status if s is not trpc.Status.OK])
async def test_a_failed_call_exits_with_64_plus_its_status_code(cli, status):
    assert await cli(trpc.Server(Failing()), "call", "fail_with", str(status.value)) == (
        64 + status.value, "", f"{status.name}: failed with {status.value}\n")
    assert _cli.exit_status(status) == 64 + status.value


# ------------------------------------------------------------------------ one-line errors
def main_in_process(capsys, *argv: str) -> tuple[int, str]:
    """``trpc *argv`` through ``_cli.main`` (its own ``trio.run``); returns (status, stderr)."""
    logger = logging.getLogger("trpc")
    level = logger.level
    try:
        code = _cli.main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code
    finally:
        logger.setLevel(level)
    return code, capsys.readouterr().err


def test_bad_arguments_are_one_line_errors_with_status_2(capsys, tmp_path):
    cert_only = tmp_path / "cert.pem"
    key_only = tmp_path / "key.pem"
    import trustme

    issued = trustme.CA().issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert_only))
    issued.private_key_pem.write_to_path(str(key_only))
    other_key = tmp_path / "other.pem"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(other_key))
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_text("x")
    unreadable.chmod(0)
    cases = [
        (["serve", "trpc.examples:Greeter", "--port", "70000"],
         "trpc serve: argument --port: a port is 0-65535 (0 picks a free one), not 70000 (see trpc serve --help)"),
        (["serve", "trpc.examples:Greeter", "--port", "-1"],
         "trpc serve: argument --port: a port is 0-65535 (0 picks a free one), not -1 (see trpc serve --help)"),
        (["--log-level", "LOUD", "serve", "trpc.examples:Greeter"],
         "trpc: argument --log-level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not 'LOUD' (see trpc --help)"),
        (["serve", "trpc.examples:Greeter", "--log-level", "LOUD"],
         "trpc serve: argument --log-level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not 'LOUD'"
         " (see trpc serve --help)"),
        (["call", "127.0.0.1:1", "greet", "--timeout", "0"],
         "trpc call: argument --timeout: must be more than 0 seconds, not 0 (see trpc call --help)"),
        (["health", "127.0.0.1:1", "--timeout", "-1"],
         "trpc health: argument --timeout: must be more than 0 seconds, not -1 (see trpc health --help)"),
        (["serve", "no_such_module:X"], "trpc: cannot import no_such_module: ModuleNotFoundError: No module named"
                                        " 'no_such_module'"),
        (["serve", "trpc:Status"], "trpc: trpc:Status is neither a trpc.Service subclass nor an instance of one"),
        (["serve", "trpc.examples:Nope"], "trpc: trpc.examples has no attribute 'Nope'"),
        (["serve", "trpc.examples:Greeter", "--tls-cert", str(tmp_path / "missing.pem")],
         f"trpc: --tls-cert {tmp_path / 'missing.pem'}: No such file or directory"),
        (["serve", "trpc.examples:Greeter", "--tls-cert", str(unreadable)],
         f"trpc: --tls-cert {unreadable}: Permission denied"),
        (["serve", "trpc.examples:Greeter", "--tls-cert", str(cert_only), "--tls-key", str(tmp_path / "nokey.pem")],
         f"trpc: --tls-key {tmp_path / 'nokey.pem'}: No such file or directory"),
        (["serve", "trpc.examples:Greeter", "--tls-cert", str(cert_only), "--tls-key", str(other_key)],
         f"trpc: --tls-key {other_key} is not the key of --tls-cert {cert_only}"),
        (["call", "127.0.0.1:1", "greet", "--tls-ca", str(tmp_path / "ca.pem")],
         f"trpc: --tls-ca {tmp_path / 'ca.pem'}: No such file or directory"),
        (["call", "127.0.0.1:1", "greet", "--authority", "example.com"],
         "trpc: --authority is the name to verify in the server's certificate: it needs TLS (--tls, --tls-ca PEM"
         " or --insecure)"),
        (["call", "127.0.0.1:1", "greet", "-m", "novalue"],
         "trpc: metadata must be KEY=VALUE (or 'KEY: VALUE'), got 'novalue'"),
    ]
    if os.geteuid() == 0:  # root reads any file
        cases = [case for case in cases if case[0][-1] != str(unreadable)]
    for argv, line in cases:
        assert main_in_process(capsys, *argv) == (2, line + "\n"), argv
    code, err = main_in_process(capsys, "serve", "trpc.examples:Greeter", "--tls-cert", str(cert_only))
    assert code == 2 and err.startswith(f"trpc: --tls-cert {cert_only} holds no private key (or not one for its"
                                        f" certificate): give the key with --tls-key PEM [") and err.count("\n") == 1


def test_a_module_that_fails_on_import_is_one_line(capsys, tmp_path, monkeypatch):
    (tmp_path / "broken_service.py").write_text("raise RuntimeError('no database')\n")
    (tmp_path / "needs_args.py").write_text(
        "import trpc\nclass S(trpc.Service):\n    def __init__(self, db):\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main_in_process(capsys, "serve", "broken_service:S") == (
        2, "trpc: cannot import broken_service: RuntimeError: no database\n")
    assert main_in_process(capsys, "serve", "needs_args:S") == (
        2, "trpc: cannot build needs_args:S() with no arguments: TypeError: S.__init__() missing 1 required positional"
           " argument: 'db'\n")


def test_a_port_in_use_is_one_line_with_status_1(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main_in_process(capsys, "serve", "trpc.examples:Greeter", "--port", str(port)) == (
            1, f"trpc: cannot listen on 127.0.0.1:{port}: Address already in use\n")


# ------------------------------------------------------------------------ TLS
@pytest.fixture
def tls_files(tmp_path):
    import trustme

    ca = trustme.CA()
    paths = {"ca": tmp_path / "ca.pem", "server": tmp_path / "server.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    ca.issue_cert("trpc.example").private_key_and_cert_chain_pem.write_to_path(str(paths["server"]))
    return ca, {name: str(path) for name, path in paths.items()}


async def test_insecure_and_authority_and_tls_errors_that_say_what_to_try(tls_files, nursery, capsys):
    ca, paths = tls_files
    server = trpc.Server(Svc())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(paths["server"])
    host, port = await nursery.start(partial(server.serve_tcp, 0, ssl_context=context))
    address = f"{host}:{port}"

    async def run(*argv):
        code = await _cli.run(_cli._parser().parse_args(["call", address, "greet", "Ada", *argv]))
        out, err = capsys.readouterr()
        return code, out, err

    # The certificate names trpc.example, not 127.0.0.1:
    code, out, err = await run("--tls-ca", paths["ca"])
    assert (code, out) == (64 + 14, "") and err.count("\n") == 1
    assert err.endswith("; try --authority NAME (a name its certificate has) or --insecure\n")
    assert await run("--tls-ca", paths["ca"], "--authority", "trpc.example") == (0, "Hello Ada\n", "")
    code, out, err = await run("--tls")  # the system's CAs do not know this one
    assert code == 64 + 14
    assert err.endswith("; try --tls-ca PEM (the CA that signed it), or --insecure to skip verification\n")
    assert await run("--insecure") == (0, "Hello Ada\n", "")
    code, out, err = await run()  # plain TCP to a TLS server
    assert code == 64 + 14 and err.endswith("; try --tls-ca PEM, --tls (the system's CAs) or --insecure\n")


# ------------------------------------------------------------------------ as a user runs it
async def test_a_kv_session_in_real_processes(nursery):
    """``trpc serve`` with an access log; ``trpc list``, ``describe`` and a message by field
    name through ``trpc call`` processes, which know no message class; SIGTERM ends the server
    with an INFO line (``--log-level`` after the subcommand), not a warning."""
    process = await nursery.start(
        lambda task_status: trio.run_process(
            [sys.executable, "-m", "trpc", "serve", "trpc.examples:Store", "--port", "0", "--access-log",
             "--log-level", "INFO"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, task_status=task_status,
        )
    )
    try:
        address = await listening_address(process)
        listed = await run_cli("list", address)
        assert (listed.returncode, listed.stdout) == (
            0, b"kv.Store\ngrpc.health.v1.Health\ntrpc.reflection.v1.Reflection\n"
               b"grpc.reflection.v1.ServerReflection\ngrpc.reflection.v1alpha.ServerReflection\n")
        described = await run_cli("describe", address, "kv.Entry")
        assert (described.returncode, described.stdout.decode()) == (0, ENTRY_TEXT)
        entry = '{"@type": "kv.Entry", "key": "alpha", "value": 1, "blob": {"$bytes": "/w=="}}'
        put = await run_cli("call", address, "put", entry)
        assert (put.returncode, put.stdout, put.stderr) == (
            0, b'{"@type": "kv.Entry", "key": "alpha", "value": 0, "blob": {"$bytes": ""}}\n', b"")
        got = await run_cli("call", address, "kv.Store/get", "key=alpha", "--format", "json")
        assert (got.returncode, got.stdout.decode()) == (0, entry + "\n")
        missing = await run_cli("call", address, "get", "beta")
        assert (missing.returncode, missing.stderr) == (64 + 5, b"NOT_FOUND: no key 'beta'\ndetails: {\"key\": \"beta\"}\n")
        lines = b""
        with trio.fail_after(30):
            while lines.count(b" access ") < 8:
                lines += await process.stdout.receive_some()
        output = lines.decode().splitlines()
        assert [line for line in output if line.startswith("service ")] == [
            "service kv.Store: kv.Store/get kv.Store/put kv.Store/scan kv.Store/put_many",
            "service grpc.health.v1.Health: grpc.health.v1.Health/Check grpc.health.v1.Health/Watch",
            "service trpc.reflection.v1.Reflection: trpc.reflection.v1.Reflection/Describe",
            "service grpc.reflection.v1.ServerReflection: grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "service grpc.reflection.v1alpha.ServerReflection:"
            " grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"]
        access = [line.split(" ", 3)[3] for line in output if not line.startswith("service ")]
        assert all(re.fullmatch(r"\S+ from 127\.0\.0\.1:\d+: [A-Z_]+ in \d+\.\d ms", line) for line in access)
        describe = "trpc.reflection.v1.Reflection/Describe OK"
        assert [re.sub(r" from \S+: (\w+) in \d+\.\d ms", r" \1", line) for line in access] == [
            describe,  # list
            describe,  # describe
            describe, "kv.Store/put OK",  # call: the method's shape, then the call
            describe, "kv.Store/get OK",
            describe, "kv.Store/get NOT_FOUND",
        ]
    finally:
        process.terminate()
    with trio.fail_after(30):
        await process.wait()
    assert process.returncode == 0
    errors = b""
    with trio.fail_after(30):
        while chunk := await process.stderr.receive_some():
            errors += chunk
    logged = [line.split(" ", 2)[2] for line in errors.decode().splitlines()]
    assert logged[-1] == "INFO trpc: SIGTERM: shutting down (up to 10.0 s for running calls)"
    assert all(line.startswith("INFO ") for line in logged)
