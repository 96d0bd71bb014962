"""When a scheduled policy taps: a cron expression or a start time, each for a duration.

Pure: ``Schedule.window_at(now)`` answers whether ``now`` (epoch seconds) falls in
a window and which one, computed from the expression on demand (no timers, no
state), so the decision core can ask on every tick and a daemon started in the
middle of a window still serves its rest.

Cron expressions are the classic five fields (minute hour day month
day-of-week) evaluated by APScheduler 3's ``CronTrigger``, with one
correction: APScheduler counts the day of week from Monday = 0, crontab from
Sunday = 0 (7 is Sunday too); numbers in the fifth field are read the crontab
way here, so ``0 2 * * 0`` means Sundays as an operator expects. When both the
day of month and the day of week are restricted, a day must match both
(APScheduler's rule; crontab would take either).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DOW_PART = re.compile(r"^(?P<range>\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(?P<step>\d+))?$")


class ScheduleError(ValueError):
    """A cron expression, start time or time zone that cannot be used."""


def zone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"unknown time zone {name!r} (e.g. UTC, Europe/Paris)") from exc


def _day(token: str) -> int:
    if token.isdigit():
        number = int(token)
        if not 0 <= number <= 7:
            raise ScheduleError(f"day of week {token} is outside 0..7 (0 and 7 are Sunday)")
        return number % 7
    if token[:3] in _DAY_NAMES and len(token) == 3:
        return _DAY_NAMES.index(token)
    raise ScheduleError(f"day of week {token!r} is neither 0..7 nor sun..sat")


def crontab_days(field: str) -> str:
    """A crontab day-of-week field → APScheduler's (names, so no numbering differs)."""
    field = field.strip().lower()
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        m = _DOW_PART.match(part)
        if not m:
            raise ScheduleError(f"day of week {part!r} does not parse")
        span, step = m["range"], int(m["step"] or 1)
        if step < 1:
            raise ScheduleError(f"day of week {part!r}: step must be at least 1")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            low, high = span.split("-")
            first, last = _day(low), _day(high)
            if high.isdigit() and int(high) == 7:
                last = 7  # 5-7: Friday to Sunday
            if last < first:
                raise ScheduleError(f"day of week range {part!r} runs backwards")
        else:
            first = last = _day(span)
        days.update(d % 7 for d in range(first, last + 1, step))
    return ",".join(_DAY_NAMES[d] for d in sorted(days))


@dataclass(frozen=True)
class Schedule:
    """Windows of ``duration`` seconds starting at each fire time of ``cron``, or
    the single window starting at ``start`` (epoch seconds)."""

    duration: float
    cron: str | None = None
    start: float | None = None
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.start is None):
            raise ScheduleError("give either cron or start")
        self.trigger  # validate now  # noqa: B018

    @property
    def trigger(self) -> CronTrigger | None:
        if self.cron is None:
            return None
        fields = self.cron.split()
        if len(fields) != 5:
            raise ScheduleError(f"cron {self.cron!r}: 5 fields (minute hour day month "
                                f"day-of-week), got {len(fields)}")
        minute, hour, day, month, dow = fields
        try:
            return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                               day_of_week=crontab_days(dow), timezone=zone(self.tz))
        except ScheduleError:
            raise
        except (ValueError, TypeError) as exc:
            raise ScheduleError(f"cron {self.cron!r}: {exc}") from None

    def window_at(self, now: float) -> tuple[float, float] | None:
        """(start, end) of the window ``now`` falls in (end exclusive), or None."""
        if self.start is not None:
            end = self.start + self.duration
            return (self.start, end) if self.start <= now < end else None
        trigger = _trigger(self)
        # The first fire time after (now - duration) starts the window we may be in.
        since = datetime.fromtimestamp(now - self.duration, timezone.utc)
        fire = trigger.get_next_fire_time(None, since + timedelta(microseconds=1))
        if fire is None:
            return None
        start = fire.timestamp()
        return (start, start + self.duration) if start <= now else None

    def next_start(self, now: float) -> float | None:
        """When the next window opens after ``now`` (None: never again)."""
        if self.start is not None:
            return self.start if self.start > now else None
        fire = _trigger(self).get_next_fire_time(
            None, datetime.fromtimestamp(now, timezone.utc) + timedelta(microseconds=1))
        return None if fire is None else fire.timestamp()

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron '{self.cron}' {self.tz}"
        when = datetime.fromtimestamp(self.start or 0, zone(self.tz))
        return f"start {when.isoformat()}"


_TRIGGERS: dict[tuple[str, str], CronTrigger] = {}


def _trigger(schedule: Schedule) -> CronTrigger:
    """The schedule's trigger, built once per expression (they are immutable)."""
    key = (schedule.cron or "", schedule.tz)
    trigger = _TRIGGERS.get(key)
    if trigger is None:
        trigger = schedule.trigger
        assert trigger is not None
        if len(_TRIGGERS) > 1024:
            _TRIGGERS.clear()
        _TRIGGERS[key] = trigger
    return trigger


def format_window(start: float, end: float, tz: str = "UTC") -> str:
    a = datetime.fromtimestamp(start, zone(tz))
    b = datetime.fromtimestamp(end, zone(tz))
    same_day = a.date() == b.date()
    return f"{a:%Y-%m-%d %H:%M:%S}–{b:%H:%M:%S}" if same_day else \
        f"{a:%Y-%m-%d %H:%M:%S}–{b:%Y-%m-%d %H:%M:%S}"
