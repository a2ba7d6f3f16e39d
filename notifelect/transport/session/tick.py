"""The tick of a session: once per interval one statement renews the session's lease (for
every group it leads) and reads what changed in its groups' leaderships (the followers'
heartbeat); and the reads of many groups at once (surveys, member registrations, leader
rows) that joining or losing a shared leader makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Container, Hashable, Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ..._clock import now
from ...rules import Sighting, sight, standbys_due, unchanged_for
from ...sql import TICK_LEADER, lock_halves
from ..base import LeaderRecord, TransportError
from ..serial import Batched
from .common import SessionGroup, SessionView, Tick

log = logging.getLogger(__name__)

_NAMESPACE = TICK_LEADER.index("namespace")
_NODE = TICK_LEADER.index("node")
_SINCE = TICK_LEADER.index("since")
_RENEWED_AT = TICK_LEADER.index("renewed_at")


def _rows_of(rows: str | None) -> list[list[Any]]:
    """The rows of a periodic statement's JSON column (NULL when there are none)."""
    return [] if rows is None else list(json.loads(rows))


def _time(value: str) -> datetime:
    """A time as PostgreSQL writes it in JSON (ISO 8601, with the offset of the session's
    time zone), in UTC as the driver reads every other time."""
    return datetime.fromisoformat(value).astimezone(UTC)


class Known:
    """What a session knows of its groups' leadership rows.

    Each periodic statement reads only what changed since the previous one (every write
    of a leader row stamps it with its transaction's id, see schema version 3), plus the
    whole row of each group that joined since, and the renewals of the sessions that lead
    them: what a session reads per interval does not grow with its groups.
    """

    def __init__(self) -> None:
        #: Rows written by transactions from this id on are read next time (None: none).
        self.horizon: str | None = None
        self._rows: dict[str, tuple[Any, ...]] = {}  # namespace -> TICK_LEADER values
        self._read: set[str] = set()  # groups whose whole row was read since they joined
        #: What this node saw of each group's leader renewals, on its own clock.
        self._renewals: dict[str, Sighting] = {}

    def quiet_for(
        self,
        namespace: str,
        leader: tuple[int, int],
        mark: Hashable,
        age: float | None,
        at: float,
    ) -> float:
        """Seconds, on this node's clock, since ``leader``'s (node, term) renewal of group
        ``namespace`` was last seen to change, taking in a reading of its ``mark`` (and
        the database's ``age`` of it) made at ``at``."""
        seen = sight(self._renewals.get(namespace), leader, mark, age, at)
        self._renewals[namespace] = seen
        return unchanged_for(seen, at)

    def unread(self, groups: Iterable[str]) -> list[str]:
        return [namespace for namespace in groups if namespace not in self._read]

    def nodes(self) -> list[str]:
        """The leaders whose sessions' renewals count for the groups (as text: see
        :attr:`~notifelect.sql.ElectionQueries.tick`)."""
        return [str(node) for node in sorted({row[_NODE] for row in self._rows.values()})]

    def forget(self, namespace: str) -> None:
        self._rows.pop(namespace, None)
        self._read.discard(namespace)
        self._renewals.pop(namespace, None)

    def update(
        self, groups: Container[str], fresh: list[str], row: asyncpg.Record, sent_at: float
    ) -> dict[str, LeaderRecord]:
        """Take in what a periodic statement sent at ``sent_at`` (this node's clock) read;
        the record of every group that has a leader row, its age as of the statement."""
        self.horizon = row["horizon"]
        for values in _rows_of(row["leaders"]):
            if values[_NAMESPACE] in groups:
                values[_SINCE] = _time(values[_SINCE])
                values[_RENEWED_AT] = _time(values[_RENEWED_AT])
                self._rows[values[_NAMESPACE]] = tuple(values)
        self._read.update(namespace for namespace in fresh if namespace in groups)
        sessions = {
            node: (pid, _time(renewed_at)) for node, pid, renewed_at in _rows_of(row["sessions"])
        }
        at = row["at"]
        records = {}
        for namespace, leader in self._rows.items():
            fields = dict(zip(TICK_LEADER, leader, strict=True))
            renewed_at = leader_renewed_at = fields.pop("renewed_at")
            backend_pid = fields.pop("backend_pid")
            del fields["namespace"]
            # A session's renewals count while the row names its backend (see _RENEWED_AGE).
            session = sessions.get(fields["node"])
            session_renewed_at = None
            if session is not None and session[0] == backend_pid:
                session_renewed_at = session[1]
                renewed_at = max(renewed_at, session_renewed_at)
            age = (at - renewed_at).total_seconds()
            quiet = self.quiet_for(
                namespace,
                (fields["node"], fields["term"]),
                (leader_renewed_at, session_renewed_at),
                age,
                sent_at,
            )
            records[namespace] = LeaderRecord(**fields, renewed_age=age, quiet_for=quiet)
        return records


def _warmed(task: asyncio.Task[None]) -> None:
    """A warm-up is worth nothing but time: a failed one changes nothing (a lost session
    is told by the calls that matter)."""
    exc = None if task.cancelled() else task.exception()
    if exc is not None and not isinstance(exc, TransportError | asyncpg.PostgresError):
        log.error("warming the take-over statements failed", exc_info=exc)


class Ticker:
    """The periodic statement of a session, and the batched reads of its groups."""

    def __init__(self, session: SessionView, groups: dict[str, SessionGroup]) -> None:
        self.session = session
        self.groups = groups
        self.known = Known()
        self.task: asyncio.Task[None] | None = None
        self._warming: asyncio.Task[None] | None = None
        self._standbys_at = 0.0
        self._wake = asyncio.Event()
        #: Surveys and member registrations of several groups at once: many groups
        #: joining, or losing the leader they share, cost a statement, not one each.
        self.surveys = Batched(lambda: session.serial, "surveying", self._survey)
        self.registrations = Batched(lambda: session.serial, "registering", self._register)
        self.leaders = Batched(lambda: session.serial, "reading leaders", self._read_leaders)

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._loop(), name="notifelect:session")

    def wake(self) -> None:
        """End the wait for the next interval (the session is closing or lost)."""
        self._wake.set()
        if self._warming is not None:
            self._warming.cancel()

    async def _loop(self) -> None:
        s = self.session
        interval = s.timing.interval
        ticks = 0
        while s.usable:
            started = now()
            try:
                await self._tick()
                since = now() - self._standbys_at
                if standbys_due(since, leader_timeout=s.timing.leader_timeout):
                    await self._update_standbys()
                ticks += 1
                if ticks == 2:  # an interval after joining, out of the way of a cold start
                    # Beside the renewals, never in their way (its calls go last).
                    self._warming = asyncio.create_task(self._warm(), name="notifelect:warm")
                    self._warming.add_done_callback(_warmed)
            except TransportError:
                return  # the session is lost (the serial connection broke it)
            except asyncpg.PostgresError as exc:  # the database refused it: start afresh
                # Not a bug: the session's loss says it (a warning), with the server's hint.
                hint = f" (hint: {exc.hint})" if getattr(exc, "hint", None) else ""
                s.lose(f"the database refused the periodic statement: {exc!r}{hint}")
                return
            except Exception as exc:  # a bug: start afresh
                log.exception("election session node %s: periodic statement failed", s.node)
                s.lose(f"the periodic statement failed: {exc!r}")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, started + interval - now()))

    async def _tick(self) -> None:
        s = self.session
        serial = s.serial
        if serial is None or not self.groups:
            return
        known = self.known
        fresh = known.unread(self.groups)
        sent_at = now()
        query, node, horizon, nodes = s.queries.tick, s.node, known.horizon, known.nodes()
        row = await serial.run(
            "a renewal",
            lambda c: c.fetchrow(query, node, horizon, fresh, nodes),
            urgent=True,
        )
        if row is None or not row["renewed"]:
            s.lose("the session's row is gone from the session table")
            return
        records = known.update(self.groups, fresh, row, sent_at)
        tick = Tick(sent_at, records)
        for namespace, group in list(self.groups.items()):
            group.ticked(tick, records.get(namespace))

    async def _update_standbys(self) -> None:
        s = self.session
        serial = s.serial
        led = [ns for ns, g in self.groups.items() if g.leading]
        self._standbys_at = now()
        if serial is None or not led:
            return
        # Urgent too: the renewals of the next intervals wait for it.
        await serial.fetch(s.queries.update_standbys, s.node, led, urgent=True)

    async def _warm(self) -> None:
        """Run the statements of a take-over once, on no group (they change nothing): a
        new backend's first run of a statement loads the catalogs it reads, which costs
        milliseconds the hand-over or failover it serves would otherwise wait for.

        Nothing is written, not even in a transaction rolled back: rehearsing the taking
        of terms saved the first take-over a millisecond, but with a hundred members
        joining at once, the hundred rehearsals kept the two cores of a small host busy
        for the very hand-over that followed (a first hand-over at N=100 went from tens
        to hundreds of milliseconds).
        """
        s = self.session
        serial = s.serial
        if serial is None:
            return
        q, node = s.queries, s.node

        # One call each, after every other call that waits: a take-over that comes while
        # the session warms up (the newest member is often the one named to succeed)
        # waits for one step at most, not for them all.
        steps: list[Callable[[asyncpg.Connection[Any]], Awaitable[object]]] = [
            lambda c: c.fetch(q.try_claims, []),
            lambda c: c.fetch(q.leaders_released, []),
            lambda c: c.fetch(q.leader_records, []),
            lambda c: c.fetch(q.take_terms, [], [], node, s.host, s.pid, [], "1"),
            lambda c: c.fetchval(q.successor, "", node),
        ]
        for step in steps:
            await serial.run("warming the take-over statements", step, background=True)

    # ------------------------------------------------------------ reads of many groups

    async def _survey(
        self, conn: asyncpg.Connection[Any], asks: list[tuple[str, int]]
    ) -> list[asyncpg.Record]:
        """Survey the groups ``asks`` (namespace, claim key): one row each, in order."""
        unique = list(dict.fromkeys(asks))
        halves = [lock_halves(key) for _, key in unique]
        rows = await conn.fetch(
            self.session.queries.surveys,
            [namespace for namespace, _ in unique],
            [str(hi) for hi, _ in halves],
            [str(lo) for _, lo in halves],
        )
        found = {row["namespace"]: row for row in rows}
        return [found[namespace] for namespace, _ in asks]

    async def _read_leaders(
        self, conn: asyncpg.Connection[Any], asks: list[str]
    ) -> list[tuple[asyncpg.Record | None, float]]:
        """The leader rows of the groups ``asks`` (None: none recorded), each with when the
        statement was sent (this node's clock)."""
        read_at = now()
        query = self.session.queries.leader_records
        rows = await conn.fetch(query, list(dict.fromkeys(asks)))
        found = {row["namespace"]: row for row in rows}
        return [(found.get(namespace), read_at) for namespace in asks]

    async def _register(
        self, conn: asyncpg.Connection[Any], asks: list[tuple[str, int, str | None]]
    ) -> list[None]:
        """Register this session as a member of the groups ``asks`` (namespace,
        priority, advertised URL)."""
        s = self.session
        unique = {namespace: (priority, url) for namespace, priority, url in asks}
        await conn.execute(
            s.queries.register_members,
            list(unique),
            s.node,
            [str(priority) for priority, _ in unique.values()],
            s.host,
            s.pid,
            [url for _, url in unique.values()],
        )
        return [None for _ in asks]
