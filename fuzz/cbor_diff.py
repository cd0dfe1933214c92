"""Differential fuzz target: trpc's C CBOR codec (``csrc/cbor.c``) against cbor2.

Theory of operation.  trpc decodes every message with ``trpc._codec._loads``: the C decoder of
``trpc._speedups``, which reads plain payloads itself and hands anything else to the reference,
``_codec._cbor2_loads`` (cbor2's ``CBORDecoder`` with trpc's tag hook, refusing bytes after the
one data item).  The C decoder promises that its result is always exactly the reference's.  So
each input (the raw payload, as it would arrive in a DATA frame) is decoded three ways:

- ``_codec._loads`` (the C fast path) and ``_codec._cbor2_loads`` (the reference): the results
  must be the same value of the same type, all the way down (floats compared bit for bit, dict
  keys in the same order, since the order decides the re-encoding); or both must fail with the
  same exception class (the C path passes every payload it cannot read to the reference, so a
  failure is cbor2's own; a different class means C raised an error of its own).
- ``_codec.decode`` (what the server and client call): the same value, or, exactly when the
  reference fails, ``trpc.RpcError`` with status INTERNAL.  "Both fail" thus means: cbor2
  raises any Exception, trpc raises RpcError, and nothing else escapes.

Round trip: a value that decoded is encoded again with the C encoder (``_codec._dumps``, cbor2
with trpc's ``default`` hook behind it) and with the reference (``cbor2.dumps`` with the same
hook): the bytes must be equal, or both must raise the same exception class.

A message class is registered, so that tag 27 payloads build trpc messages too.  Any difference
raises AssertionError, which atheris reports as a crash.

Run: ``python fuzz/cbor_diff.py fuzz/corpus/cbor_diff -max_total_time=300`` (see fuzz/README.md).
"""

from __future__ import annotations

import struct
import sys
from functools import partial

import atheris

with atheris.instrument_imports(include=["trpc", "cbor2"]):
    import cbor2

    import trpc
    from trpc import _codec
    from trpc._messages import encode_default

if _codec._loads is _codec._cbor2_loads:
    raise SystemExit("trpc._speedups is not loaded: nothing to compare (build trpc with TRPC_REQUIRE_C=1)")


@trpc.message("fuzz.Point")
class Point:
    x: int = trpc.field(1, default=0)
    y: list = trpc.field(2, default_factory=list)


reference_dumps = partial(cbor2.dumps, default=encode_default)
_double = struct.Struct(">d").pack


def same(a, b, seen: set | None = None) -> bool:
    """a and b are the same value: same types all the way down, floats bit for bit, dict keys in
    the same order.  Cycles (cbor2's shared references) are followed once."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return _double(a) == _double(b)
    if type(a) in (list, tuple, dict):
        seen = set() if seen is None else seen
        key = (id(a), id(b))
        if key in seen:
            return True
        seen.add(key)
        if len(a) != len(b):
            return False
        if type(a) is dict:
            return all(same(ka, kb, seen) and same(a[ka], b[kb], seen) for ka, kb in zip(a, b))
        return all(same(x, y, seen) for x, y in zip(a, b))
    try:
        return bool(a == b) or repr(a) == repr(b)  # repr: NaN inside other types, CBORTag cycles
    except RecursionError:
        return repr(a) == repr(b)


@atheris.instrument_func
def walk(payload: bytes) -> None:
    """Coverage guidance only: cbor2's decoder and trpc's are C, which the normal build gives
    libFuzzer no coverage of, so this walks the CBOR heads in (instrumented) Python, branching
    as the C decoder does (major type, argument size, length against what is left, nesting).
    Its result is not used."""
    pos, todo, depth = 0, 1, 0
    end = len(payload)
    while todo and pos < end:
        todo -= 1
        major, info = payload[pos] >> 5, payload[pos] & 31
        pos += 1
        if info < 24:
            arg = info
        elif info <= 27:
            n = 1 << (info - 24)
            if end - pos < n:
                return
            arg = int.from_bytes(payload[pos : pos + n], "big")
            pos += n
        elif info == 31 and major in (2, 3, 4, 5, 7):
            arg = -1  # indefinite
        else:
            return
        if major in (2, 3):
            if arg > end - pos:
                return
            pos += max(arg, 0)
        elif major == 4:
            depth += 1
            todo += arg if arg >= 0 else 1
        elif major == 5:
            depth += 1
            todo += 2 * arg if arg >= 0 else 2
        elif major == 6:
            todo += 1
        elif major == 7 and info in (25, 26, 27):
            if arg != arg or depth > 64:
                return
        if todo > end - pos:
            return


def attempt(function, value):
    """("ok", result) or ("error", exception class)."""
    try:
        return "ok", function(value)
    except Exception as error:  # any class is allowed here; the comparison judges it
        return "error", type(error)


def check(payload: bytes) -> None:
    fast = attempt(_codec._loads, payload)
    reference = attempt(_codec._cbor2_loads, payload)
    assert fast[0] == reference[0], f"C {fast!r:.500} vs cbor2 {reference!r:.500} for {payload.hex()[:400]}"
    if fast[0] == "error":
        assert fast[1] is reference[1], f"C raised {fast[1]}, cbor2 {reference[1]} for {payload.hex()[:400]}"
        try:
            _codec.decode(payload)
        except trpc.RpcError as error:
            assert error.status is trpc.Status.INTERNAL, error
        else:
            raise AssertionError(f"decode accepted what cbor2 refuses: {payload.hex()[:400]}")
        return
    value = fast[1]
    assert same(value, reference[1]), f"C {value!r:.500} != cbor2 {reference[1]!r:.500} for {payload.hex()[:400]}"
    assert same(_codec.decode(payload), value), "decode differs from _loads"

    encoded = attempt(_codec._dumps, value)
    expected = attempt(reference_dumps, value)
    if expected[0] == "ok":
        assert encoded == expected, f"C encoder {encoded!r:.500} != cbor2 {expected!r:.500} for {value!r:.300}"
    else:
        assert encoded[0] == "error" and encoded[1] is expected[1], f"{encoded!r:.300} vs {expected!r:.300}"


def TestOneInput(data: bytes) -> None:
    walk(data)
    check(data)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
