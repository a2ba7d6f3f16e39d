"""The primary Alembic path: the application's own revision calls ``upgrade_schema``.

An application made with ``alembic init -t async``, driven through the ``alembic`` command
line exactly as the documentation shows: one head, nothing special on the command line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import notifelect.migrations
from tests.migration.conftest import fetch
from tests.support.servers import sqlalchemy_url

PACKAGE_VERSIONS = Path(notifelect.migrations.__file__).parent / "versions"


def _package_revisions() -> list[str]:
    return sorted(p.name for p in PACKAGE_VERSIONS.glob("*.py"))


# The two bodies the documentation tells users to write in their revision.
UPGRADE = "    from notifelect.migrations import upgrade_schema\n\n    upgrade_schema(1)\n"
DOWNGRADE = "    from notifelect.migrations import downgrade_schema\n\n    downgrade_schema(1)\n"


def _alembic(app: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _body(source: str, function: str, body: str) -> str:
    """Replace the generated ``pass`` body of ``upgrade`` or ``downgrade``."""
    pattern = rf"(def {function}\(\) -> None:\n(?:    \"\"\".*?\"\"\"\n)?)    pass\n"
    changed, count = re.subn(pattern, lambda m: m.group(1) + body, source, flags=re.DOTALL)
    assert count == 1, source
    return changed


async def _notifelect_relations(dsn: str) -> list[str]:
    rows = await fetch(
        dsn,
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND relname LIKE '%notifelect%' ORDER BY relname",
    )
    return [row["relname"] for row in rows]


@pytest.mark.timeout(120)
async def test_an_async_template_app_upgrades_revises_and_downgrades(
    empty_dsn: str, tmp_path: Path
) -> None:
    before = _package_revisions()
    app = tmp_path / "app"
    app.mkdir()
    _alembic(app, "init", "-t", "async", "migrations")
    ini = app / "alembic.ini"
    url = sqlalchemy_url(empty_dsn).replace("%", "%%")
    ini.write_text(
        re.sub(r"^sqlalchemy\.url = .*$", f"sqlalchemy.url = {url}", ini.read_text(), flags=re.M)
    )

    # The application's first revision installs notifelect's schema version 1.
    _alembic(app, "revision", "-m", "notifelect schema", "--rev-id", "app_0001")
    (first,) = (app / "migrations" / "versions").glob("app_0001_*.py")
    source = _body(_body(first.read_text(), "upgrade", UPGRADE), "downgrade", DOWNGRADE)
    first.write_text(source)

    _alembic(app, "upgrade", "head")
    assert "seq_notifelect" in await _notifelect_relations(empty_dsn)
    assert "notifelect_status" in await _notifelect_relations(empty_dsn)
    versions = await fetch(empty_dsn, "SELECT version_num FROM alembic_version")
    assert [row["version_num"] for row in versions] == ["app_0001"]
    assert "app_0001 (head)" in _alembic(app, "heads")

    # The next revision lands in the application's folder, never in the package.
    _alembic(app, "revision", "-m", "next change", "--rev-id", "app_0002")
    assert len(list((app / "migrations" / "versions").glob("app_0002_*.py"))) == 1
    assert _package_revisions() == before
    _alembic(app, "upgrade", "head")

    _alembic(app, "downgrade", "base")
    assert await _notifelect_relations(empty_dsn) == []
    assert await fetch(empty_dsn, "SELECT version_num FROM alembic_version") == []
