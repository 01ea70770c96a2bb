"""Replay: decide journaled calls again under a candidate rule base, and report what would change.

Each call is decided by ``core.decide.decide`` as it was live, at its recorded time and with its recorded
caller facts, on a store of its own in process: nothing shared is read or written (no round-robin
position advances, no call record is kept, no lookup is made). A number taken from a pool counts as that
pool, so a rotation is no change: calls are compared by (rule, pool) when the answer came from a pool,
else by (rule, target), (rule, disconnect), or (rule, no destination).

Caller facts. By default a call is decided with exactly the facts it was decided with (the directory's
entry and the lookup's answer, as journaled), so the replay shows what the candidate's *rules* change,
whatever happened to the directory or the CRM since: the candidate's directory never overrides them.
With ``directory="candidate"`` the candidate's own directory is used instead, with the lookup's
journaled answer merged over it as live (the CRM is still never asked): for a candidate whose change is
in ``[callers]`` or a directory file. A call journaled with masked numbers is always decided with its
recorded facts (its number can be found in no directory).

Not compared: calls answered from a stored first decision (``replayed``: the call's first decision is
compared where the journal still has it) and fallback answers (``deadline``, ``store``: no rule decided
them); they are counted as ``skipped``. Calls journaled with masked numbers cannot match rules on caller
or dialled numbers; they are counted as ``masked`` and the report warns.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from core.decide import Context, RuleBase, decide
from core.directory import CallerInfo
from core.journal import JournalEntry
from core.store import MemoryStore

Key = tuple[str | None, str, Any]
"""What a call is compared by: (rule, kind, value); kind is ``service``, ``target``, ``disconnect`` or
``none``."""


def outcome(rule: str | None, target: str | None, pool: str | None, disconnect: bool) -> Key:
    """The comparison key of one answer: a number from a pool counts as that pool."""
    if pool:
        return (rule, "service", pool)
    if target:
        return (rule, "target", target)
    if disconnect:
        return (rule, "disconnect", True)
    return (rule, "none", None)


def shown(key: Key) -> dict[str, Any]:
    """A key as the report shows it: ``{"rule": ..., "service": pool}``, ``{"rule": ..., "target": t}``,
    ``{"rule": ..., "disconnect": true}``, or ``{"rule": ..., "target": null}`` (no destination: default
    routing, or "not found"). ``rule`` is null when no rule matched."""
    rule, kind, value = key
    if kind == "none":
        return {"rule": rule, "target": None}
    return {"rule": rule, kind: value}


class Group(msgspec.Struct):
    before: dict[str, Any]
    after: dict[str, Any]
    count: int
    examples: list[str]
    """Request ids (the call id where a request id is missing) of the first calls of the group."""


class Report(msgspec.Struct, omit_defaults=True):
    """``{"calls": N, "changed": M, "groups": [...]}``; ``skipped``, ``masked`` and ``warnings`` only
    when there is something to say."""

    calls: int
    """Calls decided again and compared."""
    changed: int
    groups: list[Group]
    """The changes, by (before, after), largest first."""
    skipped: int = 0
    masked: int = 0
    warnings: list[str] = []

    def json(self) -> bytes:
        return msgspec.json.encode(self)

    def text(self) -> str:
        """The report for people: the counts, then each change with its examples."""
        out = [f"{self.calls} calls replayed, {self.changed} would be answered differently"]
        for g in self.groups:
            out.append(f"  {g.count:>7}  {_said(g.before)}  ->  {_said(g.after)}")
            out.append(f"           e.g. {', '.join(g.examples)}")
        out += [f"warning: {w}" for w in self.warnings]
        return "\n".join(out)


def _said(side: dict[str, Any]) -> str:
    rule = f"rule {side['rule']}" if side["rule"] else "no rule"
    if "service" in side:
        return f"{rule}, pool {side['service']}"
    if side.get("disconnect"):
        return f"{rule}, disconnect"
    if side.get("target"):
        return f"{rule}, target {side['target']}"
    return f"{rule}, no destination"


class _Recorded:
    """The lookup and the clock of the call being replayed: what the journal says, never the CRM."""

    __slots__ = ("facts", "now")

    def __init__(self) -> None:
        self.facts: CallerInfo | None = None
        self.now = dt.datetime.now(dt.UTC)

    async def find(self, number: str, budget_s: float) -> CallerInfo | None:
        return self.facts

    def clock(self) -> dt.datetime:
        return self.now


async def replay(
    entries: Iterable[JournalEntry],
    candidate: RuleBase,
    *,
    examples: int = 5,
    directory: Literal["recorded", "candidate"] = "recorded",
) -> Report:
    """Decide ``entries`` again under ``candidate`` and report what would change (see the module's doc)."""
    recorded = _Recorded()
    store = MemoryStore(max_entries=1000)
    # Recorded facts alone: the directory is left out, or it would be merged under them.
    exact = Context(
        rules=msgspec.structs.replace(candidate, callers={}),
        store=store,
        lookup=recorded,
        clock=recorded.clock,
        flights={},
    )
    live = Context(rules=candidate, store=store, lookup=recorded, clock=recorded.clock, flights={})
    groups: dict[tuple[Key, Key], Group] = {}
    calls = changed = skipped = masked = 0
    utc = dt.UTC
    for i, e in enumerate(entries):
        if e.replayed or e.fallback:
            skipped += 1
            continue
        calls += 1
        if e.masked:
            masked += 1
        recorded.now = dt.datetime.fromtimestamp(e.time, utc)
        if directory == "candidate" and not e.masked:
            recorded.facts = e.lookup.info() if e.lookup is not None else None
            ctx = live
        else:
            recorded.facts = e.facts()
            ctx = exact
        d = await decide(e.query(), ctx)
        before = outcome(e.rule, e.target, e.pool, e.disconnect)
        after = outcome(d.rule, d.target, d.service, d.disconnect)
        if before != after:
            changed += 1
            g = groups.get((before, after))
            if g is None:
                g = groups[(before, after)] = Group(shown(before), shown(after), 0, [])
            g.count += 1
            if len(g.examples) < examples:
                g.examples.append(e.request_id or e.call_id)
        if i % 2000 == 1999:
            await asyncio.sleep(0)  # a long replay inside a running server leaves room for the rest
    await store.close()
    warnings = []
    if masked:
        warnings.append(
            f'{masked} of {calls} calls were journaled with masked numbers (journal.numbers = "masked"): '
            "rules on caller or dialled numbers cannot match them, so they may show changes that are "
            "not real, or hide real ones"
        )
    if skipped:
        warnings.append(
            f"{skipped} answers not compared: retries answered from the call's first decision, and "
            "fallbacks (deadline, store) that no rule decided"
        )
    ordered = sorted(groups.values(), key=lambda g: -g.count)
    return Report(calls, changed, ordered, skipped=skipped, masked=masked, warnings=warnings)
