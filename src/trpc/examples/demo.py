"""README's first command: a real server and a real call on loopback, in two processes.

``python -m trpc.examples.demo`` starts ``trpc serve trpc.examples:Greeter --port 0`` in a child
process, reads the address it prints, runs ``trpc call ADDRESS greet Ada`` in another, shows what
it printed, stops the server (by the pid it started) and exits 0 only if the answer was
``Hello Ada``.
"""

from __future__ import annotations

import subprocess
import sys


def main() -> int:
    python = sys.executable
    server = subprocess.Popen(
        [python, "-m", "trpc", "serve", "trpc.examples:Greeter", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None  # stdout=PIPE
    try:
        line = server.stdout.readline()
        if not line.startswith("listening on "):
            print(f"demo: the server did not start (it printed {line!r})", file=sys.stderr)
            return 1
        address = line.split()[2]
        print(f"$ trpc serve trpc.examples:Greeter --port 0\n{line.rstrip()}")
        command = [python, "-m", "trpc", "call", address, "greet", "Ada"]
        print(f"$ trpc call {address} greet Ada")
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        version = subprocess.run([python, "-m", "trpc", "--version"], capture_output=True, text=True, timeout=60)
        print(f"$ trpc --version\n{version.stdout.rstrip()}")
        if result.returncode != 0 or result.stdout.strip() != "Hello Ada":
            print("demo: FAILED", file=sys.stderr)
            return 1
        print("demo: OK")
        return 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
