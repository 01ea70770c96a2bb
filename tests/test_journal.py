"""The decision journal: one contract for the ring in process and the Redis stream, and Redis failing."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal

import msgspec
import pytest

from core.directory import CallerInfo
from core.errors import StoreError
from core.journal import (
    FactsTap,
    Filters,
    JournalConfig,
    JournalEntry,
    MemoryJournal,
    RedisJournal,
    caller_facts,
    duration_s,
    entry,
    from_page_json,
    line,
    masked,
    open_journal,
    page_json,
    since_epoch,
    tap,
)
from core.query import Decision, RoutingQuery

pytestmark = pytest.mark.anyio

T0 = 1_790_000_000.0


def sr(
    i: int, caller: str = "+358501231234", rule: str | None = "vip", at: float | None = None
) -> JournalEntry:
    q = RoutingQuery(protocol="smartrouting", caller=caller, dialed="+4612312345", service="SALES_QUEUE")
    d = Decision(rule=rule, target="Q1" if rule else None)
    return entry(
        q,
        d,
        request_id=f"sr-{i}",
        status=200 if rule else 204,
        version="v1",
        latency_ms=0.5,
        facts=CallerInfo(frozenset({"vip"}), {"agent": "a1"}),
        at=T0 + i if at is None else at,
    )


def eml(i: int, call: str = "c1") -> JournalEntry:
    q = RoutingQuery(
        protocol="eml", service="Sales", customer="ACME", call_id=call, call_time_s=35, needs_destination=True
    )
    d = Decision(rule="sales", target="5032505551", service="Sales", id=f"mq-{i}")
    return entry(q, d, request_id=f"eml-{i}", status=201, version="v2", call_time="35", at=T0 + i)


def _prefix() -> str:
    return f"jt{os.urandom(4).hex()}:"


@pytest.fixture(params=["memory", "redis"])
async def make(request):
    """Makes journals of the parametrised kind (closed at the end); for Redis, all made by one test
    share one stream."""
    made = []
    prefix = _prefix()

    def build(max_entries: int = 1000, numbers: str = "full", **kw):
        if request.param == "memory":
            j = MemoryJournal(max_entries, numbers, **kw)
        else:
            server = request.getfixturevalue("redis_server")
            j = RedisJournal.connect(
                server.url, prefix, max_entries=max_entries, numbers=numbers, flush_interval_s=0.001, **kw
            )
        j.start()
        made.append(j)
        return j

    yield build
    for j in made:
        await j.close()


async def test_entries_read_back_newest_first_whole(make):
    j = make()
    written = [sr(1), eml(2), sr(3, rule=None)]
    for e in written:
        j.record(e)
    await j.flush()
    got = await j.read()
    assert got == written[::-1]
    assert got[1].call_time == "35" and got[1].mq_id == "mq-2" and got[1].pool == "Sales"
    assert got[2].tags == ("vip",) and got[2].attributes == {"agent": "a1"}
    assert j.dropped == 0


async def test_filters(make):
    j = make()
    for i in range(10):
        j.record(sr(i, caller="+358501231234" if i % 2 else "+358407654321", rule="vip" if i < 6 else None))
    for i in range(10, 13):
        j.record(eml(i, call="call-A" if i == 11 else "call-B"))
    await j.flush()
    assert [e.request_id for e in await j.read(last=2)] == ["eml-12", "eml-11"]
    assert [e.request_id for e in await j.read(call="call-A")] == ["eml-11"]
    # Any written form of the number finds it.
    odd = await j.read(caller="+358 50 123-1234")
    assert [e.request_id for e in odd] == ["sr-9", "sr-7", "sr-5", "sr-3", "sr-1"]
    assert [e.request_id for e in await j.read(caller="00358501231234", last=1)] == ["sr-9"]
    assert [e.request_id for e in await j.read(rule="vip", last=3)] == ["sr-5", "sr-4", "sr-3"]
    assert [e.request_id for e in await j.read(rule="")] == ["sr-9", "sr-8", "sr-7", "sr-6"]
    assert [e.request_id for e in await j.read(since=T0 + 8.5, rule="")] == ["sr-9"]
    assert await j.read(rule="nope") == []
    both = await j.read(caller="+358407654321", rule="vip")
    assert [e.request_id for e in both] == ["sr-4", "sr-2", "sr-0"]


async def test_masked_numbers(make):
    j = make(numbers="masked")
    j.record(sr(1))
    await j.flush()
    (e,) = await j.read()
    assert e.masked and e.caller == "**********234" and e.dialed == "********345"
    assert "+358501231234" not in msgspec.json.encode(e).decode()
    # Found by the number as far as it is kept.
    assert await j.read(caller="+358 50 123 1234") == [e]
    assert await j.read(caller="+358501231235") == []


async def test_bounded(make):
    j = make(max_entries=200)
    for i in range(1500):
        j.record(sr(i))
    await j.flush()
    got = await j.read(last=5000)
    assert got[0].request_id == "sr-1499"
    if isinstance(j, MemoryJournal):
        assert len(got) == 200 == len(j)
    else:
        # Approximate: Redis trims whole nodes (100 entries each by default).
        assert 200 <= len(got) <= 200 + 100 + RedisJournal.BATCH
        assert len(got) == await j.length()
    # Newest first, no gaps.
    assert [e.request_id for e in got] == [f"sr-{i}" for i in range(1499, 1499 - len(got), -1)]


async def test_record_is_synchronous_and_an_odd_entry_costs_nothing_else(make):
    j = make()
    assert not inspect.iscoroutinefunction(j.record)
    # A client may send an integer wider than 64 bits in extradata: kept as its digits where it must be.
    huge = msgspec.structs.replace(sr(0), extradata={"DYN_X": 10**30, "IsInternalCaller": True})
    j.record(huge)
    j.record(sr(1))
    await j.flush()
    got = await j.read()
    assert [e.request_id for e in got] == ["sr-1", "sr-0"]
    assert got[1].extradata["DYN_X"] in (10**30, str(10**30)) and got[1].extradata["IsInternalCaller"] is True
    assert j.dropped == 0


async def test_many_pages(make):
    j = make(max_entries=10_000)
    for i in range(2500):
        j.record(sr(i, rule="rare" if i == 3 else "vip"))
    await j.flush()
    # Past the first pages of the stream, down to an old entry.
    assert [e.request_id for e in await j.read(rule="rare")] == ["sr-3"]
    assert len(await j.read(last=2500)) == 2500


async def test_two_writers_one_journal(redis_server):
    prefix = _prefix()
    a = RedisJournal.connect(redis_server.url, prefix, flush_interval_s=0.001)
    b = RedisJournal.connect(redis_server.url, prefix, flush_interval_s=0.001)
    a.start()
    b.start()
    for i in range(50):
        (a if i % 2 else b).record(sr(i))
    await asyncio.gather(a.flush(), b.flush())
    for j in (a, b):
        got = await j.read(last=100)
        assert sorted(e.request_id for e in got) == sorted(f"sr-{i}" for i in range(50))
    await a.close()
    await b.close()


async def test_close_writes_what_is_queued(redis_server):
    prefix = _prefix()
    j = RedisJournal.connect(redis_server.url, prefix, flush_interval_s=60)
    j.start()
    for i in range(20):
        j.record(sr(i))
    await asyncio.sleep(0.05)  # the writer is waiting for more entries to come
    await j.close()
    reader = RedisJournal.connect(redis_server.url, prefix)
    assert len(await reader.read()) == 20
    assert j.dropped == 0
    await reader.close()


async def test_a_full_queue_drops_and_counts(redis_server):
    told = []
    j = RedisJournal.connect(
        redis_server.url, _prefix(), max_pending=10, on_drop=lambda reason, n: told.append((reason, n))
    )
    # Not started: nothing is written, the queue fills.
    for i in range(15):
        j.record(sr(i))
    assert j.dropped == 5 and told == [("full", 1)] * 5
    j.start()
    await j.flush()
    assert j.written == 10
    await j.close()


async def test_redis_killed_mid_stream(own_redis):
    told = []
    j = RedisJournal.connect(
        own_redis.url,
        "k:",
        flush_interval_s=0.001,
        timeout_s=0.5,
        retry_after_s=0.2,
        on_drop=lambda reason, n: told.append((reason, n)),
    )
    j.start()
    for i in range(100):
        j.record(sr(i))
    await j.flush()
    assert j.written == 100
    own_redis.kill()
    for i in range(100, 400):
        j.record(sr(i))  # never raises, never waits: it is not even a coroutine
    await j.flush()
    assert j.dropped == 300 and j.written == 100
    assert {reason for reason, _ in told} == {"store"} and sum(n for _, n in told) == 300
    with pytest.raises(StoreError):
        await j.read()
    # Redis back: once retry_after_s is over, batches are written again.
    own_redis.start()
    n = 400
    while j.written == 100:
        j.record(sr(n))
        n += 1
        await j.flush()
        await asyncio.sleep(0.05)
    got = await j.read(last=1000)
    assert got[0].request_id == f"sr-{n - 1}"
    assert j.dropped + j.written == n
    await j.close()


async def test_hung_redis_drops_after_the_timeout(own_redis):
    j = RedisJournal.connect(own_redis.url, "h:", flush_interval_s=0.001, timeout_s=0.2, retry_after_s=0.1)
    j.start()
    j.record(sr(0))
    await j.flush()
    own_redis.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(1, 51):
            j.record(sr(i))
        await j.flush()  # the batch waited timeout_s at most, then was dropped
        assert j.dropped == 50 and j.written == 1
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    await j.close()


async def test_cluster(cluster):
    j = RedisJournal.connect(cluster.url, _prefix(), cluster=True, flush_interval_s=0.001)
    j.start()
    for i in range(30):
        j.record(sr(i))
    await j.flush()
    assert j.written == 30
    got = await j.read(last=10)
    assert [e.request_id for e in got] == [f"sr-{i}" for i in range(29, 19, -1)]
    await j.close()


async def test_sentinel(sentinel):
    j = RedisJournal.connect(
        "", _prefix(), sentinels=[f"127.0.0.1:{sentinel.port}"], master="mymaster", flush_interval_s=0.001
    )
    j.start()
    j.record(eml(1))
    await j.flush()
    assert [e.request_id for e in await j.read()] == ["eml-1"]
    await j.close()


def test_open_journal_follows_the_config(redis_server):
    assert open_journal(JournalConfig(enabled=False)) is None
    mem = open_journal(JournalConfig(max_entries=500, numbers="masked"))
    assert isinstance(mem, MemoryJournal) and mem.max_entries == 500
    red = open_journal(JournalConfig(), redis_url=redis_server.url, prefix="p:")
    assert isinstance(red, RedisJournal) and red.key == "p:journal" and red.max_entries == 100_000
    asyncio.run(red.close())


def test_masking_and_json_page():
    e = sr(1)
    m = masked(e)
    assert (m.caller, m.dialed, m.masked) == ("**********234", "********345", True)
    assert masked(m) is m
    assert from_page_json(page_json([e, m])) == [e, m]
    body = msgspec.json.decode(page_json([eml(3)]))
    # Defaults are left out; the rest keeps its names.
    assert body == {
        "entries": [
            {
                "time": T0 + 3,
                "protocol": "eml",
                "request_id": "eml-3",
                "service": "Sales",
                "customer": "ACME",
                "call_id": "c1",
                "call_time": "35",
                "call_time_s": 35,
                "needs_destination": True,
                "rule": "sales",
                "target": "5032505551",
                "pool": "Sales",
                "mq_id": "mq-3",
                "status": 201,
                "version": "v2",
            }
        ]
    }
    q = e.query()
    assert (q.caller, q.service, q.protocol) == ("+358501231234", "SALES_QUEUE", "smartrouting")


def test_durations_and_filters_from_parameters():
    assert duration_s("90") == 90 and duration_s("15m") == 900 and duration_s("2h") == 7200
    assert duration_s("1d") == 86400 and duration_s("1.5h") == 5400
    with pytest.raises(ValueError):
        duration_s("soon")
    assert since_epoch("10m", now=1000.0) == 400.0
    assert since_epoch("2026-01-01T00:00:00Z") == 1767225600.0
    with pytest.raises(ValueError):
        since_epoch("2026-01-01T00:00:00")
    f = Filters.parse({"last": "5", "call": "c", "caller": "+358 1", "rule": "", "since": "1m"}, now=100.0)
    assert f == Filters(last=5, call="c", caller="+358 1", rule="", since=40.0)
    assert Filters.parse({}) == Filters()
    for bad in ({"last": "0"}, {"last": "x"}, {"last": "1000001"}, {"since": "later"}):
        with pytest.raises(ValueError):
            Filters.parse(bad)


async def test_the_tap_notes_each_tasks_own_lookup_answer():
    class Crm:
        async def find(self, number, budget_s):
            await asyncio.sleep(0.01 if number.endswith("1") else 0)
            return CallerInfo(frozenset({number}))

    lookup = FactsTap(Crm())

    async def request(number):
        slot = tap()
        await lookup.find(number, 1.0)
        return slot

    a, b = await asyncio.gather(request("+3581"), request("+3582"))
    assert a == [CallerInfo(frozenset({"+3581"}))] and b == [CallerInfo(frozenset({"+3582"}))]
    # Without a tap nothing is noted, and nothing breaks.
    assert await asyncio.create_task(lookup.find("+3583", 1.0)) == CallerInfo(frozenset({"+3583"}))
    directory = {"+3581": CallerInfo(frozenset({"vip"}), {"agent": "x", "lang": "fi"})}
    q = RoutingQuery(protocol="smartrouting", caller="+3581")
    merged = caller_facts(q, directory, CallerInfo(frozenset({"gold"}), {"agent": "y"}))
    assert merged == CallerInfo(frozenset({"vip", "gold"}), {"agent": "y", "lang": "fi"})
    assert caller_facts(q, directory, None) == directory["+3581"]
    assert caller_facts(RoutingQuery(protocol="eml"), directory, None) == CallerInfo()


def test_one_line_for_people():
    text = line(eml(3))
    assert text == (
        "2026-09-21T14:13:23.000Z eml request=eml-3 call=c1 service=Sales customer=ACME callTime=35 -> "
        "rule=sales number=5032505551 pool=Sales mqID=mq-3 status=201 version=v2"
    )
    text = line(sr(1, rule=None))
    assert "caller=+358501231234 dialed=+4612312345" in text and "tags=vip" in text
    assert "rule=(none) no destination status=204" in text and text.endswith("0.5ms")
