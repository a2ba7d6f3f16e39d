"""An application's own Alembic environment, as ``alembic init -t async`` lays it out.

The migration and command-line tests drive it the way users do: the ``alembic`` and
``python -m notifelect`` commands run as subprocesses in the application's directory (the
template's ``env.py`` configures logging and runs its own event loop, neither of which may
happen inside the test process).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg

from tests.support.servers import sqlalchemy_url

ROOT = Path(__file__).resolve().parents[2]

#: The revision the documentation shows for a history that installed schema version 1,
#: and the one ``python -m notifelect alembic revision --rev-id app_0002`` writes after it.
VERSION_1_REVISION = ROOT / "examples" / "alembic" / "app_0001_notifelect_schema.py"
BUMP_REVISION = ROOT / "examples" / "alembic" / "app_0002_notifelect_schema_4.py"


def run(app: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``argv`` with this interpreter, in the application's directory."""
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def alembic_cli(app: Path, *args: str) -> str:
    """``alembic ARGS`` in ``app``, which must succeed; returns what it printed."""
    done = run(app, "-m", "alembic", *args)
    return done.stdout + done.stderr


def notifelect_cli(app: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m notifelect ARGS`` in ``app`` (its exit status is the caller's to check)."""
    return run(app, "-m", "notifelect", *args, check=False)


def init_async_app(app: Path, dsn: str | None = None) -> Path:
    """``alembic init -t async migrations`` in ``app`` (created), its ``sqlalchemy.url``
    pointed at ``dsn`` when given. Returns the versions folder."""
    app.mkdir(parents=True, exist_ok=True)
    alembic_cli(app, "init", "-t", "async", "migrations")
    if dsn is not None:
        ini = app / "alembic.ini"
        url = sqlalchemy_url(dsn).replace("%", "%%")
        ini.write_text(
            re.sub(
                r"^sqlalchemy\.url = .*$", f"sqlalchemy.url = {url}", ini.read_text(), flags=re.M
            )
        )
    return app / "migrations" / "versions"


def copy_app(template: Path, app: Path) -> Path:
    """A copy of an initialised application (cheaper than another ``alembic init``)."""
    shutil.copytree(template, app)
    return app / "migrations" / "versions"


def add_version_1_revision(versions: Path) -> Path:
    """The application's revision that installed schema version 1, as the guide shows it."""
    target = versions / VERSION_1_REVISION.name
    shutil.copy(VERSION_1_REVISION, target)
    return target


def set_body(source: str, function: str, body: str) -> str:
    """Replace the generated ``pass`` body of ``upgrade`` or ``downgrade``."""
    pattern = rf"(def {function}\(\) -> None:\n(?:    \"\"\".*?\"\"\"\n)?)    pass\n"
    changed, count = re.subn(pattern, lambda m: m.group(1) + body, source, flags=re.DOTALL)
    assert count == 1, source
    return changed


async def notifelect_relations(dsn: str) -> list[str]:
    """The relations of the public schema whose name mentions notifelect."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND relname LIKE '%notifelect%' ORDER BY relname"
        )
    finally:
        await conn.close()
    return [row["relname"] for row in rows]


async def notifelect_functions(dsn: str) -> list[str]:
    """The functions of the public schema whose name mentions notifelect (the trigger's)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public' AND proname LIKE '%notifelect%' ORDER BY proname"
        )
    finally:
        await conn.close()
    return [row["proname"] for row in rows]
