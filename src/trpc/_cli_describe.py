"""What ``trpc list`` and ``trpc describe`` print: a server's reflection, as text or JSON.

Theory of operation
-------------------
Both commands read one :class:`~trpc.Reflection` (``await client.reflect()``) and print part of
it; nothing here does I/O.  :func:`find_symbol` resolves what ``describe`` was given, in this
order: a service's full name, a method's path, a message's name, a method's short name (only
when one service has it: the error lists the paths otherwise).  The text form reads like the
Python the server was written in (``get(key: str, *, default: int | None = None) -> Entry``);
the JSON form is the reflection's own dataclasses (``dataclasses.asdict``) with a ``"kind"``,
shapes by their names in the document (``"unary"``), so that a script reads what the wire said.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ._reflection import MessageDescription, MethodDescription, Reflection, ServiceDescription
from ._service import SHAPE_NAMES

__all__ = ["find_symbol", "list_names", "signature", "describe_text", "describe_json"]

Symbol = ServiceDescription | MethodDescription | MessageDescription


def list_names(reflection: Reflection, service: str | None) -> list[str]:
    """``trpc list``: the services' names, or the paths of one service's methods.

    Raises:
        KeyError: no such service (the message lists those there are).
    """
    if service is None:
        return [s.name for s in reflection.services]
    try:
        return [m.path for m in reflection.service(service).methods]
    except KeyError:
        raise KeyError(f"no service {service!r} (services: {', '.join(s.name for s in reflection.services)})") from None


def find_symbol(reflection: Reflection, symbol: str) -> Symbol:
    """The service, method or message ``symbol`` names (see the module's docstring).

    Raises:
        KeyError: nothing of that name, or an ambiguous short name; the message says which.
    """
    for service in reflection.services:
        if service.name == symbol:
            return service
    if "/" in symbol:
        return reflection.method(symbol)
    for message in reflection.messages:
        if message.name == symbol:
            return message
    try:
        return reflection.method(symbol)
    except KeyError as exc:
        if "ambiguous" in str(exc):
            raise
    raise KeyError(f"the server has no service, method or message {symbol!r}")


def signature(method: MethodDescription) -> str:
    """``name(params) -> returns`` as the handler reads in Python (without ``self``)."""
    parts: list[str] = []
    star_written = False
    kinds = [p.kind for p in method.params]
    for i, param in enumerate(method.params):
        if param.kind == "keyword_only" and not star_written:
            parts.append("*")
            star_written = True
        text = param.name
        if param.kind == "var_positional":
            text, star_written = "*" + text, True
        elif param.kind == "var_keyword":
            text = "**" + text
        if param.annotation is not None:
            text += f": {param.annotation}"
        if param.has_default:
            text += f" = {param.default}" if param.annotation is not None else f"={param.default}"
        parts.append(text)
        if param.kind == "positional_only" and (i + 1 == len(kinds) or kinds[i + 1] != "positional_only"):
            parts.append("/")
    returns = f" -> {method.returns}" if method.returns is not None else ""
    return f"{method.name}({', '.join(parts)}){returns}"


def _doc_lines(doc: str | None, indent: str) -> list[str]:
    return [f"{indent}{line}".rstrip() for line in doc.splitlines()] if doc else []


def _method_lines(method: MethodDescription, indent: str) -> list[str]:
    facts = SHAPE_NAMES[method.shape] + (", idempotent" if method.idempotent else "")
    return [f"{indent}{signature(method)}", f"{indent}  {facts}; path {method.path}",
            *_doc_lines(method.doc, indent + "  ")]


def describe_text(symbol: Symbol) -> str:
    """The readable description of a service, a method or a message (lines, no final newline)."""
    if isinstance(symbol, ServiceDescription):
        lines = [f"service {symbol.name}", *_doc_lines(symbol.doc, "  ")]
        for method in symbol.methods:
            lines += ["", *_method_lines(method, "  ")]
        return "\n".join(lines)
    if isinstance(symbol, MethodDescription):
        return "\n".join([f"method {symbol.path}", *_method_lines(symbol, "  ")])
    lines = [f"message {symbol.name}", *_doc_lines(symbol.doc, "  ")]
    for field in symbol.fields:
        text = f"  {field.number} {field.name}"
        if field.annotation is not None:
            text += f": {field.annotation}"
        if field.has_default:
            text += f" = {field.default}"
        lines.append(text)
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """Reflection dataclasses as JSON-ready values, shapes by name."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if value in SHAPE_NAMES:
        return SHAPE_NAMES[value]
    return value


def describe_json(symbol: Symbol) -> dict[str, Any]:
    """The description as a JSON object: ``{"kind": "service" | "method" | "message", ...}``."""
    kind = {ServiceDescription: "service", MethodDescription: "method", MessageDescription: "message"}[type(symbol)]
    return {"kind": kind, **_plain(symbol)}
