"""The key-value example: a service whose values are a message class.

``trpc serve trpc.examples:Store``, then ``trpc describe 127.0.0.1:50051 kv.Entry`` shows the
message, and ``trpc call 127.0.0.1:50051 put -d '{"entry": {"@type": "kv.Entry", "key":
"alpha", "value": 1}}'`` stores one by field name.  Each ``Store()`` holds its own entries, in
memory.
"""

from __future__ import annotations

from typing import AsyncIterator

import trpc


@trpc.message("kv.Entry")
class Entry:
    """One key and its value."""

    key: str = trpc.field(1)
    value: int = trpc.field(2, default=0)
    #: Any bytes the writer attaches (``{"$bytes": base64}`` on the command line).
    blob: bytes = trpc.field(3, default=b"")


class Store(trpc.Service, name="kv.Store"):
    """A key-value store of Entry messages."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    @trpc.unary(idempotent=True)
    async def get(self, key: str) -> Entry:
        """The entry under key (NOT_FOUND if there is none)."""
        try:
            return self._entries[key]
        except KeyError:
            raise trpc.RpcError(trpc.Status.NOT_FOUND, f"no key {key!r}", {"key": key}) from None

    @trpc.unary
    async def put(self, entry: Entry) -> Entry:
        """Store entry under its key; returns what was there before (an empty entry if nothing)."""
        if not isinstance(entry, Entry):
            raise trpc.RpcError(trpc.Status.INVALID_ARGUMENT, f"put takes a kv.Entry, not {type(entry).__name__}")
        previous = self._entries.get(entry.key, Entry(entry.key))
        self._entries[entry.key] = entry
        return previous

    @trpc.server_stream
    async def scan(self, prefix: str = "") -> AsyncIterator[Entry]:
        """Every entry whose key starts with prefix, in key order."""
        for key in sorted(self._entries):
            if key.startswith(prefix):
                yield self._entries[key]

    @trpc.client_stream
    async def put_many(self, entries: AsyncIterator[Entry]) -> int:
        """Store each entry the client streams; returns how many."""
        count = 0
        async for entry in entries:
            await self.put(entry)
            count += 1
        return count
