"""The Alembic environment of notifelect's own ``alembic.ini`` (``alembic/env.py`` calls it).

This environment manages notifelect's schema alone, in a database that may also hold an
application's tables:

- the database URL is ``$NOTIFELECT_DATABASE_URL``, else ``sqlalchemy.url`` of the ini
  file, else the standard ``PG*`` variables (``PGHOST``, ``PGPORT``, ``PGUSER``,
  ``PGPASSWORD``, ``PGDATABASE``). A plain ``postgresql://`` URL runs on asyncpg; a URL
  with a synchronous driver (``postgresql+psycopg://``) is used as it is;
- the object-name prefix follows :func:`notifelect.migrations.configured_names`;
- the version table is ``<prefix>notifelect_alembic_version``, never the application's
  ``alembic_version``, and it is dropped again when a downgrade leaves it empty, so that
  ``alembic downgrade base`` leaves the database as it was before ``upgrade head``.

A program that runs Alembic through ``alembic.command`` may pass an open synchronous
SQLAlchemy connection as ``config.attributes["connection"]`` to run on it instead, and
``config.attributes["configure_logger"] = False`` to keep its own logging configuration.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from logging.config import fileConfig

from sqlalchemy import URL, Connection, make_url, pool, text
from sqlalchemy.engine import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from ..schema import alembic_version_table, quote_ident
from . import configured_names

#: Environment variable with the database URL of ``alembic upgrade head`` from a checkout.
URL_ENV = "NOTIFELECT_DATABASE_URL"


def database_url(configured: str | None) -> URL:
    """The URL to migrate: ``$NOTIFELECT_DATABASE_URL``, else ``configured``, else PG*."""
    raw = os.environ.get(URL_ENV) or configured or "postgresql+asyncpg://"
    url = make_url(raw)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    return url


def run() -> None:
    """Run the current Alembic command (online or ``--sql``) in this environment."""
    from alembic import context

    config = context.config
    if (
        config.attributes.get("configure_logger", True)
        and config.config_file_name is not None
        and config.file_config.has_section("loggers")
    ):
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    version_table = alembic_version_table(configured_names())
    url = database_url(config.get_main_option("sqlalchemy.url"))

    def migrate(connection: Connection) -> None:
        context.configure(
            connection=connection,
            version_table=version_table,
            transactional_ddl=True,
        )
        with context.begin_transaction():
            context.run_migrations()
            _drop_if_empty(connection, version_table)

    if context.is_offline_mode():
        context.configure(
            url=url,
            version_table=version_table,
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
        )
        with context.begin_transaction():
            context.run_migrations()
        return

    given = config.attributes.get("connection")
    if given is not None:
        migrate(given)
        return
    if url.get_dialect().is_async:
        asyncio.run(_run_async(url, migrate))
    else:
        engine = create_engine(url, poolclass=pool.NullPool)
        try:
            with engine.connect() as connection:
                migrate(connection)
                connection.commit()
        finally:
            engine.dispose()


async def _run_async(url: URL, migrate: Callable[[Connection], None]) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(migrate)
            await connection.commit()
    finally:
        await engine.dispose()


def _drop_if_empty(connection: Connection, table: str) -> None:
    """Drop this environment's version table once no revision is applied any more."""
    quoted = quote_ident(table)
    exists = connection.execute(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": quoted})
    if not exists.scalar():
        return
    if connection.exec_driver_sql(f"SELECT count(*) FROM {quoted}").scalar() == 0:
        connection.exec_driver_sql(f"DROP TABLE {quoted}")
