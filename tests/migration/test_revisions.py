"""The Alembic revisions: up, down and up again; equal to ``install``; adoption and 0.0.3."""

from __future__ import annotations

import asyncio
import importlib
import io
import os
import subprocess
import sys

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from notifelect import cli
from notifelect.errors import ConfigurationError
from notifelect.migrations import BRANCH_LABEL
from notifelect.migrations.environment import URL_ENV
from notifelect.schema import (
    SCHEMA_VERSION,
    Names,
    alembic_version_table,
    install_statements,
    statements_for_version,
)
from tests.migration.conftest import (
    HEAD,
    ROOT,
    alembic,
    catalog,
    execute,
    fetch,
    relation_names,
    repo_config,
)
from tests.support.servers import sqlalchemy_url

_UNRELATED = (
    "CREATE TABLE app_note (id serial PRIMARY KEY, body text NOT NULL)",
    "CREATE SEQUENCE app_counter",
    "CREATE VIEW app_note_view AS SELECT id FROM app_note",
    "INSERT INTO app_note (body) VALUES ('kept')",
)


async def install(dsn: str, prefix: str = "") -> None:
    """``python -m notifelect install`` (run in a thread: the CLI runs its own loop)."""
    code = await asyncio.to_thread(cli.main, ["install", "--dsn", dsn, "--prefix", prefix])
    assert code == 0


async def uninstall(dsn: str, prefix: str = "") -> None:
    code = await asyncio.to_thread(cli.main, ["uninstall", "--dsn", dsn, "--prefix", prefix])
    assert code == 0


@pytest.mark.timeout(60)
async def test_upgrade_downgrade_upgrade_touches_nothing_else(empty_dsn: str) -> None:
    await execute(empty_dsn, *_UNRELATED)
    before = await catalog(empty_dsn)
    config = repo_config(empty_dsn)

    await alembic(config, "upgrade", "head")
    upgraded = await catalog(empty_dsn)
    created = {name for name, _ in upgraded["relations"]} - {n for n, _ in before["relations"]}
    version_table = alembic_version_table(Names())
    assert created == relation_names(Names()) | {version_table}
    assert upgraded["versions"] == [("notifelect_version", SCHEMA_VERSION)]
    rows = await fetch(empty_dsn, f'SELECT version_num FROM "{version_table}"')
    assert [r["version_num"] for r in rows] == [HEAD]

    await alembic(config, "downgrade", "base")
    assert await catalog(empty_dsn) == before  # the version table is gone too
    assert [r["body"] for r in await fetch(empty_dsn, "SELECT body FROM app_note")] == ["kept"]

    await alembic(config, "upgrade", "head")
    assert await catalog(empty_dsn) == upgraded


@pytest.mark.parametrize("prefix", ["", "app_"])
@pytest.mark.timeout(60)
async def test_revisions_create_what_install_creates(empty_dsn: str, prefix: str) -> None:
    names = Names(prefix)
    config = repo_config(empty_dsn, prefix)
    await alembic(config, "upgrade", "head")
    by_alembic = await catalog(empty_dsn, exclude=(alembic_version_table(names),))
    await alembic(config, "downgrade", "base")
    assert (await catalog(empty_dsn))["relations"] == []

    await install(empty_dsn, prefix)
    by_install = await catalog(empty_dsn)

    assert by_alembic == by_install
    assert {name for name, _ in by_install["relations"]} == relation_names(names)
    assert by_install["versions"] == [(names.version, SCHEMA_VERSION)]
    # uninstall and the downgrade agree too: both leave nothing behind.
    await uninstall(empty_dsn, prefix)
    assert (await catalog(empty_dsn))["relations"] == []


@pytest.mark.timeout(60)
async def test_alembic_adopts_a_schema_made_by_install(empty_dsn: str) -> None:
    await install(empty_dsn)
    installed = await catalog(empty_dsn)
    config = repo_config(empty_dsn)
    await alembic(config, "upgrade", "head")
    assert await catalog(empty_dsn, exclude=(alembic_version_table(Names()),)) == installed
    assert f"{HEAD} (head)" in await alembic(config, "current")


@pytest.mark.parametrize("way", ["install", "alembic"])
@pytest.mark.timeout(60)
async def test_a_0_0_3_database_is_upgraded_in_place(empty_dsn: str, way: str) -> None:
    # The seed's 0.0.3 schema is the bare sequence; node ids already handed out stay used.
    await execute(
        empty_dsn, 'CREATE SEQUENCE "seq_notifelect"', "SELECT setval('seq_notifelect', 41)"
    )
    if way == "install":
        await install(empty_dsn)
    else:
        await alembic(repo_config(empty_dsn), "upgrade", "head")
    snapshot = await catalog(empty_dsn, exclude=(alembic_version_table(Names()),))
    assert {name for name, _ in snapshot["relations"]} == relation_names(Names())
    assert snapshot["versions"] == [("notifelect_version", SCHEMA_VERSION)]
    rows = await fetch(empty_dsn, "SELECT nextval('seq_notifelect') AS n")
    assert rows[0]["n"] == 42


def test_the_revision_chain_matches_the_code() -> None:
    """``alembic check`` for a schema owned by raw DDL: the revisions on the notifelect
    branch are schema versions 1..SCHEMA_VERSION in order, each running that version's DDL.
    """
    script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    heads = script.get_revisions(f"{BRANCH_LABEL}@head")
    assert len(heads) == 1
    chain = list(reversed(list(script.iterate_revisions(heads[0].revision, "base"))))
    assert BRANCH_LABEL in chain[0].branch_labels
    for number, revision in enumerate(chain, start=1):
        assert revision.revision == f"notifelect_{number:04d}"
        assert revision.module.schema_version == number
        assert statements_for_version(Names(), number)
    assert len(chain) == SCHEMA_VERSION
    with pytest.raises(ConfigurationError, match=f"no schema version {SCHEMA_VERSION + 1}"):
        statements_for_version(Names(), SCHEMA_VERSION + 1)


def test_the_installed_package_carries_the_revisions() -> None:
    """Applications find the revisions through ``notifelect:migrations/versions``."""
    config = Config()
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.set_main_option("version_locations", "notifelect:migrations/versions")
    config.set_main_option("path_separator", "space")
    script = ScriptDirectory.from_config(config)
    assert [r.revision for r in script.get_revisions("heads")] == [
        f"notifelect_{SCHEMA_VERSION:04d}"
    ]
    package = importlib.import_module("notifelect.migrations.versions")
    assert package.__file__ is not None


@pytest.mark.parametrize("prefix", ["", "app_"])
@pytest.mark.timeout(60)
async def test_offline_sql_is_the_install_ddl(prefix: str) -> None:
    config = repo_config("postgresql://nobody@localhost/nothing", prefix)
    await alembic(config, "upgrade", "head", sql=True)
    buffer = config.output_buffer
    assert isinstance(buffer, io.StringIO)
    script = buffer.getvalue()
    for statement in install_statements(Names(prefix)):
        assert statement + ";" in script
    assert f"CREATE TABLE {alembic_version_table(Names(prefix))}" in script


@pytest.mark.timeout(120)
def test_alembic_upgrade_head_from_a_checkout(empty_dsn: str) -> None:
    """The documented commands, as a user types them in the repository root."""
    env = {**os.environ, URL_ENV: empty_dsn}
    env.pop("NOTIFELECT_PREFIX", None)

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "alembic", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("upgrade", "head")
    assert f"{HEAD} (head)" in run("current")
    run("downgrade", "base")
    assert run("current").strip() == ""


@pytest.mark.timeout(60)
async def test_upgrade_on_a_connection_the_program_passes(empty_dsn: str) -> None:
    """``config.attributes["connection"]``: migrate inside the program's own transaction."""
    config = repo_config("postgresql://nobody@unused.invalid/none")
    engine = create_async_engine(sqlalchemy_url(empty_dsn), poolclass=pool.NullPool)

    def upgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    try:
        async with engine.begin() as connection:
            await connection.run_sync(upgrade)
    finally:
        await engine.dispose()
    snapshot = await catalog(empty_dsn, exclude=(alembic_version_table(Names()),))
    assert {name for name, _ in snapshot["relations"]} == relation_names(Names())
    assert snapshot["versions"] == [("notifelect_version", SCHEMA_VERSION)]
