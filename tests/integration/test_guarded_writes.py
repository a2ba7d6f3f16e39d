"""A leader cut off in the middle of a guarded write must not stall its successor.

The leader's job holds the group's term row (the fencing guard, ``FOR SHARE``) when its
path fails. Its backend then waits on the client, holding the row, for as long as the path
stays half-open: either idle in its transaction (nothing more arrived) or in the middle of
a statement (the statement arrived, its answer did not). Neither
``idle_in_transaction_session_timeout`` nor ``statement_timeout`` ends the second. The
successor waits out the old lease, then terminates that backend and takes the term; the
old write never lands. (A server of its own: the leader's path goes through a TCP proxy.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from notifelect import ElectionGroup, Leadership, Settings
from tests.support.proxy import FaultProxy, Mode
from tests.support.servers import ThrowawayPostgres, sqlalchemy_url
from tests.support.waiting import until

FAST = Settings(election_interval=0.1, lease=1.0, leader_timeout=0.5, callback_timeout=1.0)
WRITES = "guarded_writes"


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def _until_query(admin: asyncpg.Connection[Any], pid: int, verb: str) -> None:
    """Wait until backend ``pid`` is running a statement that starts with ``verb``."""
    deadline = time.monotonic() + 10
    query = ""
    while time.monotonic() < deadline:
        query = await admin.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
        if str(query).lstrip().upper().startswith(verb):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"backend {pid} never ran {verb} (last: {query!r})")


@pytest.fixture
async def proxy(throwaway_pg: ThrowawayPostgres) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", throwaway_pg.port) as p:
        yield p


@pytest.fixture
async def proxied_engine(
    throwaway_pg: ThrowawayPostgres, proxy: FaultProxy
) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(
        sqlalchemy_url(_via(throwaway_pg.dsn, proxy.port)), connect_args={"ssl": False}
    )
    try:
        yield engine
    finally:
        proxy.set_mode(Mode.PASS)
        await engine.dispose(close=False)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("cut", "by_hand"),
    [
        pytest.param(Mode.BLACKHOLE, False, id="idle-in-transaction"),
        pytest.param(Mode.BLACKHOLE_REPLIES, False, id="mid-statement"),
        # A guard written by hand (or by an older release) takes no guard lock: its
        # backend is found as the row's locker.
        pytest.param(Mode.BLACKHOLE_REPLIES, True, id="mid-statement-by-hand"),
    ],
)
async def test_a_cut_off_leaders_guarded_write_is_fenced(
    throwaway_pg: ThrowawayPostgres,
    proxy: FaultProxy,
    proxied_engine: AsyncEngine,
    namespace: str,
    cut: Mode,
    by_hand: bool,
) -> None:
    dsn = throwaway_pg.dsn
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"CREATE TABLE IF NOT EXISTS {WRITES} (namespace text, term bigint)")
    guarded, go = asyncio.Event(), asyncio.Event()
    old = ElectionGroup(proxied_engine, namespace, FAST)
    new = ElectionGroup(dsn, namespace, FAST)

    @old.on_elected
    async def write(ls: Leadership) -> None:
        async with proxied_engine.begin() as conn:
            if by_hand:
                await conn.execute(
                    text("SELECT term FROM notifelect_term WHERE namespace = :ns FOR SHARE"),
                    {"ns": namespace},
                )
            else:
                await ls.fence(conn)
            guarded.set()
            await go.wait()
            await conn.execute(
                text(f"INSERT INTO {WRITES} (namespace, term) VALUES (:ns, :term)"),
                {"ns": namespace, "term": ls.term},
            )

    try:
        await old.__aenter__()
        first = await old.wait_for_leadership(timeout=20)
        await new.__aenter__()
        await new.wait_for_leader(timeout=20)
        await asyncio.wait_for(guarded.wait(), timeout=20)
        guard_pid = await admin.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'relation' AND mode = 'RowShareLock'"
            " AND relation = 'notifelect_term'::regclass"
        )
        assert guard_pid is not None

        proxy.set_mode(cut)
        go.set()  # the write goes out into the failed path
        if cut is Mode.BLACKHOLE_REPLIES:
            # The statement reached the server, its answer did not: the backend waits
            # for the client's next message in the middle of the statement.
            await _until_query(admin, guard_pid, "INSERT")
        # The server ends the leader's election session; the process lives on, cut off.
        leader_pid = await admin.fetchval(
            "SELECT backend_pid FROM notifelect_leader WHERE namespace = $1", namespace
        )
        cut_at = time.monotonic()
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", leader_pid)

        second = await new.wait_for_leadership(timeout=30)
        took = time.monotonic() - cut_at
        print(f"\nFIGURES guarded write cut off ({cut.value}): successor after {took:.3f}s")
        assert second.term > first.term
        # Silence seen, a whole lease waited out, the guarded transaction fenced.
        assert took < FAST.leader_timeout + FAST.lease + 1.0, took
        assert new.stats["fenced:guarded transaction"] >= 1
        assert not await admin.fetchval(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", guard_pid
        )
        # The path heals: the old write never lands.
        proxy.set_mode(Mode.PASS)
        await until([old], lambda: not old.is_leader, timeout=20, what="old leader stepped down")
        landed = await admin.fetchval(
            f"SELECT count(*) FROM {WRITES} WHERE namespace = $1 AND term = $2",
            namespace,
            first.term,
        )
        assert landed == 0
    finally:
        proxy.set_mode(Mode.PASS)
        for group in (new, old):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(group.close(), timeout=20)
        await admin.close()
