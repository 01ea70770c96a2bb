"""Config tests (``[[tests]]``): calls that must route a certain way, run against a rule base.

Each test is a request of one protocol, an optional time, an optional stubbed lookup answer, and what
must come back: the rule that decides, the status, and a subset of the reply's body. The core knows no
protocol: the caller hands in ``parse`` (a test's request table to a query) and ``render`` (a decision to
a status and a body).

Tests run in file order on one fresh store in process, so a round-robin pool starts at its first number
and moves on from test to test; no shared state is touched and no CRM is called (a test's ``lookup`` is
its CRM's answer; without one the caller is as the directory knows it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
from collections.abc import Callable, Collection, Sequence
from typing import Any

import msgspec

from core.decide import Context, RuleBase, decide, utc_now
from core.directory import AttrValue, CallerInfo, as_text
from core.query import Decision, RoutingQuery
from core.store import MemoryStore


class StubbedLookup(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``tests.lookup``: what the CRM answers in this test."""

    tags: list[str] = []
    attributes: dict[str, AttrValue] = {}

    def info(self) -> CallerInfo:
        return CallerInfo(
            tags=frozenset(self.tags), attributes={k: as_text(v) for k, v in self.attributes.items()}
        )


class Expect(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``tests.expect``: each key given must hold. ``rule = ""``: no rule decides. In ``body``, every key
    must be in the reply's JSON with that value (``mqID`` is never compared: it is new each time)."""

    rule: str | None = None
    status: int | None = None
    body: dict[str, Any] | None = None


class ConfigTest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[[tests]]``. ``request`` holds ``protocol`` and that protocol's body fields. ``at`` without an
    offset is read in the schedules' zone (see :func:`local_zone`); default: now."""

    name: str
    request: dict[str, Any]
    expect: Expect
    at: dt.datetime | None = None
    lookup: StubbedLookup | None = None


class Refused(Exception):
    """Raised by ``parse``: the protocol refuses the request; its answer is ``status`` and ``body``."""

    def __init__(self, status: int, body: dict[str, Any] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


Parse = Callable[[str, dict[str, Any]], RoutingQuery]
"""(protocol, the request's fields without ``protocol``) -> the query; :class:`Refused` for a request
the protocol answers with an error."""
Render = Callable[[str, Decision, RoutingQuery], tuple[int, dict[str, Any] | None]]
"""(protocol, decision, query) -> (status, the reply's JSON body, None when it has none)."""


class Mismatch(msgspec.Struct, frozen=True):
    what: str
    """``rule``, ``status``, ``body.KEY``, or ``request``."""
    expected: Any
    got: Any
    missing: bool = False
    """The reply has no such key (``got`` is then meaningless)."""

    def __str__(self) -> str:
        if self.what == "request":
            return f"request: {self.got}"
        if self.what == "rule":
            want = f'"{self.expected}"' if self.expected else "no rule"
            got = f'"{self.got}"' if self.got else "no rule"
            return f"rule: expected {want}, got {got}"
        got = "nothing" if self.missing else _show(self.got)
        return f"{self.what}: expected {_show(self.expected)}, got {got}"


class Failure(msgspec.Struct, frozen=True):
    """One test that failed, with each way it failed."""

    index: int
    name: str
    mismatches: list[Mismatch]

    def __str__(self) -> str:
        head = f'tests[{self.index}] "{self.name}" failed'
        return "\n".join([head, *(f"  {m}" for m in self.mismatches)])

    def problems(self) -> list[str]:
        """One line per mismatch, with the test's key path: for a list of config problems."""
        return [f"tests[{self.index}] ({self.name}): {m}" for m in self.mismatches]


def _show(value: Any) -> str:
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(value)


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same kind: ``true`` is not ``1``, as in JSON."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


NEVER_COMPARED = frozenset({"mqID"})


def local_zone(rules: RuleBase) -> dt.tzinfo:
    """The one zone every schedule uses, else UTC: a time without an offset is read as the operator means it."""
    zones = {h.zone.key: h.zone for h in rules.hours.values()}
    return next(iter(zones.values())) if len(zones) == 1 else dt.UTC


def check_tests(
    tests: Sequence[ConfigTest], rule_names: Collection[str], protocols: Collection[str], problems: list[str]
) -> None:
    """What is wrong with the tests themselves (beyond types), each with its key path."""
    seen: set[str] = set()
    for i, t in enumerate(tests):
        path = f"tests[{i}]"
        if not t.name.strip():
            problems.append(f"{path}.name: must not be empty")
        elif t.name in seen:
            problems.append(f"{path}.name: {t.name!r} is the name of an earlier test")
        seen.add(t.name)
        protocol = t.request.get("protocol")
        if protocol is None:
            problems.append(f"{path}.request.protocol: missing (one of {', '.join(protocols)})")
        elif protocol not in protocols:
            problems.append(f"{path}.request.protocol: {protocol!r} is not one of {', '.join(protocols)}")
        e = t.expect
        if e.rule is None and e.status is None and e.body is None:
            problems.append(f"{path}.expect: expects nothing (give rule, status or body)")
        if e.rule and e.rule not in rule_names:
            problems.append(f'{path}.expect.rule: no rule {e.rule!r} in [[rules]] ("" for none)')
        if e.status is not None and not 100 <= e.status <= 599:
            problems.append(f"{path}.expect.status: {e.status} is not an HTTP status")


async def run_tests(
    tests: Sequence[ConfigTest],
    rules: RuleBase,
    parse: Parse,
    render: Render,
    *,
    remember_s: Callable[[str], float] | None = None,
    now: Callable[[], dt.datetime] = utc_now,
) -> list[Failure]:
    """Run ``tests`` in order against ``rules``; the failures, in order (none: all passed).

    ``remember_s`` gives a protocol's retry window, so that a test repeating an earlier test's call
    gets the first answer, as live. A test never raises: whatever goes wrong is its failure.
    """
    store = MemoryStore(max_entries=100_000)
    zone = local_zone(rules)
    failures: list[Failure] = []
    try:
        for i, t in enumerate(tests):
            got = await _run_one(t, rules, store, parse, render, remember_s, now, zone)
            if got:
                failures.append(Failure(i, t.name, got))
    finally:
        await store.close()
    return failures


async def _run_one(
    t: ConfigTest,
    rules: RuleBase,
    store: Any,
    parse: Parse,
    render: Render,
    remember_s: Callable[[str], float] | None,
    now: Callable[[], dt.datetime],
    zone: dt.tzinfo,
) -> list[Mismatch]:
    fields = dict(t.request)
    protocol = fields.pop("protocol", "")
    e = t.expect
    rule: str | None = None
    try:
        try:
            query = parse(protocol, fields)
        except Refused as exc:
            status, body = exc.status, exc.body
        else:
            at = t.at if t.at is not None else now()
            if at.tzinfo is None:
                at = at.replace(tzinfo=zone)
            lookup = _Stub(t.lookup.info()) if t.lookup is not None else None
            ctx = Context(rules=rules, store=store, lookup=lookup, clock=lambda: at, flights={})
            window = remember_s(protocol) if remember_s is not None else 0.0
            decision = await decide(query, ctx, remember_s=window)
            rule = decision.rule
            status, body = render(protocol, decision, query)
    except Exception as exc:  # noqa: BLE001 - a test that cannot run is a failed test, never a crash
        return [Mismatch("request", None, f"could not be run ({exc.__class__.__name__}: {exc})")]
    out: list[Mismatch] = []
    if e.rule is not None and (rule or "") != e.rule:
        out.append(Mismatch("rule", e.rule, rule or ""))
    if e.status is not None and status != e.status:
        out.append(Mismatch("status", e.status, status))
    for key, want in (e.body or {}).items():
        if key in NEVER_COMPARED:
            continue
        if not body or key not in body:
            out.append(Mismatch(f"body.{key}", want, None, missing=True))
        elif not _same(body[key], want):
            out.append(Mismatch(f"body.{key}", want, body[key]))
    return out


class _Stub:
    """The test's CRM: the same answer for whoever calls."""

    __slots__ = ("info",)

    def __init__(self, info: CallerInfo) -> None:
        self.info = info

    async def find(self, number: str, budget_s: float) -> CallerInfo | None:
        return self.info


def run_tests_blocking(
    tests: Sequence[ConfigTest], rules: RuleBase, parse: Parse, render: Render, **kw: Any
) -> list[Failure]:
    """:func:`run_tests` from synchronous code (a config load, the CLI), with or without an event loop
    running in this thread (then on a thread of its own, for the few milliseconds it takes)."""
    if not tests:
        return []
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_tests(tests, rules, parse, render, **kw))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="config-tests") as pool:
        return pool.submit(asyncio.run, run_tests(tests, rules, parse, render, **kw)).result()
