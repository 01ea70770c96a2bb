"""Known callers: ``[callers]`` entries and CSV files, keyed by normalised number."""

from __future__ import annotations

import csv
import io

import msgspec

from core.numbers import is_phone_number, normalise

AttrValue = str | int | float | bool


class CallerInfo(msgspec.Struct, frozen=True):
    """What is known of a caller: tags and free attributes (as text, ready for templates)."""

    tags: frozenset[str] = frozenset()
    attributes: dict[str, str] = {}

    def merged(self, over: CallerInfo) -> CallerInfo:
        """This entry with ``over`` on top: tags joined, ``over``'s attributes win."""
        return CallerInfo(tags=self.tags | over.tags, attributes={**self.attributes, **over.attributes})


UNKNOWN = CallerInfo()


def as_text(value: AttrValue) -> str:
    """An attribute value as templates show it (booleans as ``true``/``false``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def from_table(
    table: dict[str, dict[str, AttrValue | list[str]]], path: str, problems: list[str]
) -> dict[str, CallerInfo]:
    """Build the directory of ``[callers]``; problems are appended with their key paths."""
    out: dict[str, CallerInfo] = {}
    for raw_number, entry in table.items():
        here = f'{path}."{raw_number}"'
        number = normalise(raw_number)
        if not is_phone_number(number):
            problems.append(f"{here}: can never be a caller's number (an optional + and 3 to 20 digits)")
            continue
        if number in out:
            problems.append(f"{here}: the same number as another entry once normalised ({number})")
            continue
        tags = entry.get("tags", [])
        if not isinstance(tags, list):
            problems.append(f"{here}.tags: expected a list of strings, got {type(tags).__name__}")
            tags = []
        attrs = {}
        for key, value in entry.items():
            if key == "tags":
                continue
            if isinstance(value, list):
                problems.append(f"{here}.{key}: an attribute is a string, number or boolean, not a list")
                continue
            attrs[key] = as_text(value)
        out[number] = CallerInfo(tags=frozenset(tags), attributes=attrs)
    return out


def parse_csv(data: bytes, label: str, problems: list[str], max_problems: int = 20) -> dict[str, CallerInfo]:
    """Parse a caller CSV: header ``number,tags,<attribute>,...``; tags separated by ``;``.

    Empty attribute cells are left out. Problems are appended as ``label:LINE: ...``.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(f"{label}: not UTF-8 ({exc})")
        return {}
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header or [h.strip() for h in header[:2]] != ["number", "tags"]:
        problems.append(f'{label}:1: the header must start with "number,tags"')
        return {}
    names = [h.strip() for h in header[2:]]
    width = len(header)
    out: dict[str, CallerInfo] = {}
    found = 0
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        problem = None
        number = normalise(row[0])
        if len(row) != width:
            problem = f"{len(row)} columns where the header has {width}"
        elif not number:
            problem = "no number"
        elif not is_phone_number(number):
            # A caller never has such a number (and a letter O for a zero is an easy slip): never matched.
            problem = f"{row[0].strip()!r} can never be a caller's number (an optional + and 3 to 20 digits)"
        elif number in out:
            problem = f"{number} appears twice"
        if problem:
            found += 1
            if found <= max_problems:
                problems.append(f"{label}:{line}: {problem}")
            continue
        tags = frozenset(t.strip() for t in row[1].split(";") if t.strip())
        attrs = {n: v for n, v in zip(names, row[2:]) if v != ""}
        out[number] = CallerInfo(tags=tags, attributes=attrs)
    if found > max_problems:
        problems.append(f"{label}: {found - max_problems} more problems like these")
    return out
