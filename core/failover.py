"""A store that serves from Redis while it answers, and in process while it does not.

A call to Redis that fails (an error, a timeout, or a deadline that cuts it short) is not yet an
outage: under a burst one call can be slow while Redis answers every other. Redis is asked directly
(a ping, past the queue of calls); only when that fails too does the circuit open (at once when
Redis refuses a call outright: out of memory, read-only). Then calls go
straight to the in-process store, without waiting on Redis, and a probe pings Redis every
``retry_after_s`` until it answers, then closes the circuit. A full pool (:class:`StoreBusy`) is load,
never an outage. No call waits longer than about two Redis timeouts because Redis is down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from core.errors import StoreBusy, StoreError, StoreRefused
from core.store import Allocation, MemoryStore, Store

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
        self._check: asyncio.Task | None = None
        self._on_change = on_change
        self.failures = 0
        """Calls to Redis that failed (load shed as StoreBusy is not counted)."""
        self.suspicions = 0
        """Times Redis was asked whether it is down after calls failed, whatever it answered."""

    @property
    def up(self) -> bool:
        return self._up

    @property
    def shared(self) -> bool:
        """True while serving from Redis, where other replicas read what is stored."""
        return self._up

    def status(self) -> str:
        return "ok" if self._up else "degraded"

    def _down(self, exc: StoreError, probe: StoreError | None = None) -> None:
        if not self._up:
            return
        self._up = False
        fields = {"dependency": "redis", "error": str(exc)}
        if probe is not None:
            fields["probe"] = str(probe)
        log.warning("store degraded", extra={"fields": fields})
        if self._on_change:
            self._on_change(False)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._wait_for_primary())

    def _suspect(self, exc: StoreError) -> asyncio.Task:
        """Ask Redis whether it is down (once for all the calls failing meanwhile). The task's result
        is True when it is, and then the circuit is open."""
        if self._check is None or self._check.done():
            self.suspicions += 1
            self._check = asyncio.get_running_loop().create_task(self._confirm(exc))
        return self._check

    async def _confirm(self, exc: StoreError) -> bool:
        try:
            await self.primary.ping()
        except StoreError as probe:
            self._down(exc, probe)
            return True
        return False

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
            except StoreBusy:
                raise  # every connection is busy with calls Redis is answering: load, not an outage
            except StoreRefused as exc:
                # Redis answered, with a refusal (out of memory, read-only): a ping would succeed, and
                # prove nothing. It cannot serve: in process until it can.
                self.failures += 1
                self._down(exc)
            except StoreError as exc:
                self.failures += 1
                # Redis down: this call goes on in process. Redis up: only this call failed, and
                # whether its write landed is unknown, so the caller is told.
                if not self._up or await asyncio.shield(self._suspect(exc)):
                    return await getattr(self.fallback, name)(*args)
                raise
            except asyncio.CancelledError:
                # A deadline cut the call short: as far as Redis goes, the call failed. The check runs
                # on in the background; this call is over either way.
                self.failures += 1
                if self._up:
                    self._suspect(StoreError(f"redis {name}: cut short by the deadline"))
                raise
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

    async def allocate(self, allocation: Allocation) -> int | bytes:
        return await self._run("allocate", allocation)

    async def ping(self) -> None:
        """Never raises: the in-process store always answers. Whether Redis does, status() tells."""
        try:
            await self._run("ping")
        except StoreError:
            pass  # that ping failed, and Redis answered the next one: up, and busy

    async def close(self) -> None:
        for task in (self._probe, self._check):
            if task is not None:
                task.cancel()
        await self.primary.close()
        await self.fallback.close()
