"""``notifelect alembic revision``: the revision it writes, and each refusal with its reason.

No database is involved: the command reads the application's Alembic files only. Each
test works on a copy of one environment made by ``alembic init -t async``; most run the
command in this process (``cli.main``), one as users type it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from notifelect import cli
from notifelect.cli.revision import UP_TO_DATE
from notifelect.schema import SCHEMA_VERSION
from tests.support.alembic_app import (
    BUMP_REVISION,
    VERSION_1_REVISION,
    add_version_1_revision,
    copy_app,
    init_async_app,
    notifelect_cli,
)

pytestmark = pytest.mark.timeout(60)

_CREATE_DATE = re.compile(r"^Create Date: .*$", re.MULTILINE)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One application made by ``alembic init -t async migrations``, copied by each test."""
    app = tmp_path_factory.mktemp("template") / "app"
    init_async_app(app)
    return app


@pytest.fixture
def app(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sys, "path", list(sys.path))  # Alembic prepends prepend_sys_path
    monkeypatch.delenv("ALEMBIC_CONFIG", raising=False)
    copy = tmp_path / "app"
    copy_app(template, copy)
    monkeypatch.chdir(copy)  # where users run it (and away from the checkout's alembic.ini)
    return copy


def versions(app: Path) -> Path:
    return app / "migrations" / "versions"


def written(app: Path) -> list[str]:
    return sorted(p.name for p in versions(app).glob("*.py"))


def revision(app: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``notifelect alembic revision -c APP/alembic.ini ARGS`` in this process."""
    code = cli.main(["alembic", "revision", "-c", str(app / "alembic.ini"), *args])
    out, err = capsys.readouterr()
    return code, out, err


def write_revision(app: Path, rev: str, down: str | None, upgrade: str) -> None:
    """A minimal revision of the application's own."""
    (versions(app) / f"{rev}.py").write_text(
        f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\n"
        "depends_on = None\n\n"
        "from notifelect import migrations\n\n\n"
        f"def upgrade():\n    {upgrade}\n\n\n"
        "def downgrade():\n    migrations.downgrade_schema(1)\n"
    )


def test_the_bump_the_guide_shows_is_what_the_command_writes(app: Path) -> None:
    """As users type it, in the application's directory: the guide's revision exactly."""
    add_version_1_revision(versions(app))
    done = notifelect_cli(app, "alembic", "revision", "--rev-id", "app_0002")
    assert done.returncode == 0, done.stderr
    assert written(app) == sorted([VERSION_1_REVISION.name, BUMP_REVISION.name])
    text = (versions(app) / BUMP_REVISION.name).read_text()
    assert _CREATE_DATE.sub("", text) == _CREATE_DATE.sub("", BUMP_REVISION.read_text())
    assert done.stdout.splitlines() == [
        f"notifelect: wrote {versions(app) / BUMP_REVISION.name}",
        f"  notifelect's schema from version 1 (revision app_0001) to version {SCHEMA_VERSION};"
        " after revision app_0001",
        f"  upgrade: upgrade_schema({SCHEMA_VERSION}); downgrade: downgrade_schema("
        f"{SCHEMA_VERSION}, to=1)",
        "next: alembic upgrade head",
    ]


def test_a_history_without_the_schema_gets_all_of_it(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = revision(app, "-m", "notifelect schema", capsys=capsys)
    assert code == 0
    (path,) = versions(app).glob("*_notifelect_schema.py")
    text = path.read_text()
    assert "down_revision: Union[str, Sequence[str], None] = None" in text
    assert f"    upgrade_schema({SCHEMA_VERSION})\n" in text
    assert f"    downgrade_schema({SCHEMA_VERSION}, to=0)\n" in text
    assert "from nothing (its downgrade removes it)" in out


def test_dry_run_prints_the_revision_and_writes_nothing(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_version_1_revision(versions(app))
    before = written(app)
    code, out, err = revision(app, "--dry-run", "--rev-id", "app_0002", capsys=capsys)
    assert code == 0
    assert written(app) == before
    assert _CREATE_DATE.sub("", out) == _CREATE_DATE.sub("", BUMP_REVISION.read_text())
    assert f"would write {versions(app) / BUMP_REVISION.name}" in err


def test_a_pyproject_configuration_is_read_too(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (app / "alembic.ini").unlink()
    (app / "pyproject.toml").write_text('[tool.alembic]\nscript_location = "%(here)s/migrations"\n')
    add_version_1_revision(versions(app))
    code = cli.main(["alembic", "revision", "-c", str(app / "pyproject.toml")])
    assert code == 0, capsys.readouterr().err
    assert len(written(app)) == 2


# ---------------------------------------------------------------- refusals


def test_nothing_to_do_when_the_history_is_already_there(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_version_1_revision(versions(app))
    (versions(app) / BUMP_REVISION.name).write_text(BUMP_REVISION.read_text())
    before = written(app)
    code, _, err = revision(app, capsys=capsys)
    assert code == UP_TO_DATE
    assert written(app) == before
    assert err.startswith(
        "notifelect: nothing written: nothing to do: revision app_0002 in the history of "
        f"{app / 'alembic.ini'} already brings notifelect's schema to version {SCHEMA_VERSION}"
    )


def test_several_heads_are_refused(app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add_version_1_revision(versions(app))
    write_revision(app, "app_other", None, "pass")
    code, _, err = revision(app, capsys=capsys)
    assert code == 1
    assert "has 2 heads (app_0001, app_other)" in err
    assert "alembic merge" in err
    assert len(written(app)) == 2


def test_no_configuration_in_the_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ALEMBIC_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["alembic", "revision"]) == 1
    err = capsys.readouterr().err
    assert "no Alembic configuration: neither alembic.ini nor a [tool.alembic] table" in err
    assert f"(looked in {tmp_path})" in err
    assert list(tmp_path.iterdir()) == []


def test_a_configuration_file_that_does_not_exist_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "elsewhere" / "alembic.ini"
    assert cli.main(["alembic", "revision", "-c", str(missing)]) == 1
    assert f"no Alembic configuration: {missing} does not exist" in capsys.readouterr().err


def test_a_configuration_without_script_location_is_refused(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = app / "alembic.ini"
    ini.write_text(re.sub(r"^script_location = .*$", "", ini.read_text(), flags=re.MULTILINE))
    code, _, err = revision(app, capsys=capsys)
    assert code == 1
    assert "No 'script_location' key found" in err


def test_a_missing_versions_folder_is_refused(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    versions(app).rmdir()
    code, _, err = revision(app, capsys=capsys)
    assert code == 1
    assert f"the versions folder {versions(app)} named by" in err
    assert not versions(app).exists()


def test_notifelect_revisions_in_version_locations_need_no_revision(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = app / "alembic.ini"
    text = ini.read_text().replace("path_separator = os", "path_separator = space")
    ini.write_text(
        text.replace(
            "[alembic]\n",
            "[alembic]\nversion_locations = %(here)s/migrations/versions "
            "notifelect:migrations/versions\n",
            1,
        )
    )
    code, _, err = revision(app, capsys=capsys)
    assert code == UP_TO_DATE
    assert "includes notifelect's own revisions" in err
    assert "Run 'alembic upgrade heads'" in err
    assert written(app) == []


def test_a_version_that_cannot_be_read_is_refused(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_revision(app, "app_0001", None, "migrations.upgrade_schema(migrations.LATEST)")
    code, _, err = revision(app, capsys=capsys)
    assert code == 1
    assert "calls migrations.upgrade_schema(migrations.LATEST): cannot tell" in err


def test_a_history_newer_than_this_release_is_refused(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_revision(app, "app_0009", None, f"migrations.upgrade_schema({SCHEMA_VERSION + 1})")
    code, _, err = revision(app, capsys=capsys)
    assert code == 1
    assert f"to version {SCHEMA_VERSION + 1}, newer than the {SCHEMA_VERSION}" in err
    assert written(app) == ["app_0009.py"]


def test_a_template_that_drops_the_bodies_leaves_no_file(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mako = app / "migrations" / "script.py.mako"
    mako.write_text(mako.read_text().replace('${upgrades if upgrades else "pass"}', "pass"))
    code, _, err = revision(app, capsys=capsys)
    assert code == 1
    assert "does not place ${upgrades} and ${downgrades}" in err
    assert written(app) == []
