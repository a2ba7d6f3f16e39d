"""The scheduled jobs that ``notifelect status`` shows under each group, from the
``notifelect_jobs`` view (schema version 4): each job's last run and next due time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..schema import Names, quote_ident


@dataclass(frozen=True)
class JobStatus:
    """One job of a group: its schedule, its last run and when the next one is due."""

    job: str
    schedule: str
    last_scheduled_at: datetime | None
    last_started_at: datetime | None
    last_ended_at: datetime | None
    #: ``running``, ``succeeded``, ``failed``, ``cancelled`` or ``abandoned``; None before
    #: the first run.
    last_outcome: str | None
    last_error: str | None
    node: int | None
    term: int | None
    #: Seconds between the last run's scheduled time and its start.
    lateness: float | None
    duration: float | None
    next_due: datetime | None
    #: Seconds the next run is past due (database clock; 0 when it is not due yet or runs).
    overdue: float


def jobs_query(names: Names) -> str:
    """Every job (``$1``: namespace or NULL for all), with the database clock's overdue.

    Columns: those of :class:`JobStatus`, plus namespace.
    """
    return (
        "SELECT namespace, job, schedule, last_scheduled_at, last_started_at, last_ended_at,"
        " last_outcome, last_error, node, term,"
        " extract(epoch FROM lateness)::float8 AS lateness,"
        " extract(epoch FROM duration)::float8 AS duration, next_due,"
        " CASE WHEN last_outcome = 'running' OR next_due IS NULL THEN 0"
        "  ELSE greatest(0, extract(epoch FROM clock_timestamp() - next_due))::float8"
        " END AS overdue"
        f" FROM {quote_ident(names.jobs_view)}"
        " WHERE ($1::text IS NULL OR namespace = $1) ORDER BY namespace, job"
    )


def by_namespace(rows: Sequence[asyncpg.Record]) -> dict[str, list[JobStatus]]:
    found: dict[str, list[JobStatus]] = {}
    for row in rows:
        values = dict(row)
        namespace = values.pop("namespace")
        found.setdefault(namespace, []).append(JobStatus(**values))
    return found
