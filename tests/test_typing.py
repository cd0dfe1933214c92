"""trpc is typed: ``mypy --strict`` and ``pyright`` over the package, the examples (the typed client
among them) and tests/typing_checks.py, whose reveal_type lines say what a stub's calls are and
whose wrong calls both checkers must refuse.

Each checker runs once per session (in a subprocess, over every file at once, mypy with its cache
in a temporary folder); the tests read what it reported, file by file.  Both come with the test
extra (pyright's nodejs extra brings node as a wheel).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "trpc"
CHECKS = Path(__file__).resolve().parent / "typing_checks.py"

#: The modules of the public surface (and the examples): a test of their own, so that an error
#: there reads as a break of what users see, apart from the whole package's test.
PUBLIC = [
    "__init__.py", "_service.py", "_messages.py", "_client.py", "_blocking.py", "testing.py", "_pytest_plugin.py",
    "_errors.py", "_context.py", "_interceptors.py", "interceptors.py", "_codec.py", "_health.py",
    "_reflection.py", "_config.py", "_status.py", "_stub.py", "channel", "examples",
]


def _relative(path: str) -> str:
    return Path(path).resolve().relative_to(ROOT).as_posix() if Path(path).resolve().is_relative_to(ROOT) else path


def _in(path: str, entries: list[str]) -> bool:
    """``path`` (relative to the repository) is one of the package's ``entries`` (files or folders)."""
    return any(path == f"src/trpc/{entry}".rstrip("/") or path.startswith(f"src/trpc/{entry}".rstrip("/") + "/")
               for entry in entries)


@pytest.fixture(scope="session")
def mypy(tmp_path_factory) -> list[tuple[str, int, str, str]]:
    """What ``mypy --strict`` said: (file relative to the repository, line, severity, message)."""
    cache = tmp_path_factory.mktemp("mypy-cache")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--show-error-codes", "--cache-dir",
         str(cache), "--python-executable", sys.executable, str(PACKAGE), str(CHECKS)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 1: errors found; else it broke
    found = []
    for line in result.stdout.splitlines():
        match = re.match(r"(.+?):(\d+): (error|note): (.*)", line)
        if match:
            found.append((_relative(match[1]), int(match[2]), match[3], match[4]))
    return found


@pytest.fixture(scope="session")
def pyright() -> list[tuple[str, int, str, str]]:
    """What ``pyright`` said: (file relative to the repository, line, severity, message)."""
    result = subprocess.run(
        [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable, str(PACKAGE), str(CHECKS)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    report = json.loads(result.stdout)
    return [
        (_relative(d["file"]), d["range"]["start"]["line"] + 1, d["severity"], d["message"])
        for d in report["generalDiagnostics"]
    ]


def _errors(found: list[tuple[str, int, str, str]], entries: list[str]) -> list[str]:
    return [f"{path}:{line}: {message}" for path, line, severity, message in found
            if severity == "error" and _in(path, entries)]


def _marked(word: str) -> dict[int, str]:
    """Line number -> what follows ``# word`` on that line of tests/typing_checks.py."""
    lines = CHECKS.read_text().splitlines()
    return {number: line.split(f"# {word}", 1)[1].lstrip(": ").strip()
            for number, line in enumerate(lines, 1) if f"# {word}" in line}


def _plain(type_text: str) -> str:
    """A revealed type without module prefixes (mypy says ``typing.AsyncIterator[int]``,
    pyright ``AsyncIterator[int]``)."""
    return re.sub(r"\b(?:[a-z_][a-z0-9_]*\.)+(?=[A-Za-z_])", "", type_text)


def test_mypy_strict_finds_nothing_in_the_public_modules_or_the_examples(mypy):
    assert _errors(mypy, PUBLIC) == []


def test_pyright_finds_nothing_in_the_public_modules_or_the_examples(pyright):
    assert _errors(pyright, PUBLIC) == []


def test_mypy_strict_finds_nothing_in_the_whole_package(mypy):
    assert _errors(mypy, [""]) == []


def test_pyright_finds_nothing_in_the_whole_package(pyright):
    assert _errors(pyright, [""]) == []


@pytest.mark.parametrize("checker", ["mypy", "pyright"])
def test_both_checkers_see_a_stubs_calls_with_the_types_the_service_declares(checker, request):
    found = request.getfixturevalue(checker)
    expected = _marked("reveal")
    assert expected  # the file does reveal something
    revealed = {}
    for path, line, severity, message in found:
        if path == "tests/typing_checks.py" and severity in ("note", "information"):
            match = re.match(r'(?:Revealed type is|Type of ".*" is) "(.*)"', message)
            if match:
                revealed[line] = _plain(match[1])
    assert revealed == expected


@pytest.mark.parametrize("checker", ["mypy", "pyright"])
def test_both_checkers_refuse_wrong_arguments_and_wrong_result_types_and_nothing_else(checker, request):
    found = request.getfixturevalue(checker)
    expected = set(_marked("error"))
    assert len(expected) >= 9
    reported = {line for path, line, severity, _ in found if path == "tests/typing_checks.py" and severity == "error"}
    assert reported == expected
