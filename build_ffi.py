"""Build script for trpc's C modules.

- ``trpc._framer_cffi``, the frame scanner (cffi, out-of-line API mode).  The C interface is
  written once, in ``csrc/framer.h``: the text between its ``BEGIN CDEF`` and ``END CDEF``
  markers is the cdef, and the C source is ``csrc/framer.c``.
- ``trpc._speedups``, a CPython extension (it builds and walks Python objects, which cffi
  cannot): the CBOR codec for plain values (``csrc/cbor.c``) and the DATA-run framer
  (``csrc/speedups.c``).  :func:`speedups_extension` describes it.

Both are compiled with the package version (``TRPC_VERSION``), which ``trpc._framer_c`` and
``trpc._speedups_loader`` check on import.

Used by setup.py (``cffi_modules=["build_ffi.py:ffibuilder"]``, ``ext_modules=[speedups_extension()]``);
``python build_ffi.py`` builds both modules into ``src/trpc/`` for development.
"""

from __future__ import annotations

import ast
import json
import os
import re

from cffi import FFI
from setuptools import Extension

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join("csrc", "framer.h")
SOURCE = os.path.join("csrc", "framer.c")
SPEEDUPS_SOURCES = [os.path.join("csrc", "speedups.c"), os.path.join("csrc", "cbor.c")]
SPEEDUPS_HEADER = os.path.join("csrc", "speedups.h")
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-O2"]


def read_cdef() -> str:
    with open(os.path.join(HERE, HEADER), encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"/\* BEGIN CDEF \*/(.*?)/\* END CDEF \*/", text, re.DOTALL)
    if match is None:
        raise RuntimeError(f"{HEADER} has no BEGIN CDEF / END CDEF region")
    return match.group(1)


def read_version() -> str:
    # Parsed, not imported: importing trpc would need its dependencies at build time.
    with open(os.path.join(HERE, "src", "trpc", "_version.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__version__" for target in node.targets
        ):
            return ast.literal_eval(node.value)
    raise RuntimeError("src/trpc/_version.py defines no __version__")


def make_builder(root: str = "") -> FFI:
    """The FFI builder; paths are relative to ``root`` (setuptools wants them relative)."""
    builder = FFI()
    builder.cdef(read_cdef())
    builder.set_source(
        "trpc._framer_cffi",
        '#include "framer.h"',
        sources=[os.path.join(root, SOURCE)],
        include_dirs=[os.path.join(root, "csrc")],
        # The build script is a dependency too, which also puts it in the sdist.
        depends=[os.path.join(root, HEADER), os.path.join(root, "build_ffi.py")],
        # json.dumps gives a valid C string literal for any printable version string.
        define_macros=[("TRPC_VERSION", json.dumps(read_version()))],
        extra_compile_args=CFLAGS,
    )
    return builder


def speedups_extension(root: str = "") -> Extension:
    """The ``trpc._speedups`` module; paths relative to ``root``."""
    return Extension(
        "trpc._speedups",
        sources=[os.path.join(root, source) for source in SPEEDUPS_SOURCES],
        include_dirs=[os.path.join(root, "csrc")],
        depends=[os.path.join(root, SPEEDUPS_HEADER)],
        define_macros=[("TRPC_VERSION", json.dumps(read_version()))],
        extra_compile_args=CFLAGS,
    )


ffibuilder = make_builder()

if __name__ == "__main__":
    # Development build: compile under build/ and copy the module next to the sources.  cffi
    # compiles from inside tmpdir, hence the absolute paths.
    import shutil

    built = make_builder(HERE).compile(tmpdir=os.path.join(HERE, "build", "cffi"), verbose=True)
    shutil.copy(built, os.path.join(HERE, "src", "trpc"))

    # The CPython extension, through setuptools' own build_ext, in place.
    from setuptools import Distribution
    from setuptools.command.build_ext import build_ext

    dist = Distribution({"ext_modules": [speedups_extension(HERE)], "package_dir": {"": "src"}})
    command = build_ext(dist)
    command.inplace = True
    command.build_temp = os.path.join(HERE, "build", "ext")
    command.ensure_finalized()
    command.run()
