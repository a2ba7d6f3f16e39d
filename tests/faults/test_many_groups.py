"""Many groups, one session: three processes join the same 200 groups, each on one engine.

Real processes (the node program with ``--extra-groups 199 --report-every-group``) on the
shared PostgreSQL, in a database of this test's own: how many sessions each process holds
(every notifelect backend of the database is claimed by exactly one process), how many
transactions the database runs per second in steady state, and what happens when the
process leading the most groups is killed: every one of its groups gets a new leader, and
no group ever has two (the checker, on what each process recorded).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from notifelect._cluster.harness import (
    Cluster,
    NodeProcess,
    kill_busiest,
    settled,
    transactions,
    wait_quiet,
)

PROCESSES = 3
GROUPS = 200


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["default", "fast-crash"])
async def test_three_processes_two_hundred_groups(
    dsn: str, namespace: str, mode: str, tmp_path: Path
) -> None:
    argv = ["--engine", "--extra-groups", str(GROUPS - 1), "--report-every-group"]
    argv += ["--fast-crash"] if mode == "fast-crash" else []
    admin = await asyncpg.connect(dsn)
    try:
        async with Cluster(dsn, tmp_path, namespace, argv=argv) as cluster:
            await cluster.spawn(PROCESSES)
            procs = cluster.nodes
            await cluster.until(
                lambda: settled(procs, GROUPS), timeout=120, what="one leader per group", every=0.05
            )
            await cluster.until(
                lambda: all(p.last("sessions") for p in procs), timeout=10, what="sessions"
            )

            def pids(p: NodeProcess) -> list[int]:
                """The backends of a process's sessions, as it last reported them."""
                report = p.last("sessions")
                return [] if report is None else list(report["pids"])

            # Sessions: every notifelect backend of the database belongs to one process,
            # and no process holds more than three (election session, anchor, watcher).
            await cluster.until(
                lambda: settled(procs, GROUPS) and all(len(pids(p)) <= 3 for p in procs),
                timeout=20,
                what="at most three sessions per process",
                every=0.05,
            )
            deadline = time.monotonic() + 20
            while True:  # the reports are up to a second old: compare until they agree
                reported = {pid for p in procs for pid in pids(p)}
                rows = await admin.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name LIKE 'notifelect%'"
                )
                backends = {r["pid"] for r in rows}
                if backends <= reported or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)  # polling the server's view
            assert backends <= reported, f"unclaimed backends: {backends - reported}"
            assert len(backends) <= 3 * PROCESSES

            # Steady state: transactions per second in the whole database (once the cold
            # start no longer shows in the server's lagging counters).
            await wait_quiet(admin, 20, timeout=60)
            before, t0 = await transactions(admin), time.monotonic()
            await asyncio.sleep(10)  # the measurement window
            after, t1 = await transactions(admin), time.monotonic()
            rate = (after - before - 1) / (t1 - t0)
            print(f"\n{mode}: {rate:.1f} transactions/s in steady state", file=sys.stderr)
            assert rate <= 20

            # Kill the process leading the most groups.
            took = await kill_busiest(cluster, 60)
            print(
                f"{mode}: SIGKILL of the leader of {len(took)} groups -> every one led again:"
                f" median {statistics.median(took):.3f}s, max {took[-1]:.3f}s",
                file=sys.stderr,
            )
            await cluster.until(
                lambda: settled(procs, GROUPS), timeout=60, what="one leader per group again",
                every=0.05,
            )  # fmt: skip
        assert cluster.overlaps() == []
    finally:
        await admin.close()
