"""Names and DDL of the database objects, the one source for the CLI and the Alembic revisions.

Every object name is ``<prefix><base>``. The prefix comes from ``NOTIFELECT_PREFIX`` unless
given explicitly. Names are validated (so that they stay within PostgreSQL's 63-byte limit
and need no guessing about case folding) and always emitted as quoted identifiers.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from .errors import ConfigurationError

#: Version of the schema this code expects; bumped with every Alembic revision.
SCHEMA_VERSION = 4

PREFIX_ENV = "NOTIFELECT_PREFIX"
_PREFIX_RULE = re.compile(r"[a-z0-9_]{0,30}")
_NAMESPACE_MAX = 200
_MAX_IDENTIFIER = 63


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is usable in object names, else raise ConfigurationError."""
    if not isinstance(prefix, str) or not _PREFIX_RULE.fullmatch(prefix):
        raise ConfigurationError(
            f"invalid prefix {prefix!r}: a prefix is 0-30 characters of lowercase ASCII "
            "letters, digits and underscores (it becomes part of SQL identifiers)"
        )
    return prefix


def validate_namespace(namespace: str) -> str:
    """Return ``namespace`` if it can name an election group, else raise ConfigurationError.

    Namespaces travel only as bound parameters and inside JSON, so any printable text is
    safe; the rule keeps them short enough for a notification payload and free of control
    characters that would garble logs.
    """
    if not isinstance(namespace, str) or not namespace:
        raise ConfigurationError("invalid namespace: it must be a non-empty string")
    if len(namespace.encode()) > _NAMESPACE_MAX:
        raise ConfigurationError(
            f"invalid namespace {namespace[:40]!r}...: at most {_NAMESPACE_MAX} bytes of UTF-8"
        )
    if any(not ch.isprintable() for ch in namespace):
        raise ConfigurationError(
            f"invalid namespace {namespace!r}: control and non-printable characters are not allowed"
        )
    return namespace


def quote_ident(name: str) -> str:
    """Quote an identifier for SQL (doubling embedded quotes)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Names:
    """Names of all database objects for one prefix."""

    prefix: str = ""

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)
        for name in (self.sequence, self.channel, *self.tables(), self.jobs_view):
            if len(name.encode()) > _MAX_IDENTIFIER:  # pragma: no cover - prefix rule prevents it
                raise ConfigurationError(f"object name {name!r} exceeds 63 bytes")

    @classmethod
    def from_env(cls, prefix: str | None = None) -> Names:
        """Names for an explicit prefix, else for ``$NOTIFELECT_PREFIX``, else unprefixed."""
        return cls(os.environ.get(PREFIX_ENV, "") if prefix is None else prefix)

    @property
    def sequence(self) -> str:
        return f"{self.prefix}seq_notifelect"

    @property
    def channel(self) -> str:
        return f"{self.prefix}ch_notifelect"

    @property
    def term(self) -> str:
        return f"{self.prefix}notifelect_term"

    @property
    def leader(self) -> str:
        return f"{self.prefix}notifelect_leader"

    @property
    def member(self) -> str:
        return f"{self.prefix}notifelect_member"

    @property
    def history(self) -> str:
        return f"{self.prefix}notifelect_history"

    @property
    def session(self) -> str:
        return f"{self.prefix}notifelect_session"

    @property
    def version(self) -> str:
        return f"{self.prefix}notifelect_version"

    @property
    def leader_changed(self) -> str:
        """The index, trigger and trigger function stamping each write of a leader row."""
        return f"{self.prefix}notifelect_leader_changed"

    @property
    def status_view(self) -> str:
        return f"{self.prefix}notifelect_status"

    @property
    def job(self) -> str:
        """A group's scheduled jobs: one row per (group, job name)."""
        return f"{self.prefix}notifelect_job"

    @property
    def job_run(self) -> str:
        """The runs of the scheduled jobs: one row per (group, job name, scheduled time)."""
        return f"{self.prefix}notifelect_job_run"

    @property
    def jobs_view(self) -> str:
        """The view of each job's last run and next due time."""
        return f"{self.prefix}notifelect_jobs"

    def tables(self) -> tuple[str, ...]:
        return (
            self.version,
            self.term,
            self.leader,
            self.member,
            self.history,
            self.session,
            self.job,
            self.job_run,
        )

    def views(self) -> tuple[str, ...]:
        return (self.status_view, self.jobs_view)

    def group_channel(self, namespace: str) -> str:
        """The channel of one group's election messages (a hash of prefix and name)."""
        return f"{self.prefix}ch_notifelect_{self.claim_key(namespace) & (2**64 - 1):016x}"

    @property
    def changes_channel(self) -> str:
        """Where every message sent to one node alone is copied, for observers such as
        ``notifelect status --watch`` (no node listens on it: a hand-over wakes none)."""
        return f"{self.prefix}ch_notifelect_changes"

    def node_channel(self, node: int) -> str:
        """The channel of the messages for one session (node id ``node``) alone, such as
        the RESIGN that names it successor (at most 61 bytes: the prefix rule keeps it
        within PostgreSQL's 63)."""
        return f"{self.prefix}ch_notifelect_n{node:x}"

    def claim_key(self, namespace: str) -> int:
        """The advisory-lock key of a group: a stable signed 64-bit hash of prefix and name."""
        digest = hashlib.blake2b(
            f"notifelect\0{self.prefix}\0{namespace}".encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "big", signed=True)

    def anchor_key(self, node: int) -> int:
        """The advisory-lock key of a node's anchor (held while its process lives)."""
        digest = hashlib.blake2b(
            f"notifelect-anchor\0{self.prefix}\0{node}".encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "big", signed=True)


def install_statements(names: Names) -> list[str]:
    """Idempotent DDL creating (or upgrading in place) every object of the schema.

    A database that has only the 0.0.3 sequence keeps it and gains the tables.
    """
    return [
        statement
        for version in range(1, SCHEMA_VERSION + 1)
        for statement in statements_for_version(names, version)
    ]


#: Key of the transaction-level advisory lock that serialises schema changes (the CLI's
#: install/uninstall and the Alembic revisions): CREATE ... IF NOT EXISTS is not race-free.
DDL_LOCK_KEY = 0x6E6F_7469_6665_6C65  # "notifele"


def ddl_lock_statement() -> str:
    """SQL that takes the schema-change lock until the end of the current transaction."""
    return f"SELECT pg_advisory_xact_lock({DDL_LOCK_KEY})"


def statements_for_version(names: Names, version: int) -> list[str]:
    """Idempotent DDL taking the schema from ``version - 1`` to ``version`` and recording it.

    Version 1 starts from nothing or from the 0.0.3 objects (just the sequence, which is
    kept with its value). :func:`install_statements` is these lists for every version in
    order; each Alembic revision runs the list of the version it creates.
    """
    if version == 1:
        return _version_1(names)
    if version == 2:
        return _version_2(names)
    if version == 3:
        return _version_3(names)
    if version == 4:
        return _version_4(names)
    raise ConfigurationError(
        f"no schema version {version}: this notifelect knows versions 1 to {SCHEMA_VERSION}"
    )


def downgrade_statements(names: Names, version: int) -> list[str]:
    """DDL taking the schema from ``version`` back to ``version - 1``.

    Going below version 1 removes every object, exactly as :func:`uninstall_statements`.
    """
    if version == 1:
        return uninstall_statements(names)
    if version == 2:
        q = quote_ident
        return [
            f"DROP TABLE IF EXISTS {q(names.session)}",
            f"ALTER TABLE IF EXISTS {q(names.leader)} DROP COLUMN IF EXISTS standby",
            f"UPDATE {q(names.version)} SET version = 1 WHERE version > 1",
        ]
    if version == 3:
        q = quote_ident
        return [
            f"DROP TRIGGER IF EXISTS {q(names.leader_changed)} ON {q(names.leader)}",
            f"DROP FUNCTION IF EXISTS {q(names.leader_changed)}()",
            f"ALTER TABLE IF EXISTS {q(names.leader)} DROP COLUMN IF EXISTS changed",
            f"ALTER TABLE IF EXISTS {q(names.leader)} DROP COLUMN IF EXISTS lease",
            f"UPDATE {q(names.version)} SET version = 2 WHERE version > 2",
        ]
    if version == 4:
        q = quote_ident
        return [
            f"DROP VIEW IF EXISTS {q(names.jobs_view)}",
            f"DROP TABLE IF EXISTS {q(names.job_run)}",
            f"DROP TABLE IF EXISTS {q(names.job)}",
            f"ALTER TABLE IF EXISTS {q(names.member)} DROP COLUMN IF EXISTS url",
            f"UPDATE {q(names.version)} SET version = 3 WHERE version > 3",
        ]
    raise ConfigurationError(
        f"no schema version {version}: this notifelect knows versions 1 to {SCHEMA_VERSION}"
    )


def record_version_statements(names: Names, version: int) -> list[str]:
    """Idempotent DML recording ``version`` in the version table (never lowering it)."""
    q = quote_ident
    return [
        f"INSERT INTO {q(names.version)} (version) SELECT {version} "
        f"WHERE NOT EXISTS (SELECT FROM {q(names.version)})",
        f"UPDATE {q(names.version)} SET version = {version} WHERE version < {version}",
    ]


def alembic_version_table(names: Names) -> str:
    """Version table of the standalone Alembic environment (``alembic.ini`` of a checkout).

    It is notifelect's own, so that running that environment against an application's
    database never touches the application's ``alembic_version``.
    """
    return f"{names.prefix}notifelect_alembic_version"


def object_base_names() -> tuple[str, ...]:
    """Unprefixed names of every relation notifelect creates.

    The tables, the sequence, the view and the standalone Alembic version table.
    """
    bare = Names("")
    return (*bare.tables(), bare.sequence, *bare.views(), alembic_version_table(bare))


def is_schema_object(name: str) -> bool:
    """Whether ``name`` is a relation of the notifelect schema under any valid prefix."""
    for base in object_base_names():
        if name.endswith(base) and _PREFIX_RULE.fullmatch(name[: len(name) - len(base)]):
            return True
    return False


def _version_1(names: Names) -> list[str]:
    q = quote_ident
    return [
        f"CREATE SEQUENCE IF NOT EXISTS {q(names.sequence)}",
        f"CREATE TABLE IF NOT EXISTS {q(names.version)} (\n    version integer NOT NULL\n)",
        f"CREATE TABLE IF NOT EXISTS {q(names.term)} (\n"
        "    namespace text PRIMARY KEY,\n"
        "    term bigint NOT NULL\n"
        ")",
        f"CREATE TABLE IF NOT EXISTS {q(names.leader)} (\n"
        "    namespace text PRIMARY KEY,\n"
        "    term bigint NOT NULL,\n"
        "    node bigint NOT NULL,\n"
        "    priority integer NOT NULL,\n"
        "    host text NOT NULL,\n"
        "    pid integer NOT NULL,\n"
        "    backend_pid integer NOT NULL,\n"
        "    since timestamptz NOT NULL,\n"
        "    renewed_at timestamptz NOT NULL,\n"
        "    released boolean NOT NULL\n"
        ")",
        f"CREATE TABLE IF NOT EXISTS {q(names.member)} (\n"
        "    namespace text NOT NULL,\n"
        "    node bigint NOT NULL,\n"
        "    priority integer NOT NULL,\n"
        "    host text NOT NULL,\n"
        "    pid integer NOT NULL,\n"
        "    backend_pid integer NOT NULL,\n"
        "    backend_start timestamptz NOT NULL,\n"
        "    joined_at timestamptz NOT NULL,\n"
        "    PRIMARY KEY (namespace, node)\n"
        ")",
        f"CREATE TABLE IF NOT EXISTS {q(names.history)} (\n"
        "    namespace text NOT NULL,\n"
        "    term bigint NOT NULL,\n"
        "    node bigint NOT NULL,\n"
        "    host text NOT NULL,\n"
        "    pid integer NOT NULL,\n"
        "    started_at timestamptz NOT NULL,\n"
        "    ended_at timestamptz,\n"
        "    reason text,\n"
        "    PRIMARY KEY (namespace, term)\n"
        ")",
        *record_version_statements(names, 1),
        status_view_statement(names),
    ]


def _version_2(names: Names) -> list[str]:
    """Sessions: one row per election session (shared by every group of a process on one
    engine), renewed once per interval for all the groups it leads; and each leadership's
    standby, written by its leader when it changes and read by the followers."""
    q = quote_ident
    return [
        f"CREATE TABLE IF NOT EXISTS {q(names.session)} (\n"
        "    node bigint PRIMARY KEY,\n"
        "    host text NOT NULL,\n"
        "    pid integer NOT NULL,\n"
        "    backend_pid integer NOT NULL,\n"
        "    backend_start timestamptz NOT NULL,\n"
        "    started_at timestamptz NOT NULL,\n"
        "    renewed_at timestamptz NOT NULL\n"
        ")",
        f"ALTER TABLE {q(names.leader)} ADD COLUMN IF NOT EXISTS standby bigint",
        *record_version_statements(names, 2),
    ]


def _version_3(names: Names) -> list[str]:
    """Changes of leadership, readable incrementally: every write of a leader row stamps it
    with the id of its transaction (a trigger, so that no writer can forget, an operator's
    included), and an index on that stamp lets each session's periodic statement read only
    the rows changed since its previous one, whatever the number of groups. And the lease
    each leader acts on, which a successor waits out even if its own is shorter."""
    q = quote_ident
    return [
        f"ALTER TABLE {q(names.leader)}"
        " ADD COLUMN IF NOT EXISTS changed xid8 NOT NULL DEFAULT pg_current_xact_id()",
        f"ALTER TABLE {q(names.leader)} ADD COLUMN IF NOT EXISTS lease float8",
        f"CREATE INDEX IF NOT EXISTS {q(names.leader_changed)} ON {q(names.leader)} (changed)",
        f"CREATE OR REPLACE FUNCTION {q(names.leader_changed)}() RETURNS trigger"
        " LANGUAGE plpgsql AS $$ BEGIN NEW.changed := pg_current_xact_id(); RETURN NEW; END $$",
        f"DROP TRIGGER IF EXISTS {q(names.leader_changed)} ON {q(names.leader)}",
        f"CREATE TRIGGER {q(names.leader_changed)} BEFORE INSERT OR UPDATE ON {q(names.leader)}"
        f" FOR EACH ROW EXECUTE FUNCTION {q(names.leader_changed)}()",
        *record_version_statements(names, 3),
    ]


def _version_4(names: Names) -> list[str]:
    """Scheduled jobs whose schedule belongs to the group: each job's row (its schedule as
    text, the time of its first run, the next due time its leader computed) and one row per
    run (scheduled time, start, end, node, term, outcome), whose key makes each scheduled
    time run at most once; the view of each job's last run; and the URL each member
    advertises (where requests for the leader are redirected)."""
    q = quote_ident
    return [
        f"ALTER TABLE {q(names.member)} ADD COLUMN IF NOT EXISTS url text",
        f"CREATE TABLE IF NOT EXISTS {q(names.job)} (\n"
        "    namespace text NOT NULL,\n"
        "    job text NOT NULL,\n"
        "    schedule text NOT NULL,\n"
        "    first_due timestamptz NOT NULL,\n"
        "    next_due timestamptz,\n"
        "    created_at timestamptz NOT NULL,\n"
        "    updated_at timestamptz NOT NULL,\n"
        "    PRIMARY KEY (namespace, job)\n"
        ")",
        f"CREATE TABLE IF NOT EXISTS {q(names.job_run)} (\n"
        "    namespace text NOT NULL,\n"
        "    job text NOT NULL,\n"
        "    scheduled_at timestamptz NOT NULL,\n"
        "    started_at timestamptz NOT NULL,\n"
        "    ended_at timestamptz,\n"
        "    node bigint NOT NULL,\n"
        "    term bigint NOT NULL,\n"
        "    outcome text NOT NULL,\n"
        "    error text,\n"
        "    PRIMARY KEY (namespace, job, scheduled_at)\n"
        ")",
        *record_version_statements(names, 4),
        jobs_view_statement(names),
    ]


def jobs_view_statement(names: Names) -> str:
    """The view that answers "when did each job last run, how did it end, when is it due"
    from psql (``lateness`` is the start's delay after the scheduled time)."""
    q = quote_ident
    return (
        f"CREATE OR REPLACE VIEW {q(names.jobs_view)} AS\n"
        "SELECT j.namespace, j.job, j.schedule, r.scheduled_at AS last_scheduled_at,\n"
        "       r.started_at AS last_started_at, r.ended_at AS last_ended_at,\n"
        "       r.outcome AS last_outcome, r.error AS last_error, r.node, r.term,\n"
        "       r.started_at - r.scheduled_at AS lateness,\n"
        "       r.ended_at - r.started_at AS duration, j.next_due\n"
        f"FROM {q(names.job)} j\n"
        "LEFT JOIN LATERAL (\n"
        f"    SELECT * FROM {q(names.job_run)} x\n"
        "    WHERE x.namespace = j.namespace AND x.job = j.job\n"
        "    ORDER BY x.scheduled_at DESC LIMIT 1\n"
        ") r ON true"
    )


def status_view_statement(names: Names) -> str:
    """The view that answers "who leads, since when, who else is there" from psql."""
    q = quote_ident
    return (
        f"CREATE OR REPLACE VIEW {q(names.status_view)} AS\n"
        "SELECT m.namespace, m.node, m.priority, m.host, m.pid,\n"
        "       (l.node IS NOT NULL AND l.node = m.node AND NOT l.released) AS is_leader,\n"
        "       CASE WHEN l.node = m.node AND NOT l.released THEN l.term END AS term,\n"
        "       CASE WHEN l.node = m.node AND NOT l.released THEN l.since END AS leader_since,\n"
        "       CASE WHEN l.node = m.node AND NOT l.released THEN l.renewed_at END AS renewed_at,\n"
        "       m.joined_at, m.backend_pid\n"
        f"FROM {q(names.member)} m\n"
        f"LEFT JOIN {q(names.leader)} l ON l.namespace = m.namespace\n"
        "WHERE EXISTS (SELECT FROM pg_stat_activity a\n"
        "              WHERE a.pid = m.backend_pid\n"
        "                AND (a.backend_start = m.backend_start OR a.backend_start IS NULL))"
    )


def uninstall_statements(names: Names) -> list[str]:
    """Idempotent DDL removing every object of the schema, and nothing else."""
    q = quote_ident
    return [
        *(f"DROP VIEW IF EXISTS {q(view)}" for view in reversed(names.views())),
        *(f"DROP TABLE IF EXISTS {q(table)}" for table in reversed(names.tables())),
        f"DROP FUNCTION IF EXISTS {q(names.leader_changed)}()",
        f"DROP SEQUENCE IF EXISTS {q(names.sequence)}",
    ]


def required_names(names: Names) -> list[str]:
    """Names of the relations a running node needs (what a schema check looks for)."""
    return [
        names.sequence,
        names.version,
        names.term,
        names.leader,
        names.member,
        names.history,
        names.session,
        names.job,
        names.job_run,
    ]


def required_relations(names: Names) -> list[str]:
    """Quoted names of :func:`required_names`, for ``to_regclass`` checks."""
    return [quote_ident(name) for name in required_names(names)]
