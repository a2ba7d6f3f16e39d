"""An election's sessions are named in pg_stat_activity, unless the user named them."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from notifelect import ElectionGroup
from notifelect.transport.connect import (
    ANCHOR_NAME,
    APPLICATION_NAME,
    WATCHER_NAME,
    session_name,
)
from tests.support.servers import sqlalchemy_url
from tests.support.waiting import settled, until

# The members' election sessions, as PostgreSQL sees them.
MEMBER_SESSIONS = """
    SELECT a.application_name
    FROM notifelect_status s JOIN pg_stat_activity a ON a.pid = s.backend_pid
    WHERE s.namespace = $1
"""


async def _names_of_running_group(
    dsn: str, namespace: str, engines: list[AsyncEngine | str], size: int = 2
) -> list[str]:
    async with AsyncExitStack() as stack:
        groups = [
            await stack.enter_async_context(ElectionGroup(engine, namespace))
            for engine in engines[:size]
        ]
        await until(groups, lambda: settled(groups), timeout=10, what="a settled leader")
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(MEMBER_SESSIONS, namespace)
        finally:
            await conn.close()
    return sorted(row["application_name"] for row in rows)


@pytest.mark.timeout(30)
async def test_sessions_of_a_group_on_a_dsn_carry_notifelect(dsn: str, namespace: str) -> None:
    names = await _names_of_running_group(dsn, namespace, [dsn, dsn])
    assert all(name.startswith(f"{APPLICATION_NAME}:") for name in names), names
    assert len(set(names)) == 2  # one session per member: their node ids differ


@pytest.mark.timeout(30)
async def test_sessions_of_a_group_on_an_engine_carry_notifelect(dsn: str, namespace: str) -> None:
    engine = create_async_engine(sqlalchemy_url(dsn), pool_size=1, max_overflow=0)
    try:
        names = await _names_of_running_group(dsn, namespace, [engine, engine])
    finally:
        await engine.dispose()
    assert all(name.startswith(f"{APPLICATION_NAME}:") for name in names), names
    assert len(set(names)) == 2  # one session per member: their node ids differ


@pytest.mark.timeout(30)
async def test_a_name_the_user_set_is_kept(dsn: str, namespace: str) -> None:
    engine = create_async_engine(
        sqlalchemy_url(dsn),
        connect_args={"server_settings": {"application_name": "billing-engine"}},
    )
    try:
        names = await _names_of_running_group(
            dsn, namespace, [_with_query(dsn, "application_name=billing-dsn"), engine]
        )
    finally:
        await engine.dispose()
    assert names == ["billing-dsn", "billing-engine"]


@pytest.mark.timeout(30)
async def test_pgappname_names_the_sessions(
    dsn: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGAPPNAME", "from-pgappname")
    engine = create_async_engine(sqlalchemy_url(dsn))
    try:
        names = await _names_of_running_group(dsn, namespace, [dsn, engine])
    finally:
        await engine.dispose()
    assert names == ["from-pgappname", "from-pgappname"]


@pytest.mark.timeout(30)
async def test_anchor_and_watcher_sessions_are_named_apart(dsn: str, namespace: str) -> None:
    async with ElectionGroup(dsn, namespace) as a, ElectionGroup(dsn, namespace) as b:
        groups = [a, b]
        await until(groups, lambda: settled(groups), timeout=10, what="a settled leader")
        standby = b if a.is_leader else a
        assert a.node is not None
        assert b.node is not None
        wanted = {
            session_name(APPLICATION_NAME, a.node),
            session_name(APPLICATION_NAME, b.node),
            session_name(ANCHOR_NAME, a.node),
            session_name(ANCHOR_NAME, b.node),
            session_name(WATCHER_NAME, standby.node or 0),
        }
        conn = await asyncpg.connect(dsn)
        try:
            deadline = time.monotonic() + 10
            found: set[str] = set()
            while not wanted <= found and time.monotonic() < deadline:
                rows = await conn.fetch(
                    "SELECT application_name FROM pg_stat_activity"
                    " WHERE datname = current_database()"
                )
                found = {r["application_name"] for r in rows}
                await asyncio.sleep(0.05)  # polling the server's view, not synchronising
        finally:
            await conn.close()
    assert wanted <= found  # the standby watches the leader's anchor


def _with_query(dsn: str, parameter: str) -> str:
    """``dsn`` with one more query parameter (it may have some already: a socket host)."""
    return f"{dsn}{'&' if '?' in dsn else '?'}{parameter}"
