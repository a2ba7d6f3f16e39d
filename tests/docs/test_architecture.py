"""The architecture page names every module of the package, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "notifelect"
PAGE = (ROOT / "docs" / "concepts" / "architecture.md").read_text()


def _modules() -> list[str]:
    """Every module of the package, relative to it (Alembic revisions are data)."""
    return sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and "versions" not in path.parts
    )


def _named(module: str) -> bool:
    """Named by its path, its file name, or (a command's module) its stem as a word."""
    name = Path(module).name
    if module in PAGE or re.search(rf"(?<![\w/]){re.escape(name)}", PAGE):
        return True
    return module.startswith("cli/") and re.search(rf"\b{Path(module).stem}\b", PAGE) is not None


def test_every_module_is_named() -> None:
    missing = [module for module in _modules() if not _named(module)]
    assert missing == [], f"modules the architecture page does not name: {missing}"


def test_every_module_named_exists() -> None:
    named = {n for n in re.findall(r"[\w/]+\.py\b", PAGE) if not n.startswith("tests/")}
    known = set(_modules()) | {Path(m).name for m in _modules()}
    assert named - known == set()
