"""``notifelect install`` and ``uninstall`` against a real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import pytest

from notifelect.schema import Names, install_statements, uninstall_statements
from tests.cli.running import run_cli
from tests.support.servers import free_port, libpq_env

pytestmark = pytest.mark.timeout(120)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notifelect", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


async def relations(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'v')"
        )
        return {r["relname"] for r in rows}
    finally:
        await conn.close()


def schema_relations(prefix: str = "") -> set[str]:
    names = Names(prefix)
    return {names.sequence, *names.views(), *names.tables()}


async def test_install_and_uninstall_are_idempotent(empty_dsn: str) -> None:
    for _ in range(2):
        done = cli("install", "--dsn", empty_dsn)
        assert done.returncode == 0, done.stderr
        assert "schema installed" in done.stdout
    assert schema_relations() <= await relations(empty_dsn)
    for _ in range(2):
        done = cli("uninstall", "--dsn", empty_dsn)
        assert done.returncode == 0, done.stderr
    assert not schema_relations() & await relations(empty_dsn)


async def test_connection_from_pg_flags_and_environment(empty_dsn: str) -> None:
    env = libpq_env(empty_dsn)
    flags = [
        "--pg-host",
        env["PGHOST"],
        "--pg-port",
        env["PGPORT"],
        "--pg-database",
        env["PGDATABASE"],
    ]
    if "PGUSER" in env:
        flags += ["--pg-user", env["PGUSER"]]
    assert cli("install", "--prefix", "flags_", *flags).returncode == 0
    assert schema_relations("flags_") <= await relations(empty_dsn)
    done = cli("install", env={**env, "NOTIFELECT_PREFIX": "env_"})
    assert done.returncode == 0, done.stderr
    assert "env_seq_notifelect" in done.stdout
    assert schema_relations("env_") <= await relations(empty_dsn)
    assert cli("uninstall", env={**env, "NOTIFELECT_PREFIX": "env_"}).returncode == 0
    assert not schema_relations("env_") & await relations(empty_dsn)
    assert schema_relations("flags_") <= await relations(empty_dsn)


async def test_dry_run_prints_the_sql_and_changes_nothing(empty_dsn: str) -> None:
    done = cli("install", "--dry-run", "--dsn", empty_dsn, "--prefix", "dry_")
    assert done.returncode == 0
    for statement in install_statements(Names("dry_")):
        assert statement in done.stdout
    done = cli("uninstall", "--dry-run", "--prefix", "dry_")
    assert all(s in done.stdout for s in uninstall_statements(Names("dry_")))
    assert not schema_relations("dry_") & await relations(empty_dsn)


async def test_a_dry_run_is_the_script_a_run_applies_search_path_included(
    empty_dsn: str,
) -> None:
    # Piped into psql, it installs where install would: one transaction, under the
    # schema-change lock, in the --search-path schema (not in public).
    done = cli("install", "--dry-run", "--search-path", "elect", "--prefix", "dry_")
    assert done.returncode == 0
    assert done.stdout.startswith("BEGIN;")
    assert done.stdout.rstrip().endswith("COMMIT;")
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute("CREATE SCHEMA IF NOT EXISTS elect")
        await conn.execute(done.stdout)  # what psql would send
        where = await conn.fetch(
            "SELECT DISTINCT table_schema FROM information_schema.tables"
            " WHERE table_name LIKE 'dry\\_%'"
        )
        assert [r["table_schema"] for r in where] == ["elect"]
        status = cli("status", "--dsn", empty_dsn, "--search-path", "elect", "--prefix", "dry_")
        assert status.returncode == 0, status.stderr
        await conn.execute("DROP SCHEMA elect CASCADE")
    finally:
        await conn.close()


async def test_injection_in_a_prefix_is_refused_and_drops_nothing(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute("CREATE TABLE t (x int)")
    finally:
        await conn.close()
    for command in ("install", "uninstall"):
        done = cli(command, "--dsn", empty_dsn, "--prefix", "x'; drop table t; --")
        assert done.returncode == 2
        assert "invalid prefix" in done.stderr
        assert "lowercase ASCII letters, digits and underscores" in done.stderr
    assert "t" in await relations(empty_dsn)


async def test_a_seed_database_is_upgraded_in_place(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute("CREATE SEQUENCE seq_notifelect")
        await conn.execute("SELECT setval('seq_notifelect', 41)")
        assert cli("install", "--dsn", empty_dsn).returncode == 0
        assert await conn.fetchval("SELECT nextval('seq_notifelect')") == 42
    finally:
        await conn.close()
    assert schema_relations() <= await relations(empty_dsn)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["install", "uninstall"])
async def test_schema_commands_name_an_unreachable_database_and_the_fix(command: str) -> None:
    port = free_port()  # nothing listens there
    result = await run_cli(command, "--dsn", f"postgresql://nobody:secret@127.0.0.1:{port}/db")
    assert result.rc == 1
    assert f"cannot connect to PostgreSQL at postgresql://nobody:***@127.0.0.1:{port}/db" in (
        result.stderr
    )
    assert "secret" not in result.stderr  # the password is not echoed
    assert "--dsn" in result.stderr
    assert "Traceback" not in result.stderr
