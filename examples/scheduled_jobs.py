"""Jobs on the group's schedule: run it in as many processes as you like, restart them.

    pip install 'notifelect[cron]'
    python -m notifelect install --dsn postgresql://user@localhost/app   # once per database
    python examples/scheduled_jobs.py --dsn postgresql://user@localhost/app &
    python examples/scheduled_jobs.py --dsn postgresql://user@localhost/app &
    python -m notifelect status --dsn postgresql://user@localhost/app --namespace reports-demo

Whichever process leads runs ``refresh_totals`` every 10 seconds and ``send_digest`` at
every fifth minute of the hour in Oslo. The schedule is in the database: stop the
leader (Ctrl-C, or kill it) and the next leader runs the next run when it is due, not at
once. ``refresh_totals`` writes its result and the record of its run in one fenced
transaction. ``--run-for SECONDS`` stops the process by itself; ``--every SECONDS``
changes the interval.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from notifelect import ElectionGroup, current_run

log = logging.getLogger("scheduled_jobs")


def build(dsn: str, every: float) -> ElectionGroup:
    url = "postgresql+asyncpg://" + dsn.partition("://")[2]
    engine = create_async_engine(url, pool_size=2)
    group = ElectionGroup(engine, name="reports-demo")

    @group.every(every, name="refresh_totals")
    async def refresh_totals() -> None:
        run = current_run()
        assert run is not None
        # The job's writes and the record that this run happened commit together.
        async with run.transaction() as conn:
            await conn.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS report_totals"
                    " (scheduled_at timestamptz PRIMARY KEY, total bigint)"
                )
            )
            total = (await conn.execute(text("SELECT count(*) FROM pg_class"))).scalar_one()
            await conn.execute(
                text("INSERT INTO report_totals VALUES (:at, :total)"),
                {"at": run.scheduled_at, "total": total},
            )
        log.info(
            "refresh_totals: run of %s, %.3fs late, term %s",
            run.scheduled_at.isoformat(),
            run.lateness,
            run.term,
        )

    @group.cron("*/5 * * * *", tz="Europe/Oslo", name="send_digest")
    async def send_digest() -> None:
        log.info("send_digest: sent")

    return group


async def main(dsn: str, every: float, run_for: float | None) -> None:
    group = build(dsn, every)
    async with group:
        log.info("node %s joined group %r", group.node, group.name)
        stop = asyncio.Event()
        await asyncio.wait_for(stop.wait(), run_for) if run_for else await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://localhost/postgres")
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--run-for", type=float, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt, TimeoutError):
        asyncio.run(main(args.dsn, args.every, args.run_for))
