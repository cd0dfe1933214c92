"""Example services that ship with trpc (``trpc serve trpc.examples:Greeter``,
``trpc serve trpc.examples:Store``)."""

from .greeter import Greeter
from .kv import Entry, Store

__all__ = ["Greeter", "Store", "Entry"]
