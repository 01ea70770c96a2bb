"""``decide(query, ctx) -> Decision``: the one routing function every protocol calls."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from core.directory import UNKNOWN, CallerInfo
from core.errors import StoreBusy, StoreError
from core.query import Decision, RoutingQuery
from core.rules import CompiledRule, mismatch
from core.schedules import Hours
from core.services import Service, choose, counter, pick
from core.store import PENDING, Allocation, Pool, Store


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
    fields, turn = _draft(rule, query, caller, rules)
    if turn is not None:
        fields["target"] = await pick(turn, rules.services[turn], store)
    return _decision(rule, query, fields)


_TURN = "\x00turn:" + os.urandom(8).hex()
"""The target of a draft whose number a round-robin turn is still to choose. Random, so that no text
of a rule can hold it."""
_TURN_BYTES = _encode(_TURN)


def _draft(
    rule: CompiledRule | None, query: RoutingQuery, caller: CallerInfo, rules: RuleBase
) -> tuple[dict[str, Any], str | None]:
    """The decision's fields, and the service whose shared round-robin position is still to choose the
    target (``fields["target"]`` is then ``_TURN``), or None."""
    fields: dict[str, Any] = {}
    turn = None
    if rule is not None and not rule.then.default:
        a = rule.then
        if a.service is not None:
            target = choose(rules.services[a.service])
            if target is None:
                target, turn = _TURN, a.service
            fields["target"] = target
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
            target = choose(service)
            if target is None:
                target, turn = _TURN, query.service
            fields["target"] = target
            fields["service"] = query.service
    return fields, turn


def _decision(rule: CompiledRule | None, query: RoutingQuery, fields: dict[str, Any]) -> Decision:
    if query.needs_destination and fields.get("target"):
        # The allocation's id is shown where the protocol answers with a destination (EML's mqID);
        # no other protocol shows one, so none is made for it.
        fields["id"] = uuid7()
    # What a rule leaves unset (or a template renders empty) is dropped; 0 is a priority, not "unset".
    kept = {k: v for k, v in fields.items() if v is not None and v is not False and v != "" and v != ()}
    return Decision(rule=None if rule is None else rule.name, **kept)


def uuid7() -> str:
    """A fresh UUIDv7 (RFC 9562): the Unix time in ms, its sub-millisecond fraction in the 12 bits of
    ``rand_a`` (the RFC's method 3: ids sort by time to a quarter of a microsecond), 62 random bits."""
    ms, sub = divmod(time.time_ns(), 1_000_000)
    value = (
        (ms << 80)
        | ((0x7000 | (sub * 4096 // 1_000_000)) << 64)
        | 0x8000_0000_0000_0000
        | (int.from_bytes(os.urandom(8)) >> 2)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def fallback(query: RoutingQuery, rules: RuleBase, reason: str) -> Decision:
    """The answer when the decision cannot be made in time: default routing, or the classification's
    own pool where the protocol needs a destination. Touches no store and no lookup, so it is immediate;
    round-robin pools answer at random here, since their shared position cannot be asked."""
    service = rules.services.get(query.service) if query.needs_destination else None
    if service is None:
        return Decision(fallback=reason)
    number = service.numbers[0] if service.strategy == "first" else random.choice(service.numbers)
    return Decision(target=number, service=query.service, id=uuid7(), fallback=reason)


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


_pools: dict[int, tuple[Service, Pool]] = {}


def _pool(service: Service) -> Pool:
    """The numbers of ``service`` each as a record holds it (see ``_once_across``); made once a service."""
    hit = _pools.get(id(service))
    if hit is None or hit[0] is not service:
        if len(_pools) >= 1024:
            _pools.clear()  # services of configs reloaded away; the current ones are made again
        hit = _pools[id(service)] = (service, Pool(service.numbers, [_encode(n) for n in service.numbers]))
    return hit[1]


async def _once_across(
    key: str, query: RoutingQuery, ctx: Context, remember_s: float, deadline: float | None
) -> Decision:
    """Decide, then keep the decision under ``key`` in one store operation, unless the key holds the
    record of the call's first decision: then that one is the answer, on whichever replica it was made.

    Deciding first claims nothing, so a round-robin pool's number is left to the store: the allocation
    advances the pool's counter only when it claims the key, and splices the number of that turn into
    the record. On Redis that is one round trip for a new call.
    """
    caller = await caller_info(query, ctx, deadline)
    rule = first_match(query, caller, ctx.rules, ctx.clock())
    fields, turn = _draft(rule, query, caller, ctx.rules)
    draft = _decision(rule, query, fields)
    store = ctx.store
    if not draft.target:
        return await _held(store, key, draft)
    # Redis keeps the record by mqID too (SPEC section 5), for whatever else reads Redis; nothing in the
    # gateway reads it. A store in process is read by this process alone, so there it would only double
    # the entries each call holds, and halve the calls that fit before one is evicted inside its window.
    also = (f"mq:{draft.id}",) if draft.id and store.shared else ()
    # A store that claims in steps holds the claim a little past the claimant's own deadline; it lapses
    # then if the claimant died meanwhile.
    lease = 1.0 + (5.0 if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time()))
    record = _encode(draft)
    pool = None
    if turn is None:
        allocation = Allocation(key=key, head=record, ttl_s=remember_s, also=also, lease_s=lease)
    else:
        pool = _pool(ctx.rules.services[turn])
        head, _, tail = record.partition(_TURN_BYTES)
        allocation = Allocation(
            key=key,
            head=head,
            tail=tail,
            ttl_s=remember_s,
            counter=counter(turn),
            pool=pool,
            also=also,
            lease_s=lease,
        )
    delay = 0.005
    while True:
        try:
            got = await store.allocate(allocation)
        except StoreBusy:
            raise  # never sent
        except StoreError:
            # Sent, but its answer was lost: it may have taken effect. What the key holds tells: our
            # record (then it is ours to answer), another's, a claim under way, or nothing yet.
            got = await store.get(key)
            if got is None:
                continue
        if isinstance(got, int):
            # Claimed: the decision is the answer, with the number its turn chose (what the record holds).
            if pool is not None:
                draft = msgspec.structs.replace(draft, target=pool.numbers[pool.index(got)])
            return draft
        if not got.startswith(PENDING):
            first = _decode(got)
            ours = draft.id is not None and first.id == draft.id
            return first if ours else msgspec.structs.replace(first, replayed=True)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def _held(store: Store, key: str, decision: Decision) -> Decision:
    """``decision`` (which allocates nothing, so keeps nothing), unless the call's first decision is kept
    under ``key``: then that one, made while the config said otherwise. A claim under way is waited for."""
    delay = 0.005
    while True:
        raw = await store.get(key)
        if raw is None:
            return decision
        if not raw.startswith(PENDING):
            return msgspec.structs.replace(_decode(raw), replayed=True)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def explain(
    query: RoutingQuery, caller: CallerInfo, rules: RuleBase, now: dt.datetime
) -> list[tuple[str, str | None]]:
    """Every rule in order with the first of its conditions that fails (None: it holds)."""
    return [(r.name, mismatch(r.when, query, caller, rules.hours, now)) for r in rules.rules]
