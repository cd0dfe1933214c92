"""Write the seed corpus of each fuzz target into fuzz/corpus/<target>/ (small, valid inputs in
each target's input layout; see the targets' docstrings).  The files are committed; rerun this
only when a layout changes: ``python fuzz/make_corpus.py``."""

from __future__ import annotations

import os
import struct

import cbor2

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = struct.Struct(">IBBI")
PREFACE = struct.Struct(">4sBBHIIIII")


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), ftype, flags, stream_id) + payload


def write(target: str, seeds: dict[str, bytes]) -> None:
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


# A unary call as a client sends it, and other frames of every type.
CALL = frame(1, 0, 1, cbor2.dumps({1: "greet"})) + frame(0, 1, 1, cbor2.dumps([["Ada"]]))
FRAMES = (
    CALL
    + frame(1, 0, 3, cbor2.dumps({1: "total", 2: 1_000_000, 3: {"k": "v", "b": b"\x00"}}))
    + frame(0, 2, 3, b"\x82\x81")
    + frame(0, 0, 3, b"\x01\x80")
    + frame(0, 0, 3, b"\x02")
    + frame(0, 0, 3, b"\x03")
    + frame(0, 1, 3)
    + frame(4, 0, 0, (1000).to_bytes(4, "big"))
    + frame(4, 0, 3, (1000).to_bytes(4, "big"))
    + frame(5, 0, 0, b"pingpong")
    + frame(3, 0, 3, cbor2.dumps({1: 1, 2: "bye"}))
    + frame(6, 0, 0, cbor2.dumps({1: 3, 2: 0}))
)


def framer_seeds() -> dict[str, bytes]:
    # options, max_frame_size (3 bytes), large - 1, count | feed-bits << 4, sizes..., body
    def seed(options: int, mfs: int, large: int, sizes: list[int], methods: int, body: bytes) -> bytes:
        return bytes([options]) + mfs.to_bytes(3, "big") + bytes([large, len(sizes) | methods << 4, *sizes]) + body

    big = frame(0, 0, 7, bytes(range(256)) * 3)
    return {
        "one-call": seed(4, 0, 0, [], 0, CALL),
        "frames-split": seed(4, 0, 0, [3, 17, 1, 40, 9], 0b0101, FRAMES),
        "bytewise": seed(4, 0, 0, [1] * 15, 0b1010, CALL),
        "large-collected": seed(6, 0, 15, [5, 100, 199, 7], 0b0011, big + CALL),
        "too-large": seed(5, 0, 0, [12], 0, CALL + HEADER.pack(1 << 20, 0, 0, 9) + b"xx"),
        "truncated": seed(4, 0, 0, [4], 0, CALL[:-3]),
        "runs": seed(0, 0, 0, [], 0, b"".join(frame(0, 0, 5, bytes([i + 1])) for i in range(40))),
        # 12 frames repeated 136 times: more frames in one chunk than one C call describes.
        "capacity": seed(0xF4, 0, 0, [], 0, b"".join(frame(0, 0, 5 + (i % 50 == 0), b"\x01") for i in range(12))),
    }


def cbor_seeds() -> dict[str, bytes]:
    values = {
        "uint": 1_000_000, "negint": -(2**63) - 5, "bytes": b"\x00\xff" * 20, "text": "héllo ✓",
        "array": [1, [2, [3.5, None]], True, False], "map": {1: "a", -2: b"b", b"c": [], "d": {}},
        "float": 1e300, "args": [["Ada"], {"greeting": "hi"}], "big": 2**70,
    }
    seeds = {name: cbor2.dumps(value) for name, value in values.items()}
    seeds.update({
        "half": b"\xf9\x3c\x00", "single": b"\xfa\x3f\xc0\x00\x00", "nan": b"\xf9\x7e\x00",
        "tag-message": cbor2.dumps(cbor2.CBORTag(27, ["fuzz.Point", {1: 3, 2: [1]}])),
        "indefinite": b"\x9f\x01\x5f\x41\x00\xff\xff", "simple": b"\xf0", "undefined": b"\xf7",
        "trailing": b"\x01\x02",
    })
    return seeds


def server_seeds() -> dict[str, bytes]:
    def feed(data: bytes, max_frames: int = 63) -> bytes:
        out = b""
        for i in range(0, len(data), 239):
            piece = data[i : i + 239]
            out += bytes([max_frames << 2, len(piece)]) + piece
        return out

    many = b"".join(
        frame(1, 0, i, cbor2.dumps({1: "m"})) + frame(0, 1, i, b"\x81\x80") for i in range(1, 8)
    )
    return {
        "unary": bytes([16, 0]) + feed(CALL) + b"\x03",
        "frames": bytes([16, 1]) + feed(FRAMES, 2) + bytes([1 | 1 << 2, 1]) + b"\x03",
        "python-small": bytes([1 | 2 | 4 | 8 | 16, 2 | 8]) + feed(many, 1) + bytes([2, 6, 1]) + b"\x03",
        "held": bytes([8 | 16, 3 | 4]) + feed(FRAMES, 0) + bytes([1, 2, 2 | 4]) + feed(frame(4, 0, 3, b"\x00\x00\x10\x00")),
        "garbage": bytes([16, 0]) + feed(frame(9, 0, 1, b"?") + CALL),
        "batched": bytes([8 | 16, 1 | 16]) + feed(many, 3) + bytes([1]) + feed(frame(4, 0, 0, b"\x00\x00\x10\x00")) + b"\x03",
    }


if __name__ == "__main__":
    write("framer_diff", framer_seeds())
    write("cbor_diff", cbor_seeds())
    write("server_core", server_seeds())
