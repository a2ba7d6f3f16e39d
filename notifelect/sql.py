"""Queries on the election tables, one named builder each, for a given :class:`Names`.

Every builder returns the text of one statement with asyncpg's ``$n`` parameters; what
each parameter is, and the columns it returns, are in its docstring. Object names come
quoted from ``Names``, so a builder's text is safe for any valid prefix. The DDL (creating
and dropping the objects) lives with the names in :mod:`notifelect.schema`.
"""

from __future__ import annotations

from .schema import Names, quote_ident

#: True for a member row (aliased ``m``) whose session is still connected. The row keeps
#: the session's backend pid and start time, since a pid alone may have been reused; a
#: NULL ``backend_start`` (a session whose details the role may not see) counts as live.
LIVE_MEMBER = (
    "EXISTS (SELECT FROM pg_stat_activity a"
    " WHERE a.pid = m.backend_pid"
    " AND (a.backend_start = m.backend_start OR a.backend_start IS NULL))"
)

#: Whether every relation given as ``$1`` (text[] of quoted names) exists.
RELATIONS_EXIST = "SELECT bool_and(to_regclass(n) IS NOT NULL) FROM unnest($1::text[]) AS n"

#: The database's clock now (not the start of the transaction).
CLOCK = "SELECT clock_timestamp()"

#: ``$1`` is NULL for every group, or the one namespace to read.
_ONE_OR_ALL = "($1::text IS NULL OR {column} = $1)"


def schema_version(names: Names) -> str:
    """The installed schema version (NULL if the version table is empty)."""
    return f"SELECT max(version) FROM {quote_ident(names.version)}"


def status_leaders(names: Names) -> str:
    """Each group's recorded leader (``$1``: namespace or NULL for all).

    Columns: namespace, node, priority, term, host, pid, since, renewed_at, released,
    renewed_age (seconds since the last renewal, database clock) and live (whether the
    leader's member session is still connected).
    """
    q = quote_ident
    return (
        "SELECT l.namespace, l.node, l.priority, l.term, l.host, l.pid, l.since,"
        " l.renewed_at, l.released,"
        " extract(epoch FROM clock_timestamp() - l.renewed_at)::float8 AS renewed_age,"
        f" EXISTS (SELECT FROM {q(names.member)} m WHERE m.namespace = l.namespace"
        f"         AND m.node = l.node AND {LIVE_MEMBER}) AS live"
        f" FROM {q(names.leader)} l WHERE {_ONE_OR_ALL.format(column='l.namespace')}"
    )


def status_members(names: Names) -> str:
    """Live members (``$1``: namespace or NULL for all), each group's highest rank first.

    Columns: namespace, node, priority, host, pid, joined_at.
    """
    return (
        "SELECT m.namespace, m.node, m.priority, m.host, m.pid, m.joined_at"
        f" FROM {quote_ident(names.member)} m"
        f" WHERE {LIVE_MEMBER} AND {_ONE_OR_ALL.format(column='m.namespace')}"
        " ORDER BY m.namespace, m.priority DESC, m.node DESC"
    )


def status_history(names: Names) -> str:
    """The last ``$2`` terms of each group (``$1``: namespace or NULL for all), newest first.

    Columns: namespace, term, node, host, pid, started_at, ended_at, reason.
    """
    return (
        "SELECT namespace, term, node, host, pid, started_at, ended_at, reason FROM ("
        "  SELECT h.*, row_number() OVER (PARTITION BY h.namespace ORDER BY h.term DESC) AS n"
        f"  FROM {quote_ident(names.history)} h"
        f"  WHERE {_ONE_OR_ALL.format(column='h.namespace')}"
        ") x WHERE n <= $2 ORDER BY namespace, term DESC"
    )
