"""The store: what replicas share (round-robin positions, call records, cached lookups).

:class:`Store` is the contract; :class:`MemoryStore` serves it in process for a single instance,
``core.redis_store.RedisStore`` serves it from Redis for many. Both pass one contract test suite.
"""

from __future__ import annotations

import asyncio
import heapq
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

PENDING = b"\x00pending"
"""How a claim under way starts (a store that allocates in steps holds one until the record is written);
the rest is the claimant's own token, so that it knows its claim again."""


class Pool:
    """The numbers a round-robin counter chooses among, each with the bytes it takes in a record.

    Turn ``t`` (the counter's value after it advanced) chooses number ``(t - 1) % len``, wherever the
    choice is made. ``packed`` holds the lot in one string, for a store that chooses on its own server:
    the count and ``len + 1`` offsets (1-based, 4 bytes big-endian each), then the bytes of every choice.
    Made once per pool and kept: an allocation only refers to it.
    """

    __slots__ = ("choices", "numbers", "packed")

    def __init__(self, numbers: Sequence[str], choices: Sequence[bytes]) -> None:
        self.numbers = tuple(numbers)
        self.choices = tuple(choices)
        start = 4 * (len(self.choices) + 2) + 1
        offsets = [start]
        for choice in self.choices:
            offsets.append(offsets[-1] + len(choice))
        header = struct.pack(f">{len(offsets) + 1}I", len(self.choices), *offsets)
        self.packed = header + b"".join(self.choices)

    def index(self, turn: int) -> int:
        return (turn - 1) % len(self.numbers)


class Allocation(msgspec.Struct, frozen=True, kw_only=True):
    """One call's allocation, for :meth:`Store.allocate`: the record to keep under ``key`` (and the keys
    in ``also``) for ``ttl_s``. With a ``counter`` (and its ``pool``), the record is ``head``, the bytes of
    the number the counter's turn chooses, then ``tail``; without, it is ``head`` alone."""

    key: str
    head: bytes
    ttl_s: float
    tail: bytes = b""
    counter: str | None = None
    pool: Pool | None = None
    also: tuple[str, ...] = ()
    lease_s: float = 5.0
    """How long a claim made in steps holds before its record is written (see ``PENDING``); it lapses
    after that if the claimant died meanwhile. A store that allocates in one step ignores it."""

    def record(self, turn: int) -> bytes:
        """The record for the counter's ``turn`` (any turn when there is no counter)."""
        if self.pool is None:
            return self.head
        return self.head + self.pool.choices[self.pool.index(turn)] + self.tail


class Store(Protocol):
    """Byte values under string keys, with TTLs. Every method may raise :class:`core.errors.StoreError`."""

    shared: bool
    """True when other processes read what is stored here (Redis); False for a store in process."""

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

    async def allocate(self, allocation: Allocation) -> int | bytes:
        """Claim ``allocation.key`` when it holds nothing: advance the counter (when there is one) and
        keep the record of that turn under the key and every key in ``also``; answer the turn (0 without
        a counter). When the key holds something, change nothing and answer what it holds: another
        call's record, or a claim under way (it starts with ``PENDING``) to wait on.

        Atomic (of concurrent allocations of one key, one claims, and only it advances the counter), and
        one round trip wherever the store allows. A :class:`core.errors.StoreError` that is not
        :class:`core.errors.StoreBusy` may come after the allocation took effect: what the key holds tells.
        """

    async def ping(self) -> None:
        """Raise :class:`core.errors.StoreError` when the store cannot serve."""

    async def close(self) -> None:
        """Release connections."""


Evicted = Callable[[str, float], None]
"""Told of each entry a full store drops before its TTL ran out: the key's kind (what comes before its
first ``:``, e.g. ``call``) and the seconds it had left. Never the key itself, which may hold a number."""


class MemoryStore:
    """The store in process: at most ``max_entries`` values, with TTLs.

    Expired values are reclaimed as time passes, not only when read again: a heap orders them by
    expiry, each write reclaims what has fallen due, and a timer sweeps while the store is idle.
    When the store is full of live values, the least recently used one goes first, and ``on_evict``
    hears of it: a call record dropped inside its retry window is a call that could be allocated
    twice, so the store must be sized for it (``evicted`` counts them).

    Counters are kept apart from values and never evicted: there is one per round-robin service.
    """

    shared = False
    SWEEP_S = 1.0
    """How often the timer reclaims expired values while there are any."""
    SWEEP_BATCH = 2000
    """Most values reclaimed in one pass of the event loop, so that a mass expiry never stalls it."""

    def __init__(self, max_entries: int = 1_000_000, on_evict: Evicted | None = None) -> None:
        self._max = max_entries
        self._values: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._expiries: list[tuple[float, str]] = []  # a heap; stale items are skipped when popped
        self._counters: dict[str, int] = {}
        self._sweeper: asyncio.Handle | None = None
        self._sweeper_loop: asyncio.AbstractEventLoop | None = None
        self._on_evict = on_evict
        self.evicted = 0
        """Values dropped to make room while their TTL still ran."""

    @property
    def size(self) -> int:
        """Values held, expired ones not yet reclaimed included. (No ``__len__``: an empty store
        must not be falsy.)"""
        return len(self._values)

    def _live(self, key: str) -> bytes | None:
        item = self._values.get(key)
        if item is None:
            return None
        if item[0] <= time.monotonic():
            del self._values[key]
            return None
        self._values.move_to_end(key)
        return item[1]

    def _reclaim(self, now: float, limit: int) -> int:
        """Drop up to ``limit`` expired values, soonest first; how many heap items were looked at."""
        heap = self._expiries
        seen = 0
        while heap and heap[0][0] <= now and seen < limit:
            expires, key = heapq.heappop(heap)
            seen += 1
            item = self._values.get(key)
            if item is not None and item[0] == expires:
                del self._values[key]
        return seen

    def _sweep(self) -> None:
        self._sweeper = None
        if self._reclaim(time.monotonic(), self.SWEEP_BATCH) == self.SWEEP_BATCH:
            self._sweeper = asyncio.get_running_loop().call_soon(self._sweep)  # more fell due: go on soon
        else:
            self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        if self._expiries and (self._sweeper is None or self._sweeper_loop is not loop):
            self._sweeper = loop.call_later(self.SWEEP_S, self._sweep)
            self._sweeper_loop = loop

    async def get(self, key: str) -> bytes | None:
        if key in self._counters:
            return str(self._counters[key]).encode()
        return self._live(key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        now = time.monotonic()
        # Two at most per write: expired values go at least as fast as new ones come.
        self._reclaim(now, 2)
        expires = now + ttl_s
        self._values[key] = (expires, value)
        self._values.move_to_end(key)
        heapq.heappush(self._expiries, (expires, key))
        while len(self._values) > self._max:
            if self._reclaim(now, 1):
                continue
            old, (until, _) = self._values.popitem(last=False)
            self.evicted += 1
            if self._on_evict is not None:
                self._on_evict(old.partition(":")[0] if ":" in old else "", until - now)
        if len(self._expiries) > 2 * len(self._values) + 1024:
            # Replaced and deleted values left their heap items behind: rebuild from what is held.
            self._expiries = [(exp, k) for k, (exp, _) in self._values.items()]
            heapq.heapify(self._expiries)
        self._arm()

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

    async def allocate(self, allocation: Allocation) -> int | bytes:
        # Nothing here lets another task in between the check and the writes: atomic as it stands.
        held = self._live(allocation.key)
        if held is not None:
            return held
        turn = 0
        if allocation.counter is not None:
            turn = self._counters.get(allocation.counter, 0) + 1
            self._counters[allocation.counter] = turn
        record = allocation.record(turn)
        await self.set(allocation.key, record, allocation.ttl_s)
        for key in allocation.also:
            await self.set(key, record, allocation.ttl_s)
        return turn

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class DryRunStore:
    """Reads through to another store and writes nothing: for dry runs that must change no state."""

    shared = False

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

    async def allocate(self, allocation: Allocation) -> int | bytes:
        held = await self.get(allocation.key)
        if held is not None:
            return held
        turn = await self.incr(allocation.counter) if allocation.counter is not None else 0
        record = allocation.record(turn)
        for key in (allocation.key, *allocation.also):
            await self._values.set(key, record, allocation.ttl_s)
        return turn

    async def ping(self) -> None:
        await self._inner.ping()

    async def close(self) -> None:
        return None
