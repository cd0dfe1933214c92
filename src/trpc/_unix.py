"""Listening on a Unix domain socket: take the path over from a dead server, leave no file behind.

Theory of operation
-------------------
A Unix socket is a file: binding creates it, and it outlives the socket, so a server that was
killed leaves it behind and the next bind fails with "address in use".  So
:func:`open_unix_listener` looks at what is at the path first:

- nothing: bind;
- a socket that refuses a connection: a dead server's, removed, then bind;
- a socket that answers: a live server's, an error (``EADDRINUSE``), since taking its path
  would strand its clients;
- anything else (a file, a directory, a symbolic link): an error (``EEXIST``); trpc removes
  only what it can tell is a dead socket.

The look is a non-blocking connect (``_answers``), which a Unix socket completes or refuses at
once; a listener whose backlog is full says "try again", and counts as live.

Between the look and the bind another process may do the same; two servers started at the same
instant on one stale path can both remove it, and the later bind wins the path.  Start one
server per path (a service manager does) if that matters.

``mode`` is applied after the bind and before ``listen()``: until then a connect is refused,
so no client connects through the permissions the umask gave the new file.

The :class:`UnixSocketListener` owns the file: closing it removes the file, then closes the
socket.  Only if the path still names the file it bound (same device and inode): someone may
have removed it and started a newer server there, whose socket must stay.  The comparison is
made while the socket is still open, because an open socket keeps its inode from being freed;
once closed, the filesystem may hand the same inode number to the next file at once.
"""

from __future__ import annotations

import errno
import os
import socket as _socket
import stat

import trio

__all__ = ["UnixSocketListener", "open_unix_listener"]

#: The listen backlog when none is given: as large as the kernel allows (it truncates the
#: value to its own maximum, ``somaxconn`` on Linux), as ``trio.open_tcp_listeners`` does;
#: 0xFFFF because some kernels keep the value in 16 bits.
_MAX_BACKLOG = 0xFFFF


class UnixSocketListener(trio.abc.Listener[trio.SocketStream]):
    """A :class:`trio.SocketListener` on a Unix socket that removes its file when closed."""

    def __init__(self, listener: trio.SocketListener, path: str, absolute: str, identity: tuple[int, int]) -> None:
        self._listener = listener
        #: The path bound, as given.
        self.path = path
        #: The same, absolute, and the (device, inode) it had when bound: what aclose removes,
        #: if it still names that file.
        self._absolute = absolute
        self._identity = identity

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._listener.socket

    async def accept(self) -> trio.SocketStream:
        return await self._listener.accept()

    async def aclose(self) -> None:
        try:
            _remove_if_ours(self._absolute, self._identity)
        finally:
            await self._listener.aclose()


def _remove_if_ours(path: str, identity: tuple[int, int]) -> None:
    """Remove the socket file bound as ``identity`` at ``path``, unless another file is there
    now; call it while the socket is open (see the module)."""
    try:
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == identity:
            os.unlink(path)
    except OSError:  # gone already, or not ours to look at: leave it
        pass


def _answers(path: str) -> bool:
    """Whether a server listens on the socket at ``path`` (see the module)."""
    with _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except BlockingIOError:  # a listener with a full backlog
            return True
    return True


async def open_unix_listener(
    path: str | os.PathLike[str], *, backlog: int | None = None, mode: int | None = None
) -> UnixSocketListener:
    """Bind and listen on a Unix socket at ``path``, replacing a dead server's socket there.

    Args:
        path: a filesystem path (relative paths are relative to the working directory).
        backlog: the listen backlog (default: as large as the kernel allows).
        mode: permissions for the socket file (``0o660``: owner and group may connect);
            default: what the umask gives.

    Raises:
        OSError: ``EADDRINUSE`` if a server answers at ``path``; ``EEXIST`` if something that
            is not a socket is there; or the bind's own error (a path too long, no such
            directory, no permission).
        ValueError: ``path`` holds a NUL character (abstract sockets are not supported).
        RuntimeError: the platform has no Unix sockets.
    """
    if not hasattr(_socket, "AF_UNIX"):
        raise RuntimeError("Unix sockets are not supported on this platform")
    path = os.fspath(path)
    if not isinstance(path, str) or not path or "\0" in path:
        raise ValueError(f"a Unix socket path must be a non-empty filesystem path, got {path!r}")
    if backlog is not None and backlog < 1:
        raise ValueError(f"backlog must be at least 1, got {backlog}")
    _clear_stale_socket(path)
    sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        # Removed by absolute path: the working directory may change while serving.
        absolute = os.path.abspath(path)
        info = os.lstat(absolute)
        identity = (info.st_dev, info.st_ino)
        try:
            if mode is not None:
                os.chmod(absolute, mode)
            sock.listen(min(backlog or _MAX_BACKLOG, _MAX_BACKLOG))
        except BaseException:
            _remove_if_ours(absolute, identity)
            raise
    except BaseException:
        sock.close()
        raise
    return UnixSocketListener(trio.SocketListener(sock), path, absolute, identity)


def _clear_stale_socket(path: str) -> None:
    """Remove a dead server's socket at ``path``; raise if ``path`` holds anything else."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, "cannot listen there: it exists and is not a socket", path)
    if _answers(path):
        raise OSError(errno.EADDRINUSE, "cannot listen there: a server is listening on that socket", path)
    try:
        os.unlink(path)
    except FileNotFoundError:  # removed meanwhile
        pass
