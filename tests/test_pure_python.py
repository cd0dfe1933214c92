"""The pure-Python path: with ``TRPC_SPEEDUPS=0`` trpc runs without its CPython extension
(cbor2 alone for CBOR, the Python twin of frame_run), as it does where no compiler was
available at install; the call suites must pass there too.  They run in a child pytest, since
the choice is made when trpc is imported."""

from __future__ import annotations

import os

import pytest

from .helpers import run_python

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
    "test_cancel_races.py",
    "test_limits.py",
]


def test_the_call_suites_pass_without_the_extension(framer_name):
    if framer_name != "python":
        pytest.skip("one run covers both framers (the child runs the suites for each)")
    suites = [os.path.join(TESTS, name) for name in SUITES]
    result = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", *suites], timeout=600, TRPC_SPEEDUPS="0")
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary, summary


def test_speedups_disabled_is_silent_and_pure_python():
    result = run_python(
        "import logging; logging.basicConfig()\n"
        "from trpc import _cext, _codec, _framer\nfrom trpc.wire import _connection as _protocol\n"
        "_framer.get_framer()\n"
        "print(_cext.speedups, _codec._dumps.func.__name__, _protocol._frame_run.__name__)\n",
        TRPC_SPEEDUPS="0",
        TRPC_REQUIRE_C="1",
    )
    assert result.stdout.split() == ["None", "dumps", "_frame_run_py"], result
    assert "WARNING" not in result.stderr, result.stderr
