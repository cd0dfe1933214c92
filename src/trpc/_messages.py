"""Messages with stable field numbers, so that schemas can evolve.

A message class is a dataclass whose fields carry numbers::

    @trpc.message("shop.Order")
    class Order:
        item: str = trpc.field(1)
        quantity: int = trpc.field(2, default=1)

On the wire an instance is CBOR tag 27 ("serialised object", RFC 8949's registry) around
``[name, {field number: value}]``: ``Order("tea", 2)`` is ``27(["shop.Order", {1: "tea",
2: 2}])``.  The name and the numbers are the contract, not the Python names: rename a field
freely, never reuse a number.  A reader builds the class registered under the name, skips field
numbers it does not know (a newer writer's additions) and leaves fields the writer did not send
at their defaults (an older writer), so add new fields with defaults.  A message whose name no
class here registered arrives as a ``cbor2.CBORTag`` holding the raw ``[name, fields]``.

Encoding and decoding go through cbor2's ``default`` and ``tag_hook``; nothing else changes, so
values that are not messages cost what they always did.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast, overload

import cbor2

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:
    from typing_extensions import dataclass_transform

__all__ = ["message", "field", "MESSAGE_TAG", "encode_default", "decode_tag", "registered_messages"]

#: The CBOR tag of a message: 27, "serialised language-independent object with type name and
#: constructor arguments" in the IANA CBOR tags registry.
MESSAGE_TAG = 27
_NUMBER = "trpc.field_number"
_registry: dict[str, type] = {}

_T = TypeVar("_T")
_C = TypeVar("_C", bound=type)


# As type checkers see it: a field with a default has the default's type, so ``quantity: int =
# trpc.field(2, default=1)`` checks, and (with @message's dataclass_transform) the field is
# optional in the constructor.
@overload
def field(number: int, *, default: _T) -> _T: ...
@overload
def field(number: int, *, default_factory: Callable[[], _T]) -> _T: ...
@overload
def field(number: int) -> Any: ...
def field(number: int, *, default: Any = dataclasses.MISSING,
          default_factory: Callable[[], Any] | Any = dataclasses.MISSING) -> Any:
    """A message field with its stable number (a positive integer, unique in its message).

    ``default`` / ``default_factory`` as for ``dataclasses.field``; fields added to a message
    after its first release need one, so that readers can build it from older writers' data.
    """
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise TypeError(f"a field number is a positive integer, not {number!r}")
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_NUMBER: number})


@dataclass_transform(field_specifiers=(field,))
def message(name: str) -> Callable[[_C], _C]:
    """Make a class a message type registered under ``name`` (a dataclass is made of it if it is
    not one already).  Type checkers see it as a dataclass (``typing.dataclass_transform``):
    ``Order(item="tea", quantity=2)`` is checked against the fields.

    Raises:
        TypeError: a field has no number, two fields share one, or another class already
            registered ``name``.
    """
    if not isinstance(name, str) or not name:
        raise TypeError("a message needs a name, e.g. @trpc.message('shop.Order')")

    def register(given: _C) -> _C:
        # Any: dataclass() returns the class it was given, which no checker says of it.
        cls: Any = given if dataclasses.is_dataclass(given) else dataclasses.dataclass(given)
        by_number: dict[int, str] = {}
        for f in dataclasses.fields(cls):
            number = f.metadata.get(_NUMBER)
            if number is None:
                raise TypeError(f"{cls.__name__}.{f.name} has no field number: use trpc.field(N)")
            if number in by_number:
                raise TypeError(f"{cls.__name__}: fields {by_number[number]} and {f.name} share number {number}")
            by_number[number] = f.name
        existing = _registry.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise TypeError(f"message name {name!r} is already registered by {existing!r}")
        setattr(cls, "__trpc_message__", (name, tuple(by_number.items())))
        _registry[name] = cls
        return cast(_C, cls)

    return register


def registered_messages() -> dict[str, type]:
    """Every message class registered so far, by name (a copy)."""
    return dict(_registry)


def encode_default(encoder: cbor2.CBOREncoder, value: Any) -> None:
    """cbor2's ``default`` hook: encode message instances, refuse anything else unknown."""
    spec = getattr(type(value), "__trpc_message__", None)
    if spec is None:
        raise cbor2.CBOREncodeTypeError(f"cannot encode a {type(value).__name__} as CBOR")
    name, numbered = spec
    encoder.encode(cbor2.CBORTag(MESSAGE_TAG, [name, {n: getattr(value, attr) for n, attr in numbered}]))


def decode_tag(first: Any, second: Any) -> Any:
    """cbor2's ``tag_hook``: build registered messages; leave every other tag as it is.

    cbor2 5 calls it as ``(decoder, tag)``, cbor2 6 as ``(tag, immutable)``; both are accepted.
    cbor2 6 decodes a tag's content as tuples and frozendicts; a message's fields get lists and
    dicts back, as they would outside a tag.
    """
    tag = first if isinstance(first, cbor2.CBORTag) else second
    if tag.tag != MESSAGE_TAG:
        return tag
    content = tag.value
    if type(content) not in (list, tuple) or len(content) != 2 or not isinstance(content[1], Mapping):
        return tag
    cls = _registry.get(content[0]) if isinstance(content[0], str) else None
    if cls is None:
        return tag
    values = content[1]
    numbered: tuple[tuple[int, str], ...] = getattr(cls, "__trpc_message__")[1]
    return cls(**{attr: _thaw(values[n]) for n, attr in numbered if n in values})


def _thaw(value: Any) -> Any:
    """Lists and dicts for the tuples and frozendicts cbor2 6 makes inside tags."""
    kind = type(value)
    if kind is tuple:
        return [_thaw(item) for item in value]
    if kind is not dict and isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    return value
