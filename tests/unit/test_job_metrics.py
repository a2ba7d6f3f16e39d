"""The scheduled jobs' metrics: runs, failures, duration and lateness per job."""

from __future__ import annotations

from contextlib import AsyncExitStack

from prometheus_client import CollectorRegistry, generate_latest

from notifelect import ElectionGroup, MemoryBus, Settings
from notifelect.metrics import register
from tests.support.waiting import until

FAST = Settings(election_interval=0.05, election_timeout=0.01, lease=0.5, leader_timeout=0.2)


async def test_the_metrics_count_each_job_runs_and_failures() -> None:
    registry = CollectorRegistry()
    async with AsyncExitStack() as stack:
        group = ElectionGroup.in_memory(MemoryBus(), "g", FAST)

        @group.every(0.05, name="fine")
        async def fine() -> None:
            pass

        @group.every(0.05, name="bad")
        async def bad() -> None:
            raise RuntimeError("bad")

        await stack.enter_async_context(group)
        await until([group], lambda: fine.ended >= 2 and bad.ended >= 2)
        assert group.jobs == [fine, bad]
        register(group, registry=registry)
        text = generate_latest(registry).decode()
        expected = {
            "fine": (fine.runs, fine.failures, fine.ended, fine.lateness_total),
            "bad": (bad.runs, bad.failures, bad.ended, bad.lateness_total),
        }
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
             if line and not line.startswith("#")}  # fmt: skip

    def value(name: str, job: str) -> float:
        return lines[f'{name}{{group="g",job="{job}",node="{group.instance}"}}']

    for job, (runs, failures, ended, lateness) in expected.items():
        assert value("notifelect_job_runs_total", job) == runs
        assert value("notifelect_job_failures_total", job) == failures
        assert value("notifelect_job_duration_seconds_count", job) == ended
        assert value("notifelect_job_lateness_seconds_count", job) == ended
        assert value("notifelect_job_lateness_seconds_sum", job) == lateness
    assert value("notifelect_job_failures_total", "bad") >= 2
    assert value("notifelect_job_runs_total", "bad") == 0
    assert value("notifelect_job_runs_total", "fine") >= 2
