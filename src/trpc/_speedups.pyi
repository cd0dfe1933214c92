"""What ``trpc._speedups`` exports: the CPython extension built from ``csrc/speedups.c`` and
``csrc/cbor.c`` (its method table is in ``csrc/speedups.c``).  Keep the two in step; the
checkers compare this file with ``trpc._cext.SpeedupsModule``, which the rest of the package
uses."""

from collections.abc import Callable
from ._events import CborValue

#: The trpc version the module was built for (the ``TRPC_VERSION`` define).
__version__: str

def frame_run(payloads: list[bytes], stream_id: int, credit: int, max_size: int, /) -> tuple[bytes, int, int]:
    """The first payloads whose total fits in ``credit``, framed as DATA frames of
    ``stream_id`` in one bytes: ``(frames, count, size)``."""

def make_encoder(fallback: Callable[[CborValue], bytes], /) -> Callable[[CborValue], bytes]:
    """A CBOR encoder for plain values that calls ``fallback(value)`` for any other value."""

def make_decoder(fallback: Callable[[bytes], CborValue], /) -> Callable[[bytes], CborValue]:
    """A CBOR decoder for plain payloads that calls ``fallback(payload)`` for any other one."""
