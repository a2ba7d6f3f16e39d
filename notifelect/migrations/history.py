"""An application's Alembic history as notifelect sees it, and the revision that brings it
to the schema version this release needs (``python -m notifelect alembic revision``).

The version a history already applies is read from the source of its revisions: the
highest ``upgrade_schema(N)`` any of them calls outside its downgrade, ``N`` a number or a
module-level constant holding one. A history that calls none has not installed the schema
yet, and its new revision installs all of it (and removes it again on downgrade).

Everything about the history goes through Alembic's own :class:`~alembic.config.Config`
and :class:`~alembic.script.ScriptDirectory`, so the revision lands where ``alembic
revision`` would put it, rendered by the application's own ``script.py.mako``.
"""

from __future__ import annotations

import argparse
import ast
import os
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError, coerce_resource_to_filename, rev_id

from .._version import __version__
from ..schema import SCHEMA_VERSION
from . import _PACKAGE_VERSIONS, BRANCH_LABEL

#: The environment variable that names the ini file, as the ``alembic`` command reads it.
CONFIG_ENV = "ALEMBIC_CONFIG"

_UPGRADE = "upgrade_schema"
_IMPORTS = "from notifelect.migrations import downgrade_schema, upgrade_schema"


class Refused(Exception):
    """No revision was written; the message says why and what to do instead.

    ``up_to_date`` is true when nothing needs writing (the history already brings the
    schema to the version this release needs, or takes notifelect's own revisions, which
    do), false when something stands in the way.
    """

    def __init__(self, message: str, *, up_to_date: bool = False) -> None:
        super().__init__(message)
        self.up_to_date = up_to_date


@dataclass(frozen=True)
class Applied:
    """The schema version a history applies (0: none) and the revision that applies it."""

    version: int
    revision: str | None = None


@dataclass(frozen=True)
class Plan:
    """The revision to write: after ``head``, from ``applied`` to ``target``."""

    script: ScriptDirectory
    head: str | None  # the revision it revises; None when the history has none yet
    applied: Applied
    target: int
    version_path: Path

    @property
    def upgrade(self) -> str:
        return f"{_UPGRADE}({self.target})"

    @property
    def downgrade(self) -> str:
        return f"downgrade_schema({self.target}, to={self.applied.version})"

    def describe(self) -> str:
        """One line: what the revision does to the schema, and where it goes in the history."""
        if self.applied.version:
            since = f"from version {self.applied.version} (revision {self.applied.revision})"
        else:
            since = "from nothing (its downgrade removes it)"
        after = f"after revision {self.head}" if self.head else "the first revision of the history"
        return f"notifelect's schema {since} to version {self.target}; {after}"


# ---------------------------------------------------------------- the configuration


def load_config(files: Sequence[str] = (), section: str = "alembic") -> Config:
    """The application's Alembic configuration, found as the ``alembic`` command finds it.

    ``files`` are the ``-c`` arguments: an ini file and/or a ``pyproject.toml`` (default
    ``$ALEMBIC_CONFIG``, else ``alembic.ini`` and ``pyproject.toml`` in the current
    directory). Raises Refused if neither holds an Alembic configuration.
    """
    ini, toml = _config_files(files)
    given = set(files)
    for path in (ini, toml):
        if path in given and not Path(path).is_file():
            raise Refused(f"no Alembic configuration: {path} does not exist")
    has_ini = Path(ini).is_file()
    has_toml = _has_tool_alembic(toml)
    if not has_ini and not has_toml:
        raise Refused(
            f"no Alembic configuration: neither {ini} nor a [tool.alembic] table in {toml} "
            f"(looked in {os.getcwd()}). Run this in the application's directory, or pass "
            "-c PATH/alembic.ini (or -c PATH/pyproject.toml)"
        )
    return Config(
        file_=ini if has_ini else None,
        toml_file=toml if has_toml else None,
        ini_section=section,
        # Alembic's own "Generating ..." lines: the command says what it wrote itself.
        cmd_opts=argparse.Namespace(quiet=True, x=[]),
    )


def _config_files(files: Sequence[str]) -> tuple[str, str]:
    """(ini, pyproject.toml) from the ``-c`` arguments and ``$ALEMBIC_CONFIG``."""
    env = os.environ.get(CONFIG_ENV)
    ini = env if env and os.path.basename(env) != "pyproject.toml" else "alembic.ini"
    toml = env if env and os.path.basename(env) == "pyproject.toml" else "pyproject.toml"
    seen_ini = seen_toml = False
    for name in files:
        if os.path.basename(name) == "pyproject.toml":
            if seen_toml:
                raise Refused("-c names a pyproject.toml more than once")
            toml, seen_toml = name, True
        else:
            if seen_ini:
                raise Refused("-c names more than one ini file")
            ini, seen_ini = name, True
    return ini, toml


def _has_tool_alembic(path: str) -> bool:
    if not Path(path).is_file():
        return False
    try:
        with open(path, "rb") as f:
            return "alembic" in tomllib.load(f).get("tool", {})
    except tomllib.TOMLDecodeError as exc:
        raise Refused(f"cannot read {path}: {exc}") from exc


def _describe(config: Config) -> str:
    files = [name for name in (config.config_file_name, config.toml_file_name) if name]
    return " and ".join(files) or "the Alembic configuration"


# ---------------------------------------------------------------- the history


def plan_upgrade(
    config: Config, *, version_path: str | None = None, target: int = SCHEMA_VERSION
) -> Plan:
    """Decide the revision that takes the history of ``config`` to schema ``target``.

    Raises Refused when there is nothing to do, or when the history cannot take such a
    revision (several heads, notifelect's own revisions in it, folders missing).
    """
    where = _describe(config)
    try:
        script = ScriptDirectory.from_config(config)
    except CommandError as exc:
        raise Refused(f"cannot use {where}: {exc}") from exc
    locations = _version_locations(script)
    missing = [str(p) for p in locations if not p.is_dir()]
    if missing:
        raise Refused(
            f"the versions folder {', '.join(missing)} named by {where} (script_location / "
            "version_locations) does not exist"
        )
    package = Path(os.path.realpath(_PACKAGE_VERSIONS))
    if any(Path(os.path.realpath(p)) == package for p in locations):
        raise _includes_package(where)
    try:
        heads = script.get_heads()
        revisions = list(script.walk_revisions())
    except Exception as exc:  # a revision that does not import: Alembic's own error text
        raise Refused(f"cannot read the revisions of {where}: {exc}") from exc
    if any(BRANCH_LABEL in revision.branch_labels for revision in revisions):
        raise _includes_package(where)
    if len(heads) > 1:
        raise Refused(
            f"the history of {where} has {len(heads)} heads ({', '.join(sorted(heads))}): "
            "a new revision would not know which to follow. Merge them first "
            "('alembic merge -m \"merge heads\" heads'), then run this again"
        )
    applied = applied_version(revisions)
    if applied.version == target:
        raise Refused(
            f"nothing to do: revision {applied.revision} in the history of {where} already "
            f"brings notifelect's schema to version {target}, the version notifelect "
            f"{__version__} needs. 'alembic upgrade head' applies it to a database that is "
            "behind",
            up_to_date=True,
        )
    if applied.version > target:
        raise Refused(
            f"revision {applied.revision} in the history of {where} brings notifelect's "
            f"schema to version {applied.version}, newer than the {target} notifelect "
            f"{__version__} knows: install the notifelect release it was written for"
        )
    return Plan(
        script=script,
        head=heads[0] if heads else None,
        applied=applied,
        target=target,
        version_path=_destination(script, locations, heads, version_path, where),
    )


def _includes_package(where: str) -> Refused:
    return Refused(
        f"the history of {where} includes notifelect's own revisions (version_locations "
        "names notifelect:migrations/versions): each notifelect release brings the "
        "revisions of its schema with it, so the application writes none. Run "
        "'alembic upgrade heads'",
        up_to_date=True,
    )


def _version_locations(script: ScriptDirectory) -> list[Path]:
    """The folders Alembic reads revisions from (``versions`` beside env.py by default)."""
    if not script.version_locations:
        return [Path(script.dir, "versions").absolute()]
    return [
        Path(coerce_resource_to_filename(location)).absolute()
        for location in script.version_locations
    ]


def _destination(
    script: ScriptDirectory,
    locations: list[Path],
    heads: Sequence[str],
    given: str | None,
    where: str,
) -> Path:
    """Where ``alembic revision`` would write: the only versions folder, else the one of
    the head it builds on, else the ``--version-path`` given."""
    if given is not None:
        chosen = Path(given).absolute()
        if chosen not in locations:
            raise Refused(
                f"--version-path {given} is not one of the version locations of {where}: "
                f"{', '.join(str(p) for p in locations)}"
            )
        return chosen
    if len(locations) == 1:
        return locations[0]
    if heads:
        head = script.get_revision(heads[0])
        assert head is not None
        return Path(head.path).absolute().parent
    raise Refused(
        f"{where} names several version locations and the history has no revision yet: "
        "pass --version-path with the folder the revision belongs in"
    )


def applied_version(revisions: Sequence[Script]) -> Applied:
    """The highest schema version any of ``revisions`` upgrades to (0 if none does)."""
    best = Applied(0)
    for revision in revisions:
        for version in upgrade_versions(Path(revision.path).read_text(), revision.path):
            if version > best.version:
                best = Applied(version, revision.revision)
    return best


def upgrade_versions(source: str, filename: str = "<revision>") -> list[int]:
    """The ``N`` of every ``upgrade_schema(N)`` call in a revision's source, its downgrade
    functions left out. Raises Refused for a call whose ``N`` cannot be read."""
    tree = ast.parse(source, filename)
    constants: dict[str, int] = {}
    for node in tree.body:
        target, value = _assignment(node)
        number = _int_value(value, {})
        if target is not None and number is not None:
            constants[target] = number
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "downgrade"
        ):
            continue
        for call in ast.walk(node):
            if not isinstance(call, ast.Call) or _callee(call.func) != _UPGRADE:
                continue
            argument = call.args[0] if call.args else None
            for keyword in call.keywords:
                if keyword.arg == "version":
                    argument = keyword.value
            version = _int_value(argument, constants)
            if version is None:
                shown = ast.unparse(call)
                raise Refused(
                    f"{filename} calls {shown}: cannot tell which schema version it applies. "
                    "Write the version as a number there (a revision applies a fixed version)"
                )
            found.append(version)
    return found


def _assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
        return (target.id if isinstance(target, ast.Name) else None), node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id, node.value
    return None, None


def _callee(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_value(node: ast.expr | None, constants: dict[str, int]) -> int | None:
    if isinstance(node, ast.Constant) and _is_int(node.value):
        assert isinstance(node.value, int)
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


# ---------------------------------------------------------------- writing it


def write_revision(plan: Plan, message: str, *, rev: str | None = None) -> Path:
    """Write the revision with Alembic (the application's template and post-write hooks);
    returns its path. Raises Refused if Alembic refuses, or if the template does not
    place the bodies (the file is then removed again)."""
    try:
        written = plan.script.generate_revision(
            rev or rev_id(),
            message,
            head=plan.head,
            version_path=plan.version_path,
            # What Alembic's templates place in a revision: the imports and the two bodies.
            imports=_IMPORTS,
            upgrades=plan.upgrade,
            downgrades=plan.downgrade,
        )
    except CommandError as exc:
        raise Refused(f"Alembic did not write the revision: {exc}") from exc
    assert written is not None
    path = Path(written.path)
    _check_rendered(path.read_text(), plan, path)
    return path


def render_revision(plan: Plan, message: str, *, rev: str | None = None) -> tuple[Path, str]:
    """The path and text :func:`write_revision` would write, without writing it.

    Alembic renders it into a temporary folder (its post-write hooks are not run) that is
    removed again.
    """
    script = plan.script
    own = script.version_locations or [str(Path(script.dir, "versions"))]
    with tempfile.TemporaryDirectory(prefix="notifelect-revision-") as tmp:
        scratch = ScriptDirectory(
            script.dir,
            file_template=script.file_template,
            truncate_slug_length=script.truncate_slug_length,
            version_locations=[*own, tmp],
            sourceless=script.sourceless,
            output_encoding=script.output_encoding,
            timezone=script.timezone,
            hooks=[],
            recursive_version_locations=script.recursive_version_locations,
            messaging_opts={"quiet": True},
        )
        try:
            written = scratch.generate_revision(
                rev or rev_id(),
                message,
                head=plan.head,
                version_path=tmp,
                # What Alembic's templates place in a revision: the imports and the two bodies.
                imports=_IMPORTS,
                upgrades=plan.upgrade,
                downgrades=plan.downgrade,
            )
        except CommandError as exc:
            raise Refused(f"Alembic did not render the revision: {exc}") from exc
        assert written is not None
        rendered = Path(written.path)
        path = plan.version_path / rendered.name
        text = rendered.read_text()
    _check_rendered(text, plan, None)
    return path, text


def _check_rendered(text: str, plan: Plan, path: Path | None) -> None:
    if plan.upgrade in text and plan.downgrade in text:
        return
    if path is not None:
        path.unlink()
    raise Refused(
        f"the template {Path(plan.script.dir, 'script.py.mako')} does not place "
        "${upgrades} and ${downgrades} in the revision (Alembic's templates do), so the "
        f"revision would do nothing; no file was written. Write it with 'alembic revision' "
        f"and give it the bodies yourself: {_IMPORTS}; upgrade: {plan.upgrade}; "
        f"downgrade: {plan.downgrade}"
    )
