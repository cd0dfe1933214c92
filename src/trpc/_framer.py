"""Choosing a frame scanner: the C one when it is available, else its pure-Python twin.

Both have the same interface and behaviour (see ``_framer_py``); the C one is faster on reads
full of small frames, where Python pays per frame (docs/PERFORMANCE.md, ``bench/framer.py``).  ``get_framer()`` picks one by name, by
default from the environment:

- ``TRPC_FRAMER``: ``c`` (the default) or ``python``.
- ``TRPC_REQUIRE_C=1``: if the C framer is wanted but cannot be imported, raise ImportError
  instead of falling back to Python with a warning (for CI and benchmarks).
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

from . import _cext
from ._framer_py import Frame, PyFramer, Run

__all__ = ["FRAMERS", "Framer", "c_framer_error", "default_framer_name", "get_framer"]


class Framer(Protocol):
    """What both framers offer (``PyFramer`` documents each member)."""

    name: str
    max_frame_size: int

    def __init__(self, max_frame_size: int = ...) -> None: ...
    @property
    def buffered(self) -> int: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]: ...
    def feed_grouped(self, data: bytes | bytearray | memoryview) -> list[Run]: ...
    def close(self) -> None: ...


#: The available framer classes by name.
FRAMERS: dict[str, type[Framer]] = {"python": PyFramer}

#: Why the C framer is unavailable (the ImportError's message), or None if it is available.
c_framer_error: str | None = None

try:
    from ._framer_c import CFramer
except ImportError as exc:
    c_framer_error = str(exc)
else:
    FRAMERS["c"] = CFramer

_NAMES = ("c", "python")
_warned = False


def default_framer_name() -> str:
    """The framer named by ``TRPC_FRAMER`` (any case), ``"c"`` if unset or empty; not checked
    for validity (``get_framer`` does that)."""
    return os.environ.get("TRPC_FRAMER", "c").strip().lower() or "c"


def get_framer(name: str | None = None) -> type[Framer]:
    """Return the framer class called ``name`` (``"c"`` or ``"python"``).

    Args:
        name: the framer to use; None means ``default_framer_name()``.

    Returns:
        The class.  If the C framer is asked for but unavailable, :class:`PyFramer`, and a
        warning is logged on the ``"trpc"`` logger (once per process; the same warning names
        the C codec if it is missing too, see ``_cext``).

    Raises:
        ValueError: for an unknown name.
        ImportError: if the C framer is asked for, unavailable, and ``TRPC_REQUIRE_C=1``.
    """
    if name is None:
        name = default_framer_name()
    if name not in _NAMES:
        raise ValueError(f"unknown framer {name!r}: expected 'c' or 'python'")
    if name in FRAMERS:
        if _cext.speedups_error and not _cext.speedups_disabled and not _warned:
            _warn_once(framer_missing=False)
        return FRAMERS[name]
    if os.environ.get("TRPC_REQUIRE_C") == "1":
        raise ImportError(f"TRPC_REQUIRE_C=1 but the C framer is unavailable: {c_framer_error}")
    _warn_once(framer_missing=True)
    return PyFramer


def _warn_once(*, framer_missing: bool) -> None:
    """Say, once per process, which C modules trpc runs without (one message for both)."""
    global _warned
    speedups_error = None if _cext.speedups_disabled else _cext.speedups_error
    if _warned or not (framer_missing or speedups_error):
        return
    _warned = True
    missing: list[str] = []
    if framer_missing:
        missing.append(
            "its pure-Python framer, which scans bulk traffic more slowly, because the C"
            f" framer is unavailable ({c_framer_error}); set TRPC_FRAMER=python to choose it silently"
        )
    if speedups_error:
        missing.append(
            "cbor2 alone to encode and decode, slower on small values, because its C"
            f" codec is unavailable ({speedups_error}); set TRPC_SPEEDUPS=0 to choose it silently"
        )
    logging.getLogger("trpc").warning("trpc is using %s.", "; and ".join(missing))
