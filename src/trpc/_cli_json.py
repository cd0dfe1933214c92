"""Values as JSON for the ``trpc`` command: messages by field name, bytes as base64.

Theory of operation
-------------------
A call's values are CBOR, which holds more than JSON does: byte strings, tags, maps whose keys
are not text, NaN.  :func:`to_json` turns a decoded value into one JSON can hold, and
:func:`from_json` turns such JSON back into the value, so that what ``trpc call`` prints it also
accepts as input:

============================================  ==============================================
CBOR value                                    JSON
============================================  ==============================================
a message: tag 27 ``[name, {number: v}]``     ``{"@type": name, field: v, ...}``, fields by
(or an instance of a registered class)        the names the server's reflection gives them,
                                              in number order; a number it does not describe
                                              keeps its number as the key (``"7"``)
bytes                                         ``{"$bytes": base64}``
a map with a key that is not text             ``{"$map": [[key, value], ...]}``
any other tag                                 ``{"$tag": number, "$value": value}``
an array, a tuple, a set                      an array
a float NaN or infinity                       refused, unless the caller allows them
anything else cbor2 decodes (a datetime, a    its ``str()`` (one way: it comes back as text)
Decimal, ...)
============================================  ==============================================

Field names come from the server, never from classes this process happens to import: the
server's reflection document (docs/PROTOCOL.md section 13) is the one owner of the name
<-> number map, read into a :class:`MessageNames`.  On input, ``{"@type": ...}`` names a
message the server describes and every other key must be one of its fields (or a field
number); anything else is a :class:`ValueError` that names what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

import cbor2

from ._messages import MESSAGE_TAG
from ._reflection import Reflection

__all__ = ["MessageNames", "to_json", "from_json", "holds_message", "asks_for_message"]

TYPE_KEY = "@type"
BYTES_KEY = "$bytes"
MAP_KEY = "$map"
TAG_KEY, TAG_VALUE_KEY = "$tag", "$value"


class MessageNames:
    """The field names of the server's message types, from its reflection document.

    Args:
        reflection: what ``client.reflect()`` returned; None: the server described nothing
            (fields then go by number, both ways).
    """

    def __init__(self, reflection: Reflection | None = None) -> None:
        self.names: dict[str, dict[int, str]] = {}
        self.numbers: dict[str, dict[str, int]] = {}
        for message in reflection.messages if reflection is not None else ():
            self.names[message.name] = {f.number: f.name for f in message.fields}
            self.numbers[message.name] = {f.name: f.number for f in message.fields}

    def field_name(self, message: str, number: Any) -> str:
        return self.names.get(message, {}).get(number, str(number))

    def field_number(self, message: str, key: str) -> int | None:
        number = self.numbers.get(message, {}).get(key)
        if number is None and key.isdigit() and key.isascii():
            return int(key)
        return number


def _as_message(value: Any) -> tuple[str, Mapping[int, Any]] | None:
    """``(name, {number: value})`` if ``value`` is a message (a tag 27 or a registered
    class's instance), else None."""
    if isinstance(value, cbor2.CBORTag):
        content = value.value
        if (value.tag == MESSAGE_TAG and type(content) in (list, tuple) and len(content) == 2
                and isinstance(content[0], str) and isinstance(content[1], Mapping)):
            return content[0], content[1]
        return None
    spec = getattr(type(value), "__trpc_message__", None)
    if spec is None:
        return None
    name, numbered = spec
    return name, {number: getattr(value, attribute) for number, attribute in numbered}


def holds_message(value: Any) -> bool:
    """Whether ``value`` has a message anywhere in it (so that its field names are needed)."""
    if _as_message(value) is not None:
        return True
    if isinstance(value, cbor2.CBORTag):
        return holds_message(value.value)
    if isinstance(value, Mapping):
        return any(holds_message(k) or holds_message(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(holds_message(item) for item in value)
    return False


def asks_for_message(value: Any) -> bool:
    """Whether parsed JSON input has an ``{"@type": ...}`` object anywhere in it."""
    if isinstance(value, dict):
        return TYPE_KEY in value or any(asks_for_message(v) for v in value.values())
    if isinstance(value, list):
        return any(asks_for_message(item) for item in value)
    return False


def to_json(value: Any, names: MessageNames, *, allow_nan: bool = False) -> Any:
    """``value`` as JSON can hold it (the table in the module's docstring).

    Raises:
        ValueError: a NaN or an infinity, unless ``allow_nan``.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not allow_nan and not math.isfinite(value):
            raise ValueError(f"{value!r} is not JSON (--allow-nan writes NaN and Infinity)")
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    message = _as_message(value)
    if message is not None:
        name, fields = message
        out: dict[str, Any] = {TYPE_KEY: name}
        for number in sorted(fields, key=lambda n: (not isinstance(n, int), n if isinstance(n, int) else 0)):
            out[names.field_name(name, number)] = to_json(fields[number], names, allow_nan=allow_nan)
        return out
    if isinstance(value, cbor2.CBORTag):
        return {TAG_KEY: value.tag, TAG_VALUE_KEY: to_json(value.value, names, allow_nan=allow_nan)}
    if isinstance(value, Mapping):
        if all(isinstance(key, str) for key in value):
            return {key: to_json(item, names, allow_nan=allow_nan) for key, item in value.items()}
        return {MAP_KEY: [[to_json(key, names, allow_nan=allow_nan), to_json(item, names, allow_nan=allow_nan)]
                          for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return [to_json(item, names, allow_nan=allow_nan) for item in value]
    if isinstance(value, (set, frozenset)):
        return [to_json(item, names, allow_nan=allow_nan) for item in sorted(value, key=repr)]
    return str(value)


def from_json(value: Any, names: MessageNames) -> Any:
    """The value that parsed JSON ``value`` stands for (the inverse of :func:`to_json`).

    Raises:
        ValueError: an ``@type`` the server does not describe, fields its message does not
            have (all of them named), or a ``$bytes`` / ``$map`` / ``$tag`` object that is
            malformed.
    """
    if isinstance(value, list):
        return [from_json(item, names) for item in value]
    if not isinstance(value, dict):
        return value
    if TYPE_KEY in value:
        return _message(value, names)
    if set(value) == {BYTES_KEY}:
        text = value[BYTES_KEY]
        try:
            if not isinstance(text, str):
                raise ValueError
            return base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            raise ValueError(f'"{BYTES_KEY}" must hold base64 text, not {text!r}') from None
    if set(value) == {MAP_KEY}:
        pairs = value[MAP_KEY]
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise ValueError(f'"{MAP_KEY}" must hold an array of [key, value] pairs')
        try:
            return {from_json(k, names): from_json(v, names) for k, v in pairs}
        except TypeError as exc:  # a key that cannot be a map key here (a list, a map)
            raise ValueError(f'a "{MAP_KEY}" key cannot be an array or an object ({exc})') from None
    if set(value) == {TAG_KEY, TAG_VALUE_KEY}:
        tag = value[TAG_KEY]
        if not isinstance(tag, int) or isinstance(tag, bool) or tag < 0:
            raise ValueError(f'"{TAG_KEY}" must be a tag number, not {tag!r}')
        return cbor2.CBORTag(tag, from_json(value[TAG_VALUE_KEY], names))
    return {key: from_json(item, names) for key, item in value.items()}


def _message(value: dict[str, Any], names: MessageNames) -> cbor2.CBORTag:
    name = value[TYPE_KEY]
    if not isinstance(name, str) or name not in names.numbers:
        known = ", ".join(sorted(names.numbers)) or "none"
        raise ValueError(f'the server describes no message "{name}" (its messages: {known})')
    fields: dict[int, Any] = {}
    unknown = []
    for key, item in value.items():
        if key == TYPE_KEY:
            continue
        number = names.field_number(name, key)
        if number is None:
            unknown.append(key)
        else:
            fields[number] = from_json(item, names)
    if unknown:
        listed = ", ".join(f'"{key}"' for key in unknown)
        known = ", ".join(names.numbers[name]) or "none"
        raise ValueError(f"message {name} has no field {listed} (its fields: {known})")
    return cbor2.CBORTag(MESSAGE_TAG, [name, fields])
