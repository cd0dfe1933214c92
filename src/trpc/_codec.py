"""How Python values become message bytes and back: CBOR, through cbor2.

Every message on the wire is exactly one CBOR data item (RFC 8949).  Call arguments travel as
``[positional]`` or ``[positional, keyword]`` (an array of the positional arguments, then, only if
there are any, a map of the keyword arguments); results and streamed items travel as themselves.
``docs/PROTOCOL.md`` gives the full mapping.

Decoding failures become :class:`~trpc.RpcError` with INVALID_ARGUMENT on the server (the
client sent something undecodable) and INTERNAL on the client; they never take a connection down.
"""

from __future__ import annotations

from typing import Any

import cbor2

from ._errors import RpcError
from ._status import Status

__all__ = ["encode", "decode", "encode_arguments", "decode_arguments"]

encode = cbor2.dumps
_loads = cbor2.loads
_EMPTY_ARGS = encode([[]])


def decode(payload: bytes, *, what: str = "message", status: Status = Status.INTERNAL) -> Any:
    """Decode one message; a malformed one raises RpcError(status)."""
    try:
        return _loads(payload)
    except Exception as exc:  # cbor2 raises a handful of types on hostile input
        raise RpcError(status, f"cannot decode the {what}: {exc}") from None


def encode_arguments(args: tuple, kwargs: dict) -> bytes:
    """Encode call arguments: ``[args]``, or ``[args, kwargs]`` when there are keyword arguments."""
    if kwargs:
        return encode([args, kwargs])
    if not args:
        return _EMPTY_ARGS
    return encode([args])


def decode_arguments(payload: bytes) -> tuple[list, dict]:
    """Decode call arguments; anything but ``[array]`` / ``[array, map]`` is INVALID_ARGUMENT."""
    value = decode(payload, what="request", status=Status.INVALID_ARGUMENT)
    if type(value) is list:
        if len(value) == 1 and type(value[0]) is list:
            return value[0], {}
        if (
            len(value) == 2
            and type(value[0]) is list
            and type(value[1]) is dict
            and all(type(key) is str for key in value[1])
        ):
            return value[0], value[1]
    raise RpcError(
        Status.INVALID_ARGUMENT,
        "the request must be a CBOR array [positional-arguments] or "
        "[positional-arguments, keyword-arguments]",
    )
