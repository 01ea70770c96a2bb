"""Pool strategies (first, random, round-robin, weighted), sticky pools, ``when.percent``, the seams they
plug into (``then`` actions, strategies by name), and the trace a decision hands to whoever asks."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import textwrap

import msgspec
import pytest

from core.decide import Context, Trace, decide, fallback
from core.errors import ConfigError, StoreError
from core.query import RoutingQuery
from core.rules import ACTIONS, CONDITIONS, Then, When, bucket
from core.services import STRATEGIES, Service, smooth
from core.store import DryRunStore, MemoryStore
from gateway.config import load

pytestmark = pytest.mark.anyio

MONDAY_10 = dt.datetime(2026, 11, 23, 10, tzinfo=dt.UTC)


def rules_of(tmp_path, text: str):
    path = tmp_path / "rules.toml"
    path.write_text(textwrap.dedent(text))
    return load(path).rules


def problems_of(tmp_path, text: str) -> list[str]:
    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as err:
        load(path)
    return err.value.problems


def ctx(rules, store=None) -> Context:
    return Context(rules=rules, store=store or MemoryStore(), clock=lambda: MONDAY_10, flights={})


def sr(caller: str = "", service: str = "Q") -> RoutingQuery:
    return RoutingQuery(protocol="smartrouting", caller=caller, service=service)


def eml(call_id: str, service: str = "Sales", customer: str = "") -> RoutingQuery:
    return RoutingQuery(
        protocol="eml",
        service=service,
        customer=customer,
        call_id=call_id,
        needs_destination=True,
        idempotency_key=f"{call_id}\x1f{service}",
    )


# --- the seams ----------------------------------------------------------------------------------


def test_every_when_and_then_key_is_one_table_entry():
    assert list(CONDITIONS) == list(When.__struct_fields__)
    assert set(ACTIONS) == set(Then.__struct_fields__)


def test_strategies_are_registered_by_name_and_the_config_accepts_them():
    assert set(STRATEGIES) == {"first", "random", "round_robin", "weighted"}
    for name in STRATEGIES:
        msgspec.convert({"numbers": ["a"], "strategy": name}, Service)


def test_compiled_then_reads_by_key(tmp_path):
    rules = rules_of(
        tmp_path,
        """
        [[rules]]
        name = "r"
        then = { target = "T", priority = 0 }
        """,
    )
    then = rules.rules[0].then
    assert then.priority == 0 and then.get("priority") == 0
    assert then.tts is None and [k for k, _, _ in then.steps] == ["target", "priority"]


# --- weighted -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "cycle"),
    [
        ([3, 1, 1], (0, 1, 0, 2, 0)),  # a b a c a
        ([6, 2, 2], (0, 1, 0, 2, 0)),  # the same rotation: divided by their common divisor
        ([1, 1, 1], (0, 1, 2)),
        ([5, 1], (0, 0, 0, 1, 0, 0)),
        ([2, 3], (1, 0, 1, 0, 1)),
    ],
)
def test_smooth_weighted_cycle(weights, cycle):
    assert smooth(weights) == cycle


def test_smooth_cycle_spreads_every_number():
    cycle = smooth([5, 3, 2])
    assert cycle == (0, 1, 2, 0, 0, 1, 0, 2, 1, 0)
    assert collections.Counter(cycle) == {0: 5, 1: 3, 2: 2}
    # Half the weight: never more than two in a row, the next cycle's start included.
    twice = cycle + cycle
    assert not any(twice[i] == twice[i + 1] == twice[i + 2] for i in range(len(twice) - 2))


WEIGHTED = """
[services.Sales]
numbers = ["a", "b", "c"]
strategy = "weighted"
weights = [3, 1, 1]
[services.Split]
numbers = ["x", "y", "z"]
strategy = "weighted"
weights = [50, 30, 20]
[[rules]]
name = "sales"
when = { service = "Q" }
then = { service = "Sales" }
"""


async def test_weighted_rotation_on_both_protocols(tmp_path):
    rules = rules_of(tmp_path, WEIGHTED)
    c = ctx(rules)
    assert [(await decide(sr(), c)).target for _ in range(10)] == list("abacaabaca")
    got = [(await decide(eml(f"c{i}"), c, remember_s=60)).target for i in range(5)]
    assert got == list("abaca")  # its own counter: each pool has one


async def test_weighted_split_is_exact_over_every_whole_cycle(tmp_path):
    rules = rules_of(tmp_path, WEIGHTED)
    c = ctx(rules)
    got = [(await decide(eml(f"c{i}", "Split"), c, remember_s=60)).target for i in range(30)]
    for cycle in range(3):
        assert collections.Counter(got[cycle * 10 : cycle * 10 + 10]) == {"x": 5, "y": 3, "z": 2}


def test_weighted_fallback_keeps_the_proportions(tmp_path):
    rules = rules_of(tmp_path, WEIGHTED)
    q = eml("c1")
    counts = collections.Counter(fallback(q, rules, "deadline").target for _ in range(5000))
    assert set(counts) == {"a", "b", "c"}
    assert 2600 < counts["a"] < 3400 and 700 < counts["b"] < 1300  # 3/5 and 1/5, give or take


def test_pool_problems_are_listed_with_their_key_paths(tmp_path):
    problems = problems_of(
        tmp_path,
        """
        [services.A]
        numbers = ["1", "2", "3"]
        strategy = "weighted"
        weights = [3, 1]
        [services.B]
        numbers = ["1", "2"]
        strategy = "weighted"
        [services.C]
        numbers = ["1", "2"]
        strategy = "round_robin"
        weights = [1, 2]
        [services.D]
        numbers = ["1", "2"]
        strategy = "weighted"
        weights = [0, 1]
        [services.E]
        numbers = ["1", "2"]
        sticky = "caller"
        [services.F]
        numbers = ["1"]
        sticky_s = 60
        [services.G]
        numbers = ["1"]
        sticky = "customer"
        sticky_s = 0
        [services.H]
        numbers = ["1", "2"]
        strategy = "weighted"
        weights = [999, 1000]
        [services.I]
        numbers = ["1"]
        sticky = "agent"
        sticky_s = 5
        """,
    )
    for expected in [
        "services.A.weights: 2 weights for 3 numbers",
        'services.B.weights: strategy = "weighted" needs one weight per number',
        'services.C.weights: only with strategy = "weighted"',
        "services.D.weights[0]: 0 is not a whole number from 1 to 1000",
        "services.E.sticky_s: required with sticky",
        'services.F.sticky_s: only with sticky = "caller" or "customer"',
        "services.G.sticky_s: 0 is not a whole number of seconds",
        "services.H.weights: one cycle takes 1999 turns",
        "services.I.sticky: 'agent' is not one of 'caller', 'customer'",
    ]:
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_percent_out_of_range_is_refused(tmp_path):
    problems = problems_of(
        tmp_path,
        """
        [[rules]]
        name = "all"
        when = { percent = 100 }
        then = { target = "T" }
        [[rules]]
        name = "none"
        when = { percent = 0 }
        then = { target = "T" }
        """,
    )
    assert "rules[0] (all).when.percent: 100 is above 99" in problems
    assert "rules[1] (none).when.percent: 0 is below 1" in problems


# --- percent ------------------------------------------------------------------------------------


def test_percent_bucket_is_stable_and_from_the_caller_then_the_call_id():
    # SHA-256 of the text: the same in every process, on every replica, in every release.
    assert bucket(RoutingQuery(protocol="x", caller="+358501231234")) == 45
    assert bucket(RoutingQuery(protocol="x", caller="+358501231234", call_id="c9")) == 45
    assert bucket(RoutingQuery(protocol="x", call_id="c9")) == bucket(
        RoutingQuery(protocol="y", call_id="c9")
    )
    assert bucket(RoutingQuery(protocol="x")) is None


PERCENT = """
[[rules]]
name = "trial"
when = { percent = 20 }
then = { target = "NEW" }
[[rules]]
name = "wide"
when = { percent = 50 }
then = { target = "WIDE" }
"""


async def test_percent_holds_for_its_share_nested_and_the_same_each_time(tmp_path):
    rules = rules_of(tmp_path, PERCENT)
    c = ctx(rules)
    callers = [f"+3584000{i:05d}" for i in range(4000)]
    first = [(await decide(sr(n), c)).rule for n in callers]
    shares = collections.Counter(first)
    assert 700 < shares["trial"] < 900  # 20 %, give or take
    assert 1100 < shares["wide"] < 1300  # the next 30 %: a caller in 20 % is in 50 % too
    assert [(await decide(sr(n), c)).rule for n in callers[:500]] == first[:500]
    # A reloaded config places every caller where it was.
    again = ctx(rules_of(tmp_path, PERCENT))
    assert [(await decide(sr(n), again)).rule for n in callers[:500]] == first[:500]


async def test_percent_places_an_eml_call_by_its_call_id_and_a_call_with_neither_nowhere(tmp_path):
    rules = rules_of(tmp_path, "[services.Sales]\nnumbers = ['s']\n" + PERCENT)
    c = ctx(rules)
    ids = [f"call-{i}" for i in range(400)]
    got = [(await decide(eml(i), c, remember_s=60)).rule for i in ids]
    expected = ["trial" if bucket(eml(i)) < 20 else "wide" if bucket(eml(i)) < 50 else None for i in ids]
    assert got == expected and "trial" in got and None in got
    assert (await decide(sr(""), c)).rule is None


# --- sticky -------------------------------------------------------------------------------------

STICKY = """
[services.Sales]
numbers = ["a", "b", "c"]
strategy = "round_robin"
sticky = "caller"
sticky_s = 600
[services.Renewals]
numbers = ["x", "y", "z"]
strategy = "random"
sticky = "customer"
sticky_s = 600
[[rules]]
name = "sales"
when = { service = "Q" }
then = { service = "Sales" }
"""


async def test_a_sticky_caller_gets_its_number_again_and_the_rotation_goes_on_for_others(tmp_path):
    store = MemoryStore()
    c = ctx(rules_of(tmp_path, STICKY), store)
    assert (await decide(sr("+3581"), c)).target == "a"
    assert (await decide(sr("+3582"), c)).target == "b"
    assert [(await decide(sr("+3581"), c)).target for _ in range(5)] == ["a"] * 5
    assert (await decide(sr("+3583"), c)).target == "c"
    assert (await decide(sr("+3582"), c)).target == "b"
    assert await store.get("rr:Sales") == b"3"  # a sticky answer takes no turn
    # Without a caller number there is nothing to stick by: the rotation answers.
    assert [(await decide(sr(""), c)).target for _ in range(3)] == ["a", "b", "c"]


async def test_a_sticky_number_taken_out_of_the_pool_is_replaced(tmp_path):
    store = MemoryStore()
    assert (await decide(sr("+3581"), ctx(rules_of(tmp_path, STICKY), store))).target == "a"
    after = rules_of(tmp_path, STICKY.replace('["a", "b", "c"]', '["b", "c"]'))
    c = ctx(after, store)
    number = (await decide(sr("+3581"), c)).target
    assert number in ("b", "c")
    assert [(await decide(sr("+3581"), c)).target for _ in range(3)] == [number] * 3


async def test_a_sticky_customer_gets_its_number_on_each_new_eml_call(tmp_path):
    store = MemoryStore()
    c = ctx(rules_of(tmp_path, STICKY), store)
    first = await decide(eml("c1", "Renewals", "ACME"), c, remember_s=60)
    later = [await decide(eml(f"c{i}", "Renewals", "ACME"), c, remember_s=60) for i in range(2, 12)]
    assert {d.target for d in later} == {first.target} and not any(d.replayed for d in later)
    assert len({d.id for d in [first, *later]}) == 11  # each its own call
    retry = await decide(eml("c1", "Renewals", "ACME"), c, remember_s=60)
    assert (retry.target, retry.id, retry.replayed) == (first.target, first.id, True)
    # Random pools without a customer are not sticky: over many calls, more than one number.
    others = {(await decide(eml(f"n{i}", "Renewals"), c, remember_s=60)).target for i in range(40)}
    assert len(others) > 1


async def test_sticky_keys_are_hashed(tmp_path):
    store = MemoryStore()
    c = ctx(rules_of(tmp_path, STICKY), store)
    await decide(sr("+358501231234"), c)
    keys = [k for k in store._values if k.startswith("st:")]
    assert len(keys) == 1 and len(keys[0]) == 35 and "358" not in keys[0]


async def test_a_dry_run_reads_sticky_entries_and_keeps_none(tmp_path):
    store = MemoryStore()
    rules = rules_of(tmp_path, STICKY)
    assert (await decide(sr("+3582"), ctx(rules, store))).target == "a"
    dry = ctx(rules, DryRunStore(store))
    assert (await decide(sr("+3582"), dry)).target == "a"
    assert (await decide(sr("+3589"), dry)).target == "b"
    assert (await decide(sr("+3589"), dry)).target == "b"  # not kept: the next turn, again
    assert await store.get("rr:Sales") == b"1"


# --- decisions: the deadline fallback and the trace --------------------------------------------


class Stuck(MemoryStore):
    async def allocate(self, allocation):
        await asyncio.Event().wait()

    async def incr(self, key):
        await asyncio.Event().wait()


class Failing(MemoryStore):
    async def allocate(self, allocation):
        raise StoreError("down")

    async def incr(self, key):
        raise StoreError("down")


async def test_decide_answers_its_own_fallback_at_the_deadline_and_when_the_store_fails(tmp_path):
    rules = rules_of(tmp_path, WEIGHTED)
    loop = asyncio.get_running_loop()
    trace = Trace()
    late = await decide(
        eml("c1"), ctx(rules, Stuck()), remember_s=60, deadline=loop.time() + 0.05, trace=trace
    )
    assert late.fallback == "deadline" and late.target in ("a", "b", "c") and late.id
    assert trace.fallback == "deadline" and trace.pick.startswith("offline")
    failed = await decide(sr(), ctx(rules, Failing()), deadline=loop.time() + 5)
    assert failed.fallback == "store" and not failed.routes  # SmartRouting: default routing
    with pytest.raises(StoreError):
        await decide(sr(), ctx(rules, Failing()))  # no deadline: the caller is told


TRACED = (
    STICKY
    + """
[callers."+3581"]
tags = ["vip"]
[[rules]]
name = "trial"
when = { tag = "vip", percent = 20 }
then = { target = "NEW" }
[[rules]]
name = "vip"
when = { tag = "vip", service = "Q" }
then = { service = "Sales" }
[[rules]]
name = "later"
when = { tag = "vip" }
then = { target = "L" }
"""
)


async def test_trace_names_each_rules_verdict_the_caller_and_the_pick(tmp_path):
    rules = rules_of(tmp_path, TRACED)
    store = MemoryStore()
    trace = Trace()
    first = await decide(sr("+3581"), ctx(rules, store), trace=trace)
    assert first.rule == "sales"  # the first rule decides: the others are never looked at
    assert [(v.name, v.verdict) for v in trace.rules] == [
        ("sales", "matches"),
        ("trial", "not reached"),
        ("vip", "not reached"),
        ("later", "not reached"),
    ]
    assert trace.known and trace.caller.tags == {"vip"} and trace.lookup is None
    assert (trace.service, trace.strategy, trace.sticky, trace.turn) == ("Sales", "round_robin", "new", 1)
    again = Trace()
    await decide(sr("+3581"), ctx(rules, store), trace=again)
    assert again.sticky == "hit" and again.turn is None and "last time" in again.pick

    t = Trace()
    await decide(sr("+3581", service="other"), ctx(rules, store), trace=t)
    verdicts = {v.name: v for v in t.rules}
    assert verdicts["sales"].failed == "service"
    assert bucket(sr("+3581")) == 40
    assert verdicts["trial"].failed == "percent"
    assert verdicts["trial"].notes == ("percent 20 (buckets 0-19): this caller's bucket 40, not in it",)
    assert verdicts["vip"].failed == "service" and verdicts["later"].verdict == "matches"


async def test_trace_names_the_lookup_answer(tmp_path):
    from core.directory import CallerInfo

    class Crm:
        async def lookup(self, number, budget_s):
            return CallerInfo(tags=frozenset({"gold"})), "miss"

        async def find(self, number, budget_s):
            return (await self.lookup(number, budget_s))[0]

    rules = rules_of(tmp_path, '[[rules]]\nname = "gold"\nwhen = { tag = "gold" }\nthen = { target = "G" }\n')
    c = Context(rules=rules, store=MemoryStore(), lookup=Crm(), flights={})
    trace = Trace()
    assert (await decide(sr("+3581"), c, trace=trace)).target == "G"
    assert trace.lookup == "miss" and "gold" in trace.caller.tags and not trace.known
