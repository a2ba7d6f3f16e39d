"""Scheduled jobs on a database clock that is stepped back or forward.

The jobs plan on the store's clock; here the bus's job store reads a clock the test moves
(the real time plus an offset), while the runs' starts are measured on this process's
monotonic clock.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import pytest

from notifelect import ElectionGroup, MemoryBus, Settings
from notifelect.job_store import memory_store
from notifelect.schedule import WAKE_GRACE
from tests.support.waiting import until

FAST = Settings(election_interval=0.05, election_timeout=0.01, lease=0.5, leader_timeout=0.2)
STEP = 0.3
#: A start may be a few milliseconds early by the monotonic clock compared with the
#: store's clock (the two are read at slightly different moments); far below one step.
SLACK = 0.05 * STEP


class MovableClock:
    """The real time plus an offset the test sets."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "notifelect_event", None) == name]


@pytest.mark.timeout(30)
async def test_a_clock_stepped_back_re_anchors_the_schedule_once_and_keeps_the_cadence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="notifelect")
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    clock = MovableClock()
    store = memory_store(bus)
    store.clock = clock
    starts: list[tuple[int | None, float]] = []
    ran = asyncio.Event()
    async with AsyncExitStack() as stack:
        groups = [ElectionGroup.in_memory(bus, "g", FAST) for _ in range(2)]
        for g in groups:

            @g.every(STEP, name="tick")
            async def tick(g: ElectionGroup = g) -> None:
                starts.append((g.node, time.monotonic()))
                ran.set()

            await stack.enter_async_context(g)
        await until(groups, lambda: len(starts) >= 2)
        ran.clear()
        await ran.wait()  # right after a run
        clock.offset = -timedelta(hours=1)
        stepped = len(starts)
        # Without re-anchoring, the next run would wait an hour.
        await until(groups, lambda: len(starts) >= stepped + 3, timeout=10)
        first = next(g for g in groups if g.is_leader)
        await first.close()  # the next leader did not run the last run: it re-anchors too
        other = next(g for g in groups if g is not first)
        await until([other], lambda: starts[-1][0] == other.node, timeout=10)
        await until([other], lambda: sum(n == other.node for n, _ in starts) >= 3, timeout=10)
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(starts)]
    assert min(gaps) >= STEP - SLACK, gaps  # never two runs closer than one interval
    warned = events(caplog, "job_clock_behind")
    assert [r.notifelect_node for r in warned] == [first.node, other.node]  # type: ignore[attr-defined]
    for record in warned:
        ahead = record.notifelect_ahead  # type: ignore[attr-defined]
        assert 3600 - 2 * STEP - 1 < ahead < 3600
        assert "job tick of group 'g'" in record.getMessage()
        assert "re-anchored its schedule" in record.getMessage()
    assert "one interval after this node's last run" in warned[0].getMessage()
    assert "this node did not run the last run" in warned[1].getMessage()
    runs = await store.runs("g", "tick")
    assert len(runs) == len(starts)  # each run recorded once
    latest = max(r.scheduled_at for r in runs)
    reanchored = [r for r in runs if r.scheduled_at < latest - timedelta(minutes=30)]
    assert len(reanchored) >= 6  # recorded on the clock's new reading


@pytest.mark.parametrize(
    ("catch_up", "jump", "most_in_a_burst"),
    [
        ("latest", timedelta(hours=1), 1),
        (1.0, timedelta(hours=1), math.ceil((1.0 + WAKE_GRACE.total_seconds()) / STEP) + 1),
        ("each", timedelta(seconds=1.5), math.ceil(1.5 / STEP) + 1),
    ],
    ids=["latest", "window", "each"],
)
@pytest.mark.timeout(30)
async def test_a_clock_stepped_forward_runs_no_more_than_catch_up_allows(
    catch_up: str | float, jump: timedelta, most_in_a_burst: int
) -> None:
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    clock = MovableClock()
    memory_store(bus).clock = clock
    starts: list[float] = []
    ran = asyncio.Event()
    group = ElectionGroup.in_memory(bus, "g", FAST)

    @group.every(STEP, name="tick", catch_up=catch_up)
    async def tick() -> None:
        starts.append(time.monotonic())
        ran.set()

    async with group:
        await until([group], lambda: len(starts) >= 2)
        ran.clear()
        await ran.wait()
        before = len(starts)
        clock.offset = jump
        await until([group], lambda: len(starts) >= before + most_in_a_burst + 3, timeout=15)
    gaps = [b - a for a, b in itertools.pairwise(starts[before - 1 :])]
    early = [g for g in gaps if g < STEP - SLACK]
    assert len(early) <= most_in_a_burst, gaps
    # Then the cadence is back: the last runs are one interval apart.
    assert all(g >= STEP - SLACK for g in gaps[-2:]), gaps
