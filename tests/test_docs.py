"""The documentation site (docs/, Sphinx with MyST) builds with warnings as errors, documents
every public name, and its pages are the Markdown files in docs/ and the tutorial's real files.

The build needs sphinx and myst-parser (the ``test`` and ``docs`` extras install them); without
them the build test is skipped, saying so.  It runs once per test session, not once per framer.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import trpc
import trpc.interceptors
import trpc.testing

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MISSING = [name for name in ("sphinx", "myst_parser") if importlib.util.find_spec(name) is None]


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The site built as README says, into a temporary folder: (the process, its output folder,
    seconds taken)."""
    if MISSING:
        pytest.skip(f"the docs build needs {' and '.join(MISSING)} (pip install '.[docs]')")
    out = tmp_path_factory.mktemp("html")
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True, text=True, timeout=600,
    )
    return result, out, time.monotonic() - start


def test_the_site_builds_with_warnings_as_errors(site):
    result, out, seconds = site
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""  # -q: anything here is a warning
    print(f"docs built in {seconds:.1f} s")


def test_every_markdown_file_in_docs_is_a_page_of_the_site(site):
    result, out, _ = site
    assert result.returncode == 0, result.stderr
    for page in DOCS.glob("*.md"):
        assert (out / page.with_suffix(".html").name).is_file(), page.name
    assert (out / "_images" / "compare.png").is_file()  # PERFORMANCE.md's chart


def test_the_api_reference_documents_every_public_name():
    text = (DOCS / "reference.rst").read_text()
    documented = re.findall(r"^\.\. auto(?:class|function|data):: (\S+)$", text, flags=re.M)
    assert sorted(documented) == sorted(trpc.__all__)
    assert len(set(documented)) == len(documented)
    for module in ("trpc.testing", "trpc.interceptors"):
        assert f".. automodule:: {module}\n" in text


def test_the_tutorial_shows_the_files_its_test_runs():
    text = (DOCS / "tutorial.md").read_text()
    included = set(re.findall(r"```\{literalinclude\} (\S+)", text))
    assert {"tutorial/bakery.py", "tutorial/shop.py", "tutorial/shop.out", "tutorial/session.console"} <= included


def _public_objects():
    for module in (trpc, trpc.testing, trpc.interceptors):
        for name in module.__all__:
            obj = getattr(module, name)
            yield f"{module.__name__}.{name}", obj
            if inspect.isclass(obj):
                for attribute, value in vars(obj).items():
                    if not attribute.startswith("_"):
                        yield f"{module.__name__}.{name}.{attribute}", value


def test_docstrings_name_what_they_document():
    """help() shows no placeholder such as ``@trpc.X`` where a decorator should name itself."""
    for name, obj in _public_objects():
        doc = inspect.getdoc(obj) or ""
        assert not re.search(r"\btrpc\.X\b", doc), name
    for decorator in (trpc.unary, trpc.server_stream, trpc.client_stream, trpc.bidi_stream):
        assert f"``@trpc.{decorator.__name__}``" in decorator.__doc__
