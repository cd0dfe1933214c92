"""The codec: the C encoder for plain values writes exactly what cbor2 writes, the C decoder
reads exactly what cbor2 reads, and both hand everything else to cbor2 (with trpc's hooks)."""

from __future__ import annotations

import enum
import math
import os
import struct
from collections import OrderedDict
from functools import partial

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trpc
from trpc import _cext, _codec
from trpc._messages import encode_default

from .helpers import run_python

cbor2_dumps = partial(cbor2.dumps, default=encode_default)
cbor2_loads = _codec._cbor2_loads  # cbor2's decoder, refusing bytes after the item

needs_c = pytest.mark.skipif(
    _cext.speedups_error is not None and os.environ.get("TRPC_REQUIRE_C") != "1",
    reason=f"the codec is unavailable: {_cext.speedups_error}",
)


def probe(make, cbor2_function):
    """A C encoder or decoder made by ``make``, with a fallback that records what reached it
    (in ``.seen``) before passing it to ``cbor2_function``."""
    seen = []

    def fallback(value):
        seen.append(value)
        return cbor2_function(value)

    class Probe:
        __call__ = staticmethod(make(fallback))

    result = Probe()
    result.seen = seen
    return result


@pytest.fixture
def dumps():
    from trpc import _speedups

    return probe(_speedups.make_encoder, cbor2_dumps)


@pytest.fixture
def loads():
    from trpc import _speedups

    return probe(_speedups.make_decoder, cbor2_loads)


def test_the_codec_uses_the_c_modules_when_they_are_built():
    if os.environ.get("TRPC_REQUIRE_C") == "1":
        assert _cext.speedups_error is None
    if _cext.speedups_error is None:
        assert type(_codec._dumps).__name__ == "builtin_function_or_method"
        assert type(_codec._loads).__name__ == "builtin_function_or_method"


# Every head size of both integer major types, on both sides of each boundary.
EDGE_INTS = sorted(
    {s * (b + d) for b in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1) for d in (-1, 0, 1) for s in (1, -1)}
    | {-(2**64), -(2**64) - 1, 2**64, 2**100, -(2**100)}
)


@needs_c
@pytest.mark.parametrize("value", EDGE_INTS)
def test_integers_match_cbor2(dumps, value):
    assert dumps(value) == cbor2.dumps(value)
    # Beyond 64 bits cbor2 writes a bignum (tag 2 or 3): those go to the fallback.
    assert dumps.seen == ([value] if not -(2**64) <= value < 2**64 else [])


@needs_c
@pytest.mark.parametrize(
    "value",
    [0.0, -0.0, 1.5, -2.25, 1e300, 5e-324, math.pi, math.nan, math.inf, -math.inf, 65504.0, 1e-7],
)
def test_floats_match_cbor2(dumps, value):
    assert dumps(value) == cbor2.dumps(value)
    assert dumps.seen == []


@needs_c
@pytest.mark.parametrize("size", [0, 1, 23, 24, 255, 256, 65535, 65536, 100_000])
def test_strings_and_bytes_of_every_head_size_match_cbor2(dumps, size):
    text = ("é" * size)[:size]
    for value in (b"x" * size, "a" * size, text, [b"\x00" * size, "b" * size]):
        assert dumps(value) == cbor2.dumps(value)
    assert dumps.seen == []


@needs_c
def test_containers_match_cbor2(dumps):
    values = [
        None, True, False, [], (), {}, [None, True, False], (1, (2, (3,))),
        {"i": 1}, {"message": "Hello Ada"}, [["Ada"]], [[1, 2], {"k": b"v"}],
        {1: "a", -1: "b", "c": [1.5], b"d": None, None: 0, 2.5: {}},  # keys of any plain type
        {(1, 2): "tuple key"},
        list(range(30)), {str(i): i for i in range(30)},
    ]
    for value in values:
        assert dumps(value) == cbor2.dumps(value), value
    assert dumps.seen == []


@trpc.message("codec.Point")
class Point:
    x: int = trpc.field(1)
    y: int = trpc.field(2)


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    pass


@needs_c
@pytest.mark.parametrize(
    "value",
    [
        Point(x=1, y=2),
        Color.RED,  # an int subclass: cbor2 decides
        MyStr("x"),
        bytearray(b"ab"),
        OrderedDict(a=1),
        {1, 2},
        2**64,
        "\ud800",  # a lone surrogate cannot be UTF-8: cbor2 raises its own error
    ],
    ids=repr,
)
def test_anything_not_plain_goes_to_cbor2_whole(dumps, value):
    try:
        expected = cbor2_dumps(value)
    except Exception as exc:
        with pytest.raises(type(exc)):
            dumps(value)
    else:
        assert dumps(value) == expected
    assert dumps.seen == [value]


@needs_c
def test_a_message_inside_plain_containers_sends_the_whole_value_to_cbor2(dumps):
    value = {"points": [Point(x=1, y=2), Point(x=3, y=4)], "n": 2}
    assert dumps(value) == cbor2_dumps(value)
    assert dumps.seen == [value]
    assert _codec.decode(_codec._dumps(value)) == value


@needs_c
def test_deep_or_cyclic_values_reach_cbor2(dumps):
    deep = []
    for _ in range(200):
        deep = [deep]
    assert dumps(deep) == cbor2.dumps(deep)
    assert dumps.seen == [deep]

    shallow = []
    for _ in range(60):
        shallow = [shallow]
    assert dumps(shallow) == cbor2.dumps(shallow)

    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(cbor2.CBOREncodeError):
        dumps(cyclic)


def test_make_encoder_wants_a_callable():
    if _cext.speedups_error is not None:
        pytest.skip("the codec is unavailable")
    from trpc import _speedups

    with pytest.raises(TypeError):
        _speedups.make_encoder(42)


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text()
    | st.binary(),
    lambda children: st.lists(children, max_size=5)
    | st.lists(children, max_size=5).map(tuple)
    | st.dictionaries(st.text(max_size=5) | st.integers(-30, 30), children, max_size=5),
    max_leaves=30,
)


@needs_c
@settings(max_examples=300, deadline=None)
@given(value=plain)
def test_any_plain_value_encodes_as_cbor2_does(value):
    assert _codec._dumps(value) == cbor2_dumps(value)


@needs_c
@settings(max_examples=100, deadline=None)
@given(value=plain)
def test_round_trip(value):
    decoded = _codec.decode(_codec._dumps(value))
    # CBOR has no tuple: arrays come back as lists.
    assert cbor2.dumps(decoded) == cbor2.dumps(value)


def test_without_the_c_codec_cbor2_does_the_work_and_one_warning_says_so():
    code = (
        "import sys, logging; logging.basicConfig()\n"
        "sys.modules['trpc._speedups'] = None\n"
        "{block}"
        "from trpc import _codec, _framer\n"
        "print(_codec._dumps({{'i': 1}}).hex(), _codec._loads(bytes.fromhex('a1616901')),"
        " _framer.get_framer().name, _framer.get_framer('python').name)\n"
    )
    codec_only = run_python(code.format(block=""))
    assert codec_only.stdout.split()[:3] == ["a1616901", "{'i':", "1}"], codec_only
    assert codec_only.stderr.count("WARNING:trpc:") == 1, codec_only.stderr
    assert "codec is unavailable" in codec_only.stderr

    both = run_python(code.format(block="sys.modules['trpc._framer_cffi'] = None\n"))
    assert both.stdout.split() == ["a1616901", "{'i':", "1}", "python", "python"], both
    assert both.stderr.count("WARNING:trpc:") == 1, both.stderr
    assert "codec is unavailable" in both.stderr and "C framer is unavailable" in both.stderr

    required = run_python(code.format(block=""), TRPC_REQUIRE_C="1")
    assert required.returncode != 0 and "_speedups" in required.stderr, required


@needs_c
def test_a_codec_built_for_another_version_is_not_used():
    result = run_python(
        "import sys, trpc._version as v; v.__version__ = '0.0.0+other'\n"
        "sys.modules.pop('trpc._cext')\n"
        "import importlib; _cext = importlib.import_module('trpc._cext')\n"
        "print('fallback:', _cext.speedups_error)\n"
    )
    assert "fallback:" in result.stdout and "0.0.0+other" in result.stdout, result


# ------------------------------------------------------------------------------- decoding


def same_as_cbor2(loads, payload: bytes):
    """Decode with the C decoder and with cbor2: the same value, or the same exception type."""
    try:
        expected = cbor2_loads(payload)
    except Exception as exc:
        with pytest.raises(type(exc)):
            loads(payload)
        return
    got = loads(payload)
    assert type(got) is type(expected)
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(got)
    else:
        assert cbor2.dumps(got) == cbor2.dumps(expected)  # also tells -0.0 from 0.0, and types


@needs_c
@pytest.mark.parametrize("payload", ["f97e00", "f9fe00", "f97c01", "f97e01", "f9ff0a", "f97fff", "f9fdff"])
def test_half_precision_nans_decode_to_cbor2s_very_bits(loads, payload):
    # Found by fuzz/cbor_diff.py: the C decoder dropped the payload of a half-precision NaN
    # (PyFloat_Unpack2) where cbor2 6 keeps it; such NaNs now go to cbor2, the usual one does not.
    payload = bytes.fromhex(payload)
    got, expected = loads(payload), cbor2_loads(payload)
    assert struct.pack(">d", got) == struct.pack(">d", expected)
    assert loads.seen == ([] if payload[1:] in (b"\x7e\x00", b"\xfe\x00") else [payload])


@needs_c
@pytest.mark.parametrize("value", EDGE_INTS)
def test_decoding_integers(loads, value):
    payload = cbor2.dumps(value)
    assert loads(payload) == value
    assert loads.seen == ([payload] if not -(2**64) <= value < 2**64 else [])


@needs_c
def test_decoding_plain_values_never_needs_cbor2(loads):
    values = [
        None, True, False, 0, -1, 1.5, -0.0, math.inf, "", "héllo", b"", b"\x00" * 300, [], {},
        [None, [1, [2.5]]], {"i": 1}, {"message": "Hello Ada"}, [["Ada"]], {1: "a", -2: b"b", b"c": [], "d": {}},
    ]
    for value in values:
        assert loads(cbor2.dumps(value)) == value
    assert math.isnan(loads(cbor2.dumps(math.nan)))  # cbor2 writes NaN and infinities as half floats
    assert loads(b"\xfa\x3f\xc0\x00\x00") == 1.5  # a 32-bit float
    assert loads(b"\xf9\x3c\x00") == 1.0  # a 16-bit one
    assert loads.seen == []


@needs_c
@pytest.mark.parametrize(
    "payload",
    [
        b"",  # nothing
        b"\x01\x02",  # bytes after the item (refused: cbor2.loads alone would ignore them)
        b"\x1c",  # reserved additional info
        b"\x19\x01",  # truncated head
        b"\x5a\xff\xff\xff\xff",  # a 4 GiB byte string in 5 bytes
        b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",  # 2**64 - 1 items
        b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff",  # 2**63 - 1 pairs
        b"\x83\x01\x02",  # an array one item short
        b"\xa2\x01\x02\x03",  # a map one value short
        b"\x63\xed\xa0\x80",  # UTF-8 of a surrogate
        b"\x62\xc3",  # text cut inside a character
        b"\x9f\x01\xff",  # indefinite array
        b"\x5f\x41\x61\xff",  # indefinite byte string
        b"\xa1\x82\x01\x02\x03",  # an array as a map key: cbor2 makes it a tuple
        b"\xa1\xf5\x01",  # true as a map key
        b"\xa2\x01\x02\x01\x03",  # duplicate keys: the last one wins
        b"\xf7",  # undefined
        b"\xf0",  # a simple value
        b"\xf9\x3c\x00",  # a half float
        b"\xc1\x1a\x00\x00\x00\x00",  # a tag (epoch date)
        b"\xc2\x49\x01" + b"\x00" * 8,  # a bignum
        b"\xd8\x1b\x82\x6a" + b"codec.Poin" + b"\xa0",  # a message of an unknown type
        b"\x81" * 100 + b"\x00",  # deeper than the C decoder goes
        b"\x81" * 60 + b"\x00",  # not quite
        b"\xff",  # a lone break
    ],
)
def test_decoding_anything_unusual_gives_what_cbor2_gives(loads, payload):
    same_as_cbor2(loads, payload)


@needs_c
def test_bytes_after_the_item_are_refused(loads):
    for payload in (b"\x01\x02", cbor2.dumps({"i": 1}) + b"\x00", _codec._dumps(Point(x=1, y=2)) + b"\xf6"):
        with pytest.raises(cbor2.CBORDecodeError, match="after the data item"):
            loads(payload)
        with pytest.raises(trpc.RpcError):
            _codec.decode(payload)


def test_a_message_decodes_through_the_tag_hook(loads):
    value = {"points": [Point(x=1, y=2)]}
    payload = _codec._dumps(value)
    assert loads(payload) == value
    assert loads.seen == [payload]


@needs_c
def test_non_bytes_payloads_go_to_cbor2(loads):
    assert loads(bytearray(b"\x01")) == 1
    assert loads(memoryview(b"\x02")) == 2
    assert len(loads.seen) == 2


@needs_c
@settings(max_examples=300, deadline=None)
@given(value=plain)
def test_any_plain_payload_decodes_as_cbor2_does(value):
    payload = cbor2.dumps(value)
    assert cbor2.dumps(_codec._loads(payload)) == cbor2.dumps(cbor2_loads(payload))


@needs_c
@settings(max_examples=500, deadline=None)
@given(value=plain, data=st.data())
def test_mutated_payloads_decode_or_fail_as_cbor2_does(value, data):
    payload = bytearray(cbor2.dumps(value))
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        index = data.draw(st.integers(0, max(0, len(payload) - 1)))
        if action == "flip" and payload:
            payload[index] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del payload[index:]
        else:
            payload.insert(index, data.draw(st.integers(0, 255)))
    same_as_cbor2(_codec._loads, bytes(payload))


@needs_c
@settings(max_examples=500, deadline=None)
@given(payload=st.binary(max_size=40))
def test_random_bytes_decode_or_fail_as_cbor2_does(payload):
    same_as_cbor2(_codec._loads, payload)


def test_the_head_of_a_message_that_is_one_large_byte_string_is_found_where_encode_put_it():
    for blob in (bytes(_codec._BIG_BYTES), os.urandom(_codec._BIG_BYTES + 3)):
        for parts in (_codec.encode(blob), _codec.encode_arguments((blob,), {})):
            head, body = parts
            message = head + body
            assert _codec.large_bytes_head(message[: _codec.LARGE_HEAD_MAX], len(message)) == len(head)
            assert _codec.large_bytes_head(memoryview(message), len(message)) == len(head)
            assert _codec.large_bytes_head(message, len(message) + 1) == 0  # the length must be the rest
    for other in (_codec._dumps(bytes(100)),  # a byte string too small to be sent in two parts
                  _codec._dumps([bytes(_codec._BIG_BYTES), 1]),  # more after the byte string
                  _codec._dumps(list(range(30000)))):
        assert _codec.large_bytes_head(other, len(other)) == 0
