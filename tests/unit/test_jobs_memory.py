"""Scheduled jobs on the in-memory transport: the schedule belongs to the group.

The runs are recorded in the bus's job store, as they are in the database for groups on
PostgreSQL (tests/integration/test_jobs.py runs the same story there).
"""

from __future__ import annotations

import asyncio
import itertools
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import pytest

from notifelect import (
    ConfigurationError,
    ElectionGroup,
    JobRun,
    MemoryBus,
    RunRecord,
    Settings,
    current_run,
)
from notifelect.job_store import memory_store
from tests.support.waiting import until

FAST = Settings(election_interval=0.05, election_timeout=0.01, lease=0.5, leader_timeout=0.2)


async def join(stack: AsyncExitStack, groups: list[ElectionGroup]) -> ElectionGroup:
    for g in groups:
        await stack.enter_async_context(g)
    await until(groups, lambda: sum(g.is_leader for g in groups) == 1)
    return next(g for g in groups if g.is_leader)


def gaps(runs: list[RunRecord]) -> list[timedelta]:
    return [b.scheduled_at - a.scheduled_at for a, b in itertools.pairwise(runs)]


async def test_a_hand_over_continues_the_schedule_without_an_extra_run() -> None:
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    store = memory_store(bus)
    ran = asyncio.Event()
    async with AsyncExitStack() as stack:
        groups = [ElectionGroup.in_memory(bus, "g", FAST) for _ in range(3)]
        for g in groups:

            @g.every(0.4, name="tick")
            async def tick() -> None:
                ran.set()

        first = await join(stack, groups)
        await until(groups, lambda: len(store.records.get(("g", "tick"), {})) >= 2)
        ran.clear()
        await ran.wait()  # right after a run: the worst moment for a restarting schedule
        await first.close()
        rest = [g for g in groups if g is not first]
        await until(rest, lambda: len({r.node for r in store.records["g", "tick"].values()}) == 2)
        await until(rest, lambda: len(store.records["g", "tick"]) >= 5)
    runs = await store.runs("g", "tick")
    assert gaps(runs) == [timedelta(seconds=0.4)] * (len(runs) - 1)
    assert all(r.started_at >= r.scheduled_at for r in runs)
    assert all(b.started_at >= a.ended_at for a, b in itertools.pairwise(runs) if a.ended_at)
    assert {r.outcome for r in runs[:-1]} == {"succeeded"}
    assert len({r.term for r in runs}) == 2


async def test_a_run_in_progress_finishes_before_the_next_leader_starts() -> None:
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    store = memory_store(bus)
    started = asyncio.Event()
    release = asyncio.Event()
    seen: list[JobRun | None] = []
    async with AsyncExitStack() as stack:
        groups = [ElectionGroup.in_memory(bus, "g", FAST) for _ in range(2)]
        for g in groups:

            @g.every(0.2, name="slow")
            async def slow() -> None:
                seen.append(current_run())
                started.set()
                if len(seen) == 1:
                    await release.wait()

        first = await join(stack, groups)
        await started.wait()
        closing = asyncio.create_task(first.close())  # a deploy: hand over mid-run
        await until(groups, lambda: first.leadership is None or not first.is_leader)
        release.set()
        await closing
        other = next(g for g in groups if g is not first)
        await until([other], lambda: len(store.records["g", "slow"]) >= 3)
    runs = await store.runs("g", "slow")
    assert runs[0].outcome == "succeeded"
    assert runs[0].ended_at is not None
    assert runs[1].started_at >= runs[0].ended_at
    # The slow run delayed the schedule; the next one is its successor in the grid (the
    # latest of the times that passed meanwhile), never a second run of the same time.
    assert runs[1].scheduled_at > runs[0].scheduled_at
    assert (runs[1].scheduled_at - runs[0].scheduled_at) % timedelta(seconds=0.2) == timedelta(0)
    first_run = seen[0]
    assert first_run is not None
    assert first_run.scheduled_at == runs[0].scheduled_at
    assert first_run.term == runs[0].term
    with pytest.raises(ConfigurationError, match="has no database transaction"):
        first_run.transaction()


async def test_the_run_of_a_killed_leader_is_abandoned_and_the_schedule_goes_on() -> None:
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    store = memory_store(bus)
    started = asyncio.Event()
    async with AsyncExitStack() as stack:
        groups = [ElectionGroup.in_memory(bus, "g", FAST) for _ in range(2)]
        for g in groups:

            @g.every(0.2, name="stuck")
            async def stuck() -> None:
                if not started.is_set():
                    started.set()
                    await asyncio.Event().wait()

        first = await join(stack, groups)
        await started.wait()
        assert first.node is not None
        bus.kill(first.node)
        other = next(g for g in groups if g is not first)
        await until([other], lambda: len(store.records["g", "stuck"]) >= 3, timeout=10)
    runs = await store.runs("g", "stuck")
    assert runs[0].outcome in ("abandoned", "cancelled")  # whichever wrote its end first
    assert runs[0].node == first.node
    assert {r.outcome for r in runs[1:-1]} == {"succeeded"}


async def test_a_claim_in_flight_when_the_leadership_is_lost_gets_its_end() -> None:
    """The claim committed but its answer comes after the session was lost: the run is
    recorded as cancelled at once, not left for the next leader to find unended."""
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    claimed, answer = asyncio.Event(), asyncio.Event()
    ran: list[int] = []
    async with AsyncExitStack() as stack:
        groups = [ElectionGroup.in_memory(bus, "g", FAST) for _ in range(2)]
        for g in groups:

            @g.every(0.2, name="often")
            async def often(g: ElectionGroup = g) -> None:
                assert g.node is not None
                ran.append(g.node)

        first = await join(stack, groups)
        old = first.node
        assert old is not None
        store = first._job_store()
        claim = store.claim

        async def slow_answer(*args: Any, **kwargs: Any) -> RunRecord | None:
            run = await claim(*args, **kwargs)
            claimed.set()
            await answer.wait()
            return run

        store.claim = slow_answer  # type: ignore[method-assign]
        await asyncio.wait_for(claimed.wait(), timeout=10)
        bus.disconnect(old)  # the process lives; its leadership is lost
        await until(groups, lambda: not first.is_leader, timeout=10)
        answer.set()
        records = store.records  # type: ignore[attr-defined]
        await until(
            groups,
            lambda: any(r.outcome == "cancelled" for r in records["g", "often"].values()),
            timeout=10,
        )
    runs = await store.runs("g", "often")
    (cancelled,) = [r for r in runs if r.outcome == "cancelled"]
    assert cancelled.node == old
    assert cancelled.error is not None
    assert "claimed" in cancelled.error
    assert [r.node for r in runs].count(old) == ran.count(old) + 1


async def test_a_failing_job_is_recorded_and_its_schedule_goes_on() -> None:
    bus = MemoryBus()
    store = memory_store(bus)
    async with AsyncExitStack() as stack:
        group = ElectionGroup.in_memory(bus, "g", FAST)

        @group.every(0.05, name="flaky")
        async def flaky() -> None:
            raise RuntimeError("no luck")

        await join(stack, [group])
        await until([group], lambda: len(store.records.get(("g", "flaky"), {})) >= 3)
        assert flaky.failures >= 2
    runs = await store.runs("g", "flaky")
    assert runs[0].outcome == "failed"
    assert runs[0].error == "RuntimeError('no luck')"


async def test_job_names_are_unique_in_a_group() -> None:
    group = ElectionGroup.in_memory(MemoryBus(), "g", FAST)

    @group.every(60)
    async def sync() -> None: ...

    assert sync.name == f"{__name__}.test_job_names_are_unique_in_a_group.<locals>.sync"
    group.every(60, name="a")(sync.job)
    with pytest.raises(ConfigurationError, match="already has a scheduled job named 'a'"):
        group.every(30, name="a")(sync.job)
    with pytest.raises(ConfigurationError, match="jitter must be >= 0"):
        group.every(60, jitter=-1)
    with pytest.raises(ConfigurationError, match="keep must be an int >= 1"):
        group.every(60, keep=0)
