#!/usr/bin/env python3
"""A mutation-testing sampler: of the small bugs one could make in a module, how many do the
tests notice?

How it works
------------
1. Every candidate *mutant* of the given modules is read off their syntax trees: one small change
   to one node (a flipped comparison, ``-`` for ``+``, ``n+1`` for ``n``, a statement replaced by
   ``pass``, ...; ``OPERATORS`` lists them).  The change is spliced into the original text at the
   node's span, so every other character of the file -- formatting, comments, line numbers -- stays
   as it was.  Docstrings, ``__all__``, logging calls, the message of a ``raise``, f-strings and
   annotations are left alone, and a mutant whose text does not compile is dropped.
2. ``--sample`` of the candidates are drawn uniformly at random with ``--seed``: the same seed on
   the same code draws the same mutants.
3. The unmutated package runs the test command first.  A red baseline would make every mutant look
   killed, so it stops the run; so does a baseline that never imported the module from the copy.
4. Each mutant runs in a fresh copy of its package (compiled extensions included) in a temporary
   directory that is put first on PYTHONPATH; the working tree is never written.  Bytecode goes to
   a PYTHONPYCACHEPREFIX of the run's own, so no stale ``.pyc`` can stand in for a mutant, and
   Hypothesis keeps its example database in the copy.
   The mutant is *killed* if the command fails or outlives ``--timeout`` (its whole process group
   is then killed), and *survives* if the command passes: a survivor is a change the tests cannot
   see.

Standard library only, so it runs before anything is installed.  POSIX only (process groups).
"""

from __future__ import annotations

import argparse
import ast
import bisect
import concurrent.futures
import dataclasses
import difflib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: The test command when none is given (the Python that runs this tool runs the tests).
DEFAULT_COMMAND = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "tests"]

#: Operator name -> what it does.  The names appear in the report and in ``--list``.
OPERATORS = {
    "compare": "flip a comparison: < <=, > >=, == !=, is / is not, in / not in",
    "arith": "swap + and - (also += and -=)",
    "number": "an integer constant n becomes n+1, and n-1",
    "boolop": "swap and / or",
    "negate": "negate the condition of an if / elif / while: not (...)",
    "delete": "replace an assignment, a call statement or `return x` with pass",
    "bool": "swap True and False",
    "dict-entry": "delete one entry of a dict literal (a row of a table)",
    "loop": "swap break and continue",
}

#: Seconds between looks at a running test command: small next to any test run's length.
POLL_INTERVAL = 0.05
#: Seconds the import check may take: it imports one module, nothing more.
IMPORT_CHECK_TIMEOUT = 60
#: Characters of changed code shown in a report line before it is cut: one terminal line.
SHOWN_CHARS = 70
#: Lines of a multi-line change shown in a survivor's diff: enough to recognise it.
DIFF_LINES = 6

_COMPARE_TOKEN = re.compile(r"<=|>=|==|!=|<|>|\bis\s+not\b|\bnot\s+in\b|\bis\b|\bin\b")
_COMPARE_FLIP = {
    "<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==",
    "is": "is not", "is not": "is", "in": "not in", "not in": "in",
}  # fmt: skip
_ARITH_TOKEN = re.compile(r"[+-]")
_AUGASSIGN_TOKEN = re.compile(r"[+-]=")
_BOOLOP_TOKEN = re.compile(r"\b(?:and|or)\b")
_COMMENT = re.compile(r"#[^\r\n]*")
_NEWLINE = re.compile(r"\r\n|\r|\n")
_LOGGING_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}


# ------------------------------------------------------------------------------ the mutants
@dataclasses.dataclass(frozen=True)
class Mutant:
    """One change to one module: ``replacement`` in place of characters ``start:end``."""

    path: Path  # the module (absolute)
    operator: str
    line: int  # where the change starts and ends in the original (1-based)
    end_line: int
    start: int  # character offsets into the source
    end: int
    replacement: str
    before: str  # the changed code as a report shows it, before and after
    after: str

    def apply(self, source: str) -> str:
        return source[: self.start] + self.replacement + source[self.end :]


class _Source:
    """A module's text, with ast positions (line, UTF-8 byte column) turned into offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        # Only \r\n, \r and \n end a line for Python's parser (str.splitlines also splits on
        # form feeds and other separators).
        self.line_starts = [0] + [m.end() for m in _NEWLINE.finditer(text)]

    def offset(self, line: int, byte_col: int) -> int:
        start = self.line_starts[line - 1]
        head = self.text[start : start + byte_col].encode("utf-8")[:byte_col]
        return start + len(head.decode("utf-8", "ignore"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (
            self.offset(node.lineno, node.col_offset),
            self.offset(node.end_lineno, node.end_col_offset),
        )

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self.line_starts, offset)

    def widen(self, start: int, end: int) -> tuple[int, int]:
        """The span grown over parentheses that wrap exactly it (ast spans leave them out).
        Only for places where a ``(`` before the span cannot belong to a call, such as a dict
        key or value."""
        text = self.text
        while True:
            i = start - 1
            while i >= 0 and text[i].isspace():
                i -= 1
            j = end
            while j < len(text) and text[j].isspace():
                j += 1
            if i < 0 or j >= len(text) or text[i] != "(" or text[j] != ")":
                return start, end
            start, end = i, j + 1


def _shown(text: str) -> str:
    """Code on one line, cut to fit a report line."""
    text = " ".join(text.split())
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _spell_like(value: int, written: str) -> str:
    """``value`` written as ``written`` is: 0x1F -> 0x20, 0o7 -> 0o10, 0b1 -> 0b10, 9 -> 10."""
    base = {"0x": hex, "0o": oct, "0b": bin}.get(written[:2].lower(), str)
    text = base(value)
    if base is not str:
        sign, digits = ("-", text[3:]) if value < 0 else ("", text[2:])
        text = sign + written[:2] + (digits.upper() if written[2:] != written[2:].lower() else digits)
    return text


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a name or attribute chain, else ""."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _is_logging_call(node: ast.AST) -> bool:
    """``log.info(...)``, ``self._logger.warning(...)``, ``logging.debug(...)``, ``warnings.warn(...)``."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    receiver = _dotted(node.func.value).rsplit(".", 1)[-1].lower()
    if node.func.attr in _LOGGING_METHODS and "log" in receiver:
        return True
    return node.func.attr == "warn" and receiver == "warnings"


def _assigns_dunder_all(node: ast.AST) -> bool:
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    else:
        return False
    return any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets)


def _is_guard(test: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` and ``if __name__ == "__main__":``: flipping them tests nothing."""
    if _dotted(test).endswith("TYPE_CHECKING"):
        return True
    return isinstance(test, ast.Compare) and _dotted(test.left) == "__name__"


def _left_alone(node: ast.AST) -> bool:
    """Subtrees no mutant touches: what they change is text for people, not behaviour."""
    return (
        isinstance(node, (ast.Raise, ast.JoinedStr))  # a raise's message; f-strings
        or _assigns_dunder_all(node)
        or _is_logging_call(node)
        or (isinstance(node, ast.Expr) and _is_logging_call(node.value))
    )


def _nodes(tree: ast.AST):
    """Every node a mutant may touch, in source order: all but the subtrees left alone and
    annotations (never evaluated under ``from __future__ import annotations``)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _left_alone(node):
            continue
        yield node
        children = []
        for field, value in ast.iter_fields(node):
            if field in ("annotation", "returns", "type_comment"):
                continue
            if field == "test" and isinstance(node, ast.If) and _is_guard(value):
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    children.append(child)
        stack.extend(reversed(children))


class _Finder:
    """Reads every candidate mutant of one module off its tree."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.source = _Source(text)
        self.mutants: list[Mutant] = []

    def find(self, tree: ast.AST) -> list[Mutant]:
        for node in _nodes(tree):
            method = getattr(self, "_" + type(node).__name__, None)
            if method is not None:
                method(node)
            if isinstance(node, ast.stmt):
                self._statement(node)
        return self.mutants

    # -- helpers
    def _add(self, operator, start, end, replacement, shown=None, before=None, after=None) -> None:
        """A mutant replacing ``start:end``.  The report shows the code from ``shown`` (a span
        around the change; the change itself by default) before and after it, unless ``before``
        and ``after`` say what to show."""
        text = self.source.text
        show_start, show_end = shown or (start, end)
        if before is None:
            before = text[show_start:show_end]
        if after is None:
            after = text[show_start:start] + replacement + text[end:show_end]
        self.mutants.append(
            Mutant(
                path=self.path,
                operator=operator,
                line=self.source.line_of(start),
                end_line=self.source.line_of(max(start, end - 1)),
                start=start,
                end=end,
                replacement=replacement,
                before=_shown(before),
                after=_shown(after),
            )
        )

    def _token_between(self, left: ast.AST, right: ast.AST, pattern: re.Pattern):
        """(start, end, text) of the one operator token between two operands, or None.  Only
        parentheses, spaces, comments and line continuations can stand beside it there."""
        start = self.source.span(left)[1]
        end = self.source.span(right)[0]
        gap = _COMMENT.sub(lambda m: " " * len(m.group()), self.source.text[start:end])
        found = list(pattern.finditer(gap))
        if len(found) != 1:
            return None
        match = found[0]
        return start + match.start(), start + match.end(), " ".join(match.group().split())

    # -- one method per node type
    def _Compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        for left, right in zip(operands, operands[1:]):
            token = self._token_between(left, right, _COMPARE_TOKEN)
            if token:
                start, end, op = token
                self._add("compare", start, end, _COMPARE_FLIP[op], self.source.span(node))

    def _BinOp(self, node: ast.BinOp) -> None:
        if not isinstance(node.op, (ast.Add, ast.Sub)):
            return
        if any(isinstance(side, ast.Constant) and isinstance(side.value, (str, bytes))
               for side in (node.left, node.right)):
            return  # "a" - "b" only shows that the line runs
        token = self._token_between(node.left, node.right, _ARITH_TOKEN)
        if token:
            start, end, op = token
            self._add("arith", start, end, "-" if op == "+" else "+", self.source.span(node))

    def _AugAssign(self, node: ast.AugAssign) -> None:
        if not isinstance(node.op, (ast.Add, ast.Sub)):
            return
        token = self._token_between(node.target, node.value, _AUGASSIGN_TOKEN)
        if token:
            start, end, op = token
            self._add("arith", start, end, "-=" if op == "+=" else "+=", self.source.span(node))

    def _BoolOp(self, node: ast.BoolOp) -> None:
        for left, right in zip(node.values, node.values[1:]):
            token = self._token_between(left, right, _BOOLOP_TOKEN)
            if token:
                start, end, op = token
                self._add("boolop", start, end, "or" if op == "and" else "and", self.source.span(node))

    def _Constant(self, node: ast.Constant) -> None:
        start, end = self.source.span(node)
        if isinstance(node.value, bool):
            self._add("bool", start, end, str(not node.value))
        elif isinstance(node.value, int):
            written = self.source.text[start:end]
            for value in (node.value + 1, node.value - 1):
                self._add("number", start, end, _spell_like(value, written))

    def _negate(self, node: ast.If | ast.While) -> None:
        start, end = self.source.span(node.test)
        self._add("negate", start, end, f"not ({self.source.text[start:end]})")

    def _If(self, node: ast.If) -> None:
        if not _is_guard(node.test):
            self._negate(node)

    def _While(self, node: ast.While) -> None:
        self._negate(node)

    def _Break(self, node: ast.Break) -> None:
        self._add("loop", *self.source.span(node), "continue")

    def _Continue(self, node: ast.Continue) -> None:
        self._add("loop", *self.source.span(node), "break")

    def _Dict(self, node: ast.Dict) -> None:
        text = self.source.text
        for key, value in zip(node.keys, node.values):
            if key is None:  # **mapping
                continue
            start = self.source.widen(*self.source.span(key))[0]
            end = self.source.widen(*self.source.span(value))[1]
            after = end
            while after < len(text) and text[after] in " \t":
                after += 1
            if after < len(text) and text[after] == ",":
                end = after + 1
            removed = text[start:end]
            # Newlines stay, so the lines after the entry keep their numbers.
            replacement = "\n" * len(_NEWLINE.findall(removed))
            self._add("dict-entry", start, end, replacement, after="(entry deleted)")

    def _statement(self, node: ast.stmt) -> None:
        deletable = (
            isinstance(node, (ast.Assign, ast.AugAssign))
            or (isinstance(node, ast.AnnAssign) and node.value is not None)
            or (isinstance(node, ast.Return) and node.value is not None)
            or (isinstance(node, ast.Expr) and isinstance(node.value, (ast.Call, ast.Await)))
        )
        if not deletable:
            return
        start, end = self.source.span(node)
        lines = len(_NEWLINE.findall(self.source.text[start:end]))
        self._add("delete", start, end, "pass" + "\n" * lines, after="pass")


def read_source(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def _compile_units(tree: ast.Module, source: _Source) -> list[tuple[int, int]]:
    """Spans that compile on their own, each from the start of its first line: every function
    not inside another (with its decorators), then every top-level statement."""
    functions = []

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                functions.append((source.line_starts[first - 1], source.span(node)[1]))
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []))

    visit(tree.body)
    statements = []
    for node in tree.body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        statements.append((source.line_starts[first - 1], source.span(node)[1]))
    return functions + statements


def _compiles(text: str, path: Path) -> bool:
    try:
        compile(text, str(path), "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def find_mutants(path: Path, text: str | None = None) -> list[Mutant]:
    """Every candidate mutant of one module that compiles, in source order."""
    path = Path(path).resolve()
    text = read_source(path) if text is None else text
    tree = ast.parse(text, filename=str(path))
    source = _Source(text)
    units = _compile_units(tree, source)
    seen = set()
    found = []
    for mutant in sorted(_Finder(path, text).find(tree), key=lambda m: (m.start, m.end, m.operator, m.replacement)):
        key = (mutant.start, mutant.end, mutant.replacement)
        if key in seen or text[mutant.start : mutant.end] == mutant.replacement:
            continue
        seen.add(key)
        # Compiling the whole module for each of a thousand mutants takes seconds; the function
        # (or top-level statement) around the change says the same, and the whole module is
        # asked only when that fails.
        unit_start, unit_end = next((u for u in units if u[0] <= mutant.start and mutant.end <= u[1]), (0, len(text)))
        fragment = text[unit_start : mutant.start] + mutant.replacement + text[mutant.end : unit_end]
        if fragment[:1].isspace():
            fragment = "if True:\n" + fragment
        if _compiles(fragment, path) or _compiles(mutant.apply(text), path):
            found.append(mutant)
    return found


def diff_lines(mutant: Mutant, text: str) -> list[str]:
    """The changed lines, ``-`` before and ``+`` after.  Every operator keeps the line count,
    so the mutant's lines are the original's line numbers."""
    before = _NEWLINE.split(text)[mutant.line - 1 : mutant.end_line]
    after = _NEWLINE.split(mutant.apply(text))[mutant.line - 1 : mutant.end_line]
    diff = list(difflib.unified_diff(before, after, n=0, lineterm=""))[2:]  # no file names
    lines = [line for line in diff if not line.startswith("@@")]
    if len(lines) > DIFF_LINES:
        lines = lines[: DIFF_LINES - 1] + [f"  ... ({len(lines) - DIFF_LINES + 1} more lines)"]
    return lines


# ------------------------------------------------------------------------------ running them
def package_of(module: Path) -> Path:
    """The top-level package directory holding ``module`` (the outermost directory with an
    ``__init__.py`` above it), or the module itself if it is not in a package."""
    package = None
    directory = module.parent
    while (directory / "__init__.py").is_file():
        package = directory
        directory = directory.parent
    return package or module


def module_name(module: Path) -> str:
    top = package_of(module)
    relative = module.relative_to(top.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_root(start: Path) -> Path:
    """The repository root: the nearest directory above ``start`` with project metadata."""
    for directory in [start, *start.parents]:
        if any((directory / name).exists() for name in ("pyproject.toml", "setup.py", "setup.cfg", ".git")):
            return directory
    return Path.cwd()


@dataclasses.dataclass
class Outcome:
    """One run of a command: ``status`` is "passed", "failed" or "timeout"."""

    status: str
    returncode: int | None
    seconds: float
    tail: str  # the last lines of its output

    @property
    def summary(self) -> str:
        """The last line of output: pytest's tally."""
        return self.tail.rsplit("\n", 1)[-1].strip()[:200]


class Stopped(Exception):
    """The run was interrupted: no new process is started."""


def _has_exited(process: subprocess.Popen) -> bool:
    """Whether the process has exited, leaving it unreaped where the platform allows."""
    if hasattr(os, "waitid"):
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    return process.poll() is not None  # (macOS: reaps it, so a kill may come just too late)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Runner:
    """Runs the test command against fresh copies of packages, each in its own process group."""

    def __init__(self, command: list[str], root: Path, timeout: float, workdir: Path) -> None:
        self.command = command
        self.root = root
        self.timeout = timeout
        self.workdir = workdir
        # One bytecode cache for the whole run: the installed libraries compile once, and each
        # copy has a path of its own in it, so a mutant never meets another's bytecode.
        self.pycache = workdir / "pycache"
        self._live: set[subprocess.Popen] = set()
        self._stopped = False
        self._lock = threading.Lock()

    def environment(self, copy_parent: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy_parent), env.get("PYTHONPATH")]))
        env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # the baseline's bytecode shows what it imported
        # Hypothesis saves failing examples and replays them in later runs: a mutant's must
        # neither reach the working tree nor decide another mutant's fate.
        env["HYPOTHESIS_STORAGE_DIRECTORY"] = str(copy_parent / ".hypothesis")
        return env

    def copy(self, module: Path, text: str) -> tuple[Path, Path]:
        """A fresh copy of the module's package, with ``text`` as the module: (the directory to
        put on PYTHONPATH, the module's path in the copy)."""
        parent = Path(tempfile.mkdtemp(prefix="copy-", dir=self.workdir))
        top = package_of(module)
        if top == module:
            shutil.copy2(module, parent / module.name)
        else:
            shutil.copytree(top, parent / top.name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        copied = parent / module.relative_to(top.parent)
        copied.write_bytes(text.encode("utf-8"))
        return parent, copied

    def run(self, command: list[str], env: dict[str, str], timeout: float, log: Path) -> Outcome:
        began = time.monotonic()
        with open(log, "wb") as output, self._lock:
            if self._stopped:
                raise Stopped
            process = subprocess.Popen(
                command,
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group of its own, to kill whole on timeout
            )
            self._live.add(process)
        # Wait without reaping: while a process is in ``_live`` its id (and its group's) cannot
        # be reused, so killing the group can only reach processes this run started.
        deadline = began + timeout
        timed_out = False
        while not _has_exited(process):
            if time.monotonic() >= deadline:
                timed_out = True
                with self._lock:
                    _kill_group(process)
                break
            time.sleep(POLL_INTERVAL)
        with self._lock:
            self._live.discard(process)
        returncode = process.wait()
        seconds = round(time.monotonic() - began, 2)
        tail = "\n".join(log.read_bytes().decode("utf-8", "replace").rstrip().splitlines()[-30:])
        if timed_out:
            return Outcome("timeout", None, seconds, tail)
        return Outcome("passed" if returncode == 0 else "failed", returncode, seconds, tail)

    def stop(self) -> None:
        """Kill what runs now and start nothing more."""
        with self._lock:
            self._stopped = True
            for process in self._live:
                _kill_group(process)

    def run_mutant(self, mutant: Mutant, text: str) -> Outcome:
        parent, _ = self.copy(mutant.path, mutant.apply(text))
        try:
            return self.run(self.command, self.environment(parent), self.timeout, parent / "output.log")
        finally:
            shutil.rmtree(parent, ignore_errors=True)

    def check_baseline(self, modules: list[Path], texts: dict[Path, str]) -> tuple[Outcome | None, str | None]:
        """Run the unmutated copy of one package (``modules`` are in it): (the tests' outcome,
        or None; why mutants of these modules cannot be judged, or None)."""
        parent, _ = self.copy(modules[0], texts[modules[0]])
        env = self.environment(parent)
        copies = {module: parent / module.relative_to(package_of(module).parent) for module in modules}
        try:
            # 1. Does the copy come before an installed (or editable) package on sys.path?
            python = self.command[0] if Path(self.command[0]).name.startswith("python") else sys.executable
            probe = "import importlib, sys; print(importlib.import_module(sys.argv[1]).__file__)"
            # (Writing no bytecode, which would stand for the tests' import in step 3.)
            probe_env = {**env, "PYTHONDONTWRITEBYTECODE": "1"}
            for module, copied in copies.items():
                name = module_name(module)
                check = self.run([python, "-c", probe, name], probe_env, IMPORT_CHECK_TIMEOUT, parent / "import.log")
                if check.status != "passed":
                    return None, f"importing {name} from the copy failed:\n{check.tail}"
                imported = Path(check.tail.rsplit("\n", 1)[-1].strip()).resolve()
                if imported != copied.resolve():
                    return None, (
                        f"with PYTHONPATH={parent}, {name} was imported from {imported}, not from the copy:"
                        " something on sys.path comes before PYTHONPATH (a flat layout, run from the"
                        " repository root?), so no mutant would ever run"
                    )
            # 2. Do the tests pass on it?
            outcome = self.run(self.command, env, self.timeout, parent / "output.log")
            if outcome.status == "timeout":
                return outcome, f"the unmutated tests did not finish within --timeout {self.timeout:g} s"
            if outcome.status == "failed":
                return outcome, (
                    f"the tests fail without any mutant (exit status {outcome.returncode}), so every"
                    f" mutant would count as killed.  The end of their output:\n{outcome.tail}"
                )
            # 3. Did they import the modules from the copy?  Their bytecode says so.
            for module, copied in copies.items():
                compiled = self.pycache.joinpath(*copied.resolve().parent.parts[1:])
                if not any(compiled.glob(f"{copied.stem}.*.pyc")):
                    return outcome, (
                        f"the tests passed without importing {module_name(module)} from the copy,"
                        " so no mutant of it could be killed"
                    )
            return outcome, None
        finally:
            shutil.rmtree(parent, ignore_errors=True)


# ------------------------------------------------------------------------------ the command line
def parse_range(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    try:
        low, high = int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a line range (like 120-340): {text!r}") from None
    return low, high


def parse_args(argv: list[str]) -> argparse.Namespace:
    options, command = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        prog="mutate.py",
        usage="%(prog)s MODULE.py [MODULE.py ...] [options] [-- TEST COMMAND...]",
        description="Mutation-testing sampler: how many small bugs in the modules do the tests notice?",
        epilog="Everything after -- is the test command (default: %s), run from the repository root."
        % " ".join(DEFAULT_COMMAND),
    )
    parser.add_argument("modules", nargs="+", type=Path, metavar="MODULE.py")
    parser.add_argument("--sample", type=int, default=150, help="mutants to run (default 150)")
    parser.add_argument("--seed", type=int, default=1, help="the draw's seed (default 1)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per test run (default 60)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument("--list", action="store_true", help="count the candidates per operator and exit")
    parser.add_argument("--only", type=parse_range, metavar="LINE-RANGE", help="only mutants starting on these lines")
    parser.add_argument("--root", type=Path, help="where the command runs (default: the repository root)")
    args = parser.parse_args(options)
    args.command = command or DEFAULT_COMMAND
    for module in args.modules:
        if module.suffix != ".py" or not module.is_file():
            parser.error(f"not a Python module: {module}")
    if args.sample < 1 or args.jobs < 1 or args.timeout <= 0:
        parser.error("--sample and --jobs must be at least 1, --timeout positive")
    return args


def _where(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    modules = list(dict.fromkeys(module.resolve() for module in args.modules))
    root = (args.root or find_root(modules[0].parent)).resolve()
    texts = {module: read_source(module) for module in modules}

    candidates = [mutant for module in modules for mutant in find_mutants(module, texts[module])]
    if args.only:
        low, high = args.only
        candidates = [m for m in candidates if low <= m.line <= high]
    by_operator = {name: sum(m.operator == name for m in candidates) for name in OPERATORS}
    if args.list:
        print(f"{len(candidates)} candidate mutants in {', '.join(_where(m, root) for m in modules)}")
        for name, count in by_operator.items():
            print(f"  {name:<11} {count:5}   {OPERATORS[name]}")
        return 0
    if not candidates:
        print("mutate.py: no candidate mutants", file=sys.stderr)
        return 2
    sampled = random.Random(args.seed).sample(candidates, min(args.sample, len(candidates)))
    sampled.sort(key=_position)

    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="mutate-")).resolve()
    runner = Runner(args.command, root, args.timeout, workdir)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)  # so that the test processes are killed too
    baseline: dict[str, float] = {}
    try:
        packages: dict[Path, list[Path]] = {}
        for module in dict.fromkeys(m.path for m in sampled):
            packages.setdefault(package_of(module), []).append(module)
        for package, members in packages.items():
            _progress(f"baseline: {' '.join(args.command)}  (unmutated copy of {_where(package, root)})")
            outcome, problem = runner.check_baseline(members, texts)
            if problem:
                print(f"mutate.py: stopping: {problem}", file=sys.stderr)
                return 2
            baseline[_where(package, root)] = outcome.seconds
            _progress(f"baseline: passed in {outcome.seconds:.1f} s")
        results = run_mutants(runner, sampled, texts, args.jobs, root)
    except KeyboardInterrupt:
        print("mutate.py: interrupted", file=sys.stderr)
        return 130
    finally:
        runner.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    results.sort(key=lambda result: _position(result[0]))
    report = make_report(args, root, modules, texts, candidates, by_operator, baseline, results)
    report["seconds"] = round(time.monotonic() - began, 1)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def run_mutants(runner: Runner, sampled: list[Mutant], texts: dict, jobs: int, root: Path):
    """[(mutant, outcome)], ``jobs`` at a time, with a progress line for each."""
    results = []
    width = len(str(len(sampled)))
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(runner.run_mutant, m, texts[m.path]): m for m in sampled}
        try:
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                mutant, outcome = futures[future], future.result()
                results.append((mutant, outcome))
                verdict = "survived" if outcome.status == "passed" else f"killed ({outcome.status})"
                _progress(
                    f"[{done:>{width}}/{len(sampled)}] {verdict:<16} {outcome.seconds:5.1f} s  "
                    f"{_where(mutant.path, root)}:{mutant.line}: {mutant.operator}: {mutant.before} -> {mutant.after}"
                )
        except BaseException:
            # Before the pool's exit waits for its threads: they end once their process does.
            runner.stop()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _position(mutant: Mutant):
    return (str(mutant.path), mutant.start, mutant.operator, mutant.replacement)


def make_report(args, root, modules, texts, candidates, by_operator, baseline, results) -> dict:
    entries = []
    for mutant, outcome in results:
        entries.append(
            {
                "file": _where(mutant.path, root),
                "line": mutant.line,
                "end_line": mutant.end_line,
                "operator": mutant.operator,
                "original": mutant.before,
                "mutated": mutant.after,
                "diff": diff_lines(mutant, texts[mutant.path]),
                "status": "survived" if outcome.status == "passed" else "killed",
                "killed_by": {"passed": None, "failed": "failure", "timeout": "timeout"}[outcome.status],
                "returncode": outcome.returncode,
                "seconds": outcome.seconds,
                "summary": outcome.summary,
            }
        )
    failed = sum(entry["killed_by"] == "failure" for entry in entries)
    timeout = sum(entry["killed_by"] == "timeout" for entry in entries)
    return {
        "modules": [_where(m, root) for m in modules],
        "command": args.command,
        "root": str(root),
        "seed": args.seed,
        "only": list(args.only) if args.only else None,
        "candidates": len(candidates),
        "candidates_by_operator": by_operator,
        "sampled": len(entries),
        "killed": failed + timeout,
        "killed_by_failure": failed,
        "killed_by_timeout": timeout,
        "survived": len(entries) - failed - timeout,
        "score": round(100 * (failed + timeout) / len(entries), 1) if entries else None,
        "baseline_seconds": baseline,
        "mutants": entries,
        "survivors": [entry for entry in entries if entry["status"] == "survived"],
    }


def print_report(report: dict) -> None:
    print(f"mutation sample of {', '.join(report['modules'])} (seed {report['seed']})")
    print(f"  command     {' '.join(report['command'])}")
    if report["only"]:
        print(f"  lines       {report['only'][0]}-{report['only'][1]}")
    print(f"  candidates  {report['candidates']:5}")
    print(f"  sampled     {report['sampled']:5}")
    print(
        f"  killed      {report['killed']:5}   "
        f"(by failure {report['killed_by_failure']}, by timeout {report['killed_by_timeout']})"
    )
    print(f"  survived    {report['survived']:5}")
    print(f"  score       {report['score']:5.1f} %")
    print(f"  took        {report['seconds']:5.0f} s")
    if report["survivors"]:
        print(f"\nsurvivors ({len(report['survivors'])}):")
    for entry in report["survivors"]:
        print(f"{entry['file']}:{entry['line']}: {entry['operator']}: {entry['original']} -> {entry['mutated']}")
        for line in entry["diff"]:
            print(f"    {line}")


if __name__ == "__main__":
    sys.exit(main())
