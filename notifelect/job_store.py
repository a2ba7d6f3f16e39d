"""Where a group's scheduled jobs keep their schedule and their runs.

:class:`PostgresJobStore` keeps them in the ``notifelect_job`` and ``notifelect_job_run``
tables (schema version 4) and reads time from the database's clock, so every node plans on
the same clock. A run is *claimed* in a transaction fenced by the leadership's term (only
the current leader records a run, and the key (group, job, scheduled time) makes each time
run at most once); its end is recorded without the guard, so that a run that finishes after
its leadership ended still says how it ended. :class:`MemoryJobStore` keeps the same
records in memory, shared by the groups of one :class:`~notifelect.MemoryBus`.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigurationError
from .schema import Names, quote_ident

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from .leadership import Leadership
    from .transport.memory import MemoryBus

__all__ = [
    "JobState",
    "JobStore",
    "MemoryJobStore",
    "PostgresJobStore",
    "RunRecord",
    "memory_store",
]

#: Prefixes of the job names that other schedulers record in the same tables
#: (:mod:`notifelect.integrations.apscheduler`).
FOREIGN_PREFIXES = ("apscheduler:",)

#: Outcomes of a run: ``running`` until it ends; ``abandoned`` when a later leader found it
#: unfinished and its node gone (or silent for longer than any drain can take); ``missed``
#: when APScheduler did not run it (its misfire grace time had passed).
OUTCOMES = ("running", "succeeded", "failed", "cancelled", "abandoned", "missed")


@dataclass(frozen=True)
class RunRecord:
    """One run of a job, as recorded."""

    namespace: str
    job: str
    scheduled_at: datetime
    started_at: datetime
    node: int
    term: int
    outcome: str = "running"
    ended_at: datetime | None = None
    error: str | None = None

    @property
    def lateness(self) -> float:
        """Seconds between the scheduled time and the start."""
        return (self.started_at - self.scheduled_at).total_seconds()


@dataclass(frozen=True)
class JobState:
    """What a leader reads before planning a job's next run."""

    now: datetime  # the store's clock
    first_due: datetime
    next_due: datetime | None
    last: RunRecord | None  # the run with the latest scheduled time


class JobStore(Protocol):
    """The port of the scheduled jobs (see the module docstring)."""

    async def state(
        self, namespace: str, job: str, schedule: str, first_due: Callable[[datetime], datetime]
    ) -> JobState:
        """Create the job's row if the group never saw it (its first run due at
        ``first_due(now)``), keep its schedule text current, and read its last run."""
        ...

    async def set_next_due(self, namespace: str, job: str, due: datetime) -> None: ...

    async def holder_alive(self, run: RunRecord) -> bool:
        """Whether the process that started ``run`` still has an election session: the
        one it started the run on, or a later one."""
        ...

    async def abandon(self, ls: Leadership, run: RunRecord) -> None:
        """Record ``run`` as abandoned (under ``ls``'s fence)."""
        ...

    async def relink(self, run: RunRecord, node: int) -> bool:
        """Name ``node`` as the holder of ``run`` while it has not ended: the process
        running it came back on a new session after its old one was lost. Returns
        whether the record still had no end."""
        ...

    async def claim(
        self, ls: Leadership, job: str, scheduled_at: datetime, next_due: datetime
    ) -> RunRecord | None:
        """Record the start of the run scheduled at ``scheduled_at`` under ``ls``'s fence;
        None if that time already has a run."""
        ...

    async def finish(self, run: RunRecord, outcome: str, error: str | None, keep: int) -> bool:
        """Record the end of ``run`` unless it already has one; keep the newest ``keep``
        runs of the job. Returns whether this call recorded the end."""
        ...

    def transaction(
        self, ls: Leadership, run: RunRecord
    ) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A fenced transaction whose commit also records ``run`` as succeeded."""
        ...

    async def runs(self, namespace: str, job: str) -> list[RunRecord]:
        """Every recorded run of a job, oldest first."""
        ...

    async def job_names(self, namespace: str) -> list[str]:
        """The names of the jobs the group recorded, sorted."""
        ...

    async def member_url(self, namespace: str, node: int) -> str | None:
        """The URL member ``node`` of the group advertises (None: none, or not a member)."""
        ...


# ---------------------------------------------------------------- PostgreSQL


def _queries(names: Names) -> dict[str, str]:
    q = quote_ident
    job, run, session = q(names.job), q(names.job_run), q(names.session)
    key = "namespace = :namespace AND job = :job"
    return {
        "create": (
            f"INSERT INTO {job} (namespace, job, schedule, first_due, created_at, updated_at)"
            " VALUES (:namespace, :job, :schedule, :first_due, clock_timestamp(),"
            " clock_timestamp()) ON CONFLICT (namespace, job) DO UPDATE"
            " SET schedule = EXCLUDED.schedule, updated_at = EXCLUDED.updated_at"
            f" WHERE {job}.schedule <> EXCLUDED.schedule"
        ),
        "state": (
            "SELECT clock_timestamp() AS now, j.schedule, j.first_due, j.next_due, r.scheduled_at,"
            " r.started_at, r.ended_at, r.node, r.term, r.outcome, r.error"
            f" FROM {job} j LEFT JOIN LATERAL (SELECT * FROM {run} x"
            " WHERE x.namespace = j.namespace AND x.job = j.job"
            " ORDER BY x.scheduled_at DESC LIMIT 1) r ON true"
            " WHERE j.namespace = :namespace AND j.job = :job"
        ),
        "next_due": (
            f"UPDATE {job} SET next_due = :due, updated_at = clock_timestamp() WHERE {key}"
        ),
        "alive": (
            f"SELECT EXISTS (SELECT FROM {session} s JOIN pg_stat_activity a"
            " ON a.pid = s.backend_pid"
            " AND (a.backend_start = s.backend_start OR a.backend_start IS NULL)"
            # The run's node, or the same process on a later session (a lost session
            # is followed by a new one with a new node id, while a job's thread runs on).
            " WHERE s.node = :node OR (s.host, s.pid) IN"
            f" (SELECT o.host, o.pid FROM {session} o WHERE o.node = :node))"
        ),
        "relink": (
            f"UPDATE {run} SET node = :node"
            f" WHERE {key} AND scheduled_at = :scheduled_at AND term = :term"
            " AND ended_at IS NULL RETURNING node"
        ),
        "claim": (
            f"INSERT INTO {run} (namespace, job, scheduled_at, started_at, node, term, outcome)"
            " VALUES (:namespace, :job, :scheduled_at, clock_timestamp(), :node, :term,"
            " 'running') ON CONFLICT DO NOTHING RETURNING started_at"
        ),
        "finish": (
            f"UPDATE {run} SET outcome = :outcome, error = :error, ended_at = clock_timestamp()"
            f" WHERE {key} AND scheduled_at = :scheduled_at AND term = :term"
            " AND ended_at IS NULL RETURNING ended_at"
        ),
        "prune": (
            f"DELETE FROM {run} WHERE {key} AND scheduled_at < (SELECT scheduled_at FROM {run}"
            f" WHERE {key} ORDER BY scheduled_at DESC OFFSET :keep - 1 LIMIT 1)"
        ),
        "runs": (
            "SELECT namespace, job, scheduled_at, started_at, node, term, outcome, ended_at,"
            f" error FROM {run} WHERE {key} ORDER BY scheduled_at"
        ),
        "jobs": f"SELECT job FROM {job} WHERE namespace = :namespace ORDER BY job",
        "url": (f"SELECT url FROM {q(names.member)} WHERE namespace = :namespace AND node = :node"),
    }


class PostgresJobStore:
    """The jobs of the groups on one engine, in the database (see the module docstring).

    Each call checks a connection out of ``engine``'s pool for one short transaction,
    bounded by ``io_timeout``.
    """

    def __init__(self, engine: AsyncEngine, names: Names, io_timeout: float) -> None:
        from sqlalchemy import text

        self.engine = engine
        self.names = names
        self.io_timeout = io_timeout
        self._sql = {name: text(query) for name, query in _queries(names).items()}

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection on which every statement commits on its own (bounded by
        ``io_timeout`` in all). Never an open transaction between two round trips: a node
        cut off after one statement of a transaction would leave its backend holding that
        statement's row locks (waiting on the client for as long as the path stays
        half-open), and the next leader's writes of the same rows would wait for it. A
        single statement arrives whole and commits on the server, answered or not. The
        writes that must commit together run in a fenced transaction instead, whose
        holder the next leader fences."""
        async with asyncio.timeout(self.io_timeout), self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    async def state(
        self, namespace: str, job: str, schedule: str, first_due: Callable[[datetime], datetime]
    ) -> JobState:
        key = {"namespace": namespace, "job": job}
        async with self._begin() as conn:
            row = (await conn.execute(self._sql["state"], key)).mappings().first()
            if row is None or row["schedule"] != schedule:
                # A job the group never ran gets its row; a changed schedule is recorded
                # (the plan follows the code's, from the last scheduled time).
                now = (await conn.execute(_clock())).scalar_one()
                params = {**key, "schedule": schedule, "first_due": first_due(now)}
                await conn.execute(self._sql["create"], params)
                row = (await conn.execute(self._sql["state"], key)).mappings().one()
        last = None
        if row["scheduled_at"] is not None:
            last = RunRecord(
                namespace,
                job,
                row["scheduled_at"],
                row["started_at"],
                row["node"],
                row["term"],
                row["outcome"],
                row["ended_at"],
                row["error"],
            )
        return JobState(row["now"], row["first_due"], row["next_due"], last)

    async def set_next_due(self, namespace: str, job: str, due: datetime) -> None:
        async with self._begin() as conn:
            params = {"namespace": namespace, "job": job, "due": due}
            await conn.execute(self._sql["next_due"], params)

    async def holder_alive(self, run: RunRecord) -> bool:
        async with self._begin() as conn:
            return bool((await conn.execute(self._sql["alive"], {"node": run.node})).scalar())

    async def abandon(self, ls: Leadership, run: RunRecord) -> None:
        async with ls.transaction(self.engine) as conn:
            await conn.execute(self._sql["finish"], _finish_params(run, "abandoned", None))

    async def relink(self, run: RunRecord, node: int) -> bool:
        params = {
            "namespace": run.namespace,
            "job": run.job,
            "scheduled_at": run.scheduled_at,
            "term": run.term,
            "node": node,
        }
        async with self._begin() as conn:
            return (await conn.execute(self._sql["relink"], params)).first() is not None

    async def claim(
        self, ls: Leadership, job: str, scheduled_at: datetime, next_due: datetime
    ) -> RunRecord | None:
        params = {
            "namespace": ls.namespace,
            "job": job,
            "scheduled_at": scheduled_at,
            "node": ls.node,
            "term": ls.term,
        }
        async with ls.transaction(self.engine) as conn:
            started = (await conn.execute(self._sql["claim"], params)).scalar()
            if started is None:
                return None
            due = {"namespace": ls.namespace, "job": job, "due": next_due}
            await conn.execute(self._sql["next_due"], due)
        return RunRecord(ls.namespace, job, scheduled_at, started, ls.node, ls.term)

    async def finish(self, run: RunRecord, outcome: str, error: str | None, keep: int) -> bool:
        async with self._begin() as conn:
            done = await conn.execute(self._sql["finish"], _finish_params(run, outcome, error))
            recorded = done.first() is not None
            params = {"namespace": run.namespace, "job": run.job, "keep": keep}
            await conn.execute(self._sql["prune"], params)
        return recorded

    @contextlib.asynccontextmanager
    async def transaction(self, ls: Leadership, run: RunRecord) -> AsyncIterator[AsyncConnection]:
        async with ls.transaction(self.engine) as conn:
            yield conn
            await conn.execute(self._sql["finish"], _finish_params(run, "succeeded", None))

    async def runs(self, namespace: str, job: str) -> list[RunRecord]:
        async with self._begin() as conn:
            rows = await conn.execute(self._sql["runs"], {"namespace": namespace, "job": job})
            return [RunRecord(*row) for row in rows]

    async def job_names(self, namespace: str) -> list[str]:
        async with self._begin() as conn:
            rows = await conn.execute(self._sql["jobs"], {"namespace": namespace})
            return [str(name) for name in rows.scalars()]

    async def member_url(self, namespace: str, node: int) -> str | None:
        async with self._begin() as conn:
            params = {"namespace": namespace, "node": node}
            url = (await conn.execute(self._sql["url"], params)).scalar()
            return None if url is None else str(url)


def _clock() -> Any:
    from sqlalchemy import text

    return text("SELECT clock_timestamp()")


def _finish_params(run: RunRecord, outcome: str, error: str | None) -> dict[str, object]:
    return {
        "namespace": run.namespace,
        "job": run.job,
        "scheduled_at": run.scheduled_at,
        "term": run.term,
        "outcome": outcome,
        "error": error,
    }


# ---------------------------------------------------------------- memory


@dataclass
class _MemoryJob:
    schedule: str
    first_due: datetime
    next_due: datetime | None = None


class MemoryJobStore:
    """The same records in memory, for groups on a MemoryBus (tests, simulations).

    ``clock`` gives the time (aware, UTC) and ``alive`` says whether a node still has its
    session; a run's fence is the leadership's validity.
    """

    def __init__(
        self,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        alive: Callable[[int], bool] = lambda node: False,
        urls: Callable[[int], str | None] = lambda node: None,
    ) -> None:
        self.clock = clock
        self.alive = alive
        self.urls = urls
        self.jobs: dict[tuple[str, str], _MemoryJob] = {}
        self.records: dict[tuple[str, str], dict[datetime, RunRecord]] = {}

    async def state(
        self, namespace: str, job: str, schedule: str, first_due: Callable[[datetime], datetime]
    ) -> JobState:
        now = self.clock()
        found = self.jobs.get((namespace, job))
        if found is None:
            found = self.jobs[namespace, job] = _MemoryJob(schedule, first_due(now))
        found.schedule = schedule
        runs = self.records.get((namespace, job), {})
        last = runs[max(runs)] if runs else None
        return JobState(now, found.first_due, found.next_due, last)

    async def set_next_due(self, namespace: str, job: str, due: datetime) -> None:
        self.jobs[namespace, job].next_due = due

    async def holder_alive(self, run: RunRecord) -> bool:
        return self.alive(run.node)

    async def abandon(self, ls: Leadership, run: RunRecord) -> None:
        ls.check()
        self._end(run, "abandoned", None)

    async def relink(self, run: RunRecord, node: int) -> bool:
        runs = self.records.get((run.namespace, run.job), {})
        found = runs.get(run.scheduled_at)
        if found is None or found.term != run.term or found.ended_at is not None:
            return False
        runs[run.scheduled_at] = replace(found, node=node)
        return True

    async def claim(
        self, ls: Leadership, job: str, scheduled_at: datetime, next_due: datetime
    ) -> RunRecord | None:
        ls.check()
        runs = self.records.setdefault((ls.namespace, job), {})
        if scheduled_at in runs:
            return None
        run = RunRecord(ls.namespace, job, scheduled_at, self.clock(), ls.node, ls.term)
        runs[scheduled_at] = run
        self.jobs[ls.namespace, job].next_due = next_due
        return run

    def _end(self, run: RunRecord, outcome: str, error: str | None) -> bool:
        runs = self.records.get((run.namespace, run.job), {})
        found = runs.get(run.scheduled_at)
        if found is None or found.term != run.term or found.ended_at is not None:
            return False
        runs[run.scheduled_at] = replace(found, outcome=outcome, error=error, ended_at=self.clock())
        return True

    async def finish(self, run: RunRecord, outcome: str, error: str | None, keep: int) -> bool:
        recorded = self._end(run, outcome, error)
        runs = self.records.get((run.namespace, run.job), {})
        for old in sorted(runs)[:-keep]:
            del runs[old]
        return recorded

    def transaction(
        self, ls: Leadership, run: RunRecord
    ) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        raise ConfigurationError(
            f"the run of job {run.job!r} of group {run.namespace!r} has no database "
            "transaction: its group runs on a MemoryBus; give the group an AsyncEngine"
        )

    async def runs(self, namespace: str, job: str) -> list[RunRecord]:
        runs = self.records.get((namespace, job), {})
        return [runs[t] for t in sorted(runs)]

    async def job_names(self, namespace: str) -> list[str]:
        return sorted(job for ns, job in self.jobs if ns == namespace)

    async def member_url(self, namespace: str, node: int) -> str | None:
        return self.urls(node)


_MEMORY: weakref.WeakKeyDictionary[MemoryBus, MemoryJobStore] = weakref.WeakKeyDictionary()


def memory_store(bus: MemoryBus) -> MemoryJobStore:
    """The job store shared by the groups of ``bus``."""
    store = _MEMORY.get(bus)
    if store is None:
        store = _MEMORY[bus] = MemoryJobStore(
            alive=lambda node: node in bus._open,
            urls=lambda node: bus._open[node].member.url if node in bus._open else None,
        )
    return store
