"""``decide(query, ctx) -> Decision``: the one routing function every protocol calls.

The pipeline: the caller's facts (directory, then lookup), the first rule whose ``when`` holds, its
``then`` applied (``core.rules.ACTIONS``), and a number from a pool where one is due: chosen in process
by the pool's strategy, or by the store (a shared counter's turn, a sticky entry), in one allocation that
also keeps the call's record where the protocol retries. With a deadline, ``decide`` answers its own
fallback when time runs out or the store fails. With a :class:`Trace`, it notes what it saw and did.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple, Protocol

import msgspec

from core.deadline import within
from core.directory import UNKNOWN, CallerInfo
from core.errors import StoreBusy, StoreError
from core.query import Decision, RoutingQuery
from core.rules import CompiledRule, mismatch, verdict
from core.schedules import Hours
from core.services import Service, at, counter
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


class Verdict(NamedTuple):
    """One rule as a decision saw it: ``matches`` (it decides), ``no`` (``failed`` names the first
    condition that does not hold) or ``not reached`` (an earlier rule decided). ``notes``: what its
    conditions saw of the call, where they say (``percent``)."""

    name: str
    verdict: str
    failed: str | None = None
    notes: tuple[str, ...] = ()


class Trace:
    """What one decision saw and did, noted by ``decide(..., trace=Trace())`` for whoever asks
    (``route --explain``, the journal). Deciding without one notes nothing and costs nothing."""

    def __init__(self) -> None:
        self.caller: CallerInfo = UNKNOWN
        """The caller's facts the rules saw (the directory's, with the lookup's merged over them)."""
        self.known = False
        """Whether the caller is in the directory."""
        self.lookup: str | None = None
        """How the lookup answered (``hit``, ``miss``, ``not_found``, ``failed``, ``timeout``, ...);
        None when it was not asked."""
        self.rules: list[Verdict] = []
        self.rule: str | None = None
        """The rule that decided; None when none did."""
        self.service: str | None = None
        """The pool a number was taken from."""
        self.strategy: str | None = None
        self.pick: str | None = None
        """How the pool's number was chosen."""
        self.sticky: str | None = None
        """For a sticky pool: ``hit`` (its entry for this caller or customer gave the number, and lives
        ``sticky_s`` again), ``new`` (there was none: the strategy chose, and the entry is set), ``none``
        (the request has no caller or customer to stick by); None otherwise."""
        self.turn: int | None = None
        """The shared counter's turn taken (a dry run's: the turn the next call would take)."""
        self.replayed = False
        """The answer is the call's first decision, given again."""
        self.fallback: str | None = None
        """Why the answer is a fallback (``deadline``, ``store``)."""

    def picked(self, name: str, service: Service, how: str, sticky: str | None = None) -> None:
        self.service, self.strategy, self.pick, self.sticky = name, service.strategy, how, sticky


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Decision).decode


def decide(
    query: RoutingQuery,
    ctx: Context,
    *,
    remember_s: float = 0,
    deadline: float | None = None,
    trace: Trace | None = None,
) -> Coroutine[Any, Any, Decision]:
    """Decide how to route ``query`` (await what this returns).

    ``deadline`` is the event-loop time by which the answer is due: lookups get no more than what is
    left of it, and a decision not made by then is answered by :func:`fallback` (``fallback =
    "deadline"``), as is one whose store fails (``"store"``). Without a deadline, nothing is cut short
    and a store's error is raised. With ``query.idempotency_key`` and ``remember_s`` > 0, a decision
    that allocated a destination is remembered: the same key inside ``remember_s`` gets it again, on any
    replica. ``trace`` notes what the decision saw and did.
    """
    # A plain function handing over the coroutine that decides: no frame of its own on the hot path.
    if query.idempotency_key and remember_s > 0:
        coro = _once(query, ctx, remember_s, deadline, trace)
    else:
        coro = _decide(query, ctx, deadline, trace)
    if deadline is None:
        return coro
    return _guarded(coro, query, ctx.rules, deadline, trace)


async def _guarded(
    coro: Coroutine[Any, Any, Decision],
    query: RoutingQuery,
    rules: RuleBase,
    deadline: float,
    trace: Trace | None,
) -> Decision:
    try:
        # A timer only when the decision waits (on the store, on a lookup): most never do.
        return await within(coro, deadline)
    except TimeoutError:
        reason = "deadline"
    except StoreError:
        # The store could not answer this call (its pool stayed full for the whole wait, or a Redis call
        # failed while Redis still answers a ping): answered as at the deadline; Redis is not taken for down.
        reason = "store"
    return fallback(query, rules, reason, trace)


async def _decide(query: RoutingQuery, ctx: Context, deadline: float | None, trace: Trace | None) -> Decision:
    caller = await caller_info(query, ctx, deadline, trace)
    rule = first_match(query, caller, ctx.rules, ctx.clock(), trace)
    fields, due = _draft(rule, query, caller, ctx.rules, trace)
    if due is not None:
        fields["target"] = await _take(due, ctx.store, trace)
    return _decision(rule, query, fields)


async def caller_info(
    query: RoutingQuery, ctx: Context, deadline: float | None, trace: Trace | None = None
) -> CallerInfo:
    """The directory entry of the caller, with what the lookup finds merged over it."""
    if not query.caller:
        return UNKNOWN
    known = ctx.rules.callers.get(query.caller, UNKNOWN)
    if trace is not None:
        trace.known = query.caller in ctx.rules.callers
        trace.caller = known
    if ctx.lookup is None:
        return known
    budget = 3600.0 if deadline is None else deadline - asyncio.get_running_loop().time()
    if trace is None:
        found = await ctx.lookup.find(query.caller, budget)
    else:
        found = await _traced_lookup(ctx.lookup, query.caller, budget, trace)
    info = known if found is None else known.merged(found)
    if trace is not None:
        trace.caller = info
    return info


async def _traced_lookup(lookup: CallerLookup, number: str, budget: float, trace: Trace) -> CallerInfo | None:
    # A lookup that names how it knew (core.lookup.CrmLookup.lookup) says so; another, only what it found.
    named = getattr(lookup, "lookup", None)
    if named is None:
        found = await lookup.find(number, budget)
        trace.lookup = "found" if found is not None else "not found"
        return found
    found, trace.lookup = await named(number, budget)
    return found


def first_match(
    query: RoutingQuery,
    caller: CallerInfo,
    rules: RuleBase,
    now: dt.datetime,
    trace: Trace | None = None,
) -> CompiledRule | None:
    """The first rule whose ``when`` holds, or None. ``trace`` gets each rule's verdict."""
    if trace is not None:
        return _traced_match(query, caller, rules, now, trace)
    for rule in rules.rules:
        if mismatch(rule.when, query, caller, rules.hours, now) is None:
            return rule
    return None


def _traced_match(
    query: RoutingQuery, caller: CallerInfo, rules: RuleBase, now: dt.datetime, trace: Trace
) -> CompiledRule | None:
    found = None
    for rule in rules.rules:
        if found is not None:
            trace.rules.append(Verdict(rule.name, "not reached"))
            continue
        failed, notes = verdict(rule.when, query, caller, rules.hours, now)
        if failed is None:
            found = rule
            trace.rule = rule.name
            trace.rules.append(Verdict(rule.name, "matches", None, notes))
        else:
            trace.rules.append(Verdict(rule.name, "no", failed, notes))
    return found


_TURN = "\x00turn:" + os.urandom(8).hex()
"""The target of a draft whose number the store is still to choose. Random, so that no text of a rule
can hold it."""
_TURN_BYTES = _encode(_TURN)


class _Due(NamedTuple):
    """A pool whose number the store chooses: a turn of its shared counter, or its sticky entry
    (``sticky``: the entry's key; None when the request has none to stick by)."""

    name: str
    service: Service
    sticky: str | None


def _draft(
    rule: CompiledRule | None, query: RoutingQuery, caller: CallerInfo, rules: RuleBase, trace: Trace | None
) -> tuple[dict[str, Any], _Due | None]:
    """The decision's fields, and the pool whose number the store is still to choose (``fields["target"]``
    is then ``_TURN``), or None."""
    fields: dict[str, Any] = {}
    due = None
    if rule is not None:
        for _, value, apply in rule.then.steps:
            apply(value, fields, caller)
        name = fields.get("service")
        if name is not None:
            due = _from_pool(name, rules.services[name], query, fields, trace)
    if query.needs_destination and not fields.get("target") and not fields.get("disconnect"):
        service = rules.services.get(query.service)
        if service is not None:
            due = _from_pool(query.service, service, query, fields, trace)
    return fields, due


def _from_pool(
    name: str, service: Service, query: RoutingQuery, fields: dict[str, Any], trace: Trace | None
) -> _Due | None:
    """Take the decision's target from pool ``name``: at once where the strategy chooses in process and
    no sticky entry can give it; else leave it to the store (``_TURN``) and answer what it must choose."""
    fields["service"] = name
    sticky = _sticky_key(name, service, query) if service.sticky is not None else None
    if sticky is None and not service.rotates:
        index = service.chooser.offline(service)
        fields["target"] = service.numbers[index]
        if trace is not None:
            trace.picked(name, service, _how(service), "none" if service.sticky else None)
        return None
    fields["target"] = _TURN
    return _Due(name, service, sticky)


def _sticky_key(name: str, service: Service, query: RoutingQuery) -> str | None:
    """The store key of the sticky entry of this request's caller or customer in pool ``name``; None when
    the request has none. Hashed, like call records: a fixed size, and no number or id in clear."""
    who = query.caller if service.sticky == "caller" else query.customer
    if not who:
        return None
    text = f"{service.sticky}\x1f{name}\x1f{who}"
    return "st:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _allocation(
    due: _Due,
    key: str,
    head: bytes = b"",
    tail: bytes = b"",
    ttl_s: float = 0.0,
    also: tuple[str, ...] = (),
    lease_s: float = 5.0,
) -> Allocation:
    """The allocation that has the store choose ``due``'s number, and keep the record ``head`` + the
    number + ``tail`` under ``key`` (none when ``key`` is empty)."""
    service = due.service
    rotates = service.rotates
    return Allocation(
        key=key,
        head=head,
        tail=tail,
        ttl_s=ttl_s,
        counter=counter(due.name) if rotates else None,
        pool=_pool(service),
        pick=0 if rotates else service.chooser.offline(service),
        sticky=due.sticky,
        sticky_s=service.sticky_s or 0.0,
        also=also,
        lease_s=lease_s,
    )


async def _take(due: _Due, store: Store, trace: Trace | None) -> str:
    """The number of ``due``'s pool for a request that keeps no record: a turn of the counter (one
    ``INCR``), or with a sticky entry one allocation that claims nothing."""
    service = due.service
    if due.sticky is None:
        turn = await store.incr(counter(due.name))
        if trace is not None:
            _note(trace, due, turn, False)
        return service.numbers[at(service, turn)]
    allocation = _allocation(due, "")
    answer = await store.allocate(allocation)
    assert isinstance(answer, int)  # nothing claimed, so nothing held
    if trace is not None:
        _note(trace, due, answer, answer < 0)
    return service.numbers[allocation.index(answer)]


def _how(service: Service, turn: int | None = None) -> str:
    """How ``service``'s strategy chose, for a trace."""
    if len(service.numbers) == 1:
        return "the pool's only number"
    if turn is not None:
        cycle = service.cycle
        kind = "smooth weighted cycle" if service.strategy == "weighted" else "rotation"
        return f"turn {turn} of the pool's shared counter: place {(turn - 1) % len(cycle) + 1} of {len(cycle)} in its {kind}"
    return {"first": "the first number", "random": "at random"}.get(service.strategy, service.strategy)


def _note(trace: Trace, due: _Due, answer: int, hit: bool) -> None:
    """Note in ``trace`` how the store chose ``due``'s number (``answer`` as the allocation gave it)."""
    service = due.service
    if hit:
        whose = "caller" if service.sticky == "caller" else "customer"
        trace.picked(due.name, service, f"the number this {whose} got from this pool last time", "hit")
        return
    sticky = None if service.sticky is None else "none" if due.sticky is None else "new"
    trace.picked(due.name, service, _how(service, answer if service.rotates else None), sticky)
    if service.rotates:
        trace.turn = answer


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


def fallback(query: RoutingQuery, rules: RuleBase, reason: str, trace: Trace | None = None) -> Decision:
    """The answer when the decision cannot be made in time: default routing, or the classification's
    own pool where the protocol needs a destination. Touches no store and no lookup, so it is immediate:
    each pool's strategy chooses offline (a shared rotation answers at random, in its proportions), and
    no sticky entry is read."""
    if trace is not None:
        trace.fallback = reason
    service = rules.services.get(query.service) if query.needs_destination else None
    if service is None:
        return Decision(fallback=reason)
    number = service.numbers[service.chooser.offline(service)]
    if trace is not None:
        trace.picked(query.service, service, f"offline, without the store: {_how(service)}")
        if service.rotates:
            trace.pick = f"offline, without the store: {service.strategy} at random"
    return Decision(target=number, service=query.service, id=uuid7(), fallback=reason)


def _key(query: RoutingQuery) -> str:
    # Hashed: the key has a fixed size whatever the client sends, and holds no call data in clear.
    digest = hashlib.sha256(query.idempotency_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"call:{digest}"


async def _once(
    query: RoutingQuery, ctx: Context, remember_s: float, deadline: float | None, trace: Trace | None
) -> Decision:
    key = _key(query)
    flight = ctx.flights.get(key)
    if flight is not None:
        first = await asyncio.shield(flight)
        if first is not None:
            if trace is not None:
                trace.replayed = bool(first.target)
            return msgspec.structs.replace(first, replayed=True) if first.target else first
    fut = asyncio.get_running_loop().create_future()
    ctx.flights[key] = fut
    result = None
    try:
        result = await _once_across(key, query, ctx, remember_s, deadline, trace)
        return result
    finally:
        if ctx.flights.get(key) is fut:
            del ctx.flights[key]
        fut.set_result(result)


_pools: dict[int, tuple[Service, Pool]] = {}


def _pool(service: Service) -> Pool:
    """The numbers of ``service`` each as a record holds it (see ``_once_across``), in its cycle's order;
    made once a service."""
    hit = _pools.get(id(service))
    if hit is None or hit[0] is not service:
        if len(_pools) >= 1024:
            _pools.clear()  # services of configs reloaded away; the current ones are made again
        choices = [_encode(n) for n in service.numbers]
        hit = _pools[id(service)] = (service, Pool(service.numbers, choices, service.cycle))
    return hit[1]


async def _once_across(
    key: str,
    query: RoutingQuery,
    ctx: Context,
    remember_s: float,
    deadline: float | None,
    trace: Trace | None,
) -> Decision:
    """Decide, then keep the decision under ``key`` in one store operation, unless the key holds the
    record of the call's first decision: then that one is the answer, on whichever replica it was made.

    Deciding first claims nothing, so a pool's number is left to the store where it chooses (a shared
    counter, a sticky entry): the allocation takes the counter's turn or reads the sticky entry only when
    it claims the key, and splices the number chosen into the record. On Redis that is one round trip
    for a new call.
    """
    caller = await caller_info(query, ctx, deadline, trace)
    rule = first_match(query, caller, ctx.rules, ctx.clock(), trace)
    fields, due = _draft(rule, query, caller, ctx.rules, trace)
    draft = _decision(rule, query, fields)
    store = ctx.store
    if not draft.target:
        return await _held(store, key, draft, trace)
    # Redis keeps the record by mqID too (SPEC section 5), for whatever else reads Redis; nothing in the
    # gateway reads it. A store in process is read by this process alone, so there it would only double
    # the entries each call holds, and halve the calls that fit before one is evicted inside its window.
    also = (f"mq:{draft.id}",) if draft.id and store.shared else ()
    # A store that claims in steps holds the claim a little past the claimant's own deadline; it lapses
    # then if the claimant died meanwhile.
    lease = 1.0 + (5.0 if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time()))
    record = _encode(draft)
    if due is None:
        allocation = Allocation(key=key, head=record, ttl_s=remember_s, also=also, lease_s=lease)
    else:
        head, _, tail = record.partition(_TURN_BYTES)
        allocation = _allocation(due, key, head, tail, remember_s, also, lease)
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
            # Claimed: the decision is the answer, with the number the store chose (what the record holds).
            if due is not None:
                draft = msgspec.structs.replace(draft, target=due.service.numbers[allocation.index(got)])
                if trace is not None:
                    _note(trace, due, got, got < 0)
            return draft
        if not got.startswith(PENDING):
            first = _decode(got)
            ours = draft.id is not None and first.id == draft.id
            if ours:
                if due is not None and trace is not None:
                    trace.picked(
                        due.name,
                        due.service,
                        "chosen by the store (its answer was lost, the record read back)",
                    )
                return first
            if trace is not None:
                trace.replayed = True
            return msgspec.structs.replace(first, replayed=True)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def _held(store: Store, key: str, decision: Decision, trace: Trace | None) -> Decision:
    """``decision`` (which allocates nothing, so keeps nothing), unless the call's first decision is kept
    under ``key``: then that one, made while the config said otherwise. A claim under way is waited for."""
    delay = 0.005
    while True:
        raw = await store.get(key)
        if raw is None:
            return decision
        if not raw.startswith(PENDING):
            if trace is not None:
                trace.replayed = True
            return msgspec.structs.replace(_decode(raw), replayed=True)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
