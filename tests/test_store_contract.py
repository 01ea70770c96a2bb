"""One contract, every store: in process, Redis, Redis Cluster, Redis Sentinel, and failover."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid

import msgspec
import pytest
import uvloop

from core.decide import Context, RuleBase, _key, decide
from core.errors import StoreBusy, StoreError
from core.failover import FailoverStore
from core.query import Decision, RoutingQuery
from core.redis_store import Patience, RedisStore
from core.services import Service
from core.store import PENDING, Allocation, DryRunStore, MemoryStore, Pool

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


# --- allocate: claim a call's key, take the pool's turn only then, keep the record ---------------

ABC = Pool(["a", "b", "c"], [b"A", b"B", b"C"])


def allocation(key: str, head: bytes = b"<", ttl_s: float = 10, **kw) -> Allocation:
    """A record ``<`` + the chosen choice + ``>`` under ``key`` and ``mq:`` + key, turns of ``rr:abc``."""
    kw.setdefault("tail", b">")
    kw.setdefault("counter", "rr:abc")
    kw.setdefault("pool", ABC)
    return Allocation(key=key, head=head, ttl_s=ttl_s, also=(f"mq:{key}",), **kw)


async def test_allocate_claims_once_and_advances_the_counter_only_then(store):
    assert await store.allocate(allocation("call:1")) == 1
    assert await store.get("call:1") == b"<A>" and await store.get("mq:call:1") == b"<A>"
    # Taken: nothing changes, and the answer is what the key holds.
    assert await store.allocate(allocation("call:1", head=b"[")) == b"<A>"
    assert await store.get("rr:abc") == b"1"
    turns = [await store.allocate(allocation(f"call:{n}")) for n in range(2, 6)]
    assert turns == [2, 3, 4, 5]
    assert [await store.get(f"call:{n}") for n in range(1, 6)] == [b"<A>", b"<B>", b"<C>", b"<A>", b"<B>"]


async def test_allocate_without_a_counter_keeps_the_head(store):
    plain = Allocation(key="call:p", head=b"record", ttl_s=10)
    assert await store.allocate(plain) == 0
    assert await store.allocate(Allocation(key="call:p", head=b"other", ttl_s=10)) == b"record"
    assert await store.get("call:p") == b"record"


async def test_concurrent_allocations_of_one_call_allocate_once(store):
    got = await asyncio.gather(*(store.allocate(allocation("call:race", head=b"%d" % i)) for i in range(50)))
    claimed = [g for g in got if isinstance(g, int)]
    assert claimed == [1]
    record = b"%dA>" % got.index(1)
    # The others get the winner's record, or (from a store allocating in steps) its claim to wait on.
    assert all(g == record or g.startswith(PENDING) for g in got if g != 1)
    assert await store.get("call:race") == record and await store.get("rr:abc") == b"1"


async def test_concurrent_allocations_take_every_turn_once(store):
    # A burst of new calls on one pool: strict round-robin, each record holding its own turn's choice.
    got = await asyncio.gather(*(store.allocate(allocation(f"call:{i}")) for i in range(300)))
    assert sorted(got) == list(range(1, 301))
    records = await asyncio.gather(*(store.get(f"call:{i}") for i in range(300)))
    assert records == [b"<" + b"ABC"[(turn - 1) % 3 : (turn - 1) % 3 + 1] + b">" for turn in got]


async def test_allocation_lasts_its_ttl(store):
    assert await store.allocate(allocation("call:t", ttl_s=0.05)) == 1
    await asyncio.sleep(0.15)
    assert await store.get("call:t") is None and await store.get("mq:call:t") is None
    assert await store.allocate(allocation("call:t")) == 2


async def test_allocate_answers_a_claim_under_way(store):
    # A replica allocating in steps holds a PENDING claim until its record is written: it is answered
    # as it is, for the caller to wait on, and nothing else changes.
    await store.set("call:w", PENDING + b"token", 10)
    assert await store.allocate(allocation("call:w")) == PENDING + b"token"
    assert await store.get("rr:abc") is None


# --- allocate: weighted cycles, sticky entries, and choosing without a call to claim -----------------

WEIGHTED = Pool(["a", "b", "c"], [b"A", b"B", b"C"], (0, 1, 0, 2, 0))  # weights 3, 1, 1


async def test_allocate_walks_the_pools_order(store):
    # A weighted pool's counter walks its smooth cycle: a b a c a, then again.
    got = [await store.allocate(allocation(f"call:{i}", pool=WEIGHTED, counter="rr:w")) for i in range(10)]
    assert got == list(range(1, 11))
    records = [await store.get(f"call:{i}") for i in range(10)]
    assert records == [b"<" + bytes([c]) + b">" for c in b"ABACAABACA"]


def sticky(key: str, who: str = "st:who", sticky_s: float = 10, **kw) -> Allocation:
    """An allocation of ``key`` whose number sticks to ``who``."""
    return allocation(key, sticky=who, sticky_s=sticky_s, **kw)


async def test_a_sticky_entry_gives_its_number_again_without_a_turn(store):
    assert await store.allocate(sticky("call:1")) == 1  # nothing kept yet: a turn, then the entry
    assert await store.get("st:who") == b"A"
    assert await store.allocate(allocation("call:2")) == 2  # another caller: the rotation goes on
    hit = await store.allocate(sticky("call:3"))
    assert hit == -1  # -1 - index 0: the entry's number, no turn taken
    assert await store.get("call:3") == b"<A>" and await store.get("mq:call:3") == b"<A>"
    assert await store.get("rr:abc") == b"2"
    # A retry of a call answered from the entry is that call's record, like any other.
    assert await store.allocate(sticky("call:3", head=b"[")) == b"<A>"


async def test_a_sticky_entry_whose_number_left_the_pool_is_replaced(store):
    await store.set("st:who", b"Z", 10)  # a number the pool no longer has
    assert await store.allocate(sticky("call:1")) == 1
    assert await store.get("st:who") == b"A" and await store.get("call:1") == b"<A>"


async def test_a_sticky_entry_lasts_its_sticky_s_from_the_last_number_it_gave(store):
    assert await store.allocate(sticky("call:1", sticky_s=0.05)) == 1
    await asyncio.sleep(0.15)
    assert await store.get("st:who") is None
    assert await store.allocate(sticky("call:2", sticky_s=10)) == 2  # expired: a new turn
    assert await store.allocate(sticky("call:3", sticky_s=10)) == -2  # b, index 1


async def test_sticky_without_a_counter_keeps_the_number_chosen_in_process(store):
    # A pool chosen in process (random): the first number is the one picked, and sticks.
    assert await store.allocate(sticky("call:1", counter=None, pick=2)) == 0
    assert await store.get("call:1") == b"<C>"
    assert await store.allocate(sticky("call:2", counter=None, pick=0)) == -3
    assert await store.get("call:2") == b"<C>" and await store.get("rr:abc") is None


async def test_allocate_without_a_call_chooses_and_keeps_no_record(store):
    # SmartRouting keeps no call record: an allocation with no key only chooses (sticky first).
    assert (
        await store.allocate(Allocation(key="", counter="rr:abc", pool=ABC, sticky="st:x", sticky_s=10)) == 1
    )
    assert (
        await store.allocate(Allocation(key="", counter="rr:abc", pool=ABC, sticky="st:x", sticky_s=10)) == -1
    )
    assert await store.allocate(Allocation(key="", counter="rr:abc", pool=ABC)) == 2
    assert await store.get("") is None and await store.get("rr:abc") == b"2"


async def test_concurrent_sticky_allocations_of_one_caller_on_one_store_agree(store):
    # Once an entry is kept, every call of its caller gets that number, however many come at once.
    await store.allocate(sticky("call:first"))
    got = await asyncio.gather(*(store.allocate(sticky(f"call:{i}")) for i in range(50)))
    assert set(got) == {-1} and await store.get("rr:abc") == b"1"


async def test_dry_run_reads_sticky_entries_and_keeps_none():
    inner = MemoryStore()
    await inner.allocate(sticky("call:0"))
    await inner.incr("rr:abc")
    dry = DryRunStore(inner)
    assert await dry.allocate(sticky("call:1")) == -1  # the inner entry, read through
    assert await dry.allocate(sticky("call:2", who="st:new")) == 3  # the inner counter's next turn
    assert await inner.get("st:new") is None and await inner.get("rr:abc") == b"2"


async def test_redis_allocation_keeps_the_prefix(redis_server):
    s = RedisStore.connect(redis_server.url, "pa:", 1.0)
    assert await s.allocate(allocation("call:k")) >= 1
    client = redis_server.client()
    assert client.get("pa:call:k") == client.get("pa:mq:call:k") and client.exists("pa:rr:abc")
    assert client.get("call:k") is None
    await s.close()


async def test_redis_reloads_a_script_it_lost(own_redis):
    s = RedisStore.connect(own_redis.url, "sl:", 1.0)
    assert await s.allocate(allocation("call:1")) == 1
    own_redis.client().script_flush()  # as after a restart or a failover to a replica
    assert await s.allocate(allocation("call:2")) == 2
    assert await s.allocate(allocation("call:3")) == 3
    await s.close()


class Watch:
    """The commands clients send ``server`` from now until ``stop()`` (not those a script makes)."""

    def __init__(self, server) -> None:
        self._marker = server.client()
        self._marker.ping()  # its own connection set up before the watch
        self.commands: list[str] = []
        ready = threading.Event()

        def watch() -> None:
            with server.client().monitor() as m:
                ready.set()
                for cmd in m.listen():
                    if cmd["command"] == "ECHO end-of-watch":
                        return
                    if cmd["client_type"] != "lua":
                        self.commands.append(cmd["command"].split()[0])

        self._thread = threading.Thread(target=watch)
        self._thread.start()
        ready.wait(5)

    def stop(self) -> list[str]:
        self._marker.echo("end-of-watch")
        self._thread.join(10)
        return self.commands


async def test_a_new_call_on_redis_is_one_round_trip(own_redis):
    # The claim, the pool's turn and both records: one EVALSHA. A retry: one EVALSHA too.
    store = RedisStore.connect(own_redis.url, "rt:", 1.0)
    ctx = context(store)
    await store.allocate(allocation("call:warm"))  # the connection set up, the script loaded
    watch = Watch(own_redis)
    first = await decide(eml_call("c1"), ctx, remember_s=60)
    again = await decide(eml_call("c1"), ctx, remember_s=60)
    assert watch.stop() == ["EVALSHA", "EVALSHA"]
    assert first.target == "100" and first.id and not first.replayed
    assert again == msgspec.structs.replace(first, replayed=True)  # the record is the answer, whole
    await store.close()


async def test_a_sticky_call_on_redis_is_one_round_trip(own_redis):
    # A new call of a sticky pool: the claim, the entry read, the turn, the records and the entry: one
    # EVALSHA. The same customer's next call: one EVALSHA too, and no turn.
    store = RedisStore.connect(own_redis.url, "rs:", 1.0)
    ctx = Context(rules=RuleBase(services={"Sales": STICKY}), store=store, flights={})
    await store.allocate(allocation("call:warm"))
    watch = Watch(own_redis)
    first = await decide(eml_call("c1", customer="ACME"), ctx, remember_s=60)
    second = await decide(eml_call("c2", customer="ACME"), ctx, remember_s=60)
    assert watch.stop() == ["EVALSHA", "EVALSHA"]
    assert first.target == second.target == "100" and not second.replayed
    assert own_redis.client().get("rs:rr:Sales") == b"1"
    kinds = [k.decode().split(":")[1] for k in own_redis.client().keys("rs:*")]
    assert kinds.count("st") == 1  # one entry for the customer, by a hash
    assert not any(b"ACME" in k for k in own_redis.client().keys("rs:*"))  # hashed, never in clear
    await store.close()


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
        # Long enough that none expires while the others are still being written, on a busy machine.
        await s.set(f"lu:{i:05d}" + "9" * 30_000, b"v" * 100, 2.0)
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
STICKY = Service(numbers=["100", "101", "102"], strategy="round_robin", sticky="customer", sticky_s=600)


def eml_call(call_id: str, customer: str = "") -> RoutingQuery:
    return RoutingQuery(
        protocol="eml",
        service="Sales",
        customer=customer,
        needs_destination=True,
        idempotency_key=f"{call_id}\x1fSales",
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


async def test_allocation_whose_answer_was_lost_is_read_back_and_kept():
    # The allocation took effect, its answer was lost: the call reads back that the record is its own and
    # answers it, instead of failing (and being allocated again on its retry) or replaying itself.
    store = LostAnswers("allocate")
    ctx = context(store)
    first = await decide(eml_call("c1"), ctx, remember_s=60)
    assert first.target == "100" and not first.replayed
    again = await decide(eml_call("c1"), ctx, remember_s=60)
    assert (again.target, again.id, again.replayed) == ("100", first.id, True)
    assert await store.get("rr:Sales") == b"1"


class LossyRedis(RedisStore):
    """A Redis store whose first ``left`` answers to ``lose`` calls (add or set) are lost on the way back,
    after the call took effect."""

    lose = ""
    left = 0

    def _lost(self, name: str, result):
        if name == self.lose and self.left:
            self.left -= 1
            raise StoreError(f"{name}: answer lost")
        return result

    async def add(self, *args):
        return self._lost("add", await super().add(*args))

    async def set(self, *args):
        return self._lost("set", await super().set(*args))


@pytest.fixture
async def cluster_store(cluster):
    stores = []

    def make(lose: str = "", times: int = 1) -> LossyRedis:
        s = LossyRedis.connect(cluster.url, f"c{uuid.uuid4().hex[:8]}:", 1.0, cluster=True)
        s.lose, s.left = lose, times
        stores.append(s)
        return s

    yield make
    for s in stores:
        await s.close()


async def test_cluster_claim_whose_answer_was_lost_is_read_back_and_kept(cluster_store):
    # On a Cluster, an allocation goes in steps: the claim landed, its answer did not; the call reads
    # back that the claim is its own and goes on.
    store = cluster_store("add")
    ctx = context(store)
    first = await decide(eml_call("c1"), ctx, remember_s=60)
    assert first.target == "100" and not first.replayed
    again = await decide(eml_call("c1"), ctx, remember_s=60)
    assert (again.target, again.id, again.replayed) == ("100", first.id, True)
    assert await store.get("rr:Sales") == b"1"


async def test_cluster_record_write_that_fails_once_is_written_again(cluster_store):
    store = cluster_store("set")
    ctx = context(store)
    first = await decide(eml_call("c1"), ctx, remember_s=60)
    again = await decide(eml_call("c1"), ctx, remember_s=60)
    assert (again.target, again.id, again.replayed) == (first.target, first.id, True)


async def test_cluster_record_write_that_keeps_failing_still_answers_with_the_decision(cluster_store):
    store = cluster_store("set", times=10)
    first = await decide(eml_call("c1"), context(store), remember_s=60)
    assert first.target == "100" and first.fallback is None


async def test_a_claim_under_way_is_waited_for():
    # A replica allocating in steps (on a Cluster, or a gateway of an earlier release) holds a claim
    # until its record is written: a call of the same key waits for that record, and answers it.
    store = MemoryStore()
    key = _key(eml_call("c0"))
    await store.set(key, PENDING + b"someone", 60)
    call = asyncio.ensure_future(decide(eml_call("c0"), context(store), remember_s=60))
    await asyncio.sleep(0.05)
    assert not call.done()
    theirs = Decision(target="102", service="Sales", id="their-id")
    await store.set(key, msgspec.msgpack.encode(theirs), 60)
    got = await call
    assert (got.target, got.id, got.replayed) == ("102", "their-id", True)
    assert await store.get("rr:Sales") is None  # no turn taken here


async def test_dry_run_allocation_takes_no_turn_and_writes_nothing():
    inner = MemoryStore()
    dry = DryRunStore(inner)
    assert await dry.allocate(allocation("call:d")) == 1
    assert await dry.allocate(allocation("call:d")) == b"<A>"
    assert await dry.allocate(allocation("call:e")) == 1  # the inner position, not advanced
    assert await inner.get("call:d") is None and await inner.get("rr:abc") is None


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


async def test_refused_allocation_opens_the_circuit_and_is_made_in_process(own_redis):
    s = FailoverStore(RedisStore.connect(own_redis.url, "oa:", 1.0), MemoryStore(), 5)
    assert await s.allocate(allocation("call:1")) == 1
    own_redis.client().config_set("maxmemory", "1")
    own_redis.client().config_set("maxmemory-policy", "noeviction")
    assert await s.allocate(allocation("call:2")) == 1  # the in-process counter, from 0
    assert s.status() == "degraded" and s.suspicions == 0
    assert own_redis.client().get("oa:call:2") is None and await s.get("call:2") == b"<A>"
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
