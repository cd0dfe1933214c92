"""The package version, in one place.

The compiled framer carries the same string (``build_ffi.py`` reads it from here) and
``trpc._framer_c`` refuses to load a module built for another version.
"""

__version__ = "0.1.0"
