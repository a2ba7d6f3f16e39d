"""LeaderScheduler on the in-memory transport: paused on followers, drained on hand-over."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack
from itertools import pairwise

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]
from apscheduler.schedulers.base import (  # type: ignore[import-untyped]
    STATE_PAUSED,
    STATE_STOPPED,
)

from notifelect import ElectionGroup, MemoryBus, Settings
from notifelect.integrations.apscheduler import JOB_PREFIX, LeaderScheduler
from notifelect.job_store import memory_store
from tests.support.waiting import until

FAST = Settings(election_interval=0.05, election_timeout=0.01, lease=0.5, leader_timeout=0.2)


async def test_runs_on_the_leader_only_and_a_hand_over_waits_for_the_run_in_flight() -> None:
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    spans: list[tuple[int | None, float, float]] = []
    release = asyncio.Event()
    async with AsyncExitStack() as stack:
        groups = [ElectionGroup.in_memory(bus, "g", FAST) for _ in range(2)]
        bindings = []
        for g in groups:
            scheduler = AsyncIOScheduler()
            bindings.append(LeaderScheduler(g, scheduler))

            async def report(g: ElectionGroup = g) -> None:
                began = time.monotonic()
                if len(spans) == 2:  # the third run is in flight during the hand-over
                    await release.wait()
                spans.append((g.node, began, time.monotonic()))

            scheduler.add_job(report, "interval", seconds=0.2, id="report")
        for g, binding in zip(groups, bindings, strict=True):
            await stack.enter_async_context(g)
            await stack.enter_async_context(binding)
        await until(groups, lambda: sum(g.is_leader for g in groups) == 1)
        first = next(g for g in groups if g.is_leader)
        other = next(g for g in groups if g is not first)
        await until(groups, lambda: len(spans) >= 2)
        store = memory_store(bus)
        await until(groups, lambda: len(store.records.get(("g", JOB_PREFIX + "report"), {})) >= 3)
        closing = asyncio.create_task(first.close())  # hand over with a run in flight
        await until([other], lambda: first.leadership is None or not first.is_leader)
        release.set()
        await closing
        await until([other], lambda: {s[0] for s in spans} == {first.node, other.node})
        await until([other], lambda: len(spans) >= 6)
    by_node = [s[0] for s in spans]
    switch = by_node.index(other.node)
    assert set(by_node[:switch]) == {first.node}  # one leader at a time
    assert set(by_node[switch:]) == {other.node}
    assert spans[switch][1] >= spans[switch - 1][2]  # the successor ran after the last run
    runs = await store.runs("g", JOB_PREFIX + "report")
    steps = [b.scheduled_at - a.scheduled_at for a, b in pairwise(runs)]
    assert all(step.total_seconds() >= 0.199 for step in steps), steps  # never earlier
    assert {r.outcome for r in runs[:-1]} <= {"succeeded", "missed"}


async def test_closing_the_scheduler_lets_the_run_in_flight_finish_under_the_leadership() -> None:
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    started = asyncio.Event()
    release = asyncio.Event()
    ends: list[str] = []
    group = ElectionGroup.in_memory(bus, "g", FAST)
    scheduler = AsyncIOScheduler()
    binding = LeaderScheduler(group, scheduler)

    async def report() -> None:
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            ends.append("cancelled")
            raise
        ends.append(f"finished, leading: {group.is_leader}")

    scheduler.add_job(report, "interval", seconds=0.1, id="report")
    async with group:
        await binding.__aenter__()
        await asyncio.wait_for(started.wait(), timeout=5)
        closing = asyncio.create_task(binding.__aexit__(None, None, None))
        await until([group], lambda: scheduler.state == STATE_PAUSED)  # no new run starts
        assert not closing.done()
        assert ends == []  # the run in flight goes on
        release.set()
        await asyncio.wait_for(closing, timeout=5)
        assert scheduler.state == STATE_STOPPED
    assert ends == ["finished, leading: True"]
    (run,) = await memory_store(bus).runs("g", JOB_PREFIX + "report")
    assert run.outcome == "succeeded"


async def test_a_run_that_outlives_finish_timeout_is_cancelled_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="notifelect")
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    started = asyncio.Event()
    ends: list[str] = []
    group = ElectionGroup.in_memory(bus, "g", FAST.replace(finish_timeout=0.2))
    scheduler = AsyncIOScheduler()
    binding = LeaderScheduler(group, scheduler)

    async def stuck() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ends.append("cancelled")
            raise

    scheduler.add_job(stuck, "interval", seconds=0.1, id="stuck")
    async with group:
        async with binding:
            await asyncio.wait_for(started.wait(), timeout=5)
        await until([group], lambda: ends == ["cancelled"])
    (run,) = await memory_store(bus).runs("g", JOB_PREFIX + "stuck")
    assert (run.outcome, run.error) == ("failed", "CancelledError()")
    (warned,) = [r for r in caplog.records if "after the scheduler was closed" in r.getMessage()]
    assert warned.levelno == logging.WARNING
    assert "APScheduler jobs stuck of group 'g' still running 0.2s" in warned.getMessage()
    assert "jobs in threads or processes cannot be interrupted" in warned.getMessage()
