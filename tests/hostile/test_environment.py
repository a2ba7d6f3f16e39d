"""Wrong drivers, a transaction-pooling PgBouncer, missing privileges, exhausted connections:
each gives a clear error (or a stated degradation), never a hang."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from notifelect import ConfigurationError, ConnectionLimitError, ElectionGroup, Settings
from notifelect.schema import Names
from tests.hostile.pgbouncer import BINARY, PgBouncer
from tests.support.servers import ThrowawayPostgres, sqlalchemy_url

FAST = Settings(election_interval=0.1, election_timeout=0.05, lease=0.5, leader_timeout=0.3)
POOLER_RULE = "do not work through a pooler in transaction or statement mode"

needs_pgbouncer = pytest.mark.skipif(
    BINARY is None, reason="pgbouncer is not installed (apt-get install pgbouncer)"
)


# ---------------------------------------------------------------- drivers


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("mysql+aiomysql://u@localhost/db", "got scheme 'mysql+aiomysql'"),
        ("sqlite+aiosqlite:///x.db", "got scheme 'sqlite+aiosqlite'"),
        ("host=localhost dbname=db", "not a DSN"),
    ],
)
def test_wrong_dsn_schemes_are_refused_at_construction(dsn: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)) as info:
        ElectionGroup(dsn, name="g")
    assert "asyncpg" in str(info.value) or "postgresql://" in str(info.value)


def test_a_sync_engine_of_another_database_is_refused_with_the_fix() -> None:
    engine = create_engine("sqlite://")
    with pytest.raises(ConfigurationError, match="got an Engine for 'sqlite'") as info:
        ElectionGroup(engine, name="g")
    assert "postgresql+asyncpg, +psycopg or +psycopg2" in str(info.value)


def test_an_async_engine_on_another_driver_is_refused() -> None:
    pytest.importorskip("aiosqlite")
    engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(ConfigurationError, match="got an AsyncEngine for 'sqlite\\+aiosqlite'"):
        ElectionGroup(engine, name="g")


@pytest.mark.parametrize("thing", [42, object(), b"postgresql://u@h/db"])
def test_other_objects_are_refused(thing: Any) -> None:
    with pytest.raises(ConfigurationError, match="cannot use a"):
        ElectionGroup(thing, name="g")


# ---------------------------------------------------------------- PgBouncer


ROUND_ROBIN = "server_round_robin = 1\n"


async def _warm(dsn: str, servers: int) -> None:
    """Make PgBouncer open ``servers`` server sessions by using them at the same time."""
    conns = [await asyncpg.connect(dsn, statement_cache_size=0) for _ in range(servers)]
    try:
        async with asyncio.TaskGroup() as tg:
            for conn in conns:
                tg.create_task(conn.execute("SELECT pg_sleep(0.1)"))
    finally:
        for conn in conns:
            await conn.close()


@needs_pgbouncer
@pytest.mark.timeout(60)
@pytest.mark.parametrize("via", ["dsn", "engine without statement cache", "round-robin servers"])
async def test_pgbouncer_transaction_mode_fails_fast_with_the_fix(
    throwaway_pg: ThrowawayPostgres, namespace: str, via: str
) -> None:
    # Two clients share one server session (caught at once), or with round-robin server
    # selection they do not, and the probe notification never arrives (caught in ~2 s).
    extra = ROUND_ROBIN if via == "round-robin servers" else ""
    with PgBouncer(throwaway_pg.dsn, "transaction", extra=extra) as bouncer:
        engine = None
        target: Any = bouncer.dsn
        if via == "engine without statement cache":  # what users put before PgBouncer
            engine = create_async_engine(
                sqlalchemy_url(bouncer.dsn), connect_args={"statement_cache_size": 0}
            )
            target = engine
        elif via == "round-robin servers":
            await _warm(bouncer.dsn, 3)
        try:
            group = ElectionGroup(target, settings=FAST.replace(namespace=namespace))
            async with asyncio.timeout(20):  # fails fast: the probe waits at most ~2 s
                with pytest.raises(ConfigurationError) as info:
                    await group.__aenter__()
        finally:
            if engine is not None:
                await engine.dispose()
    message = str(info.value)
    assert "transaction-pooling proxy" in message
    assert POOLER_RULE in message
    assert "pool_mode = session" in message
    assert "directly to PostgreSQL" in message
    assert not group.is_open


@needs_pgbouncer
@pytest.mark.timeout(60)
async def test_pgbouncer_session_mode_works(
    throwaway_pg: ThrowawayPostgres, namespace: str
) -> None:
    with PgBouncer(throwaway_pg.dsn, "session") as bouncer:
        settings = FAST.replace(namespace=namespace)
        async with ElectionGroup(bouncer.dsn, settings=settings) as a:
            ls = await a.wait_for_leadership(timeout=10)
            async with ElectionGroup(bouncer.dsn, settings=settings) as b:
                info = await b.wait_for_leader(timeout=10)
                assert ls.term <= info.term


# ---------------------------------------------------------------- privileges


def _as_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@pytest.fixture
async def limited_role(dsn: str) -> AsyncIterator[str]:
    """A role that may use the schema but not terminate a superuser's backend."""
    role = f"nt_limited_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE ROLE "{role}" LOGIN')
        await conn.execute(
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"'
        )
        await conn.execute(
            f'GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO "{role}"'
        )
        yield role
    finally:
        await conn.execute(f'DROP OWNED BY "{role}"')
        await conn.close()
        server = await asyncpg.connect(_as_user(dsn, urlsplit(dsn).username or "postgres"))
        try:  # the role may still be connected for a moment after the group closed
            await server.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
            )
            await server.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await server.close()


@pytest.mark.timeout(60)
async def test_without_permission_to_terminate_fencing_degrades_to_the_lease(
    dsn: str, namespace: str, limited_role: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="notifelect")
    names = Names()
    holder = await asyncpg.connect(dsn)  # a superuser "leader" that has gone silent
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", names.claim_key(namespace))
        await holder.execute(
            "INSERT INTO notifelect_term (namespace, term) VALUES ($1, 1)", namespace
        )
        await holder.execute(
            "INSERT INTO notifelect_leader (namespace, term, node, priority, host, pid,"
            " backend_pid, since, renewed_at, released) VALUES ($1, 1, 999999, 0, 'silent', 1,"
            " pg_backend_pid(), now() - interval '1 hour', now() - interval '1 hour', false)",
            namespace,
        )
        holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
        group = ElectionGroup(
            _as_user(dsn, limited_role), settings=FAST.replace(namespace=namespace)
        )
        async with group:

            def denied() -> list[logging.LogRecord]:
                return [r for r in caplog.records if "no permission to terminate" in r.getMessage()]

            while not denied():
                await group.wait_for_change(timeout=10)
            for _ in range(8):  # several more election rounds, each trying to fence again
                await group.wait_for_change(timeout=10)
            assert len(denied()) == 1  # said once
            message = denied()[0].getMessage()
            assert f"pid {holder_pid}" in message
            assert "lease-based fencing" in message
            assert "pg_signal_backend" in message
            assert not group.is_leader
            assert await holder.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", holder_pid
            ) == 1  # fmt: skip
            await holder.close()  # the silent leader finally goes away
            ls = await group.wait_for_leadership(timeout=15)
            assert ls.term > 1
    finally:
        if not holder.is_closed():
            await holder.close()


# ---------------------------------------------------------------- database settings


@pytest.mark.timeout(60)
async def test_a_database_with_its_own_time_zone_and_date_style(dsn: str, namespace: str) -> None:
    """A database whose sessions write times in a half-hour zone and another date style:
    the election runs as anywhere else, and a follower's view of the leader reports the
    time it took its term in UTC, as the leader itself and every other reading does."""
    admin = await asyncpg.connect(dsn)
    try:
        database = await admin.fetchval("SELECT current_database()")
        for setting in ("timezone = 'America/St_Johns'", "datestyle = 'SQL, DMY'"):
            await admin.execute(f'ALTER DATABASE "{database}" SET {setting}')
        settings = FAST.replace(namespace=namespace)
        async with ElectionGroup(dsn, settings=settings) as first:
            await first.wait_for_leadership(timeout=10)
            async with ElectionGroup(dsn, settings=settings) as second:
                while second.leader is None:
                    await second.wait_for_change(timeout=10)
                seen = second.leader
                assert seen.node == first.node
                recorded = await admin.fetchval(
                    f"SELECT since FROM {Names().leader} WHERE namespace = $1", namespace
                )
                assert seen.since == recorded
                assert seen.since is not None
                assert seen.since.utcoffset() == datetime.timedelta(0)
    finally:
        await admin.close()


# ---------------------------------------------------------------- connection slots


@pytest.mark.timeout(90)
async def test_exhausted_max_connections_is_a_clear_error(
    throwaway_pg: ThrowawayPostgres, namespace: str
) -> None:
    admin = await asyncpg.connect(throwaway_pg.dsn)
    try:
        await admin.execute("ALTER SYSTEM SET max_connections = 8")
    finally:
        await admin.close()
    throwaway_pg.restart()
    fillers: list[asyncpg.Connection[Any]] = []
    try:
        while True:
            assert len(fillers) < 20, "max_connections did not take effect"
            try:
                fillers.append(await asyncpg.connect(throwaway_pg.dsn))
            except asyncpg.TooManyConnectionsError:
                break
        settings = FAST.replace(namespace=namespace)
        engine = create_async_engine(sqlalchemy_url(throwaway_pg.dsn))
        try:
            for target in (throwaway_pg.dsn, engine):
                group = ElectionGroup(target, settings=settings)
                async with asyncio.timeout(20):
                    with pytest.raises(ConnectionLimitError) as info:
                        await group.__aenter__()
                message = str(info.value)
                assert "max_connections" in message
                assert "raise max_connections" in message
                assert "one dedicated connection" in message
        finally:
            await engine.dispose()
        # With a slot free again, the same group configuration starts.
        await fillers.pop().close()
        await fillers.pop().close()
        async with ElectionGroup(throwaway_pg.dsn, settings=settings) as group:
            await group.wait_for_leadership(timeout=10)
    finally:
        for conn in fillers:
            await conn.close()
