"""Scheduled jobs on a real PostgreSQL: the schedule and the runs are in the database."""

from __future__ import annotations

import asyncio
import itertools
import logging
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from notifelect import (
    ConfigurationError,
    ElectionGroup,
    JobRun,
    RunRecord,
    Settings,
    current_run,
)
from tests.support.servers import sqlalchemy_url
from tests.support.waiting import until

FAST = Settings(election_interval=0.1, lease=1.0, leader_timeout=0.5)


async def engines(stack: AsyncExitStack, dsn: str, n: int) -> list[AsyncEngine]:
    result = []
    for _ in range(n):
        engine = create_async_engine(sqlalchemy_url(dsn), pool_size=2, max_overflow=0)
        stack.push_async_callback(engine.dispose)
        result.append(engine)
    return result


async def runs(dsn: str, namespace: str, job: str) -> list[RunRecord]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT namespace, job, scheduled_at, started_at, node, term, outcome, ended_at,"
            " error FROM notifelect_job_run WHERE namespace = $1 AND job = $2"
            " ORDER BY scheduled_at",
            namespace,
            job,
        )
    finally:
        await conn.close()
    return [RunRecord(*r) for r in rows]


@pytest.mark.timeout(60)
async def test_a_hand_over_continues_the_schedule_without_an_extra_run(
    dsn: str, namespace: str
) -> None:
    done: list[int] = []
    async with AsyncExitStack() as stack:
        groups = [ElectionGroup(e, namespace, FAST) for e in await engines(stack, dsn, 3)]
        periodics = []
        for g in groups:

            @g.every(0.5, name="tick")
            async def tick(g: ElectionGroup = g) -> None:
                assert g.node is not None
                done.append(g.node)

            periodics.append(tick)
            await stack.enter_async_context(g)
        await until(groups, lambda: len(done) >= 2, timeout=20)
        count = len(done)
        await until(groups, lambda: len(done) > count, timeout=10)  # just after a run
        first = next(g for g in groups if g.is_leader)
        await first.close()
        rest = [g for g in groups if g is not first]
        await until(rest, lambda: len(set(done)) == 2, timeout=20)
        count = len(done)
        await until(rest, lambda: len(done) >= count + 2, timeout=20)
        history = await periodics[0].history()
    recorded = await runs(dsn, namespace, "tick")
    assert [r.scheduled_at for r in recorded] == [r.scheduled_at for r in history][: len(recorded)]
    steps = {b.scheduled_at - a.scheduled_at for a, b in itertools.pairwise(recorded)}
    assert steps == {timedelta(seconds=0.5)}  # no extra run, no shift, no gap
    assert all(r.started_at >= r.scheduled_at for r in recorded)
    assert all(
        b.started_at >= a.ended_at
        for a, b in itertools.pairwise(recorded)
        if a.ended_at is not None
    )
    assert len({(r.node, r.term) for r in recorded}) == 2
    assert len(recorded) == len(done)


@pytest.mark.timeout(60)
async def test_the_job_and_its_run_record_share_a_fenced_transaction(
    dsn: str, namespace: str, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS report (ran_for timestamptz)"))
    group = ElectionGroup(engine, namespace, FAST)

    @group.every(0.2, name="report")
    async def report() -> None:
        run = current_run()
        assert run is not None
        async with run.transaction() as conn:
            await conn.execute(text("INSERT INTO report VALUES (:t)"), {"t": run.scheduled_at})
            if len(await report.history()) == 2:
                raise RuntimeError("rolled back with its record")

    async with group:
        await group.wait_for_leadership(timeout=20)
        await until([group], lambda: report.runs >= 3, timeout=20)
    recorded = await runs(dsn, namespace, "report")
    async with engine.connect() as conn:
        written = set((await conn.execute(text("SELECT ran_for FROM report"))).scalars())
    assert {r.scheduled_at for r in recorded if r.outcome == "succeeded"} == written
    assert [r.outcome for r in recorded[:3]] == ["succeeded", "failed", "succeeded"]


async def test_a_group_on_a_borrowed_connection_cannot_keep_a_schedule(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        group = ElectionGroup(conn, "borrowed")
        with pytest.raises(ConfigurationError, match="need connections of their own"):
            group.every(60)
    finally:
        await conn.close()


@pytest.mark.timeout(60)
async def test_a_group_on_a_dsn_keeps_its_schedule_too(dsn: str, namespace: str) -> None:
    group = ElectionGroup(dsn, namespace, FAST)
    ran = asyncio.Event()

    @group.every(60, name="hourly")
    async def hourly() -> None:
        ran.set()

    async with group:
        await asyncio.wait_for(ran.wait(), timeout=20)
    (run,) = await runs(dsn, namespace, "hourly")
    assert run.outcome == "succeeded"


@pytest.mark.timeout(60)
async def test_a_run_in_progress_at_a_hand_over_ends_before_the_next_one_starts(
    dsn: str, namespace: str
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    count = 0
    async with AsyncExitStack() as stack:
        groups = [ElectionGroup(e, namespace, FAST) for e in await engines(stack, dsn, 2)]
        for g in groups:

            @g.every(0.3, name="slow")
            async def slow() -> None:
                nonlocal count
                count += 1
                if count == 1:
                    started.set()
                    await release.wait()

            await stack.enter_async_context(g)
        await asyncio.wait_for(started.wait(), timeout=20)
        first = next(g for g in groups if g.is_leader)
        other = next(g for g in groups if g is not first)
        closing = asyncio.create_task(first.close())  # a deploy, in the middle of a run
        await until(groups, lambda: not first.is_leader, timeout=10)
        assert not other.is_leader  # the successor waits for the run to end
        release.set()
        await closing
        await until([other], lambda: count >= 3, timeout=20)
    recorded = await runs(dsn, namespace, "slow")
    assert recorded[0].outcome == "succeeded"  # it finished during the hand-over
    assert recorded[0].ended_at is not None
    assert recorded[1].started_at >= recorded[0].ended_at
    assert recorded[1].term > recorded[0].term


@pytest.mark.timeout(60)
async def test_a_claim_in_flight_when_the_hand_over_begins_still_runs_and_ends(
    dsn: str, namespace: str
) -> None:
    """A claim commits before its answer reaches the node: a hand-over that begins then
    (here a preemption; the old leader stays a member) must not leave a run recorded as
    started that nothing runs, or the successor waits ``finish_timeout + callback_timeout``
    for it before going on."""
    ran: list[int] = []
    claimed, answer = asyncio.Event(), asyncio.Event()
    async with AsyncExitStack() as stack:
        low, high = await engines(stack, dsn, 2)
        first = ElectionGroup(low, namespace, FAST)
        second = ElectionGroup(high, namespace, FAST.replace(priority=1))
        for g in (first, second):

            @g.every(0.2, name="often")
            async def often(g: ElectionGroup = g) -> None:
                assert g.node is not None
                ran.append(g.node)

        await stack.enter_async_context(first)
        await until([first], lambda: len(ran) >= 1, timeout=20)
        store = first._job_store()
        claim = store.claim

        async def slow_answer(*args: Any, **kwargs: Any) -> RunRecord | None:
            run = await claim(*args, **kwargs)  # committed: the answer is slow to arrive
            claimed.set()
            await answer.wait()
            return run

        store.claim = slow_answer  # type: ignore[method-assign]
        await asyncio.wait_for(claimed.wait(), timeout=20)
        await stack.enter_async_context(second)  # preempts the first
        await until([first], lambda: not first.is_leader, timeout=20)
        answer.set()
        await until([first, second], lambda: second.node in ran, timeout=20)
        old = first.node  # still a member of the group, under its first session
        assert old is not None
    recorded = await runs(dsn, namespace, "often")
    assert all(r.ended_at is not None for r in recorded[:-1])
    assert [r.node for r in recorded].count(old) == ran.count(old)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "notifelect_event", None) == name]


@pytest.mark.timeout(60)
async def test_a_job_that_raises_after_its_transaction_committed_is_a_success(
    dsn: str, namespace: str, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="notifelect")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS report (ran_for timestamptz)"))
    group = ElectionGroup(engine, namespace, FAST)
    seen: list[JobRun] = []

    @group.every(0.2, name="report")
    async def report() -> None:
        run = current_run()
        assert run is not None
        seen.append(run)
        async with run.transaction() as conn:
            await conn.execute(text("INSERT INTO report VALUES (:t)"), {"t": run.scheduled_at})
        raise RuntimeError("after the commit")

    async with group:
        await group.wait_for_leadership(timeout=20)
        await until([group], lambda: report.ended >= 2, timeout=20)
    recorded = await runs(dsn, namespace, "report")
    async with engine.connect() as conn:
        written = set((await conn.execute(text("SELECT ran_for FROM report"))).scalars())
    ended = [r for r in recorded if r.ended_at is not None]
    # The record committed with the writes wins: succeeded, and counted so.
    assert {r.outcome for r in ended} == {"succeeded"}
    assert {r.scheduled_at for r in ended} <= written
    assert (report.runs, report.failures) == (report.ended, 0)
    assert all(run.committed for run in seen)
    assert not events(caplog, "job_failed")
    raised = events(caplog, "job_raised_after_commit")
    assert len(raised) == report.ended
    assert "stays recorded as succeeded" in raised[0].getMessage()
    assert "RuntimeError('after the commit')" in raised[0].getMessage()


@pytest.mark.timeout(60)
async def test_a_renamed_job_is_pointed_out(
    dsn: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="notifelect")
    before = ElectionGroup(dsn, namespace, FAST)
    ran = asyncio.Event()

    @before.every(60, name="reports.refresh")
    async def refresh() -> None:
        ran.set()

    async with before:
        await asyncio.wait_for(ran.wait(), timeout=20)
    assert not events(caplog, "job_renamed")  # a new job beside no unknown one

    after = ElectionGroup(dsn, namespace, FAST)
    ran.clear()

    @after.every(60)  # the same job, renamed: its default name changed
    async def refresh_totals() -> None:
        ran.set()

    async with after:
        await asyncio.wait_for(ran.wait(), timeout=20)
    (warned,) = events(caplog, "job_renamed")
    message = warned.getMessage()
    assert refresh_totals.name in message
    assert "'reports.refresh'" in message
    assert "pass name='reports.refresh' to keep its schedule" in message


@pytest.mark.timeout(60)
async def test_a_schedule_recorded_ahead_of_the_database_clock_is_re_anchored(
    dsn: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    # What a database clock stepped back an hour looks like to the next leader: the last
    # recorded scheduled time lies an hour ahead of clock_timestamp().
    caplog.set_level(logging.INFO, logger="notifelect")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO notifelect_job (namespace, job, schedule, first_due, created_at,"
            " updated_at) VALUES ($1, 'tick', 'every 0.5s', now(), now(), now())",
            namespace,
        )
        await conn.execute(
            "INSERT INTO notifelect_job_run (namespace, job, scheduled_at, started_at,"
            " ended_at, node, term, outcome) VALUES ($1, 'tick', now() + interval '1 hour',"
            " now() + interval '1 hour', now() + interval '1 hour', 999, 1, 'succeeded')",
            namespace,
        )
    finally:
        await conn.close()
    group = ElectionGroup(dsn, namespace, FAST)
    count = 0

    @group.every(0.5, name="tick")
    async def tick() -> None:
        nonlocal count
        count += 1

    async with group:
        await until([group], lambda: count >= 3, timeout=20)
    recorded = await runs(dsn, namespace, "tick")
    latest = recorded[-1].scheduled_at
    reanchored = [r for r in recorded if r.scheduled_at < latest - timedelta(minutes=30)]
    assert len(reanchored) == count
    steps = {b.scheduled_at - a.scheduled_at for a, b in itertools.pairwise(reanchored)}
    assert steps == {timedelta(seconds=0.5)}
    (warned,) = events(caplog, "job_clock_behind")
    assert 3590 < warned.notifelect_ahead < 3601  # type: ignore[attr-defined]
    assert "job tick of group" in warned.getMessage()
