"""Loading ``trpc._speedups``, trpc's CPython extension (``csrc/speedups.c``, ``csrc/cbor.c``).

It holds the CBOR codec for plain values (used by ``_codec``) and the DATA-run framer (used by
``trpc.wire``).  Like the C framer it is an optimisation with a pure-Python equivalent, so a
missing module (no C compiler at install) means the slower path and one warning (given by
``_framer.get_framer``, which names every missing C module at once); with ``TRPC_REQUIRE_C=1``
it is an ImportError.  A module built for another trpc version is refused.

``TRPC_SPEEDUPS=0`` leaves the module unloaded on purpose, silently: the whole package then runs
its pure-Python equivalents (cbor2 alone, the Python DATA-run framer), as without a compiler.
The tests use it to run the call suites on that path too.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from ._version import __version__

if TYPE_CHECKING:
    from ._events import CborValue

__all__ = ["speedups", "speedups_disabled", "speedups_error"]


class SpeedupsModule(Protocol):
    """The module's interface, as the rest of the package sees it (a module can be typed only by
    a protocol).  ``_speedups.pyi`` describes the compiled module itself; the check below this
    class makes the checkers compare the two."""

    @property
    def __version__(self) -> str: ...
    def frame_run(
        self, payloads: list[bytes], stream_id: int, credit: int, max_size: int, /
    ) -> tuple[bytes, int, int]: ...
    def make_encoder(self, fallback: Callable[[CborValue], bytes], /) -> Callable[[CborValue], bytes]: ...
    def make_decoder(self, fallback: Callable[[bytes], CborValue], /) -> Callable[[bytes], CborValue]: ...


if TYPE_CHECKING:
    from . import _speedups

    _stub_matches: SpeedupsModule = _speedups


def _load() -> SpeedupsModule:
    """The extension module; ImportError (with how to get it) if it is missing or stale."""
    try:
        # (Not ``from . import``: inside the package's own import, that hides a missing module
        # behind a message about circular imports.)
        module = importlib.import_module(f"{__package__}._speedups")
    except ImportError as exc:
        raise ImportError(
            f"trpc's compiled extension (trpc._speedups) cannot be imported ({exc}); reinstall trpc"
            " from source with a C compiler available (TRPC_REQUIRE_C=1 makes a failed build fail"
            " the install)"
        ) from exc
    if module.__version__ != __version__:
        raise ImportError(f"trpc._speedups was built for trpc {module.__version__}, not {__version__}")
    # A ModuleType, whose attributes the checkers cannot see; the cast runs once, at import.
    return cast("SpeedupsModule", module)


#: The extension module, or None.
speedups: SpeedupsModule | None = None
#: Why it is unavailable, or None if it is loaded.
speedups_error: str | None = None
#: True if TRPC_SPEEDUPS=0 asked for the pure-Python path (nothing to warn about).
speedups_disabled = os.environ.get("TRPC_SPEEDUPS", "").strip() == "0"

if speedups_disabled:
    speedups_error = "disabled by TRPC_SPEEDUPS=0"
else:
    try:
        speedups = _load()
    except ImportError as exc:
        if os.environ.get("TRPC_REQUIRE_C") == "1":
            raise
        speedups_error = str(exc)
