"""Every argument of ``every`` and ``cron`` is checked when the decorator is applied,
and a bad one says which argument, what it got and what it takes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from notifelect import ConfigurationError, ElectionGroup, MemoryBus


def group() -> ElectionGroup:
    return ElectionGroup.in_memory(MemoryBus(), "g")


async def job() -> None: ...


# (why, arguments of every(), the message expected)
EVERY = [
    ("interval of 0", {"interval": 0}, r"every\(\) interval must be > 0, got 0"),
    ("negative interval", {"interval": timedelta(seconds=-1)}, r"interval must be > 0"),
    ("interval not a duration", {"interval": "5m"},
     r"every\(\) interval must be a timedelta or seconds, got '5m'"),
    ("interval NaN", {"interval": float("nan")}, r"interval must be a timedelta or seconds"),
    ("interval infinite", {"interval": float("inf")},
     r"every\(\) interval must be a finite duration"),
    ("interval a bool", {"interval": True}, r"interval must be a timedelta or seconds"),
    ("negative jitter", {"interval": 60, "jitter": -1}, r"every\(\) jitter must be >= 0"),
    ("jitter equal to the interval", {"interval": 60, "jitter": 60},
     r"every\(\) jitter must be less than the interval \(60s\), got 60s"),
    ("jitter beyond the interval", {"interval": 60, "jitter": timedelta(minutes=5)},
     r"jitter must be less than the interval \(60s\), got 300s"),
    ("infinite jitter", {"interval": 60, "jitter": float("inf")},
     r"jitter must be a finite duration"),
    ("negative initial_delay", {"interval": 60, "initial_delay": -0.5},
     r"every\(\) initial_delay must be >= 0, got -0.5"),
    ("infinite initial_delay", {"interval": 60, "initial_delay": float("inf")},
     r"initial_delay must be a finite duration"),
    ("initial_delay not a duration", {"interval": 60, "initial_delay": None},
     r"initial_delay must be a timedelta or seconds, got None"),
    ("negative catch_up window", {"interval": 60, "catch_up": -1},
     r"every\(\) catch_up must be 'latest', 'each' or a window"),
    ("negative catch_up timedelta", {"interval": 60, "catch_up": timedelta(seconds=-1)},
     r"catch_up must be 'latest', 'each' or a window"),
    ("unknown catch_up", {"interval": 60, "catch_up": "all"},
     r"catch_up must be 'latest', 'each' or a window .*got 'all'"),
    ("infinite catch_up", {"interval": 60, "catch_up": float("inf")},
     r"catch_up must be 'latest', 'each' or a window"),
    ("run_on_start not a bool", {"interval": 60, "run_on_start": "no"},
     r"every\(\) run_on_start must be True or False, got 'no'"),
    ("keep of 0", {"interval": 60, "keep": 0}, r"every\(\) keep must be an int >= 1, got 0"),
    ("keep a float", {"interval": 60, "keep": 10.0}, r"keep must be an int >= 1, got 10.0"),
    ("empty name", {"interval": 60, "name": ""}, r"every\(\) name must be a non-empty string"),
    ("blank name", {"interval": 60, "name": "  "}, r"name must be a non-empty string"),
    ("name not a string", {"interval": 60, "name": 5}, r"name must be a non-empty string, got 5"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "message"), [pytest.param(*row[1:], id=row[0]) for row in EVERY]
)
def test_bad_arguments_of_every_are_refused_at_once(
    arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        group().every(**arguments)
    assert isinstance(raised.value, ValueError)


# (why, arguments of cron(), the message expected)
CRON = [
    ("expression not a string", {"expression": 5}, r"cron\(\) expression must be a string"),
    ("bad expression", {"expression": "* * *"}, r"invalid cron expression '\* \* \*'"),
    ("unknown time zone", {"expression": "* * * * *", "tz": "Mars/Olympus"},
     r"cron time zone 'Mars/Olympus' is unknown"),
    ("time zone not a string", {"expression": "* * * * *", "tz": None},
     r"cron\(\) tz must be an IANA time zone name"),
    ("jitter of the whole gap", {"expression": "*/5 * * * *", "jitter": timedelta(minutes=5)},
     r"cron\(\) jitter must be less than the shortest gap between two times of the cron "
     r"expression \(300s\), got 300s"),
    ("jitter beyond the shortest gap of an uneven expression",
     {"expression": "0 9,17 * * *", "jitter": timedelta(hours=9)},
     r"shortest gap .* \(28800s\), got 32400s"),
    ("negative jitter", {"expression": "* * * * *", "jitter": -1}, r"cron\(\) jitter must be >= 0"),
    ("run_on_start not a bool", {"expression": "* * * * *", "run_on_start": 1},
     r"cron\(\) run_on_start must be True or False"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "message"), [pytest.param(*row[1:], id=row[0]) for row in CRON]
)
def test_bad_arguments_of_cron_are_refused_at_once(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        group().cron(**arguments)


def test_good_arguments_are_taken() -> None:
    g = group()
    periodic = g.every(60, jitter=59.9, catch_up=timedelta(minutes=5), name="a")(job)
    assert periodic.schedule.jitter == timedelta(seconds=59.9)
    assert periodic.schedule.catch_up == timedelta(minutes=5)
    g.every(timedelta(hours=1), initial_delay=timedelta(days=1), catch_up=0, name="b")(job)
    g.cron("0 9,17 * * *", jitter=timedelta(hours=7), tz="Europe/Oslo", name="c")(job)


def test_a_job_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match=r"every\(\) job is not callable: 5"):
        group().every(60)(5)  # type: ignore[arg-type]
