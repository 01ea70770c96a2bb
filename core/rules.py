"""Ordered rules: ``when`` conditions, ``then`` actions, first match wins."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

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
    """A rule's ``when``, normalised once at load so matching is set look-ups."""

    protocol: frozenset[str] | None
    service: frozenset[str] | None
    caller: frozenset[str] | None
    caller_prefix: tuple[str, ...] | None
    dialed: frozenset[str] | None
    dialed_prefix: tuple[str, ...] | None
    customer: frozenset[str] | None
    tag: frozenset[str] | None
    open: tuple[str, ...] | None
    closed: tuple[str, ...] | None
    attributes: tuple[tuple[str, tuple[Scalar, ...]], ...] | None
    min_call_time_s: int | None
    max_call_time_s: int | None


class Action(msgspec.Struct, frozen=True):
    """A rule's ``then`` with its strings compiled to templates."""

    target: Template | None
    service: str | None
    disconnect: bool
    fail_target: Template | None
    required_agent: Template | None
    preferred_agents: tuple[Template, ...]
    priority: int | None
    extra_priority: int | None
    tts: Template | None
    msi: Template | None
    default: bool


class CompiledRule(msgspec.Struct, frozen=True):
    name: str
    when: Matcher
    then: Action


def compile_rule(rule: Rule, path: str, problems: list[str]) -> CompiledRule:
    """Normalise and check one rule; problems go to ``problems`` with their key paths."""
    w, t = rule.when, rule.then
    attrs = None
    if w.attributes is not None:
        attrs = tuple((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in sorted(w.attributes.items()))
    if (
        w.min_call_time_s is not None
        and w.max_call_time_s is not None
        and w.min_call_time_s > w.max_call_time_s
    ):
        problems.append(f"{path}.when: min_call_time_s is above max_call_time_s; the rule can never match")
    matcher = Matcher(
        protocol=_set(w.protocol),
        service=_set(w.service),
        caller=_set(w.caller, normalise),
        caller_prefix=_tuple(w.caller_prefix, normalise),
        dialed=_set(w.dialed, normalise),
        dialed_prefix=_tuple(w.dialed_prefix, normalise),
        customer=_set(w.customer),
        tag=_set(w.tag),
        open=_tuple(w.open),
        closed=_tuple(w.closed),
        attributes=attrs,
        min_call_time_s=w.min_call_time_s,
        max_call_time_s=w.max_call_time_s,
    )
    tp = f"{path}.then"
    destinations = [k for k in ("target", "service") if getattr(t, k) is not None] + (
        ["disconnect"] if t.disconnect else []
    )
    if len(destinations) > 1:
        problems.append(f"{tp}: {' and '.join(destinations)} exclude each other; give one")
    # Identity, not equality: 0 is a priority that sets something, and 0 == False.
    sets = {
        f
        for f in t.__struct_fields__
        if f != "default" and getattr(t, f) is not None and getattr(t, f) is not False
    }
    if t.default and sets:
        problems.append(f"{tp}: default = true means no opinion; it cannot go with {', '.join(sorted(sets))}")
    if not t.default and not sets:
        problems.append(f"{tp}: sets nothing (write default = true for an explicit no opinion)")

    def tpl(key: str) -> Template | None:
        value = getattr(t, key)
        return None if value is None else template(value, f"{tp}.{key}", problems)

    action = Action(
        target=tpl("target"),
        service=t.service,
        disconnect=t.disconnect,
        fail_target=tpl("fail_target"),
        required_agent=tpl("required_agent"),
        preferred_agents=tuple(
            template(a, f"{tp}.preferred_agents[{i}]", problems)
            for i, a in enumerate(t.preferred_agents or ())
        ),
        priority=t.priority,
        extra_priority=t.extra_priority,
        tts=tpl("tts"),
        msi=tpl("msi"),
        default=t.default,
    )
    return CompiledRule(name=rule.name, when=matcher, then=action)


# --- matching ---------------------------------------------------------------------------------


def _any(values: frozenset[str] | None, value: str) -> bool:
    return values is None or value in values


def _prefix(prefixes: tuple[str, ...] | None, value: str) -> bool:
    return prefixes is None or (bool(value) and value.startswith(prefixes))


def mismatch(
    m: Matcher, q: RoutingQuery, caller: CallerInfo, hours: dict[str, Hours], now: dt.datetime
) -> str | None:
    """The first condition of ``m`` that does not hold for this call, or None when all hold."""
    if not _any(m.protocol, q.protocol):
        return "protocol"
    if not _any(m.service, q.service):
        return "service"
    if not _any(m.caller, q.caller) or (m.caller is not None and not q.caller):
        return "caller"
    if not _prefix(m.caller_prefix, q.caller):
        return "caller_prefix"
    if not _any(m.dialed, q.dialed) or (m.dialed is not None and not q.dialed):
        return "dialed"
    if not _prefix(m.dialed_prefix, q.dialed):
        return "dialed_prefix"
    if not _any(m.customer, q.customer) or (m.customer is not None and not q.customer):
        return "customer"
    if m.tag is not None and m.tag.isdisjoint(caller.tags):
        return "tag"
    if m.open is not None and not any(hours[n].is_open(now) for n in m.open):
        return "open"
    if m.closed is not None and all(hours[n].is_open(now) for n in m.closed):
        return "closed"
    if m.attributes is not None:
        for key, allowed in m.attributes:
            if key not in q.attributes or not _same_scalar(q.attributes[key], allowed):
                return f"attributes.{key}"
    if m.min_call_time_s is not None and (q.call_time_s is None or q.call_time_s < m.min_call_time_s):
        return "min_call_time_s"
    if m.max_call_time_s is not None and (q.call_time_s is None or q.call_time_s > m.max_call_time_s):
        return "max_call_time_s"
    return None


def _same_scalar(value: Scalar, allowed: tuple[Scalar, ...]) -> bool:
    # true == 1 in Python; a boolean condition must not match a number, nor the reverse.
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)
