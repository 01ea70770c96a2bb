"""One contract, every store: in process, Redis, Redis Cluster, Redis Sentinel, and failover."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from core.decide import Context, RuleBase, decide
from core.failover import FailoverStore
from core.query import RoutingQuery
from core.redis_store import RedisStore
from core.services import Service
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
        s = FailoverStore(
            RedisStore.connect(request.getfixturevalue("redis_server").url, prefix, 1.0), MemoryStore(), 0.2
        )
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
    assert await s.incr("rr") == 1  # the in-process counter, from 0
    assert s.status() == "degraded"
    assert await s.incr("rr") == 2
    assert loop.time() - began < 0.5  # one Redis timeout at most, then no waiting at all
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


async def test_shared_says_whether_other_processes_read_it(store):
    # The in-process store is read by this process alone; the others by every replica.
    assert store.shared is (not isinstance(store, MemoryStore))


# --- the in-process store: bounded, expired values reclaimed, evictions told ---------------------


async def wait_for(condition, timeout: float = 10.0) -> bool:
    end = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > end:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_memory_reclaims_expired_values_that_are_never_read_again():
    # 3,000 calls with 30 KB keys: once their TTL has run, the memory comes back without anyone
    # reading them again (the timer sweeps), and no write is needed either.
    s = MemoryStore()
    for i in range(3000):
        await s.set(f"lu:{i:05d}" + "9" * 30_000, b"v" * 100, 0.2)
    assert s.size == 3000
    assert await wait_for(lambda: s.size == 0, timeout=10)
    await s.close()


async def test_memory_writes_reclaim_expired_values_as_they_go():
    s = MemoryStore()
    s.SWEEP_S = 3600  # no timer: the writes alone keep up
    for i in range(500):
        await s.set(f"old{i}", b"v", 0.01)
    await asyncio.sleep(0.05)
    for i in range(500):
        await s.set(f"new{i}", b"v", 60)
    assert s.size == 500
    await s.close()


async def test_memory_replacing_one_key_keeps_its_bookkeeping_bounded():
    s = MemoryStore()
    for i in range(20_000):
        await s.set("same", str(i).encode(), 60)
    assert s.size == 1 and await s.get("same") == b"19999"
    assert len(s._expiries) < 2000  # the expiry heap is rebuilt, not left to grow with every write
    await s.close()


async def test_memory_eviction_inside_the_ttl_is_told_and_counted():
    told: list[tuple[str, float]] = []
    s = MemoryStore(max_entries=100, on_evict=lambda kind, left: told.append((kind, left)))
    for i in range(150):
        await s.set(f"call:{i}", b"record", 600)
    assert s.size == 100 and s.evicted == 50
    assert [kind for kind, _ in told] == ["call"] * 50
    assert all(590 < left <= 600 for _, left in told)
    assert await s.get("call:0") is None and await s.get("call:149") == b"record"  # the oldest went
    await s.close()


async def test_memory_full_of_expired_values_evicts_none_of_the_live_ones():
    told = []
    s = MemoryStore(max_entries=100, on_evict=lambda kind, left: told.append(kind))
    s.SWEEP_S = 3600
    for i in range(100):
        await s.set(f"claim:{i}", b"p", 0.01)
    await asyncio.sleep(0.05)
    for i in range(100):
        await s.set(f"call:{i}", b"record", 600)
    assert told == [] and s.evicted == 0 and s.size == 100
    # Counters are apart and never evicted, however many values come.
    await s.incr("rr:Sales")
    for i in range(300):
        await s.set(f"x:{i}", b"v", 600)
    assert await s.get("rr:Sales") == b"1"
    assert told == ["call"] * 100 + ["x"] * 200
    await s.close()


async def test_memory_eviction_of_an_expired_value_is_not_told():
    told = []
    s = MemoryStore(max_entries=10, on_evict=lambda kind, left: told.append(kind))
    s.SWEEP_S = 3600
    for i in range(10):
        await s.set(f"k{i}", b"v", 0.01)
    await asyncio.sleep(0.05)
    await s.set("fresh", b"v", 60)
    assert told == [] and await s.get("fresh") == b"v"
    await s.close()


# --- one answer per call ------------------------------------------------------------------------

POOL = Service(numbers=["100", "101", "102"], strategy="round_robin")


def eml_call(call_id: str) -> RoutingQuery:
    return RoutingQuery(
        protocol="eml", service="Sales", needs_destination=True, idempotency_key=f"{call_id}\x1fSales"
    )


def context(store) -> Context:
    return Context(rules=RuleBase(services={"Sales": POOL}), store=store, flights={})


async def test_in_process_store_keeps_one_entry_per_call_and_tells_evictions():
    told = []
    store = MemoryStore(max_entries=100, on_evict=lambda kind, left: told.append((kind, round(left))))
    ctx = context(store)
    for i in range(100):
        await decide(eml_call(f"c{i}"), ctx, remember_s=600)
    assert store.size == 100 and told == []  # no mq: record in process: nothing here would read it
    await decide(eml_call("c100"), ctx, remember_s=600)
    assert told == [("call", 600)]


async def test_redis_keeps_each_call_by_mqid_too(redis_server):
    prefix = f"mq{uuid.uuid4().hex[:8]}:"
    store = RedisStore.connect(redis_server.url, prefix, 1.0)
    decision = await decide(eml_call("c1"), context(store), remember_s=60)
    kinds = sorted(k.decode()[len(prefix) :].split(":")[0] for k in redis_server.client().keys(f"{prefix}*"))
    assert kinds == ["call", "mq", "rr"]
    assert redis_server.client().get(f"{prefix}mq:{decision.id}") is not None
    await store.close()
