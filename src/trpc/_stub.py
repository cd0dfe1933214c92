"""Typed stubs: a service's methods on a client, typed from the class that declares them.

``client.stub(Greeter)`` reads the decorated methods of ``Greeter`` (a :class:`~trpc.Service`
subclass, or a ``typing.Protocol`` whose methods are decorated the same way and have ``...``
bodies, for a client that must not import the server's code) and returns an object with one
attribute per method, each a call of that method on the client.  Type checkers see the stub as
an instance of the class, so ``await greeter.greet("Ada")`` has the handler's return type and a
wrong argument is a type error: the decorators (``trpc._service``) give every method the type
of what a client passes and gets back, which is also what the method accepts when the server's
code calls it directly.  Only the decorated methods exist on the stub; a type checker cannot tell
a class's other attributes apart, so using one fails at run time (AttributeError).

What each shape becomes, ``T`` a request message and ``U`` a response message:

- unary ``(*args) -> R``: a call that is awaited (a coroutine in every respect);
- server-streaming ``(*args) -> AsyncIterator[U]``: an async iterator of the responses;
- client-streaming ``(requests: Iterable[T] | AsyncIterable[T]) -> R``: awaited;
- bidi-streaming ``(requests) -> AsyncIterator[U]``: the responses while the requests are sent.

The path of each call is ``"{service}/{name}"``: the service's name is the class's own
(``__trpc_service__``) for a Service subclass, ``name=`` when given, and for a class that is not
a Service and is given no name, none: each method is then called by its short name, which the
server resolves if exactly one of its services has it.

Per-call options are options of the stub: ``client.stub(Greeter, timeout=2)`` makes a stub whose
every call has them (a stub is cheap to make; keep one per set of options).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from ._service import _SERVICE_NAME, Cardinality, MethodInfo, Requests, Service, as_async_iterator, collect_methods

__all__ = ["Stub", "make_stub", "stub_methods"]


class Stub:
    """The methods of one service on a client (see the module's docstring): made by
    :meth:`trpc.Client.stub`, typed as an instance of the class it was made from."""

    def __init__(self, service: str, cls: type, calls: dict[str, Callable[..., Any]]) -> None:
        self._trpc_service = service
        self._trpc_class = cls
        for attribute, call in calls.items():
            setattr(self, attribute, call)

    def __repr__(self) -> str:
        return f"<trpc stub of {self._trpc_class.__qualname__} ({self._trpc_service or 'short names'})>"


def stub_methods(cls: object, name: str | None) -> tuple[str, dict[str, MethodInfo]]:
    """The service name a stub of ``cls`` calls (``""``: short names) and its methods.

    Raises:
        TypeError: ``cls`` is not a class, or declares no method; ``name`` is not identifiers
            joined by dots.
    """
    if not isinstance(cls, type):
        raise TypeError(f"a stub is made from a class (a trpc.Service or a typing.Protocol), not {cls!r}")
    if name is not None:
        if not isinstance(name, str) or not _SERVICE_NAME.match(name):
            raise TypeError(f"a service name is identifiers joined by dots (e.g. 'kv.Store'), not {name!r}")
        service = name
    elif issubclass(cls, Service):
        service = cls.__trpc_service__
    else:
        service = ""
    if issubclass(cls, Service) and name is None:
        methods = cls.__trpc_methods__
    else:
        methods = collect_methods(cls, service)
    if not methods:
        raise TypeError(
            f"{cls.__qualname__} declares no method: decorate them with @trpc.unary, @trpc.server_stream,"
            " @trpc.client_stream or @trpc.bidi_stream"
        )
    return service, methods


def _unary(method: Callable[..., Any]) -> Callable[..., Any]:
    return method


def _server_stream(method: Any) -> Callable[..., AsyncIterator[Any]]:
    def call(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return aiter(method(*args, **kwargs))

    return call


def _client_stream(method: Any) -> Callable[[Requests[Any]], Any]:
    def call(requests: Requests[Any]) -> Any:
        return method(as_async_iterator(requests))

    return call


def _bidi_stream(method: Any) -> Callable[[Requests[Any]], AsyncIterator[Any]]:
    def call(requests: Requests[Any]) -> AsyncIterator[Any]:
        return aiter(method(as_async_iterator(requests)))

    return call


_SHAPES: dict[Cardinality, Callable[[Any], Callable[..., Any]]] = {
    Cardinality.UNARY: _unary,
    Cardinality.SERVER_STREAM: _server_stream,
    Cardinality.CLIENT_STREAM: _client_stream,
    Cardinality.BIDI_STREAM: _bidi_stream,
}


def make_stub(
    cls: object, name: str | None, method: Callable[[str], Any], options: Mapping[str, Any]
) -> Stub:
    """A stub of ``cls`` whose calls go through ``method(path)`` (a client's
    :meth:`~trpc.Client.method`, given ``options`` with ``with_options``)."""
    service, methods = stub_methods(cls, name)
    calls: dict[str, Callable[..., Any]] = {}
    for info in methods.values():
        target = method(f"{service}/{info.name}" if service else info.name)
        if options:
            target = target.with_options(**options)
        calls[info.attribute] = _SHAPES[info.cardinality](target)
    assert isinstance(cls, type)  # stub_methods refused anything else
    return Stub(service, cls, calls)
