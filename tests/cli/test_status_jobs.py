"""``notifelect status`` and the ``notifelect_jobs`` view show each scheduled job."""

from __future__ import annotations

import json

import asyncpg
import pytest

from notifelect import ElectionGroup, Settings
from tests.cli.running import run_cli
from tests.support.waiting import until

FAST = Settings(election_interval=0.1, lease=1.0, leader_timeout=0.5)


@pytest.mark.timeout(60)
async def test_status_shows_each_job_last_run_and_next_due(dsn: str, namespace: str) -> None:
    group = ElectionGroup(dsn, namespace, FAST)

    @group.every(3600, name="hourly")
    async def hourly() -> None:
        pass

    @group.every(3600, name="broken")
    async def broken() -> None:
        raise ValueError("no disk")

    async with group:
        # ``last`` is set once a run's end is recorded.
        await until([group], lambda: hourly.last and broken.last, timeout=20)
        result = await run_cli("status", "--json", "--dsn", dsn, "--namespace", namespace)
        text = await run_cli("status", "--dsn", dsn, "--namespace", namespace)

    assert result.rc == 0, result.stderr
    (reported,) = json.loads(result.stdout)["groups"]
    jobs = {j["job"]: j for j in reported["jobs"]}
    assert set(jobs) == {"hourly", "broken"}
    assert jobs["hourly"]["schedule"] == "every 3600s"
    assert jobs["hourly"]["last_outcome"] == "succeeded"
    assert jobs["broken"]["last_outcome"] == "failed"
    assert jobs["broken"]["last_error"] == "ValueError('no disk')"
    assert jobs["hourly"]["lateness"] >= 0
    assert jobs["hourly"]["overdue"] == 0
    assert jobs["hourly"]["next_due"] > jobs["hourly"]["last_scheduled_at"]

    assert text.rc == 0, text.stderr
    assert "  job        hourly (every 3600s)" in text.stdout
    assert "succeeded in" in text.stdout
    assert "failed in" in text.stdout
    assert "ValueError('no disk')" in text.stdout
    assert "next due" in text.stdout
    assert "(in 59m" in text.stdout

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT job, last_outcome, next_due - last_scheduled_at AS step"
            " FROM notifelect_jobs WHERE namespace = $1 ORDER BY job",
            namespace,
        )
    finally:
        await conn.close()
    assert [(r["job"], r["last_outcome"], r["step"].total_seconds()) for r in rows] == [
        ("broken", "failed", 3600.0),
        ("hourly", "succeeded", 3600.0),
    ]
