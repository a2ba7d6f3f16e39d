"""A release that needs a newer schema, in an application that followed the guide.

The application keeps notifelect's schema in its own Alembic history (an environment as
``alembic init -t async`` lays it out). It installed schema version 1 with the revision
the guide shows and ``alembic upgrade head``. This release needs ``SCHEMA_VERSION``: a
group refuses to start and names the step; the step (``python -m notifelect alembic
revision``, then ``alembic upgrade head``) brings the schema forward and a group elects;
the history goes back down to version 1 exactly, and then to nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from notifelect import ElectionGroup, Settings
from notifelect.schema import SCHEMA_VERSION, Names
from tests.migration.conftest import catalog, fetch, relation_names
from tests.migration.test_startup import database, start
from tests.support.alembic_app import (
    add_version_1_revision,
    alembic_cli,
    init_async_app,
    notifelect_cli,
    notifelect_functions,
    notifelect_relations,
)


async def _elects(dsn: str) -> None:
    async with ElectionGroup(dsn, "bumped", Settings(election_interval=0.1)) as group:
        leadership = await group.wait_for_leadership(timeout=20)
        assert leadership.term >= 1


async def _alembic_versions(dsn: str) -> list[str]:
    rows = await fetch(dsn, "SELECT version_num FROM alembic_version")
    return [row["version_num"] for row in rows]


@pytest.mark.timeout(120)
async def test_an_application_at_version_1_takes_the_documented_step(
    empty_dsn: str, dsn: str, tmp_path: Path
) -> None:
    """``dsn`` is another database, where ``notifelect install`` made this release's schema."""
    app = tmp_path / "app"
    add_version_1_revision(init_async_app(app, empty_dsn))
    alembic_cli(app, "upgrade", "head")
    at_version_1 = await catalog(empty_dsn)
    assert at_version_1["versions"] == [("notifelect_version", 1)]

    # The group refuses, naming where it looked, both versions and the step.
    message = str(await start(empty_dsn))
    assert message.startswith(
        f"the notifelect schema in database '{database(empty_dsn)}' (schema 'public' from "
    )
    assert "; no object prefix) is at version 1; " in message
    assert f"needs schema version {SCHEMA_VERSION}." in message
    assert "not installed" not in message
    assert "'python -m notifelect alembic revision' writes the revision" in message
    assert "then 'alembic upgrade head'" in message

    # The documented step.
    done = notifelect_cli(app, "alembic", "revision", "--rev-id", "app_0002")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        f"upgrade: upgrade_schema({SCHEMA_VERSION}); downgrade: downgrade_schema("
        f"{SCHEMA_VERSION}, to=1)" in done.stdout
    )
    alembic_cli(app, "upgrade", "head")
    upgraded = await catalog(empty_dsn, exclude=("alembic_version",))
    assert upgraded == await catalog(dsn)  # what a fresh install of this release holds
    assert upgraded["versions"] == [("notifelect_version", SCHEMA_VERSION)]
    assert {name for name, _ in upgraded["relations"]} == relation_names(Names())
    await _elects(empty_dsn)

    # The way back: to version 1 exactly as it was, then to nothing.
    alembic_cli(app, "downgrade", "app_0001")
    assert await catalog(empty_dsn) == at_version_1
    alembic_cli(app, "downgrade", "base")
    assert await notifelect_relations(empty_dsn) == []
    assert await notifelect_functions(empty_dsn) == []
    assert await _alembic_versions(empty_dsn) == []


@pytest.mark.timeout(120)
async def test_a_new_application_installs_the_schema_with_the_same_command(
    empty_dsn: str, tmp_path: Path
) -> None:
    app = tmp_path / "app"
    init_async_app(app, empty_dsn)
    done = notifelect_cli(app, "alembic", "revision", "-m", "notifelect schema")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"downgrade_schema({SCHEMA_VERSION}, to=0)" in done.stdout

    alembic_cli(app, "upgrade", "head")
    await _elects(empty_dsn)
    alembic_cli(app, "downgrade", "base")
    assert await notifelect_relations(empty_dsn) == []
    assert await notifelect_functions(empty_dsn) == []
    assert await _alembic_versions(empty_dsn) == []


#: The revision with which an application brought notifelect's schema to version 3 (what
#: the command wrote for the release that needed version 3).
_VERSION_3_REVISION = '''"""notifelect schema 3

Revision ID: app_0002
Revises: app_0001
"""
from notifelect.migrations import downgrade_schema, upgrade_schema

revision = "app_0002"
down_revision = "app_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    upgrade_schema(3)


def downgrade() -> None:
    downgrade_schema(3, to=1)
'''


@pytest.mark.timeout(120)
async def test_an_application_at_version_3_takes_the_same_step_to_version_4(
    empty_dsn: str, dsn: str, tmp_path: Path
) -> None:
    """Version 4 adds the scheduled jobs' tables: the step from 3 is the documented one."""
    assert SCHEMA_VERSION == 4
    app = tmp_path / "app"
    versions = init_async_app(app, empty_dsn)
    add_version_1_revision(versions)
    (versions / "app_0002_notifelect_schema_3.py").write_text(_VERSION_3_REVISION)
    alembic_cli(app, "upgrade", "head")
    at_version_3 = await catalog(empty_dsn)
    assert at_version_3["versions"] == [("notifelect_version", 3)]
    message = str(await start(empty_dsn))
    assert "is at version 3; " in message
    assert "needs schema version 4." in message

    done = notifelect_cli(app, "alembic", "revision", "--rev-id", "app_0003")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "upgrade: upgrade_schema(4); downgrade: downgrade_schema(4, to=3)" in done.stdout
    alembic_cli(app, "upgrade", "head")
    upgraded = await catalog(empty_dsn, exclude=("alembic_version",))
    assert upgraded == await catalog(dsn)
    names = Names()
    assert {names.job, names.job_run, names.jobs_view} <= {n for n, _ in upgraded["relations"]}
    await _elects(empty_dsn)

    alembic_cli(app, "downgrade", "app_0002")
    assert await catalog(empty_dsn) == at_version_3
