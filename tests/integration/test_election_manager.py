"""notifelect 0.0.3 compatibility on a real PostgreSQL: ``election_manager.Coordinator``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from notifelect import Settings, election_manager
from tests.support.servers import libpq_env
from tests.support.waiting import eventually, settled, until

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 25])
@pytest.mark.timeout(60)
async def test_coordinators_elect_exactly_one_winner(dsn: str, namespace: str, n: int) -> None:
    async with AsyncExitStack() as stack:
        outcomes = []
        for _ in range(n):
            conn = await asyncpg.connect(dsn)
            stack.push_async_callback(conn.close)
            coordinator = election_manager.Coordinator(
                conn, namespace=namespace, election_interval=0.1, election_timeout=0.05
            )
            outcomes.append(await stack.enter_async_context(coordinator))
        groups = [o.group for o in outcomes]
        started = time.monotonic()
        await until(groups, lambda: sum(o.winner for o in outcomes) == 1, timeout=2.0)
        assert time.monotonic() - started < 2.0
        await until(groups, lambda: settled(groups), timeout=5.0)
        # It stays settled: exactly one winner after several heartbeats.
        await asyncio.sleep(0.3)  # observation window, not synchronisation
        assert sum(o.winner for o in outcomes) == 1
        winner = next(o for o in outcomes if o.winner)
        assert winner.group.node == max(g.node or 0 for g in groups)


@pytest.mark.timeout(60)
def test_seed_quick_example_runs_unchanged(dsn: str) -> None:
    env = {**os.environ, **libpq_env(dsn)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "seed_simulation.py"), "5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    async def settled() -> tuple[int, int]:
        conn = await asyncpg.connect(dsn)
        try:

            async def counts() -> tuple[int, int]:
                row = await conn.fetchrow(
                    "SELECT count(*) AS members, count(*) FILTER (WHERE is_leader) AS leaders"
                    " FROM notifelect_status WHERE namespace = 'default'"
                )
                assert row is not None
                return row["members"], row["leaders"]

            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                members, leaders = await counts()
                if members == 5 and leaders == 1:
                    return members, leaders
                assert proc.poll() is None, proc.communicate()
                await asyncio.sleep(0.05)  # polling the database, bounded by the deadline
            return await counts()
        finally:
            await conn.close()

    try:
        members, leaders = asyncio.run(settled())
        assert (members, leaders) == (5, 1)
        assert proc.poll() is None  # still running its infinite sleep, no crash
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()  # never leave the example running, then fail
            proc.communicate()
            raise
    # Interrupted by us: the KeyboardInterrupt traceback (with the cancellations it causes) is
    # expected; any other exception is not.
    expected = ("KeyboardInterrupt", "asyncio.exceptions.CancelledError")
    raised = [
        line for line in stderr.splitlines() if line and not line[0].isspace() and ":" not in line
    ]
    errors = [line for line in stderr.splitlines() if "Error:" in line or "Exception:" in line]
    assert all(line.startswith(expected) or line.startswith("Traceback") for line in raised), stderr
    assert not errors, stderr


@pytest.mark.timeout(30)
async def test_closed_connection_is_never_leader(dsn: str, namespace: str) -> None:
    conn = await asyncpg.connect(dsn)
    async with election_manager.Coordinator(conn, namespace=namespace) as outcome:
        await outcome.group.wait_for_leadership(timeout=5)
        await conn.close()
        await eventually(lambda: not outcome.winner, timeout=1, what="winner gone")
        assert not outcome.winner


# notifelect 0.0.3's defaults, as its users pass them.
SEED_INTERVAL = timedelta(seconds=20)
SEED_TIMEOUT = timedelta(seconds=5)


def test_seed_settings_derive_a_lease_that_fits_the_interval() -> None:
    derived = election_manager.seed_settings(
        election_interval=SEED_INTERVAL, election_timeout=SEED_TIMEOUT
    )
    assert (derived.election_interval, derived.election_timeout) == (20.0, 5.0)
    assert derived.lease > derived.election_interval
    assert derived.leader_timeout >= 2 * derived.election_interval
    assert derived.election_timeout < min(derived.lease, derived.leader_timeout)
    # Settings that already fit keep the library's defaults; explicit ones are kept.
    fast = election_manager.seed_settings(election_interval=0.1, election_timeout=0.05)
    assert (fast.lease, fast.leader_timeout) == (Settings().lease, Settings().leader_timeout)
    explicit = Settings(election_interval=0.5, lease=3.0, leader_timeout=3.0)
    kept = election_manager.seed_settings(explicit, election_timeout=timedelta(seconds=1))
    assert (kept.lease, kept.leader_timeout) == (3.0, 3.0)


@pytest.mark.timeout(60)
async def test_coordinators_with_the_seeds_defaults_elect_exactly_one(
    dsn: str, namespace: str
) -> None:
    async with AsyncExitStack() as stack:
        outcomes = []
        for _ in range(2):
            conn = await asyncpg.connect(dsn)
            stack.push_async_callback(conn.close)
            coordinator = election_manager.Coordinator(
                conn,
                namespace=namespace,
                election_interval=SEED_INTERVAL,
                election_timeout=SEED_TIMEOUT,
            )
            outcomes.append(await stack.enter_async_context(coordinator))
        groups = [o.group for o in outcomes]
        # The highest rank claims after one election_timeout (5 s) without a higher answer.
        await until(groups, lambda: settled(groups), timeout=30, what="one settled leader")
        assert sum(o.winner for o in outcomes) == 1
        winner = next(o for o in outcomes if o.winner)
        assert winner.group.node == max(g.node or 0 for g in groups)
