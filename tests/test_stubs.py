"""The type stubs of the compiled modules (``_speedups.pyi``, ``_framer_cffi.pyi``) name exactly
what the modules export, so the checkers see the modules as they are.  (The checkers compare the
signatures with the rest of the package; this compares the names with the built modules.)"""

import ast
import os
from pathlib import Path

import pytest

from trpc import _cext, _framer

PACKAGE = Path(_cext.__file__).parent


def stub_names(stub: str, inside: str | None = None) -> set[str]:
    """The names a stub declares at its top level, or in its class ``inside``."""
    body = ast.parse((PACKAGE / stub).read_text(encoding="utf-8")).body
    if inside is not None:
        body = next(node for node in body if isinstance(node, ast.ClassDef) and node.name == inside).body
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.FunctionDef):
            names.add(node.name)
    return {name for name in names if not name.startswith("_") or name == "__version__"}


def exported(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


@pytest.mark.skipif(
    _cext.speedups is None and os.environ.get("TRPC_REQUIRE_C") != "1",
    reason=f"the extension is unavailable: {_cext.speedups_error}",
)
def test_the_speedups_stub_names_what_the_extension_exports() -> None:
    from trpc import _speedups

    assert stub_names("_speedups.pyi") == exported(_speedups) | {"__version__"}


@pytest.mark.skipif(
    _framer.c_framer_error is not None and os.environ.get("TRPC_REQUIRE_C") != "1",
    reason=f"the C framer is unavailable: {_framer.c_framer_error}",
)
def test_the_framer_stub_names_what_the_cffi_module_exports() -> None:
    from trpc import _framer_cffi

    assert stub_names("_framer_cffi.pyi") == exported(_framer_cffi)
    assert stub_names("_framer_cffi.pyi", inside="_Lib") == exported(_framer_cffi.lib)
