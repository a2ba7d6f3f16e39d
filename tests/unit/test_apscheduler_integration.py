"""LeaderScheduler on the in-memory transport: paused on followers, drained on hand-over."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from itertools import pairwise

from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

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
