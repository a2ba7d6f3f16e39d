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
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from notifelect import ConfigurationError, ElectionGroup, Leadership, NotLeaderError, Settings
from tests.support.proxy import FaultProxy, Mode
from tests.support.servers import ThrowawayPostgres, sqlalchemy_url
from tests.support.waiting import until

FAST = Settings(election_interval=0.1, lease=1.0, leader_timeout=0.5, callback_timeout=1.0)
WRITES = "guarded_writes"

#: How the cut-off leader's election session ends: the server ends its backend (as a
#: keep-alive or an administrator would); nobody does, and the successor fences the silent
#: claim holder itself; an operator terminates every session of the election, the
#: anchors included.
ENDINGS = ["terminated", "silent", "every-session"]


def _via(dsn: str, port: int, user: str | None = None) -> str:
    parts = urlsplit(dsn)
    user = user or parts.username
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class MidWrite:
    """A leader (through ``proxy``) whose ``on_elected`` job passes the guard, then writes
    once the test lets it; and a follower on a direct connection."""

    admin: asyncpg.Connection[Any]
    proxy: FaultProxy
    engine: AsyncEngine
    old: ElectionGroup
    new: ElectionGroup
    namespace: str
    guarded: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.old.on_elected(self._write)

    async def _write(self, ls: Leadership) -> None:
        async with self.engine.begin() as conn:
            await ls.fence(conn)
            self.guarded.set()
            await self.go.wait()
            await conn.execute(
                text(f"INSERT INTO {WRITES} (namespace, term) VALUES (:ns, :term)"),
                {"ns": self.namespace, "term": ls.term},
            )

    async def cut_mid_write(self, cut: Mode) -> tuple[int, int]:
        """Elect the old leader, let its job take the guard, cut its path and send the
        write into it; return its term and the guarded backend's pid."""
        await self.admin.execute(
            f"CREATE TABLE IF NOT EXISTS {WRITES} (namespace text, term bigint)"
        )
        await self.old.__aenter__()
        term = (await self.old.wait_for_leadership(timeout=20)).term
        await self.new.__aenter__()
        await self.new.wait_for_leader(timeout=20)
        await asyncio.wait_for(self.guarded.wait(), timeout=20)
        pid = await self.admin.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'relation' AND mode = 'RowShareLock'"
            " AND relation = 'notifelect_term'::regclass"
        )
        assert pid is not None
        self.proxy.set_mode(cut)
        self.go.set()  # the write goes out into the failed path
        if cut is Mode.BLACKHOLE_REPLIES:
            # The statement reached the server, its answer did not: the backend waits
            # for the client's next message in the middle of the statement.
            await _until_query(self.admin, pid, "INSERT")
        return term, pid

    async def end_election_session(self, ending: str) -> None:
        if ending == "terminated":
            # The server ends the leader's election session; the process lives on, cut off.
            leader_pid = await self.admin.fetchval(
                "SELECT backend_pid FROM notifelect_leader WHERE namespace = $1", self.namespace
            )
            assert await self.admin.fetchval("SELECT pg_terminate_backend($1)", leader_pid)
        elif ending == "every-session":
            ended = await self.admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name LIKE 'notifelect%' AND datname = current_database()"
            )
            assert ended >= 4  # both election sessions and both anchors

    async def landed(self, term: int) -> int:
        """How many writes of ``term`` committed."""
        return int(
            await self.admin.fetchval(
                f"SELECT count(*) FROM {WRITES} WHERE namespace = $1 AND term = $2",
                self.namespace,
                term,
            )
        )

    async def close(self) -> None:
        self.proxy.set_mode(Mode.PASS)
        for group in (self.new, self.old):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(group.close(), timeout=20)
        await self.admin.close()


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


def _engine(dsn: str, port: int, user: str | None = None) -> AsyncEngine:
    return create_async_engine(sqlalchemy_url(_via(dsn, port, user)), connect_args={"ssl": False})


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("cut", "ending"),
    [
        *(pytest.param(Mode.BLACKHOLE, e, id=f"idle-in-transaction-{e}") for e in ENDINGS),
        *(pytest.param(Mode.BLACKHOLE_REPLIES, e, id=f"mid-statement-{e}") for e in ENDINGS),
    ],
)
async def test_a_cut_off_leaders_guarded_write_is_fenced(
    throwaway_pg: ThrowawayPostgres,
    proxy: FaultProxy,
    namespace: str,
    cut: Mode,
    ending: str,
) -> None:
    engine = _engine(throwaway_pg.dsn, proxy.port)
    run = MidWrite(
        admin=await asyncpg.connect(throwaway_pg.dsn),
        proxy=proxy,
        engine=engine,
        old=ElectionGroup(engine, namespace, FAST),
        new=ElectionGroup(throwaway_pg.dsn, namespace, FAST),
        namespace=namespace,
    )
    try:
        term, guard_pid = await run.cut_mid_write(cut)
        cut_at = time.monotonic()
        await run.end_election_session(ending)
        second = await run.new.wait_for_leadership(timeout=30)
        took = time.monotonic() - cut_at
        print(
            f"\nFIGURES guarded write cut off ({cut.value}, {ending}): successor after {took:.3f}s"
        )
        assert second.term > term
        # Silence seen (renewals stop counting within two intervals), a whole lease
        # waited out, the guarded transaction fenced; a second to spare.
        bound = FAST.leader_timeout + 2 * FAST.election_interval + FAST.lease + 1.0
        assert took < bound, took
        assert run.new.stats["fenced:guarded transaction"] >= 1
        assert not await run.admin.fetchval(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", guard_pid
        )
        # The path heals: the old write never lands.
        proxy.set_mode(Mode.PASS)
        await until([run.old], lambda: not run.old.is_leader, timeout=20, what="old stepped down")
        assert await run.landed(term) == 0
    finally:
        await run.close()
        await engine.dispose(close=False)


@pytest.mark.timeout(90)
async def test_without_permission_to_fence_it_says_so_once_and_waits(
    throwaway_pg: ThrowawayPostgres,
    proxy: FaultProxy,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The election runs as a role that may not terminate the application's backends.
    dsn = throwaway_pg.dsn
    admin = await asyncpg.connect(dsn)
    for role in ("elect", "app"):
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        await admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    await admin.execute(f"CREATE TABLE {WRITES} (namespace text, term bigint)")
    await admin.execute(f"GRANT ALL ON {WRITES} TO app")
    engine = _engine(dsn, proxy.port, "app")
    run = MidWrite(
        admin=admin,
        proxy=proxy,
        engine=engine,
        old=ElectionGroup(_via(dsn, proxy.port, "elect"), namespace, FAST),
        new=ElectionGroup(_via(dsn, throwaway_pg.port, "elect"), namespace, FAST),
        namespace=namespace,
    )
    caplog.set_level(logging.WARNING, logger="notifelect")
    try:
        await run.cut_mid_write(Mode.BLACKHOLE_REPLIES)
        await run.end_election_session("terminated")

        def denied() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if getattr(r, "notifelect_event", None) == "fence_denied"
                and "previous term" in r.getMessage()
            ]

        await until([run.new], denied, timeout=20, what="fencing denied")
        # It keeps trying (and saying nothing more) while the transaction holds the term.
        claims = run.new.stats["elections"]
        await until(
            [run.new], lambda: run.new.stats["elections"] >= claims + 2, timeout=20, what="retries"
        )
        assert not run.new.is_leader
        (message,) = denied()
        assert "pg_signal_backend" in message
        assert "transaction_timeout" in message
        # The path heals and the old transaction ends: the take-over proceeds.
        proxy.set_mode(Mode.PASS)
        await run.new.wait_for_leadership(timeout=30)
    finally:
        await run.close()
        await engine.dispose(close=False)


#: What the server's own timeouts do for a backend whose client was cut off in the middle
#: of a transaction (the table in docs/guides/fencing.md): (how the path fails, the
#: setting, whether it ends the backend).
TIMEOUTS = [
    pytest.param(Mode.BLACKHOLE, "idle_in_transaction_session_timeout", True, id="idle-iit"),
    pytest.param(Mode.BLACKHOLE, "statement_timeout", False, id="idle-statement"),
    pytest.param(
        Mode.BLACKHOLE_REPLIES, "idle_in_transaction_session_timeout", False, id="mid-iit"
    ),
    pytest.param(Mode.BLACKHOLE_REPLIES, "statement_timeout", False, id="mid-statement"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("cut", "setting", "ends"), TIMEOUTS)
async def test_what_the_servers_own_timeouts_do_for_a_cut_off_transaction(
    throwaway_pg: ThrowawayPostgres, proxy: FaultProxy, cut: Mode, setting: str, ends: bool
) -> None:
    admin = await asyncpg.connect(throwaway_pg.dsn)
    await admin.execute(f"CREATE TABLE IF NOT EXISTS {WRITES} (namespace text, term bigint)")
    conn = await asyncpg.connect(
        _via(throwaway_pg.dsn, proxy.port), ssl=False, server_settings={setting: "200"}
    )
    pid = conn.get_server_pid()
    write: asyncio.Future[str] | None = None
    try:
        await conn.execute("BEGIN")
        await conn.fetchval("SELECT term FROM notifelect_term LIMIT 1")
        proxy.set_mode(cut)
        # With arguments asyncpg prepares first: the server answers the prepare and then
        # waits, in the middle of the statement, for what never comes.
        write = asyncio.ensure_future(
            conn.execute(f"INSERT INTO {WRITES} (namespace, term) VALUES ($1, $2)", "x", 1)
        )
        if cut is Mode.BLACKHOLE_REPLIES:
            await _until_query(admin, pid, "INSERT")

        async def alive() -> bool:
            return bool(
                await admin.fetchval(
                    "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", pid
                )
            )

        window = 10.0 if ends else 2.0  # ten times the timeout, at least
        for _ in range(int(window / 0.05)):
            if not await alive():
                break
            await asyncio.sleep(0.05)
        assert await alive() is not ends
    finally:
        proxy.set_mode(Mode.PASS)
        if write is not None:
            write.cancel()
        conn.terminate()
        await admin.close()


@pytest.mark.timeout(60)
async def test_a_lease_bounded_transaction_commits_or_rolls_back_as_usual(
    dsn: str, namespace: str, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {WRITES} (namespace text, term bigint)"))
    async with ElectionGroup(dsn, namespace, FAST) as group:
        ls = await group.wait_for_leadership(timeout=10)
        async with ls.transaction(engine) as conn:
            await conn.execute(
                text(f"INSERT INTO {WRITES} VALUES (:ns, :term)"),
                {"ns": namespace, "term": ls.term},
            )

        async def failing() -> None:
            async with ls.transaction(engine) as conn:
                await conn.execute(text(f"INSERT INTO {WRITES} VALUES (:ns, 0)"), {"ns": namespace})
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            await failing()
        async with engine.connect() as conn:
            rows = (await conn.execute(text(f"SELECT term FROM {WRITES}"))).scalars().all()
        assert rows == [ls.term]  # the first committed, the second rolled back
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    with pytest.raises(NotLeaderError):
        async with ls.transaction(engine):
            pass  # a leadership that ended admits no transaction


@pytest.mark.timeout(60)
async def test_a_lease_bounded_transaction_ends_within_the_lease_when_the_database_goes_silent(
    throwaway_pg: ThrowawayPostgres, proxy: FaultProxy, namespace: str
) -> None:
    engine = _engine(throwaway_pg.dsn, proxy.port)
    try:
        async with ElectionGroup(engine, namespace, FAST) as group:
            ls = await group.wait_for_leadership(timeout=10)
            marks: dict[str, float] = {}

            async def work() -> None:
                async with ls.transaction(engine) as conn:
                    await conn.execute(text("SELECT 1"))
                    marks["valid_until"] = time.monotonic() + ls.lease_remaining
                    proxy.set_mode(Mode.BLACKHOLE)  # the database goes silent, mid-work
                    marks["silent_at"] = time.monotonic()
                    await conn.execute(text("SELECT 2"))  # never answered

            with pytest.raises(NotLeaderError):
                await work()
            ended = time.monotonic()
            silent_at, valid_until = marks["silent_at"], marks["valid_until"]
            print(
                f"\nFIGURES lease-bounded transaction: ended {ended - silent_at:.3f}s after the cut"
            )
            # At the end of the lease as last renewed (renewals stopped at the cut), not
            # after a graceful close on a dead path; a little room for a busy machine.
            assert ended <= valid_until + FAST.lease + 0.5
            assert ended - silent_at <= FAST.lease + 0.5
            assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            proxy.set_mode(Mode.PASS)
    finally:
        proxy.set_mode(Mode.PASS)
        await engine.dispose(close=False)


async def _writes(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(f"SELECT term FROM {WRITES}"))).scalars().all())


@pytest.mark.timeout(60)
async def test_a_lease_bounded_transaction_keeps_its_guard_whatever_the_block_or_engine_does(
    dsn: str, namespace: str, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {WRITES} (namespace text, term bigint)"))
    insert = text(f"INSERT INTO {WRITES} VALUES (:ns, :term)")
    autocommit = create_async_engine(engine.url, isolation_level="AUTOCOMMIT")
    try:
        async with ElectionGroup(dsn, namespace, FAST) as group:
            ls = await group.wait_for_leadership(timeout=10)
            params = {"ns": namespace, "term": ls.term}

            # An engine that commits every statement still gets one guarded transaction:
            # nothing is visible before the block ends.
            async with ls.transaction(autocommit) as conn:
                await conn.execute(insert, params)
                assert await _writes(engine) == []
            assert await _writes(engine) == [ls.term]

            # A block that ends the transaction itself: what it writes after that is not
            # guarded and is not committed.
            async def commits_inside() -> None:
                async with ls.transaction(engine) as conn:
                    await conn.commit()
                    await conn.execute(insert, params)

            with pytest.raises(ConfigurationError, match="no longer holds its guard"):
                await commits_inside()

            # An ORM session that rolls back its own work on the guarded connection, with
            # a savepoint (as the guide shows), keeps the guard.
            async with ls.transaction(engine) as conn:
                session = AsyncSession(bind=conn, join_transaction_mode="create_savepoint")
                await session.execute(insert, {"ns": namespace, "term": -1})
                await session.rollback()
                await session.execute(insert, params)
                await session.commit()
            assert await _writes(engine) == [ls.term, ls.term]

            # The caller's own cancellation stays a cancellation.
            entered = asyncio.Event()

            async def waits() -> None:
                async with ls.transaction(engine):
                    entered.set()
                    await asyncio.Event().wait()

            task = asyncio.ensure_future(waits())
            await asyncio.wait_for(entered.wait(), timeout=10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await autocommit.dispose()
