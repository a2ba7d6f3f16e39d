"""Helpers for the migration tests: Alembic configs, running commands, catalog snapshots."""

from __future__ import annotations

import argparse
import asyncio
import io
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.config import Config

from notifelect.migrations.environment import URL_ENV
from notifelect.schema import PREFIX_ENV, SCHEMA_VERSION, Names

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables of a developer's shell must not redirect these tests."""
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.delenv(PREFIX_ENV, raising=False)


def repo_config(dsn: str, prefix: str | None = None) -> Config:
    """The checkout's ``alembic.ini`` pointed at ``dsn`` (``-x notifelect_prefix`` if given)."""
    x = [] if prefix is None else [f"notifelect_prefix={prefix}"]
    config = Config(
        str(ROOT / "alembic.ini"),
        cmd_opts=argparse.Namespace(x=x),
        stdout=io.StringIO(),
        output_buffer=io.StringIO(),
    )
    config.set_main_option("sqlalchemy.url", dsn.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


async def alembic(config: Config, name: str, *args: Any, **kwargs: Any) -> str:
    """Run ``alembic <name>`` in a worker thread (its environment runs its own event loop).

    Returns what the command printed.
    """
    await asyncio.to_thread(getattr(command, name), config, *args, **kwargs)
    out = config.stdout
    assert isinstance(out, io.StringIO)
    return out.getvalue()


async def execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


_RELATIONS = """
SELECT c.relname, c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
"""
_COLUMNS = """
SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = current_schema() AND a.attnum > 0 AND NOT a.attisdropped
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
"""
_CONSTRAINTS = """
SELECT c.relname, con.conname, con.contype::text, pg_get_constraintdef(con.oid)
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema()
"""
_INDEXES = (
    "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
)
_VIEWS = "SELECT viewname, definition FROM pg_views WHERE schemaname = current_schema()"
_SEQUENCES = """
SELECT sequencename, data_type::text, start_value, min_value, max_value, increment_by, cycle,
       cache_size
FROM pg_sequences WHERE schemaname = current_schema()
"""


async def catalog(dsn: str, *, exclude: tuple[str, ...] = ()) -> dict[str, list[tuple[Any, ...]]]:
    """What the current schema of ``dsn`` holds: relations, columns, constraints, indexes,
    view definitions, sequence parameters and the rows of notifelect's version tables.

    Relations named in ``exclude`` (and what belongs to them) are left out.
    """
    conn = await asyncpg.connect(dsn)
    try:
        snapshot: dict[str, list[tuple[Any, ...]]] = {}
        for key, query in (
            ("relations", _RELATIONS),
            ("columns", _COLUMNS),
            ("constraints", _CONSTRAINTS),
            ("indexes", _INDEXES),
            ("views", _VIEWS),
            ("sequences", _SEQUENCES),
        ):
            rows = [tuple(r) for r in await conn.fetch(query)]
            snapshot[key] = sorted(r for r in rows if r[0] not in exclude)
        versions = []
        for name, kind in snapshot["relations"]:
            if kind == "r" and name.endswith("notifelect_version"):
                for row in await conn.fetch(f'SELECT version FROM "{name}"'):
                    versions.append((name, row["version"]))
        snapshot["versions"] = sorted(versions)
        return snapshot
    finally:
        await conn.close()


def relation_names(names: Names) -> set[str]:
    """Every relation that notifelect's schema consists of, for ``names``' prefix."""
    return {*names.tables(), names.sequence, *names.views()}


#: The head revision of notifelect's branch: one revision per schema version.
HEAD = f"notifelect_{SCHEMA_VERSION:04d}"
