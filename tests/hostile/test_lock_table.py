"""A server whose shared lock table is small for the number of groups a process joins.

Each group a node leads holds one session advisory lock, and session locks live in the
server's shared lock table (``max_locks_per_transaction`` times the number of backend
slots), which every statement of every session on the server also needs. A process that
joins more groups than that table holds must not make its own elections (and every other
client of the server) fail over and over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import cast

import asyncpg
import pytest

from notifelect import ElectionGroup, Leadership, Settings
from notifelect.schema import Names, install_statements
from notifelect.sql import ElectionQueries
from notifelect.transport.session.claims import CLAIM_SHARE, Claims
from notifelect.transport.session.common import NEVER_LED, SessionView
from tests.support.servers import ThrowawayPostgres
from tests.support.waiting import until

#: A lock table of a few hundred entries: the smallest max_locks_per_transaction, and few
#: backend slots.
_SMALL_LOCK_TABLE = (
    "\nmax_locks_per_transaction = 10\nmax_connections = 8\nmax_wal_senders = 0\n"
    "max_worker_processes = 0\nautovacuum_max_workers = 1\n"
)
#: The entries that table is made for: max_locks_per_transaction for each process slot
#: (max_connections, the autovacuum workers and their launcher).
_LOCK_TABLE = 10 * (8 + 1 + 1)
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


async def _plain_client(dsn: str) -> None:
    """Another client of the server runs a statement that needs an entry of the lock
    table (an advisory lock never takes the fast path)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_xact_lock(1)")
    finally:
        await conn.close()


async def _install(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in install_statements(Names()):
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.mark.timeout(120)
async def test_leaderships_are_kept_when_the_groups_outnumber_the_lock_table(
    small_lock_table: ThrowawayPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """One process joins more groups than the server's lock table holds: the groups it
    came to lead stay led (none is deposed), at most its share of the lock table; the
    others wait, it says so once, and other clients of the server are not refused."""
    caplog.set_level(logging.ERROR, logger="notifelect")
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
        await _plain_client(small_lock_table.dsn)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(deposed.wait(), timeout=20)
        led = sum(group.is_leader for group in groups)
        assert 0 < led <= _LOCK_TABLE // CLAIM_SHARE
        await _plain_client(small_lock_table.dsn)
        said = [
            r for r in caplog.records if getattr(r, "notifelect_event", None) == "lock_table_full"
        ]
        assert len(said) == 1, said
        assert "max_locks_per_transaction" in said[0].getMessage()
    finally:
        await asyncio.gather(*(group.close() for group in groups), return_exceptions=True)


class _View:
    """What a session's claims use of it."""

    def __init__(self) -> None:
        self.names = Names()
        self.queries = ElectionQueries(self.names)
        self.node = 1
        self.lost: list[str] = []

    def lose(self, reason: str) -> None:
        self.lost.append(reason)


@pytest.mark.timeout(60)
async def test_a_claim_met_by_a_full_lock_table_takes_nothing_and_keeps_the_session(
    small_lock_table: ThrowawayPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """Another client filled the lock table (one entry left): a claim of several groups
    takes the first lock and fails on the next; the lock it took is given back, the
    groups are answered as not taken, it is said once, and the session is not lost.
    Once there is room, the same claim takes them all."""
    caplog.set_level(logging.ERROR, logger="notifelect")
    await _install(small_lock_table.dsn)
    view = _View()
    claims = Claims(cast(SessionView, view))
    asks = [(view.names.claim_key(f"g{i}"), f"g{i}") for i in range(3)]
    conn = await asyncpg.connect(small_lock_table.dsn)
    filler = await asyncpg.connect(small_lock_table.dsn)
    try:
        with pytest.raises(asyncpg.OutOfMemoryError):
            await filler.execute("SELECT pg_advisory_lock(k) FROM generate_series(1, 1000000) k")
        assert await filler.fetchval("SELECT pg_advisory_unlock(1)") is True
        for _ in range(2):
            assert await claims._try_claims(conn, asks) == [None, None, None]
        assert claims.held == set()
        assert view.lost == []
        await filler.close()
        mine = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert await conn.fetchval(mine) == 0
        assert await claims._try_claims(conn, asks) == [NEVER_LED] * 3
        assert await conn.fetchval(mine) == 3
    finally:
        await conn.close()
        await filler.close()
    said = [r for r in caplog.records if getattr(r, "notifelect_event", None) == "lock_table_full"]
    assert len(said) == 1, said
    assert "lock table is full" in said[0].getMessage()


@pytest.mark.timeout(120)
async def test_a_lock_table_another_client_filled_is_said_without_a_traceback(
    small_lock_table: ThrowawayPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """Another client fills the lock table while a node leads: the election's statements
    are refused ("out of shared memory"). That is no bug: it is said in warnings, with
    the server's hint and no traceback, and the group leads again once there is room."""
    caplog.set_level(logging.WARNING, logger="notifelect")
    await _install(small_lock_table.dsn)
    async with ElectionGroup(small_lock_table.dsn, "g", Settings()) as group:
        await group.wait_for_leadership(timeout=20)
        filler = await asyncpg.connect(small_lock_table.dsn)
        try:
            with pytest.raises(asyncpg.OutOfMemoryError):
                await filler.execute(
                    "SELECT pg_advisory_lock(k) FROM generate_series(1, 1000000) k"
                )
            await until(
                [group],
                lambda: any("out of shared memory" in r.getMessage() for r in caplog.records),
                timeout=20,
                what="the refusal said",
            )
        finally:
            await filler.close()  # its session locks go with it: room again
        await group.wait_for_leadership(timeout=60)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []  # no traceback
    said = [r.getMessage() for r in caplog.records if "out of shared memory" in r.getMessage()]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.getMessage() in said)
    assert any("max_locks_per_transaction" in m for m in said), said  # the server's hint
