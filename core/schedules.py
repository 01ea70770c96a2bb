"""Opening hours in an IANA time zone, weekly ranges and closed dates."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")


class Schedule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[schedules.NAME]``: a day not given is closed all day."""

    timezone: str
    mon: list[str] = []
    tue: list[str] = []
    wed: list[str] = []
    thu: list[str] = []
    fri: list[str] = []
    sat: list[str] = []
    sun: list[str] = []
    closed_dates: list[str] = []


class Hours(msgspec.Struct, frozen=True):
    """A compiled schedule: minutes since local midnight, per weekday (Monday first)."""

    zone: ZoneInfo
    week: tuple[tuple[tuple[int, int], ...], ...]
    closed: frozenset[dt.date]

    def is_open(self, now: dt.datetime) -> bool:
        """Whether ``now`` (timezone-aware) falls in opening hours, read in the schedule's zone."""
        local = now.astimezone(self.zone)
        if local.date() in self.closed:
            return False
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.week[local.weekday()])


def _minutes(hh: str, mm: str) -> int | None:
    h, m = int(hh), int(mm)
    if m > 59 or h > 24 or (h == 24 and m):
        return None
    return h * 60 + m


def compile_schedule(s: Schedule, path: str, problems: list[str]) -> Hours | None:
    """Check ``s`` and build its :class:`Hours`; every problem found is appended to ``problems``."""
    before = len(problems)
    try:
        zone = ZoneInfo(s.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"{path}.timezone: {s.timezone!r} is not an IANA time zone")
        zone = None
    week = []
    for day in DAYS:
        ranges = []
        for i, text in enumerate(getattr(s, day)):
            m = _RANGE.match(text)
            start = _minutes(m[1], m[2]) if m else None
            end = _minutes(m[3], m[4]) if m else None
            if start is None or end is None:
                problems.append(f'{path}.{day}[{i}]: {text!r} is not "HH:MM-HH:MM"')
            elif end <= start:
                problems.append(
                    f"{path}.{day}[{i}]: {text!r} ends before it starts"
                    " (split a range across midnight over two days)"
                )
            else:
                ranges.append((start, end))
        week.append(tuple(ranges))
    closed = set()
    for i, text in enumerate(s.closed_dates):
        try:
            closed.add(dt.date.fromisoformat(text))
        except ValueError:
            problems.append(f'{path}.closed_dates[{i}]: {text!r} is not a date "YYYY-MM-DD"')
    if len(problems) > before or zone is None:
        return None
    return Hours(zone=zone, week=tuple(week), closed=frozenset(closed))
