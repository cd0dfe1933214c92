"""The protobuf side of gRPC: trpc services as proto3, and codecs between protobuf bytes and
handler values.

Theory of operation
-------------------
docs/PROTOCOL.md, "gRPC: protobuf mapping", is the contract; this module is its one
implementation.  It works in three steps, each owning one fact:

1. *Analysis* (pure Python, no protobuf needed): each method's signature and each
   ``@trpc.message`` class its annotations reach become *plans*: a :class:`_MessagePlan` per
   protobuf message (its full name and :class:`_FieldPlan` fields, each with a kind:
   :class:`_Scalar`, :class:`_EnumRef`, :class:`_MessageRef`, :class:`_Repeated`,
   :class:`_Map`), and a :class:`_MethodPlan` per method (its request and response messages,
   and whether the message stands for the parameters, one message argument, a stream item or
   the return value).  An annotation that does not map raises :class:`~trpc.ProtoMappingError`
   naming the method, the parameter and the type; a server keeps that text as the method's
   reason, ``trpc proto`` prints it.
2. *Descriptors*: the plans are written as ``FileDescriptorProto`` objects, one file per
   protobuf package, and added to a private ``DescriptorPool`` beside the standard files of
   health and reflection (trpc.grpc._standard).  The same descriptors give the message classes
   (``message_factory.GetMessageClass``), the ``.proto`` text (:func:`render_proto`) and the
   reflection service's answers, so the three cannot disagree.
3. *Codecs*: a :class:`MethodCodec` converts between protobuf bytes and the values a handler
   takes and returns, walking the plans; nothing is generated at run time.

The codec interface (the HTTP/2 adapter calls it)::

    build_codecs(methods: Mapping[str, tuple[handler, MethodInfo]]) -> dict[str, MessageCodec | str]
        methods: path -> (bound handler, MethodInfo), as MethodTable.methods holds them.
        Returns path -> a MethodCodec, or the one-line reason the method has none (the adapter
        answers such a call with UNIMPLEMENTED and that reason).  Logs one warning listing the
        methods without a mapping.
    MethodCodec.decode_request(data: bytes) -> tuple[list[Any], dict[str, Any]]   # args, kwargs of the handler
    MethodCodec.encode_response(value) -> bytes                    # unary / client-stream result
    MethodCodec.decode_item(data: bytes) -> value                  # one client-stream item
    MethodCodec.encode_item(value) -> bytes                        # one server-stream item

A decode that fails raises ``RpcError(INVALID_ARGUMENT)``; an encode that fails raises
``RpcError(INTERNAL)``; both name the method.  protobuf is imported only when descriptors are
built: trpc runs without it, and asking for protobuf then raises :class:`~trpc.ProtoMappingError`
saying how to install it.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import enum
import importlib
import inspect
import logging
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, cast

from .._errors import ProtoMappingError, RpcError
from .._reflection import type_text
from .._service import Cardinality, MethodInfo, Service
from .._status import Status

if TYPE_CHECKING:
    from google.protobuf.descriptor_pool import DescriptorPool
    from google.protobuf.message import Message

    from .._events import MessageCodec
    from .._server import Server

__all__ = [
    "MethodCodec",
    "ProtoSchema",
    "build_codecs",
    "build_schema",
    "proto_files",
    "render_proto",
    "file_name",
    "grpc_services",
]

logger = logging.getLogger("trpc")

#: A protobuf identifier, and a full name (identifiers joined by dots).
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_FULL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
#: proto3 enums are int32.
_INT32 = (-(2**31), 2**31 - 1)
#: The pip requirement that brings protobuf.
_INSTALL = "pip install 'trpc[grpc]' (or protobuf)"


def _protobuf() -> Any:
    """The protobuf modules this module uses, imported on first need.

    Raises:
        ProtoMappingError: protobuf is not installed.
    """
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError as exc:
        raise ProtoMappingError("", "protobuf", "", f"not installed ({exc}): {_INSTALL}") from None
    return types.SimpleNamespace(descriptor_pb2=descriptor_pb2, descriptor_pool=descriptor_pool,
                                 message_factory=message_factory)


# ============================================================================== 1. analysis
@dataclass(frozen=True)
class _Scalar:
    """A proto3 scalar: its name in ``.proto`` text and the Python type it carries."""

    proto: str
    python: type


_SCALARS = {
    int: _Scalar("int64", int),
    float: _Scalar("double", float),
    bool: _Scalar("bool", bool),
    str: _Scalar("string", str),
    bytes: _Scalar("bytes", bytes),
}
#: Python types a map key may have, and their proto types.
_MAP_KEYS = (str, int, bool)


@dataclass(frozen=True)
class _EnumRef:
    """A Python enum whose values are integers, as a proto3 enum."""

    cls: type[enum.Enum]
    name: str  # the full protobuf name


@dataclass(frozen=True)
class _MessageRef:
    """A ``@trpc.message`` class; its plan is in the analyser's cache under ``cls``."""

    cls: type
    name: str


@dataclass(frozen=True)
class _Repeated:
    item: Any


@dataclass(frozen=True)
class _Map:
    key: _Scalar
    value: Any


@dataclass(frozen=True)
class _FieldPlan:
    """One field of a protobuf message and how its Python value travels (see PROTOCOL.md)."""

    name: str
    number: int
    kind: Any
    #: ``T | None``: absent means None.
    nullable: bool = False
    #: The Python side has a default: absent means "leave it to the default".
    has_default: bool = False

    @property
    def optional(self) -> bool:
        """Written ``optional`` (explicit presence): a scalar or enum that may be None or has a
        default."""
        return isinstance(self.kind, (_Scalar, _EnumRef)) and (self.nullable or self.has_default)

    @property
    def presence(self) -> bool:
        """Absence can be told from the zero value."""
        return self.optional or isinstance(self.kind, _MessageRef)


@dataclass
class _MessagePlan:
    """One protobuf message: its full name, its fields, and the class it stands for (None
    for the request and response messages made for methods)."""

    name: str
    fields: list[_FieldPlan]
    cls: type | None = None


@dataclass
class _MethodPlan:
    info: MethodInfo
    service: str
    #: One of "params" (fields are the parameters), "message" (the one parameter is a message
    #: class: the request is that message), "item" (a wrapper whose field 1 ``value`` is one
    #: client-stream item), "item_message" (each item is a message of that class).
    request_mode: str
    request: _MessagePlan
    #: "value" (a wrapper whose field 1 ``value`` is the result or item), "message" (the result or
    #: item is a message of that class), "empty" (returns None: no fields).
    response_mode: str
    response: _MessagePlan
    #: For "params": each parameter's (name, kind, has_default, default), in order.
    params: list[tuple[str, Any, bool, Any]] = field(default_factory=list)


def _camel(name: str) -> str:
    """``bidi_echo`` -> ``BidiEcho``, ``getX`` -> ``GetX`` (protoc's map-entry rule too)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _split(full: str) -> tuple[str, str]:
    package, _, name = full.rpartition(".")
    return package, name


def _enum_full_name(cls: type) -> str:
    """An enum's protobuf name: where it is defined, as an unnamed service is named."""
    parts = [part for part in f"{cls.__module__}.{cls.__qualname__}".split(".") if _IDENT.match(part)]
    if parts[:1] == ["__main__"] and len(parts) > 1:
        del parts[0]
    return ".".join(parts)


def _enum_prefix(ref: _EnumRef) -> str:
    """The prefix of an enum's value names (proto3 scopes them to the package):
    ``HealthStatus`` -> ``HEALTH_STATUS_``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", _split(ref.name)[1]).upper() + "_"


class _Unmappable(Exception):
    """Raised inside the analysis; becomes a ProtoMappingError with the place filled in."""

    def __init__(self, annotation: str, reason: str, where: str = "") -> None:
        super().__init__(reason)
        self.annotation = annotation
        self.reason = reason
        self.where = where


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj)
    except Exception as exc:  # a name that does not resolve, or a strange annotation
        raise _Unmappable("", f"its annotations do not resolve ({type(exc).__name__}: {exc})") from None


_ASYNC_ITERS = {collections.abc.AsyncIterator, collections.abc.AsyncIterable, collections.abc.AsyncGenerator}


class _Analyser:
    """Turns annotations into plans; message classes are analysed once and cached (an error
    too, so that every method reaching a bad message reports it)."""

    def __init__(self) -> None:
        self.messages: dict[type, _MessagePlan | _Unmappable] = {}
        self.enums: dict[type, _EnumRef] = {}

    # ----------------------------------------------------------------- one annotation
    def field_kind(self, annotation: Any) -> tuple[Any, bool]:
        """The kind of a field or parameter annotated ``annotation``, and whether it may be None."""
        annotation = self._strip(annotation)
        origin = typing.get_origin(annotation)
        if origin is typing.Union or origin is types.UnionType:
            args = typing.get_args(annotation)
            others = [arg for arg in args if arg is not type(None)]
            if len(others) != 1 or len(others) == len(args):
                raise _Unmappable(type_text(annotation), "a union other than T | None has no protobuf type")
            kind = self.kind(others[0])
            if isinstance(kind, (_Repeated, _Map)):
                raise _Unmappable(type_text(annotation), "a repeated or map field cannot be None in protobuf")
            return kind, True
        return self.kind(annotation), False

    @staticmethod
    def _strip(annotation: Any) -> Any:
        if typing.get_origin(annotation) is typing.Annotated:
            return typing.get_args(annotation)[0]
        return annotation

    def kind(self, annotation: Any) -> Any:
        annotation = self._strip(annotation)
        text = type_text(annotation)
        if isinstance(annotation, type) and annotation in _SCALARS:
            return _SCALARS[annotation]
        if isinstance(annotation, type) and hasattr(annotation, "__trpc_message__"):
            return self.message(annotation)
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            return self.enum(annotation)
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is list and len(args) == 1:
            item = self.kind(args[0]) if typing.get_origin(self._strip(args[0])) not in (typing.Union, types.UnionType) else None
            if item is None or isinstance(item, (_Repeated, _Map)):
                raise _Unmappable(text, "a list's items are a scalar, an enum or a message in protobuf "
                                        "(not None, a list or a dict)")
            return _Repeated(item)
        if origin is dict and len(args) == 2:
            key = self._strip(args[0])
            if not (isinstance(key, type) and key in _MAP_KEYS):
                raise _Unmappable(text, "a map's keys are str, int or bool in protobuf")
            value = self.kind(args[1]) if typing.get_origin(self._strip(args[1])) not in (typing.Union, types.UnionType) else None
            if value is None or isinstance(value, (_Repeated, _Map)):
                raise _Unmappable(text, "a map's values are a scalar, an enum or a message in protobuf "
                                        "(not None, a list or a dict)")
            return _Map(_SCALARS[key], value)
        if annotation is list or annotation is dict or origin in (list, dict):
            raise _Unmappable(text, "a list or dict needs its item types (list[int], dict[str, int])")
        if annotation is typing.Any:
            raise _Unmappable(text, "Any has no protobuf type")
        if annotation is None or annotation is type(None):
            raise _Unmappable(text, "None alone has no protobuf type")
        what = getattr(origin or annotation, "__name__", None) or text
        return self._refuse(text, what)

    @staticmethod
    def _refuse(text: str, what: str) -> Any:
        raise _Unmappable(text, f"{'a ' if what[:1].islower() else ''}{what} has no protobuf type "
                                "(int, float, bool, str, bytes, list[T], dict[K, V], T | None, "
                                "@trpc.message classes and int enums map)")

    def enum(self, cls: type[enum.Enum]) -> _EnumRef:
        ref = self.enums.get(cls)
        if ref is not None:
            return ref
        text = type_text(cls)
        values = [member.value for member in cls]
        if not all(isinstance(v, int) and not isinstance(v, bool) and _INT32[0] <= v <= _INT32[1] for v in values):
            raise _Unmappable(text, "an enum maps only if its values are 32-bit integers")
        if 0 not in values:
            raise _Unmappable(text, "a proto3 enum needs a member whose value is 0")
        name = _enum_full_name(cls)
        if not _FULL_NAME.match(name):
            raise _Unmappable(text, f"its name {name!r} is not a protobuf name")
        ref = self.enums[cls] = _EnumRef(cls, name)
        return ref

    def message(self, cls: type) -> _MessageRef:
        name = cls.__trpc_message__[0]  # type: ignore[attr-defined]  # kind() found it on the class
        ref = _MessageRef(cls, name)
        known = self.messages.get(cls)
        if isinstance(known, _Unmappable):
            raise known
        if known is not None:
            return ref
        if not _FULL_NAME.match(name):
            error = _Unmappable(type_text(cls), f"its message name {name!r} is not a protobuf name "
                                                "(identifiers joined by dots)")
            self.messages[cls] = error
            raise error
        plan = _MessagePlan(name, [], cls)
        self.messages[cls] = plan  # before the fields: a message may contain itself
        try:
            hints = _hints(cls)
            by_attr = {f.name: f for f in dataclasses.fields(cls)}
            for number, attr in sorted(cls.__trpc_message__[1]):  # type: ignore[attr-defined]  # as above
                data_field = by_attr[attr]
                if attr not in hints:
                    raise _Unmappable("", "it has no annotation", f"message {name} field {attr!r}")
                try:
                    kind, nullable = self.field_kind(hints[attr])
                except _Unmappable as exc:
                    raise _Unmappable(exc.annotation, exc.reason, exc.where or f"message {name} field {attr!r}") from None
                has_default = (data_field.default is not dataclasses.MISSING
                               or data_field.default_factory is not dataclasses.MISSING)
                plan.fields.append(_FieldPlan(attr, number, kind, nullable, has_default))
        except _Unmappable as exc:
            if not exc.where:
                exc.where = f"message {name}"
            self.messages[cls] = exc
            raise
        return ref

    # ----------------------------------------------------------------- one method
    def method(self, service: str, handler: Callable[..., Any], info: MethodInfo) -> _MethodPlan:
        prefix = f"{_split(service)[1]}{_camel(info.name)}"
        package = _split(service)[0]
        qualified = f"{package}.{prefix}" if package else prefix
        if not _IDENT.match(info.name):
            raise _Unmappable("", f"its name {info.name!r} is not a protobuf identifier", "method")
        function = inspect.unwrap(handler)
        hints = _hints(function)
        try:
            signature = inspect.signature(handler)
        except (TypeError, ValueError) as exc:
            raise _Unmappable("", f"it has no signature ({exc})", "method") from None
        params = list(signature.parameters.values())
        if not inspect.ismethod(handler) and params:
            params = params[1:]  # a class's function: its self
        for param in params:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise _Unmappable("", "*args and **kwargs have no protobuf field", f"parameter {param.name!r}")

        def annotated(name: str) -> Any:
            if name not in hints:
                raise _Unmappable("", "it has no annotation")  # located() says where
            return hints[name]

        def located(where: str, build: Callable[[], Any]) -> Any:
            try:
                return build()
            except _Unmappable as exc:
                raise _Unmappable(exc.annotation, exc.reason, f"{where}: {exc.where}" if exc.where else where) from None

        shape = info.cardinality
        plan_params: list[tuple[str, Any, bool, Any]] = []
        if shape.client_streams:
            if not params:
                raise _Unmappable("", "a streaming method's first parameter takes the request stream", "method")
            first = params[0]
            where = f"parameter {first.name!r}"
            item = located(where, lambda: self._stream_item(annotated(first.name)))
            request_mode, request = self._wrap(item, f"{qualified}Request", "item")
        else:
            fields = []
            for number, param in enumerate(params, 1):
                where = f"parameter {param.name!r}"
                kind, nullable = located(where, lambda: self.field_kind(annotated(param.name)))
                has_default = param.default is not param.empty
                fields.append(_FieldPlan(param.name, number, kind, nullable, has_default))
                plan_params.append((param.name, param.kind, has_default, param.default))
            if (len(fields) == 1 and isinstance(fields[0].kind, _MessageRef) and not fields[0].nullable
                    and params[0].kind is not params[0].KEYWORD_ONLY):
                request_mode, request = "message", self._plan_of(fields[0].kind)
            else:
                request_mode, request = "params", _MessagePlan(f"{qualified}Request", fields)
        if "return" not in hints:
            raise _Unmappable("", "it has no return annotation (-> None if it returns nothing)", "return")
        returns = hints["return"]
        if shape.server_streams:
            item = located("return", lambda: self._stream_item(returns))
            response_mode, response = self._wrap(item, f"{qualified}Response", "value")
        elif returns is None or returns is type(None):
            response_mode, response = "empty", _MessagePlan(f"{qualified}Response", [])
        else:
            item = located("return", lambda: self.field_kind(returns))
            response_mode, response = self._wrap(item, f"{qualified}Response", "value")
        return _MethodPlan(info, service, request_mode, request, response_mode, response, plan_params)

    def _plan_of(self, ref: _MessageRef) -> _MessagePlan:
        plan = self.messages[ref.cls]
        assert isinstance(plan, _MessagePlan)
        return plan

    def _wrap(self, item: tuple[Any, bool], name: str, mode: str) -> tuple[str, _MessagePlan]:
        """A stream item or a result: the message itself, or a wrapper with field 1 ``value``."""
        kind, nullable = item
        if isinstance(kind, _MessageRef) and not nullable:
            return ("item_message" if mode == "item" else "message"), self._plan_of(kind)
        return mode, _MessagePlan(name, [_FieldPlan("value", 1, kind, nullable)])

    def _stream_item(self, annotation: Any) -> tuple[Any, bool]:
        annotation = self._strip(annotation)
        origin = typing.get_origin(annotation)
        if origin in _ASYNC_ITERS and typing.get_args(annotation):
            return self.field_kind(typing.get_args(annotation)[0])
        raise _Unmappable(type_text(annotation), "a stream is annotated AsyncIterator[T] (or AsyncIterable, "
                                                 "AsyncGenerator) with its item type")


# ============================================================================== 2. descriptors
_TYPE_NUMBERS = {"double": 1, "int64": 3, "bool": 8, "string": 9, "bytes": 12}
_TYPE_MESSAGE, _TYPE_ENUM = 11, 14
_LABEL_OPTIONAL, _LABEL_REPEATED = 1, 3


def file_name(package: str) -> str:
    """The ``.proto`` file of a protobuf package: ``kv`` -> ``kv.proto``, ``shop.v1`` ->
    ``shop/v1.proto``, no package -> ``trpc_default.proto``."""
    return package.replace(".", "/") + ".proto" if package else "trpc_default.proto"


class _Files:
    """FileDescriptorProtos under construction, one per package."""

    def __init__(self, pb: Any) -> None:
        self.pb = pb
        self.files: dict[str, Any] = {}
        self.emitted: set[str] = set()

    def file(self, package: str) -> Any:
        fdp = self.files.get(package)
        if fdp is None:
            fdp = self.files[package] = self.pb.descriptor_pb2.FileDescriptorProto(
                name=file_name(package), package=package, syntax="proto3")
        return fdp

    def _depend(self, fdp: Any, full: str) -> None:
        other = file_name(_split(full)[0])
        if other != fdp.name and other not in fdp.dependency:
            fdp.dependency.append(other)

    def _set_kind(self, fdp: Any, message: Any, fdf: Any, kind: Any) -> None:
        if isinstance(kind, _Scalar):
            fdf.type = _TYPE_NUMBERS[kind.proto]
        elif isinstance(kind, _EnumRef):
            fdf.type, fdf.type_name = _TYPE_ENUM, "." + kind.name
            self.enum(kind)
            self._depend(fdp, kind.name)
        else:
            fdf.type, fdf.type_name = _TYPE_MESSAGE, "." + kind.name
            self._depend(fdp, kind.name)

    def message(self, plan: _MessagePlan, analyser: _Analyser) -> None:
        if plan.name in self.emitted:
            return
        self.emitted.add(plan.name)
        package, short = _split(plan.name)
        fdp = self.file(package)
        message = fdp.message_type.add(name=short)
        synthetic = []
        for f in plan.fields:
            fdf = message.field.add(name=f.name, number=f.number, label=_LABEL_OPTIONAL)
            kind = f.kind
            if isinstance(kind, _Repeated):
                fdf.label = _LABEL_REPEATED
                kind = kind.item
            if isinstance(kind, _Map):
                entry = message.nested_type.add(name=_camel(f.name) + "Entry")
                entry.options.map_entry = True
                key = entry.field.add(name="key", number=1, label=_LABEL_OPTIONAL)
                self._set_kind(fdp, entry, key, kind.key)
                value = entry.field.add(name="value", number=2, label=_LABEL_OPTIONAL)
                self._set_kind(fdp, entry, value, kind.value)
                fdf.label = _LABEL_REPEATED
                fdf.type, fdf.type_name = _TYPE_MESSAGE, f".{plan.name}.{entry.name}"
            else:
                self._set_kind(fdp, message, fdf, kind)
            if f.optional:
                fdf.proto3_optional = True
                synthetic.append(fdf)
            self._follow(f.kind, analyser)
        for fdf in synthetic:  # synthetic oneofs come after any real one
            fdf.oneof_index = len(message.oneof_decl)
            message.oneof_decl.add(name="_" + fdf.name)

    def _follow(self, kind: Any, analyser: _Analyser) -> None:
        if isinstance(kind, _Repeated):
            self._follow(kind.item, analyser)
        elif isinstance(kind, _Map):
            self._follow(kind.value, analyser)
        elif isinstance(kind, _MessageRef):
            self.message(analyser._plan_of(kind), analyser)

    def enum(self, ref: _EnumRef) -> None:
        if ref.name in self.emitted:
            return
        self.emitted.add(ref.name)
        package, short = _split(ref.name)
        enum_proto = self.file(package).enum_type.add(name=short)
        prefix = _enum_prefix(ref)
        members = sorted(ref.cls, key=lambda m: (m.value != 0, m.value))
        for member in members:
            enum_proto.value.add(name=prefix + member.name.upper(), number=member.value)

    def service(self, plans: list[_MethodPlan], analyser: _Analyser) -> None:
        package, short = _split(plans[0].service)
        fdp = self.file(package)
        service = fdp.service.add(name=short)
        for plan in plans:
            for message in (plan.request, plan.response):
                self.message(message, analyser)
                self._depend(fdp, message.name)
            shape = plan.info.cardinality
            service.method.add(name=plan.info.name, input_type="." + plan.request.name,
                               output_type="." + plan.response.name,
                               client_streaming=shape.client_streams, server_streaming=shape.server_streams)


def _ordered(files: Mapping[str, Any]) -> list[Any]:
    """Files with each one's dependencies before it.

    Raises:
        ProtoMappingError: packages import each other in a cycle (protobuf forbids it).
    """
    by_name = {fdp.name: fdp for fdp in files.values()}
    done: list[Any] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == "done" or name not in by_name:
            return
        if state.get(name) == "visiting":
            raise ProtoMappingError("", "packages", " -> ".join([*chain, name]), "protobuf files may not import each other in a cycle")
        state[name] = "visiting"
        for dependency in by_name[name].dependency:
            visit(dependency, [*chain, name])
        state[name] = "done"
        done.append(by_name[name])

    for name in sorted(by_name):
        visit(name, [])
    return done


# ============================================================================== 3. codecs
class _Omit:
    """A field that is absent and whose Python side has a default: leave it out."""


_OMIT = _Omit()


def _write(target: Any, plan: _MessagePlan, values: Callable[[_FieldPlan], Any]) -> None:
    for f in plan.fields:
        value = values(f)
        if value is None or value is _OMIT:
            continue  # absent: None, or a default the reader fills in
        _write_field(target, f.name, f.kind, value)


def _write_field(target: Any, name: str, kind: Any, value: Any) -> None:
    if isinstance(kind, _Scalar):
        setattr(target, name, value)
    elif isinstance(kind, _EnumRef):
        setattr(target, name, _enum_number(kind, value))
    elif isinstance(kind, _MessageRef):
        sub = getattr(target, name)
        sub.SetInParent()
        _write_message(sub, kind, value)
    elif isinstance(kind, _Repeated):
        container = getattr(target, name)
        item = kind.item
        if isinstance(item, _MessageRef):
            for element in value:
                _write_message(container.add(), item, element)
        elif isinstance(item, _EnumRef):
            container.extend(_enum_number(item, element) for element in value)
        else:
            container.extend(value)
    else:  # _Map
        container = getattr(target, name)
        if isinstance(kind.value, _MessageRef):
            for key, element in value.items():
                _write_message(container[key], kind.value, element)
        elif isinstance(kind.value, _EnumRef):
            for key, element in value.items():
                container[key] = _enum_number(kind.value, element)
        else:
            container.update(value)


def _write_message(target: Any, ref: _MessageRef, value: Any) -> None:
    if not isinstance(value, ref.cls):
        raise TypeError(f"{ref.name} expects a {ref.cls.__qualname__}, not {type(value).__qualname__}")
    _write(target, _PLANS[ref.cls], lambda f: getattr(value, f.name))


def _enum_number(ref: _EnumRef, value: Any) -> int:
    if isinstance(value, ref.cls):
        return value.value  # type: ignore[no-any-return]  # an int: enum() maps only int enums
    return ref.cls(value).value  # type: ignore[no-any-return]  # as above; ValueError for a number it has not


def _read(source: Any, plan: _MessagePlan) -> dict[str, Any]:
    """Field name -> Python value of each field; fields left to their defaults are missing."""
    out: dict[str, Any] = {}
    for f in plan.fields:
        if f.presence and not source.HasField(f.name):
            if f.nullable:
                out[f.name] = None
                continue
            if f.has_default:
                continue
        out[f.name] = _read_field(getattr(source, f.name), f.kind)
    return out


def _read_field(value: Any, kind: Any) -> Any:
    if isinstance(kind, _Scalar):
        return value
    if isinstance(kind, _EnumRef):
        return kind.cls(value)  # ValueError: a number it has not
    if isinstance(kind, _MessageRef):
        return _read_message(value, kind)
    if isinstance(kind, _Repeated):
        return [_read_field(item, kind.item) for item in value]
    return {key: _read_field(item, kind.value) for key, item in value.items()}


def _read_message(source: Any, ref: _MessageRef) -> Any:
    return ref.cls(**_read(source, _PLANS[ref.cls]))


#: Message class -> its plan, for the codecs (plans of one class are equal whichever analyser
#: made them: they depend only on the class).
_PLANS: dict[type, _MessagePlan] = {}


class MethodCodec:
    """Protobuf bytes <-> a handler's values for one method (see the module docstring).

    Attributes:
        path: the method's path (``"kv.Store/get"``).
        request_type, response_type: the protobuf message classes of its request and response
            (items, for the streaming sides).
    """

    def __init__(self, path: str, request_type: type[Message], response_type: type[Message], *,
                 decode_request: Callable[[Any], tuple[list[Any], dict[str, Any]]] | None = None,
                 encode_response: Callable[[Any, Any], None] | None = None,
                 decode_item: Callable[[Any], Any] | None = None) -> None:
        self.path = path
        self.request_type = request_type
        self.response_type = response_type
        self._decode_request = decode_request
        self._encode = encode_response
        self._decode_item = decode_item

    def _parse(self, data: bytes) -> Any:
        try:
            return self.request_type.FromString(data if type(data) is bytes else bytes(data))
        except Exception as exc:  # DecodeError, and whatever a malformed buffer raises
            raise RpcError(Status.INVALID_ARGUMENT, f"{self.path}: cannot decode the request: {exc}") from None

    def decode_request(self, data: bytes) -> tuple[list[Any], dict[str, Any]]:
        """The handler's positional and keyword arguments from a request message.

        Raises:
            RpcError: INVALID_ARGUMENT, the bytes are not the request message or hold a value
                the handler's types cannot take (an enum number it does not know).
        """
        assert self._decode_request is not None, f"{self.path} takes a request stream"
        message = self._parse(data)
        try:
            return self._decode_request(message)
        except (TypeError, ValueError) as exc:
            raise RpcError(Status.INVALID_ARGUMENT, f"{self.path}: cannot decode the request: {exc}") from None

    def decode_item(self, data: bytes) -> Any:
        """One client-stream item from its message.

        Raises:
            RpcError: INVALID_ARGUMENT, as :meth:`decode_request`.
        """
        assert self._decode_item is not None, f"{self.path} takes one request message"
        message = self._parse(data)
        try:
            return self._decode_item(message)
        except (TypeError, ValueError) as exc:
            raise RpcError(Status.INVALID_ARGUMENT, f"{self.path}: cannot decode the request: {exc}") from None

    def encode_response(self, value: Any) -> bytes:
        """The response message of a unary or client-streaming result.

        Raises:
            RpcError: INTERNAL, the value does not fit the declared type.
        """
        message = self.response_type()
        try:
            if self._encode is not None:
                self._encode(message, value)
            return message.SerializeToString()
        except (TypeError, ValueError, AttributeError) as exc:
            raise RpcError(Status.INTERNAL, f"{self.path}: cannot encode the response: {exc}") from None

    #: A server-stream item is encoded as a result is.
    encode_item = encode_response


def _codec(plan: _MethodPlan, classes: Callable[[str], type[Message]]) -> MethodCodec:
    request = plan.request
    response = plan.response
    decode_request: Callable[[Any], tuple[list[Any], dict[str, Any]]] | None
    decode_item: Callable[[Any], Any] | None
    decode_request = decode_item = None
    if plan.request_mode == "params":
        params = plan.params

        def decode_params(message: Any) -> tuple[list[Any], dict[str, Any]]:
            values = _read(message, request)
            args: list[Any] = []
            kwargs: dict[str, Any] = {}
            for name, kind, has_default, default in params:
                if kind is inspect.Parameter.POSITIONAL_ONLY:
                    args.append(values.get(name, default))
                elif name in values:
                    kwargs[name] = values[name]
            return args, kwargs

        decode_request = decode_params
    elif plan.request_mode == "message":
        ref = _MessageRef(request.cls, request.name)  # type: ignore[arg-type]
        decode_request = lambda message: ([_read_message(message, ref)], {})  # noqa: E731
    elif plan.request_mode == "item_message":
        ref = _MessageRef(request.cls, request.name)  # type: ignore[arg-type]
        decode_item = lambda message: _read_message(message, ref)  # noqa: E731
    else:  # "item"
        decode_item = lambda message: _read(message, request).get("value")  # noqa: E731

    if plan.response_mode == "message":
        out_ref = _MessageRef(response.cls, response.name)  # type: ignore[arg-type]
        encode = lambda message, value: _write_message(message, out_ref, value)  # noqa: E731
    elif plan.response_mode == "empty":
        encode = None
    else:
        encode = lambda message, value: _write(message, response, lambda f: value)  # noqa: E731
    return MethodCodec(plan.info.path, classes(request.name), classes(response.name),
                       decode_request=decode_request, encode_response=encode, decode_item=decode_item)


# ============================================================================== the schema
class ProtoSchema:
    """The protobuf side of a set of methods: descriptors, message classes, codecs.

    Attributes:
        files: file name -> FileDescriptorProto of every package the methods reach (not the
            standard files), dependencies first.
        standard: file name -> FileDescriptorProto of health and reflection (trpc.grpc._standard).
        pool: a private DescriptorPool holding both.
        codecs: path -> MethodCodec, or the reason the method has none.
        services: the full names of the services with at least one method in protobuf, in order.
    """

    def __init__(self, files: list[Any], standard: dict[str, Any], pool: DescriptorPool,
                 codecs: dict[str, MessageCodec | str], services: list[str]) -> None:
        self.files = {fdp.name: fdp for fdp in files}
        self.standard = standard
        self.pool = pool
        self.codecs = codecs
        self.services = services

    def file_descriptor(self, name: str) -> Any:
        """The FileDescriptorProto called ``name``.

        Raises:
            KeyError: no such file.
        """
        return self.files[name] if name in self.files else self.standard[name]

    def file_for_symbol(self, symbol: str) -> str:
        """The file that defines ``symbol`` (a message, enum, service, method or field).

        Raises:
            KeyError: no such symbol.
        """
        try:
            return self.pool.FindFileContainingSymbol(symbol).name
        except KeyError:
            pass
        # upb's pool (protobuf's default) finds messages, enums, services and fields by name
        # here, but not methods: a method is found through its service.
        try:
            return self.pool.FindMethodByName(symbol).containing_service.file.name
        except KeyError:
            raise KeyError(symbol) from None

    def with_dependencies(self, name: str) -> list[Any]:
        """The file ``name`` and every file it imports, transitively, each once, ``name`` first.

        Raises:
            KeyError: no such file.
        """
        out: list[Any] = []
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop(0)
            if current in seen:
                continue
            seen.add(current)
            fdp = self.file_descriptor(current)
            out.append(fdp)
            todo.extend(fdp.dependency)
        return out


def _special(handler: Callable[..., Any], info: MethodInfo) -> str | None:
    """Which standard codec a method takes: "health" or "reflection", else None."""
    from ._standard import special_kind

    return special_kind(handler, info)


def build_schema(methods: Mapping[str, tuple[Callable[..., Any], MethodInfo]], *, strict: bool = False) -> ProtoSchema:
    """Map ``methods`` (path -> (handler, MethodInfo)) to protobuf.

    A handler is a bound method, or a class's function (its first parameter, ``self``, is
    then skipped).  The health service's methods and the reflection services get the standard
    codecs.

    Args:
        strict: raise on the first method that does not map (``trpc proto``) instead of keeping
            its reason.

    Raises:
        ProtoMappingError: protobuf is not installed; with ``strict``, a method that does not
            map; packages that would import each other.
    """
    pb = _protobuf()
    from . import _standard

    analyser = _Analyser()
    plans: dict[str, _MethodPlan] = {}
    reasons: dict[str, str] = {}
    special: dict[str, str] = {}
    for path, (handler, info) in methods.items():
        kind = _special(handler, info)
        if kind is not None:
            special[path] = kind
            continue
        try:
            plans[path] = analyser.method(info.service, handler, info)
        except _Unmappable as exc:
            error = ProtoMappingError(path, exc.where or "method", exc.annotation, exc.reason)
            if strict:
                raise error from None
            reasons[path] = str(error)
    # Names: a generated request or response message must not take a message class's name.
    taken = {plan.name for plan in analyser.messages.values() if isinstance(plan, _MessagePlan)}
    taken |= {ref.name for ref in analyser.enums.values()}
    for path, plan in list(plans.items()):
        for message in (plan.request, plan.response):
            if message.cls is None and message.name in taken:
                error = ProtoMappingError(path, "method", "", f"its message {message.name} would take the name "
                                                              "of a message or enum of the same name")
                if strict:
                    raise error
                reasons[path] = str(error)
                del plans[path]
                break
    for message_plan in analyser.messages.values():
        if isinstance(message_plan, _MessagePlan):
            _PLANS[message_plan.cls] = message_plan  # type: ignore[index]
    files = _Files(pb)
    by_service: dict[str, list[_MethodPlan]] = {}
    for plan in plans.values():
        by_service.setdefault(plan.service, []).append(plan)
    for service_plans in by_service.values():
        files.service(service_plans, analyser)
    ordered = _ordered(files.files)
    pool = pb.descriptor_pool.DescriptorPool()
    standard = _standard.files(pb)
    for fdp in standard.values():
        pool.Add(fdp)
    for fdp in ordered:
        try:
            pool.Add(fdp)
        except Exception as exc:  # a name defined twice (a user package named like a standard one)
            raise ProtoMappingError("", f"file {fdp.name}", "", f"protobuf refuses it: {exc}") from None

    def classes(name: str) -> type[Message]:
        return cast("type[Message]", pb.message_factory.GetMessageClass(pool.FindMessageTypeByName(name)))

    codecs: dict[str, MessageCodec | str] = {}
    for path in methods:
        if path in plans:
            codecs[path] = _codec(plans[path], classes)
        elif path in special:
            codecs[path] = _standard.codec(special[path], path, pool, pb)
        else:
            codecs[path] = reasons[path]
    services = list(dict.fromkeys(info.service for path, (_, info) in methods.items()
                                  if not isinstance(codecs[path], str)))
    return ProtoSchema(ordered, standard, pool, codecs, services)


#: Methods served in CBOR only by design, left out of the start-up warning.
_CBOR_ONLY = ("trpc.reflection.v1.Reflection/",)


def build_codecs(methods: Mapping[str, tuple[Callable[..., Any], MethodInfo]]) -> dict[str, MessageCodec | str]:
    """path -> a :class:`MethodCodec`, or the one-line reason the method has none; logs one
    warning listing the methods without one (see the module docstring).

    Raises:
        ProtoMappingError: protobuf is not installed.
    """
    codecs = build_schema(methods).codecs
    missing = [f"{path} ({reason.removeprefix(path + ': ')})" for path, reason in codecs.items()
               if isinstance(reason, str) and not path.startswith(_CBOR_ONLY)]
    if missing:
        logger.info("trpc: methods without a protobuf mapping (gRPC serves them as application/grpc+cbor"
                       " only): %s", "; ".join(missing))
    return codecs


# ============================================================================== .proto text
_TYPE_NAMES = {number: name for name, number in _TYPE_NUMBERS.items()}


def render_proto(fdp: Any, *, header: str = "") -> str:
    """The ``.proto`` text of a FileDescriptorProto built here (proto3, fully qualified type
    names, so it reads the same wherever it is imported)."""
    lines = [f"// {line}".rstrip() for line in header.splitlines()]
    lines += ['syntax = "proto3";', ""]
    if fdp.package:
        lines += [f"package {fdp.package};", ""]
    if fdp.dependency:
        lines += [f'import "{name}";' for name in fdp.dependency] + [""]

    def field_type(f: Any) -> str:
        return _TYPE_NAMES[f.type] if f.type not in (_TYPE_MESSAGE, _TYPE_ENUM) else f.type_name

    for enum_proto in fdp.enum_type:
        lines.append(f"enum {enum_proto.name} {{")
        lines += [f"  {value.name} = {value.number};" for value in enum_proto.value]
        lines += ["}", ""]
    for message in fdp.message_type:
        lines.append(f"message {message.name} {{")
        entries = {f".{fdp.package}.{message.name}.{nested.name}".replace("..", "."): nested
                   for nested in message.nested_type if nested.options.map_entry}
        for f in message.field:
            entry = entries.get(f.type_name)
            if entry is not None:
                key, value = entry.field
                text = f"map<{field_type(key)}, {field_type(value)}>"
            else:
                label = "repeated " if f.label == _LABEL_REPEATED else "optional " if f.proto3_optional else ""
                text = label + field_type(f)
            lines.append(f"  {text} {f.name} = {f.number};")
        lines += ["}", ""]
    for service in fdp.service:
        lines.append(f"service {service.name} {{")
        for method in service.method:
            request = ("stream " if method.client_streaming else "") + method.input_type
            response = ("stream " if method.server_streaming else "") + method.output_type
            lines.append(f"  rpc {method.name}({request}) returns ({response});")
        lines += ["}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _methods_of(services: Iterable[Any]) -> dict[str, tuple[Callable[..., Any], MethodInfo]]:
    methods: dict[str, tuple[Callable[..., Any], MethodInfo]] = {}
    for service in services:
        cls = service if isinstance(service, type) else type(service)
        if not issubclass(cls, Service) or cls is Service:
            raise TypeError(f"{service!r} is not a trpc.Service class or instance")
        for info in cls.__trpc_methods__.values():
            methods[info.path] = (getattr(service, info.attribute), info)
    return methods


def proto_files(services: Iterable[Service | type[Service]]) -> dict[str, str]:
    """file name -> ``.proto`` text for ``services`` (Service classes or instances), one file
    per package, dependencies first.

    Raises:
        ProtoMappingError: a method that does not map (the first one), or protobuf is not
            installed.
        TypeError: something that is not a Service.
    """
    services = list(services)
    schema = build_schema(_methods_of(services), strict=True)
    names = ", ".join(dict.fromkeys(
        (s if isinstance(s, type) else type(s)).__trpc_service__ for s in services))
    header = f"Generated by trpc proto from {names}.\nThe mapping: docs/PROTOCOL.md, \"gRPC: protobuf mapping\"."
    return {name: render_proto(fdp, header=header) for name, fdp in schema.files.items()}


# ============================================================================== trpc proto
def _load(spec: str) -> Any:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise SystemExit(f"trpc: expected MODULE:SERVICE, got {spec!r}")
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"trpc: cannot import {module_name}: {exc}") from None
    finally:
        sys.path.pop(0)
    target = getattr(module, attribute, None)
    if isinstance(target, Service) or (isinstance(target, type) and issubclass(target, Service)):
        return target
    raise SystemExit(f"trpc: {spec} is neither a trpc.Service subclass nor an instance of one")


def add_proto_command(commands: Any) -> None:
    """Register ``trpc proto`` on the CLI's subcommands (``args.run(args)`` runs it)."""
    proto = commands.add_parser("proto", help="print the .proto file of services (gRPC's protobuf mapping)")
    proto.add_argument("service", metavar="MODULE:SERVICE", nargs="+", help="Service subclasses or instances")
    proto.add_argument("--out", metavar="DIR", default=None,
                       help="write one file per package under DIR (needed when there are several)")
    proto.set_defaults(run=proto_command)


def proto_command(args: argparse.Namespace) -> int:
    """``trpc proto``: print the one ``.proto`` file, or write them all under ``--out``; a
    method that does not map is one line on stderr and exit status 1."""
    services = [_load(spec) for spec in args.service]
    try:
        texts = proto_files(services)
    except ProtoMappingError as exc:
        print(f"trpc: {exc}", file=sys.stderr)
        return 1
    if args.out is not None:
        for name, text in texts.items():
            path = Path(args.out) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(path)
        return 0
    if len(texts) != 1:
        print(f"trpc: the services need {len(texts)} files ({', '.join(texts)}): give --out DIR", file=sys.stderr)
        return 2
    sys.stdout.write(next(iter(texts.values())))
    return 0


def grpc_services(server: Server) -> list[Service]:
    """The standard services gRPC tools expect that trpc serves only over gRPC: reflection
    ``grpc.reflection.v1`` and ``v1alpha`` (``ServerReflectionInfo``), answering from the
    protobuf descriptors of the server's methods, read from ``server._table.methods`` when the
    first request arrives (so the server may be built after this call).  Empty when protobuf
    is not installed.  (Health needs no service of its own: the server's health service gets
    protobuf codecs, see :func:`build_codecs`.)"""
    try:
        _protobuf()
    except ProtoMappingError:
        return []
    from ._standard import ServerReflectionService, ServerReflectionV1Alpha

    def source() -> Mapping[str, tuple[Callable[..., Any], MethodInfo]]:
        return server._table.methods

    return [ServerReflectionService(source), ServerReflectionV1Alpha(source)]
