"""The election with asyncpg only (no SQLAlchemy), and a fenced write by the leader.

    python -m notifelect install                      # once per database
    export DATABASE_URL=postgresql://user@localhost/app   # or the PG* variables
    python examples/plain_asyncpg.py &                # run it in two or three terminals
    python examples/plain_asyncpg.py

While a node leads, it appends a row to ``example_ticks`` every ``--every`` seconds. Each
write is fenced: ``leadership.fence(conn)`` in the same transaction makes it commit only
under the current term, so a leader that was paused and replaced cannot write any more.
Stop the leader (Ctrl-C) and another node takes over at once; ``--run-for SECONDS``
stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import Any

import asyncpg

from notifelect import ElectionGroup, Leadership, StaleLeaderError

DSN = os.environ.get("DATABASE_URL", "postgresql://")  # empty parts come from PG* variables


async def main(every: float, run_for: float | None) -> None:
    pool: asyncpg.Pool[Any] = await asyncpg.create_pool(DSN, min_size=1, max_size=2)
    async with pool.acquire() as conn, conn.transaction():
        # Replicas starting together would race on CREATE ... IF NOT EXISTS: serialise them.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('example_ticks'))")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS example_ticks"
            " (term bigint NOT NULL, node bigint NOT NULL, at timestamptz NOT NULL DEFAULT now())"
        )
    # The group takes its own dedicated connection(s) from the DSN, never from the pool.
    group = ElectionGroup(DSN, name="asyncpg-example")

    @group.on_elected
    async def lead(leadership: Leadership) -> None:
        # Runs while this node leads; cancelled (and awaited) the moment leadership ends.
        print(f"node {leadership.node}: elected, term {leadership.term}", flush=True)
        while True:
            try:
                async with pool.acquire() as conn, conn.transaction():
                    await leadership.fence(conn)  # raises StaleLeaderError if superseded
                    await conn.execute(
                        "INSERT INTO example_ticks (term, node) VALUES ($1, $2)",
                        leadership.term,
                        leadership.node,
                    )
            except StaleLeaderError as exc:
                print(f"node {leadership.node}: write refused: {exc}", flush=True)
                return
            print(f"node {leadership.node}: tick (term {leadership.term})", flush=True)
            await asyncio.sleep(every)

    @group.on_deposed
    async def deposed(leadership: Leadership) -> None:
        reason = leadership.ended_reason or "ended"
        print(f"node {leadership.node}: no longer leads term {leadership.term} ({reason})")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if run_for is not None:
        loop.call_later(run_for, stop.set)
    try:
        async with group:
            print(f"node {group.node}: joined group {group.name!r}", flush=True)
            info = await group.wait_for_leader(timeout=30)
            print(f"node {group.node}: node {info.node} leads (term {info.term})", flush=True)
            await stop.wait()
        # Leaving the block resigned (if leading): the successor was named and took over.
        print(f"node {group.node}: left", flush=True)
    finally:
        await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=0.5, help="seconds between ticks")
    parser.add_argument("--run-for", type=float, help="stop after SECONDS")
    args = parser.parse_args()
    asyncio.run(main(args.every, args.run_for))
