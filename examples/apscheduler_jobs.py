"""APScheduler 3 on every replica; the bound scheduler runs on the leader only.

    pip install -e '.[apscheduler]'                   # from a checkout of notifelect
    python -m notifelect install                      # once per database
    export DATABASE_URL=postgresql://user@localhost/app   # or the PG* variables
    python examples/apscheduler_jobs.py &             # run it two or three times
    python examples/apscheduler_jobs.py

Every replica configures the same schedulers. ``leader_scheduler`` is bound to the group
with ``LeaderScheduler``: it stays paused on the followers (no wake-up, no log line per
tick) and runs ``send_report`` on the leader only; a new leader continues its schedule
where the database says it stands. ``local_scheduler`` is not bound: it runs
``refresh_local_cache`` on every replica. Kill the replica that sends the reports and
another one carries on. ``--run-for SECONDS`` stops by itself; ``--every SECONDS`` sets
the pace (a real job would use a cron trigger).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

from notifelect import ElectionGroup
from notifelect.integrations.apscheduler import LeaderScheduler

group = ElectionGroup(os.environ.get("DATABASE_URL", "postgresql://"), name="apscheduler-example")
leader_scheduler = AsyncIOScheduler()
leading = LeaderScheduler(group, leader_scheduler)  # before entering the group
local_scheduler = AsyncIOScheduler()


async def send_report() -> None:
    """Must not run twice at once: runs on the leader's scheduler only."""
    ls = group.leadership
    print(f"node {group.node}: report sent (term {ls.term if ls else None})", flush=True)


async def refresh_local_cache() -> None:
    """Per-replica work: runs everywhere."""
    print(f"node {group.node}: local cache refreshed", flush=True)


async def main(every: float, run_for: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if run_for is not None:
        loop.call_later(run_for, stop.set)

    leader_scheduler.add_job(send_report, "interval", seconds=every, id="send_report")
    local_scheduler.add_job(refresh_local_cache, "interval", seconds=every)
    async with group, leading:  # the group first: the scheduler follows its leadership
        print(f"node {group.node}: joined group {group.name!r}", flush=True)
        local_scheduler.start()
        try:
            await stop.wait()
        finally:
            local_scheduler.shutdown(wait=False)
    print(f"node {group.node}: left", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=1.0, help="job interval in seconds")
    parser.add_argument("--run-for", type=float, help="stop after SECONDS")
    args = parser.parse_args()
    # APScheduler's own log lines (one per run it starts) go to standard error.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    asyncio.run(main(args.every, args.run_for))
