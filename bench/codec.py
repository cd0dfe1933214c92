"""Benchmark the CBOR codec: trpc's C fast path against cbor2 alone, value by value.

For each value (the messages the other benchmarks send: an int, ``{"i": n}``, a greeting and its
arguments, a small record, 1 MiB of bytes), encoding and decoding, ns per call: trpc's codec
(``trpc._codec._dumps`` / ``_loads``: the C fast path, with cbor2 behind it for anything not
plain) against cbor2 with trpc's hooks (what trpc used before, and still uses without a C
compiler).  The two take turns, repetition by repetition; each cell is the median of the
repetitions, and the ratio column the median of the per-turn ratios.  Both are checked to give
the same bytes and the same values before timing.

Usage::

    python bench/codec.py            # 7 repetitions of 0.2 s per cell
    python bench/codec.py --quick    # 3 repetitions of 0.05 s
    python bench/codec.py --json     # one JSON object on stdout, the table on stderr
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from _machine import machine

from trpc import _cext, _codec

VALUES = {
    "int": 12345,
    "{'i': n}": {"i": 12345},
    "'Hello Ada'": "Hello Ada",
    "[['Ada']] (greet's arguments)": [["Ada"]],
    "{'message': 'Hello Ada'}": {"message": "Hello Ada"},
    "record": {"id": 42, "name": "Ada Lovelace", "tags": ["math", "poetry"], "score": 9.5, "ok": True},
    "1 MiB of bytes": bytes(1 << 20),
}


def per_call(function, argument, seconds: float) -> float:
    """ns per call of ``function(argument)``, timed for about ``seconds``."""
    n = 1
    while True:
        started = time.perf_counter()
        for _ in range(n):
            function(argument)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return elapsed / n * 1e9
        n *= 2 if elapsed < seconds / 8 else max(2, int(seconds / elapsed) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if _cext.speedups is None:
        raise SystemExit(f"trpc's C codec is unavailable: {_cext.speedups_error}")
    repeat, seconds = (3, 0.05) if args.quick else (7, 0.2)
    fast = {"encode": _codec._dumps, "decode": _codec._loads}
    slow = {"encode": _codec._cbor2_dumps, "decode": _codec._cbor2_loads}
    results: dict = {}
    for name, value in VALUES.items():
        payload = slow["encode"](value)
        assert fast["encode"](value) == payload, name
        assert fast["decode"](payload) == slow["decode"](payload), name
        for op, argument in (("encode", value), ("decode", payload)):
            c_times, cbor2_times, ratios = [], [], []
            for _ in range(repeat):
                c = per_call(fast[op], argument, seconds)
                plain = per_call(slow[op], argument, seconds)
                c_times.append(c)
                cbor2_times.append(plain)
                ratios.append(plain / c)
            results.setdefault(name, {})[op] = {
                "c_ns": statistics.median(c_times),
                "cbor2_ns": statistics.median(cbor2_times),
                "speedup": statistics.median(ratios),
            }
            print(f"  {name} {op}: done", file=sys.stderr)
    out = sys.stderr if args.json else sys.stdout
    print(f"\nCBOR codec, ns per call; {machine()}; {time.strftime('%Y-%m-%d')}; median of {repeat}\n", file=out)
    print(f"{'value':<32}{'encode C':>10}{'cbor2':>10}{'x':>7}{'decode C':>11}{'cbor2':>10}{'x':>7}", file=out)
    for name, ops in results.items():
        e, d = ops["encode"], ops["decode"]
        print(
            f"{name:<32}{e['c_ns']:>10,.0f}{e['cbor2_ns']:>10,.0f}{e['speedup']:>6.1f}x"
            f"{d['c_ns']:>11,.0f}{d['cbor2_ns']:>10,.0f}{d['speedup']:>6.1f}x",
            file=out,
        )
    if args.json:
        print(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"), "results": results}))


if __name__ == "__main__":
    main()
