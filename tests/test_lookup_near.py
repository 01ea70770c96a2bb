"""Lookup answers kept in process (``near_cache_s``): a caller seen again meanwhile costs no Redis command,
found and not-found alike, never past the answer's own freshness, within a bounded count, counted as a
``hit``, and handed over by a reload that keeps the same lookup settings. Over a real redis-server and the
local CRM; Redis's own command counters tell what was sent."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import httpx
import pytest

import core.lookup
from core.lookup import Cached, CrmLookup, LookupConfig, _encode
from core.redis_store import RedisStore
from tests.test_lookup_hostile import call, config, lookups, wait_for

VIP = "+46701234567"

pytestmark = pytest.mark.anyio


class Commands:
    """What Redis was sent, from its ``INFO commandstats``, on one probe connection opened up front, so
    that the probe's own ``INFO`` is all it adds (and is left out)."""

    def __init__(self, server) -> None:
        self._client = server.client()
        self._client.ping()

    def sent(self, name: str | None = None) -> int:
        stats = self._client.info("commandstats")
        if name is not None:
            return stats.get(f"cmdstat_{name}", {}).get("calls", 0)
        return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


@pytest.fixture
async def redis(own_redis):
    store = RedisStore.connect(own_redis.url, f"n{uuid.uuid4().hex[:8]}:", 2.0)
    yield store, Commands(own_redis), own_redis
    await store.close()


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as client:
        yield client


def settings(crm, **kw) -> LookupConfig:
    return LookupConfig(url=crm.url, attributes=["agent", "language"], **kw)


async def seed(store: RedisStore, number: str, entry: Cached) -> None:
    await store.set(f"lookup:{number}", _encode(entry), 60)


async def test_a_caller_seen_again_costs_no_redis_command(crm, redis, http):
    store, commands, _ = redis
    crm.modes[VIP] = "vip"
    seen = []
    first = CrmLookup(settings(crm), store, http, lambda r, s: seen.append(r))
    found, how = await first.lookup(VIP, 2.0)
    assert how == "miss" and "vip" in found.tags
    # Another process (a fresh lookup): it reads the store once, then keeps the answer.
    other = CrmLookup(settings(crm), store, http, lambda r, s: seen.append(r))
    before = commands.sent()
    assert (await other.lookup(VIP, 2.0))[1] == "hit"
    assert commands.sent() - before == 1 and commands.sent("get") >= 1
    before = commands.sent()
    for _ in range(50):
        again, how = await other.lookup(VIP, 2.0)
        assert how == "hit" and again == found
        assert await other.find(VIP, 2.0) == found
        assert await first.find(VIP, 2.0) == found  # kept from the CRM's answer too
    assert commands.sent() == before
    assert crm.hits[VIP] == 1
    assert found.attributes == {"agent": "crm-agent@customer.com", "language": "sv-SE"}
    # Counted as cache hits, each once.
    assert seen.count("hit") == 1 + 150 and seen.count("miss") == 1


async def test_a_not_found_answer_is_kept_too(crm, redis, http):
    store, commands, _ = redis
    lookup = CrmLookup(settings(crm), store, http)
    assert await lookup.lookup("+46700000010", 2.0) == (None, "not_found")
    before = commands.sent()
    for _ in range(20):
        assert await lookup.lookup("+46700000010", 2.0) == (None, "hit")
        assert await lookup.find("+46700000010", 2.0) is None
    assert commands.sent() == before
    assert crm.hits["+46700000010"] == 1


async def test_kept_answers_expire_and_the_store_is_read_again(crm, redis, http):
    store, commands, _ = redis
    crm.modes[VIP] = "vip"
    lookup = CrmLookup(settings(crm, near_cache_s=0.2), store, http)
    assert (await lookup.lookup(VIP, 2.0))[1] == "miss"
    assert await lookup.lookup("+46700000011", 2.0) == (None, "not_found")
    await asyncio.sleep(0.25)  # past near_cache_s: an expiry, not a timing assertion
    before = commands.sent("get")
    assert (await lookup.lookup(VIP, 2.0))[1] == "hit"
    assert await lookup.find("+46700000011", 2.0) is None
    assert commands.sent("get") - before == 2
    assert crm.hits[VIP] == 1 and crm.hits["+46700000011"] == 1


async def test_never_kept_past_the_answers_own_freshness(crm, redis, http):
    store, _, _ = redis
    crm.modes[VIP] = "gold"  # what the CRM says now; the store still says vip for a moment
    await seed(store, VIP, Cached(True, time.time() + 0.3, ["vip"]))
    lookup = CrmLookup(settings(crm, near_cache_s=3600), store, http)
    found, how = await lookup.lookup(VIP, 2.0)
    assert how == "hit" and "vip" in found.tags
    await asyncio.sleep(0.35)  # past fresh_until, far within near_cache_s
    found, how = await lookup.lookup(VIP, 2.0)
    assert how == "miss" and found.tags == frozenset({"gold"})
    assert crm.hits[VIP] == 1


async def test_a_stale_answer_is_not_kept_and_its_refresh_is(crm, redis, http):
    store, commands, _ = redis
    crm.modes[VIP] = "hold"
    await seed(store, VIP, Cached(True, time.time() - 1, ["vip"]))
    lookup = CrmLookup(settings(crm, stale_s=60, timeout_ms=4500), store, http)
    assert (await lookup.lookup(VIP, 2.0))[1] == "stale"
    while crm.hits[VIP] == 0:  # the refresh, held by the CRM
        await asyncio.sleep(0.01)
    before = commands.sent("get")
    assert (await lookup.lookup(VIP, 2.0))[1] == "stale"  # joins the refresh: no read, not kept
    assert commands.sent("get") == before
    crm.release()
    while (await lookup.lookup(VIP, 2.0))[1] != "hit":
        await asyncio.sleep(0.01)
    before = commands.sent()
    assert (await lookup.lookup(VIP, 2.0))[1] == "hit"
    assert commands.sent() == before
    assert crm.hits[VIP] == 1


async def test_a_kept_answer_needs_no_redis_at_all(crm, redis, http):
    store, _, server = redis
    crm.modes[VIP] = "vip"
    lookup = CrmLookup(settings(crm, near_cache_s=0.5), store, http)
    found, how = await lookup.lookup(VIP, 2.0)
    assert how == "miss"
    server.kill()
    assert await lookup.lookup(VIP, 2.0) == (found, "hit")
    await asyncio.sleep(0.55)
    # Expired, the store down: the CRM is asked again, as before.
    assert (await lookup.lookup(VIP, 2.0))[1] == "miss"
    assert crm.hits[VIP] == 2


async def test_near_cache_s_0_reads_the_store_each_time(crm, redis, http):
    store, commands, _ = redis
    crm.modes[VIP] = "vip"
    lookup = CrmLookup(settings(crm, near_cache_s=0), store, http)
    await lookup.lookup(VIP, 2.0)
    await lookup.lookup("+46700000012", 2.0)
    before = commands.sent("get")
    for _ in range(3):
        assert (await lookup.lookup(VIP, 2.0))[1] == "hit"
        assert await lookup.lookup("+46700000012", 2.0) == (None, "hit")
    assert commands.sent("get") - before == 6


async def test_a_not_found_answer_not_cached_is_not_kept_either(crm, redis, http):
    store, _, _ = redis
    lookup = CrmLookup(settings(crm, negative_ttl_s=0), store, http)
    for _ in range(2):
        assert await lookup.lookup("+46700000012", 2.0) == (None, "not_found")
    assert crm.hits["+46700000012"] == 2


async def test_failures_and_rejections_are_not_kept(crm, redis, http):
    store, _, _ = redis
    crm.modes["+46700000013"] = "500"
    crm.modes["+46700000014"] = "403"
    lookup = CrmLookup(settings(crm), store, http)
    for _ in range(2):
        assert (await lookup.lookup("+46700000013", 2.0))[1] == "failed"
        assert (await lookup.lookup("+46700000014", 2.0))[1] == "rejected"
    assert crm.hits["+46700000013"] == 2 and crm.hits["+46700000014"] == 2


async def test_the_count_kept_is_bounded_least_recently_used_first(crm, redis, http, monkeypatch):
    store, commands, _ = redis
    monkeypatch.setattr(core.lookup, "NEAR_MAX", 3)
    numbers = [f"+4670000002{i}" for i in range(5)]
    for number in numbers:
        await seed(store, number, Cached(True, time.time() + 60, [number]))
    lookup = CrmLookup(settings(crm), store, http)
    for number in numbers[:3]:
        assert (await lookup.lookup(number, 2.0))[1] == "hit"
    before = commands.sent("get")
    await lookup.find(numbers[0], 2.0)  # used again: now the most recently used
    assert commands.sent("get") == before
    await lookup.find(numbers[3], 2.0)  # read; numbers[1] goes
    await lookup.find(numbers[4], 2.0)  # read; numbers[2] goes
    assert commands.sent("get") - before == 2
    before = commands.sent("get")
    for number in (numbers[0], numbers[3], numbers[4]):
        found = await lookup.find(number, 2.0)
        assert found is not None and found.tags == frozenset({number})
    assert commands.sent("get") == before
    await lookup.find(numbers[1], 2.0)
    assert commands.sent("get") - before == 1
    assert sum(crm.hits.values()) == 0


async def test_a_lookup_with_the_same_settings_takes_over_what_was_kept(crm, redis, http):
    store, commands, _ = redis
    crm.modes[VIP] = "vip"
    first = CrmLookup(settings(crm), store, http)
    found, _ = await first.lookup(VIP, 2.0)
    second = CrmLookup(settings(crm), store, http, previous=first)
    first.close()
    before = commands.sent()
    assert await second.lookup(VIP, 2.0) == (found, "hit")
    assert commands.sent() == before
    # The closed one answers nothing from what it kept.
    assert await first.lookup(VIP, 2.0) == (None, "abandoned")
    assert await first.find(VIP, 2.0) is None
    # Other settings (here a longer ttl_s) start empty: the store is read.
    before = commands.sent("get")
    third = CrmLookup(settings(crm, ttl_s=7200), store, http, previous=second)
    assert await third.lookup(VIP, 2.0) == (found, "hit")
    assert commands.sent("get") - before == 1
    assert crm.hits[VIP] == 1


@pytest.mark.e2e
def test_a_known_caller_costs_the_gateway_no_redis_read_even_after_a_reload(start_gateway, crm, own_redis):
    reads = Commands(own_redis)
    crm.modes[VIP] = "vip"
    # near_cache_s well past what the test takes on a loaded machine; ttl_s (60) bounds it.
    text = config(crm.url, store=f'redis_url = "{own_redis.url}"', near_cache_s=3600)
    gw = start_gateway(text)
    assert call(gw, VIP).json() == {"InitialTarget": "VIP_QUEUE"}  # read, asked, written
    before = reads.sent("get")
    for _ in range(10):
        assert call(gw, VIP).json() == {"InitialTarget": "VIP_QUEUE"}
    assert reads.sent("get") == before
    counted = lookups(gw)
    assert counted["miss"] == 1 and counted["hit"] == 10
    # A reload with the same [lookup] keeps what was kept.
    gw.config.write_text(text + "\n# another version, the same lookup\n")
    gw.signal(signal.SIGHUP)
    assert wait_for(lambda: gw.logs().count('"event":"reloaded"') == 1)
    assert call(gw, VIP).json() == {"InitialTarget": "VIP_QUEUE"}
    assert reads.sent("get") == before
    assert lookups(gw)["hit"] == 11
    assert crm.hits[VIP] == 1
