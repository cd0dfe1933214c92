"""What pyproject.toml cannot express: the compiled parts, and making them optional.

Two C modules: ``cffi_modules`` builds the frame scanner ``trpc._framer_cffi`` from
``build_ffi.py``, and ``ext_modules`` the CPython extension ``trpc._speedups`` (the CBOR codec
for plain values and the DATA-run framer; it builds and walks Python objects, which cffi cannot
do).  Both are only optimisations (``trpc._framer`` falls back to the pure-Python twin, and
the codec and protocol to pure Python and cbor2, with one warning), so by default a failed compilation prints a warning and the
package installs without them.  With the environment
variable ``TRPC_REQUIRE_C=1`` (CI, benchmarks, packagers) a failed compilation fails the install.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

REQUIRE_C = os.environ.get("TRPC_REQUIRE_C") == "1"

# What a missing or broken compiler raises (ValueError: e.g. an unusable MSVC setup).
BUILD_ERRORS = (CCompilerError, ExecError, PlatformError, OSError, ValueError)


class optional_build_ext(build_ext):
    """build_ext that, unless TRPC_REQUIRE_C=1, survives extensions that fail to build."""

    def run(self):
        self._failed = set()
        try:
            super().run()
        except BUILD_ERRORS as exc:  # e.g. no compiler at all
            self._give_up(None, exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as exc:
            self._give_up(ext, exc)

    def _give_up(self, ext, exc):
        if REQUIRE_C:
            raise
        self._failed.update([ext.name] if ext else [e.name for e in self.extensions])
        bar = "*" * 78
        print(
            f"\n{bar}\nWARNING: a C module of trpc could not be built:\n  {exc}\n"
            "trpc is installed without it and uses pure Python (its framer twin, cbor2 alone):\n"
            "it works, but frames and encodes more slowly.  For the C modules, install a C\n"
            "compiler and the Python headers, then reinstall.  "
            "TRPC_REQUIRE_C=1 makes this failure fatal.\n"
            f"{bar}\n",
            file=sys.stderr,
            flush=True,
        )

    # Leave extensions that failed out of what is copied and installed.
    def _built(self):
        failed = getattr(self, "_failed", set())
        return [ext for ext in self.extensions if ext.name not in failed]

    def copy_extensions_to_source(self):
        extensions, self.extensions = self.extensions, self._built()
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = extensions

    def get_outputs(self):
        extensions, self.extensions = self.extensions, self._built()
        try:
            return super().get_outputs()
        finally:
            self.extensions = extensions


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_ffi import speedups_extension  # noqa: E402  (needs the path above)

setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    ext_modules=[speedups_extension()],
    cmdclass={"build_ext": optional_build_ext},
)
