"""When training may run: weekly time windows in the site's local time (``policy.time_windows``).

A window is ``DAYS HH:MM-HH:MM``: ``DAYS`` is one day (``Mon``), a range (``Mon-Fri``, which
may wrap: ``Fri-Mon``), a comma list (``Sat,Sun``) or ``daily``; times are 24-hour, ``24:00``
allowed as an end. A window whose end is not after its start runs across midnight: it opens
on a listed day at the start and closes the next day at the end, so ``Mon-Fri 20:00-06:00``
includes Saturday 05:59 (Friday's night) but not Monday 05:59 (Sunday is not listed).

Pure: the caller passes the local time it means (the daemon's injected clock).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

__all__ = ["DAY_NAMES", "TimeWindow", "in_any_window", "parse_window"]

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
"""Day names in ``datetime.weekday()`` order."""

_WINDOW = re.compile(r"^\s*(\S+)\s+(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True)
class TimeWindow:
    """One weekly window.

    Args:
        days: weekdays (0 = Monday) on which the window opens.
        start: minute of the day it opens (0..1439).
        end: minute of the day it closes (1..1440); not after ``start``: the next day.
        text: the window as written (for messages).
    """

    days: frozenset[int]
    start: int
    end: int
    text: str

    def contains(self, at: datetime) -> bool:
        """Whether local time ``at`` falls in this window (start inclusive, end exclusive)."""
        minute = at.hour * 60 + at.minute
        day = at.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        # Across midnight: the evening part on a listed day, the morning part the day after.
        return (day in self.days and minute >= self.start) or (
            (day - 1) % 7 in self.days and minute < self.end
        )


def parse_window(text: str) -> TimeWindow:
    """Parse ``DAYS HH:MM-HH:MM``.

    Raises:
        ValueError: with a sentence saying what is wrong (the config layer names the key).
    """
    m = _WINDOW.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not 'DAYS HH:MM-HH:MM' (e.g. 'Mon-Fri 20:00-06:00')")
    days = _days(m.group(1))
    start = _minute(int(m.group(2)), int(m.group(3)), text, allow_24=False)
    end = _minute(int(m.group(4)), int(m.group(5)), text, allow_24=True)
    if start == end:
        raise ValueError(f"{text!r} opens and closes at the same time; write 00:00-24:00")
    return TimeWindow(days=days, start=start, end=end, text=text.strip())


def in_any_window(windows: Sequence[TimeWindow], at: datetime) -> bool:
    """Whether ``at`` is inside one of ``windows``; no windows at all means always."""
    return not windows or any(w.contains(at) for w in windows)


def _days(spec: str) -> frozenset[int]:
    if spec.lower() == "daily":
        return frozenset(range(7))
    days: set[int] = set()
    for part in spec.split(","):
        if "-" in part:
            first, last = (_day(p) for p in part.split("-", 1))
            span = (last - first) % 7
            days.update((first + i) % 7 for i in range(span + 1))
        else:
            days.add(_day(part))
    return frozenset(days)


def _day(name: str) -> int:
    for i, day in enumerate(DAY_NAMES):
        if name.strip().lower() == day.lower():
            return i
    raise ValueError(f"unknown day {name!r}; use {', '.join(DAY_NAMES)} or daily")


def _minute(hour: int, minute: int, text: str, *, allow_24: bool) -> int:
    if allow_24 and (hour, minute) == (24, 0):
        return _MINUTES_PER_DAY
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise ValueError(f"{text!r} has a time outside 00:00..23:59")
    return hour * 60 + minute
