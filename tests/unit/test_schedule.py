"""The pure schedule rules: next due time from the last scheduled time, and the policies.

Every row gives the clock reading (``now``) explicitly: the rules read no clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from notifelect.errors import ConfigurationError
from notifelect.schedule import CatchUp, Cron, Interval, Plan, Schedule, catch_up_policy

T0 = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def every(seconds: float, **policies: object) -> Schedule:
    return Schedule(Interval(seconds), **policies)  # type: ignore[arg-type]


# (why, schedule, last scheduled (s after T0, None: never ran), first due, now, plan)
PLANS = [
    ("on time: the next is the last scheduled time plus the interval",
     every(2), 0, 0, 0.5, Plan(at(2))),
    ("a hand-over right after a run adds no run and keeps the cadence",
     every(300), 0, 0, 0.13, Plan(at(300))),
    ("a run that started late still anchors on its scheduled time",
     every(2), 10, 0, 10.9, Plan(at(12))),
    ("exactly due", every(2), 10, 0, 12, Plan(at(12))),
    ("never ran: the first is due at the recorded first time",
     every(2), None, 5, 1, Plan(at(5))),
    ("never ran, first time passed: run it (latest of one)",
     every(2), None, 5, 5.5, Plan(at(5))),
    ("one time missed, under one interval late: it runs, late",
     every(2), 10, 0, 13.5, Plan(at(12))),
    ("latest: several missed, run once for the latest, skip the rest",
     every(2), 10, 0, 19.5, Plan(at(18), skipped=3)),
    ("latest: the latest is exactly now",
     every(2), 10, 0, 20, Plan(at(20), skipped=4)),
    ("each: every missed time runs, oldest first",
     every(2, catch_up=CatchUp.EACH), 10, 0, 19.5, Plan(at(12))),
    ("window: a missed time within the window runs",
     every(2, catch_up=timedelta(seconds=3)), 10, 0, 14.5, Plan(at(12))),
    ("window: older times are skipped, the first within the window runs",
     every(2, catch_up=timedelta(seconds=3)), 10, 0, 19.5, Plan(at(16), skipped=2)),
    ("window: no time within the window, wait for the next one",
     every(10, catch_up=timedelta(seconds=1)), 0, 0, 15, Plan(at(20), skipped=1)),
    ("window of 0: every missed time is skipped (beyond the second waking up takes)",
     every(2, catch_up=timedelta(0)), 10, 0, 15.5, Plan(at(16), skipped=2)),
    ("window of 0: a run woken a few milliseconds late still runs",
     every(2, catch_up=timedelta(0)), 10, 0, 12.005, Plan(at(12))),
    ("a long outage with latest: one run, the cadence kept",
     every(300), 0, 0, 86_400 + 7, Plan(at(86_400), skipped=287)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("schedule", "last", "first", "now", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in PLANS],
)
def test_plan(
    schedule: Schedule, last: float | None, first: float, now: float, expected: Plan
) -> None:
    plan = schedule.plan(None if last is None else at(last), at(first), at(now))
    assert plan == expected
    if last is not None:  # never earlier than the last scheduled time plus one step
        assert plan.scheduled_at >= schedule.trigger.after(at(last))


# (why, schedule, first seen at, first due)
FIRSTS = [
    ("default: at once", every(60), at(0)),
    ("initial_delay", every(60, initial_delay=timedelta(seconds=5)), at(5)),
    ("run_on_start=False: one interval later", every(60, run_on_start=False), at(60)),
    ("both", every(60, initial_delay=timedelta(seconds=5), run_on_start=False), at(65)),
    ("cron: its first time", Schedule(Cron("*/5 * * * *"), run_on_start=False), at(300)),
    ("cron, run_on_start: at once", Schedule(Cron("*/5 * * * *")), at(0)),
]


@pytest.mark.parametrize(
    ("schedule", "expected"), [pytest.param(*row[1:], id=row[0]) for row in FIRSTS]
)
def test_first_due(schedule: Schedule, expected: datetime) -> None:
    assert schedule.first_due(at(0)) == expected


def test_a_cron_job_follows_its_expression_in_its_time_zone() -> None:
    schedule = Schedule(Cron("0 9 * * MON-FRI", tz="Europe/Oslo"), run_on_start=False)
    friday_9 = datetime(2026, 1, 9, 8, 0, tzinfo=UTC)  # 09:00 in Oslo (UTC+1)
    monday_9 = datetime(2026, 1, 12, 8, 0, tzinfo=UTC)
    assert schedule.first_due(datetime(2026, 1, 9, 7, 0, tzinfo=UTC)) == friday_9
    # A hand-over on Friday afternoon: the next run is Monday's, never the weekend.
    assert schedule.plan(friday_9, friday_9, datetime(2026, 1, 9, 14, tzinfo=UTC)) == Plan(monday_9)
    # The group had no leader all Monday and Tuesday: latest runs Tuesday's, once.
    tuesday_9 = monday_9 + timedelta(days=1)
    late = datetime(2026, 1, 13, 15, 0, tzinfo=UTC)
    assert schedule.plan(friday_9, friday_9, late) == Plan(tuesday_9, skipped=1)
    each = Schedule(schedule.trigger, catch_up=CatchUp.EACH)
    assert each.plan(friday_9, friday_9, late) == Plan(monday_9)
    window = Schedule(schedule.trigger, catch_up=timedelta(hours=1))
    wednesday_9 = tuesday_9 + timedelta(days=1)
    assert window.plan(friday_9, friday_9, late) == Plan(wednesday_9, skipped=2)


def test_cron_across_a_daylight_saving_change() -> None:
    # Europe/Oslo skips 02:00-03:00 on 2026-03-29: a 02:30 job runs once that day, at 03:00
    # local (01:00 UTC), as Debian's cron does.
    trigger = Cron("30 2 * * *", tz="Europe/Oslo")
    before = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    first = trigger.after(before)
    second = trigger.after(first)
    assert first == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert second == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)  # 02:30 CEST


def test_jitter_is_the_same_for_a_run_on_every_node_and_within_bounds() -> None:
    schedule = every(60, jitter=timedelta(seconds=10))
    starts = [schedule.start_at("reports\0sync", at(60 * i)) for i in range(50)]
    assert starts == [schedule.start_at("reports\0sync", at(60 * i)) for i in range(50)]
    offsets = [(s - at(60 * i)).total_seconds() for i, s in enumerate(starts)]
    assert all(0 <= o < 10 for o in offsets)
    assert len(set(offsets)) > 1
    assert every(60).start_at("x", at(0)) == at(0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("latest", CatchUp.LATEST),
        ("each", CatchUp.EACH),
        (CatchUp.EACH, CatchUp.EACH),
        (30, timedelta(seconds=30)),
        (timedelta(minutes=5), timedelta(minutes=5)),
        (0, timedelta(0)),
    ],
)
def test_catch_up_policies(value: object, expected: object) -> None:
    assert catch_up_policy(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["all", -1, timedelta(seconds=-1), True, None])
def test_a_bad_catch_up_says_what_is_expected(value: object) -> None:
    with pytest.raises(ConfigurationError, match="catch_up must be 'latest', 'each' or a window"):
        catch_up_policy(value)  # type: ignore[arg-type]


def test_bad_triggers_say_what_is_wrong() -> None:
    with pytest.raises(ConfigurationError, match="invalid cron expression '61 \\* \\* \\* \\*'"):
        Cron("61 * * * *")
    with pytest.raises(ConfigurationError, match="cron time zone 'Mars/Olympus' is unknown"):
        Cron("* * * * *", tz="Mars/Olympus")
    with pytest.raises(ConfigurationError, match="an interval must be > 0 seconds"):
        Interval(0)


def test_a_catch_up_window_counts_from_the_jittered_start() -> None:
    # A run delayed by its share of a 5 s jitter wakes up to 5 s after its scheduled time:
    # with a window of 0 it must still run, not be skipped as missed.
    schedule = every(60, catch_up=timedelta(0), jitter=timedelta(seconds=5))
    start = schedule.start_at("k", at(60))
    assert schedule.plan(at(0), at(0), start) == Plan(at(60))
    assert schedule.plan(at(0), at(0), at(60 + 5 + 1.5)) == Plan(at(120), skipped=1)


# (why, schedule, last recorded, own (time, seconds since on the monotonic clock), now,
#  expected anchor (time, ahead, reanchored))
ANCHORS = [
    ("never ran", every(2), None, None, 10, (None, None, False)),
    ("the store's latest", every(2), 10, None, 11, (10, None, False)),
    ("this node's own time when later (a time found already claimed)",
     every(2), 10, (12, 0.5), 12.5, (12, None, False)),
    ("a little ahead: within the tolerance, a clock a little behind",
     every(2), 10, None, 9.5, (10, None, False)),
    ("stepped back, the last run this node's: re-anchored by the monotonic clock",
     every(2), 10, (10, 0.5), 10.5 - 3600, (10.5 - 3600 - 0.5, 3599.5, True)),
    ("stepped back, the last run another node's: re-anchored on now",
     every(2), 10, None, 10.5 - 3600, (10.5 - 3600, 3599.5, True)),
    ("stepped back, already re-anchored by this node: go on from its own time",
     every(2), 10, (-3590, 1.0), -3589, (-3590, 3599, False)),
    ("stepped back, an own time of the old reading is not followed",
     every(2), 10, (8, 3.0), 11 - 3600, (11 - 3600 - 3, 3599, True)),
    ("cron: its times are calendar times, each already ran: go on after the last",
     Schedule(Cron("* * * * *")), 60, None, 60 - 3600, (60, 3600, False)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("schedule", "last", "own", "now", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in ANCHORS],
)
def test_anchor(
    schedule: Schedule,
    last: float | None,
    own: tuple[float, float] | None,
    now: float,
    expected: tuple[float | None, float | None, bool],
) -> None:
    found = schedule.anchor(
        None if last is None else at(last),
        None if own is None else at(own[0]),
        None if own is None else own[1],
        at(now),
    )
    time, ahead, reanchored = expected
    assert found.scheduled_at == (None if time is None else at(time))
    assert found.ahead == (None if ahead is None else timedelta(seconds=ahead))
    assert found.reanchored is reanchored


def test_a_re_anchored_schedule_keeps_one_interval_after_the_last_run() -> None:
    schedule = every(300)
    now = at(10 - 3600)  # the clock stepped back an hour, 10 s after the last run
    anchor = schedule.anchor(at(0), at(0), 10.0, now)
    assert schedule.plan(anchor.scheduled_at, at(0), now) == Plan(now + timedelta(seconds=290))
    late = schedule.anchor(at(0), at(0), 400.0, now)  # the last run is an interval ago
    assert schedule.plan(late.scheduled_at, at(0), now) == Plan(now - timedelta(seconds=100))


def test_the_shortest_gap_of_a_trigger() -> None:
    assert Interval(2.5).shortest_gap(T0) == timedelta(seconds=2.5)
    assert Cron("*/5 * * * *").shortest_gap(T0) == timedelta(minutes=5)
    assert Cron("0 9,17 * * MON-FRI").shortest_gap(T0) == timedelta(hours=8)
