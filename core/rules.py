"""Ordered rules: ``when`` conditions, ``then`` actions, first match wins."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple

import msgspec

from core.directory import CallerInfo
from core.numbers import normalise
from core.query import RoutingQuery, Scalar
from core.schedules import Hours

Names = str | list[str]


class When(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[rules.when]``: every key given must hold; a list means any of."""

    protocol: Names | None = None
    service: Names | None = None
    caller: Names | None = None
    caller_prefix: Names | None = None
    dialed: Names | None = None
    dialed_prefix: Names | None = None
    customer: Names | None = None
    tag: Names | None = None
    open: Names | None = None
    closed: Names | None = None
    attributes: dict[str, Scalar | list[Scalar]] | None = None
    min_call_time_s: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max_call_time_s: Annotated[int, msgspec.Meta(ge=0)] | None = None
    percent: Annotated[int, msgspec.Meta(ge=1, le=99)] | None = None


class Then(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[rules.then]``: what the decision sets."""

    target: str | None = None
    service: str | None = None
    disconnect: bool = False
    fail_target: str | None = None
    required_agent: str | None = None
    preferred_agents: list[str] | None = None
    priority: Annotated[int, msgspec.Meta(ge=0, le=10000)] | None = None
    extra_priority: Annotated[int, msgspec.Meta(ge=-10000, le=10000)] | None = None
    tts: str | None = None
    msi: str | None = None
    default: bool = False


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[[rules]]``."""

    name: str
    then: Then
    when: When = When()


# --- templates --------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z0-9_\-]+)\}")


class Template(msgspec.Struct, frozen=True):
    """A string with ``{caller.NAME}`` placeholders: literal parts at even, attribute names at odd places."""

    parts: tuple[str, ...]

    def render(self, caller: CallerInfo) -> str | None:
        """The text with attributes filled in; None when one of them is unknown."""
        if len(self.parts) == 1:
            return self.parts[0]
        out = []
        for i, part in enumerate(self.parts):
            if i % 2:
                value = caller.attributes.get(part)
                if value is None:
                    return None
                out.append(value)
            else:
                out.append(part)
        return "".join(out)


def template_names(text: str) -> list[str]:
    """The caller attributes ``text`` names as ``{caller.NAME}``."""
    return [m[2] for m in _PLACEHOLDER.finditer(text) if m[1] == "caller"]


def template(text: str, path: str, problems: list[str]) -> Template:
    parts: list[str] = []
    last = 0
    for m in _PLACEHOLDER.finditer(text):
        if m[1] != "caller":
            problems.append(f"{path}: {{{m[1]}.{m[2]}}} names no caller attribute (use {{caller.NAME}})")
        parts += [text[last : m.start()], m[2]]
        last = m.end()
    parts.append(text[last:])
    return Template(tuple(parts))


# --- compiled rules ---------------------------------------------------------------------------


def _set(value: Names | None, norm=None) -> frozenset[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    return frozenset(norm(v) for v in items) if norm else frozenset(items)


def _tuple(value: Names | None, norm=None) -> tuple[str, ...] | None:
    s = _set(value, norm)
    return None if s is None else tuple(sorted(s))


class Matcher(msgspec.Struct, frozen=True):
    """A rule's ``when``, normalised once at load: the conditions it gives, in the order of
    :data:`CONDITIONS`, each as (key, compiled value)."""

    conditions: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str) -> Any:
        """The compiled value of condition ``key``, or None when the rule does not give it."""
        return next((v for k, v in self.conditions if k == key), None)


class Action(msgspec.Struct, frozen=True):
    """A rule's ``then``, compiled once at load: the keys it gives, in the order of :data:`ACTIONS`, each
    as (key, compiled value, its ``apply``)."""

    steps: tuple[tuple[str, Any, Any], ...] = ()

    def get(self, key: str) -> Any:
        """The compiled value of ``then`` key ``key``, or None when the rule does not give it."""
        return next((v for k, v, _ in self.steps if k == key), None)

    def __getattr__(self, key: str) -> Any:
        # ``rule.then.priority`` reads as ``rule.then.get("priority")`` for every key of the table.
        if key in ACTIONS:
            return self.get(key)
        raise AttributeError(key)


class CompiledRule(msgspec.Struct, frozen=True):
    name: str
    when: Matcher
    then: Action


def compile_rule(rule: Rule, path: str, problems: list[str]) -> CompiledRule:
    """Normalise and check one rule; problems go to ``problems`` with their key paths."""
    w, t = rule.when, rule.then
    if (
        w.min_call_time_s is not None
        and w.max_call_time_s is not None
        and w.min_call_time_s > w.max_call_time_s
    ):
        problems.append(f"{path}.when: min_call_time_s is above max_call_time_s; the rule can never match")
    matcher = Matcher(
        tuple(
            (key, cond.compile(getattr(w, key)))
            for key, cond in CONDITIONS.items()
            if getattr(w, key) is not None
        )
    )
    tp = f"{path}.then"
    # Identity, not equality: 0 is a priority that sets something, and 0 == False.
    given = [k for k in ACTIONS if getattr(t, k) is not None and getattr(t, k) is not False]
    destinations = [k for k in given if k in ("target", "service", "disconnect")]
    if len(destinations) > 1:
        problems.append(f"{tp}: {' and '.join(destinations)} exclude each other; give one")
    sets = sorted(k for k in given if k != "default")
    if t.default and sets:
        problems.append(f"{tp}: default = true means no opinion; it cannot go with {', '.join(sets)}")
    if not t.default and not sets:
        problems.append(f"{tp}: sets nothing (write default = true for an explicit no opinion)")
    action = Action(
        tuple(
            (key, ACTIONS[key].compile(getattr(t, key), f"{tp}.{key}", problems), ACTIONS[key].apply)
            for key in given
        )
    )
    return CompiledRule(name=rule.name, when=matcher, then=action)


# --- actions ----------------------------------------------------------------------------------


class Step(NamedTuple):
    """One ``then`` key: ``compile`` turns its config value (and its key path, for problems) into what
    ``apply`` reads; ``apply`` writes the decision's fields for this caller.

    A field left None, False, empty or () is dropped from the decision. ``service`` names the pool the
    decision takes its ``target`` from, unless a ``target`` is set (``core.decide`` takes the number).
    """

    compile: Callable[[Any, str, list[str]], Any]
    apply: Callable[[Any, dict[str, Any], CallerInfo], None]


def _keep(value: Any, path: str, problems: list[str]) -> Any:
    return value


def _text(key: str) -> Step:
    """A string key whose text may name caller attributes."""

    def apply(tpl: Template, fields: dict[str, Any], caller: CallerInfo) -> None:
        fields[key] = tpl.render(caller)

    return Step(template, apply)


def _value(key: str) -> Step:
    """A key whose value is set as it is."""

    def apply(value: Any, fields: dict[str, Any], caller: CallerInfo) -> None:
        fields[key] = value

    return Step(_keep, apply)


def _agents(value: list[str], path: str, problems: list[str]) -> tuple[Template, ...]:
    return tuple(template(a, f"{path}[{i}]", problems) for i, a in enumerate(value))


def _render_agents(value: tuple[Template, ...], fields: dict[str, Any], caller: CallerInfo) -> None:
    agents = (t.render(caller) for t in value)
    fields["preferred_agents"] = tuple(x for x in agents if x)


def _nothing(value: Any, fields: dict[str, Any], caller: CallerInfo) -> None:
    return None


# Every ``then`` key, in the order a rule's steps are applied. A new key is one entry here, a field of
# :class:`Then`, its rendering in the adapters that show it, and its docs. ``target``, ``service`` and
# ``disconnect`` exclude each other; ``default`` goes with none (checked in :func:`compile_rule`).
ACTIONS: dict[str, Step] = {
    "target": _text("target"),
    "service": _value("service"),
    "disconnect": _value("disconnect"),
    "fail_target": _text("fail_target"),
    "required_agent": _text("required_agent"),
    "preferred_agents": Step(_agents, _render_agents),
    "priority": _value("priority"),
    "extra_priority": _value("extra_priority"),
    "tts": _text("tts"),
    "msi": _text("msi"),
    "default": Step(_keep, _nothing),  # no opinion: sets nothing
}


# --- matching ---------------------------------------------------------------------------------


class Facts(NamedTuple):
    """What a condition may look at besides the query: the caller's facts, the schedules, the time."""

    caller: CallerInfo
    hours: dict[str, Hours]
    now: dt.datetime


class Condition(NamedTuple):
    """One ``when`` key: ``compile`` turns its config value into what ``holds`` reads at each call.
    ``describe``, when given, says what the condition saw of this call, for an explanation."""

    compile: Callable[[Any], Any]
    holds: Callable[[Any, RoutingQuery, Facts], bool]
    describe: Callable[[Any, RoutingQuery, Facts], str] | None = None


def _attrs(value: dict[str, Scalar | list[Scalar]]) -> tuple[tuple[str, tuple[Scalar, ...]], ...]:
    return tuple((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in sorted(value.items()))


def _attributes_hold(want: tuple[tuple[str, tuple[Scalar, ...]], ...], q: RoutingQuery, f: Facts) -> bool:
    return all(key in q.attributes and _same_scalar(q.attributes[key], allowed) for key, allowed in want)


def bucket(q: RoutingQuery) -> int | None:
    """Where ``when.percent`` places this call, 0 to 99: a hash of the caller number, or of the call id
    when there is no caller; None when there is neither (no percent condition holds for such a call).

    The same on every replica, in every process and across reloads (SHA-256, not Python's salted
    ``hash``), and nested: a caller inside ``percent = 10`` is inside ``percent = 20`` too, so a slice
    that grows keeps the callers it had."""
    key = q.caller or q.call_id
    if not key:
        return None
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % 100


def _percent_holds(percent: int, q: RoutingQuery, f: Facts) -> bool:
    b = bucket(q)
    return b is not None and b < percent


def _percent_describe(percent: int, q: RoutingQuery, f: Facts) -> str:
    b = bucket(q)
    if b is None:
        return f"percent {percent}: no caller number and no call id to place the call by, not in it"
    whose = "this caller's" if q.caller else "this call's (by its call id)"
    return f"percent {percent} (buckets 0-{percent - 1}): {whose} bucket {b}, {'in it' if b < percent else 'not in it'}"


# Every ``when`` key, in the order a rule's conditions are checked (and an explanation names the first
# that fails). A new key is one entry here, a field of :class:`When`, and its docs.
CONDITIONS: dict[str, Condition] = {
    "protocol": Condition(_set, lambda v, q, f: q.protocol in v),
    "service": Condition(_set, lambda v, q, f: q.service in v),
    "caller": Condition(lambda v: _set(v, normalise), lambda v, q, f: bool(q.caller) and q.caller in v),
    "caller_prefix": Condition(
        lambda v: _tuple(v, normalise), lambda v, q, f: bool(q.caller) and q.caller.startswith(v)
    ),
    "dialed": Condition(lambda v: _set(v, normalise), lambda v, q, f: bool(q.dialed) and q.dialed in v),
    "dialed_prefix": Condition(
        lambda v: _tuple(v, normalise), lambda v, q, f: bool(q.dialed) and q.dialed.startswith(v)
    ),
    "customer": Condition(_set, lambda v, q, f: bool(q.customer) and q.customer in v),
    "tag": Condition(_set, lambda v, q, f: not v.isdisjoint(f.caller.tags)),
    "open": Condition(_tuple, lambda v, q, f: any(f.hours[n].is_open(f.now) for n in v)),
    "closed": Condition(_tuple, lambda v, q, f: not all(f.hours[n].is_open(f.now) for n in v)),
    "attributes": Condition(_attrs, _attributes_hold),
    "min_call_time_s": Condition(
        lambda v: v, lambda v, q, f: q.call_time_s is not None and q.call_time_s >= v
    ),
    "max_call_time_s": Condition(
        lambda v: v, lambda v, q, f: q.call_time_s is not None and q.call_time_s <= v
    ),
    "percent": Condition(lambda v: v, _percent_holds, _percent_describe),
}


def mismatch(
    m: Matcher, q: RoutingQuery, caller: CallerInfo, hours: dict[str, Hours], now: dt.datetime
) -> str | None:
    """The first condition of ``m`` that does not hold for this call, or None when all hold."""
    if not m.conditions:
        return None
    facts = Facts(caller, hours, now)
    for key, value in m.conditions:
        if not CONDITIONS[key].holds(value, q, facts):
            if key == "attributes":
                # Named down to the attribute that fails.
                for name, allowed in value:
                    if name not in q.attributes or not _same_scalar(q.attributes[name], allowed):
                        return f"attributes.{name}"
            return key
    return None


def verdict(
    m: Matcher, q: RoutingQuery, caller: CallerInfo, hours: dict[str, Hours], now: dt.datetime
) -> tuple[str | None, tuple[str, ...]]:
    """As :func:`mismatch`, with what each condition checked up to that one saw (those that describe
    it, e.g. ``percent``), for an explanation."""
    failed = mismatch(m, q, caller, hours, now)
    facts = Facts(caller, hours, now)
    notes = []
    for key, value in m.conditions:
        describe = CONDITIONS[key].describe
        if describe is not None:
            notes.append(describe(value, q, facts))
        if failed is not None and (key == failed or failed.startswith(key + ".")):
            break
    return failed, tuple(notes)


def _same_scalar(value: Scalar, allowed: tuple[Scalar, ...]) -> bool:
    # true == 1 in Python; a boolean condition must not match a number, nor the reverse.
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)
