"""The ``trpc`` command: call, list, describe, serve, health, version.

Theory of operation
-------------------
``main`` parses the command line (argparse: its errors exit with 2) and runs one command in
``trio.run``; :func:`run` is that command, usable from a running Trio program (the tests call it
in process).  Every command either returns its exit status or raises; :func:`run` turns what
is raised into one line on stderr and a status, so no traceback ever reaches the user:

- :class:`CliError` carries its own line and status (1 or 2, below);
- :class:`~trpc.RpcError` prints ``STATUS: message`` (and ``details: JSON`` on a second line
  when the server attached details) and exits with ``64 + status code``, as grpcurl does;
- another :class:`~trpc.TrpcError` or an ``OSError`` is a local failure: 1.

Exit statuses (docs/CLI.md is the user's copy; ``trpc --help`` the short one):

====  ======================================================================================
0     OK (``trpc health``: the service is SERVING)
1     a local or usage error: the command line is well-formed but does not fit what the
      server serves (a call shape the options do not match, a field or message the server
      does not describe, a symbol it does not have), a response JSON cannot hold, a port
      already in use; ``trpc health``: the server answered, and not SERVING
2     bad arguments, found before connecting or listening: argparse's own errors, values out
      of range, a file named on the command line that cannot be read or used (``--config``,
      ``--tls-*``, ``-d @FILE``), JSON that does not parse, ``MODULE:SERVICE`` that does not
      import or is not a Service
64+N  the call ended with status N (65 CANCELLED ... 68 DEADLINE_EXCEEDED ... 76
      UNIMPLEMENTED, 78 UNAVAILABLE (no connection too) ... 80 UNAUTHENTICATED)
130   interrupted (SIGINT)
====  ======================================================================================

Values.  ``trpc call`` reads each ARG as JSON when it parses (``5``, ``true``, ``{"a": 1}``,
``"5"``) and as text otherwise (``Ada``; ``--json-args``: never), ``NAME=VALUE`` as a keyword
argument, and ``-d`` as one JSON document (an object: keyword arguments; an array: positional
ones; anything else, or an object that is a message: the one argument).  Values go to JSON and
back through :mod:`trpc._cli_json` (messages by field name, from the server's reflection;
bytes as ``{"$bytes": base64}``).  ``--format text`` (the default) prints a response that is
text as it is and anything else as JSON; ``--format json`` prints every response as JSON, and
refuses NaN and infinities unless ``--allow-nan``.

Call shapes.  The server's reflection names each method's shape (docs/PROTOCOL.md section 13;
a server without reflection: its INFO frame, section 3); ``trpc call`` checks it before sending: a client- or bidi-streaming method takes its request
messages from standard input (``--stdin``, one JSON value per line), the other two take ARGs.
A method neither lists is called as the options say, and the server answers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import re
import signal
import ssl
import sys
from functools import partial
from typing import Any, Sequence, cast

import trio

from . import _cext, _framer
from ._address import Address
from ._cli_describe import describe_json, describe_text, find_symbol, list_names
from ._cli_json import MessageNames, asks_for_message, from_json, holds_message, to_json
from .channel import make_resolver
from ._client import DEFAULT_CONNECT_TIMEOUT, open_client
from ._config import ClientConfig
from ._errors import ConfigError, RpcError, TrpcError
from ._health import CHECK_METHOD, WATCH_METHOD, HealthStatus
from ._reflection import Reflection
from ._status import Status
from ._keepalive import CLIENT_KEEPALIVE_TIME, CLIENT_KEEPALIVE_TIMEOUT, SERVER_KEEPALIVE_TIME, SERVER_KEEPALIVE_TIMEOUT
from ._server import DEFAULT_HOST, DEFAULT_MAX_CONNECTION_AGE_GRACE, DEFAULT_PORT, Server
from .wire import DEFAULT_MAX_PING_STRIKES, DEFAULT_MIN_PING_INTERVAL, Connection
from .wire._compression import AVAILABLE, Coding, coding_bit
from ._service import SHAPE_NAMES, SHAPE_WORDS, Cardinality, Service
from ._version import __version__
from ._workers import parse_workers, serve_command
from .interceptors import ServerLogging

__all__ = ["main", "run", "CliError", "EXIT_LOCAL", "EXIT_USAGE", "EXIT_RPC_BASE", "exit_status"]

#: Exit statuses (the table in the module's docstring).
EXIT_OK, EXIT_LOCAL, EXIT_USAGE, EXIT_RPC_BASE, EXIT_INTERRUPTED = 0, 1, 2, 64, 130


def exit_status(status: Status) -> int:
    """The exit status of a call that ended with ``status``: 0 for OK, else 64 + its code."""
    return EXIT_OK if status is Status.OK else EXIT_RPC_BASE + status.value


class CliError(Exception):
    """A failure the command reports in one line (``line``) and exits with ``code``."""

    def __init__(self, line: str, code: int = EXIT_LOCAL) -> None:
        super().__init__(line)
        self.line = line
        self.code = code


# ============================================================================ argument types
def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0 picks a free one), not {port}")
    return port


def _seconds(text: str) -> float:
    """A duration that must be more than zero (a timeout)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in _LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(_LOG_LEVELS)}, not {text!r}")
    return level


def _octal(text: str) -> int:
    """File permissions as chmod takes them: ``660``, ``0o660``."""
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not octal permissions: {text!r}") from None


# ============================================================================ values in and out
def _parse_value(text: str, strict: bool, what: str) -> Any:
    """An ARG, a NAME=VALUE's value or a line of standard input: JSON if it parses, else the
    text itself; with ``strict`` (``--json-args``), JSON or an error."""
    try:
        return json.loads(text)
    except ValueError as exc:
        if strict:
            raise CliError(f"trpc: {what} is not JSON (--json-args; write text as \"...\"): {exc}", EXIT_USAGE) from None
        return text


_KEYWORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)\Z", re.DOTALL)


async def _read_data(spec: str) -> str:
    """``-d``'s JSON text: itself, the file after ``@``, or standard input for ``@-``."""
    if not spec.startswith("@"):
        return spec
    if spec == "@-":
        return await trio.to_thread.run_sync(sys.stdin.read)
    try:
        return await trio.Path(spec[1:]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise CliError(f"trpc: -d {spec}: {reason}", EXIT_USAGE) from None


async def _request(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    """The call's positional and keyword arguments, as parsed JSON (messages not yet read)."""
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    for text in args.args:
        match = _KEYWORD.match(text)
        if match is None:
            positional.append(_parse_value(text, args.json_args, f"ARG {text!r}"))
            continue
        name, value = match.groups()
        if name in keywords:
            raise CliError(f"trpc: keyword argument {name!r} is given twice", EXIT_USAGE)
        keywords[name] = _parse_value(value, args.json_args, f"the value of {name}= ({value!r})")
    if args.data is None:
        return positional, keywords
    if args.args:
        raise CliError("trpc: give the arguments as ARGs or as -d, not both", EXIT_USAGE)
    if args.data == "@-" and args.stdin:
        raise CliError("trpc: -d @- and --stdin both read standard input: use one", EXIT_USAGE)
    text = await _read_data(args.data)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CliError(f"trpc: -d is not JSON: {exc}", EXIT_USAGE) from None
    if isinstance(data, list):
        return data, {}
    if isinstance(data, dict) and not any(key.startswith(("@", "$")) for key in data):
        return [], data
    return [data], {}


class _Server:
    """What ``trpc call`` learns about the server: its reflection, asked for once, when first
    needed (the method's shape, then the field names of its messages)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._reflection: Reflection | None = None
        self._asked = False
        self._names: MessageNames | None = None

    async def reflection(self) -> Reflection | None:
        """The server's reflection; None for a server that serves none, or whose document
        this connection cannot take (a ``--config`` may limit response sizes below it): the
        call goes ahead without it, and a connection that is failing fails the call too."""
        if not self._asked:
            try:
                self._reflection = await self.client.reflect()
            except RpcError as exc:
                logging.getLogger("trpc").debug("trpc: no reflection: %s", exc)
            self._asked = True
        return self._reflection

    async def names(self) -> MessageNames:
        if self._names is None:
            self._names = MessageNames(await self.reflection())  # none: fields go by number
        return self._names

    async def shape(self, name: str) -> tuple[str, Cardinality] | None:
        """The path and shape of the method ``name`` (a path or a short name): from the
        reflection, else from the INFO frame (docs/PROTOCOL.md section 3, which a server
        sends before any answer); None when neither says."""
        reflection = await self.reflection()
        if reflection is not None:
            try:
                method = reflection.method(name)
            except KeyError:
                return None
            return method.path, method.shape
        methods: dict[str, Cardinality] = getattr(self.client._connection, "methods", None) or {}
        if "/" in name:
            return (name, methods[name]) if name in methods else None
        found = [(path, shape) for path, shape in methods.items() if path.rpartition("/")[2] == name]
        return found[0] if len(found) == 1 else None

    async def decode_input(self, value: Any, what: str) -> Any:
        """Parsed JSON input as the value to send (messages by their field numbers)."""
        # Only a message needs the server to be read: any other malformed value is a bad
        # argument (2); a message the server does not describe so is a usage error (1).
        needs_server = asks_for_message(value)
        try:
            return from_json(value, await self.names() if needs_server else MessageNames())
        except ValueError as exc:
            raise CliError(f"trpc: {what}: {exc}", EXIT_LOCAL if needs_server else EXIT_USAGE) from None

    async def to_json(self, value: Any, allow_nan: bool) -> Any:
        names = await self.names() if holds_message(value) else MessageNames()
        return to_json(value, names, allow_nan=allow_nan)


def _dumps(value: Any, allow_nan: bool = True) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=allow_nan)


async def _format(value: Any, server: _Server, args: argparse.Namespace) -> str:
    """One response as ``trpc call`` prints it (``--format``)."""
    if args.format == "text" and isinstance(value, str):
        return value
    allow_nan = args.allow_nan or args.format == "text"
    try:
        return _dumps(await server.to_json(value, allow_nan), allow_nan)
    except ValueError as exc:
        raise CliError(f"trpc: a response cannot be written as JSON: {exc}") from None


def format_value(value: Any, *, as_json: bool = False, names: MessageNames | None = None) -> str:
    """A value as ``trpc call`` prints it: text as is (unless ``as_json``), anything else as
    JSON with messages by field name (``names``; none: by number) and bytes in base64."""
    if isinstance(value, str) and not as_json:
        return value
    return _dumps(to_json(value, names or MessageNames(), allow_nan=True))


# ============================================================================ errors, in one line
def _tls_hint(message: str) -> str:
    """What to try for a TLS failure the client described (``_tls.describe_tls_failure``)."""
    if "mismatch" in message and "not trusted" in message:
        return "; try --authority NAME (a name its certificate has) or --insecure"
    if "not trusted" in message:
        return "; try --tls-ca PEM (the CA that signed it), or --insecure to skip verification"
    if "does not speak TLS" in message:
        return "; try without --tls, --tls-ca and --insecure"
    if "speaks TLS" in message:
        return "; try --tls-ca PEM, --tls (the system's CAs) or --insecure"
    if "client certificate" in message:
        return "; try --tls-cert PEM --tls-key PEM"
    return ""


def _report(exc: RpcError, details: Any = None) -> int:
    """Print a failed call in one line (and its details on a second) and return its status."""
    message = exc.message + (_tls_hint(exc.message) if exc.status is Status.UNAVAILABLE else "")
    print(f"{exc.status.name}: {message}" if message else exc.status.name, file=sys.stderr)
    if exc.details is not None:
        if details is None:
            details = to_json(exc.details, MessageNames(), allow_nan=True)
        print(f"details: {_dumps(details)}", file=sys.stderr)
    return exit_status(exc.status)


async def _report_call(exc: RpcError, server: _Server) -> int:
    """:func:`_report` with messages in the details by field name (if the server says them)."""
    details = None
    if exc.details is not None:
        try:
            details = await server.to_json(exc.details, allow_nan=True)
        except (RpcError, TrpcError):
            pass  # no names: by number
    return _report(exc, details)


def _version_text() -> str:
    name = _framer.default_framer_name()
    if name == "c" and "c" not in _framer.FRAMERS:
        framer = f"framer: python; the C framer is unavailable: {_framer.c_framer_error}"
    else:
        framer = f"framer: {name}"
    if _cext.speedups_error is None:
        codec = "codec: C, cbor2 behind it"
    else:
        codec = f"codec: cbor2; the C codec is unavailable: {_cext.speedups_error}"
    return f"trpc {__version__} ({framer}; {codec})"


# ============================================================================ connecting
def _parse_metadata(items: Sequence[str]) -> dict[str, str | bytes]:
    """``-m KEY=VALUE`` (or grpcurl's ``-H 'KEY: VALUE'``) as a metadata map."""
    metadata: dict[str, str | bytes] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or ":" in key:
            key, sep, value = item.partition(":")
            value = value.lstrip()
        key = key.strip()
        if not sep or not key:
            raise CliError(f"trpc: metadata must be KEY=VALUE (or 'KEY: VALUE'), got {item!r}", EXIT_USAGE)
        metadata[key] = value
    return metadata


def _readable(path: str, option: str) -> None:
    """Refuse, naming the option and the file, a file that cannot be read."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise CliError(f"trpc: {option} {path}: {exc.strerror or exc}", EXIT_USAGE) from None


def _load_cert_chain(context: ssl.SSLContext, cert: str, key: str | None) -> None:
    """``context.load_cert_chain`` with its failures in one line naming the files."""
    _readable(cert, "--tls-cert")
    if key is not None:
        _readable(key, "--tls-key")
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None) or exc
        if reason == "KEY_VALUES_MISMATCH":
            raise CliError(f"trpc: --tls-key {key} is not the key of --tls-cert {cert}", EXIT_USAGE) from None
        if key is None:
            raise CliError(f"trpc: --tls-cert {cert} holds no private key (or not one for its certificate):"
                           f" give the key with --tls-key PEM [{reason}]", EXIT_USAGE) from None
        raise CliError(f"trpc: --tls-cert {cert} / --tls-key {key}: not a PEM certificate chain and its key"
                       f" [{reason}]", EXIT_USAGE) from None


def _load_ca(context: ssl.SSLContext, path: str, option: str) -> None:
    _readable(path, option)
    try:
        context.load_verify_locations(path)
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CliError(f"trpc: {option} {path}: no PEM certificate in it [{reason}]", EXIT_USAGE) from None


def _client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """TLS for the commands that connect: on with --tls-ca, --tls (the system's CAs) or
    --insecure (no verification); a client certificate for mutual TLS with --tls-cert (loaded
    here to check it, and given to ``open_client`` as files by ``_open``, which QUIC needs)."""
    if args.tls_key and not args.tls_cert:
        raise CliError("trpc: --tls-key needs --tls-cert", EXIT_USAGE)
    if not (args.tls or args.tls_ca or args.tls_cert or args.insecure):
        if args.authority is not None:
            raise CliError("trpc: --authority is the name to verify in the server's certificate: it needs TLS"
                           " (--tls, --tls-ca PEM or --insecure)", EXIT_USAGE)
        return None
    context = ssl.create_default_context()
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif args.tls_ca:
        _load_ca(context, args.tls_ca, "--tls-ca")
    if args.tls_cert:
        _load_cert_chain(context, args.tls_cert, args.tls_key)
    return context


def _open(args: argparse.Namespace, **options: Any) -> Any:
    """``open_client`` for the command's target, with the connection options it was given."""
    return open_client(
        args.target, metadata=_parse_metadata(args.metadata), framer=args.framer, ssl_context=_client_tls(args),
        certfile=args.tls_cert, keyfile=args.tls_key, server_hostname=args.authority, connect_timeout=args.connect_timeout,
        keepalive_time=args.keepalive_time or None, keepalive_timeout=args.keepalive_timeout,
        compression=args.compression, **options,
    )


def _no_answer(args: argparse.Namespace) -> RpcError:
    return RpcError(Status.DEADLINE_EXCEEDED, f"no answer within {args.timeout} s")


# ============================================================================ trpc call
def _check_shape(args: argparse.Namespace, path: str, shape: Cardinality) -> None:
    """Refuse, before sending anything, a call whose options do not fit the method's shape."""
    shape_name = SHAPE_WORDS[shape]
    if shape.client_streams and not args.stdin:
        raise CliError(f"trpc: {path} is {shape_name}: its request messages come from standard input;"
                       f" add --stdin (one JSON value per line)")
    if args.stdin and not shape.client_streams:
        raise CliError(f"trpc: {path} is {shape_name}: it takes one request, from ARGs or -d, not --stdin")


async def _call(args: argparse.Namespace) -> int:
    positional, keywords = await _request(args)
    if args.stdin and (positional or keywords):
        raise CliError("trpc: --stdin sends standard input as the request messages; give no ARGs or -d", EXIT_USAGE)
    deadline = math.inf if args.timeout is None else trio.current_time() + args.timeout
    with trio.CancelScope(deadline=deadline):
        async with _open(args, **args.client_options) as client:
            return await _call_on(client, args, positional, keywords)
    raise _no_answer(args)


async def _call_on(client: Any, args: argparse.Namespace, positional: list[Any], keywords: dict[str, Any]) -> int:
    server = _Server(client)
    declared = await server.shape(args.method)
    path, shape = declared if declared is not None else (args.method, None)
    if shape is not None:
        _check_shape(args, path, shape)
    positional = [await server.decode_input(value, f"argument {i + 1}") for i, value in enumerate(positional)]
    keywords = {name: await server.decode_input(value, f"argument {name}") for name, value in keywords.items()}
    # The command's own deadline (--timeout, else the config's for the method) is the scope
    # around it, which reports it: the method keeps no timeout of its own.
    method = client.method(args.method).with_options(timeout=None)
    if args.verbose:
        shown = SHAPE_NAMES[shape] if shape is not None else "shape not declared"
        print(f"method: {path} ({shown}) at {client.peer}", file=sys.stderr)
    start = trio.current_time()
    call: Any = None
    received = 0
    try:
        if args.stdin:
            call = method.open()
            received = await _stream_stdin(call, server, args)
        elif shape is Cardinality.UNARY:
            call = method(*positional, **keywords)
            reply = await call
            print(await _format(reply, server, args), flush=True)
            received = 1
        else:
            call = method(*positional, **keywords)
            async with call as stream:
                async for reply in stream:
                    print(await _format(reply, server, args), flush=True)
                    received += 1
                    if received == args.max_messages:
                        break
    except RpcError as exc:
        if args.verbose:
            _print_outcome(call, exc.status, exc.message, trio.current_time() - start, exc.trailers)
        return await _report_call(exc, server)
    if args.verbose:
        stopped = received == args.max_messages and shape is not Cardinality.UNARY
        _print_outcome(call, None if stopped else Status.OK, f"stopped after {received} messages (--max-messages)"
                       if stopped else "", trio.current_time() - start)
    return EXIT_OK


def _print_outcome(call: Any, status: Status | None, message: str, seconds: float,
                   trailers: dict[str, str | bytes] | None = None) -> None:
    """``-v``: the call's response headers, trailers, status and time, on stderr."""
    headers = getattr(call, "headers", None)
    if trailers is None or not trailers:
        trailers = getattr(call, "trailers", None) or trailers or {}
    names = MessageNames()
    print(f"headers: {_dumps(to_json(headers, names, allow_nan=True)) if headers is not None else 'none'}",
          file=sys.stderr)
    print(f"trailers: {_dumps(to_json(trailers, names, allow_nan=True))}", file=sys.stderr)
    if status is None:
        print(f"status: none, {message}", file=sys.stderr)
    else:
        print(f"status: {status.name}" + (f": {message}" if message else ""), file=sys.stderr)
    print(f"time: {seconds * 1000:.1f} ms", file=sys.stderr)


async def _stream_stdin(stream: Any, server: _Server, args: argparse.Namespace) -> int:
    """A client- or bidi-streaming call: each line of standard input is one request message,
    each response is printed as it comes; returns the number of responses."""
    failures: list[BaseException] = []
    received = 0

    async def send(cancel_scope: trio.CancelScope) -> None:
        try:
            number = 0
            async for line in trio.wrap_file(sys.stdin):
                line = line.rstrip("\n")
                if not line:
                    continue
                number += 1
                what = f"line {number} of standard input"
                value = await server.decode_input(_parse_value(line, args.json_args, what), what)
                if not await stream.send(value):
                    return  # the server ended the call: its status follows
            await stream.done_sending()
        except (CliError, TrpcError, OSError) as exc:
            failures.append(exc)
            cancel_scope.cancel()

    async with stream:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, nursery.cancel_scope)
            try:
                async for reply in stream:
                    print(await _format(reply, server, args), flush=True)
                    received += 1
                    if received == args.max_messages:
                        break
            except (CliError, TrpcError) as exc:
                failures.append(exc)
            nursery.cancel_scope.cancel()
    if failures:
        raise failures[0]
    return received


# ============================================================================ trpc list, describe
async def _reflect(args: argparse.Namespace) -> Any:
    deadline = math.inf if args.timeout is None else trio.current_time() + args.timeout
    with trio.CancelScope(deadline=deadline):
        async with _open(args) as client:
            try:
                return await client.reflect()
            except RpcError as exc:
                if exc.status is Status.UNIMPLEMENTED:
                    raise RpcError(exc.status, f"{exc.message} (the server serves no reflection:"
                                               f" Server(reflection=False)?)") from None
                raise
    raise _no_answer(args)


async def _list(args: argparse.Namespace) -> int:
    reflection = await _reflect(args)
    try:
        names = list_names(reflection, args.service)
    except KeyError as exc:
        raise CliError(f"trpc: {exc.args[0]}") from None
    print(_dumps(names) if args.format == "json" else "\n".join(names), flush=True)
    return EXIT_OK


async def _describe(args: argparse.Namespace) -> int:
    reflection = await _reflect(args)
    try:
        symbol = find_symbol(reflection, args.symbol)
    except KeyError as exc:
        raise CliError(f"trpc: {exc.args[0]}") from None
    print(_dumps(describe_json(symbol)) if args.format == "json" else describe_text(symbol), flush=True)
    return EXIT_OK


# ============================================================================ trpc health
#: ``trpc health`` exit statuses besides 0 (SERVING) and a failed call's 64 + code.
HEALTH_SERVING, HEALTH_NOT_SERVING = EXIT_OK, EXIT_LOCAL


def _health_exit(status: HealthStatus) -> int:
    return HEALTH_SERVING if status is HealthStatus.SERVING else HEALTH_NOT_SERVING


async def _health(args: argparse.Namespace) -> int:
    """``trpc health``: Check (or Watch) one service's status; returns the exit status: 0
    SERVING, 1 another answer (NOT_FOUND: an unknown service, too), 64 + code for a call
    that failed (no connection, no health service, no answer in time), 2 bad arguments."""
    deadline = math.inf if args.timeout is None else trio.current_time() + args.timeout
    last: HealthStatus | None = None
    try:
        with trio.CancelScope(deadline=deadline) as scope:
            async with _open(args) as client:
                if not args.watch:
                    last = HealthStatus.from_wire(await client.method(CHECK_METHOD)(args.service))
                    print(last.name, flush=True)
                else:
                    async with client.method(WATCH_METHOD)(args.service) as stream:
                        async for name in stream:
                            last = HealthStatus.from_wire(name)
                            print(last.name, flush=True)
    except RpcError as exc:
        code = _report(exc)
        return HEALTH_NOT_SERVING if exc.status is Status.NOT_FOUND else code
    except CliError as exc:
        print(exc.line, file=sys.stderr)
        return exc.code
    if last is None:
        if scope.cancelled_caught:
            return _report(_no_answer(args))
        print("trpc: the watch ended before the server sent a status", file=sys.stderr)
        return HEALTH_NOT_SERVING
    return _health_exit(last)


# ============================================================================ trpc serve
def _load_service(spec: str) -> Any:
    """The service ``MODULE:SERVICE`` names: a Service subclass (built with no arguments) or
    an instance; every way of failing is a one-line :class:`CliError`."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CliError(f"trpc: expected MODULE:SERVICE, got {spec!r}", EXIT_USAGE)
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module's own code raised
        raise CliError(f"trpc: cannot import {module_name}: {type(exc).__name__}: {exc}", EXIT_USAGE) from None
    finally:
        sys.path.pop(0)
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise CliError(f"trpc: {module_name} has no attribute {attribute!r}", EXIT_USAGE) from None
    if isinstance(target, type) and issubclass(target, Service):
        try:
            return target()
        except Exception as exc:
            raise CliError(f"trpc: cannot build {spec}() with no arguments: {type(exc).__name__}: {exc}",
                           EXIT_USAGE) from None
    if isinstance(target, Service):
        return target
    raise CliError(f"trpc: {spec} is neither a trpc.Service subclass nor an instance of one", EXIT_USAGE)


def _access_log() -> ServerLogging:
    """``trpc serve --access-log``: one line per call on stdout (method, peer, status,
    duration), whatever ``--log-level`` says."""
    logger = logging.getLogger("trpc.access")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s access %(message)s"))
        logger.addHandler(handler)
    return ServerLogging(logger)


async def _serve(args: argparse.Namespace) -> int:
    services = [_load_service(spec) for spec in args.service]
    ssl_context = _server_tls(args)
    interceptors = [_access_log()] if args.access_log else []
    try:
        server = Server(*services, framer=args.framer, interceptors=interceptors, **_server_limits(args),
                        **_server_lifetimes(args))
    except (TypeError, ValueError) as exc:  # two services with one name; a limit out of its range
        raise CliError(f"trpc: {exc}", EXIT_USAGE) from None
    listeners = []
    if args.unix is not None:
        listeners.append(partial(server.serve_unix, args.unix, mode=args.unix_mode, ssl_context=ssl_context))
    if args.quic is not None:
        if not args.tls_cert:
            raise CliError("trpc: --quic needs --tls-cert (QUIC is always TLS)", EXIT_USAGE)
        listeners.append(partial(server.serve_quic, args.quic, DEFAULT_HOST if args.host is None else args.host,
                                 certfile=args.tls_cert, keyfile=args.tls_key, client_cafile=args.tls_client_ca))
    if (args.unix is None and args.quic is None) or args.host is not None or args.port is not None:
        port = DEFAULT_PORT if args.port is None else args.port
        host = DEFAULT_HOST if args.host is None else args.host
        listeners.append(partial(server.serve_tcp, port, host, ssl_context=ssl_context))
    failure: CliError | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            for listen in listeners:
                try:
                    where = await nursery.start(listen)
                except OSError as exc:  # the port or the path is taken, or cannot be used
                    place = (Address.tcp(listen.args[1], listen.args[0]) if listen.func == server.serve_tcp
                             else Address("quic", host=listen.args[1], port=listen.args[0] or 1)
                             if listen.func == server.serve_quic
                             else Address.unix(cast(str, args.unix)))  # the Unix listener: args.unix is set
                    failure = CliError(f"trpc: cannot listen on {place}: {exc.strerror or exc}")
                    nursery.cancel_scope.cancel()
                    break
                shown = (Address.unix(where) if isinstance(where, str)
                         else Address("quic", host=where[0], port=where[1]) if listen.func == server.serve_quic
                         else Address.tcp(*where))
                print(f"listening on {shown} (framer {server._framer.name})", flush=True)
            if failure is None:  # (else raised below, outside the nursery: no ExceptionGroup)
                paths: dict[str, list[str]] = {}
                for path, info in server.methods.items():
                    paths.setdefault(info.service, []).append(path)
                for name, served in paths.items():
                    print(f"service {name}: {' '.join(served)}", flush=True)
                async for signum in signals:
                    # Being told to stop is the normal way a server ends: INFO, not a warning.
                    logging.getLogger("trpc").info(
                        "trpc: %s: shutting down (up to %s s for running calls)", signal.Signals(signum).name, args.grace
                    )
                    await server.shutdown(args.grace)
                    break
    if failure is not None:
        raise failure
    return EXIT_OK


def _server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """TLS for ``trpc serve``: --tls-cert/--tls-key; --tls-client-ca requires client certificates
    signed by that CA (mutual TLS)."""
    if not args.tls_cert:
        if args.tls_client_ca or args.tls_key:
            raise CliError("trpc: --tls-client-ca and --tls-key need --tls-cert", EXIT_USAGE)
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_cert_chain(context, args.tls_cert, args.tls_key)
    if args.tls_client_ca:
        _load_ca(context, args.tls_client_ca, "--tls-client-ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


#: Server(...) options that ``trpc serve`` takes as flags under their own names: the limits
#: (``--max-connections`` and so on) and ``--compression``.
_SERVER_LIMITS = ("max_connections", "preface_timeout", "max_concurrent_calls", "max_incomplete_bytes",
                  "max_buffered_bytes", "compression")


def _server_limits(args: argparse.Namespace) -> dict[str, Any]:
    """Server(...) options given on the command line (the others keep Server's defaults)."""
    return {name: getattr(args, name) for name in _SERVER_LIMITS if getattr(args, name, None) is not None}


def _server_lifetimes(args: argparse.Namespace) -> dict[str, Any]:
    """Server's keepalive and lifetime options from ``trpc serve``'s flags (0: off)."""
    return dict(
        keepalive_time=args.keepalive_time or None,
        keepalive_timeout=args.keepalive_timeout,
        keepalive_min_ping_interval=args.keepalive_min_ping_interval or None,
        keepalive_max_ping_strikes=args.keepalive_max_ping_strikes,
        max_connection_idle=args.max_connection_idle or None,
        max_connection_age=args.max_connection_age or None,
        max_connection_age_grace=args.max_connection_age_grace,
    )


def _client_options(config: ClientConfig | None, method: str) -> dict[str, Any]:
    """``open_client(...)`` keywords a ``--config`` file gives ``trpc call METHOD``.

    The config itself goes as ``config=``, so that the channel applies all of it (retries,
    balancing, backoff, wait-for-ready, timeouts); the method's ``maxResponseMessageBytes``
    also becomes the connection's ``max_message_size`` (the command makes one call: the
    connection's limit is the method's).
    """
    if config is None:
        return {}
    options: dict[str, Any] = {}
    size = config.method(method).max_response_message_size
    if size is not None:
        options["max_message_size"] = size
    options["config"] = config
    return options


def _load_client_config(args: argparse.Namespace) -> str | None:
    """Read ``trpc call --config`` into ``args``: the method's timeout (unless --timeout was
    given) and ``args.client_options``.  Returns a one-line error, or None."""
    args.client_options = {}
    if args.config is None:
        return None
    try:
        config = ClientConfig.from_file(args.config)
    except OSError as exc:
        return f"trpc: --config {args.config}: {exc.strerror or exc}"
    except ConfigError as exc:
        return f"trpc: --config {args.config}: {exc}"
    if args.timeout is None:
        args.timeout = config.method(args.method).timeout
    options = _client_options(config, args.method)
    if "max_message_size" in options:
        try:  # the connection owns the rule for its limit: ask it
            Connection("client", max_message_size=options["max_message_size"])
        except ValueError as exc:
            return (f"trpc: --config {args.config}: maxResponseMessageBytes of {args.method!r} cannot be"
                    f" the connection's limit: {exc}")
    args.client_options = options
    return None



# ============================================================================ the command line
_EPILOG = """\
exit status: 0 OK; 1 a local or usage error (the command does not fit what the server
serves, a response JSON cannot hold, a port in use); 2 bad arguments; 64+N the call ended
with status N (68 DEADLINE_EXCEEDED, 76 UNIMPLEMENTED, 78 UNAVAILABLE, ...); trpc health:
1 when the server answers anything but SERVING.  docs/CLI.md has every command and flag.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _workers_count(text: str) -> int:
    try:
        return parse_workers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None




def _add_log_level(command: argparse.ArgumentParser, default: Any) -> None:
    command.add_argument("--log-level", type=_log_level, default=default, metavar="LEVEL",
                         help="logging level of the trpc logger: DEBUG, INFO, WARNING (default), ERROR, CRITICAL")


#: The codings ``--compression`` names: zstd only where the zstandard package is installed.
_CODINGS = ("zlib", "zstd") if AVAILABLE & coding_bit(Coding.ZSTD) else ("zlib",)


def _add_connect_options(command: argparse.ArgumentParser) -> None:
    """The options of the commands that connect to a server: metadata, TLS, timeouts, keepalive."""
    command.add_argument("target", metavar="TARGET",
                         help="HOST:PORT, unix:PATH, several H1:P1,H2:P2, or dns:///NAME:PORT")
    command.add_argument("-m", "-H", "--metadata", action="append", default=[], metavar="KEY=VALUE",
                         help="request metadata, KEY=VALUE or 'KEY: VALUE' (repeatable)")
    command.add_argument("--timeout", type=_seconds, default=None, metavar="S",
                         help="deadline for the whole command, connecting included (seconds, more than 0)")
    command.add_argument("--connect-timeout", type=_seconds, default=DEFAULT_CONNECT_TIMEOUT, metavar="S",
                         help=f"limit for one connection attempt, TLS included (default {DEFAULT_CONNECT_TIMEOUT:g})")
    command.add_argument("--compression", choices=_CODINGS, default=None,
                         help="compress request messages so, and ask the server to compress its responses"
                              " so (trpc's wire; messages under 1 KiB go as they are)")
    command.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    command.add_argument("--tls-ca", metavar="PEM", help="connect with TLS, trusting this CA bundle")
    command.add_argument("--insecure", action="store_true",
                         help="connect with TLS without verifying the server's certificate (testing only)")
    command.add_argument("--authority", metavar="NAME",
                         help="the name the server's certificate must have (default: the target's host)")
    command.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    command.add_argument("--tls-key", metavar="PEM", help="its private key (if not in --tls-cert)")
    command.add_argument("--keepalive-time", type=float, default=CLIENT_KEEPALIVE_TIME, metavar="S",
                         help=f"ping the server after S s without an answer while waiting (default"
                              f" {CLIENT_KEEPALIVE_TIME:g}; 0: never)")
    command.add_argument("--keepalive-timeout", type=_seconds, default=CLIENT_KEEPALIVE_TIMEOUT, metavar="S",
                         help=f"give up on the server when a ping has no answer in S s"
                              f" (default {CLIENT_KEEPALIVE_TIMEOUT:g})")
    _add_log_level(command, argparse.SUPPRESS)


def _add_format(command: argparse.ArgumentParser, text: str) -> None:
    command.add_argument("--format", choices=["text", "json"], default="text", help=text)
    command.add_argument("--json", dest="format", action="store_const", const="json", help="--format json")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trpc", description="trpc: RPC for Trio", epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version_text())
    _add_log_level(parser, "WARNING")
    parser.add_argument("--framer", choices=["c", "python"], default=None,
                        help="frame scanner (default: $TRPC_FRAMER, else c)")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, epilog=_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    call = command("call", "call a method and print the responses, one per line")
    _add_connect_options(call)
    call.add_argument("method", metavar="METHOD", help="a path (kv.Store/get) or a short name (get)")
    call.add_argument("args", nargs="*", metavar="ARG",
                      help="an argument: JSON if it parses, else text; NAME=VALUE for a keyword argument")
    call.add_argument("-d", "--data", metavar="JSON",
                      help="the arguments as one JSON document: an object (keywords), an array (positional), or"
                           " one value; @FILE reads a file, @- standard input")
    call.add_argument("--json-args", action="store_true",
                      help="strict: every ARG, VALUE and --stdin line must be JSON (never read as text)")
    call.add_argument("--stdin", action="store_true",
                      help="send each line of standard input as a request message (client- and bidi-streaming)")
    call.add_argument("--max-messages", type=_count, default=None, metavar="N",
                      help="stop after N response messages (ends the call)")
    _add_format(call, "text (default): text responses as they are, others as JSON; json: every response as JSON")
    call.add_argument("--allow-nan", action="store_true", help="with --format json: write NaN and Infinity")
    call.add_argument("-v", "--verbose", action="store_true",
                      help="also print the response headers, trailers, status and time (stderr)")
    call.add_argument("--config", metavar="FILE",
                      help="client config, JSON (docs/CONFIG.md): the method's timeout and maxResponseMessageBytes apply")

    listing = command("list", "list the server's services, or one service's methods (reflection)")
    _add_connect_options(listing)
    listing.add_argument("service", metavar="SERVICE", nargs="?", default=None)
    _add_format(listing, "text (default): one name per line; json: an array")

    describe = command("describe", "describe a service, a method or a message (reflection)")
    _add_connect_options(describe)
    describe.add_argument("symbol", metavar="SYMBOL",
                          help="a service (kv.Store), a method (kv.Store/get, or get if no other service has"
                               " one) or a message (kv.Entry)")
    _add_format(describe, "text (default): readable; json: the reflection's fields")

    health = command("health", "check a server's health service; exit 0 SERVING, 1 anything else")
    _add_connect_options(health)
    health.add_argument("service", metavar="SERVICE", nargs="?", default="",
                        help='the service to check (default "": the whole server)')
    health.add_argument("--watch", action="store_true",
                        help="print the status, then each change, until interrupted or the server ends the watch")

    from .grpc._proto import add_proto_command  # imports protobuf only when run

    add_proto_command(commands)

    serve = command("serve", "serve trpc.Service classes over TCP or a Unix domain socket")
    _add_log_level(serve, argparse.SUPPRESS)
    serve.add_argument("service", metavar="MODULE:SERVICE", nargs="+",
                       help="the services to serve, each a Service subclass or instance")
    serve.add_argument("--host", default=None, help=f"address to listen on (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=_port, default=None,
                       help=f"port, 0-65535 (default {DEFAULT_PORT}; 0 picks a free one)")
    serve.add_argument("--unix", metavar="PATH", default=None,
                       help="listen on a Unix domain socket at PATH instead (as well, with --host or --port)")
    serve.add_argument("--quic", metavar="PORT", type=_port, default=None,
                       help="serve QUIC on this UDP port too (alone, without --port or --unix); needs --tls-cert")
    serve.add_argument("--unix-mode", metavar="OCTAL", type=_octal, default=None,
                       help="permissions of the socket file, e.g. 660 (default: what the umask gives)")
    serve.add_argument("--access-log", action="store_true",
                       help="print one line per call on stdout: method, peer, status, duration")
    serve.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    serve.add_argument("--tls-key", metavar="PEM", help="its private key (if not in --tls-cert)")
    serve.add_argument("--tls-client-ca", metavar="PEM",
                       help="require client certificates signed by this CA (mutual TLS)")
    serve.add_argument("--compression", choices=_CODINGS, default=None,
                       help="compress responses so for clients that accept it and ask for no coding"
                            " the server accepts (trpc's wire; default: only when a client asks)")
    serve.add_argument("--max-concurrent-calls", type=int, default=None, metavar="N",
                       help="calls the server runs at once, all connections together (default 4096)")
    serve.add_argument("--max-incomplete-bytes", type=int, default=None, metavar="BYTES",
                       help="bytes of request messages still arriving one connection may hold (default 32 MiB)")
    serve.add_argument("--max-buffered-bytes", type=int, default=None, metavar="BYTES",
                       help="bytes of request messages waiting for their handlers, whole server (default 512 MiB)")
    serve.add_argument("--max-connections", type=int, default=None, metavar="N",
                       help="connections open at once; more are closed at once (default: 3/4 of the "
                            "descriptor limit, ulimit -n)")
    serve.add_argument("--preface-timeout", type=_seconds, default=None, metavar="S",
                       help="seconds a new connection has for its TLS handshake and trpc preface (default 10)")
    serve.add_argument("--workers", type=_workers_count, default=None, metavar="N",
                       help="serve from N worker processes on one port, supervised (auto: one per usable"
                            " CPU; default: this process alone)")
    serve.add_argument("--grace", type=float, default=10.0,
                       help="on SIGINT/SIGTERM, seconds running calls get to finish (default 10)")
    serve.add_argument("--keepalive-time", type=float, default=SERVER_KEEPALIVE_TIME, metavar="S",
                       help=f"ping a client after S s without receiving anything (default {SERVER_KEEPALIVE_TIME:g}; 0: never)")
    serve.add_argument("--keepalive-timeout", type=_seconds, default=SERVER_KEEPALIVE_TIMEOUT, metavar="S",
                       help=f"drop a client whose ping has no answer in S s (default {SERVER_KEEPALIVE_TIMEOUT:g})")
    serve.add_argument("--keepalive-min-ping-interval", type=float, default=DEFAULT_MIN_PING_INTERVAL, metavar="S",
                       help=f"ping policing: least time between a client's pings (default"
                            f" {DEFAULT_MIN_PING_INTERVAL:g}; 0: no policing)")
    serve.add_argument("--keepalive-max-ping-strikes", type=int, default=DEFAULT_MAX_PING_STRIKES, metavar="N",
                       help=f"early pings forgiven in a row (default {DEFAULT_MAX_PING_STRIKES})")
    serve.add_argument("--max-connection-idle", type=float, default=0, metavar="S",
                       help="close a connection without calls for S s (default 0: never)")
    serve.add_argument("--max-connection-age", type=float, default=0, metavar="S",
                       help="send GOAWAY to a connection S s old, so that its client reconnects (default 0: never)")
    serve.add_argument("--max-connection-age-grace", type=float, default=DEFAULT_MAX_CONNECTION_AGE_GRACE,
                       metavar="S", help=f"after that GOAWAY, seconds running calls get to finish"
                                         f" (default {DEFAULT_MAX_CONNECTION_AGE_GRACE:g})")
    return parser


_COMMANDS = {"call": _call, "list": _list, "describe": _describe, "health": _health, "serve": _serve}


async def run(args: argparse.Namespace) -> int:
    """Run the command ``args`` (from ``_parser().parse_args``) and return its exit status;
    every failure is reported in one line on stderr (the table in the module's docstring)."""
    try:
        if args.command == "proto":
            return cast(int, args.run(args))  # trpc.grpc._proto.proto_command
        if args.command == "serve":
            if args.unix_mode is not None and args.unix is None:
                raise CliError("trpc: --unix-mode needs --unix", EXIT_USAGE)
            if args.quic is not None and args.workers is not None:
                raise CliError("trpc: --quic is served by one process: not with --workers", EXIT_USAGE)
        else:
            try:
                make_resolver(args.target)
            except ValueError as exc:
                raise CliError(f"trpc: {exc}", EXIT_USAGE) from None
        if args.command == "call":
            error = _load_client_config(args)
            if error is not None:
                raise CliError(error, EXIT_USAGE)
        if args.command == "serve" and args.workers is not None:
            options = {"framer": args.framer, **_server_limits(args), **_server_lifetimes(args)}
            return await serve_command(args, options, partial(_server_tls, args) if _server_tls(args) else None)
        return await _COMMANDS[args.command](args)
    except CliError as exc:
        print(exc.line, file=sys.stderr)
        return exc.code
    except RpcError as exc:
        return _report(exc)
    except TrpcError as exc:
        print(f"trpc: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_LOCAL
    except OSError as exc:
        print(f"trpc: {exc}", file=sys.stderr)
        return EXIT_LOCAL


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("trpc").setLevel(args.log_level)
    try:
        return trio.run(run, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
