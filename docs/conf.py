"""Sphinx configuration for trpc's documentation site.

Build it with ``python -m sphinx -W -b html docs docs/_build/html`` after
``pip install '.[docs]'``.  The Markdown files that sit in ``docs/`` for other readers
(PROTOCOL.md, LIMITS.md, ...) are pages of the site as they are, read by MyST.
"""

from __future__ import annotations

import trpc

project = "trpc"
author = "the trpc authors"
copyright = "2026, the trpc authors"
release = trpc.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: heading anchors so that links such as PROTOCOL.md#limits resolve, and the
# Markdown extensions the pages use.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence", "deflist"]

# autodoc: members in source order, type hints in the description rather than the signature.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Other projects' inventories are not fetched: the build must work offline and stay fast.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

try:
    import furo  # noqa: F401
except ImportError:  # pragma: no cover - the docs extra installs it
    html_theme = "alabaster"
else:
    html_theme = "furo"
html_title = f"trpc {release}"
