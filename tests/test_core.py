"""The core with a fixed clock: schedules, rules, templates, pools, idempotent allocation."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from adapters.eml import call_time
from core.decide import Context, decide, fallback
from core.numbers import mask, normalise
from core.query import RoutingQuery
from core.schedules import Schedule, compile_schedule
from core.store import DryRunStore, MemoryStore
from gateway.config import load

pytestmark = pytest.mark.anyio

HEL = dt.timezone(dt.timedelta(hours=2))


def hours(**kw):
    problems: list[str] = []
    h = compile_schedule(Schedule(**kw), "s", problems)
    assert not problems
    return h


def test_schedule_weekly_ranges_and_closed_dates():
    h = hours(timezone="Europe/Helsinki", mon=["08:00-12:00", "13:00-16:00"], closed_dates=["2026-11-30"])
    monday = dt.datetime(2026, 11, 23, tzinfo=HEL)
    assert not h.is_open(monday.replace(hour=7, minute=59))
    assert h.is_open(monday.replace(hour=8))
    assert not h.is_open(monday.replace(hour=12, minute=30))
    assert h.is_open(monday.replace(hour=15, minute=59))
    assert not h.is_open(monday.replace(hour=16))
    assert not h.is_open(monday + dt.timedelta(days=1, hours=9))  # Tuesday not given: closed
    assert not h.is_open(dt.datetime(2026, 11, 30, 9, tzinfo=HEL))  # closed date


def test_schedule_follows_daylight_saving():
    h = hours(timezone="Europe/Helsinki", sun=["09:00-10:00"])
    # 09:30 local is 07:30 UTC in winter (UTC+2) and 06:30 UTC in summer (UTC+3).
    assert h.is_open(dt.datetime(2026, 1, 4, 7, 30, tzinfo=dt.UTC))
    assert not h.is_open(dt.datetime(2026, 1, 4, 6, 30, tzinfo=dt.UTC))
    assert h.is_open(dt.datetime(2026, 7, 5, 6, 30, tzinfo=dt.UTC))
    assert not h.is_open(dt.datetime(2026, 7, 5, 7, 30, tzinfo=dt.UTC))


def test_schedule_until_midnight():
    h = hours(timezone="UTC", fri=["22:00-24:00"])
    assert h.is_open(dt.datetime(2026, 11, 27, 23, 59, tzinfo=dt.UTC))
    assert not h.is_open(dt.datetime(2026, 11, 28, 0, 0, tzinfo=dt.UTC))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("35", 35),
        ("0", 0),
        ("02:03", 123),
        ("01:02:03", 3723),
        (" 7 ", 7),
        ("100:00:00", 360000),
        ("1:60", None),
        ("abc", None),
        ("3.5", None),
        ("-4", None),
        ("", None),
        ("1:2:3:4", None),
        ("٣", None),
    ],
)
def test_call_time(text, seconds):
    assert call_time(text) == seconds


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("+358 50 123-1234", "+358501231234"),
        ("00358501231234", "+358501231234"),
        ("(09) 123 456", "09123456"),
        ("5032505555", "5032505555"),
        ("", ""),
    ],
)
def test_normalise(raw, norm):
    assert normalise(raw) == norm


def test_mask():
    assert mask("+358501231234") == "**********234"
    assert mask("12") == "**" and mask("") == ""


RULES = """
[services.Pool]
numbers = ["a", "b", "c"]
strategy = "round_robin"
[services.One]
numbers = ["only"]
[callers."+3581"]
tags = ["vip"]
agent = "ag1"
[callers."+3582"]
nope = "only this caller has it"
[schedules.office]
timezone = "Europe/Helsinki"
mon = ["08:00-17:00"]
[[rules]]
name = "vip-open"
when = { tag = "vip", open = "office" }
then = { target = "Q-{caller.agent}", preferred_agents = ["{caller.agent}", "{caller.nope}", "fixed"], tts = "{caller.nope}" }
[[rules]]
name = "vip-closed"
when = { tag = "vip", closed = "office" }
then = { service = "Pool" }
[[rules]]
name = "pool"
when = { service = "P" }
then = { service = "Pool" }
"""


@pytest.fixture
def rules(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(RULES)
    return load(path).rules


MONDAY_10 = dt.datetime(2026, 11, 23, 10, tzinfo=HEL)
SUNDAY_10 = dt.datetime(2026, 11, 22, 10, tzinfo=HEL)


def ctx(rules, at=MONDAY_10, store=None):
    return Context(rules=rules, store=store or MemoryStore(), clock=lambda: at, flights={})


async def test_templates_and_schedule_with_fixed_clock(rules):
    q = RoutingQuery(protocol="smartrouting", caller="+3581")
    d = await decide(q, ctx(rules))
    assert d.rule == "vip-open"
    assert d.target == "Q-ag1"
    assert d.preferred_agents == ("ag1", "fixed")
    assert d.tts is None  # unknown attribute: left out
    closed = await decide(q, ctx(rules, SUNDAY_10))
    assert closed.rule == "vip-closed" and closed.target == "a" and closed.service == "Pool"


async def test_round_robin_and_dry_run(rules):
    store = MemoryStore()
    c = ctx(rules, store=store)
    q = RoutingQuery(protocol="eml", service="P")
    got = [(await decide(q, c)).target for _ in range(4)]
    assert got == ["a", "b", "c", "a"]
    dry = ctx(rules, store=DryRunStore(store))
    assert [(await decide(q, dry)).target for _ in range(3)] == ["b", "b", "b"]
    assert (await decide(q, c)).target == "b"


async def test_needs_destination_falls_back_to_the_classification(rules):
    q = RoutingQuery(protocol="eml", service="One", needs_destination=True)
    d = await decide(q, ctx(rules))
    assert d.rule is None and d.target == "only" and d.id
    assert not (
        await decide(RoutingQuery(protocol="eml", service="Nope", needs_destination=True), ctx(rules))
    ).target


async def test_concurrent_retries_allocate_once(rules):
    store = MemoryStore()
    c = ctx(rules, store=store)
    q = RoutingQuery(protocol="eml", service="P", needs_destination=True, idempotency_key="call-1\x1fP")
    results = await asyncio.gather(*(decide(q, c, remember_s=60) for _ in range(50)))
    assert len({(r.target, r.id) for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert await store.get("rr:Pool") == b"1"


async def test_dry_run_reads_through_and_writes_nothing():
    inner = MemoryStore()
    await inner.set("k", b"inner", 60)
    dry = DryRunStore(inner)
    assert await dry.get("k") == b"inner"
    await dry.set("k", b"", 60)  # an empty value is a value: it hides the inner one
    assert await dry.get("k") == b""
    assert await inner.get("k") == b"inner"
    assert await dry.add("k", b"x", 60) is False and await dry.add("new", b"x", 60) is True
    assert await inner.get("new") is None


def test_fallback_touches_no_store(rules):
    q = RoutingQuery(protocol="eml", service="One", needs_destination=True)
    d = fallback(q, rules, "deadline")
    assert d.target == "only" and d.fallback == "deadline"
    assert not fallback(RoutingQuery(protocol="smartrouting", service="One"), rules, "deadline").routes


def test_shipped_config_routes_the_seed_vip():
    loaded = load(Path(__file__).resolve().parent.parent / "config.toml")
    q = RoutingQuery(
        protocol="smartrouting", caller="+358501231234", dialed="+4612312345", service="SALES_QUEUE"
    )
    d = asyncio.run(decide(q, ctx(loaded.rules, MONDAY_10)))
    assert d.rule == "vip-to-own-agent" and d.required_agent == "agent1@customer.com"


async def test_priority_zero_is_answered(tmp_path):
    # 0 is in range and means something: alone or beside a target, it reaches the reply.
    from adapters import smartrouting

    path = tmp_path / "p.toml"
    path.write_text(
        '[[rules]]\nname = "calm"\nwhen = { service = "A" }\nthen = { priority = 0 }\n'
        '[[rules]]\nname = "calm-q"\nwhen = { service = "B" }\nthen = { target = "Q", extra_priority = 0 }\n'
    )
    base = load(path).rules
    alone = await decide(RoutingQuery(protocol="smartrouting", service="A"), ctx(base))
    assert smartrouting.render(alone, RoutingQuery(protocol="smartrouting")).body == b'{"Priority":0}'
    beside = await decide(RoutingQuery(protocol="smartrouting", service="B"), ctx(base))
    assert smartrouting.render(beside, RoutingQuery(protocol="smartrouting")).body == (
        b'{"InitialTarget":"Q","ExtraPriority":0}'
    )


async def test_an_id_is_made_only_where_the_protocol_shows_one(rules):
    # EML answers with an mqID; SmartRouting shows none, so its decisions carry none.
    sr = await decide(RoutingQuery(protocol="smartrouting", service="P"), ctx(rules))
    assert sr.target == "a" and sr.id is None
    eml = await decide(RoutingQuery(protocol="eml", service="P", needs_destination=True), ctx(rules))
    assert eml.target == "a" and eml.id


def test_ids_are_uuid7_in_time_order():
    import time
    import uuid

    from core.decide import uuid7

    before = time.time_ns() // 1_000_000
    ids = [uuid7() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    stamps = []
    for text in ids:
        u = uuid.UUID(text)
        assert str(u) == text and u.version == 7 and u.variant == uuid.RFC_4122
        assert before <= u.int >> 80 <= after
        stamps.append(u.int >> 64)  # the time in ms, then its fraction to a quarter of a microsecond
    assert stamps == sorted(stamps)


async def test_a_retry_gets_the_first_answer_whatever_the_config_says_now(rules, tmp_path):
    # The call was allocated; a reload then removes its classification's pool, or disconnects it. A retry
    # inside the window still gets the first answer; only a new call hears of the change.
    store = MemoryStore()
    q = RoutingQuery(protocol="eml", service="P", needs_destination=True, idempotency_key="call-9\x1fP")
    first = await decide(q, ctx(rules, store=store), remember_s=60)
    assert first.target == "a" and not first.replayed
    path = tmp_path / "after.toml"
    path.write_text(
        '[services.Pool]\nnumbers = ["z"]\n'
        '[[rules]]\nname = "gone"\nwhen = { service = "P" }\nthen = { disconnect = true }\n'
    )
    after = load(path).rules
    again = await decide(q, ctx(after, store=store), remember_s=60)
    assert (again.target, again.id, again.replayed) == ("a", first.id, True)
    other = RoutingQuery(protocol="eml", service="P", needs_destination=True, idempotency_key="call-10\x1fP")
    new = await decide(other, ctx(after, store=store), remember_s=60)
    assert new.disconnect and not new.target and not new.replayed
    assert await store.get("rr:Pool") == b"1"
