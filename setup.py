"""What pyproject.toml cannot express: the compiled framer, and making it optional.

``cffi_modules`` builds ``trpc._framer_cffi`` from ``build_ffi.py``.  The C framer is only an
optimisation (``trpc._framer`` falls back to the pure-Python twin, with a warning), so by default
a failed compilation prints a warning and the package installs without it.  With the environment
variable ``TRPC_REQUIRE_C=1`` (CI, benchmarks, packagers) a failed compilation fails the install.
"""

import os
import sys

from setuptools import setup
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
            f"\n{bar}\nWARNING: trpc's C framer could not be built:\n  {exc}\n"
            "trpc is installed without it and uses its pure-Python framer: it works, but\n"
            "scans frames about half as fast.  For the C framer, install a C compiler and the\n"
            "Python headers, then reinstall.  TRPC_REQUIRE_C=1 makes this failure fatal.\n"
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


setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": optional_build_ext},
)
