"""Regressions of the election session shared by every group of a process.

Each test pins a defect that review found in the first shared session (commit 02acdbd).
Two spellings of the DSN (``application_name=p1`` / ``p2``) give two sessions in one event
loop, standing in for two processes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import pytest

from notifelect import ConfigurationError, ElectionGroup, Leadership, Settings
from notifelect._clock import now
from notifelect.fencing import read_term_for_share
from notifelect.group import _postgres_transport
from notifelect.schema import Names
from notifelect.sql import ElectionQueries, lock_halves
from notifelect.transport.base import Member
from notifelect.transport.postgres import PostgresTransport
from notifelect.transport.serial import Serial
from notifelect.transport.session import Session, open_sessions
from tests.support.waiting import eventually, until

FAST = Settings(election_interval=0.1, election_timeout=0.05, lease=1.0, leader_timeout=0.5)
#: io_timeout (the bound of any one call on the shared connection) is the longer of lease
#: and leader_timeout: here a call that waits on the server that long outlasts the lease of
#: every other group of its session.
SLOW_IO = FAST.replace(leader_timeout=2.0)


def process(dsn: str, name: str) -> str:
    """``dsn`` spelled for a session of its own (another "process")."""
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={name}"


def session_of(group: ElectionGroup) -> Session:
    transport = group._transport
    assert isinstance(transport, PostgresTransport)
    assert transport.session is not None
    return transport.session


def follows(group: ElectionGroup, leader: ElectionGroup) -> bool:
    return group.leader is not None and group.leader.node == leader.node


def deposals(group: ElectionGroup) -> list[str | None]:
    """The reasons of ``group``'s lost leaderships, as they happen."""
    reasons: list[str | None] = []

    @group.on_deposed
    async def deposed(ls: Leadership) -> None:
        reasons.append(ls.ended_reason)

    return reasons


async def db_eventually(
    probe: Callable[[], Awaitable[object]], *, timeout: float, what: str
) -> None:
    """Poll an asynchronous ``probe`` (a query) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.002)


async def y_led_beside_x_follower(
    stack: AsyncExitStack, dsn: str, namespace: str, *, x_fences: bool = True
) -> tuple[ElectionGroup, ElectionGroup, ElectionGroup, list[str | None]]:
    """P1 leads group X; P2 leads group Y and follows X, on one session. With
    ``x_fences=False`` P2's member of X never terminates a backend (``fence=False``)."""
    x1 = await stack.enter_async_context(
        ElectionGroup(process(dsn, "p1"), f"{namespace}-x", SLOW_IO.replace(priority=1))
    )
    await x1.wait_for_leadership(timeout=10)
    y2 = ElectionGroup(process(dsn, "p2"), f"{namespace}-y", SLOW_IO)
    y_deposed = deposals(y2)
    await stack.enter_async_context(y2)
    await y2.wait_for_leadership(timeout=10)
    x2 = await stack.enter_async_context(
        ElectionGroup(process(dsn, "p2"), f"{namespace}-x", SLOW_IO.replace(fence=x_fences))
    )
    assert session_of(x2) is session_of(y2)
    await until(
        [x2],
        lambda: follows(x2, x1),
        timeout=10,
        what="X's member on P2 following P1",
    )
    return x1, y2, x2, y_deposed


async def hold_term_row(stack: AsyncExitStack, dsn: str, namespace: str) -> asyncpg.Connection[Any]:
    """Hold ``namespace``'s term row FOR SHARE, as a guarded write of the old term does."""
    outside = await asyncpg.connect(dsn)
    stack.push_async_callback(outside.close)
    await outside.execute("BEGIN")
    await read_term_for_share(outside, Names(), namespace)
    return outside


@pytest.mark.timeout(60)
async def test_claim_blocked_by_a_guarded_transaction_does_not_starve_the_session(
    dsn: str, namespace: str
) -> None:
    """P2's claim of X finds X's term row held FOR SHARE (and may not fence its holder);
    the claim must not hold the shared connection meanwhile: Y, led on that session, keeps
    its leadership and the session is not lost. Once the row is free, X is claimed."""
    async with AsyncExitStack() as stack:
        x1, y2, x2, y_deposed = await y_led_beside_x_follower(stack, dsn, namespace, x_fences=False)
        session = session_of(y2)
        outside = await hold_term_row(stack, dsn, f"{namespace}-x")
        claims = x2.stats["elections"]
        await x1.close()  # X's leader resigns: P2 claims X and meets the held row
        await until([x2], lambda: x2.stats["elections"] > claims, timeout=10, what="P2's claim")
        await asyncio.sleep(3 * SLOW_IO.lease)  # observation window
        assert y_deposed == []
        assert y2.is_leader
        assert session.usable
        assert session_of(y2) is session
        await outside.execute("ROLLBACK")
        await until([x2], lambda: x2.is_leader, timeout=10, what="X claimed on P2")


@pytest.mark.timeout(60)
async def test_fencing_a_held_term_row_leaves_the_sessions_other_groups_alone(
    dsn: str, namespace: str
) -> None:
    """The same, with fencing: the old leadership was released, so the holder of X's term
    row gets one lease to finish; then P2 terminates it and takes X. Y, led on that
    session, goes on undisturbed."""
    async with AsyncExitStack() as stack:
        x1, y2, x2, y_deposed = await y_led_beside_x_follower(stack, dsn, namespace)
        session = session_of(y2)
        outside = await hold_term_row(stack, dsn, f"{namespace}-x")
        await x1.close()
        await until([x2], lambda: x2.is_leader, timeout=10, what="X claimed on P2")
        assert x2.stats["fenced:guarded transaction"] == 1
        assert outside.is_closed() or not await _alive(dsn, outside.get_server_pid())
        assert y_deposed == []
        assert y2.is_leader
        assert session.usable
        assert session_of(y2) is session


async def _alive(dsn: str, pid: int) -> bool:
    admin = await asyncpg.connect(dsn)
    try:
        return bool(
            await admin.fetchval("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", pid)
        )
    finally:
        await admin.close()


@pytest.mark.timeout(60)
async def test_closing_a_group_with_its_claim_in_flight_keeps_the_session(
    dsn: str, namespace: str
) -> None:
    """Closing X's member on P2 while its claim runs on the shared connection (waiting on
    the server for X's held term row) must not break the session: Y, led on it, stays."""
    async with AsyncExitStack() as stack:
        x1, y2, x2, y_deposed = await y_led_beside_x_follower(stack, dsn, namespace, x_fences=False)
        session = session_of(y2)
        assert session.conn is not None
        election_pid = session.conn.get_server_pid()
        await hold_term_row(stack, dsn, f"{namespace}-x")
        admin = await asyncpg.connect(dsn)
        stack.push_async_callback(admin.close)
        claims = x2.stats["elections"]
        await x1.close()

        async def claim_in_flight() -> bool:
            waiting = await admin.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)",
                election_pid,
            )
            # The fixed claim waits only 20 ms at a time for the row (then tries again
            # later), so a poll may miss every wait: a few attempts also do.
            return bool(waiting) or x2.stats["elections"] >= claims + 3

        await db_eventually(claim_in_flight, timeout=10, what="P2's claim of X in flight")
        await x2.close()
        await asyncio.sleep(2 * SLOW_IO.lease)  # observation window
        assert y_deposed == []
        assert y2.is_leader
        assert session.usable
        assert session_of(y2) is session


@pytest.mark.timeout(60)
async def test_a_group_that_lapsed_and_left_does_not_look_alive(dsn: str, namespace: str) -> None:
    """X's leader on P1 lapses (its event loop is blocked past the lease), gives its claim
    back without releasing its term, rejoins P1's session and leaves it, while the session
    lives on for P1's follower of group Z. X's leader row must not borrow that session's
    renewals: X's other member (P2) becomes leader."""
    # io_timeout (2 s) outlasts the block: no call in flight times out, no session is lost.
    s = Settings(election_interval=0.1, election_timeout=0.05, lease=0.5, leader_timeout=2.0)
    p1, p2 = process(dsn, "p1"), process(dsn, "p2")
    async with AsyncExitStack() as stack:
        z2 = await stack.enter_async_context(ElectionGroup(p2, f"{namespace}-z", s))
        await z2.wait_for_leadership(timeout=10)
        x1 = await stack.enter_async_context(ElectionGroup(p1, f"{namespace}-x", s))
        z1 = await stack.enter_async_context(ElectionGroup(p1, f"{namespace}-z", s))
        await x1.wait_for_leadership(timeout=10)
        x2 = await stack.enter_async_context(ElectionGroup(p2, f"{namespace}-x", s))
        await until(
            [x2, z1],
            lambda: follows(x2, x1) and follows(z1, z2),
            timeout=10,
            what="P2 following X, P1 following Z",
        )
        session = session_of(z1)
        # The test owns the event loop: this blocks every group (both "processes").
        time.sleep(2 * s.lease)  # noqa: ASYNC251
        # Closed once rejoined and idle: no call of its own in flight that a close would cut
        # off (at 02acdbd that lost the whole session, which hid this defect).
        await until(
            [x1],
            lambda: x1.stats["reconnects"] >= 1 and not x1._driver._helpers,
            timeout=10,
            what="X lapsed and rejoined",
        )
        assert not x1.is_leader
        assert session.usable
        assert session_of(x1) is session  # rejoined P1's session, which goes on ticking
        await x1.close()
        await until([x2], lambda: x2.is_leader, timeout=15, what="P2 leading X")


@pytest.mark.timeout(60)
async def test_a_cancelled_open_leaves_no_session_behind(dsn: str, namespace: str) -> None:
    """Cancelling ``__aenter__`` while the shared session opens leaves no session (and no
    connection) behind."""
    admin = await asyncpg.connect(dsn)
    group = ElectionGroup(dsn, namespace, FAST)
    try:
        opening = asyncio.ensure_future(group.__aenter__())
        await eventually(open_sessions, timeout=10, what="a session opening")
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        await eventually(lambda: not open_sessions(), timeout=10, what="no session open")

        async def no_backends() -> bool:
            count = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name LIKE 'notifelect%'"
            )
            return bool(count == 0)

        await db_eventually(no_backends, timeout=10, what="no notifelect backend")
    finally:
        await group.close()
        await admin.close()


@pytest.mark.timeout(60)
async def test_no_process_gone_evidence_while_cancelled_work_runs(dsn: str, namespace: str) -> None:
    """A leader's close() is cancelled while its on_elected work ignores the
    cancellation: the standby (strict_takeover=False) must not take over on the evidence
    that the leader's process is gone before that work has stopped."""
    s = FAST.replace(strict_takeover=False, callback_timeout=30.0)
    work_cancelled, finish = asyncio.Event(), asyncio.Event()
    work_ended: list[float] = []
    elected: list[float] = []
    x1 = ElectionGroup(process(dsn, "p1"), namespace, s.replace(priority=1))
    x2 = ElectionGroup(process(dsn, "p2"), namespace, s)

    @x1.on_elected
    async def stubborn(ls: Leadership) -> None:
        try:
            await asyncio.Future()
        finally:
            work_cancelled.set()
            while not finish.is_set():  # still acting after the cancellation
                with contextlib.suppress(asyncio.CancelledError):
                    await finish.wait()
            work_ended.append(now())

    @x2.on_elected
    async def took_over(ls: Leadership) -> None:
        elected.append(now())

    async with AsyncExitStack() as stack:
        await stack.enter_async_context(x1)
        await x1.wait_for_leadership(timeout=10)
        s1 = session_of(x1)
        await stack.enter_async_context(x2)
        stack.callback(finish.set)
        admin = await asyncpg.connect(dsn)
        stack.push_async_callback(admin.close)
        await db_eventually(
            lambda: admin.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                " WHERE d.datname = current_database() AND l.locktype = 'advisory'"
                " AND NOT l.granted)"
            ),
            timeout=10,
            what="the standby's watcher waiting on the leader's anchor",
        )
        closing = asyncio.ensure_future(x1.close())
        await asyncio.wait_for(work_cancelled.wait(), 10)
        closing.cancel()
        cancelled_at = now()
        with pytest.raises(asyncio.CancelledError):
            await closing
        await until([x2], lambda: bool(elected), timeout=10, what="the standby elected")
        finish.set()  # the work is held until the standby leads: it ran at its election
        # The end of the leader's anchor is the standby's evidence that the leader's
        # process is gone (Freed.DIED), on which strict_takeover=False takes over at once.
        # It is sound only once the leader's work has stopped, so the anchor outlives that
        # work (Driver._release_anchor_after_work, Session.work_stopped). Without the
        # evidence the standby waits a whole lease on its own clock from when it took the
        # claim, which the leader gave back only after the cancel. So the standby's
        # election comes after the work ended, or at least a lease after the cancel (less
        # a little timer granularity).
        took_over_at = elected[0]
        assert (work_ended and took_over_at >= work_ended[0]) or (
            took_over_at - cancelled_at >= s.lease - 0.01
        ), f"standby elected {took_over_at - cancelled_at:.3f}s after the cancel"
        await eventually(lambda: s1.anchor is None, timeout=10, what="the anchor gone")


# -------------------------------------------------------------- claims of many groups at once


async def claim_holders(conn: asyncpg.Connection[Any], namespace: str) -> list[tuple[int, int]]:
    """(backend pid, how many times) the claim lock of ``namespace`` is held."""
    key = Names().claim_key(namespace)
    rows = await conn.fetch(
        "SELECT pid, count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = $1 AND objid = $2 AND objsubid = 1 GROUP BY pid",
        *lock_halves(key),
    )
    return [(r["pid"], r["n"]) for r in rows]


async def open_transport(
    dsn: str | asyncpg.Connection[Any],
    namespace: str,
    settings: Settings = FAST,
    on_lost: Callable[[object], None] = lambda _: None,
) -> PostgresTransport:
    """A group's transport, joined (on a DSN's session, or on a borrowed connection)."""
    transport = _postgres_transport(dsn, settings.replace(namespace=namespace), Member(priority=0))
    assert isinstance(transport, PostgresTransport)
    await transport.open(lambda _: None, on_lost)
    return transport


@pytest.mark.timeout(60)
async def test_a_claim_that_fails_after_taking_the_lock_gives_it_back(
    dsn: str, namespace: str
) -> None:
    """The claims round takes the lock, then its read of the leader row fails: the lock is
    given back, so a later claim takes it once, and one release frees it for others."""
    admin = await asyncpg.connect(dsn)
    transport = await open_transport(dsn, namespace)
    try:
        session = transport.session
        assert session is not None
        good = session.queries.leaders_released
        session.queries.leaders_released = "SELECT no_such_column FROM pg_class"
        with pytest.raises(asyncpg.UndefinedColumnError):
            await transport.claim(fence=False)
        session.queries.leaders_released = good
        assert await claim_holders(admin, namespace) == []

        granted = await transport.claim(fence=False)
        assert granted is not None
        # Taken once: one release frees it (pg_locks shows a lock taken twice as one row).
        await transport.release(granted.term, "resigned")
        assert await claim_holders(admin, namespace) == []
    finally:
        await transport.close()
        await admin.close()


@pytest.mark.timeout(60)
async def test_a_claim_cut_short_while_its_term_is_taken_disowns_the_term(
    dsn: str, namespace: str
) -> None:
    """A claim cancelled while the round taking its term runs (the term is committed
    all the same) gives the claim back and disowns the leader row: the session's
    renewals do not keep a leadership nobody holds alive, and another process takes over
    (after waiting out the lease: the term was not released)."""
    admin = await asyncpg.connect(dsn)
    transport = await open_transport(dsn, namespace)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(admin.close)
        stack.push_async_callback(transport.close)
        session = transport.session
        assert session is not None
        # The round that takes terms lasts long enough to cut the claim short meanwhile.
        slow = session.queries.take_terms + ", pg_sleep(0.5)"
        session.queries.take_terms = f"/* cut short */ {slow}"
        claim = asyncio.create_task(transport.claim(fence=False))
        await db_eventually(
            lambda: admin.fetchval(
                "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE query LIKE '/* cut short */%'"
                " AND state = 'active' AND pid <> pg_backend_pid())"
            ),
            timeout=10,
            what="the round taking the term running",
        )
        claim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await claim
        await db_eventually(
            lambda: admin.fetchval(
                f"SELECT backend_pid = 0 FROM {Names().leader} WHERE namespace = $1", namespace
            ),
            timeout=10,
            what="the leader row disowned",
        )
        assert await claim_holders(admin, namespace) == []
        other = await stack.enter_async_context(
            ElectionGroup(process(dsn, "p2"), settings=FAST.replace(namespace=namespace))
        )
        await other.wait_for_leadership(timeout=10)


@pytest.mark.timeout(60)
async def test_a_busy_row_of_one_group_does_not_fail_the_others_claimed_with_it(
    dsn: str, namespace: str
) -> None:
    """Two groups of one session claim at once while another session writes the leader
    row of one of them: the other group takes its term; the busy one is refused without
    waiting, and takes its term once the row is free."""
    free_ns, busy_ns = f"{namespace}-free", f"{namespace}-busy"
    async with AsyncExitStack() as stack:
        free = await open_transport(dsn, free_ns)
        stack.push_async_callback(free.close)
        busy = await open_transport(dsn, busy_ns)
        stack.push_async_callback(busy.close)
        assert free.session is busy.session
        for transport in (free, busy):  # both groups get a leader row
            granted = await transport.claim(fence=False)
            assert granted is not None
            await transport.release(granted.term, "resigned")
        outside = await asyncpg.connect(dsn)
        stack.push_async_callback(outside.close)
        await outside.execute("BEGIN")
        await outside.execute(
            f"SELECT FROM {Names().leader} WHERE namespace = $1 FOR UPDATE", busy_ns
        )
        got_free, got_busy = await asyncio.gather(free.claim(fence=False), busy.claim(fence=False))
        assert got_free is not None
        assert got_busy is None
        await outside.execute("COMMIT")
        assert await busy.claim(fence=False) is not None


# -------------------------------------------------------------- reading only what changed


@pytest.mark.timeout(60)
async def test_the_periodic_statement_reads_each_change_once_committed(dsn: str) -> None:
    """A session's periodic statement reads a leader row again only once a write of it
    has committed after the previous read, however many groups there are; a write still
    running at one read is read at the next (its transaction id is at least that read's
    horizon)."""
    q = ElectionQueries(Names())
    groups = [f"g{i}" for i in range(50)]
    conn = await asyncpg.connect(dsn)
    writer = await asyncpg.connect(dsn)
    try:
        await conn.execute(q.register_session, 1, "host", 1)
        await conn.execute(
            f"INSERT INTO {Names().leader} (namespace, term, node, priority, host, pid,"
            " backend_pid, since, renewed_at, released)"
            " SELECT g, 1, 2, 0, 'host', 2, 0, now(), now(), false FROM unnest($1::text[]) g",
            groups,
        )
        first = await conn.fetchrow(q.tick, 1, None, groups, [])
        assert first is not None
        assert first["renewed"] == 1
        assert sorted(row[0] for row in rows(first["leaders"])) == sorted(groups)
        horizon = first["horizon"]

        async def quiet() -> bool:
            """Once no older transaction runs in the cluster, nothing is read again."""
            nonlocal horizon
            row = await conn.fetchrow(q.tick, 1, horizon, [], ["2"])
            assert row is not None
            horizon = row["horizon"]
            return not rows(row["leaders"])

        await db_eventually(quiet, timeout=20, what="a read with nothing changed")

        await writer.execute("BEGIN")
        await writer.execute(f"UPDATE {Names().leader} SET standby = 7 WHERE namespace = 'g7'")
        during = await conn.fetchrow(q.tick, 1, horizon, [], ["2"])
        assert during is not None
        assert all(row[0] != "g7" or row[8] is None for row in rows(during["leaders"]))
        await writer.execute("COMMIT")
        after = await conn.fetchrow(q.tick, 1, during["horizon"], [], ["2"])
        assert after is not None
        assert [(row[0], row[8]) for row in rows(after["leaders"])] == [("g7", 7)]
        assert [session[0] for session in rows(after["sessions"])] == []  # no session of 2
    finally:
        await writer.close()
        await conn.close()


def rows(column: str | None) -> list[list[Any]]:
    """The rows of a JSON column of the periodic statement (NULL: none)."""
    return [] if column is None else list(json.loads(column))


@pytest.mark.timeout(60)
async def test_a_claim_that_cannot_be_disowned_ends_the_session(dsn: str, namespace: str) -> None:
    """Giving back a leadership that was not released needs its row (disowned first, or
    the session's renewals would keep it alive). If another session holds that row, the
    claim is not kept waiting on the shared connection, nor given back with its row still
    renewed: the whole session is lost, and its end frees the claim."""
    lost: list[object] = []
    async with AsyncExitStack() as stack:
        admin = await asyncpg.connect(dsn)
        stack.push_async_callback(admin.close)
        leader = await open_transport(dsn, f"{namespace}-a")
        stack.push_async_callback(leader.close)
        other = await open_transport(dsn, f"{namespace}-b", on_lost=lost.append)
        stack.push_async_callback(other.close)
        assert leader.session is other.session
        assert await leader.claim(fence=False) is not None
        await admin.execute("BEGIN")
        await admin.execute(
            f"SELECT FROM {Names().leader} WHERE namespace = $1 FOR UPDATE", f"{namespace}-a"
        )
        started = time.monotonic()
        await leader.close()  # gives the claim back without releasing the term
        assert time.monotonic() - started < FAST.io_timeout  # nothing waited on the row
        await admin.execute("ROLLBACK")
        assert lost  # every group of the session was told; each lets go (as its driver)
        other.abort()
        await db_eventually(
            lambda: _no_holder(admin, f"{namespace}-a"), timeout=10, what="the claim freed"
        )


async def _no_holder(conn: asyncpg.Connection[Any], namespace: str) -> bool:
    return await claim_holders(conn, namespace) == []


@pytest.mark.timeout(60)
async def test_a_successor_waits_out_the_lease_its_predecessor_acts_on(
    dsn: str, namespace: str
) -> None:
    """Members of a group may run with different leases: after an unclean end, the
    successor waits out the old leader's lease (recorded with its term) when it is
    longer than its own."""
    long_lease = FAST.replace(lease=3.0, leader_timeout=3.0)
    async with AsyncExitStack() as stack:
        admin = await asyncpg.connect(dsn)
        stack.push_async_callback(admin.close)
        old = await open_transport(process(dsn, "p1"), namespace, long_lease)
        stack.push_async_callback(old.close)
        assert await old.claim(fence=False) is not None
        assert old.connection is not None
        await admin.fetchval("SELECT pg_terminate_backend($1)", old.connection.get_server_pid())
        await db_eventually(lambda: _no_holder(admin, namespace), timeout=10, what="claim freed")
        new = await open_transport(process(dsn, "p2"), namespace)  # lease 1.0
        stack.push_async_callback(new.close)
        started = time.monotonic()
        assert await new.claim(fence=False) is not None
        assert time.monotonic() - started >= long_lease.lease


@pytest.mark.timeout(60)
async def test_a_borrowed_connection_gives_back_what_a_lost_session_left(
    dsn: str, namespace: str
) -> None:
    """A borrowed connection outlives its sessions and their claims: the next session on
    it disowns and gives back the lost one's claim of each group that joins, so nothing
    is held twice and the group can be led elsewhere."""
    admin = await asyncpg.connect(dsn)
    borrowed = await asyncpg.connect(dsn)
    try:
        transport = await open_transport(borrowed, namespace)
        assert await transport.claim(fence=False) is not None
        session = transport.session
        assert session is not None
        session.lose("lost on purpose")
        transport.abort()
        assert await claim_holders(admin, namespace) == [(borrowed.get_server_pid(), 1)]
        await transport.open(lambda _: None, lambda _: None)  # a new session, same backend
        assert transport.session is not session
        assert await claim_holders(admin, namespace) == []
        assert (
            await admin.fetchval(
                f"SELECT backend_pid FROM {Names().leader} WHERE namespace = $1", namespace
            )
            == 0
        )
        # The new session knows it holds nothing: a claim takes the lock for real.
        assert await transport.claim(fence=False) is not None
        assert await claim_holders(admin, namespace) == [(borrowed.get_server_pid(), 1)]
        # One connection, one member of each group: a second is refused.
        with pytest.raises(ConfigurationError, match="one member of each group"):
            await open_transport(borrowed, namespace)
        await transport.close()
    finally:
        await borrowed.close()
        await admin.close()


#: The batched claim statement, failing on the server after it took the first lock of
#: its first batch of several groups (as a full lock table, a statement timeout or a
#: cancel make it fail part-way); every later statement works.
FAILING_CLAIMS = (
    "SELECT CASE WHEN u.i > 1 THEN CASE WHEN nextval('claims_failed') = 1"
    " THEN (1 / (u.i * 0))::int::bool ELSE pg_try_advisory_lock(u.k) END"
    " ELSE pg_try_advisory_lock(u.k) END AS got"
    " FROM unnest($1::text[]::bigint[]) WITH ORDINALITY AS u(k, i) ORDER BY u.i"
)


@pytest.mark.timeout(60)
async def test_a_claim_statement_that_fails_part_way_leaks_no_lock(
    dsn: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The locks a failed claim statement took are given back: after P1 hands its groups
    over, P2 leads every one of them (none stays held by P1's living session)."""
    admin = await asyncpg.connect(dsn)
    await admin.execute("CREATE SEQUENCE claims_failed")
    original = ElectionQueries.__init__

    def failing(self: ElectionQueries, names: Names) -> None:
        original(self, names)
        self.try_claims = FAILING_CLAIMS

    monkeypatch.setattr(ElectionQueries, "__init__", failing)
    names = [f"{namespace}-{i}" for i in range(5)]
    try:
        async with AsyncExitStack() as stack:
            p1 = process(dsn, "p1")
            keep = await stack.enter_async_context(ElectionGroup(p1, f"{namespace}-keep", FAST))
            groups = [ElectionGroup(p1, name, FAST) for name in names]
            await asyncio.gather(*(g.__aenter__() for g in groups))
            for g in groups:
                stack.push_async_callback(g.close)
            await until(
                groups, lambda: all(g.is_leader for g in groups), timeout=20, what="P1 leads"
            )
            assert await admin.fetchval("SELECT last_value FROM claims_failed") >= 1  # it failed
            followers = [
                await stack.enter_async_context(ElectionGroup(process(dsn, "p2"), name, FAST))
                for name in names
            ]
            await until(followers, lambda: all(f.leader is not None for f in followers), timeout=20)
            for g in groups:
                await g.close()  # hand over; P1's session lives on (keep)
            await until(
                followers,
                lambda: all(f.is_leader for f in followers),
                timeout=20,
                what="P2 leads every group",
            )
            assert keep.is_leader
    finally:
        await admin.close()


@pytest.mark.timeout(60)
async def test_the_election_runs_with_its_triggers_firing(dsn: str, namespace: str) -> None:
    """A role or database set to session_replication_role = replica (meant for
    replication tools) would keep the trigger that marks leader-row changes from firing,
    and the other sessions, which read only what changed, from seeing this node's
    leaderships: the election connection sets it back (or refuses)."""
    replica = f"{dsn}{'&' if '?' in dsn else '?'}session_replication_role=replica"
    async with ElectionGroup(replica, namespace, FAST) as group:
        await group.wait_for_leadership(timeout=10)
        serial = session_of(group).serial
        assert serial is not None
        assert await serial.fetchval("SHOW session_replication_role") == "origin"
        stamped = await serial.fetchval(
            "SELECT changed IS NOT NULL FROM notifelect_leader WHERE namespace = $1", namespace
        )
        assert stamped


@pytest.mark.timeout(120)
async def test_many_groups_joining_at_once_cost_statements_per_session_not_per_group(
    dsn: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes join the same 100 groups at once: their surveys and member
    registrations run a statement per session (LISTEN stays one per group, and one for the
    session's own channel), so joining
    costs about one call per group and process on the election connections, not three."""
    calls: collections.Counter[str] = collections.Counter()
    run = Serial.run

    async def counted(self: Serial, what: str, *args: Any, **kwargs: Any) -> Any:
        calls[what] += 1
        return await run(self, what, *args, **kwargs)

    monkeypatch.setattr(Serial, "run", counted)
    names = [f"{namespace}-{i}" for i in range(100)]
    async with AsyncExitStack() as stack:
        groups = [
            ElectionGroup(process(dsn, p), name, FAST) for p in ("p1", "p2") for name in names
        ]
        await asyncio.gather(*(g.__aenter__() for g in groups))
        for g in groups:
            stack.push_async_callback(g.close)
        await until(
            groups,
            lambda: (
                sum(g.is_leader for g in groups) == len(names)
                and all(g.leader is not None for g in groups)
            ),
            timeout=60,
            what="one leader per group",
        )
        joined = sum(calls.values()) - calls["a renewal"]
        print(f"\nFIGURES 2 processes x {len(names)} groups joined: {dict(calls)}")
        assert calls["LISTEN"] == 2 * len(names) + 2  # and each session's own channel
        # Unbatched, the surveys and registrations alone were 400 calls more.
        assert joined < 2 * len(names) + 50, calls
