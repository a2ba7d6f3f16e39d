"""The primary Alembic path: the application's own revision calls ``upgrade_schema``.

An application made with ``alembic init -t async``, driven through the ``alembic`` command
line exactly as the documentation shows: one head, nothing special on the command line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import notifelect.migrations
from tests.migration.conftest import fetch
from tests.support.alembic_app import alembic_cli, init_async_app, notifelect_relations, set_body

PACKAGE_VERSIONS = Path(notifelect.migrations.__file__).parent / "versions"


def _package_revisions() -> list[str]:
    return sorted(p.name for p in PACKAGE_VERSIONS.glob("*.py"))


# The two bodies the documentation tells users to write in their revision.
UPGRADE = "    from notifelect.migrations import upgrade_schema\n\n    upgrade_schema(1)\n"
DOWNGRADE = "    from notifelect.migrations import downgrade_schema\n\n    downgrade_schema(1)\n"


@pytest.mark.timeout(120)
async def test_an_async_template_app_upgrades_revises_and_downgrades(
    empty_dsn: str, tmp_path: Path
) -> None:
    before = _package_revisions()
    app = tmp_path / "app"
    init_async_app(app, empty_dsn)

    # The application's first revision installs notifelect's schema version 1.
    alembic_cli(app, "revision", "-m", "notifelect schema", "--rev-id", "app_0001")
    (first,) = (app / "migrations" / "versions").glob("app_0001_*.py")
    source = set_body(set_body(first.read_text(), "upgrade", UPGRADE), "downgrade", DOWNGRADE)
    first.write_text(source)

    alembic_cli(app, "upgrade", "head")
    assert "seq_notifelect" in await notifelect_relations(empty_dsn)
    assert "notifelect_status" in await notifelect_relations(empty_dsn)
    versions = await fetch(empty_dsn, "SELECT version_num FROM alembic_version")
    assert [row["version_num"] for row in versions] == ["app_0001"]
    assert "app_0001 (head)" in alembic_cli(app, "heads")

    # The next revision lands in the application's folder, never in the package.
    alembic_cli(app, "revision", "-m", "next change", "--rev-id", "app_0002")
    assert len(list((app / "migrations" / "versions").glob("app_0002_*.py"))) == 1
    assert _package_revisions() == before
    alembic_cli(app, "upgrade", "head")

    alembic_cli(app, "downgrade", "base")
    assert await notifelect_relations(empty_dsn) == []
    assert await fetch(empty_dsn, "SELECT version_num FROM alembic_version") == []
