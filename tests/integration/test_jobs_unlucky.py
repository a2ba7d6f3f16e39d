"""Scheduled jobs under unlucky timing on a real PostgreSQL: a leadership lost while a
claim's COMMIT is on the server, an end that could not be recorded at once. In each case
the node stays a member, so a run left without an end makes the next leader wait
``finish_timeout + callback_timeout`` for a run that nothing runs."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import pytest

from notifelect import ElectionGroup, RunRecord, Settings
from tests.integration.test_jobs import engines, runs
from tests.support.waiting import until

FAST = Settings(election_interval=0.1, lease=1.0, leader_timeout=0.5)
#: Well within finish_timeout + callback_timeout (40 s, the stall these tests catch), and
#: generous for what a successor takes to run again after a loss or a hand-over (an
#: election, then the next scheduled time: about 2 s here).
PROMPT = 15.0


async def scheduled_pair(
    stack: AsyncExitStack,
    dsn: str,
    namespace: str,
    ran: list[tuple[int, float]],
    period: float,
    priorities: tuple[int, int],
) -> tuple[ElectionGroup, ElectionGroup]:
    """Two groups (not entered) on engines of their own, each with the job ``often``
    every ``period`` seconds, which records (node, when) in ``ran``."""
    made = await engines(stack, dsn, 2)
    pair = [
        ElectionGroup(e, namespace, FAST.replace(priority=p))
        for e, p in zip(made, priorities, strict=True)
    ]
    for g in pair:

        @g.every(period, name="often")
        async def often(g: ElectionGroup = g) -> None:
            assert g.node is not None
            ran.append((g.node, time.monotonic()))

    return pair[0], pair[1]


async def preempted(
    stack: AsyncExitStack, a: ElectionGroup, b: ElectionGroup, ran: list[tuple[int, float]]
) -> None:
    """``b`` joins and preempts ``a`` (which stays a member): wait for ``b``'s first run."""
    began = time.monotonic()
    await stack.enter_async_context(b)
    try:
        await until(
            [a, b], lambda: b.node in {n for n, _ in ran}, timeout=PROMPT, what="a run on b"
        )
    finally:
        print(f"\nFIGURES successor's first run {time.monotonic() - began:.2f}s after it joined")


async def every_run_ended(dsn: str, namespace: str) -> list[RunRecord]:
    """The runs of ``often``, once checked that each but the last has an end."""
    recorded = await runs(dsn, namespace, "often")
    unended = [r for r in recorded[:-1] if r.ended_at is None]
    assert unended == [], f"runs recorded as started that never got an end: {unended}"
    return recorded


# At the COMMIT of the next claim (a deferred trigger runs there): cut the claiming node's
# election session (the process lives on and comes back on a new session), then let the
# COMMIT take a moment longer, so that the node sees its leadership lost and drops the
# claim's connection while the server is still committing it.
CUT_AT_COMMIT = """
CREATE TABLE cut_at_commit (armed boolean NOT NULL);
CREATE FUNCTION cut_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM cut_at_commit WHERE armed) THEN
        UPDATE cut_at_commit SET armed = false;
        PERFORM pg_terminate_backend(backend_pid) FROM notifelect_session
            WHERE node = NEW.node;
        PERFORM pg_sleep(0.4);
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER cut_at_commit AFTER INSERT ON notifelect_job_run
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION cut_at_commit();
INSERT INTO cut_at_commit VALUES (false);
"""


@pytest.mark.timeout(90)
async def test_a_leadership_lost_while_its_claim_commits_leaves_no_run_without_an_end(
    dsn: str, namespace: str
) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(CUT_AT_COMMIT)
        ran: list[tuple[int, float]] = []
        async with AsyncExitStack() as stack:
            a, b = await scheduled_pair(stack, dsn, namespace, ran, 0.3, (1, 0))
            await stack.enter_async_context(a)
            await stack.enter_async_context(b)
            await until([a, b], lambda: len(ran) >= 2, timeout=20)
            old = a.node
            await admin.execute("UPDATE cut_at_commit SET armed = true")
            await until(
                [a, b], lambda: a.node != old and a.node is not None, timeout=20, what="cut"
            )
            cut_at = time.monotonic()
            count = len(ran)
            try:
                await until([a, b], lambda: len(ran) > count, timeout=PROMPT, what="a next run")
            finally:
                recorded = await runs(dsn, namespace, "often")
                stalled = (
                    max((t for _, t in ran[count : count + 1]), default=time.monotonic()) - cut_at
                )
                print(f"\nFIGURES next run {stalled:.2f}s after the cut; records:")
                for r in recorded[-4:]:
                    print(
                        f"  {r.scheduled_at.time()} node {r.node} term {r.term} {r.outcome}"
                        f" ended={r.ended_at is not None} error={r.error}"
                    )
        recorded = await every_run_ended(dsn, namespace)
        # docs/guides/jobs.md: a run whose claim committed as the leadership was lost is
        # cancelled (by its node), not left for the next leader to abandon.
        last_of_old = [r for r in recorded if r.node == old][-1]
        assert last_of_old.outcome == "cancelled", last_of_old
    finally:
        await admin.close()


@pytest.mark.timeout(90)
async def test_an_end_that_could_not_be_recorded_at_once_does_not_stall_the_successor(
    dsn: str, namespace: str
) -> None:
    """The database refuses the end of a run once (a connection refused, "too many
    clients", a failover: the store makes a connection for each statement), then a
    higher-priority node joins and preempts the leader, which stays a member."""
    ran: list[tuple[int, float]] = []
    failed = asyncio.Event()
    async with AsyncExitStack() as stack:
        a, b = await scheduled_pair(stack, dsn, namespace, ran, 2.0, (0, 1))
        await stack.enter_async_context(a)
        await until([a], lambda: len(ran) >= 1, timeout=20)
        store = a._job_store()
        finish = store.finish

        async def refused_once(*args: Any, **kwargs: Any) -> bool:
            if not failed.is_set():
                failed.set()
                raise asyncpg.TooManyConnectionsError("sorry, too many clients already")
            return await finish(*args, **kwargs)

        store.finish = refused_once  # type: ignore[method-assign]
        await asyncio.wait_for(failed.wait(), timeout=20)
        await preempted(stack, a, b, ran)
    await every_run_ended(dsn, namespace)


@pytest.mark.timeout(90)
async def test_a_claim_whose_answer_was_lost_gets_an_end_before_a_hand_over(
    dsn: str, namespace: str
) -> None:
    """The claim committed but its answer never came (the connection reset after the
    COMMIT): the leadership goes on, then a higher-priority node preempts it."""
    ran: list[tuple[int, float]] = []
    lost = asyncio.Event()
    async with AsyncExitStack() as stack:
        a, b = await scheduled_pair(stack, dsn, namespace, ran, 2.0, (0, 1))
        await stack.enter_async_context(a)
        await until([a], lambda: len(ran) >= 1, timeout=20)
        store = a._job_store()
        claim = store.claim

        async def answer_lost(*args: Any, **kwargs: Any) -> Any:
            run = await claim(*args, **kwargs)
            if not lost.is_set():
                lost.set()
                raise ConnectionResetError("connection reset by peer")
            return run

        store.claim = answer_lost  # type: ignore[method-assign]
        await asyncio.wait_for(lost.wait(), timeout=20)
        await preempted(stack, a, b, ran)
    recorded = await every_run_ended(dsn, namespace)
    assert any(r.outcome == "cancelled" for r in recorded), recorded
