"""``tools/mutate.py``, the mutation-testing sampler, on throwaway modules (never on trpc): its
mutants change the right characters and nothing else, and a run counts a mutant killed or
survived by what a real test command says.  The tool has no framer; these tests ignore theirs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mutate.py"

_spec = importlib.util.spec_from_file_location("mutate_tool", TOOL)
mutate = importlib.util.module_from_spec(_spec)
sys.modules["mutate_tool"] = mutate  # dataclasses look their module up by name
_spec.loader.exec_module(mutate)


SAMPLE = '''\
"""A docstring with 3 numbers, 4 of them."""

import logging

log = logging.getLogger(__name__)
__all__ = ["f"]
TABLE = {
    "a": 1,  # the first row
    "b": (2),
}


def f(a, b):  # keep me
    x = a + 1   # odd   spacing
    if a < b and b is not None:
        log.info("a is %d", 3)
        return x
    while True:
        break
    raise ValueError(f"bad {a + 2}")
'''


def mutated_lines(text: str, path: Path) -> set[tuple[str, int, str]]:
    """(operator, line, that line after the mutation) for each mutant of ``text``."""
    return {
        (m.operator, m.line, m.apply(text).splitlines()[m.line - 1])
        for m in mutate.find_mutants(path, text)
    }


def test_each_operator_changes_exactly_its_span(tmp_path):
    assert mutated_lines(SAMPLE, tmp_path / "sample.py") == {
        ("delete", 5, "pass"),
        ("delete", 7, "pass"),
        ("dict-entry", 8, "      # the first row"),
        ("number", 8, '    "a": 2,  # the first row'),
        ("number", 8, '    "a": 0,  # the first row'),
        ("dict-entry", 9, "    "),
        ("number", 9, '    "b": (3),'),
        ("number", 9, '    "b": (1),'),
        ("arith", 14, "    x = a - 1   # odd   spacing"),
        ("number", 14, "    x = a + 2   # odd   spacing"),
        ("number", 14, "    x = a + 0   # odd   spacing"),
        ("delete", 14, "    pass   # odd   spacing"),
        ("negate", 15, "    if not (a < b and b is not None):"),
        ("compare", 15, "    if a <= b and b is not None:"),
        ("compare", 15, "    if a < b and b is None:"),
        ("boolop", 15, "    if a < b or b is not None:"),
        ("delete", 17, "        pass"),
        ("negate", 18, "    while not (True):"),
        ("bool", 18, "    while False:"),
        ("loop", 19, "        continue"),
    }  # nothing in the docstring, __all__, the logging call or the raise


def test_untouched_lines_keep_their_text_and_numbers(tmp_path):
    for mutant in mutate.find_mutants(tmp_path / "sample.py", SAMPLE):
        before, after = SAMPLE.splitlines(), mutant.apply(SAMPLE).splitlines()
        assert len(after) == len(before), mutant
        changed = [n for n, (old, new) in enumerate(zip(before, after), 1) if old != new]
        assert changed and all(mutant.line <= n <= mutant.end_line for n in changed), mutant


def test_columns_count_characters_not_bytes_and_crlf_stays(tmp_path):
    text = 'y = len("é€") - 1  # ünïcode\r\nz = 2\r\n'
    assert {(m.operator, m.apply(text)) for m in mutate.find_mutants(tmp_path / "u.py", text)} == {
        ("arith", 'y = len("é€") + 1  # ünïcode\r\nz = 2\r\n'),
        ("number", 'y = len("é€") - 2  # ünïcode\r\nz = 2\r\n'),
        ("number", 'y = len("é€") - 0  # ünïcode\r\nz = 2\r\n'),
        ("delete", "pass  # ünïcode\r\nz = 2\r\n"),
        ("number", 'y = len("é€") - 1  # ünïcode\r\nz = 3\r\n'),
        ("number", 'y = len("é€") - 1  # ünïcode\r\nz = 1\r\n'),
        ("delete", 'y = len("é€") - 1  # ünïcode\r\npass\r\n'),
    }


# ------------------------------------------------------------------------------ real runs
MODULE = '''\
"""A tiny module to mutate."""


def add(a, b):
    return a + b  # the sum


def spin(flag):
    while flag:
        pass
    return 1


def unused(n):
    return n - 1
'''

CHECK = """\
from pkg.m import add, spin

assert add(2, 3) == 5
assert spin(False) == 1
"""


def make_project(root: Path, check: str = CHECK) -> Path:
    """A src-layout project with package ``pkg`` (not installed) and a plain test script."""
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text("")
    (root / "src" / "pkg" / "__init__.py").write_text("")
    (root / "src" / "pkg" / "m.py").write_text(MODULE)
    (root / "tests" / "check.py").write_text(check)
    return root / "src" / "pkg" / "m.py"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory):
    """One run of the tool, shared by both framers' runs of the tests below."""
    root = tmp_path_factory.mktemp("project")
    module = make_project(root)
    out = root / "out.json"
    result = run_tool(
        str(module), "--sample", "100", "--timeout", "2", "--json", str(out), "--", sys.executable, "tests/check.py"
    )
    assert result.returncode == 0, result.stderr
    assert module.read_text() == MODULE  # the working tree is never written
    return result, json.loads(out.read_text())


def test_a_mutant_the_tests_notice_is_killed_and_one_they_miss_survives(tool_run):
    result, report = tool_run
    assert (report["candidates"], report["sampled"]) == (10, 10)
    assert (report["killed_by_failure"], report["killed_by_timeout"], report["survived"]) == (5, 1, 4)
    assert report["score"] == 60.0
    outcomes = {(m["line"], m["operator"], m["mutated"]): m["status"] for m in report["mutants"]}
    assert outcomes[(5, "arith", "a - b")] == "killed"
    assert outcomes[(9, "negate", "not (flag)")] == "killed"  # by timeout: spin(False) never ends
    survivors = [key for key, status in outcomes.items() if status == "survived"]
    assert {line for line, _, _ in survivors} == {15}


def test_the_report_lists_each_survivor_with_its_diff(tool_run):
    result, report = tool_run
    assert "score        60.0 %" in result.stdout
    assert "src/pkg/m.py:15: arith: n - 1 -> n + 1\n    -    return n - 1\n    +    return n + 1\n" in result.stdout
    assert "[10/10]" in result.stderr


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Runs that must stop before any mutant, started together (each takes a few Python starts)."""
    red = make_project(tmp_path_factory.mktemp("red"), check="raise SystemExit(3)\n")
    idle = make_project(tmp_path_factory.mktemp("idle"), check="pass\n")
    # A flat layout run from its root: sys.path[0] is the root, ahead of PYTHONPATH.
    flat = tmp_path_factory.mktemp("flat")
    (flat / "pkg").mkdir()
    (flat / "pkg" / "__init__.py").write_text("")
    (flat / "pkg" / "m.py").write_text(MODULE)
    (flat / "pyproject.toml").write_text("")
    commands = {
        "red": [str(red), "--", sys.executable, "tests/check.py"],
        "idle": [str(idle), "--", sys.executable, "tests/check.py"],
        "flat": [str(flat / "pkg" / "m.py"), "--", sys.executable, "-c", "import pkg.m"],
    }
    processes = {
        name: subprocess.Popen(
            [sys.executable, str(TOOL), "--timeout", "20", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, args in commands.items()
    }
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=60)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


def test_a_red_baseline_stops_the_run(stopped_runs):
    result = stopped_runs["red"]
    assert result.returncode == 2
    assert "the tests fail without any mutant (exit status 3)" in result.stderr
    assert "score" not in result.stdout


def test_tests_that_never_import_the_module_stop_the_run(stopped_runs):
    result = stopped_runs["idle"]
    assert result.returncode == 2
    assert "passed without importing pkg.m from the copy" in result.stderr


def test_a_package_that_shadows_the_copy_stops_the_run(stopped_runs):
    result = stopped_runs["flat"]
    assert result.returncode == 2
    assert "not from the copy" in result.stderr


def test_list_counts_candidates_per_operator(tmp_path):
    module = make_project(tmp_path)
    result = run_tool(str(module), "--list")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == "10 candidate mutants in src/pkg/m.py"
    assert "  delete          3" in result.stdout
