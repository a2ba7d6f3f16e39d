"""When a group's job is due: pure functions of the last scheduled time and a clock reading.

Nothing here reads a clock or does I/O: the caller passes ``now`` (the database's clock,
for the jobs of an election group), so every rule is a table test. A schedule is a
:class:`Trigger` (a fixed :class:`Interval`, or a :class:`Cron` expression in a time zone)
plus policies:

* the next run is due at the trigger's next time after the previous run's *scheduled*
  time, never earlier, whoever leads and whenever that run actually started;
* ``catch_up`` says what happens to scheduled times that passed without a run (the group
  had no leader, a run overran): run only the latest of them (``"latest"``, the default),
  run each in turn (``"each"``), or run those no older than a window (a ``timedelta``)
  and skip the rest;
* the first run of a job the group never ran is due ``initial_delay`` after it was first
  seen, at once (``run_on_start``) or at the trigger's first time after that;
* ``jitter`` delays each start by a fraction of it drawn from the job's name and the
  scheduled time, so every node draws the same for the same run;
* a clock that reads *before* the last scheduled time (beyond :data:`CLOCK_TOLERANCE`)
  was stepped back: an interval schedule is re-anchored on the clock's new reading
  (:meth:`Schedule.anchor`), so the step does not stall it; a cron schedule's times are
  calendar times, each of which already ran, so it goes on after the last one.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigurationError

__all__ = [
    "Anchor",
    "CatchUp",
    "Cron",
    "Interval",
    "Plan",
    "Schedule",
    "Trigger",
    "catch_up_policy",
]

_MICRO = timedelta(microseconds=1)
#: How many passed times of a cron expression are counted one by one for a plan's
#: ``skipped`` (beyond it the count is a lower bound; the plan itself is exact).
_COUNT_LIMIT = 10_000
#: How many times of a cron expression its shortest gap is looked for in.
GAP_SAMPLE = 1000


class Trigger(Protocol):
    """The times a job is due at, as a grid."""

    def describe(self) -> str:
        """The trigger as text (stored with the job, shown by ``status``)."""
        ...

    def after(self, t: datetime) -> datetime:
        """The first time of the grid strictly after ``t``."""
        ...

    def latest(self, anchor: datetime, at: datetime) -> datetime:
        """The last time of the grid through ``anchor`` (a time of it) that is at or
        before ``at`` (``anchor <= at``)."""
        ...

    def earliest(self, anchor: datetime, at: datetime) -> datetime:
        """The first time of the grid through ``anchor`` that is at or after ``at``."""
        ...

    def count(self, anchor: datetime, until: datetime) -> int:
        """How many times of the grid through ``anchor`` lie in ``[anchor, until)``."""
        ...

    def period(self) -> timedelta | None:
        """The fixed step between two times, or None for a calendar grid (cron)."""
        ...

    def shortest_gap(self, since: datetime) -> timedelta:
        """The shortest time between two consecutive times of the grid (for a calendar
        grid: over its next :data:`GAP_SAMPLE` times after ``since``)."""
        ...


@dataclass(frozen=True)
class Interval:
    """Every ``seconds``, counted from the previous scheduled time (microsecond steps)."""

    seconds: float

    def __post_init__(self) -> None:
        if not self.seconds > 0 or math.isinf(self.seconds):
            raise ConfigurationError(f"an interval must be > 0 seconds, got {self.seconds!r}")

    @property
    def step(self) -> timedelta:
        return timedelta(microseconds=max(1, round(self.seconds * 1_000_000)))

    def describe(self) -> str:
        return f"every {self.seconds:g}s"

    def after(self, t: datetime) -> datetime:
        return t + self.step

    def latest(self, anchor: datetime, at: datetime) -> datetime:
        return anchor + self.step * ((at - anchor) // self.step)

    def earliest(self, anchor: datetime, at: datetime) -> datetime:
        return anchor + self.step * -((anchor - at) // self.step)

    def count(self, anchor: datetime, until: datetime) -> int:
        return max(0, -((anchor - until) // self.step))

    def period(self) -> timedelta:
        return self.step

    def shortest_gap(self, since: datetime) -> timedelta:
        return self.step


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression (``"*/5 * * * *"``) read in the time zone ``tz``.

    Needs the ``cron`` extra (``pip install 'notifelect[cron]'``, which brings
    ``cronsim``). Times that a daylight-saving change skips or repeats follow cronsim's
    rules (those of Debian's cron).
    """

    expression: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(
                f"cron time zone {self.tz!r} is unknown: give an IANA name such as "
                "'Europe/Oslo' or 'UTC' (the tzdata package provides them where the system "
                "has none)"
            ) from exc
        cronsim = _cronsim()
        try:
            cronsim.CronSim(self.expression, datetime.now(UTC))
        except cronsim.CronSimError as exc:
            raise ConfigurationError(
                f"invalid cron expression {self.expression!r}: {exc}; five fields are "
                "expected: minute hour day-of-month month day-of-week"
            ) from None

    def describe(self) -> str:
        return f"cron {self.expression} ({self.tz})"

    def _iterate(self, t: datetime, reverse: bool = False) -> datetime:
        local = t.astimezone(ZoneInfo(self.tz))
        found: datetime = next(_cronsim().CronSim(self.expression, local, reverse=reverse))
        return found.astimezone(UTC)

    def after(self, t: datetime) -> datetime:
        return self._iterate(t)

    def latest(self, anchor: datetime, at: datetime) -> datetime:
        # cronsim goes strictly backwards: start just after ``at`` to include it.
        return max(anchor, self._iterate(at + _MICRO, reverse=True))

    def earliest(self, anchor: datetime, at: datetime) -> datetime:
        return anchor if at <= anchor else self._iterate(at - _MICRO)

    def count(self, anchor: datetime, until: datetime) -> int:
        n, t = 0, anchor
        while t < until and n < _COUNT_LIMIT:
            n, t = n + 1, self._iterate(t)
        return n

    def period(self) -> None:
        return None

    def shortest_gap(self, since: datetime) -> timedelta:
        local = since.astimezone(ZoneInfo(self.tz))
        times = _cronsim().CronSim(self.expression, local)
        previous = next(times)
        shortest: timedelta | None = None
        for _ in range(GAP_SAMPLE - 1):
            following = next(times, None)
            if following is None:
                break
            gap = following.astimezone(UTC) - previous.astimezone(UTC)
            shortest = gap if shortest is None else min(shortest, gap)
            previous = following
        return shortest if shortest is not None else timedelta(days=366)


def _cronsim() -> Any:
    try:
        import cronsim
    except ImportError:
        raise ConfigurationError(
            "cron schedules need the cron extra: pip install 'notifelect[cron]' (it "
            "installs cronsim)"
        ) from None
    return cronsim


class CatchUp(enum.Enum):
    """What to do with scheduled times that passed without a run."""

    LATEST = "latest"  # run once, for the latest of them; skip the others
    EACH = "each"  # run each of them, one after the other


def catch_up_policy(value: CatchUp | str | timedelta | float) -> CatchUp | timedelta:
    """Check a ``catch_up`` argument: ``"latest"``, ``"each"`` or a window (``timedelta``
    or seconds, >= 0) within which passed times still run."""
    if isinstance(value, CatchUp):
        return value
    if isinstance(value, str):
        try:
            return CatchUp(value)
        except ValueError:
            pass
    elif isinstance(value, timedelta) and value >= timedelta(0):
        return value
    elif isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        with contextlib.suppress(OverflowError, ValueError):  # inf, or beyond a timedelta
            return timedelta(seconds=value)
    raise ConfigurationError(
        f"catch_up must be 'latest', 'each' or a window (a timedelta or seconds >= 0), "
        f"got {value!r}"
    )


@dataclass(frozen=True)
class Plan:
    """The next run: its scheduled time, and how many passed times it skips."""

    scheduled_at: datetime
    skipped: int = 0


#: How late a run may start, after its scheduled time, for waking up and claiming it; a
#: ``catch_up`` window counts from there (plus the ``jitter``).
WAKE_GRACE = timedelta(seconds=1)

#: How far the last scheduled time may lie ahead of the clock before the clock is taken
#: to have been stepped back (a run starts at or after its scheduled time, so on a clock
#: that only moves forward it never lies ahead; a database failover to a server whose
#: clock is a little behind may put it a little ahead).
CLOCK_TOLERANCE = timedelta(seconds=1)


@dataclass(frozen=True)
class Anchor:
    """Where the next run is planned from (:meth:`Schedule.anchor`).

    ``scheduled_at`` is the scheduled time to plan from (None: the job never ran);
    ``ahead`` is how far the latest recorded scheduled time lies ahead of the clock when
    the clock was stepped back (None otherwise); ``reanchored`` says that the schedule was
    moved onto the clock's new reading rather than continued from a recorded time.
    """

    scheduled_at: datetime | None
    ahead: timedelta | None = None
    reanchored: bool = False


@dataclass(frozen=True)
class Schedule:
    """A trigger and its policies (see the module docstring)."""

    trigger: Trigger
    catch_up: CatchUp | timedelta = CatchUp.LATEST
    jitter: timedelta = timedelta(0)
    initial_delay: timedelta = timedelta(0)
    run_on_start: bool = True

    def describe(self) -> str:
        return self.trigger.describe()

    def first_due(self, now: datetime) -> datetime:
        """When the first run of a job the group never ran is due, first seen at ``now``."""
        start = now + self.initial_delay
        return start if self.run_on_start else self.trigger.after(start)

    def anchor(
        self,
        last: datetime | None,
        own: datetime | None,
        since_own: float | None,
        now: datetime,
    ) -> Anchor:
        """The scheduled time to plan the next run from, as seen at ``now``.

        ``last`` is the latest scheduled time the store recorded; ``own`` the latest one
        this node claimed (or found claimed), ``since_own`` the seconds since that time on
        the node's own monotonic clock. Normally the later of the two. When both lie
        ahead of ``now`` beyond :data:`CLOCK_TOLERANCE`, the clock was stepped back:

        * an interval schedule goes on from ``own`` if ``own`` is a time of the clock's
          new reading (``now - own`` agrees with ``since_own``: the node already
          re-anchored), else it is re-anchored: ``own`` (or, unknown, ``now`` itself) is
          placed on the new reading ``since_own`` seconds back, so the next run keeps at
          least one interval after the node's last run, by the monotonic clock;
        * a cron schedule goes on after the latest recorded time: its times are calendar
          times and each of them already ran.
        """
        known = [t for t in (last, own) if t is not None]
        if not known:
            return Anchor(None)
        latest = max(known)
        ahead = latest - now
        if ahead <= CLOCK_TOLERANCE or self.trigger.period() is None:
            return Anchor(latest, ahead if ahead > CLOCK_TOLERANCE else None)
        if own is not None and since_own is not None:
            if (
                own - now <= CLOCK_TOLERANCE
                and abs((now - own).total_seconds() - since_own) <= CLOCK_TOLERANCE.total_seconds()
            ):
                return Anchor(own, ahead)
            return Anchor(now - timedelta(seconds=max(0.0, since_own)), ahead, True)
        return Anchor(now, ahead, True)

    def plan(self, last_scheduled: datetime | None, first_due: datetime, now: datetime) -> Plan:
        """The next run after the one scheduled at ``last_scheduled`` (None: no run yet,
        the first is due at ``first_due``), as seen at ``now``. Never before the
        trigger's next time after ``last_scheduled``."""
        due = first_due if last_scheduled is None else self.trigger.after(last_scheduled)
        if due > now or self.catch_up is CatchUp.EACH:
            return Plan(due)
        if self.catch_up is CatchUp.LATEST:
            latest = self.trigger.latest(due, now)
            return Plan(latest, self.trigger.count(due, latest))
        assert isinstance(self.catch_up, timedelta)
        # A time counts as missed only once it is older than the window plus what waking
        # up for it takes (the loop sleeps until the time and its share of the jitter,
        # then reads the clock again).
        oldest = now - self.catch_up - WAKE_GRACE - self.jitter
        if due >= oldest:
            return Plan(due)
        first = self.trigger.earliest(due, oldest)
        return Plan(first, self.trigger.count(due, first))

    def start_at(self, key: str, scheduled_at: datetime) -> datetime:
        """When the run scheduled at ``scheduled_at`` starts: plus its share of jitter,
        the same on every node (drawn from ``key`` and the time)."""
        if not self.jitter:
            return scheduled_at
        seed = f"{key}\0{scheduled_at.isoformat()}".encode()
        fraction = int.from_bytes(hashlib.blake2b(seed, digest_size=8).digest()) / 2**64
        return scheduled_at + self.jitter * fraction
