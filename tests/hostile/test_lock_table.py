"""A server whose shared lock table is small for the number of groups a process joins.

Each group a node leads holds one session advisory lock, and session locks live in the
server's shared lock table (``max_locks_per_transaction`` times the number of backend
slots), which every statement of every session on the server also needs. A process that
joins more groups than that table holds must not make its own elections (and every other
client of the server) fail over and over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from notifelect import ElectionGroup, Leadership, Settings
from notifelect.schema import Names, install_statements
from tests.support.servers import ThrowawayPostgres
from tests.support.waiting import until

#: A lock table of a few hundred entries: the smallest max_locks_per_transaction, and few
#: backend slots.
_SMALL_LOCK_TABLE = (
    "\nmax_locks_per_transaction = 10\nmax_connections = 8\nmax_wal_senders = 0\n"
    "max_worker_processes = 0\nautovacuum_max_workers = 1\n"
)
#: More groups than such a table holds locks.
_GROUPS = 600


@pytest.fixture
def small_lock_table() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres().start()
    try:
        with open(server.data / "postgresql.conf", "a") as conf:
            conf.write(_SMALL_LOCK_TABLE)
        server.restart()
        yield server
    finally:
        server.destroy()


async def _install(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in install_statements(Names()):
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.mark.timeout(120)
async def test_leaderships_are_kept_when_the_groups_outnumber_the_lock_table(
    small_lock_table: ThrowawayPostgres,
) -> None:
    """One process joins more groups than the server's lock table holds: the groups it
    came to lead stay led (none is deposed), the others wait."""
    await _install(small_lock_table.dsn)
    settings = Settings(election_interval=0.5)
    deposed = asyncio.Event()
    groups = [ElectionGroup(small_lock_table.dsn, f"g{i}", settings) for i in range(_GROUPS)]

    async def on_deposed(leadership: Leadership) -> None:
        deposed.set()

    for group in groups:
        group.on_deposed(on_deposed)
    try:
        await asyncio.gather(*(group.__aenter__() for group in groups))
        await until(groups, lambda: any(g.is_leader for g in groups), timeout=30, what="a leader")
        # No leadership may end while the process runs: wait for one to, in vain.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(deposed.wait(), timeout=20)
        assert any(group.is_leader for group in groups)
    finally:
        await asyncio.gather(*(group.close() for group in groups), return_exceptions=True)
