"""What pip and PyPI show of trpc, and README's two commands as CI runs them.

Building and installing the wheel and sdist compiles the C modules (too slow for the suite):
README's "The two commands" section says how that was checked by hand.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the checks need no more


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_distribution_has_a_free_name_that_readme_states():
    name = _project()["name"]
    assert name != "trpc"  # another project's name on PyPI
    assert f"**The distribution is named `{name}`**" in (ROOT / "README.md").read_text()


def test_the_metadata_has_readme_licence_and_classifiers():
    project = _project()
    assert project["readme"] == "README.md"
    assert project["license"] == "MIT"
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert {"Typing :: Typed", "Framework :: Trio"} <= set(project["classifiers"])


def test_ci_runs_readmes_two_commands_each_from_a_fresh_environment():
    # The lines .ci/run extracts (its awk program, run here on README), and what they begin with.
    script = (ROOT / ".ci" / "run").read_text()
    program = re.search(r"awk '(.*?)' README.md", script, flags=re.S).group(1)
    found = subprocess.run(["awk", program, str(ROOT / "README.md")], capture_output=True, text=True, check=True)
    commands = found.stdout.splitlines()
    assert len(commands) == 2
    for command in commands:
        assert command.startswith("python3 -m venv --clear .venv && ")
    assert commands[0].endswith("python -m trpc.examples.demo")
    assert commands[1].endswith("python -m pytest")
    for command in commands:  # and .ci/run runs each as written, on a line of its own
        assert f"\n{command}\n" in script
