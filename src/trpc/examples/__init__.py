"""Example services that ship with trpc (``trpc serve trpc.examples:Greeter``)."""

from .greeter import Greeter

__all__ = ["Greeter"]
