"""Services: a Python class whose decorated methods a client can call over the wire.

A method becomes callable by decorating it with one of :func:`unary`, :func:`server_stream`,
:func:`client_stream` or :func:`bidi_stream`; the decorator only records the call shape (a
:class:`Cardinality`), the wire name and whether the method is idempotent on the function, so the
method stays an ordinary method.  A method declared idempotent (``idempotent=True``) is one whose
effect is the same whether it runs once or several times: the server announces these to the
client (the INFO frame, docs/PROTOCOL.md section 3), which may then retry them after a
failure even if the server may have run them.
:class:`Service` collects the decorated methods of a class (and its bases) when the class is
created, so the server looks handlers up in a dict built once, never per call.
"""

from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable

__all__ = [
    "Cardinality",
    "Service",
    "MethodInfo",
    "unary",
    "server_stream",
    "client_stream",
    "bidi_stream",
    "collect_methods",
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


_ATTR = "__trpc_method__"


@dataclass(frozen=True)
class MethodInfo:
    """What the server needs to know about one method."""

    name: str
    cardinality: Cardinality
    attribute: str
    #: Running it twice has the effect of running it once: a client may retry it after a
    #: failure (announced in the INFO frame).
    idempotent: bool = False


def _decorator(cardinality: Cardinality, check: Callable[[Callable], bool], what: str):
    def decorate(func: Callable | None = None, *, name: str | None = None, idempotent: bool = False):
        def mark(func: Callable) -> Callable:
            if not check(func):
                raise TypeError(f"@{cardinality.name.lower()} needs {what}, got {func!r}")
            setattr(func, _ATTR, (name or func.__name__, cardinality, bool(idempotent)))
            return func

        return mark if func is None else mark(func)

    decorate.__name__ = cardinality.name.lower()
    decorate.__doc__ = (
        f"Mark {what} as a {cardinality.name.lower().replace('_', '-')} method.\n\n"
        "Use as ``@trpc.X`` or ``@trpc.X(name=\"wire_name\", idempotent=True)``; the wire name\n"
        "defaults to the function's name.  ``idempotent=True`` declares that running the method\n"
        "twice has the effect of running it once, so a client may retry it after a failure even\n"
        "if the server may have run it (the server announces it: docs/PROTOCOL.md, INFO)."
    )
    return decorate


unary = _decorator(Cardinality.UNARY, inspect.iscoroutinefunction, "an async function")
client_stream = _decorator(Cardinality.CLIENT_STREAM, inspect.iscoroutinefunction, "an async function")
server_stream = _decorator(Cardinality.SERVER_STREAM, inspect.isasyncgenfunction, "an async generator function")
bidi_stream = _decorator(Cardinality.BIDI_STREAM, inspect.isasyncgenfunction, "an async generator function")


class Service:
    """Base class for services.

    Subclass it and decorate the methods clients may call::

        class Greeter(trpc.Service):
            @trpc.unary
            async def greet(self, name: str) -> str:
                return f"Hello {name}"

    ``__trpc_methods__`` maps wire names to :class:`MethodInfo`; it is computed once, when the
    class is created.
    """

    __trpc_methods__: dict[str, MethodInfo] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        methods: dict[str, MethodInfo] = {}
        for klass in reversed(cls.__mro__):
            for attribute, value in vars(klass).items():
                marker = getattr(value, _ATTR, None)
                if marker is None:
                    continue
                name, cardinality, idempotent = marker
                # A subclass overriding a method replaces it, under whatever wire name it had.
                methods = {k: v for k, v in methods.items() if v.attribute != attribute}
                if name in methods:
                    raise TypeError(f"{cls.__name__}: two methods are named {name!r} on the wire")
                methods[name] = MethodInfo(name, cardinality, attribute, idempotent)
        cls.__trpc_methods__ = methods


def collect_methods(services: Iterable[Any]) -> dict[str, tuple[Callable, MethodInfo]]:
    """Map each wire name to (bound method, info) across several service objects.

    Raises:
        TypeError: an object is not a :class:`Service`, or two services share a method name.
    """
    table: dict[str, tuple[Callable, MethodInfo]] = {}
    for service in services:
        methods = getattr(type(service), "__trpc_methods__", None)
        if not isinstance(service, Service) or methods is None:
            raise TypeError(f"{service!r} is not a trpc.Service instance")
        for name, info in methods.items():
            if name in table:
                raise TypeError(f"method {name!r} is defined by two services")
            table[name] = (getattr(service, info.attribute), info)
    return table
