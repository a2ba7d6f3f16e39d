"""The package metadata: one version, a license file, extras built from each other."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import notifelect

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_version_is_stated_once_and_read_from_the_metadata() -> None:
    assert notifelect.__version__ == version("notifelect") == PROJECT["version"]
    stated = [
        path
        for path in (ROOT / "notifelect").rglob("*.py")
        if re.search(r"^__version__\s*=\s*['\"]", path.read_text(), re.MULTILINE)
    ]
    assert stated == []


def test_license_and_changelog_ship_with_the_sources() -> None:
    assert PROJECT["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert "## [0.0.3]" in changelog


def test_extras_reuse_each_other_instead_of_repeating_lists() -> None:
    extras: dict[str, list[str]] = PROJECT["optional-dependencies"]
    owner: dict[str, str] = {}
    for extra, requirements in extras.items():
        for requirement in requirements:
            if requirement.startswith("notifelect["):
                continue
            name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()
            assert name not in owner, f"{name} is listed in both {owner.get(name)} and {extra}"
            owner[name] = extra
    assert "notifelect[embedded,examples,bench,metrics,cron,psycopg,psycopg2]" in extras["dev"]
