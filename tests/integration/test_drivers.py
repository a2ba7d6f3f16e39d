"""ElectionGroup on the engine of every supported driver: asyncpg, psycopg 3 (sync and
async) and psycopg2. The election keeps its own asyncpg connections; fencing and the
lease-bounded transaction run on the engine's own connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session

from notifelect import ElectionGroup, NotLeaderError, Settings, StaleLeaderError
from notifelect.errors import ConfigurationError
from tests.integration.test_group import backend_pid

FAST = Settings(election_interval=0.2, lease=2.0, leader_timeout=1.0)

DRIVERS = [("asyncpg", True), ("psycopg", False), ("psycopg", True), ("psycopg2", False)]


def url(dsn: str, driver: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(scheme=f"postgresql+{driver}"))


def make_engine(dsn: str, driver: str, is_async: bool) -> Engine | AsyncEngine:
    if is_async:
        return create_async_engine(url(dsn, driver), pool_size=1, max_overflow=0)
    return sa.create_engine(url(dsn, driver), pool_size=1, max_overflow=0)


@pytest.fixture(params=DRIVERS, ids=[f"{d}-{'async' if a else 'sync'}" for d, a in DRIVERS])
async def engines(request: Any, dsn: str) -> AsyncIterator[list[Engine | AsyncEngine]]:
    driver, is_async = request.param
    made = [make_engine(dsn, driver, is_async) for _ in range(2)]
    yield made
    for engine in made:
        if isinstance(engine, AsyncEngine):
            await engine.dispose()
        else:
            engine.dispose()


async def fence_on(engine: Engine | AsyncEngine, group: ElectionGroup) -> None:
    """Fence a write on a connection and a session of the engine, in its own form."""
    ls = group.leadership
    assert ls is not None
    if isinstance(engine, AsyncEngine):
        async with engine.begin() as conn:
            await ls.fence(conn)
        async with ls.transaction(engine) as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        return

    def sync_work() -> None:
        with engine.begin() as conn:
            ls.fence(conn)  # checked during the call
        with Session(engine) as session, session.begin():
            ls.fence(session)
        with ls.transaction(engine) as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1

    await asyncio.to_thread(sync_work)


@pytest.mark.timeout(30)
async def test_engine_of_each_driver_elects_hands_over_and_fences(
    engines: list[Engine | AsyncEngine], namespace: str
) -> None:
    first, second = (ElectionGroup(e, namespace, FAST) for e in engines)
    async with second:
        old = await second.wait_for_leadership(10)  # alone, so it leads
        async with first:
            await first.wait_for_leader(10)
            await fence_on(engines[1], second)
            assert not first.is_leader
        # first left without leading; now second hands over to a new first member
        third = ElectionGroup(engines[0], namespace, FAST)
        async with third:
            await third.wait_for_leader(10)
            await second.close()  # resigns: third takes over at once
            new = await third.wait_for_leadership(10)
            assert new.term > old.term
            await fence_on(engines[0], third)
            with pytest.raises(NotLeaderError):
                await old.fence(None)
    # The engines' own pools lent no connection to the election.
    for engine in engines:
        pool = engine.pool if isinstance(engine, Engine) else engine.sync_engine.pool
        assert pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.timeout(30)
async def test_a_stale_term_is_refused_on_a_sync_connection(dsn: str, namespace: str) -> None:
    engine = sa.create_engine(url(dsn, "psycopg"))
    try:
        async with ElectionGroup(engine, namespace, FAST) as group:
            ls = await group.wait_for_leadership(10)

            def bump_and_fence() -> None:
                with engine.begin() as conn:
                    conn.execute(
                        text("UPDATE notifelect_term SET term = term + 1 WHERE namespace = :n"),
                        {"n": namespace},
                    )
                with engine.begin() as conn, pytest.raises(StaleLeaderError):
                    ls.fence(conn)

            await asyncio.to_thread(bump_and_fence)
    finally:
        engine.dispose()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
async def test_sync_transaction_is_cut_off_when_leadership_is_lost(
    dsn: str, namespace: str, driver: str
) -> None:
    engine = sa.create_engine(url(dsn, driver))
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        async with ElectionGroup(engine, namespace, FAST) as group:
            ls = await group.wait_for_leadership(10)

            def long_write() -> None:
                with ls.transaction(engine) as conn:
                    loop.call_soon_threadsafe(started.set)
                    conn.execute(text("SELECT pg_sleep(30)"))

            work = asyncio.ensure_future(asyncio.to_thread(long_write))
            await asyncio.wait_for(started.wait(), 10)
            # The election's connection is killed: the leadership is lost, and the
            # transaction in progress is cut off at once, not after its 30 s statement.
            pid = backend_pid(group)
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            with pytest.raises(NotLeaderError, match="nothing of it was committed"):
                await asyncio.wait_for(work, 15)
    finally:
        engine.dispose()


@pytest.mark.timeout(30)
async def test_an_engine_with_a_creator_is_refused_with_the_fix(dsn: str, namespace: str) -> None:
    import psycopg

    engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    try:
        with pytest.raises(ConfigurationError, match="give ElectionGroup a DSN"):
            async with ElectionGroup(engine, namespace, FAST):
                pass
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        engine.dispose()


@pytest.mark.timeout(30)
async def test_sync_transaction_on_the_elections_own_thread_is_still_bounded(
    dsn: str, namespace: str
) -> None:
    # Blocking the event loop that runs the election stops its renewals: the lease runs
    # out, and a follower of its own (the loop cannot follow) cuts the statement off.
    engine = sa.create_engine(url(dsn, "psycopg"))
    try:
        async with ElectionGroup(engine, namespace, FAST) as group:
            ls = await group.wait_for_leadership(10)
            with pytest.raises(NotLeaderError), ls.transaction(engine) as conn:
                conn.execute(text("SELECT pg_sleep(30)"))
    finally:
        engine.dispose()


@pytest.mark.timeout(30)
async def test_fence_on_the_drivers_own_connections(dsn: str, namespace: str) -> None:
    import psycopg
    import psycopg2  # type: ignore[import-untyped]

    async with ElectionGroup(dsn, namespace, FAST) as group:
        ls = await group.wait_for_leadership(10)

        def sync_fences() -> None:
            with psycopg.connect(dsn) as conn, conn.transaction():
                ls.fence(conn)
            conn2 = psycopg2.connect(dsn)
            try:
                with conn2:  # a transaction
                    ls.fence(conn2)
            finally:
                conn2.close()

        await asyncio.to_thread(sync_fences)
        async with await psycopg.AsyncConnection.connect(dsn) as aconn, aconn.transaction():
            await ls.fence(aconn)
        with pytest.raises(ConfigurationError, match="the fencing guard needs"):
            await ls.fence(object())


@pytest.mark.timeout(30)
async def test_sync_transaction_stays_one_guarded_transaction(dsn: str, namespace: str) -> None:
    plain = sa.create_engine(url(dsn, "psycopg2"))
    autocommit = plain.execution_options(isolation_level="AUTOCOMMIT")
    try:
        async with ElectionGroup(plain, namespace, FAST) as group:
            ls = await group.wait_for_leadership(10)

            def work() -> None:
                with plain.begin() as conn:
                    conn.execute(text("CREATE TABLE t (v int)"))

                # An engine in AUTOCOMMIT still gets one real transaction: a failing
                # block leaves nothing behind.
                def failing() -> None:
                    with ls.transaction(autocommit) as conn:
                        conn.execute(text("INSERT INTO t VALUES (1)"))
                        raise RuntimeError("the block failed")

                # A block that ends the transaction itself loses the guard: refused.
                def committing_itself() -> None:
                    with ls.transaction(plain) as conn:
                        conn.commit()
                        conn.execute(text("INSERT INTO t VALUES (2)"))

                with pytest.raises(RuntimeError):
                    failing()
                with pytest.raises(ConfigurationError, match="no longer holds its guard"):
                    committing_itself()
                with ls.transaction(plain) as conn:
                    conn.execute(text("INSERT INTO t VALUES (3)"))
                with plain.connect() as conn:
                    assert list(conn.scalars(text("SELECT v FROM t ORDER BY v"))) == [3]

            await asyncio.to_thread(work)
    finally:
        plain.dispose()
