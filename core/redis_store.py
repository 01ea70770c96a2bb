"""The store in Redis (a single server, a Cluster, or a Sentinel-managed master), shared by replicas.

Every call is bounded by ``timeout_s`` and every failure leaves here as :class:`StoreError`. Each
operation touches one key, so keys need no hash tags to be Cluster-safe; the atomic ones are single
commands (``SET NX PX``, ``INCR``), so no replica can race another between a read and a write.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis, RedisCluster, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from core.errors import StoreError


def _no_retry() -> Retry:
    # A retry inside the client would spend the caller's deadline twice; the failover store decides.
    return Retry(NoBackoff(), 0)


class RedisStore:
    """:class:`core.store.Store` on Redis. Keys are ``prefix + key``."""

    shared = True

    def __init__(self, client: Any, prefix: str, timeout_s: float, sentinel: Sentinel | None = None) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout = timeout_s
        self._sentinel = sentinel
        # The async Cluster client loads its slot map on first use; many first commands at once would
        # each start loading it and trip over one another, so the first ones wait for one load.
        self._init_lock: asyncio.Lock | None = asyncio.Lock() if isinstance(client, RedisCluster) else None

    @classmethod
    def connect(
        cls,
        url: str,
        prefix: str,
        timeout_s: float,
        cluster: bool = False,
        sentinels: list[str] | tuple[str, ...] = (),
        master: str = "",
        max_connections: int = 64,
    ) -> RedisStore:
        """A store for a URL (``redis://``, ``rediss://``, ``unix://``), a Cluster node, or Sentinels.
        Nothing is connected until the first call."""
        options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        if sentinels:
            hosts = []
            for item in sentinels:
                host, _, port = item.rpartition(":")
                hosts.append((host or item, int(port or 26379)))
            sentinel = Sentinel(hosts, sentinel_kwargs=dict(options), retry=_no_retry(), **options)
            return cls(sentinel.master_for(master, retry=_no_retry()), prefix, timeout_s, sentinel)
        if cluster:
            return cls(RedisCluster.from_url(url, retry=_no_retry(), **options), prefix, timeout_s)
        return cls(Redis.from_url(url, retry=_no_retry(), **options), prefix, timeout_s)

    async def _call(self, command: str, *args: Any, **kw: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                if self._init_lock is not None:
                    async with self._init_lock:
                        await self._client.initialize()
                    self._init_lock = None
                return await self._client.execute_command(command, *args, **kw)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis {command}: {exc.__class__.__name__}: {exc}") from exc

    async def get(self, key: str) -> bytes | None:
        return await self._call("GET", self._prefix + key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._call("SET", self._prefix + key, value, "PX", max(1, int(ttl_s * 1000)))

    async def add(self, key: str, value: bytes, ttl_s: float) -> bool:
        return bool(await self._call("SET", self._prefix + key, value, "PX", max(1, int(ttl_s * 1000)), "NX"))

    async def delete(self, key: str) -> None:
        await self._call("DEL", self._prefix + key)

    async def incr(self, key: str) -> int:
        return int(await self._call("INCR", self._prefix + key))

    async def ping(self) -> None:
        await self._call("PING")

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except (RedisError, OSError):
            pass
