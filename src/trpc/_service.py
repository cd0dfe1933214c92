"""Services: a Python class whose decorated methods a client can call over the wire.

A method becomes callable by decorating it with one of :func:`unary`, :func:`server_stream`,
:func:`client_stream` or :func:`bidi_stream`; the decorator only records the call shape (a
:class:`Cardinality`), the method's name and whether the method is idempotent on the function, so
the method stays an ordinary method.  A method declared idempotent (``idempotent=True``) is one whose
effect is the same whether it runs once or several times: the server announces these to the
client (the INFO frame, docs/PROTOCOL.md section 3), which may then retry them after a
failure even if the server may have run them.
:class:`Service` collects the decorated methods of a class (and its bases) when the class is
created, so the server looks handlers up in a dict built once, never per call.

Per-call options.  A client takes ``timeout=``, ``metadata=``, ``wait_for_ready=`` and
``compression=`` in a call as options of that call, never as the handler's arguments (:data:`CALL_OPTIONS`), so a
handler may not have a parameter of those names that a keyword can reach: the class is refused
when it is created, rather than the argument going silently elsewhere.  A positional-only
parameter (before ``/``) may have such a name.

Arguments that do not fit.  When a handler cannot take the arguments a call brought, the server
says so in Python's words, counted as the caller sees them (without the handler's ``self``):
:func:`explain_mismatch`.

Names.  Every service has a full name, dot-separated identifiers as gRPC's (``kv.Store``), given
as ``class Store(trpc.Service, name="kv.Store")``.  A subclass keeps the name its nearest base was
given explicitly (an implementation of a named interface serves that interface); a class that
was given none anywhere is named after where it is defined: ``f"{module}.{qualname}"`` with the
parts that are not identifiers left out (``<locals>`` of a class defined in a function) and a
leading ``__main__.`` dropped, so ``Store`` in ``kv.py`` is ``kv.Store`` and ``Store`` in the
script being run is ``Store``.  The name is the class attribute ``__trpc_service__``
(:func:`service_name` reads it from a class or an instance).  A method's wire name is its
*path* ``"kv.Store/get"`` (:attr:`MethodInfo.path`).

Types.  The decorators keep a handler's signature for type checkers (a ParamSpec after
``self``), so ``await Greeter().greet("Ada")`` is a ``str``; a client- or bidi-streaming method is
typed, and at run time works, as taking its requests as any iterable or async iterable
(:data:`Requests`; the handler still receives an async iterator), because that is also what a
typed stub's caller passes (``Client.stub``, ``trpc._stub``): one type serves the server's own
calls and the client's.  :func:`collect_methods` reads the decorated methods of any class, so a
``typing.Protocol`` that declares a service's methods (a streaming-response one with a plain
``def``, which the decorators accept and :class:`Service` refuses) describes it to a stub.

:class:`MethodTable` is a server's dispatch table over several services: one dict from every
name a client may send (each path, and each short name ``"get"`` that exactly one service
has) to its handler, so a call costs one lookup whichever form it uses; a name that misses is
explained (:meth:`MethodTable.explain_unknown`) off that path.
"""

from __future__ import annotations

import enum
import functools
import inspect
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Concatenate, ParamSpec, Protocol, TypeVar, Union, overload

__all__ = [
    "Cardinality",
    "Service",
    "MethodInfo",
    "unary",
    "server_stream",
    "client_stream",
    "bidi_stream",
    "MethodTable",
    "service_name",
    "SHAPE_CODES",
    "SHAPE_NAMES",
    "SHAPE_WORDS",
    "CALL_OPTIONS",
    "explain_mismatch",
    "collect_methods",
    "Requests",
    "as_async_iterator",
]


class Cardinality(enum.Enum):
    """The shape of a call: how many messages each side sends."""

    #: One request message, one response message.
    UNARY = (False, False)
    #: One request message, any number of response messages.
    SERVER_STREAM = (False, True)
    #: Any number of request messages, one response message.
    CLIENT_STREAM = (True, False)
    #: Any number of messages each way, both directions independent.
    BIDI_STREAM = (True, True)

    def __init__(self, client_streams: bool, server_streams: bool) -> None:
        # Plain attributes, not properties over ``value``: the server reads them several times
        # per call, and an enum's ``value`` is itself a Python-level property.
        #: The client may send any number of request messages.
        self.client_streams = client_streams
        #: The server may send any number of response messages.
        self.server_streams = server_streams


#: Each shape's number in the INFO frame (docs/PROTOCOL.md section 3): bit 1 the client streams,
#: bit 0 the server streams.
SHAPE_CODES = {c: 2 * c.client_streams + c.server_streams for c in Cardinality}
#: Each shape's name in the reflection document (docs/PROTOCOL.md "Reflection").
SHAPE_NAMES = {c: c.name.lower() for c in Cardinality}

#: The keywords a client call takes as options of that call (``client.f(x, timeout=1)``), never
#: as the handler's arguments: a handler may not have a keyword-capable parameter so named.
CALL_OPTIONS = frozenset({"timeout", "metadata", "wait_for_ready", "compression"})

_ATTR = "__trpc_method__"
#: A service name: identifiers joined by dots (gRPC's package.Service form).
_SERVICE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


@dataclass(frozen=True)
class MethodInfo:
    """What the server needs to know about one method."""

    #: The method's name within its service (``"get"``).
    name: str
    cardinality: Cardinality
    #: The Python attribute that holds the handler.
    attribute: str
    #: Running it twice has the effect of running it once: a client may retry it after a
    #: failure (announced in the INFO frame).
    idempotent: bool = False
    #: The full name of the service it belongs to (``"kv.Store"``).
    service: str = ""
    #: Its wire name, ``"kv.Store/get"`` (just the name for a method outside any service).
    path: str = field(default="", compare=False)
    #: How the server compresses its responses when the client asks for no coding it accepts
    #: (``"zlib"``, ``"zstd"``; None: the server's default): docs/PROTOCOL.md section 5.
    compression: str | None = None

    def __post_init__(self) -> None:
        if not self.path:
            object.__setattr__(self, "path", f"{self.service}/{self.name}" if self.service else self.name)


#: Each shape in words, as messages and docstrings name it (client and server say the same).
SHAPE_WORDS = {
    Cardinality.UNARY: "unary",
    Cardinality.SERVER_STREAM: "server-streaming",
    Cardinality.CLIENT_STREAM: "client-streaming",
    Cardinality.BIDI_STREAM: "bidi-streaming",
}
#: What each decorator's handler does, for its docstring.
_SHAPE_PROSE = {
    Cardinality.UNARY: "The handler takes the request's arguments and returns the one response.",
    Cardinality.SERVER_STREAM: (
        "The handler takes the request's arguments and yields the responses, any number of them."
    ),
    Cardinality.CLIENT_STREAM: (
        "The handler takes an async iterator of the request messages the client streams and\n"
        "returns the one response."
    ),
    Cardinality.BIDI_STREAM: (
        "The handler takes an async iterator of the request messages the client streams and\n"
        "yields responses, any number of them, whenever it likes."
    ),
}

#: The docstring of the four decorators (what ``help(trpc.unary)`` shows).
_DECORATOR_DOC = """Mark {what} as a {shape} method of its service.

{messages}

Use it bare, ``@trpc.{decorator}``, or with options,
``@trpc.{decorator}(name="Name", idempotent=True, compression="zlib")``.  The function stays
an ordinary method; the decorator only records the call shape, the name, the idempotency and
the compression, which :class:`~trpc.Service` collects when the class is created.

Args:
    name: the method's name in its service (its path is ``service/name``); by default the
        function's name.
    idempotent: running the method twice has the effect of running it once, so a client may
        retry it after a failure even if the server may have run it (the server announces it
        in its INFO frame: docs/PROTOCOL.md, section 3).
    compression: ``"zlib"`` or ``"zstd"``: compress the method's responses so, for clients
        that accept it, unless the client asks for another coding the server accepts
        (docs/PROTOCOL.md, section 5, "Compressed messages"); default: the server's
        ``compression``.

Raises:
    TypeError: the function is not {what}, or the name is empty or
        contains ``/``.
    ValueError: an unknown compression, or zstd without the zstandard package.
"""


_S = TypeVar("_S")  # the class that holds the method (its ``self``)
_P = ParamSpec("_P")  # the method's parameters after ``self``
_R = TypeVar("_R")  # the one response of a unary or client-streaming method
_T = TypeVar("_T")  # a request message of a client- or bidi-streaming method
_U = TypeVar("_U")  # a response message of a server- or bidi-streaming method

#: What a client- or bidi-streaming method takes when called (by a client, or directly): the
#: request messages, as any iterable or async iterable; its handler receives them as an async
#: iterator whichever it was.
Requests = Union[Iterable[_T], AsyncIterable[_T]]


# The decorators as type checkers see them.  A handler keeps its own signature (a ParamSpec
# after ``self``), except that a streaming request is taken as any ``Requests[T]`` where the
# handler reads an ``AsyncIterator[T]``: that is what a stub's callers pass
# (``Client.stub``), and what the method, called directly, accepts (see _any_requests).
class _Unary(Protocol):
    def __call__(
        self, func: Callable[Concatenate[_S, _P], Coroutine[Any, Any, _R]], /
    ) -> Callable[Concatenate[_S, _P], Coroutine[Any, Any, _R]]: ...


class _ServerStream(Protocol):
    def __call__(
        self, func: Callable[Concatenate[_S, _P], AsyncIterator[_U]], /
    ) -> Callable[Concatenate[_S, _P], AsyncIterator[_U]]: ...


class _ClientStream(Protocol):
    def __call__(
        self, func: Callable[[_S, AsyncIterator[_T]], Coroutine[Any, Any, _R]], /
    ) -> Callable[[_S, Requests[_T]], Coroutine[Any, Any, _R]]: ...


class _BidiStream(Protocol):
    def __call__(
        self, func: Callable[[_S, AsyncIterator[_T]], AsyncIterator[_U]], /
    ) -> Callable[[_S, Requests[_T]], AsyncIterator[_U]]: ...


class _UnaryDecorator(Protocol):
    @overload
    def __call__(
        self, func: Callable[Concatenate[_S, _P], Coroutine[Any, Any, _R]], /
    ) -> Callable[Concatenate[_S, _P], Coroutine[Any, Any, _R]]: ...
    @overload
    def __call__(
        self, *, name: str | None = None, idempotent: bool = False, compression: str | None = None
    ) -> _Unary: ...


class _ServerStreamDecorator(Protocol):
    @overload
    def __call__(
        self, func: Callable[Concatenate[_S, _P], AsyncIterator[_U]], /
    ) -> Callable[Concatenate[_S, _P], AsyncIterator[_U]]: ...
    @overload
    def __call__(
        self, *, name: str | None = None, idempotent: bool = False, compression: str | None = None
    ) -> _ServerStream: ...


class _ClientStreamDecorator(Protocol):
    @overload
    def __call__(
        self, func: Callable[[_S, AsyncIterator[_T]], Coroutine[Any, Any, _R]], /
    ) -> Callable[[_S, Requests[_T]], Coroutine[Any, Any, _R]]: ...
    @overload
    def __call__(
        self, *, name: str | None = None, idempotent: bool = False, compression: str | None = None
    ) -> _ClientStream: ...


class _BidiStreamDecorator(Protocol):
    @overload
    def __call__(
        self, func: Callable[[_S, AsyncIterator[_T]], AsyncIterator[_U]], /
    ) -> Callable[[_S, Requests[_T]], AsyncIterator[_U]]: ...
    @overload
    def __call__(
        self, *, name: str | None = None, idempotent: bool = False, compression: str | None = None
    ) -> _BidiStream: ...


def as_async_iterator(requests: Requests[_T]) -> AsyncIterator[_T]:
    """The request messages of a streaming call as an async iterator, whether they came as an
    async iterable (returned as its iterator) or a plain iterable (wrapped)."""
    if isinstance(requests, AsyncIterable):
        return aiter(requests)
    return _from_iterable(requests)


async def _from_iterable(requests: Iterable[_T]) -> AsyncIterator[_T]:
    for item in requests:
        yield item


def _any_requests(func: Callable[..., Any]) -> Callable[..., Any]:
    """A client- or bidi-streaming handler that also takes its requests as a plain iterable, so
    that calling the method directly (``await Store().put_many([e1, e2])``) works as the types
    say; the server's async iterator passes through as it is."""

    @functools.wraps(func)
    def handler(self: Any, requests: Any, /, *args: Any, **kwargs: Any) -> Any:
        return func(self, as_async_iterator(requests), *args, **kwargs)

    return handler


def _is_declaration(func: Callable[..., Any]) -> bool:
    """A plain ``def`` (no ``async``): in a ``typing.Protocol`` that describes a service, how a
    streaming-response method is declared (``def count(self, n: int) -> AsyncIterator[int]: ...``)."""
    return inspect.isfunction(func) and not inspect.iscoroutinefunction(func) and not inspect.isasyncgenfunction(func)


def _decorator(cardinality: Cardinality, check: Callable[[Callable[..., Any]], bool], what: str) -> Any:
    def decorate(
        func: Callable[..., Any] | None = None, *, name: str | None = None, idempotent: bool = False,
        compression: str | None = None,
    ) -> Any:
        if compression is not None:
            from .wire._compression import parse_coding

            parse_coding(compression)  # a ValueError now rather than at the first call

        def mark(func: Callable[..., Any]) -> Callable[..., Any]:
            if not check(func):
                raise TypeError(f"@{cardinality.name.lower()} needs {what}, got {func!r}")
            method = func.__name__ if name is None else name
            if not isinstance(method, str) or not method or "/" in method:
                raise TypeError(f"a method name is non-empty text without '/', not {method!r}")
            if cardinality.client_streams:
                func = _any_requests(func)
            setattr(func, _ATTR, (method, cardinality, bool(idempotent), compression))
            return func

        return mark if func is None else mark(func)

    decorate.__name__ = decorate.__qualname__ = cardinality.name.lower()
    decorate.__doc__ = _DECORATOR_DOC.format(
        decorator=decorate.__name__,
        what=what,
        shape=SHAPE_WORDS[cardinality],
        messages=_SHAPE_PROSE[cardinality],
    )
    return decorate


def _async_generator_or_declaration(func: Callable[..., Any]) -> bool:
    return inspect.isasyncgenfunction(func) or _is_declaration(func)


unary: _UnaryDecorator = _decorator(Cardinality.UNARY, inspect.iscoroutinefunction, "an async function")
client_stream: _ClientStreamDecorator = _decorator(
    Cardinality.CLIENT_STREAM, inspect.iscoroutinefunction, "an async function"
)
server_stream: _ServerStreamDecorator = _decorator(
    Cardinality.SERVER_STREAM, _async_generator_or_declaration, "an async generator function"
)
bidi_stream: _BidiStreamDecorator = _decorator(
    Cardinality.BIDI_STREAM, _async_generator_or_declaration, "an async generator function"
)


def _derived_name(cls: type) -> str:
    """The name of a service class that was given none (see the module's docstring)."""
    parts = [part for part in f"{cls.__module__}.{cls.__qualname__}".split(".") if part.isidentifier()]
    if parts[:1] == ["__main__"] and len(parts) > 1:
        del parts[0]
    return ".".join(parts)


class Service:
    """Base class for services.

    Subclass it and decorate the methods clients may call::

        class Greeter(trpc.Service, name="hello.Greeter"):
            @trpc.unary
            async def greet(self, name: str) -> str:
                return f"Hello {name}"

    ``name`` is the service's full name (dot-separated identifiers; default: see the module's
    docstring), the class attribute ``__trpc_service__``.  ``__trpc_methods__`` maps each
    method's name to its :class:`MethodInfo`; both are computed once, when the class is created.

    Raises:
        TypeError: (at class creation) a name that is not dot-separated identifiers, or two
            methods with one name.
    """

    __trpc_service__: str = ""
    __trpc_methods__: dict[str, MethodInfo] = {}
    #: The name given with ``name=``, set only on a class given one (so that its subclasses
    #: inherit it, and a class that was given none anywhere has none).
    __trpc_named__: ClassVar[str]

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            if not isinstance(name, str) or not _SERVICE_NAME.match(name):
                raise TypeError(
                    f"{cls.__qualname__}: a service name is identifiers joined by dots (e.g. 'kv.Store'), not {name!r}"
                )
            cls.__trpc_named__ = name  # inherited by subclasses that name none
        service = getattr(cls, "__trpc_named__", None) or _derived_name(cls)
        methods = collect_methods(cls, service)
        for info in methods.values():
            handler = inspect.unwrap(getattr(cls, info.attribute))
            if info.cardinality.server_streams and not inspect.isasyncgenfunction(handler):
                raise TypeError(
                    f"{cls.__qualname__}.{info.attribute}: a {SHAPE_WORDS[info.cardinality]} handler is an async"
                    f" generator function (async def with yield), not {handler!r}"
                )
        cls.__trpc_service__ = service
        cls.__trpc_methods__ = methods


def collect_methods(cls: type, service: str) -> dict[str, MethodInfo]:
    """The decorated methods of ``cls`` and its bases, by name, as methods of ``service``: what
    :class:`Service` keeps of a service class, and what a stub reads of any class that declares
    a service's methods (a ``typing.Protocol`` too).

    Raises:
        TypeError: two methods with one name, or a parameter named as a call option.
    """
    methods: dict[str, MethodInfo] = {}
    for klass in reversed(cls.__mro__):
        for attribute, value in vars(klass).items():
            marker = getattr(value, _ATTR, None)
            if marker is None:
                continue
            method, cardinality, idempotent, compression = marker
            _check_parameters(cls, attribute, value)
            # A subclass overriding a method replaces it, under whatever name it had.
            methods = {k: v for k, v in methods.items() if v.attribute != attribute}
            if method in methods:
                raise TypeError(f"{cls.__name__}: two methods are named {method!r}")
            methods[method] = MethodInfo(method, cardinality, attribute, idempotent, service, compression=compression)
    return methods


def _check_parameters(cls: type, attribute: str, func: Callable[..., Any]) -> None:
    """Refuse a handler with a parameter a keyword can reach that is named as a call option."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # no signature to read: nothing to refuse
        return
    for parameter in parameters:
        if parameter.name in CALL_OPTIONS and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
        ):
            raise TypeError(
                f"{cls.__qualname__}.{attribute}: a parameter may not be named {parameter.name!r}: a client's"
                f" {parameter.name}= is an option of the call ({', '.join(sorted(CALL_OPTIONS))}), never an"
                " argument; rename it, or make it positional-only (before '/')"
            )


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _names(names: list[str]) -> str:
    """Python's way to list missing arguments: 'a', 'a' and 'b', 'a', 'b', and 'c'."""
    quoted = [repr(name) for name in names]
    if len(quoted) == 1:
        return quoted[0]
    if len(quoted) == 2:
        return f"{quoted[0]} and {quoted[1]}"
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def explain_mismatch(name: str, handler: Callable[..., Any], args: Any, kwargs: dict[str, Any]) -> str | None:
    """Why ``handler(*args, **kwargs)`` does not bind, in Python's words but counted as the
    caller sees the method (``handler`` is bound: its ``self`` is not counted), checked in the
    order Python checks them: ``"greet() takes 1 positional argument but 2 were given"``.

    Returns None when the arguments do bind (the TypeError came from elsewhere).
    """
    try:
        parameters = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return None
    kind = inspect.Parameter
    positional = [p for p in parameters if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)]
    by_name = {p.name: p for p in parameters if p.kind in (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)}
    var_positional = any(p.kind is kind.VAR_POSITIONAL for p in parameters)
    var_keyword = any(p.kind is kind.VAR_KEYWORD for p in parameters)
    filled = {p.name for p in positional[: len(args)]}
    passed_positionally = [
        key for key in kwargs if any(p.name == key and p.kind is kind.POSITIONAL_ONLY for p in positional)
    ]
    for key in kwargs:
        if key not in by_name and not var_keyword and key not in passed_positionally:
            return f"{name}() got an unexpected keyword argument {key!r}"
        if key in filled and key in by_name:
            return f"{name}() got multiple values for argument {key!r}"
    if passed_positionally and not var_keyword:
        return (f"{name}() got some positional-only arguments passed as keyword arguments: "
                f"{', '.join(repr(key) for key in passed_positionally)}")
    if len(args) > len(positional) and not var_positional:
        required = sum(1 for p in positional if p.default is kind.empty)
        takes = (f"from {required} to {len(positional)} positional arguments" if required < len(positional)
                 else _plural(len(positional), "positional argument"))
        given = "1 was" if len(args) == 1 else f"{len(args)} were"
        return f"{name}() takes {takes} but {given} given"
    missing = [p.name for p in positional[len(args):] if p.default is kind.empty and p.name not in kwargs]
    if missing:
        return f"{name}() missing {_plural(len(missing), 'required positional argument')}: {_names(missing)}"
    missing = [p.name for p in parameters if p.kind is kind.KEYWORD_ONLY and p.default is kind.empty
               and p.name not in kwargs]
    if missing:
        return f"{name}() missing {_plural(len(missing), 'required keyword-only argument')}: {_names(missing)}"
    return None


def service_name(service: Any) -> str:
    """The full name of a :class:`Service` subclass or instance (``"kv.Store"``).

    Raises:
        TypeError: not a Service class or instance.
    """
    cls = service if isinstance(service, type) else type(service)
    if not issubclass(cls, Service) or cls is Service:
        raise TypeError(f"{service!r} is not a trpc.Service")
    return cls.__trpc_service__


def _quote(name: str) -> str:
    """A name in a message, quoted so that odd characters show (as JSON writes text)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"' if name.isprintable() else repr(name)


class MethodTable:
    """The methods of several services, as a server dispatches them (see the module's docstring).

    Attributes:
        services: service name -> the service object, in the order given.
        methods: path -> (bound method, info), services in order, methods in class order.
        lookup: every name a client may send -> (bound method, info): each path, and each
            short name that exactly one service has.
        ambiguous: short name -> the paths of the methods that share it (more than one).

    Raises:
        TypeError: an object is not a :class:`Service` instance, or two share a service name.
    """

    def __init__(self, services: Iterable[Any]) -> None:
        self.services: dict[str, Any] = {}
        self.methods: dict[str, tuple[Callable[..., Any], MethodInfo]] = {}
        by_short: dict[str, list[str]] = {}
        for service in services:
            methods = getattr(type(service), "__trpc_methods__", None)
            if not isinstance(service, Service) or methods is None:
                raise TypeError(f"{service!r} is not a trpc.Service instance")
            name = type(service).__trpc_service__
            if name in self.services:
                raise TypeError(
                    f"two services are named {name!r} ({type(self.services[name]).__qualname__} and "
                    f"{type(service).__qualname__}): name one with class ...(trpc.Service, name='...')"
                )
            self.services[name] = service
            for info in methods.values():
                self.methods[info.path] = (getattr(service, info.attribute), info)
                by_short.setdefault(info.name, []).append(info.path)
        self.lookup = dict(self.methods)
        self.ambiguous: dict[str, list[str]] = {}
        for short, paths in by_short.items():
            if len(paths) == 1:
                self.lookup.setdefault(short, self.methods[paths[0]])
            else:
                self.ambiguous[short] = paths

    def short_names(self, path: str) -> tuple[str, ...]:
        """The names a client may send for the method at ``path``: the path, and its short
        name if that is not ambiguous."""
        info = self.methods[path][1]
        return (path, info.name) if self.lookup.get(info.name, (None, None))[1] is info else (path,)

    def explain_unknown(self, name: str) -> str:
        """Why ``name`` (not in :attr:`lookup`) names no method: the message of UNIMPLEMENTED."""
        service, slash, method = name.rpartition("/")
        if slash:
            if service not in self.services:
                return f"unknown service {_quote(service)}"
            return f"service {_quote(service)} has no method {_quote(method)}"
        paths = self.ambiguous.get(name)
        if paths:
            return f"short name {_quote(name)} is ambiguous: call it by its path, one of {', '.join(paths)}"
        return f"unknown method {_quote(name)}"
