"""What a database holds of notifelect's schema, and the error that says what to do about it.

An election session (and ``notifelect status``) reads where its connection looks and what
it finds there (:func:`read_schema`) before it uses any table, and refuses to go on with a
:class:`~notifelect.errors.SchemaError` whose message (:func:`schema_problem`) names the
database, schema, search path and prefix it checked, the version it found, the version
this release needs, and the next step for each way of installing the schema.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass
from typing import Any

import asyncpg

from . import sql
from ._version import __version__
from .errors import SchemaError
from .schema import SCHEMA_VERSION, Names, required_names, required_relations

#: Where the guide to all of this lives, for the end of every message.
GUIDE = "the documentation's 'Schema and Alembic' guide"


class SchemaState(enum.Enum):
    """What a database holds of the schema, as far as this release is concerned."""

    CURRENT = "current"  # the version this release needs, every relation present
    ABSENT = "absent"  # no notifelect object at all
    SEED = "seed"  # only the sequence of notifelect 0.0.3
    OUTDATED = "outdated"  # an older version, which the upgrade steps bring forward
    NEWER = "newer"  # a version this release does not know
    INCOMPLETE = "incomplete"  # some objects of the recorded version are missing


@dataclass(frozen=True)
class FoundSchema:
    """What one connection sees of the schema for one prefix."""

    database: str
    schema: str | None  # current_schema(): where unqualified names are created
    search_path: str
    missing: tuple[str, ...]  # unquoted names of required relations it cannot see
    version: int | None  # recorded version; None without a version table or row

    def state(self, names: Names) -> SchemaState:
        """Classify what was found (see :class:`SchemaState`)."""
        present = {name for name in required_names(names) if name not in self.missing}
        if names.version not in present:
            if not present:
                return SchemaState.ABSENT
            if present == {names.sequence}:
                return SchemaState.SEED
            return SchemaState.INCOMPLETE
        if self.version is None:
            return SchemaState.INCOMPLETE
        if self.version < SCHEMA_VERSION:
            return SchemaState.OUTDATED
        if self.version > SCHEMA_VERSION:
            return SchemaState.NEWER
        return SchemaState.INCOMPLETE if self.missing else SchemaState.CURRENT


async def read_schema(conn: asyncpg.Connection[Any], names: Names) -> FoundSchema:
    """Read what ``conn`` sees of the schema of ``names``: one statement, two if the
    version table exists. Returns when both have answered."""
    quoted = required_relations(names)
    unquoted = dict(zip(quoted, required_names(names), strict=True))
    row = await conn.fetchrow(sql.SCHEMA_FACTS, quoted)
    assert row is not None
    missing = tuple(unquoted[name] for name in row["missing"])
    version = None
    if names.version not in missing:
        version = await conn.fetchval(sql.schema_version(names))
    return FoundSchema(
        database=row["database"],
        schema=row["schema"],
        search_path=row["search_path"],
        missing=missing,
        version=version,
    )


async def check_schema(conn: asyncpg.Connection[Any], names: Names) -> None:
    """Raise SchemaError (naming what was checked and the fix) unless the schema this
    release needs is there."""
    problem = schema_problem(await read_schema(conn, names), names)
    if problem is not None:
        raise SchemaError(problem)


def schema_problem(found: FoundSchema, names: Names) -> str | None:
    """The message for what was found, or None when the schema is the one this release
    needs. Each state gets its own first line; the steps follow."""
    state = found.state(names)
    if state is SchemaState.CURRENT:
        return None
    where = _where(found, names)
    need = f"notifelect {__version__} needs schema version {SCHEMA_VERSION}"
    if state is SchemaState.NEWER:
        return (
            f"the notifelect schema in {where} is at version {found.version}, newer than "
            f"this release knows: {need}. Run the notifelect release that installed version "
            f"{found.version} (or a later one), or take the schema back to version "
            f"{SCHEMA_VERSION} with that release's Alembic downgrade; see {GUIDE}"
        )
    if state is SchemaState.INCOMPLETE:
        recorded = "no version" if found.version is None else f"version {found.version}"
        lacking = ", ".join(repr(name) for name in found.missing)
        return (
            f"the notifelect schema in {where} is incomplete: it records {recorded} but "
            f"{lacking} cannot be found; {need}. Something removed part of it: "
            f"{_install(names, found)} recreates what is missing and keeps the rest (every "
            f"statement is idempotent); see {GUIDE}"
        )
    if state is SchemaState.ABSENT:
        what = (
            f"the notifelect schema is not installed in {where}: neither {names.version!r} "
            f"nor {names.sequence!r} can be found there"
        )
        hint = (
            "\nIf it is installed elsewhere, the service looks in another database, "
            "search_path or prefix than the one that has it."
        )
    elif state is SchemaState.SEED:
        what = (
            f"{where} has only the sequence {names.sequence!r} of notifelect 0.0.3, no "
            "schema version (its node ids are kept by every step below)"
        )
        hint = ""
    else:
        what = f"the notifelect schema in {where} is at version {found.version}"
        hint = ""
    return f"{what}; {need}.{hint}\n{_steps(names, found)}"


def _steps(names: Names, found: FoundSchema) -> str:
    """The next step of each way to install the schema, one line each."""
    x = f" -x notifelect_prefix={names.prefix}" if names.prefix else ""
    return (
        "Next step, by the way the schema is installed:\n"
        "  (a) a revision of the application's own Alembic history (one calling "
        "notifelect.migrations.upgrade_schema): 'python -m notifelect alembic revision' "
        f"writes the revision that brings it to version {SCHEMA_VERSION}, then 'alembic{x} "
        "upgrade head'\n"
        "  (b) notifelect's revisions in the application's Alembic version_locations: "
        f"'alembic{x} upgrade heads'\n"
        f"  (c) the command line: {_install(names, found)} against database {found.database!r}\n"
        f"See {GUIDE}."
    )


def _install(names: Names, found: FoundSchema) -> str:
    """The install command, with the prefix and, when the service looks in a schema other
    than ``public``, its search_path: without it the command would install into the
    schema its own connection looks in, usually ``public``."""
    prefix = f" --prefix {names.prefix}" if names.prefix else ""
    where = ""
    if found.schema is not None and found.schema != "public":
        where = f" --search-path {shlex.quote(found.search_path)}"
    return f"'python -m notifelect install{prefix}{where}'"


def _where(found: FoundSchema, names: Names) -> str:
    """The database, schema, search path and prefix that were checked."""
    if found.schema is None:
        schema = f"no schema: none of search_path {found.search_path} exists"
    else:
        schema = f"schema {found.schema!r} from search_path {found.search_path}"
    prefix = f"object prefix {names.prefix!r}" if names.prefix else "no object prefix"
    return f"database {found.database!r} ({schema}; {prefix})"
