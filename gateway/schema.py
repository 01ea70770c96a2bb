"""Structural check of a config against its Struct types, listing every problem (msgspec stops at one)."""

from __future__ import annotations

import re
from typing import Any

import msgspec.inspect as mi

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def key_path(path: str, key: str) -> str:
    """``path.key``, quoting keys that TOML would quote."""
    part = key if _BARE.match(key) else '"' + key.replace('"', '\\"') + '"'
    return f"{path}.{part}" if path else part


def describe(t: mi.Type) -> str:
    """A type as an operator reads it: ``an integer``, ``a string or a list of strings``."""
    if isinstance(t, mi.UnionType):
        return " or ".join(describe(m) for m in t.types if not isinstance(m, mi.NoneType))
    if isinstance(t, mi.ListType):
        plural = {mi.StrType: "strings", mi.IntType: "integers", mi.StructType: "tables"}
        return "a list of " + plural.get(type(t.item_type), f"({describe(t.item_type)})")
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(repr(v) for v in t.values)
    return {
        mi.IntType: "an integer",
        mi.FloatType: "a number",
        mi.StrType: "a string",
        mi.BoolType: "true or false",
        mi.StructType: "a table",
        mi.DictType: "a table",
    }.get(type(t), "a value")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _fits(value: Any, t: mi.Type) -> bool:
    probe: list[str] = []
    check(value, t, "", probe)
    return not probe


def check(value: Any, t: mi.Type, path: str, problems: list[str]) -> None:
    """Append to ``problems`` every way ``value`` (parsed TOML) fails type ``t``, each with its path."""
    if isinstance(t, mi.StructType):
        if not isinstance(value, dict):
            problems.append(f"{path or '(top)'}: expected a table, got {_kind(value)}")
            return
        fields = {f.encode_name: f for f in t.fields}
        for key in value:
            if key not in fields:
                known = ", ".join(fields)
                problems.append(f"{key_path(path, key)}: unknown key (known here: {known})")
        for name, f in fields.items():
            if name in value:
                check(value[name], f.type, key_path(path, name), problems)
            elif f.required:
                problems.append(f"{key_path(path, name)}: missing")
    elif isinstance(t, mi.DictType):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a table, got {_kind(value)}")
            return
        for k, v in value.items():
            check(v, t.value_type, key_path(path, k), problems)
    elif isinstance(t, mi.ListType):
        if not isinstance(value, list):
            problems.append(f"{path}: expected {describe(t)}, got {_kind(value)}")
            return
        if t.min_length is not None and len(value) < t.min_length:
            problems.append(f"{path}: needs at least {t.min_length} item{'s' * (t.min_length > 1)}")
        if t.max_length is not None and len(value) > t.max_length:
            problems.append(f"{path}: at most {t.max_length} items")
        for i, v in enumerate(value):
            check(v, t.item_type, f"{path}[{i}]", problems)
    elif isinstance(t, mi.UnionType):
        members = [m for m in t.types if not isinstance(m, mi.NoneType)]
        if len(members) == 1:
            check(value, members[0], path, problems)
            return
        if any(_fits(value, m) for m in members):
            return
        # One member of the value's own shape: report from inside it, for the precise path.
        same = [m for m in members if _kind(value) == _kind_of_type(m)]
        if len(same) == 1:
            check(value, same[0], path, problems)
        else:
            problems.append(f"{path}: expected {describe(t)}, got {_kind(value)}")
    elif isinstance(t, (mi.IntType, mi.FloatType)):
        number = isinstance(t, mi.FloatType)
        if isinstance(value, bool) or not isinstance(value, (int, float) if number else int):
            problems.append(f"{path}: expected {describe(t)}, got {_kind(value)}")
        else:
            _bounds(value, t, path, problems)
    elif isinstance(t, mi.StrType):
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {_kind(value)}")
        elif t.min_length is not None and len(value) < t.min_length:
            problems.append(f"{path}: must not be empty")
        elif t.max_length is not None and len(value) > t.max_length:
            problems.append(f"{path}: longer than {t.max_length} characters")
    elif isinstance(t, mi.BoolType):
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {_kind(value)}")
    elif isinstance(t, mi.LiteralType) and (value not in t.values or isinstance(value, bool)):
        problems.append(f"{path}: {value!r} is not {describe(t)}")


def _bounds(value: float, t: mi.IntType | mi.FloatType, path: str, problems: list[str]) -> None:
    """The ``Meta(ge=, le=, gt=, lt=)`` bounds of a number, read from the one schema msgspec enforces."""
    if t.ge is not None and value < t.ge:
        problems.append(f"{path}: {value} is below {t.ge}")
    elif t.gt is not None and value <= t.gt:
        problems.append(f"{path}: {value} must be above {t.gt}")
    elif t.le is not None and value > t.le:
        problems.append(f"{path}: {value} is above {t.le}")
    elif t.lt is not None and value >= t.lt:
        problems.append(f"{path}: {value} must be below {t.lt}")
    elif t.multiple_of is not None and value % t.multiple_of:
        problems.append(f"{path}: {value} is not a multiple of {t.multiple_of}")


def _kind_of_type(t: mi.Type) -> str:
    if isinstance(t, (mi.StructType, mi.DictType)):
        return "a table"
    if isinstance(t, mi.ListType):
        return "a list"
    return ""


_BAD = object()


def prune(value: Any, t: mi.Type) -> Any:
    """``value`` with every part that fails ``t`` removed, so what is left converts; ``_BAD`` when
    nothing usable is left. Lets the cross-table checks run on an invalid config."""
    if isinstance(t, mi.StructType):
        if not isinstance(value, dict):
            return _BAD
        out = {}
        for f in t.fields:
            if f.encode_name in value:
                v = prune(value[f.encode_name], f.type)
                if v is not _BAD:
                    out[f.encode_name] = v
            if f.required and f.encode_name not in out:
                return _BAD
        return out
    if isinstance(t, mi.DictType):
        if not isinstance(value, dict):
            return _BAD
        pruned = {k: prune(v, t.value_type) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v is not _BAD}
    if isinstance(t, mi.ListType):
        if not isinstance(value, list):
            return _BAD
        items = [v for v in (prune(v, t.item_type) for v in value) if v is not _BAD]
        return items if t.min_length is None or len(items) >= t.min_length else _BAD
    if isinstance(t, mi.UnionType):
        members = [m for m in t.types if not isinstance(m, mi.NoneType)]
        if len(members) == 1:
            return prune(value, members[0])
    return value if _fits(value, t) else _BAD
