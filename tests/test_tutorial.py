"""The tutorial's code runs as docs/tutorial.md shows it: the files it includes are the files
run here, and the outputs it shows are compared with what they print."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import trpc

from .helpers import listening_address

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial"


@pytest.fixture
def tutorial_path(monkeypatch):
    """The tutorial's folder importable, as it is for a reader who runs its files there."""
    monkeypatch.syspath_prepend(str(TUTORIAL))
    for name in ("bakery", "shop"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def session_steps(text: str) -> list[tuple[str, str]]:
    """(command, expected output) for each ``$ `` line of a console transcript."""
    steps: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return [(command, "".join(out + "\n" for out in lines)) for command, lines in steps]


def expected_exit_status(output: str) -> int:
    """0, or 64 + the status code for a call that failed (``NAME: message`` as its first line)."""
    match = re.match(r"([A-Z_]+): ", output)
    return 64 + trpc.Status[match.group(1)].value if match and match.group(1) in trpc.Status.__members__ else 0


async def test_the_client_prints_what_the_tutorial_shows(tutorial_path, nursery, capsys):
    import bakery
    import shop

    server = trpc.Server(bakery.Bakery())
    host, port = await nursery.start(server.serve_tcp, 0)
    with trio.fail_after(30):
        await shop.main(f"{host}:{port}")
    assert capsys.readouterr().out == (TUTORIAL / "shop.out").read_text()


async def test_the_command_line_session_prints_what_the_tutorial_shows(nursery):
    process = await nursery.start(
        lambda task_status: trio.run_process(
            [sys.executable, "-m", "trpc", "serve", "bakery:Bakery", "--port", "0"],
            cwd=TUTORIAL, stdout=subprocess.PIPE, check=False, task_status=task_status,
        )
    )
    try:
        address = await listening_address(process)
        trpc_command = f"{shlex.quote(sys.executable)} -m trpc"
        steps = session_steps((TUTORIAL / "session.console").read_text())
        assert len(steps) >= 5
        for command, expected in steps:
            line = re.sub(r"\btrpc (?=call|list|describe)", trpc_command + " ", command)
            line = line.replace("127.0.0.1:50051", address)
            with trio.fail_after(60):
                result = await trio.run_process(
                    line, shell=True, capture_stdout=True, stderr=subprocess.STDOUT, check=False
                )
            assert (command, result.stdout.decode()) == (command, expected)
            assert result.returncode == expected_exit_status(expected), command
    finally:
        process.terminate()
