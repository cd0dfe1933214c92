"""Every core of a host: one port served by several worker processes, under a supervisor.

``trpc.serve_workers(factory, port=..., workers=N)`` (``trpc serve MODULE:SERVICE --workers N``)
runs a *supervisor* in the calling process and N *workers*, each a separate Python process with
its own Trio run and its own :class:`~trpc.Server` built from ``factory``.  One Python process
serves on one core; processes share nothing, so N of them serve on N cores.

Theory of operation
-------------------
**Processes.**  Workers are started as new interpreters (``python -c`` running
:func:`_worker_main`), never forked from the supervisor: the supervisor runs Trio, which keeps
threads, and a fork of a process with threads may copy a lock some other thread held.  A new
interpreter imports the application itself, so ``factory`` travels as a description: a
``"module:attribute"`` spec, or a callable pickled by reference (a function or class defined in
a module the workers can import; one defined in the script run as ``__main__`` is found again in
the worker by running that script under another name, as ``multiprocessing``'s spawn does, so
the script must keep its ``serve_workers`` call under ``if __name__ == "__main__"``).  The
supervisor sends each worker its settings, pickled, on the worker's standard input, which it
then keeps open: a worker that reads end-of-file there has lost its supervisor (even to
SIGKILL) and shuts down as on SIGTERM, so workers never outlive it for long.  The worker
answers on a pipe of its own, one line: ``ready`` once it accepts connections, or ``error``
and the reason (a module that does not import, a port it cannot bind).  Workers log to standard
error with ``[worker PID]`` in every line; the supervisor names the pid in each of its lines.

**Sockets.**  On Linux (and DragonFly BSD; FreeBSD through ``SO_REUSEPORT_LB``) each worker
binds its own listening socket with ``SO_REUSEPORT``, and the kernel spreads new connections
over the listeners by a hash of the connection's addresses.  Before any worker starts, the
supervisor binds the address itself, without ``SO_REUSEPORT`` and without listening: that bind
fails if anything listens there already (a port in use is reported before any process starts,
and a second ``--workers`` server of the same user cannot silently join the first one's group),
it picks the port when asked for port 0, and the supervisor holds it for its whole life.
Elsewhere (macOS and the other BSDs, whose ``SO_REUSEPORT`` does not balance) the supervisor
opens one listening socket and every worker inherits it and accepts from its one queue.
What ``SO_REUSEPORT`` cannot do: a connection the kernel has queued on one worker's listener
stays there, and is reset when that listener closes (a worker killed, or one draining, in the
instant between its last accept and its close).  A trpc client counts that as a failed connection
attempt and reconnects after its connection backoff; Linux 5.14's ``net.ipv4.tcp_migrate_req=1``
moves such connections to another listener instead.

**Signals.**  SIGTERM or SIGINT to the supervisor: every worker gets SIGTERM and does what
``trpc serve`` does on SIGTERM (``Server.shutdown``: health NOT_SERVING, stop accepting, GOAWAY,
``grace`` seconds for running calls, then cancel); a worker still running ``STOP_MARGIN``
seconds after the grace is killed.  Workers ignore SIGINT and SIGHUP themselves (a Ctrl-C or a
terminal hang-up reaches the whole process group): the supervisor decides.  SIGHUP: a rolling
restart, one worker at a time: a new worker is started and accepts *before* the old one of its
slot gets SIGTERM, and the old one has drained and exited before the next slot is replaced, so
there are never fewer than N workers accepting and never more than N + 1 processes.  With
``SO_REUSEPORT`` the kernel sends new connections to the new listener as well; the old
worker's GOAWAY tells its clients to reconnect, and a trpc client (a channel, docs/CHANNELS.md)
moves there and retries the calls the old worker refused without running them, so a deploy
loses no call.  A new worker that cannot start (the deploy broke the code) leaves the old ones
serving and the restart stops there, logged.

**Restarts.**  A worker that exits when nobody asked it to (a crash, the OOM killer, SIGKILL)
is started again in its slot, and the death is logged with its cause.  The first restart is
immediate, so one crash costs the host one worker for the time a worker takes to start.  A
worker that dies again before ``STABLE_AFTER`` seconds of serving waits before its next start:
``RESTART_BACKOFF`` seconds, doubling each time, up to ``RESTART_BACKOFF_MAX``; a worker that
served longer starts the count afresh.  A worker that never says ``ready`` within
``start_timeout`` seconds is killed and counts as a failed start.  At the supervisor's own start
there is no retry: if any worker cannot start, the others are stopped and ``serve_workers``
raises :class:`~trpc.WorkerStartError` with the worker's one-line reason (a bad module path or
a port in use fails the same way every time).

Health and reflection: each worker's ``Server`` serves them as a single server does.  Limits:
docs/LIMITS.md.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import pickle
import runpy
import signal
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import trio

from ._errors import WorkerStartError
from ._server import DEFAULT_HOST, DEFAULT_PORT, Server
from ._service import Service

__all__ = [
    "serve_workers",
    "serve_command",
    "parse_workers",
    "usable_cpus",
    "RestartPolicy",
    "DEFAULT_START_TIMEOUT",
    "RESTART_BACKOFF",
    "RESTART_BACKOFF_MAX",
    "STABLE_AFTER",
    "STOP_MARGIN",
]

logger = logging.getLogger("trpc")

#: Seconds a starting worker has to import the application, build its services and bind its
#: socket before it counts as failed (``start_timeout``): far longer than an ordinary
#: application takes on a loaded machine, short enough that a worker hung in its factory
#: (waiting for a database, say) is reported within half a minute rather than never.
DEFAULT_START_TIMEOUT = 30.0
#: The wait before the second start of a worker that keeps dying; it doubles with each death.
#: The first restart is immediate (one crash should cost seconds of one worker, not more); from
#: the second, half a second already turns a crash loop into at most two starts a second.
RESTART_BACKOFF = 0.5
#: The longest wait between starts of a worker that keeps dying: 30 s, so that a worker broken
#: for good costs one start (an import, a log line) every half minute, while a fault that clears
#: (a dependency back up) is noticed within half a minute.
RESTART_BACKOFF_MAX = 30.0
#: A worker that served this long before it died starts the backoff afresh: 10 s is longer than
#: a start plus a crash on the first calls (a bad deploy), and short enough that a rare crash is
#: always restarted at once.
STABLE_AFTER = 10.0
#: After the grace of a shutdown, seconds a worker has to close its connections and exit before
#: the supervisor kills it: ``Server.shutdown`` itself takes up to 2 s more to close connections
#: after the grace; 5 s leaves room for that on a loaded machine.
STOP_MARGIN = 5.0
#: A status line from a starting worker is never longer than this (a reason, one line).
_MAX_STATUS = 65536
#: Set in every worker's environment (to its slot number): ``serve_workers`` refuses to run
#: there, so a script that forgot its ``__main__`` guard cannot start workers without end.
_WORKER_VARIABLE = "TRPC_WORKER"
#: What a worker process runs (``python -c``); its arguments follow as KEY=VALUE words, so
#: that ``ps`` shows whose worker it is.
_BOOT = "from trpc._workers import _worker_main; _worker_main()"


def usable_cpus() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity``: a container's or a
    ``taskset``'s limit, not the machine's count), where the platform says; else the count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_workers(text: str | int) -> int:
    """``--workers``: a count of at least 1, or ``auto`` (:func:`usable_cpus`)."""
    if text == "auto":
        return usable_cpus()
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"expected a number of workers or 'auto', got {text!r}") from None
    if count < 1:
        raise ValueError(f"workers must be at least 1, got {count}")
    return count


class RestartPolicy:
    """When to start a slot's worker again after the last one died (see the module's docstring:
    at once, then ``RESTART_BACKOFF`` doubling up to ``RESTART_BACKOFF_MAX``, afresh after
    ``STABLE_AFTER`` seconds of serving)."""

    def __init__(self) -> None:
        #: Deaths (and failed starts) in a row, each soon after its start.
        self.failures = 0

    def next_delay(self, served: float | None) -> float:
        """Seconds to wait before the next start, given how long the worker that just died
        had served (``None``: it never started)."""
        if served is not None and served >= STABLE_AFTER:
            self.failures = 0
        delay = 0.0 if not self.failures else min(RESTART_BACKOFF_MAX, RESTART_BACKOFF * 2.0 ** min(self.failures - 1, 16))
        self.failures += 1
        return delay


# ---------------------------------------------------------------------------- the factory
@dataclass(frozen=True)
class _Spec:
    """A ``"module:attribute"`` spec, resolved in the worker."""

    text: str


@dataclass(frozen=True)
class _MainRef:
    """A function or class of the script run as ``__main__``: the worker runs the script
    (by ``path``, or ``module`` for ``python -m``) under another name and takes ``qualname``."""

    qualname: str
    path: str | None = None
    module: str | None = None


def _pack_factory(factory: Any) -> list[Any]:
    """``factory`` as what travels to the workers: a list of specs, main-script references and
    pickled callables (see the module's docstring).  Raises TypeError for what cannot travel."""
    items = list(factory) if isinstance(factory, (list, tuple)) else [factory]
    if not items:
        raise TypeError("serve_workers needs a factory (or a spec) for at least one service")
    packed: list[Any] = []
    for item in items:
        if isinstance(item, str):
            module, sep, attribute = item.partition(":")
            if not sep or not module or not attribute:
                raise TypeError(f"expected MODULE:ATTRIBUTE, got {item!r}")
            packed.append(_Spec(item))
        elif not callable(item):
            raise TypeError(f"a factory is a callable or a 'module:attribute' spec, got {item!r}")
        elif getattr(item, "__module__", None) == "__main__" and "<" not in getattr(item, "__qualname__", "<"):
            main = sys.modules["__main__"]
            spec = getattr(main, "__spec__", None)
            if spec is not None and spec.name:
                packed.append(_MainRef(item.__qualname__, module=spec.name))
            elif getattr(main, "__file__", None):
                assert main.__file__ is not None  # (the test above)
                packed.append(_MainRef(item.__qualname__, path=os.path.abspath(main.__file__)))
            else:
                raise TypeError(f"{item!r} is defined where no worker can find it (interactively): define it in a module")
        else:
            try:
                packed.append(pickle.dumps(item))
            except Exception as exc:
                raise TypeError(f"the factory {item!r} cannot be sent to the workers: {exc}") from None
    return packed


def _resolve(qualname: str, namespace: Any, where: str) -> Any:
    target = namespace
    for part in qualname.split("."):
        try:
            target = target[part] if isinstance(target, dict) else getattr(target, part)
        except (AttributeError, KeyError):
            raise _StartFailure(f"{where} has no attribute {qualname!r}") from None
    return target


def _services_from(target: Any, name: str) -> list[Service]:
    """What one factory item gives: a Service instance as is; a Service subclass or any other
    callable called with no arguments, giving a service or an iterable of them."""
    if isinstance(target, Service):
        return [target]
    if not callable(target):
        raise _StartFailure(f"{name} is neither a trpc.Service, a subclass of one, nor a callable that returns services")
    try:
        made = target()
    except Exception as exc:
        logger.debug("trpc: %s() raised", name, exc_info=True)
        raise _StartFailure(f"{name}() raised {type(exc).__name__}: {exc}") from None
    services = [made] if isinstance(made, Service) else list(made) if isinstance(made, (list, tuple)) else None
    if not services or not all(isinstance(service, Service) for service in services):
        raise _StartFailure(f"{name}() returned {made!r}, not a trpc.Service or a list of them")
    return services


def _build_services(packed: list[Any]) -> list[Service]:
    """In a worker: build the services that ``_pack_factory`` described."""
    services: list[Service] = []
    for item in packed:
        if isinstance(item, _Spec):
            module_name, _, attribute = item.text.partition(":")
            sys.path.insert(0, ".")  # as ``trpc serve`` imports: from the current directory too
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # ImportError, or whatever the module raised on import
                raise _StartFailure(f"cannot import {module_name}: {exc}") from None
            finally:
                sys.path.pop(0)
            services += _services_from(_resolve(attribute, module, module_name), item.text)
        elif isinstance(item, _MainRef):
            try:
                if item.module is not None:
                    namespace: Any = importlib.import_module(item.module)
                else:
                    assert item.path is not None  # a _MainRef has a module or a path
                    namespace = runpy.run_path(item.path, run_name="__trpc_worker__")
            except Exception as exc:
                raise _StartFailure(f"cannot run {item.module or item.path}: {type(exc).__name__}: {exc}") from None
            where = item.module or item.path
            assert where is not None  # as above
            services += _services_from(_resolve(item.qualname, namespace, where), item.qualname)
        else:
            try:
                target = pickle.loads(item)
            except Exception as exc:
                raise _StartFailure(f"cannot load the factory: {type(exc).__name__}: {exc}") from None
            services += _services_from(target, getattr(target, "__qualname__", repr(target)))
    return services


class _StartFailure(Exception):
    """Why a worker cannot start, in one line (sent to the supervisor)."""


# ---------------------------------------------------------------------------- sockets
def _balancing_option() -> int | None:
    """The socket option under which the kernel spreads connections over several listeners of
    one port, where there is one (see the module's docstring)."""
    if sys.platform.startswith(("linux", "dragonfly")):
        return getattr(socket, "SO_REUSEPORT", None)
    if sys.platform.startswith("freebsd"):
        return getattr(socket, "SO_REUSEPORT_LB", None)
    return None


def _format(sockaddr: tuple[Any, ...]) -> str:
    host, port = sockaddr[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _new_socket(family: int, option: int | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restarts despite TIME_WAIT
        if option is not None:
            sock.setsockopt(socket.SOL_SOCKET, option, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as Trio's listeners
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class _Listening:
    """Where the workers listen: ``addresses`` to bind each with ``option`` (SO_REUSEPORT), or
    the inherited listening sockets ``fds``."""

    addresses: list[tuple[int, tuple[Any, ...]]]
    option: int | None
    fds: list[int] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return self.addresses[0][1][:2]

    def where(self) -> str:
        return ", ".join(_format(sockaddr) for _, sockaddr in self.addresses)

    def open_listeners(self) -> list[trio.SocketListener]:
        """In a worker: its listeners (bound now, or the inherited ones)."""
        sockets = []
        try:
            if self.fds:
                sockets = [socket.socket(fileno=fd) for fd in self.fds]
            else:
                for family, sockaddr in self.addresses:
                    sock = _new_socket(family, self.option)
                    sockets.append(sock)
                    try:
                        sock.bind(sockaddr)
                        sock.listen(_BACKLOG)
                    except OSError as exc:
                        raise _StartFailure(f"cannot listen on {_format(sockaddr)}: {exc.strerror or exc}") from None
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]


#: Listen backlog: as deep as the kernel allows (it caps the value at ``somaxconn``), as Trio's
#: listeners do: a queue the workers drain fast costs nothing, a short one refuses bursts.
_BACKLOG = 0xFFFF


def _open_sockets(host: str | None, port: int, share: bool | None) -> tuple[list[socket.socket], _Listening]:
    """In the supervisor: the sockets it holds and what the workers are told (see the module's
    docstring).  ``share``: True binds one listener per worker with SO_REUSEPORT, False has the
    workers inherit one listener, None picks what the platform balances.  Raises
    WorkerStartError (a port in use, an address that does not resolve)."""
    option = _balancing_option()
    if share and option is None:
        raise WorkerStartError(f"this platform ({sys.platform}) has no socket option that balances one port")
    if share is False:
        option = None
    where = f"{host}:{port}" if host is not None else f"*:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise WorkerStartError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    held: list[socket.socket] = []
    addresses: list[tuple[int, tuple[Any, ...]]] = []
    try:
        for family, _type, _proto, _name, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6) or any(sockaddr == a for _, a in addresses):
                continue
            if addresses and port == 0:  # every address on the port the first one got
                sockaddr = (sockaddr[0], addresses[0][1][1], *sockaddr[2:])
            sock = _new_socket(family, None)
            held.append(sock)
            try:
                sock.bind(sockaddr)
                if option is None:
                    sock.listen(_BACKLOG)
            except OSError as exc:
                raise WorkerStartError(f"cannot listen on {_format(sockaddr)}: {exc.strerror or exc}") from None
            addresses.append((family, sock.getsockname()))
    except BaseException:
        for sock in held:
            sock.close()
        raise
    if not addresses:
        raise WorkerStartError(f"cannot listen on {where}: no IPv4 or IPv6 address")
    listening = _Listening(addresses, option)
    if option is None:
        listening.fds = [sock.fileno() for sock in held]
    return held, listening


# ---------------------------------------------------------------------------- the worker
@dataclass
class _Settings:
    """What the supervisor tells a worker (pickled on its standard input).  Only trpc's and the
    standard library's types: it is read before ``sys_path`` is applied; ``payload`` (the
    factory, the server's options, the TLS context's factory) is unpickled after."""

    sys_path: list[str]
    log_level: int
    grace: float
    listening: _Listening
    payload: bytes


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError(f"the supervisor sent {len(data)} of {size} bytes")
        data += chunk
    return data


def _worker_main() -> None:
    """A worker process (see the module's docstring).  Exits 0 after a shutdown, 3 when it
    could not start (the reason went to the supervisor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    words = {key: value for key, _, value in (word.partition("=") for word in sys.argv[2:])}
    status = os.fdopen(int(words["status-fd"]), "wb", buffering=0)
    try:
        (size,) = struct.unpack("!Q", _read_exactly(0, 8))
        settings: _Settings = pickle.loads(_read_exactly(0, size))
    except (EOFError, OSError, pickle.UnpicklingError):
        sys.exit(3)  # the supervisor is gone already: nobody to tell
    logging.basicConfig(format="%(asctime)s %(levelname)s [worker %(process)d] %(message)s")
    logging.getLogger("trpc").setLevel(settings.log_level)
    sys.path[:] = settings.sys_path
    try:
        try:
            factory, options, ssl_factory = pickle.loads(settings.payload)
        except Exception as exc:
            raise _StartFailure(f"cannot load the server's settings: {type(exc).__name__}: {exc}") from None
        services = _build_services(factory)
        try:
            server = Server(*services, **options)
            ssl_context = ssl_factory() if ssl_factory is not None else None
        except Exception as exc:
            raise _StartFailure(f"{type(exc).__name__}: {exc}") from None
        listeners = settings.listening.open_listeners()
    except _StartFailure as exc:
        status.write(b"error " + " ".join(str(exc).split()).encode(errors="replace") + b"\n")
        sys.exit(3)
    code = trio.run(_serve_worker, server, listeners, ssl_context, settings.grace, status)
    sys.exit(code)


async def _serve_worker(
    server: Server, listeners: list[trio.SocketListener], ssl_context: Any, grace: float, status: Any
) -> int:
    """Serve until SIGTERM or the supervisor's end, then shut down as ``trpc serve`` does."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(server.serve_listeners, listeners, ssl_context=ssl_context))
            status.write(b"ready\n")
            status.close()
            reason = await _stop_requested(signals)
            logger.info("trpc: %s: shutting down (up to %s s for running calls)", reason, grace)
            await server.shutdown(grace)
    # Drained: a second SIGTERM (the supervisor's, after a group's) has nothing left to stop.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return 0


async def _stop_requested(signals: Any) -> str:
    """Wait for SIGTERM, or for end-of-file on standard input (the supervisor is gone); say which."""
    reason = ""
    supervisor = trio.lowlevel.FdStream(os.dup(0))
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            nonlocal reason
            async for signum in signals:
                reason = signal.Signals(signum).name
                break
            nursery.cancel_scope.cancel()

        async def on_supervisor_gone() -> None:
            nonlocal reason
            while await supervisor.receive_some(4096):  # it never writes: this waits for the end
                pass
            reason = "the supervisor is gone"
            nursery.cancel_scope.cancel()

        nursery.start_soon(on_signal)
        nursery.start_soon(on_supervisor_gone)
    await supervisor.aclose()
    return reason


# ---------------------------------------------------------------------------- the supervisor
def _exit_text(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass(eq=False)
class _Worker:
    slot: int
    process: trio.Process
    #: When it said ready (trio.current_time()), for the restart policy.
    ready_at: float = math.inf
    #: Asked to stop (replaced or shutting down): its exit is expected.
    retiring: bool = False


class _Supervisor:
    """Starts, watches and replaces the workers (see the module's docstring)."""

    def __init__(self, count: int, settings: bytes, fds: list[int], start_timeout: float, grace: float) -> None:
        self.count = count
        self.settings = settings
        self.fds = fds
        self.start_timeout = start_timeout
        self.grace = grace
        #: The worker serving in each slot (None while one is being started again).
        self.slots: list[_Worker | None] = [None] * count
        #: Every worker process alive, serving, starting or draining.
        self.alive: set[_Worker] = set()
        self.policies = [RestartPolicy() for _ in range(count)]
        #: Held while a slot's worker is being replaced (a restart, a rolling restart).
        self.slot_locks = [trio.Lock() for _ in range(count)]
        self.stopping = False
        self.stop_requested = trio.Event()
        self.roll_requested = False
        self.rolling = False
        self.nursery: trio.Nursery | None = None

    def name(self, worker: _Worker) -> str:
        return f"worker {worker.slot + 1}/{self.count} (pid {worker.process.pid})"

    # ------------------------------------------------------------------ one worker
    async def start(self, slot: int) -> _Worker:
        """Start a worker in ``slot`` and wait until it accepts; watched from then on.  Raises
        WorkerStartError with its reason; a worker that failed is killed and waited for."""
        read_fd, write_fd = os.pipe()
        try:
            argv = [sys.executable, "-c", _BOOT, "trpc-worker", f"supervisor={os.getpid()}", f"slot={slot + 1}",
                    f"status-fd={write_fd}"]
            env = {**os.environ, _WORKER_VARIABLE: str(slot + 1)}
            process = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, pass_fds=(write_fd, *self.fds), env=env)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        worker = _Worker(slot, process)
        self.alive.add(worker)
        status = trio.lowlevel.FdStream(read_fd)
        try:
            line = b""
            with trio.move_on_after(self.start_timeout) as timer:
                try:
                    assert process.stdin is not None  # opened with stdin=subprocess.PIPE
                    await process.stdin.send_all(struct.pack("!Q", len(self.settings)) + self.settings)
                except trio.BrokenResourceError:
                    pass  # it died already: its status pipe says how
                while not line.endswith(b"\n") and len(line) < _MAX_STATUS:
                    chunk = await status.receive_some(_MAX_STATUS)
                    if not chunk:
                        break
                    line += chunk
            text = line.decode(errors="replace").strip()
            if text == "ready":
                worker.ready_at = trio.current_time()
                assert self.nursery is not None  # _supervise sets it before any worker starts
                self.nursery.start_soon(self._watch, worker)
                return worker
            if timer.cancelled_caught:
                raise WorkerStartError(f"a worker did not start within {self.start_timeout:g} s (start_timeout)")
            if text.startswith("error "):
                raise WorkerStartError(text[len("error "):])
            with trio.move_on_after(5):
                await process.wait()
            raise WorkerStartError(f"a worker exited before it was ready ({_exit_text(process.returncode)})")
        except BaseException:
            await self._kill(worker)
            raise
        finally:
            await status.aclose()

    async def _kill(self, worker: _Worker) -> None:
        with trio.CancelScope(shield=True):
            if worker.process.returncode is None:
                worker.process.kill()
            with trio.move_on_after(10):
                await worker.process.wait()
            await self._forget(worker)

    async def _forget(self, worker: _Worker) -> None:
        self.alive.discard(worker)
        if worker.process.stdin is not None:
            await trio.aclose_forcefully(worker.process.stdin)

    async def _watch(self, worker: _Worker) -> None:
        """Wait for the worker's end; start another in its slot unless its end was asked for."""
        await worker.process.wait()
        await self._forget(worker)
        how = _exit_text(worker.process.returncode)
        if worker.retiring or self.stopping:
            logger.info("trpc: %s exited (%s)", self.name(worker), how)
            return
        if self.slots[worker.slot] is worker:
            self.slots[worker.slot] = None
        delay = self.policies[worker.slot].next_delay(trio.current_time() - worker.ready_at)
        logger.warning("trpc: %s died (%s); starting another %s", self.name(worker), how,
                       f"in {delay:g} s" if delay else "now")
        assert self.nursery is not None  # _supervise sets it before any worker starts
        self.nursery.start_soon(self._restart, worker.slot, delay)

    async def _restart(self, slot: int, delay: float) -> None:
        """Start a worker in ``slot`` after ``delay``, again with backoff until one starts."""
        while not self.stopping:
            await trio.sleep(delay)
            async with self.slot_locks[slot]:
                if self.stopping or self.slots[slot] is not None:
                    return
                try:
                    worker = await self.start(slot)
                except WorkerStartError as exc:
                    delay = self.policies[slot].next_delay(None)
                    logger.error("trpc: worker %d/%d could not start: %s; trying again in %g s",
                                 slot + 1, self.count, exc, delay)
                    continue
                self.slots[slot] = worker
                logger.info("trpc: %s started", self.name(worker))
                return

    async def _retire(self, worker: _Worker) -> None:
        """SIGTERM ``worker`` and wait for it to drain (the grace, then STOP_MARGIN: killed)."""
        worker.retiring = True
        if worker.process.returncode is None:
            worker.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.grace + STOP_MARGIN):
            await worker.process.wait()
        if worker.process.returncode is None:
            logger.warning("trpc: %s still running %g s after its grace: killing it", self.name(worker),
                           STOP_MARGIN)
            await self._kill(worker)

    # ------------------------------------------------------------------ all of them
    async def start_all(self) -> None:
        """Start every slot's worker side by side; if one cannot start, stop the others and
        raise WorkerStartError with its reason."""
        failures: list[WorkerStartError] = []

        async def one(slot: int) -> None:
            try:
                self.slots[slot] = await self.start(slot)
            except WorkerStartError as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for slot in range(self.count):
                nursery.start_soon(one, slot)
        if failures:
            await self.stop()
            raise failures[0]

    async def roll(self) -> None:
        """SIGHUP: replace the workers one at a time (see the module's docstring); another
        SIGHUP meanwhile makes one more round once this one is over."""
        self.rolling = True
        try:
            while self.roll_requested and not self.stopping:
                self.roll_requested = False
                logger.info("trpc: SIGHUP: restarting %d workers one at a time", self.count)
                for slot in range(self.count):
                    async with self.slot_locks[slot]:
                        old = self.slots[slot]
                        if self.stopping or old is None:  # None: a restart is under way anyway
                            continue
                        try:
                            new = await self.start(slot)
                        except WorkerStartError as exc:
                            logger.error("trpc: SIGHUP: a new worker %d/%d could not start: %s; the old"
                                         " workers keep serving", slot + 1, self.count, exc)
                            break
                        self.slots[slot] = new
                        logger.info("trpc: %s started; draining %s", self.name(new), self.name(old))
                        await self._retire(old)
        finally:
            self.rolling = False

    def request_roll(self) -> None:
        self.roll_requested = True
        if not self.rolling:
            assert self.nursery is not None  # _supervise sets it before any worker starts
            self.nursery.start_soon(self.roll)

    async def stop(self) -> None:
        """Drain every worker at once (the grace, then killed after STOP_MARGIN)."""
        self.stopping = True
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for worker in list(self.alive):
                    nursery.start_soon(self._retire, worker)

    async def handle_signals(self, signals: Any, starting: trio.CancelScope) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                if self.slots and all(worker is not None for worker in self.slots) or self.rolling:
                    self.request_roll()
                else:
                    logger.warning("trpc: SIGHUP while workers are starting: ignored")
                continue
            logger.info("trpc: %s: shutting down %d workers (up to %s s for running calls)",
                           signal.Signals(signum).name, len(self.alive), self.grace)
            starting.cancel()
            self.stop_requested.set()


async def serve_workers(
    factory: Any,
    *,
    port: int = DEFAULT_PORT,
    host: str | None = DEFAULT_HOST,
    workers: int | str = "auto",
    grace: float = 10.0,
    ssl_context_factory: Callable[[], Any] | None = None,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    reuse_port: bool | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve on ``host``:``port`` with ``workers`` processes under this one, until SIGTERM or
    SIGINT (or cancellation), which drain them all; SIGHUP restarts them one at a time.  See
    the module trpc._workers for how, and docs/LIMITS.md for the timeouts.

    Run it in the main thread (it handles signals)::

        trio.run(partial(trpc.serve_workers, "app:Greeter", port=50051, workers=4))

    Args:
        factory: what each worker serves, built in the worker: a ``"module:attribute"`` spec
            (a Service subclass, built with no arguments; a Service instance; or a callable
            returning services), a picklable callable returning a service or a list of them
            (a function or class of an importable module, or of the script run as
            ``__main__``), or a list of these.
        port: 0 picks a free one, the same for every worker.
        workers: a count, or ``"auto"``: the CPUs this process may use
            (``os.sched_getaffinity``).
        grace: seconds running calls get when a worker shuts down (``Server.shutdown``).
        ssl_context_factory: a picklable callable each worker calls for its
            ``ssl.SSLContext`` (contexts themselves cannot travel), for TLS.
        start_timeout: seconds a starting worker has to accept before it counts as failed.
        reuse_port: True: one listener per worker with SO_REUSEPORT; False: one listener the
            workers inherit; None (default): SO_REUSEPORT where the kernel balances with it.
        options: :class:`~trpc.Server`'s keyword arguments (picklable).

    ``task_status.started`` reports the ``(host, port)`` listened on, once every worker accepts.

    Raises:
        WorkerStartError: the workers could not start (the one-line reason of the first that
            failed; the others were stopped), or the address cannot be listened on.
        TypeError, ValueError: a factory that cannot travel, bad options.
        RuntimeError: called inside a worker (a script without its ``__main__`` guard).
    """
    if os.environ.get(_WORKER_VARIABLE):
        raise RuntimeError("serve_workers was called inside a worker: keep it under if __name__ == '__main__'")
    count = parse_workers(workers)
    packed = _pack_factory(factory)
    Server(Service(), **options)  # bad options fail here, once, not in every worker
    try:
        payload = pickle.dumps((packed, options, ssl_context_factory))
    except Exception as exc:
        raise TypeError(f"the server's options cannot be sent to the workers: {exc}") from None
    held, listening = _open_sockets(host, port, reuse_port)
    try:
        settings = _Settings(list(sys.path), logger.getEffectiveLevel(), grace, listening, payload)
        supervisor = _Supervisor(count, pickle.dumps(settings), listening.fds, start_timeout, grace)
        await _supervise(supervisor, listening, task_status)
    finally:
        for sock in held:
            sock.close()


async def _supervise(supervisor: _Supervisor, listening: _Listening, task_status: Any) -> None:
    failure: WorkerStartError | None = None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            supervisor.nursery = nursery
            starting = trio.CancelScope()
            nursery.start_soon(supervisor.handle_signals, signals, starting)
            try:
                with starting:
                    try:
                        await supervisor.start_all()
                    except WorkerStartError as exc:
                        failure = exc
                if failure is None and not supervisor.stop_requested.is_set():
                    pids = " ".join(str(w.process.pid) for w in supervisor.slots if w is not None)
                    logger.info("trpc: %d workers listening on %s (pids %s)", supervisor.count, listening.where(), pids)
                    task_status.started(listening.address)
                    await supervisor.stop_requested.wait()
            finally:
                await supervisor.stop()
                nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def serve_command(args: Any, options: dict[str, Any], ssl_context_factory: Callable[[], Any] | None) -> int:
    """``trpc serve MODULE:SERVICE --workers N`` (trpc._cli): prints ``listening on HOST:PORT``
    once every worker accepts, serves until SIGTERM or SIGINT; the exit status, with a one-line
    reason on stderr when the workers cannot start."""
    if args.unix is not None:
        print("trpc: --workers serves TCP only (not --unix)", file=sys.stderr)
        return 2
    port = DEFAULT_PORT if args.port is None else args.port
    host = DEFAULT_HOST if args.host is None else args.host

    async def main() -> str | None:
        """Serve; the reason the workers could not start, or None after a shutdown."""
        async with trio.open_nursery() as nursery:
            try:
                where = await nursery.start(partial(
                    serve_workers, args.service, port=port, host=host, workers=args.workers, grace=args.grace,
                    ssl_context_factory=ssl_context_factory, **options,
                ))
            except (WorkerStartError, TypeError, ValueError) as exc:  # raised before it started: alone
                return str(exc)
            shown = f"[{where[0]}]:{where[1]}" if ":" in where[0] else f"{where[0]}:{where[1]}"
            services = args.service if isinstance(args.service, str) else ", ".join(args.service)
            print(f"listening on {shown} ({services}, {args.workers} workers)", flush=True)
        return None

    failure = await main()
    if failure is not None:
        print(f"trpc: {failure}", file=sys.stderr)
        return 1
    return 0
