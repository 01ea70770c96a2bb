"""One contract, every store: in process, Redis, Redis Cluster, Redis Sentinel, and failover."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest
import uvloop

from core.decide import Context, RuleBase, decide
from core.errors import StoreBusy, StoreError
from core.failover import FailoverStore
from core.query import RoutingQuery
from core.redis_store import Patience, RedisStore
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
    assert loop.time() - began < 1.5  # about two Redis timeouts (call, confirming ping), then no waiting
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


async def test_many_concurrent_calls_each_get_their_own_answer(store):
    # A burst larger than any pool: every call is answered, and each with its own answer.
    await asyncio.gather(*(store.set(f"m{i}", str(i).encode(), 10) for i in range(600)))
    got = await asyncio.gather(*(store.get(f"m{i}") for i in range(600)))
    assert got == [str(i).encode() for i in range(600)]
    claims = await asyncio.gather(*(store.add(f"m{i % 300}", b"x", 10) for i in range(600)))
    assert claims == [False] * 600


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


# --- Redis: a sized pool, and load never taken for an outage -------------------------------------


def connections(server) -> int:
    """Clients connected to ``server``, the one asking not counted."""
    return len(server.client().client_list()) - 1


async def test_redis_sends_on_at_most_max_connections(own_redis):
    s = RedisStore.connect(own_redis.url, "p:", 1.0, max_connections=3)
    values = await asyncio.gather(*(s.incr("n") for _ in range(2000)))
    assert sorted(values) == list(range(1, 2001))
    assert connections(own_redis) <= 3
    await s.ping()  # past the queue, on the one connection kept for it
    assert connections(own_redis) <= 4
    await s.close()


async def test_full_pool_waits_then_is_busy_and_never_opens_the_circuit(own_redis):
    # One connection, one call at a time on it; Redis holds writes (CLIENT PAUSE ... WRITE) and answers
    # everything else. Two writes take the connection in turn (0 to 0.3 s, then 0.3 to 0.6 s); a read
    # queued at 0.2 s waits its 0.3 s for the connection and gives up unsent. None of it is an outage:
    # Redis answers a ping all along.
    redis = RedisStore.connect(own_redis.url, "b:", 0.3, max_connections=1)
    redis.BATCH = 1
    s = FailoverStore(redis, MemoryStore(), 0.1)
    await s.set("r", b"read me", 60)
    own_redis.client().execute_command("CLIENT", "PAUSE", "2000", "WRITE")
    loop = asyncio.get_running_loop()
    writes = []
    for i in range(2):
        writes.append(asyncio.ensure_future(s.set(f"w{i}", b"v", 60)))
        await asyncio.sleep(0.1)
    began = loop.time()
    with pytest.raises(StoreBusy):
        await s.get("r")
    assert 0.25 < loop.time() - began < 1.0
    for write in writes:
        with pytest.raises(StoreError) as failed:
            await write  # each timed out on the wire; whether it landed is unknown, so the caller is told
        assert not isinstance(failed.value, StoreBusy)
    assert s.status() == "ok" and s.failures == 2 and s.suspicions >= 1
    own_redis.client().execute_command("CLIENT", "UNPAUSE")
    assert await s.get("r") == b"read me"
    await s.close()


async def test_deadline_cutting_a_redis_call_short_counts_as_its_failure(own_redis):
    # Redis holding every command; the caller's own deadline (0.1 s) is far shorter than the store's
    # timeout (1 s): the cut-short call still counts, Redis is asked, and the circuit opens.
    s = FailoverStore(RedisStore.connect(own_redis.url, "d:", 1.0), MemoryStore(), 0.2)
    await s.ping()
    own_redis.client().execute_command("CLIENT", "PAUSE", "3000")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await s.get("k")
    assert s.suspicions == 1
    assert await wait_for(lambda: s.status() == "degraded", timeout=5)
    assert await s.get("k") is None  # in process now, at once
    await s.close()


async def test_failed_call_waits_for_the_verdict_and_goes_on_in_process(own_redis):
    s = FailoverStore(RedisStore.connect(own_redis.url, "v:", 0.2), MemoryStore(), 5)
    assert await s.incr("rr") == 1
    own_redis.client().execute_command("CLIENT", "PAUSE", "3000")
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await s.incr("rr") == 1  # timed out, Redis did not answer the ping either: in process
    assert s.status() == "degraded"
    assert loop.time() - began < 1.0  # two Redis timeouts, give or take
    own_redis.client().execute_command("CLIENT", "UNPAUSE")
    await s.close()


async def _answered_while_stuck(timeout_cls) -> str:
    """An answer sent just before the event loop gets stuck past the timeout (one callback blocking
    0.2 s, as a pass over hundreds of requests can): when the loop comes back, it reads the answer and,
    in the same pass, fires the due timer, before the task the answer woke gets to run."""
    loop = asyncio.get_running_loop()
    answer = loop.create_future()
    mine, theirs = socket.socketpair()

    class Reader(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            if not answer.done():
                answer.set_result(data.decode())

    transport, _ = await loop.connect_accepted_socket(Reader, mine)

    def stuck() -> None:
        theirs.send(b"answered")
        time.sleep(0.2)

    loop.call_soon(stuck)
    try:
        async with timeout_cls(0.1):
            return await answer
    except TimeoutError:
        return "timed out"
    finally:
        transport.close()
        theirs.close()


@pytest.mark.parametrize("run", [uvloop.run, asyncio.run], ids=["uvloop", "asyncio"])
def test_patience_reads_the_sockets_before_it_times_out(run):
    assert run(_answered_while_stuck(asyncio.timeout)) == "timed out"  # what Patience is for
    assert run(_answered_while_stuck(Patience)) == "answered"

    async def never_answered() -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(TimeoutError):
            async with Patience(0.1):
                await loop.create_future()
        return loop.time() - began

    assert 0.09 < run(never_answered()) < 1.0


# --- one answer per call, whatever the store does ------------------------------------------------

POOL = Service(numbers=["100", "101", "102"], strategy="round_robin")


def eml_call(call_id: str) -> RoutingQuery:
    return RoutingQuery(
        protocol="eml", service="Sales", needs_destination=True, idempotency_key=f"{call_id}\x1fSales"
    )


def context(store) -> Context:
    return Context(rules=RuleBase(services={"Sales": POOL}), store=store, flights={})


class LostAnswers:
    """A store in process whose first answers to ``lose`` calls are lost on the way back, after the call
    took effect: what a Redis call that timed out on the wire may have done. (A real Redis cannot be
    made to drop one reply on cue.)"""

    shared = False

    def __init__(self, lose: str, times: int = 1) -> None:
        self.inner = MemoryStore()
        self._lose = lose
        self._left = times

    def __getattr__(self, name):
        method = getattr(self.inner, name)
        if name != self._lose:
            return method

        async def lossy(*args):
            result = await method(*args)
            if self._left:
                self._left -= 1
                raise StoreError(f"{name}: answer lost")
            return result

        return lossy


async def test_claim_whose_answer_was_lost_is_read_back_and_kept():
    # The claim landed, its answer did not: the call reads back that the claim is its own and goes on,
    # instead of failing (and being allocated again on its retry) or waiting on itself.
    store = LostAnswers("add")
    ctx = context(store)
    first = await decide(eml_call("c1"), ctx, remember_s=60)
    assert first.target == "100" and not first.replayed
    again = await decide(eml_call("c1"), ctx, remember_s=60)
    assert (again.target, again.id, again.replayed) == ("100", first.id, True)
    assert await store.get("rr:Sales") == b"1"


async def test_record_write_that_fails_once_is_written_again():
    store = LostAnswers("set")
    ctx = context(store)
    first = await decide(eml_call("c1"), ctx, remember_s=60)
    again = await decide(eml_call("c1"), ctx, remember_s=60)
    assert (again.target, again.id, again.replayed) == (first.target, first.id, True)


async def test_record_write_that_keeps_failing_still_answers_with_the_decision():
    store = LostAnswers("set", times=10)
    first = await decide(eml_call("c1"), context(store), remember_s=60)
    assert first.target == "100" and first.fallback is None


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


async def test_refused_call_opens_the_circuit_without_asking(own_redis):
    # Redis out of memory answers every ping and refuses every write: that is not a slow call to
    # confirm, it is a Redis that cannot serve, and the writes go on in process.
    s = FailoverStore(RedisStore.connect(own_redis.url, "o:", 1.0), MemoryStore(), 5)
    await s.ping()
    own_redis.client().config_set("maxmemory", "1")
    own_redis.client().config_set("maxmemory-policy", "noeviction")
    assert await s.incr("rr") == 1
    assert s.status() == "degraded" and s.suspicions == 0
    await s.close()


async def test_failover_ping_never_raises(redis_server):
    # Start-up asks the store whether Redis answers; one lost ping while Redis answers the next is no
    # reason to fail start-up, nor to take Redis for down.
    class FirstPingLost(LostAnswers):
        def __init__(self) -> None:
            self.inner = RedisStore.connect(redis_server.url, "fp:", 1.0)
            self._lose = "ping"
            self._left = 1

    s = FailoverStore(FirstPingLost(), MemoryStore(), 5)
    await s.ping()
    assert s.status() == "ok" and s.suspicions == 1
    await s.close()
