"""The fuzz targets in fuzz/ run briefly in CI: each for a bounded time (15 s) from its seed
corpus, on the normal build, in a child process.  A crash (a difference between the C code and
its reference, an exception the server core must not raise, a broken invariant) fails the test
with libFuzzer's report.  The long runs, and the sanitized build, are fuzz/README.md's business.

Skipped where atheris is not installed (it is in the ``test`` extras on Linux x86-64 with
Python 3.11+, where it comes as a wheel)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from trpc import _cext
from trpc._framer import FRAMERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "fuzz")
SECONDS = 15

try:
    import atheris  # noqa: F401
except ImportError as exc:
    atheris_error: str | None = str(exc)
else:
    atheris_error = None


@pytest.mark.parametrize("target", ["framer_diff", "cbor_diff", "server_core"])
def test_the_fuzz_target_finds_nothing_in_a_short_run(framer_name, target, tmp_path):
    if framer_name != "python":
        pytest.skip("one run covers both framers (the targets choose their framers themselves)")
    if atheris_error is not None:
        pytest.skip(f"atheris is not installed ({atheris_error}); pip install atheris")
    if "c" not in FRAMERS or _cext.speedups is None:
        pytest.skip("the targets compare the C modules, which are not built")
    corpus = tmp_path / "corpus"
    shutil.copytree(os.path.join(FUZZ, "corpus", target), corpus)  # the run adds to it
    env = {k: v for k, v in os.environ.items() if k != "TRPC_FRAMER"}
    result = subprocess.run(
        [
            sys.executable, os.path.join(FUZZ, f"{target}.py"), str(corpus),
            f"-max_total_time={SECONDS}", "-rss_limit_mb=2048", "-timeout=20",
            f"-artifact_prefix={tmp_path}{os.sep}",
        ],
        capture_output=True, text=True, timeout=SECONDS + 60, env=env, cwd=ROOT,
    )
    report = result.stderr[-6000:]
    assert result.returncode == 0, f"fuzz/{target}.py found a crash:\n{report}"
    assert "DONE" in result.stderr, report
