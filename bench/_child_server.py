"""A benchmark's server in a child process, with TLS from a throwaway CA.

The child is the benchmark script itself, run as ``SCRIPT --serve FOLDER``: it serves with
the certificate and key ``FOLDER/cert.pem`` and ``FOLDER/key.pem``, and prints one line of
JSON, its targets by name, once it listens (bench/quic.py, bench/quic_loss.py).  A server in
its own process keeps its CPU apart from the client's, which is in the benchmark's process.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import trustme


@contextmanager
def child_server(script: str) -> Iterator[tuple[dict[str, str], ssl.SSLContext]]:
    """Run ``script --serve FOLDER`` until the block ends; yields its targets and a client
    context that trusts its certificate (for 127.0.0.1 and localhost)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    with tempfile.TemporaryDirectory() as folder:
        leaf.cert_chain_pems[0].write_to_path(f"{folder}/cert.pem")
        leaf.private_key_pem.write_to_path(f"{folder}/key.pem")
        server = subprocess.Popen([sys.executable, script, "--serve", folder], stdout=subprocess.PIPE)
        try:
            assert server.stdout is not None
            targets = json.loads(server.stdout.readline())
            context = ssl.create_default_context()
            ca.configure_trust(context)
            yield targets, context
        finally:
            server.terminate()
            server.wait()
