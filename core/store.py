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
    """The numbers an allocation chooses among, each with the bytes it takes in a record, and the
    ``order`` (indexes into ``numbers``) a shared counter walks: turn ``t`` (the counter's value after it
    advanced) chooses number ``order[(t - 1) % len(order)]``, wherever the choice is made. Without an
    order, the numbers in turn.

    ``packed`` holds the lot in one string, for a store that chooses on its own server, every integer
    big-endian: the count ``n`` (4 bytes), ``n + 1`` offsets of the choices' bytes (1-based, 4 bytes
    each), the order's length ``m`` (4 bytes), ``m`` indexes (0-based, 2 bytes each), then the bytes of
    every choice. Made once per pool and kept: an allocation only refers to it.
    """

    __slots__ = ("_where", "choices", "numbers", "order", "packed")

    def __init__(self, numbers: Sequence[str], choices: Sequence[bytes], order: Sequence[int] = ()) -> None:
        self.numbers = tuple(numbers)
        self.choices = tuple(choices)
        self.order = tuple(order) or tuple(range(len(self.numbers)))
        self._where = {c: i for i, c in reversed(list(enumerate(self.choices)))}
        n, m = len(self.choices), len(self.order)
        start = 4 * (n + 2) + 4 + 2 * m + 1
        offsets = [start]
        for choice in self.choices:
            offsets.append(offsets[-1] + len(choice))
        header = struct.pack(f">{n + 3}I{m}H", n, *offsets, m, *self.order)
        self.packed = header + b"".join(self.choices)

    def index(self, turn: int) -> int:
        """The index into ``numbers`` that turn ``turn`` of the counter chooses."""
        return self.order[(turn - 1) % len(self.order)]

    def find(self, choice: bytes) -> int | None:
        """The index of the number whose bytes are ``choice`` (what a sticky entry holds); None when the
        pool no longer has it."""
        return self._where.get(choice)


class Allocation(msgspec.Struct, frozen=True, kw_only=True):
    """One allocation, for :meth:`Store.allocate`: the record to keep under ``key`` (and the keys in
    ``also``) for ``ttl_s``. With a ``pool``, the record is ``head``, the bytes of the number chosen,
    then ``tail``; without, it is ``head`` alone.

    The number: what the ``sticky`` entry holds, when it holds one of the pool's numbers still (the
    entry then lives ``sticky_s`` again); else the turn the ``counter`` takes, or without a counter
    ``pick`` (an index chosen in process). A sticky entry is then set to the number for ``sticky_s``.
    An empty ``key`` claims nothing and keeps no record: only the number is chosen."""

    key: str
    head: bytes = b""
    ttl_s: float = 0
    tail: bytes = b""
    counter: str | None = None
    pool: Pool | None = None
    pick: int = 0
    sticky: str | None = None
    sticky_s: float = 0
    also: tuple[str, ...] = ()
    lease_s: float = 5.0
    """How long a claim made in steps holds before its record is written (see ``PENDING``); it lapses
    after that if the claimant died meanwhile. A store that allocates in one step ignores it."""

    def record(self, index: int) -> bytes:
        """The record for the pool's number ``index`` (any index when there is no pool)."""
        if self.pool is None:
            return self.head
        return self.head + self.pool.choices[index] + self.tail

    def index(self, answer: int) -> int:
        """The index of the number an allocation that answered ``answer`` chose."""
        if answer < 0:
            return -1 - answer
        if self.counter is not None and self.pool is not None:
            return self.pool.index(answer)
        return self.pick


async def choose_in_steps(store: Store, a: Allocation) -> tuple[int, int]:
    """The number of ``a`` (its index) and the answer for it, with single-key calls: the sticky entry
    read, else the counter advanced; then the sticky entry set. For a store that cannot do it at once."""
    if a.pool is None:
        return 0, 0
    if a.sticky is not None:
        held = await store.get(a.sticky)
        index = None if held is None else a.pool.find(held)
        if index is not None:
            await store.set(a.sticky, a.pool.choices[index], a.sticky_s)
            return index, -1 - index
    answer = await store.incr(a.counter) if a.counter is not None else 0
    index = a.index(answer)
    if a.sticky is not None:
        await store.set(a.sticky, a.pool.choices[index], a.sticky_s)
    return index, answer


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
        """Claim ``allocation.key`` when it holds nothing: choose the number (the sticky entry's, else the
        counter's turn, else ``pick``), keep the record of it under the key and every key in ``also``, and
        the sticky entry; answer the turn (0 without a counter), or ``-1 - index`` when the sticky entry
        gave number ``index``. When the key holds something, change nothing and answer what it holds:
        another call's record, or a claim under way (it starts with ``PENDING``) to wait on. An empty key
        claims nothing: the number is chosen and answered alike.

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
        # Nothing here lets another task in between the check and the writes (every call it makes
        # returns without waiting): atomic as it stands.
        a = allocation
        if a.key:
            held = self._live(a.key)
            if held is not None:
                return held
        if a.sticky is None:
            answer, index = 0, a.pick
            if a.counter is not None:
                answer = self._counters.get(a.counter, 0) + 1
                self._counters[a.counter] = answer
                index = a.pool.index(answer)
        else:
            index, answer = await choose_in_steps(self, a)
        if a.key:
            record = a.record(index)
            await self.set(a.key, record, a.ttl_s)
            for key in a.also:
                await self.set(key, record, a.ttl_s)
        return answer

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
        a = allocation
        if a.key:
            held = await self.get(a.key)
            if held is not None:
                return held
        # The sticky entry read through, the counter's next turn without taking it; written here only.
        index, answer = await choose_in_steps(self, a)
        if a.key:
            record = a.record(index)
            for key in (a.key, *a.also):
                await self._values.set(key, record, a.ttl_s)
        return answer

    async def ping(self) -> None:
        await self._inner.ping()

    async def close(self) -> None:
        return None
