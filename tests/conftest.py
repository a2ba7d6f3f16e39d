"""Fixtures: a real PostgreSQL for the session, an isolated database per test.

``NOTIFELECT_TEST_DSN`` selects the server (it must allow CREATE DATABASE); without it an
embedded PostgreSQL is started in a temporary directory for the session.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import hypothesis  # noqa: F401  # imported early: a late import in pytest's summary trips a CPython 3.11 AST bug
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from notifelect.embedded import EmbeddedPostgres
from notifelect.schema import Names, install_statements
from tests.support.servers import ThrowawayPostgres, sqlalchemy_url, with_database

_counter = itertools.count()


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """DSN of the session's PostgreSQL server (maintenance database)."""
    configured = os.environ.get("NOTIFELECT_TEST_DSN")
    if configured:
        yield configured
        return
    server = EmbeddedPostgres()
    try:
        yield server.dsn
    finally:
        server.close()


async def install(dsn: str, prefix: str = "") -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in install_statements(Names(prefix)):
            await conn.execute(statement)
    finally:
        await conn.close()


async def create_database(server: str, *, schema: bool = True) -> str:
    name = f"nt_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = with_database(server, name)
    if schema:
        await install(dsn)
    return dsn


async def drop_database(server: str, dsn: str) -> None:
    name = dsn.rsplit("/", 1)[1].split("?", 1)[0]
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def dsn(server_dsn: str) -> AsyncIterator[str]:
    """A fresh database with the schema installed, dropped after the test."""
    db = await create_database(server_dsn)
    yield db
    await drop_database(server_dsn, db)


@pytest.fixture
async def empty_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A fresh database without the schema."""
    db = await create_database(server_dsn, schema=False)
    yield db
    await drop_database(server_dsn, db)


@pytest.fixture
async def engine(dsn: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(sqlalchemy_url(dsn), pool_size=2, max_overflow=0)
    yield eng
    await eng.dispose()


@pytest.fixture
def namespace() -> str:
    return f"ns-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def throwaway_pg() -> AsyncIterator[ThrowawayPostgres]:
    """A private server this test may restart, stop or break; the schema is installed."""
    server = ThrowawayPostgres().start()
    try:
        await install(server.dsn)
        yield server
    finally:
        server.destroy()
