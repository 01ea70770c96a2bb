"""``decide(query, ctx) -> Decision``: the one routing function every protocol calls."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import random
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
import uuid6

from core.directory import UNKNOWN, CallerInfo
from core.errors import StoreBusy, StoreError
from core.query import Decision, RoutingQuery
from core.rules import CompiledRule, mismatch
from core.schedules import Hours
from core.services import Service, pick
from core.store import Store


class RuleBase(msgspec.Struct, frozen=True):
    """The compiled, immutable rule base of one config version; a reload swaps it whole."""

    rules: tuple[CompiledRule, ...] = ()
    services: dict[str, Service] = {}
    callers: dict[str, CallerInfo] = {}
    hours: dict[str, Hours] = {}


class CallerLookup(Protocol):
    """An external source of caller facts (a CRM)."""

    async def find(self, number: str, budget_s: float) -> CallerInfo | None:
        """What the source knows of ``number``, or None when it knows nothing, fails or runs out of time."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """What ``decide`` needs besides the query. ``clock`` is injectable so tests can fix the time."""

    rules: RuleBase
    store: Store
    lookup: CallerLookup | None = None
    clock: Callable[[], dt.datetime] = utc_now
    flights: dict[str, asyncio.Future] = {}
    """Idempotent decisions under way in this process, so duplicates wait instead of polling the store."""


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Decision).decode
PENDING = b"\x00pending"
"""How a claim's value starts; the rest is the claimant's own token, so that it knows its claim again."""


async def decide(
    query: RoutingQuery, ctx: Context, *, remember_s: float = 0, deadline: float | None = None
) -> Decision:
    """Decide how to route ``query``.

    ``deadline`` is the event-loop time by which the answer is due; lookups get no more than what
    is left of it. With ``query.idempotency_key`` and ``remember_s`` > 0, a decision that allocated a
    destination is remembered: the same key inside ``remember_s`` gets it again, on any replica.
    """
    if query.idempotency_key and remember_s > 0:
        return await _once(query, ctx, remember_s, deadline)
    return await _decide(query, ctx, deadline)


async def caller_info(query: RoutingQuery, ctx: Context, deadline: float | None) -> CallerInfo:
    """The directory entry of the caller, with what the lookup finds merged over it."""
    if not query.caller:
        return UNKNOWN
    known = ctx.rules.callers.get(query.caller, UNKNOWN)
    if ctx.lookup is None:
        return known
    budget = 3600.0 if deadline is None else deadline - asyncio.get_running_loop().time()
    found = await ctx.lookup.find(query.caller, budget)
    return known if found is None else known.merged(found)


def first_match(
    query: RoutingQuery, caller: CallerInfo, rules: RuleBase, now: dt.datetime
) -> CompiledRule | None:
    """The first rule whose ``when`` holds, or None."""
    for rule in rules.rules:
        if mismatch(rule.when, query, caller, rules.hours, now) is None:
            return rule
    return None


async def _decide(query: RoutingQuery, ctx: Context, deadline: float | None) -> Decision:
    caller = await caller_info(query, ctx, deadline)
    rule = first_match(query, caller, ctx.rules, ctx.clock())
    return await apply(rule, query, caller, ctx.rules, ctx.store)


async def apply(
    rule: CompiledRule | None, query: RoutingQuery, caller: CallerInfo, rules: RuleBase, store: Store
) -> Decision:
    """Turn the matched rule (or none) into a decision, taking a number from a pool where one is due."""
    fields: dict[str, Any] = {}
    if rule is not None and not rule.then.default:
        a = rule.then
        if a.service is not None:
            fields["target"] = await pick(a.service, rules.services[a.service], store)
            fields["service"] = a.service
        elif a.target is not None:
            fields["target"] = a.target.render(caller)
        fields["disconnect"] = a.disconnect
        for key in ("fail_target", "required_agent", "tts", "msi"):
            tpl = getattr(a, key)
            if tpl is not None:
                fields[key] = tpl.render(caller)
        agents = (t.render(caller) for t in a.preferred_agents)
        fields["preferred_agents"] = tuple(x for x in agents if x)
        fields["priority"] = a.priority
        fields["extra_priority"] = a.extra_priority
    if query.needs_destination and not fields.get("target") and not fields.get("disconnect"):
        service = rules.services.get(query.service)
        if service is not None:
            fields["target"] = await pick(query.service, service, store)
            fields["service"] = query.service
    if fields.get("target"):
        fields["id"] = str(uuid6.uuid7())
    # What a rule leaves unset (or a template renders empty) is dropped; 0 is a priority, not "unset".
    kept = {k: v for k, v in fields.items() if v is not None and v is not False and v != "" and v != ()}
    return Decision(rule=None if rule is None else rule.name, **kept)


def fallback(query: RoutingQuery, rules: RuleBase, reason: str) -> Decision:
    """The answer when the decision cannot be made in time: default routing, or the classification's
    own pool where the protocol needs a destination. Touches no store and no lookup, so it is immediate;
    round-robin pools answer at random here, since their shared position cannot be asked."""
    service = rules.services.get(query.service) if query.needs_destination else None
    if service is None:
        return Decision(fallback=reason)
    number = service.numbers[0] if service.strategy == "first" else random.choice(service.numbers)
    return Decision(target=number, service=query.service, id=str(uuid6.uuid7()), fallback=reason)


def _key(query: RoutingQuery) -> str:
    # Hashed: the key has a fixed size whatever the client sends, and holds no call data in clear.
    digest = hashlib.sha256(query.idempotency_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"call:{digest}"


async def _once(query: RoutingQuery, ctx: Context, remember_s: float, deadline: float | None) -> Decision:
    key = _key(query)
    flight = ctx.flights.get(key)
    if flight is not None:
        first = await asyncio.shield(flight)
        if first is not None:
            return msgspec.structs.replace(first, replayed=True) if first.target else first
    fut = asyncio.get_running_loop().create_future()
    ctx.flights[key] = fut
    result = None
    try:
        result = await _once_across(key, query, ctx, remember_s, deadline)
        return result
    finally:
        if ctx.flights.get(key) is fut:
            del ctx.flights[key]
        fut.set_result(result)


async def _once_across(
    key: str, query: RoutingQuery, ctx: Context, remember_s: float, deadline: float | None
) -> Decision:
    """Claim ``key`` in the store and decide, or wait for the replica that claimed it first."""
    loop = asyncio.get_running_loop()
    # The claim outlives the claimant's own deadline a little, then lapses if it died meanwhile.
    lease = 1.0 + (5.0 if deadline is None else max(0.0, deadline - loop.time()))
    token = PENDING + os.urandom(16)
    delay = 0.005
    while True:
        # Claim first: a new call (the common case) costs one round trip here, not two.
        try:
            if await ctx.store.add(key, token, lease):
                break
        except StoreBusy:
            raise  # never sent
        except StoreError:
            # Sent, but its answer was lost: the claim may have landed. Read back whose it is; taking it
            # for ours blindly could allocate twice, taking it for another's would wait on nobody.
            pass
        raw = await ctx.store.get(key)
        if raw == token:
            break  # ours: it landed
        if raw is None:
            continue  # the claim lapsed or was given up just now: try again at once
        if not raw.startswith(PENDING):
            return msgspec.structs.replace(_decode(raw), replayed=True)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    try:
        decision = await _decide(query, ctx, deadline)
    except BaseException:
        await asyncio.shield(_give_up(ctx.store, key))
        raise
    if decision.target:
        record = _encode(decision)
        records = {key: record}
        # Redis keeps the record by mqID too (SPEC section 5), for whatever else reads Redis; nothing in
        # the gateway reads it. A store in process is read by this process alone, so there it would only
        # double the entries each call holds, and halve the calls that fit before one is evicted
        # inside its retry window.
        if ctx.store.shared:
            records[f"mq:{decision.id}"] = record
        await _record(ctx.store, records, remember_s)
    else:
        await _give_up(ctx.store, key)
    return decision


async def _give_up(store: Store, key: str) -> None:
    """Drop a claim that leads to no record, so a retry need not wait for it. Should that fail, the
    claim lapses with its lease: no reason to fail the call as well."""
    with contextlib.suppress(StoreError):
        await store.delete(key)


async def _record(store: Store, records: dict[str, bytes], ttl_s: float) -> None:
    """Write a decision's records, trying a failed write once more (a SET again is harmless). A call
    answered but not remembered could be allocated twice on a retry; still, the decision was made and
    is the answer, so a write that fails twice fails nothing else."""
    for _ in range(2):
        keys = list(records)
        results = await asyncio.gather(
            *(store.set(k, records[k], ttl_s) for k in keys), return_exceptions=True
        )
        for k, result in zip(keys, results, strict=True):
            if result is None:
                del records[k]
            elif not isinstance(result, StoreError):
                raise result
        if not records:
            return


def explain(
    query: RoutingQuery, caller: CallerInfo, rules: RuleBase, now: dt.datetime
) -> list[tuple[str, str | None]]:
    """Every rule in order with the first of its conditions that fails (None: it holds)."""
    return [(r.name, mismatch(r.when, query, caller, rules.hours, now)) for r in rules.rules]
