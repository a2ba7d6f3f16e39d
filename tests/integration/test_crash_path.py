"""The path from a leader's crash to its standby's claim, on PostgreSQL: what the standby's
watcher reads once the leader's anchor ended, the connection it leaves, the standby that
followers read before the leader records one.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from notifelect import ElectionGroup, Settings
from notifelect.group import _postgres_transport
from notifelect.transport.base import Freed, Member
from notifelect.transport.connect import connector_for
from notifelect.transport.postgres import PostgresTransport
from notifelect.transport.session import Session
from notifelect.transport.session.liveness import Watchers, _leaders_ended
from tests.support.waiting import eventually, until

LEASE = 1.0
SETTINGS = Settings(election_interval=0.1, election_timeout=0.05, lease=LEASE, leader_timeout=0.5)


def process(dsn: str, name: str) -> str:
    """``dsn`` spelled for a session of its own (another "process")."""
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={name}"


async def joined(dsn: str, namespace: str) -> PostgresTransport:
    transport = _postgres_transport(
        dsn, SETTINGS.replace(namespace=namespace, strict_takeover=False), Member(priority=0)
    )
    assert isinstance(transport, PostgresTransport)
    await transport.open(lambda _: None, lambda _: None)
    return transport


def follows(group: ElectionGroup, leader: ElectionGroup) -> bool:
    return group.leader is not None and group.leader.node == leader.node


def session(transport: PostgresTransport) -> Session:
    assert transport.session is not None
    return transport.session


@pytest.fixture
async def admin(dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


async def db_eventually(probe: Callable[[], Awaitable[object]], *, what: str) -> None:
    deadline = time.monotonic() + 10
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within 10s")
        await asyncio.sleep(0.005)  # polling the server's view


async def lock_waiters(admin: asyncpg.Connection[Any]) -> int:
    return int(
        await admin.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE d.datname = current_database() AND l.locktype = 'advisory' AND NOT l.granted"
        )
    )


async def backend_alive(admin: asyncpg.Connection[Any], pid: int) -> bool:
    return bool(
        await admin.fetchval("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", pid)
    )


@pytest.mark.timeout(60)
async def test_one_watch_tells_a_release_from_a_death_per_group(
    dsn: str, namespace: str, admin: asyncpg.Connection[Any]
) -> None:
    """One leader session leads two groups; it releases one and then its process ends.
    The standby's single watcher reports the first released and the second died, read
    in the statement that follows the anchor's end."""
    released_ns, died_ns = f"{namespace}-r", f"{namespace}-d"
    async with AsyncExitStack() as stack:
        leader_dsn, standby_dsn = process(dsn, "leader"), process(dsn, "standby")
        lr = await joined(leader_dsn, released_ns)
        ld = await joined(leader_dsn, died_ns)
        sr = await joined(standby_dsn, released_ns)
        sd = await joined(standby_dsn, died_ns)
        for t in (sr, sd, lr, ld):
            stack.push_async_callback(t.close)
        assert lr.session is ld.session
        assert sr.session is sd.session
        granted_r = await lr.claim(fence=False)
        granted_d = await ld.claim(fence=False)
        assert granted_r is not None
        assert granted_d is not None
        leader = session(lr).node
        assert leader is not None
        watching = [asyncio.ensure_future(t.watch(leader)) for t in (sr, sd)]
        await db_eventually(lambda: lock_waiters(admin), what="the watcher on the anchor")
        await lr.release(granted_r.term, "test")
        for t in (lr, ld):  # the process ends: its groups' work has stopped
            t.abort()
            t.release_anchor()
        how = await asyncio.wait_for(asyncio.gather(*watching), 10)
        assert how == [Freed.RELEASED, Freed.DIED]


@pytest.mark.timeout(60)
async def test_the_read_after_an_end_waits_only_for_the_dead_leaders_claims(
    dsn: str, namespace: str, admin: asyncpg.Connection[Any]
) -> None:
    """The statement read once a leader's anchor ended waits (bounded) until no session
    holds the claim locks of the groups that leader still led unreleased; for another
    node it waits for nothing; past its bound it reads the rows alone."""
    holder = await joined(dsn, namespace)
    reader = await asyncpg.connect(dsn)
    try:
        granted = await holder.claim(fence=False)
        assert granted is not None
        s = session(holder)
        node = s.node
        assert node is not None

        rows = await asyncio.wait_for(_leaders_ended(reader, s, node + 1000, [namespace]), 5)
        assert [(r["namespace"], r["node"], r["released"]) for r in rows] == [
            (namespace, node, False)
        ]

        # Held for good: the bound passes (LockNotAvailable), the rows are read alone.
        started = time.monotonic()
        rows = await asyncio.wait_for(_leaders_ended(reader, s, node, [namespace]), 5)
        assert time.monotonic() - started >= 0.15
        assert [r["node"] for r in rows] == [node]

        # Freed while it waits: it returns once the lock is free.
        waiting = asyncio.ensure_future(_leaders_ended(reader, s, node, [namespace]))
        await db_eventually(lambda: lock_waiters(admin), what="the read waiting on the claim")
        await holder.release(granted.term, "test")
        rows = await asyncio.wait_for(waiting, 5)
        assert [r["node"] for r in rows] == [node]
    finally:
        await reader.close()
        await holder.close()


def retired(watchers: Watchers) -> bool:
    return not watchers.connections()


@pytest.mark.timeout(60)
async def test_a_watchers_connection_ends_a_moment_after_its_watch(
    dsn: str, namespace: str, admin: asyncpg.Connection[Any]
) -> None:
    """The connection of a watch that saw its leader die is not ended on the claim's
    path but a moment later; a session that closes ends it at once."""
    for close_at_once in (False, True):
        ns = f"{namespace}-{close_at_once}"
        leader = await joined(process(dsn, "leader"), ns)
        standby = await joined(process(dsn, "standby"), ns)
        try:
            granted = await leader.claim(fence=False)
            assert granted is not None
            node = session(leader).node
            assert node is not None
            watching = asyncio.ensure_future(standby.watch(node))
            await db_eventually(lambda: lock_waiters(admin), what="the watcher on the anchor")
            leader.abort()
            leader.release_anchor()
            assert await asyncio.wait_for(watching, 10) is Freed.DIED
            watchers = session(standby).watchers
            retiring = watchers.connections()
            assert len(retiring) == 1
            pid = retiring[0].get_server_pid()
            assert await backend_alive(admin, pid)
            if close_at_once:
                await standby.close()
                assert watchers.connections() == []
            else:
                await eventually(
                    functools.partial(retired, watchers), timeout=5, what="the connection ended"
                )

            async def gone(pid: int = pid) -> bool:
                return not await backend_alive(admin, pid)

            await db_eventually(gone, what="the watcher's backend gone")
        finally:
            await standby.close()
            await leader.close()


@pytest.mark.timeout(60)
async def test_followers_read_the_standby_due_while_none_is_recorded(
    dsn: str, namespace: str, admin: asyncpg.Connection[Any]
) -> None:
    """A term taken while no other member had registered records no standby; a member
    that joins then reads itself as the standby (in its survey and in the leader row), so
    it watches the leader at once rather than once the leader records it."""
    leader = await joined(process(dsn, "leader"), namespace)
    follower: PostgresTransport | None = None
    try:
        granted = await leader.claim(fence=False)
        assert granted is not None
        recorded = await admin.fetchval(
            "SELECT standby FROM notifelect_leader WHERE namespace = $1", namespace
        )
        assert recorded is None
        follower = await joined(process(dsn, "follower"), namespace)
        held, _, led = await follower.survey()
        assert held
        assert led is not None
        assert (led[1], led[3]) == (session(leader).node, follower.node)
        record = await follower.leader()
        assert record is not None
        assert record.standby == follower.node
    finally:
        if follower is not None:
            await follower.close()
        await leader.close()


@pytest.mark.timeout(60)
async def test_the_standby_of_a_leader_without_anchor_does_not_watch_it_again_and_again(
    dsn: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader on a borrowed connection has no anchor: its standby's watch ends at once,
    seeing nothing. The standby does not watch that leadership again (a new connection
    each time, and a search after each), neither from its surveys nor at each reading."""
    watches: list[int] = []
    watch = Watchers.watch

    async def counted(self: Watchers, leader: int, namespace: str) -> Freed:
        watches.append(leader)
        return await watch(self, leader, namespace)

    monkeypatch.setattr(Watchers, "watch", counted)
    borrowed = await asyncpg.connect(dsn)
    try:
        async with ElectionGroup(borrowed, namespace, SETTINGS) as leader:
            await leader.wait_for_leadership(timeout=10)
            async with ElectionGroup(process(dsn, "standby"), namespace, SETTINGS) as standby:
                await until([standby], lambda: watches == [leader.node], timeout=10)
                await asyncio.sleep(10 * SETTINGS.election_interval)  # observation window
                assert watches == [leader.node]
                assert follows(standby, leader)
    finally:
        await borrowed.close()


@pytest.mark.timeout(60)
async def test_the_elections_connections_keep_their_prepared_statements(
    dsn: str, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statements a take-over runs were prepared (and warmed) long before it: the
    connections keep them for as long as they live, not asyncpg's default five minutes,
    after which each would be prepared anew, a round trip more, in the take-over."""
    lifetimes: list[object] = []
    real = asyncpg.connect

    async def spy(*args: Any, **kwargs: Any) -> asyncpg.Connection[Any]:
        lifetimes.append(kwargs.get("max_cached_statement_lifetime", "default"))
        conn: asyncpg.Connection[Any] = await real(*args, **kwargs)
        return conn

    monkeypatch.setattr(asyncpg, "connect", spy)
    for target in (dsn, engine):
        connect, _ = connector_for(target)
        assert connect is not None
        conn = await connect()
        await conn.close()
    assert lifetimes == [0, 0]
