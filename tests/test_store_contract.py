"""One contract, every store: in process, Redis, Redis Cluster, Redis Sentinel, and failover."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from core.failover import FailoverStore
from core.redis_store import RedisStore
from core.store import MemoryStore

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "redis", "cluster", "sentinel", "failover"])
async def store(request):
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    kind = request.param
    if kind == "memory":
        s = MemoryStore()
    elif kind == "redis":
        s = RedisStore.connect(request.getfixturevalue("redis_server").url, prefix, 1.0)
    elif kind == "cluster":
        s = RedisStore.connect(request.getfixturevalue("cluster").url, prefix, 1.0, cluster=True)
    elif kind == "sentinel":
        port = request.getfixturevalue("sentinel").port
        s = RedisStore.connect("", prefix, 1.0, sentinels=[f"127.0.0.1:{port}"], master="mymaster")
    else:
        s = FailoverStore(RedisStore.connect(request.getfixturevalue("redis_server").url, prefix, 1.0),
                          MemoryStore(), 0.2)
    yield s
    await s.close()


async def test_get_missing(store):
    assert await store.get("nothing") is None


async def test_set_get_replace(store):
    await store.set("k", b"\x00binary\xff", 10)
    assert await store.get("k") == b"\x00binary\xff"
    await store.set("k", b"", 10)
    assert await store.get("k") == b""


async def test_ttl_expires(store):
    await store.set("short", b"v", 0.05)
    await asyncio.sleep(0.15)
    assert await store.get("short") is None


async def test_add_only_when_absent(store):
    assert await store.add("a", b"first", 10) is True
    assert await store.add("a", b"second", 10) is False
    assert await store.get("a") == b"first"
    await store.set("b", b"x", 0.05)
    await asyncio.sleep(0.15)
    assert await store.add("b", b"y", 10) is True


async def test_delete(store):
    await store.set("d", b"v", 10)
    await store.delete("d")
    assert await store.get("d") is None
    await store.delete("never-there")


async def test_incr_and_read_counter(store):
    assert await store.incr("rr:x") == 1
    assert await store.incr("rr:x") == 2
    assert await store.get("rr:x") == b"2"


async def test_concurrent_add_has_one_winner(store):
    results = await asyncio.gather(*(store.add("race", str(i).encode(), 10) for i in range(50)))
    assert results.count(True) == 1


async def test_concurrent_incr_gives_every_value_once(store):
    values = await asyncio.gather(*(store.incr("c") for _ in range(100)))
    assert sorted(values) == list(range(1, 101))


async def test_ping(store):
    await store.ping()


async def test_prefixes_keep_gateways_apart(redis_server):
    a = RedisStore.connect(redis_server.url, "a:", 1.0)
    b = RedisStore.connect(redis_server.url, "b:", 1.0)
    await a.set("k", b"from-a", 10)
    assert await b.get("k") is None
    assert redis_server.client().get("a:k") == b"from-a"
    await a.close()
    await b.close()


async def test_store_errors_are_wrapped(own_redis):
    from core.errors import StoreError

    s = RedisStore.connect(own_redis.url, "x:", 0.2)
    await s.set("k", b"v", 10)
    own_redis.kill()
    for op in (s.get("k"), s.set("k", b"v", 1), s.add("k", b"v", 1), s.incr("k"), s.delete("k"), s.ping()):
        with pytest.raises(StoreError):
            await op
    await s.close()


async def test_failover_serves_in_process_and_comes_back(own_redis):
    s = FailoverStore(RedisStore.connect(own_redis.url, "f:", 0.2), MemoryStore(), 0.1)
    assert await s.incr("rr") == 1 and s.status() == "ok"
    own_redis.kill()
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await s.incr("rr") == 1          # the in-process counter, from 0
    assert s.status() == "degraded"
    assert await s.incr("rr") == 2
    assert loop.time() - began < 0.5         # one Redis timeout at most, then no waiting at all
    own_redis.start()
    for _ in range(50):
        if s.status() == "ok":
            break
        await asyncio.sleep(0.05)
    assert s.status() == "ok"
    # Redis again (restarted empty, as it keeps nothing on disk here): the write lands in it.
    assert await s.incr("rr") == 1
    assert own_redis.client().get("f:rr") == b"1"
    await s.close()
