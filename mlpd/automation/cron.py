"""Five-field cron expressions (minute hour day-of-month month day-of-week), as crontab(5) reads them.

Each field takes `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, and lists of those; months
and days of the week also by name (jan, mon); day of week 0 or 7 is Sunday. When both the day of
the month and the day of the week are restricted, a day matching either runs (cron's own rule).
`@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly` and `@yearly` (`@annually`) are shorthands.

Times are wall-clock times in the schedule's time zone (zoneinfo). Across a daylight-saving change
a wall time that does not exist is skipped and one that exists twice runs once (its first time).
Pure: nothing here reads the clock.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mlpd.errors import MlpdError

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
SHORTHANDS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
              "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
FIELDS = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()), ("month", 1, 12, MONTHS),
          ("day of week", 0, 7, DAYS))
SEARCH_YEARS = 5  # an expression with no time in this many years (Feb 30) has none


class CronError(MlpdError):
    """A cron expression or time zone that cannot be read; the message says which part and why."""

    def __init__(self, message: str):
        super().__init__(400, "invalid_field", message)


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression: the sets of minutes, hours, days, months and weekdays (0 = Sunday) it matches."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool  # day of month is *
    any_weekday: bool  # day of week is *

    def matches_day(self, day: dt.date) -> bool:
        """Whether the expression runs on this date (cron's rule when both day fields are restricted)."""
        if day.month not in self.months:
            return False
        in_month, in_week = day.day in self.days, (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week


def _field(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> frozenset[int]:
    values: set[int] = set()

    def number(token: str) -> int:
        token = token.strip().lower()
        if names and token in names:
            return names.index(token) + (1 if name == "month" else 0)
        if not token.isdigit():
            raise CronError(f"cron: {name}: {token!r} is not a number{' or a name (' + ', '.join(names[:3]) + ', ...)' if names else ''}")
        value = int(token)
        if not low <= value <= high:
            raise CronError(f"cron: {name}: {value} is out of range ({low}-{high})")
        return value

    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"cron: {name}: step {step_text!r} must be a whole number of at least 1")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = number(a), number(b)
            if first > last:
                raise CronError(f"cron: {name}: range {base!r} runs backwards")
        elif base:
            first = number(base)
            last = high if step_text else first
        else:
            raise CronError(f"cron: {name}: empty part in {text!r}")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def parse(text: str) -> Cron:
    """Parse a cron expression; CronError names the field that is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise CronError("cron: expected an expression such as '0 3 * * *' (minute hour day month weekday)")
    if len(text) > 200:
        raise CronError("cron: at most 200 characters")
    expanded = SHORTHANDS.get(text.strip().lower(), text)
    parts = expanded.split()
    if len(parts) != 5:
        raise CronError(f"cron: {text!r} has {len(parts)} fields; expected 5 (minute hour day-of-month month day-of-week), "
                        "e.g. '0 3 * * *' for 03:00 every day")
    sets = [_field(p, name, low, high, names) for p, (name, low, high, names) in zip(parts, FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    return Cron(text.strip(), sets[0], sets[1], sets[2], sets[3], weekdays, parts[2] == "*", parts[4] == "*")


def zone(name: str) -> ZoneInfo:
    """The time zone named (IANA, e.g. Europe/Berlin; UTC); CronError otherwise."""
    try:
        if not isinstance(name, str) or not name or len(name) > 64 or name.startswith("/") or ".." in name:
            raise ValueError
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"timezone: unknown time zone {str(name)[:64]!r}; use an IANA name such as UTC or Europe/Berlin") from None


def next_after(cron: Cron, after: float, tz: ZoneInfo) -> float | None:
    """The first time (epoch seconds) after `after` that the expression names in zone `tz`; None if none within SEARCH_YEARS."""
    local = dt.datetime.fromtimestamp(after, tz).replace(tzinfo=None, second=0, microsecond=0) + dt.timedelta(minutes=1)
    end = local + dt.timedelta(days=366 * SEARCH_YEARS)
    while local < end:
        if not cron.matches_day(local.date()):
            local = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time())
            continue
        if local.hour not in cron.hours:
            local = local.replace(minute=0) + dt.timedelta(hours=1)
            continue
        if local.minute not in cron.minutes:
            local += dt.timedelta(minutes=1)
            continue
        aware = local.replace(tzinfo=tz, fold=0)
        at = aware.timestamp()
        # a wall time skipped by a daylight-saving change maps outside the hour; one already past is a repeat (fold)
        if at > after and dt.datetime.fromtimestamp(at, tz).replace(tzinfo=None) == local:
            return at
        local += dt.timedelta(minutes=1)
    return None


def latest_at_or_before(cron: Cron, after: float, now: float, tz: ZoneInfo, limit: int = 200_000) -> tuple[float | None, int]:
    """The last time in (after, now] the expression names, and how many times it named there (capped at `limit`)."""
    latest: float | None = None
    count, at = 0, after
    while count < limit:
        nxt = next_after(cron, at, tz)
        if nxt is None or nxt > now:
            break
        latest, count, at = nxt, count + 1, nxt
    return latest, count
