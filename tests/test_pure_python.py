"""The pure-Python path: with ``TRPC_SPEEDUPS=0`` trpc runs without its CPython extension
(cbor2 alone for CBOR, the Python twin of frame_run), as it does where no compiler was
available at install; the call suites must pass there too.  They run in a child pytest, since
the choice is made when trpc is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
SUITES = [
    "test_rpc.py",
    "test_streaming.py",
    "test_batches.py",
    "test_deadlines.py",
    "test_interceptors.py",
    "test_flow_control.py",
    "test_chain.py",
    "test_channel.py",
    "test_wire_spec.py",
    "test_hostile.py",
]


def test_the_call_suites_pass_without_the_extension(framer_name):
    if framer_name != "python":
        pytest.skip("one run covers both framers (the child runs the suites for each)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRPC_")}
    env["TRPC_SPEEDUPS"] = "0"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary, summary


def test_speedups_disabled_is_silent_and_pure_python():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRPC_")}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging; logging.basicConfig()\n"
            "from trpc import _cext, _codec, _framer, _protocol\n"
            "_framer.get_framer()\n"
            "print(_cext.speedups, _codec._dumps.func.__name__, _protocol._frame_run.__name__)\n",
        ],
        env={**env, "TRPC_SPEEDUPS": "0", "TRPC_REQUIRE_C": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.split() == ["None", "dumps", "_frame_run_py"], result
    assert "WARNING" not in result.stderr, result.stderr
