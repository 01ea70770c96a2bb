"""A store that serves from Redis while it answers, and in process while it does not.

After a failure the circuit opens: calls go straight to the in-process store, without waiting on Redis,
and a probe pings Redis every ``retry_after_s`` until it answers, then closes the circuit. No call fails
and none waits longer than one Redis timeout because Redis is down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from core.errors import StoreError
from core.store import MemoryStore, Store

log = logging.getLogger("routing_gateway")


class FailoverStore:
    """:class:`core.store.Store` over a primary (Redis) with an in-process fallback."""

    def __init__(
        self,
        primary: Store,
        fallback: MemoryStore,
        retry_after_s: float,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self._retry_after = retry_after_s
        self._up = True
        self._probe: asyncio.Task | None = None
        self._on_change = on_change
        self.failures = 0

    @property
    def up(self) -> bool:
        return self._up

    @property
    def shared(self) -> bool:
        """True while serving from Redis, where other replicas read what is stored."""
        return self._up

    def status(self) -> str:
        return "ok" if self._up else "degraded"

    def _down(self, exc: StoreError) -> None:
        self.failures += 1
        if not self._up:
            return
        self._up = False
        log.warning("store degraded", extra={"fields": {"dependency": "redis", "error": str(exc)}})
        if self._on_change:
            self._on_change(False)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._wait_for_primary())

    async def _wait_for_primary(self) -> None:
        while not self._up:
            await asyncio.sleep(self._retry_after)
            try:
                await self.primary.ping()
            except StoreError:
                continue
            self._up = True
            log.warning("store recovered", extra={"fields": {"dependency": "redis"}})
            if self._on_change:
                self._on_change(True)

    async def _run(self, name: str, *args):
        if self._up:
            try:
                return await getattr(self.primary, name)(*args)
            except StoreError as exc:
                self._down(exc)
        return await getattr(self.fallback, name)(*args)

    async def get(self, key: str) -> bytes | None:
        return await self._run("get", key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._run("set", key, value, ttl_s)

    async def add(self, key: str, value: bytes, ttl_s: float) -> bool:
        return await self._run("add", key, value, ttl_s)

    async def delete(self, key: str) -> None:
        await self._run("delete", key)

    async def incr(self, key: str) -> int:
        return await self._run("incr", key)

    async def ping(self) -> None:
        await self._run("ping")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self.primary.close()
        await self.fallback.close()
