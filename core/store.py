"""The store: what replicas share (round-robin positions, call records, cached lookups).

:class:`Store` is the contract; :class:`MemoryStore` serves it in process for a single instance,
``core.redis_store.RedisStore`` serves it from Redis for many. Both pass one contract test suite.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol


class Store(Protocol):
    """Byte values under string keys, with TTLs. Every method may raise :class:`core.errors.StoreError`."""

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None when absent or expired."""

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds, replacing any value."""

    async def add(self, key: str, value: bytes, ttl_s: float) -> bool:
        """Store ``value`` only when ``key`` holds nothing; True when it was stored. Atomic."""

    async def delete(self, key: str) -> None:
        """Remove ``key``."""

    async def incr(self, key: str) -> int:
        """Add one to the counter under ``key`` (from 0) and return the new value. Atomic; no TTL.

        ``get`` of a counter key gives its value as ASCII digits."""

    async def ping(self) -> None:
        """Raise :class:`core.errors.StoreError` when the store cannot serve."""

    async def close(self) -> None:
        """Release connections."""


class MemoryStore:
    """The store in process: bounded (least recently used entries go first), with TTLs.

    Counters are kept apart from values and never evicted: there is one per round-robin service.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._values: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._counters: dict[str, int] = {}

    def _live(self, key: str) -> bytes | None:
        item = self._values.get(key)
        if item is None:
            return None
        if item[0] <= time.monotonic():
            del self._values[key]
            return None
        self._values.move_to_end(key)
        return item[1]

    async def get(self, key: str) -> bytes | None:
        if key in self._counters:
            return str(self._counters[key]).encode()
        return self._live(key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._values[key] = (time.monotonic() + ttl_s, value)
        self._values.move_to_end(key)
        while len(self._values) > self._max:
            self._values.popitem(last=False)

    async def add(self, key: str, value: bytes, ttl_s: float) -> bool:
        if self._live(key) is not None:
            return False
        await self.set(key, value, ttl_s)
        return True

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

    async def incr(self, key: str) -> int:
        n = self._counters.get(key, 0) + 1
        self._counters[key] = n
        return n

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class DryRunStore:
    """Reads through to another store and writes nothing: for dry runs that must change no state."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self._values = MemoryStore()

    async def get(self, key: str) -> bytes | None:
        own = await self._values.get(key)
        return own if own is not None else await self._inner.get(key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._values.set(key, value, ttl_s)

    async def add(self, key: str, value: bytes, ttl_s: float) -> bool:
        if await self.get(key) is not None:
            return False
        await self._values.set(key, value, ttl_s)
        return True

    async def delete(self, key: str) -> None:
        await self._values.delete(key)

    async def incr(self, key: str) -> int:
        # The position the next real request would take, without taking it.
        raw = await self._inner.get(key)
        return (int(raw) if raw else 0) + 1

    async def ping(self) -> None:
        await self._inner.ping()

    async def close(self) -> None:
        return None
