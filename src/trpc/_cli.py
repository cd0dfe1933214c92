"""The ``trpc`` command: call a method, serve a service, tell the version.

- ``trpc call ADDRESS METHOD [ARG ...]`` calls METHOD and prints each response message on its
  own line as it arrives (one line for a unary method, one per item for a streaming one).  Each
  ARG is read as JSON when it parses as JSON (``5``, ``true``, ``{"a": 1}``, ``"5"``) and is
  taken as a plain string otherwise (``Ada``).  ``--stdin`` sends each line of standard input as
  one request message instead (client- and bidi-streaming methods).  ADDRESS is ``HOST:PORT``
  or ``unix:PATH`` (a Unix domain socket; ``unix:///abs/path`` too, see trpc._address).
- ``trpc serve MODULE:SERVICE [MODULE:SERVICE ...] [--host H] [--port P] [--grace S]`` imports
  each SERVICE (a Service subclass, built with no arguments, or an instance) and serves them all
  on one server; prints ``listening on HOST:PORT (framer F)`` once ready, then one line per
  service served, ``service NAME: PATH PATH ...`` (the built-in health and reflection services
  too); on SIGINT or SIGTERM it shuts down gracefully (``Server.shutdown``).
- ``trpc serve MODULE:SERVICE --unix PATH [--unix-mode OCTAL]`` serves on a Unix domain socket
  instead (``Server.serve_unix``: a dead server's socket there is replaced, the file is removed
  on exit); given ``--host`` or ``--port`` too, it serves on both, one server, one line
  ``listening on ...`` per listener (the Unix one first).
- ``trpc serve MODULE:SERVICE --workers N`` (or ``auto``: the CPUs this process may use) serves
  one TCP port from N worker processes under a supervisor (trpc._workers: restarts, SIGHUP for
  a rolling restart, SIGTERM drains them all).
- ``trpc serve --max-connections N --preface-timeout S``: the server's admission limits
  (``Server(max_connections=..., preface_timeout=...)``).
- TLS: ``trpc serve --tls-cert PEM [--tls-key PEM] [--tls-client-ca PEM]`` and
  ``trpc call --tls-ca PEM`` (or ``--tls`` for the system's CAs) ``[--tls-cert PEM --tls-key PEM]``.
- Keepalive and connection lifetimes (docs/LIMITS.md): ``trpc serve --keepalive-time S
  --keepalive-timeout S --keepalive-min-ping-interval S --keepalive-max-ping-strikes N
  --max-connection-idle S --max-connection-age S --max-connection-age-grace S`` (0 turns off the
  ones that may be off); ``trpc call --keepalive-time S --keepalive-timeout S``.
- ``trpc health HOST:PORT [SERVICE] [--watch] [--timeout S]`` asks the server's health
  service (docs/PROTOCOL.md "Health") and prints the status (``SERVING``); ``--watch`` prints
  each change until interrupted, the server ends the watch (shutdown) or ``--timeout``
  passes.  TLS and metadata options as ``trpc call``'s.
- ``trpc call --config FILE``: a client config (docs/CONFIG.md), applied as ``open_client``
  applies it (the method's ``timeout`` unless ``--timeout`` is given).
- ``trpc --version`` prints the version and the framer in use.

Errors go to stderr as ``STATUS: message`` with exit status 1; usage errors exit with 2.
``trpc health`` is a probe, so its exit status says what it learned: 0 SERVING; 1 the server
answered anything else (NOT_SERVING, an unknown service); 2 no answer (connection failed, no
health service, timeout, any other error; and usage errors).  With ``--watch``, the last
status printed decides.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import logging
import math
import signal
import ssl
import sys
from functools import partial
from typing import Any, Sequence

import trio

from . import _cext, _framer
from ._address import Address
from .channel import make_resolver
from ._client import open_client
from ._config import ClientConfig
from ._errors import ConfigError, RpcError, TrpcError
from ._health import CHECK_METHOD, WATCH_METHOD, HealthStatus
from ._status import Status
from ._keepalive import CLIENT_KEEPALIVE_TIME, CLIENT_KEEPALIVE_TIMEOUT, SERVER_KEEPALIVE_TIME, SERVER_KEEPALIVE_TIMEOUT
from ._server import DEFAULT_HOST, DEFAULT_MAX_CONNECTION_AGE_GRACE, DEFAULT_PORT, Server
from .wire import DEFAULT_MAX_PING_STRIKES, DEFAULT_MIN_PING_INTERVAL, Connection
from ._service import Service
from ._version import __version__
from ._workers import parse_workers, serve_command

__all__ = ["main"]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return repr(value)


def format_value(value: Any, *, as_json: bool = False) -> str:
    """How ``trpc call`` prints one response: text as is, anything else as JSON."""
    if isinstance(value, str) and not as_json:
        return value
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def _parse_metadata(items: Sequence[str]) -> dict[str, str]:
    metadata = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"trpc: metadata must be KEY=VALUE, got {item!r}")
        metadata[key] = value
    return metadata


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


async def _call(args: argparse.Namespace) -> int:
    positional = [_parse_value(text) for text in args.args]
    metadata = _parse_metadata(args.metadata)
    deadline = math.inf if args.timeout is None else trio.current_time() + args.timeout
    ssl_context = _client_tls(args)
    with trio.CancelScope(deadline=deadline) as scope:
        async with open_client(
            args.target, metadata=metadata, framer=args.framer, ssl_context=ssl_context,
            keepalive_time=args.keepalive_time or None, keepalive_timeout=args.keepalive_timeout,
            **args.client_options,
        ) as client:
            # The command's own deadline (--timeout, else the config's for the method) is the
            # scope above, which reports it: the method keeps no timeout of its own.
            method = client.method(args.method).with_options(timeout=None)
            if args.stdin:
                if positional:
                    raise SystemExit("trpc: --stdin sends standard input as the request messages; give no ARGs")
                async with method.open() as stream:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_send_stdin, stream)
                        async for reply in stream:
                            print(format_value(reply, as_json=args.json), flush=True)
            else:
                async with method(*positional) as stream:
                    async for reply in stream:
                        print(format_value(reply, as_json=args.json), flush=True)
    if scope.cancelled_caught:
        print(f"DEADLINE_EXCEEDED: no answer within {args.timeout} s", file=sys.stderr)
        return 1
    return 0


#: ``trpc health`` exit statuses: what the probe learned (see the module docstring).
HEALTH_SERVING, HEALTH_NOT_SERVING, HEALTH_NO_ANSWER = 0, 1, 2


def _health_exit(status: HealthStatus) -> int:
    return HEALTH_SERVING if status is HealthStatus.SERVING else HEALTH_NOT_SERVING


async def _health(args: argparse.Namespace) -> int:
    """``trpc health``: Check (or Watch) one service's status; returns the exit status."""
    try:
        metadata = _parse_metadata(args.metadata)
    except SystemExit as exc:  # a usage error: no answer
        print(exc, file=sys.stderr)
        return HEALTH_NO_ANSWER
    deadline = math.inf if args.timeout is None else trio.current_time() + args.timeout
    last: HealthStatus | None = None
    try:
        with trio.CancelScope(deadline=deadline) as scope:
            async with open_client(
                args.target, metadata=metadata, framer=args.framer,
                ssl_context=_client_tls(args), keepalive_time=args.keepalive_time or None,
                keepalive_timeout=args.keepalive_timeout,
            ) as client:
                if not args.watch:
                    last = HealthStatus.from_wire(await client.method(CHECK_METHOD)(args.service))
                    print(last.name, flush=True)
                else:
                    async with client.method(WATCH_METHOD)(args.service) as stream:
                        async for name in stream:
                            last = HealthStatus.from_wire(name)
                            print(last.name, flush=True)
    except RpcError as exc:
        print(f"{exc.status.name}: {exc.message}", file=sys.stderr)
        return HEALTH_NOT_SERVING if exc.status is Status.NOT_FOUND else HEALTH_NO_ANSWER
    except (TrpcError, OSError, ssl.SSLError) as exc:
        print(f"trpc: {type(exc).__name__}: {exc}", file=sys.stderr)
        return HEALTH_NO_ANSWER
    if last is None:
        if scope.cancelled_caught:
            print(f"DEADLINE_EXCEEDED: no answer within {args.timeout} s", file=sys.stderr)
        else:
            print("trpc: the watch ended before the server sent a status", file=sys.stderr)
        return HEALTH_NO_ANSWER
    return _health_exit(last)


async def _send_stdin(stream: Any) -> None:
    lines = trio.wrap_file(sys.stdin)
    async for line in lines:
        line = line.rstrip("\n")
        if line and not await stream.send(_parse_value(line)):
            break
    await stream.done_sending()


def _load_service(spec: str) -> Any:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise SystemExit(f"trpc: expected MODULE:SERVICE, got {spec!r}")
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"trpc: cannot import {module_name}: {exc}") from None
    finally:
        sys.path.pop(0)
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise SystemExit(f"trpc: {module_name} has no attribute {attribute!r}") from None
    if isinstance(target, type) and issubclass(target, Service):
        return target()
    if isinstance(target, Service):
        return target
    raise SystemExit(f"trpc: {spec} is neither a trpc.Service subclass nor an instance of one")


async def _serve(args: argparse.Namespace) -> int:
    services = [_load_service(spec) for spec in args.service]
    try:
        server = Server(*services, framer=args.framer, **_server_limits(args), **_server_lifetimes(args))
    except TypeError as exc:  # two services with one name
        raise SystemExit(f"trpc: {exc}") from None
    ssl_context = _server_tls(args)
    listeners = []
    if args.unix is not None:
        listeners.append(partial(server.serve_unix, args.unix, mode=args.unix_mode, ssl_context=ssl_context))
    if args.unix is None or args.host is not None or args.port is not None:
        port = DEFAULT_PORT if args.port is None else args.port
        host = DEFAULT_HOST if args.host is None else args.host
        listeners.append(partial(server.serve_tcp, port, host, ssl_context=ssl_context))
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            for listen in listeners:
                try:
                    where = await nursery.start(listen)
                except OSError as exc:  # the port or the path is taken, or cannot be used
                    print(f"trpc: cannot listen: {exc}", file=sys.stderr)
                    nursery.cancel_scope.cancel()
                    return 1
                shown = Address.unix(where) if isinstance(where, str) else Address.tcp(*where)
                print(f"listening on {shown} (framer {server._framer.name})", flush=True)
            paths: dict[str, list[str]] = {}
            for path, info in server.methods.items():
                paths.setdefault(info.service, []).append(path)
            for name, served in paths.items():
                print(f"service {name}: {' '.join(served)}", flush=True)
            async for signum in signals:
                logging.getLogger("trpc").warning(
                    "trpc: %s: shutting down (up to %s s for running calls)", signal.Signals(signum).name, args.grace
                )
                await server.shutdown(args.grace)
                break
    return 0


#: Server(...) limits that ``trpc serve`` takes as flags (``--max-connections`` and so on).
_SERVER_LIMITS = ("max_connections", "preface_timeout", "max_concurrent_calls", "max_incomplete_bytes",
                  "max_buffered_bytes")


def _server_limits(args: argparse.Namespace) -> dict[str, Any]:
    """Server(...) limits given on the command line (the others keep Server's defaults)."""
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


def _client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """TLS for ``trpc call``: on with --tls-ca or --tls (system CAs); a client certificate for
    mutual TLS with --tls-cert/--tls-key."""
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    context = ssl.create_default_context(cafile=args.tls_ca)
    if args.tls_cert:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    return context


def _server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """TLS for ``trpc serve``: --tls-cert/--tls-key; --tls-client-ca requires client certificates
    signed by that CA (mutual TLS)."""
    if not args.tls_cert:
        if args.tls_client_ca:
            raise SystemExit("trpc: --tls-client-ca needs --tls-cert (and --tls-key)")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_client_ca:
        context.load_verify_locations(args.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _workers_count(text: str) -> int:
    try:
        return parse_workers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _octal(text: str) -> int:
    """File permissions as chmod takes them: ``660``, ``0o660``."""
    return int(text, 8)


def _add_client_options(command: argparse.ArgumentParser) -> None:
    """The options of the commands that connect to a server: metadata, TLS, keepalive."""
    command.add_argument("-m", "--metadata", action="append", default=[], metavar="KEY=VALUE",
                         help="request metadata (repeatable)")
    command.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    command.add_argument("--tls-ca", metavar="PEM", help="connect with TLS, trusting this CA bundle")
    command.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    command.add_argument("--tls-key", metavar="PEM", help="its private key (if not in --tls-cert)")
    command.add_argument("--keepalive-time", type=float, default=CLIENT_KEEPALIVE_TIME, metavar="S",
                         help=f"ping the server after S s without an answer while waiting (default"
                              f" {CLIENT_KEEPALIVE_TIME:g}; 0: never)")
    command.add_argument("--keepalive-timeout", type=float, default=CLIENT_KEEPALIVE_TIMEOUT, metavar="S",
                         help=f"give up on the server when a ping has no answer in S s"
                              f" (default {CLIENT_KEEPALIVE_TIMEOUT:g})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trpc", description="trpc: RPC for Trio")
    parser.add_argument("--version", action="version", version=_version_text())
    parser.add_argument("--log-level", default="WARNING", help="logging level for the trpc logger (default WARNING)")
    parser.add_argument("--framer", choices=["c", "python"], default=None,
                        help="frame scanner (default: $TRPC_FRAMER, else c)")
    commands = parser.add_subparsers(dest="command", required=True)

    call = commands.add_parser("call", help="call a method and print the responses")
    call.add_argument("target", metavar="ADDRESS", help="HOST:PORT, or unix:PATH for a Unix domain socket")
    call.add_argument("method", metavar="METHOD")
    call.add_argument("args", nargs="*", metavar="ARG", help="arguments: JSON if they parse, else text")
    call.add_argument("--timeout", type=float, default=None,
                      help="deadline for the whole call, in seconds (default: the --config method's timeout)")
    call.add_argument("--config", metavar="FILE",
                      help="client config, JSON (docs/CONFIG.md): the method's timeout and maxResponseMessageBytes apply")
    call.add_argument("--json", action="store_true", help="print text responses as JSON strings too")
    call.add_argument("--stdin", action="store_true",
                      help="send each line of standard input as a request message (streaming methods)")
    _add_client_options(call)

    health = commands.add_parser(
        "health", help="check a server's health service; exit 0 SERVING, 1 anything else, 2 no answer"
    )
    health.add_argument("target", metavar="HOST:PORT")
    health.add_argument("service", metavar="SERVICE", nargs="?", default="",
                        help='the service to check (default "": the whole server)')
    health.add_argument("--watch", action="store_true",
                        help="print the status, then each change, until interrupted or the server ends the watch")
    health.add_argument("--timeout", type=float, default=None,
                        help="deadline for the answer, in seconds (with --watch: for the whole watch)")
    _add_client_options(health)

    serve = commands.add_parser("serve", help="serve a trpc.Service over TCP or a Unix domain socket")
    serve.add_argument("service", metavar="MODULE:SERVICE", nargs="+",
                       help="the services to serve, each a Service subclass or instance")
    serve.add_argument("--host", default=None, help=f"address to listen on (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=None, help=f"port (default {DEFAULT_PORT}; 0 picks one)")
    serve.add_argument("--unix", metavar="PATH", default=None,
                       help="listen on a Unix domain socket at PATH instead (as well, with --host or --port)")
    serve.add_argument("--unix-mode", metavar="OCTAL", type=_octal, default=None,
                       help="permissions of the socket file, e.g. 660 (default: what the umask gives)")
    serve.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    serve.add_argument("--tls-key", metavar="PEM", help="its private key (if not in --tls-cert)")
    serve.add_argument("--tls-client-ca", metavar="PEM",
                       help="require client certificates signed by this CA (mutual TLS)")
    serve.add_argument("--max-concurrent-calls", type=int, default=None, metavar="N",
                       help="calls the server runs at once, all connections together (default 4096)")
    serve.add_argument("--max-incomplete-bytes", type=int, default=None, metavar="BYTES",
                       help="bytes of request messages still arriving one connection may hold (default 32 MiB)")
    serve.add_argument("--max-buffered-bytes", type=int, default=None, metavar="BYTES",
                       help="bytes of request messages waiting for their handlers, whole server (default 512 MiB)")
    serve.add_argument("--max-connections", type=int, default=None, metavar="N",
                       help="connections open at once; more are closed at once (default: 3/4 of the "
                            "descriptor limit, ulimit -n)")
    serve.add_argument("--preface-timeout", type=float, default=None, metavar="S",
                       help="seconds a new connection has for its TLS handshake and trpc preface (default 10)")
    serve.add_argument("--workers", type=_workers_count, default=None, metavar="N",
                       help="serve from N worker processes on one port, supervised (auto: one per usable"
                            " CPU; default: this process alone)")
    serve.add_argument("--grace", type=float, default=10.0,
                       help="on SIGINT/SIGTERM, seconds running calls get to finish (default 10)")
    serve.add_argument("--keepalive-time", type=float, default=SERVER_KEEPALIVE_TIME, metavar="S",
                       help=f"ping a client after S s without receiving anything (default {SERVER_KEEPALIVE_TIME:g}; 0: never)")
    serve.add_argument("--keepalive-timeout", type=float, default=SERVER_KEEPALIVE_TIMEOUT, metavar="S",
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("trpc").setLevel(args.log_level.upper())
    try:
        if args.command in ("call", "health"):
            try:
                make_resolver(args.target)
            except ValueError as exc:
                parser.error(str(exc))
            if args.command == "health":
                return trio.run(_health, args)
            error = _load_client_config(args)
            if error is not None:
                print(error, file=sys.stderr)
                return 2
            return trio.run(_call, args)
        if args.unix_mode is not None and args.unix is None:
            parser.error("--unix-mode needs --unix")
        if args.workers is not None:
            options = {"framer": args.framer, **_server_limits(args), **_server_lifetimes(args)}
            return serve_command(args, options, partial(_server_tls, args) if _server_tls(args) else None)
        return trio.run(_serve, args)
    except RpcError as exc:
        print(f"{exc.status.name}: {exc.message}", file=sys.stderr)
        return 1
    except TrpcError as exc:
        print(f"trpc: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
