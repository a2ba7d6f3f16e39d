"""The Alembic guide against the tools it describes.

Its ``env.py`` excerpt is what ``alembic init -t async`` writes with the installed Alembic
(plus notifelect's hook), the revision heads it quotes are this release's, its table of
releases has this release's row, and it points at the changelog of this repository.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import tomllib
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from notifelect.schema import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guides" / "alembic.md"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
HEAD = f"notifelect_{SCHEMA_VERSION:04d}"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ``alembic init -t async migrations`` writes (Alembic's own code, in-process)."""
    app = tmp_path_factory.mktemp("init")
    config = Config(
        str(app / "alembic.ini"),
        cmd_opts=argparse.Namespace(quiet=True),
        stdout=io.StringIO(),
    )
    command.init(config, str(app / "migrations"), template="async")
    return app


def _function(tree: ast.Module, name: str) -> ast.FunctionDef:
    (found,) = (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    return found


def _imports(tree: ast.Module) -> set[str]:
    return {ast.unparse(n) for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)}


def test_the_env_py_excerpt_is_the_async_template_plus_the_hook(template: Path) -> None:
    (excerpt,) = (
        block
        for block in re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(), re.M | re.S)
        if "def do_run_migrations" in block
    )
    guide = ast.parse(excerpt)
    written = ast.parse((template / "migrations" / "env.py").read_text())

    # The guide's function, without the keyword it tells users to add, is the template's.
    function = _function(guide, "do_run_migrations")
    configure = function.body[0]
    assert isinstance(configure, ast.Expr)
    assert isinstance(configure.value, ast.Call)
    added = [k for k in configure.value.keywords if k.arg == "include_name"]
    assert [ast.unparse(k.value) for k in added] == ["notifelect.migrations.include_name"]
    configure.value.keywords.remove(added[0])
    assert ast.dump(function) == ast.dump(_function(written, "do_run_migrations"))

    # Its other lines are the template's too: imports (but notifelect's) and target_metadata.
    assert _imports(guide) - {"import notifelect.migrations"} <= _imports(written)
    assignments = {ast.unparse(n) for n in written.body if isinstance(n, ast.Assign)}
    assert "target_metadata = None" in assignments
    assert "target_metadata = None" in {
        ast.unparse(n) for n in guide.body if isinstance(n, ast.Assign)
    }


def test_the_ini_line_the_guide_says_to_change_is_there(template: Path) -> None:
    assert "\npath_separator = os\n" in (template / "alembic.ini").read_text()
    assert "change** the\nexisting `path_separator = os` line" in GUIDE.read_text()


def test_the_heads_the_guide_quotes_are_this_release_s() -> None:
    quoted = re.findall(r"(notifelect_\d{4})(?: \(notifelect\))? \(head\)", GUIDE.read_text())
    assert quoted
    assert set(quoted) == {HEAD}
    assert f"alembic stamp {HEAD}" in GUIDE.read_text()


def test_the_release_table_has_this_release_s_row() -> None:
    text = GUIDE.read_text()
    assert f"\n| {VERSION} | {SCHEMA_VERSION} | `{HEAD}` |" in text
    assert "\n| 0.0.3 | none: the `seq_notifelect` sequence only |" in text


def test_the_changelog_is_the_one_in_this_repository() -> None:
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        text = page.read_text()
        assert not re.search(r"https?://\S*CHANGELOG", text), page
    assert "`CHANGELOG.md` at the root of the repository" in GUIDE.read_text()
