"""notifelect's schema as Alembic revisions, for a checkout and for applications' histories.

An application that keeps its schema in Alembic calls :func:`upgrade_schema` and
:func:`downgrade_schema` from revisions of its own (one head, ``alembic upgrade head``),
which ``python -m notifelect alembic revision`` writes (:mod:`.history`)::

    def upgrade() -> None:
        upgrade_schema(3)  # from whatever older version the database has

    def downgrade() -> None:
        downgrade_schema(3, to=1)  # back to the version the previous revision applied

Alternatively it adds notifelect's own revisions (``notifelect/migrations/versions``,
shipped in the wheel, on the branch labelled ``notifelect``) through
``version_locations = %(here)s/migrations/versions notifelect:migrations/versions`` with
``path_separator = space``; its history then has two heads (``alembic upgrade heads``).
With ``revision_environment = true`` and :func:`process_revision_directives` passed to
``context.configure`` in its ``env.py``, ``alembic revision`` never writes a new revision
into the installed package (without them, the application's first revision must be made
with ``--head base --version-path`` pointing at its own folder). Each revision runs the DDL of
:func:`notifelect.schema.statements_for_version`, the same that ``python -m notifelect
install`` runs, so both ways produce the same objects.

Object names take the prefix from ``-x notifelect_prefix=...`` on the Alembic command
line, else from a ``notifelect_prefix`` option in the ``[alembic]`` section (or in
``[tool.alembic]`` of ``pyproject.toml``), else from ``$NOTIFELECT_PREFIX``, else none:
the same rule as the CLI's ``--prefix``.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigurationError
from ..schema import (
    SCHEMA_VERSION,
    Names,
    ddl_lock_statement,
    downgrade_statements,
    is_schema_object,
    statements_for_version,
)

#: The ``version_locations`` entry that adds notifelect's revisions to an Alembic history.
VERSIONS_LOCATION = "notifelect:migrations/versions"

#: Branch label of notifelect's revisions (``alembic upgrade notifelect@head``).
BRANCH_LABEL = "notifelect"

#: Name of the ``-x`` argument and of the ini option that set the object-name prefix.
PREFIX_OPTION = "notifelect_prefix"

__all__ = [
    "BRANCH_LABEL",
    "PREFIX_OPTION",
    "VERSIONS_LOCATION",
    "configured_names",
    "downgrade_schema",
    "include_name",
    "process_revision_directives",
    "upgrade_schema",
]

#: Where notifelect's own revisions live (inside the installed package).
_PACKAGE_VERSIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "versions")


def configured_names() -> Names:
    """Object names for the prefix of the running Alembic command.

    Only valid while Alembic runs an environment (inside ``env.py`` or a revision).
    """
    from alembic import context

    prefix: object = context.get_x_argument(as_dictionary=True).get(PREFIX_OPTION)
    if prefix is None:
        config = context.config
        # get_alembic_option (Alembic 1.16+) also reads [tool.alembic] in pyproject.toml.
        getter = getattr(config, "get_alembic_option", config.get_main_option)
        prefix = getter(PREFIX_OPTION) or None
    if prefix is not None and not isinstance(prefix, str):
        raise ConfigurationError(
            f"{PREFIX_OPTION} must be a string such as 'myapp_', not {prefix!r}"
        )
    return Names.from_env(prefix)


def upgrade_schema(version: int) -> None:
    """Body of a revision's upgrade: bring the schema up to ``version`` from any older one.

    Runs the DDL of every version from 1 to ``version`` in order, under the schema-change
    lock. Each statement is idempotent, so what is already there is kept: the same call
    installs the schema from nothing (or from the 0.0.3 sequence), upgrades one of an
    older version, and adopts one made by ``python -m notifelect install``. A revision
    that bumps an application from schema 1 to 3 therefore calls ``upgrade_schema(3)``.
    """
    from alembic import op

    _check_version(version, "upgrade_schema")
    names = configured_names()
    op.execute(ddl_lock_statement())
    for step in range(1, version + 1):
        for statement in statements_for_version(names, step):
            op.execute(statement)


def downgrade_schema(version: int, to: int | None = None) -> None:
    """Body of a revision's downgrade: take the schema back from ``version`` to ``to``.

    ``to`` defaults to ``version - 1``: ``downgrade_schema(1)`` removes every object, as
    the downgrade of a revision that calls ``upgrade_schema(1)``. The revision that
    brought an application from schema 1 to 3 undoes it with ``downgrade_schema(3,
    to=1)``, and one that installed version 3 from nothing with ``downgrade_schema(3,
    to=0)``. Runs each version's downgrade DDL, newest first, under the schema-change lock.
    """
    from alembic import op

    _check_version(version, "downgrade_schema")
    target = version - 1 if to is None else to
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < version:
        raise ConfigurationError(
            f"downgrade_schema({version}, to={to!r}): 'to' is the schema version to go back "
            f"to, from 0 (nothing) to {version - 1}"
        )
    names = configured_names()
    op.execute(ddl_lock_statement())
    for step in range(version, target, -1):
        for statement in downgrade_statements(names, step):
            op.execute(statement)


def _check_version(version: object, call: str) -> None:
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigurationError(f"{call}({version!r}): the schema version is an integer")
    if not 1 <= version <= SCHEMA_VERSION:
        raise ConfigurationError(
            f"{call}({version}): this notifelect knows schema versions 1 to {SCHEMA_VERSION}"
            " (a revision written for a newer release needs that release installed)"
        )


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """An Alembic ``include_name`` hook that hides notifelect's objects from autogenerate.

    Without it, ``alembic revision --autogenerate`` and ``alembic check`` in an
    application whose metadata does not describe notifelect's tables would propose to
    drop them. Pass it to ``context.configure(include_name=...)``, or call it from the
    application's own hook.
    """
    return not (type_ == "table" and name is not None and is_schema_object(name))


def process_revision_directives(context: Any, revision: Any, directives: list[Any]) -> None:
    """Keep an application's new revisions out of the installed package.

    For ``context.configure(process_revision_directives=...)`` in an ``env.py`` whose
    history adds notifelect's revisions through ``version_locations``, together with
    ``revision_environment = true``. Alembic writes a new revision next to the head it
    builds on, so while notifelect's revision is the only head (an application without
    revisions of its own yet) ``alembic revision`` would write into the package. This
    hook makes such a revision a new base in the application's own folder instead, and
    moves any revision meant for notifelect's branch there too.
    """
    from alembic.util import CommandError

    script = getattr(context, "script", None)
    if script is None:
        return
    package = os.path.realpath(_PACKAGE_VERSIONS)
    locations = [
        os.path.realpath(location) for location in getattr(script, "_version_locations", [])
    ]
    own = [location for location in locations if location != package]
    for directive in directives:
        if getattr(directive, "version_path", None) is not None:
            continue
        # The command line leaves --head unset (None): Alembic reads that as "head".
        head = getattr(directive, "head", None) or "head"
        try:
            bases = [s for s in script.get_revisions(head) if s is not None] if head else []
        except CommandError:
            continue  # Alembic says what is wrong with the --head given
        if not bases or any(os.path.realpath(os.path.dirname(s.path)) != package for s in bases):
            continue
        if not own:
            raise CommandError(
                "notifelect's revisions are the only version location: add the "
                "application's own folder to version_locations (before "
                f"{VERSIONS_LOCATION!r}) so that new revisions are not written into the "
                "installed package"
            )
        if head in ("head", "heads"):
            directive.head = "base"  # the application's first revision: a base of its own
        directive.version_path = own[0]
