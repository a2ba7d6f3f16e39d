"""APScheduler 3 on every replica; jobs gated by ``@group.leader_only`` run on one only.

    pip install -e '.[examples]'                      # from a checkout of notifelect
    python -m notifelect install                      # once per database
    export DATABASE_URL=postgresql://user@localhost/app   # or the PG* variables
    python examples/apscheduler_jobs.py &             # run it two or three times
    python examples/apscheduler_jobs.py

Every replica schedules the same jobs. ``send_report`` is leader-only: on the other
replicas the scheduler still fires it, and the gate skips it (returns None). Stop the
replica that sends the reports and another one carries on. ``--run-for SECONDS`` stops
by itself; ``--every SECONDS`` sets the pace (a real job would use a cron trigger).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

from notifelect import ElectionGroup, current_leadership

group = ElectionGroup(os.environ.get("DATABASE_URL", "postgresql://"), name="apscheduler-example")


@group.leader_only
async def send_report() -> None:
    """Must not run twice: gated on leadership (cancelled if leadership ends meanwhile)."""
    leadership = current_leadership()
    assert leadership is not None
    print(f"node {group.node}: report sent (term {leadership.term})", flush=True)


async def refresh_local_cache() -> None:
    """Per-replica work: not gated, runs everywhere."""
    print(f"node {group.node}: local cache refreshed", flush=True)


async def main(every: float, run_for: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if run_for is not None:
        loop.call_later(run_for, stop.set)

    scheduler = AsyncIOScheduler()
    scheduler.add_job(send_report, "interval", seconds=every, next_run_time=datetime.now())
    scheduler.add_job(refresh_local_cache, "interval", seconds=every)
    async with group:  # join first: the gate refuses calls on a group not entered
        print(f"node {group.node}: joined group {group.name!r}", flush=True)
        scheduler.start()
        try:
            await stop.wait()
        finally:
            scheduler.shutdown(wait=False)
    print(f"node {group.node}: left", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=1.0, help="job interval in seconds")
    parser.add_argument("--run-for", type=float, help="stop after SECONDS")
    args = parser.parse_args()
    asyncio.run(main(args.every, args.run_for))
