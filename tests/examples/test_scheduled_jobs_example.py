"""examples/scheduled_jobs.py: a restarted process continues the group's schedule."""

from __future__ import annotations

import itertools
import sys

import asyncpg
import pytest

from tests.cli.running import ROOT, run_cli, spawn

SCRIPT = str(ROOT / "examples" / "scheduled_jobs.py")


@pytest.mark.timeout(120)
async def test_a_second_process_continues_the_schedule_of_the_first(dsn: str) -> None:
    argv = (sys.executable, SCRIPT, "--dsn", dsn, "--every", "1")
    for _ in range(2):  # one process after the other: a deploy of a single replica
        async with spawn(*argv) as process:
            lines = process.stderr
            await process.wait_for(
                lambda: sum("refresh_totals: run" in line for line in lines) >= 2,  # noqa: B023
                timeout=60,
                what="two runs",
            )
            assert await process.stop() == 0, process.output

    conn = await asyncpg.connect(dsn)
    try:
        runs = await conn.fetch(
            "SELECT scheduled_at, started_at, term, outcome FROM notifelect_job_run"
            " WHERE namespace = 'reports-demo' AND job = 'refresh_totals' ORDER BY scheduled_at"
        )
        written = await conn.fetch("SELECT scheduled_at FROM report_totals ORDER BY 1")
    finally:
        await conn.close()
    assert len({r["term"] for r in runs}) == 2
    steps = {
        (b["scheduled_at"] - a["scheduled_at"]).total_seconds() for a, b in itertools.pairwise(runs)
    }
    # The second process waited for the next scheduled time: no extra run, no shift (a
    # step of several seconds is a gap while neither process ran, skipped by "latest").
    assert all(step >= 1.0 and step.is_integer() for step in steps), steps
    assert all(r["started_at"] >= r["scheduled_at"] for r in runs)
    assert [w["scheduled_at"] for w in written] == [
        r["scheduled_at"] for r in runs if r["outcome"] == "succeeded"
    ]

    status = await run_cli("status", "--dsn", dsn, "--namespace", "reports-demo")
    assert status.rc == 0, status.stderr
    assert "  job        refresh_totals (every 1s)" in status.stdout
    assert "  job        send_digest (cron */5 * * * * (Europe/Oslo))" in status.stdout
