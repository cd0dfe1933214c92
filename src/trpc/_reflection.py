"""Reflection: a server describes what it serves, so that a client needs no stub to call it.

Theory of operation
-------------------
Server side.  Unless built with ``reflection=False``, a :class:`~trpc.Server` serves
:class:`ReflectionService`, the service ``trpc.reflection.v1.Reflection`` with one unary method,
``Describe``, which takes no arguments and answers one CBOR map: the *document*
(docs/PROTOCOL.md "Reflection" is its contract).  :func:`build_document` makes it once, when the
server is built, from the server's method table: every service (the built-in ones too), every
method with its shape, idempotency, docstring, parameters and return annotation, and every
message class registered with ``@trpc.message`` at that moment (not only those the annotations
name: a message may travel inside a ``dict``, a list or error details, where no annotation
reaches it, and a client needs its field names to show it).  The document is encoded once too
(:class:`~trpc._codec.Encoded`); each call sends those bytes.

Annotations travel as text.  ``typing.get_type_hints`` resolves them where it can (so
``from __future__ import annotations`` changes nothing), and :func:`type_text` writes the
result as it reads in source: ``int | None``, ``list[Entry]``, ``AsyncIterator[str]``, a class
by its ``__qualname__``.  Where resolution fails (a name defined only under ``TYPE_CHECKING``
or inside a function), the annotation's raw text is used instead: nothing about annotations
ever stops a server from starting.  Defaults travel as their ``repr``.

Client side.  ``await client.reflect()`` calls ``Describe`` and reads the document with
:meth:`Reflection.from_document` into the frozen dataclasses below.  Reading is tolerant of
keys it does not know (a later server may add some; the document stays version 1 for
additions) and strict about the types of those it knows: a malformed document raises
``ValueError`` naming the place (``services[0].methods[2].shape``), which ``Client.reflect``
reports as ``RpcError(INTERNAL)``, as for any response the client cannot read.
"""

from __future__ import annotations

import builtins
import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterable

import cbor2

from ._codec import Encoded
from ._messages import registered_messages
from ._service import SHAPE_NAMES, Cardinality, MethodInfo, Service, unary

__all__ = [
    "REFLECTION_SERVICE",
    "DESCRIBE_METHOD",
    "REFLECTION_VERSION",
    "ReflectionService",
    "build_document",
    "type_text",
    "Reflection",
    "ServiceDescription",
    "MethodDescription",
    "ParamDescription",
    "MessageDescription",
    "FieldDescription",
]

#: The reflection service's name and the path of its one method.
REFLECTION_SERVICE = "trpc.reflection.v1.Reflection"
DESCRIBE_METHOD = f"{REFLECTION_SERVICE}/Describe"
#: The document's format version: a reader refuses any other.  Additions (new keys) keep it.
REFLECTION_VERSION = 1

_SHAPES_BY_NAME = {name: shape for shape, name in SHAPE_NAMES.items()}


# ============================================================================== the server side
def type_text(annotation: Any) -> str:
    """An annotation (resolved, or a string) as text that reads as it does in source."""
    if annotation is None or annotation is type(None):
        return "None"
    if annotation is Ellipsis:
        return "..."
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, typing.ForwardRef):
        return annotation.__forward_arg__
    if isinstance(annotation, typing.TypeVar):
        return annotation.__name__
    if isinstance(annotation, (list, tuple)):  # Callable's parameter list
        return "[" + ", ".join(type_text(item) for item in annotation) + "]"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(type_text(arg) for arg in args)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(arg) for arg in args) + "]"
    if origin is not None:
        name = getattr(annotation, "_name", None) or type_text(origin)
        return f"{name}[{', '.join(type_text(arg) for arg in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__qualname__
    return repr(annotation).removeprefix("typing.")


def _hints(obj: Any) -> dict[str, Any] | None:
    """``typing.get_type_hints(obj)``, or None where it cannot resolve them."""
    try:
        return typing.get_type_hints(obj)
    except Exception:  # NameError for a name it cannot see; anything a strange annotation raises
        return None


def _annotation(hints: dict[str, Any] | None, name: str, raw: Any) -> str | None:
    """The text of one annotation: resolved if it could be, else as written; None if none."""
    if raw is inspect.Parameter.empty or raw is dataclasses.MISSING:
        return None
    if hints is not None and name in hints:
        return type_text(hints[name])
    return type_text(raw)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__qualname__}>"


def _doc(text: str | None) -> str | None:
    return inspect.cleandoc(text) if text else None


def _describe_method(service: Any, info: MethodInfo) -> dict[str, Any]:
    function = inspect.unwrap(getattr(type(service), info.attribute))
    hints = _hints(function)
    method: dict[str, Any] = {
        "name": info.name,
        "path": info.path,
        "shape": SHAPE_NAMES[info.cardinality],
        "idempotent": info.idempotent,
        "doc": _doc(function.__doc__),
        "params": [],
        "returns": None,
    }
    try:
        signature = inspect.signature(getattr(service, info.attribute))  # bound: no self
    except (TypeError, ValueError):
        return method
    for param in signature.parameters.values():
        described: dict[str, Any] = {
            "name": param.name,
            "kind": param.kind.name.lower(),
            "annotation": _annotation(hints, param.name, param.annotation),
        }
        if param.default is not inspect.Parameter.empty:
            described["default"] = _safe_repr(param.default)
        method["params"].append(described)
    method["returns"] = _annotation(hints, "return", signature.return_annotation)
    return method


def _auto_doc(cls: type) -> str | None:
    """The docstring ``dataclass`` writes for a class that has none (so it can be told apart)."""
    try:
        return cls.__name__ + str(inspect.signature(cls)).replace(" -> None", "")
    except (TypeError, ValueError):
        return None


def _describe_field(field: dataclasses.Field[Any], number: int, hints: dict[str, Any] | None) -> dict[str, Any]:
    described: dict[str, Any] = {"number": number, "name": field.name,
                                 "annotation": _annotation(hints, field.name, field.type)}
    if field.default is not dataclasses.MISSING:
        described["default"] = _safe_repr(field.default)
    elif field.default_factory is not dataclasses.MISSING:
        factory = field.default_factory
        # A builtin type's empty value reads best ("[]"); another factory is not run (it may
        # do anything), only named.
        if isinstance(factory, type) and factory.__module__ == builtins.__name__:
            described["default"] = _safe_repr(factory())
        else:
            described["default"] = f"{getattr(factory, '__qualname__', _safe_repr(factory))}()"
    return described


def _describe_message(name: str, cls: type) -> dict[str, Any]:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    doc = cls.__doc__
    return {
        "name": name,
        "doc": None if not doc or doc == _auto_doc(cls) else inspect.cleandoc(doc),
        "fields": [_describe_field(fields[attr], number, hints)
                   for number, attr in sorted(getattr(cls, "__trpc_message__")[1])],
    }


def build_document(services: dict[str, Any], methods: Iterable[MethodInfo]) -> dict[str, Any]:
    """The reflection document of a server (docs/PROTOCOL.md "Reflection").

    Args:
        services: service name -> service object, in the order the server serves them.
        methods: every method served (their ``service`` says whose), in order.
    """
    by_service: dict[str, list[MethodInfo]] = {name: [] for name in services}
    for info in methods:
        by_service[info.service].append(info)
    return {
        "version": REFLECTION_VERSION,
        "services": [
            {
                "name": name,
                "doc": _doc(type(service).__dict__.get("__doc__")),
                "methods": [_describe_method(service, info) for info in by_service[name]],
            }
            for name, service in services.items()
        ],
        "messages": [_describe_message(name, cls) for name, cls in sorted(registered_messages().items())],
    }


class ReflectionService(Service, name=REFLECTION_SERVICE):
    """Describes the server's services, methods and message classes (docs/PROTOCOL.md,
    "Reflection")."""

    def __init__(self) -> None:
        self._document: Encoded | None = None

    def publish(self, document: dict[str, Any]) -> None:
        """Encode ``document`` (once) as the answer of every later Describe."""
        self._document = Encoded(cbor2.dumps(document))

    @unary(name="Describe", idempotent=True)
    async def describe(self) -> dict[str, Any]:
        """The reflection document: {"version": 1, "services": [...], "messages": [...]}."""
        assert self._document is not None, "the server publishes the document when it is built"
        return self._document  # type: ignore[return-value]  # encodes as the document's bytes


# ============================================================================== the client side
@dataclass(frozen=True)
class ParamDescription:
    """One parameter of a method's handler (``self`` not counted)."""

    name: str
    #: As ``inspect.Parameter.kind``, lower case: "positional_only", "positional_or_keyword",
    #: "var_positional", "keyword_only", "var_keyword".
    kind: str
    annotation: str | None
    #: The default's ``repr`` (None when there is none: see ``has_default``).
    default: str | None
    has_default: bool


@dataclass(frozen=True)
class MethodDescription:
    name: str
    path: str
    shape: Cardinality
    idempotent: bool
    doc: str | None
    params: list[ParamDescription]
    #: The return annotation's text (None: not annotated).
    returns: str | None


@dataclass(frozen=True)
class ServiceDescription:
    name: str
    doc: str | None
    methods: list[MethodDescription]


@dataclass(frozen=True)
class FieldDescription:
    number: int
    name: str
    annotation: str | None
    default: str | None
    has_default: bool


@dataclass(frozen=True)
class MessageDescription:
    name: str
    doc: str | None
    #: In field-number order.
    fields: list[FieldDescription]


class _Reader:
    """Typed access to one map of the document, naming the place in every error."""

    def __init__(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise ValueError(f"{where or 'the document'} must be a map, not {type(value).__name__}")
        self.value = value
        self.where = where

    def _at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kinds: tuple[type, ...], what: str, *, optional: bool = False) -> Any:
        if key not in self.value:
            if optional:
                return None
            raise ValueError(f"{self._at(key)} is missing")
        value = self.value[key]
        if value is None and optional:
            return None
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"{self._at(key)} must be {what}, not {value!r}")
        return value

    def text(self, key: str, *, optional: bool = False) -> Any:
        return self.get(key, (str,), "text" + (" or null" if optional else ""), optional=optional)

    def items(self, key: str) -> list["_Reader"]:
        values = self.get(key, (list,), "an array")
        return [_Reader(value, f"{self._at(key)}[{i}]") for i, value in enumerate(values)]


def _read_default(reader: _Reader) -> tuple[str | None, bool]:
    present = "default" in reader.value
    return (reader.text("default") if present else None), present


def _read_method(reader: _Reader) -> MethodDescription:
    shape_name = reader.text("shape")
    shape = _SHAPES_BY_NAME.get(shape_name)
    if shape is None:
        raise ValueError(f"{reader._at('shape')} must be one of {', '.join(_SHAPES_BY_NAME)}, not {shape_name!r}")
    params = []
    for param in reader.items("params"):
        default, has_default = _read_default(param)
        params.append(ParamDescription(param.text("name"), param.text("kind"), param.text("annotation", optional=True),
                                       default, has_default))
    return MethodDescription(
        name=reader.text("name"),
        path=reader.text("path"),
        shape=shape,
        idempotent=reader.get("idempotent", (bool,), "a boolean"),
        doc=reader.text("doc", optional=True),
        params=params,
        returns=reader.text("returns", optional=True),
    )


def _read_message(reader: _Reader) -> MessageDescription:
    fields = []
    for field in reader.items("fields"):
        default, has_default = _read_default(field)
        number = field.get("number", (int,), "a positive integer")
        if number < 1:
            raise ValueError(f"{field._at('number')} must be a positive integer, not {number}")
        fields.append(FieldDescription(number, field.text("name"), field.text("annotation", optional=True),
                                       default, has_default))
    return MessageDescription(reader.text("name"), reader.text("doc", optional=True), fields)


@dataclass(frozen=True)
class Reflection:
    """What a server serves, as its reflection service describes it (``await client.reflect()``)."""

    version: int
    services: list[ServiceDescription]
    messages: list[MessageDescription]

    @classmethod
    def from_document(cls, document: Any) -> "Reflection":
        """Read a reflection document (docs/PROTOCOL.md "Reflection"): keys it does not know
        are ignored.

        Raises:
            ValueError: a version other than 1, or a key it knows with a value of the wrong
                type; the message names the place (``services[0].methods[2].shape``).
        """
        reader = _Reader(document, "")
        version = reader.get("version", (int,), "an integer")
        if version != REFLECTION_VERSION:
            raise ValueError(f"reflection document version {version} is not supported (this client reads 1)")
        services = [
            ServiceDescription(service.text("name"), service.text("doc", optional=True),
                               [_read_method(method) for method in service.items("methods")])
            for service in reader.items("services")
        ]
        messages = [_read_message(message) for message in reader.items("messages")]
        return cls(version, services, messages)

    def service(self, name: str) -> ServiceDescription:
        """The service called ``name`` (``"kv.Store"``).

        Raises:
            KeyError: no such service.
        """
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(f"no service {name!r}")

    def method(self, name: str) -> MethodDescription:
        """The method at path ``name`` (``"kv.Store/get"``), or called ``name`` (``"get"``) if
        exactly one service has a method of that name.

        Raises:
            KeyError: no such method, or a short name that several services share (the message
                lists their paths).
        """
        found = [method for service in self.services for method in service.methods
                 if (method.path if "/" in name else method.name) == name]
        if len(found) == 1:
            return found[0]
        if found:
            raise KeyError(f"method name {name!r} is ambiguous: {', '.join(m.path for m in found)}")
        raise KeyError(f"no method {name!r}")

    def message(self, name: str) -> MessageDescription:
        """The message class registered as ``name`` (``"kv.Entry"``).

        Raises:
            KeyError: no such message.
        """
        for message in self.messages:
            if message.name == name:
                return message
        raise KeyError(f"no message {name!r}")

