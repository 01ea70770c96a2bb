"""Replay: journaled calls decided again under a candidate config, and what would change."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from core.decide import Context, decide
from core.directory import CallerInfo
from core.journal import JournalEntry, caller_facts, entry, masked
from core.query import RoutingQuery
from core.replay import replay
from core.store import MemoryStore
from gateway.config import load

pytestmark = pytest.mark.anyio

HEL = dt.timezone(dt.timedelta(hours=2))
MONDAY_10 = dt.datetime(2026, 11, 23, 10, tzinfo=HEL)
SUNDAY_10 = dt.datetime(2026, 11, 22, 10, tzinfo=HEL)

BASE = """
[services.Sales]
numbers = ["5550", "5551", "5552"]
strategy = "round_robin"
[services.Support]
numbers = ["5560"]
[services.Tier2]
numbers = ["5570", "5571"]
strategy = "random"
[services.VIP_QUEUE]
numbers = ["vip-queue"]
[callers."+3581"]
tags = ["vip"]
agent = "a1"
[schedules.office]
timezone = "Europe/Helsinki"
mon = ["08:00-17:00"]
[[rules]]
name = "blocked"
when = { tag = "blocked" }
then = { disconnect = true }
[[rules]]
name = "vip-open"
when = { protocol = "smartrouting", tag = "vip", open = "office" }
then = { service = "VIP_QUEUE", required_agent = "{caller.agent}" }
[[rules]]
name = "sales-closed"
when = { protocol = "eml", service = "Sales", closed = "office" }
then = { target = "5599" }
[[rules]]
name = "long-support"
when = { protocol = "eml", service = "Support", min_call_time_s = 600 }
then = { service = "Tier2" }
[[rules]]
name = "finnish-mobiles"
when = { protocol = "smartrouting", caller_prefix = "+35840" }
then = { extra_priority = 50 }
"""


def config(tmp_path, text: str, name: str = "c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load(path).rules


@pytest.fixture
def base(tmp_path):
    return config(tmp_path, BASE, "base.toml")


class Crm:
    def __init__(self, answers: dict[str, CallerInfo]) -> None:
        self.answers = answers

    async def find(self, number: str, budget_s: float) -> CallerInfo | None:
        return self.answers.get(number)


class Live:
    """Decides calls as the gateway does, one store for all, and journals them."""

    def __init__(self, rules, crm: dict[str, CallerInfo] | None = None) -> None:
        self.rules = rules
        self.store = MemoryStore()
        self.crm = crm or {}
        self.n = 0

    async def __call__(self, query: RoutingQuery, at: dt.datetime) -> JournalEntry:
        self.n += 1
        ctx = Context(rules=self.rules, store=self.store, lookup=Crm(self.crm), clock=lambda: at, flights={})
        d = await decide(query, ctx)
        looked_up = self.crm.get(query.caller) if query.caller else None
        return entry(
            query,
            d,
            request_id=f"r{self.n}",
            status=200,
            version="v1",
            facts=caller_facts(query, self.rules.callers, looked_up),
            looked_up=looked_up,
            at=at.timestamp(),
        )


def sales(call: str) -> RoutingQuery:
    return RoutingQuery(protocol="eml", service="Sales", call_id=call, needs_destination=True)


def support(call: str, seconds: int) -> RoutingQuery:
    return RoutingQuery(
        protocol="eml", service="Support", call_id=call, call_time_s=seconds, needs_destination=True
    )


def sr(caller: str, service: str = "SALES_QUEUE") -> RoutingQuery:
    return RoutingQuery(protocol="smartrouting", caller=caller, service=service)


async def journal(rules, crm=None) -> list[JournalEntry]:
    live = Live(rules, crm)
    out = []
    for i in range(6):
        out.append(await live(sales(f"s{i}"), MONDAY_10))  # round-robin: 5550, 5551, 5552, ...
    for i in range(4):
        out.append(await live(sales(f"c{i}"), SUNDAY_10))  # closed: sales-closed
    out.append(await live(support("t1", 900), MONDAY_10))
    out.append(await live(support("t2", 30), MONDAY_10))
    out.append(await live(sr("+3581"), MONDAY_10))  # vip, open
    out.append(await live(sr("+3581"), SUNDAY_10))  # vip, closed: no rule
    out.append(await live(sr("+358401234567"), MONDAY_10))
    out.append(await live(sr("+3582"), MONDAY_10))  # CRM says vip
    return out


async def test_the_same_config_changes_nothing(base):
    entries = await journal(base, {"+3582": CallerInfo(frozenset({"vip"}), {"agent": "crm-agent"})})
    assert {e.target for e in entries[:6]} == {"5550", "5551", "5552"}  # a rotation...
    report = await replay(entries, base)
    assert (report.calls, report.changed, report.groups) == (16, 0, [])  # ...is no change
    # The report is exactly SPEC's shape when there is nothing to warn of.
    assert msgspec.json.decode(report.json()) == {"calls": 16, "changed": 0, "groups": []}


async def test_a_changed_rule_reports_exactly_its_calls(base, tmp_path):
    entries = await journal(base)
    candidate = config(tmp_path, BASE.replace('then = { target = "5599" }', 'then = { service = "Support" }'))
    report = await replay(entries, candidate, examples=3)
    assert report.calls == 16 and report.changed == 4
    assert report.text().splitlines() == [
        "16 calls replayed, 4 would be answered differently",
        "        4  rule sales-closed, target 5599  ->  rule sales-closed, pool Support",
        "           e.g. r7, r8, r9",
    ]
    body = msgspec.json.decode(report.json())
    assert body == {
        "calls": 16,
        "changed": 4,
        "groups": [
            {
                "before": {"rule": "sales-closed", "target": "5599"},
                "after": {"rule": "sales-closed", "service": "Support"},
                "count": 4,
                "examples": ["r7", "r8", "r9"],
            }
        ],
    }


async def test_groups_by_before_and_after(base, tmp_path):
    entries = await journal(base)
    # Support's long calls now stay in Support; the VIP rule is gone (open hours: no rule, default).
    text = BASE.replace("min_call_time_s = 600", "min_call_time_s = 6000")
    text = text.replace(
        'when = { protocol = "smartrouting", tag = "vip", open = "office" }', "when = { tag = 'x' }"
    )
    report = await replay(entries, config(tmp_path, text))
    got = {(str(g.before), str(g.after)): (g.count, g.examples) for g in report.groups}
    assert got == {
        (str({"rule": "long-support", "service": "Tier2"}), str({"rule": None, "service": "Support"})): (
            1,
            ["r11"],
        ),
        (str({"rule": "vip-open", "service": "VIP_QUEUE"}), str({"rule": None, "target": None})): (
            1,
            ["r13"],
        ),
    }
    assert report.changed == 2


async def test_each_call_is_decided_at_its_recorded_time(base, tmp_path):
    entries = await journal(base)
    # Open on Sundays too: only the Sunday calls change.
    candidate = config(
        tmp_path, BASE.replace('mon = ["08:00-17:00"]', 'mon = ["08:00-17:00"]\nsun = ["08:00-17:00"]')
    )
    report = await replay(entries, candidate)
    pairs = {(g.before["rule"], g.after["rule"]): g.count for g in report.groups}
    assert pairs == {("sales-closed", None): 4, (None, "vip-open"): 1}


async def test_recorded_caller_facts_are_used_not_the_crm_nor_the_candidates_directory(base, tmp_path):
    crm = {"+3582": CallerInfo(frozenset({"vip"}), {"agent": "crm-agent"})}
    entries = await journal(base, crm)
    e = entries[-1]
    assert e.tags == ("vip",) and e.lookup is not None and e.lookup.tags == ("vip",)
    # The candidate's directory blocks +3581 and forgets it was a VIP; the CRM is never asked.
    text = BASE.replace('[callers."+3581"]\ntags = ["vip"]', '[callers."+3581"]\ntags = ["blocked"]')
    candidate = config(tmp_path, text)
    assert (await replay(entries, candidate)).changed == 0
    # Asked to, the candidate's directory is used, with the CRM's recorded answer over it.
    report = await replay(entries, candidate, directory="candidate")
    pairs = {(g.before["rule"], g.after["rule"]): g.count for g in report.groups}
    assert pairs == {("vip-open", "blocked"): 1, (None, "blocked"): 1}
    # +3582's VIP tag came from the CRM: still there.
    assert report.changed == 2


async def test_masked_calls_are_counted_and_warned_of(base):
    entries = [masked(e) for e in await journal(base)]
    report = await replay(entries, base)
    assert report.masked == 16 and report.calls == 16
    assert "masked" in report.warnings[0]
    # A rule on the caller's number cannot match a masked number: shown as a change.
    assert [(g.before["rule"], g.after["rule"]) for g in report.groups] == [("finnish-mobiles", None)]
    body = msgspec.json.decode(report.json())
    assert body["masked"] == 16 and body["warnings"]


async def test_retries_and_fallbacks_are_not_compared(base):
    entries = await journal(base)
    again = msgspec.structs.replace(entries[0], replayed=True, request_id="retry")
    late = msgspec.structs.replace(entries[1], fallback="deadline", rule=None, request_id="late")
    report = await replay([*entries, again, late], base)
    assert (report.calls, report.changed, report.skipped) == (16, 0, 2)
    assert any("not compared" in w for w in report.warnings)


async def test_twenty_thousand_calls(base, tmp_path):
    one = await journal(base)
    entries = [msgspec.structs.replace(e, request_id=f"{i}-{e.request_id}") for i in range(1250) for e in one]
    assert len(entries) == 20_000
    candidate = config(tmp_path, BASE.replace('then = { target = "5599" }', 'then = { target = "5598" }'))
    report = await replay(entries, candidate)
    assert report.calls == 20_000 and report.changed == 5000
    (g,) = report.groups
    assert g.before == {"rule": "sales-closed", "target": "5599"}
    assert g.after == {"rule": "sales-closed", "target": "5598"}
    assert g.count == 5000 and g.examples == ["0-r7", "0-r8", "0-r9", "0-r10", "1-r7"]
