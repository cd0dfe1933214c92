#!/usr/bin/env bash
# Run a fuzz target (or any Python script) on the sanitized build of fuzz/build_sanitized.sh:
#   fuzz/run_sanitized.sh fuzz/framer_diff.py fuzz/corpus/framer_diff -max_total_time=180
# The script checks that the sanitized modules are the ones loaded before it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=fuzz/build/sanitized/env.sh
[ -f "$ENV" ] || { echo "run fuzz/build_sanitized.sh first" >&2; exit 2; }
. "$ENV"
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -c 'import trpc._framer_c as f, trpc._cext as c, sys
for m in (f.lib.__file__ if hasattr(f.lib, "__file__") else __import__("trpc._framer_cffi").__file__, c.speedups.__file__):
    assert "/fuzz/build/sanitized/" in m, m
' || { echo "the sanitized modules are not the ones loaded" >&2; exit 2; }
exec "$PYTHON" "$@"
