"""What ``notifelect status`` reports, read from the database in one transaction.

The database is the source of truth: the leader row (with the age of its session's last
lease renewal, which is how the followers hear a leader), the live members and the
history of terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from .. import sql
from ..schema import Names
from .job_records import JobStatus, by_namespace, jobs_query

#: How many past terms each group shows by default.
DEFAULT_TRANSITIONS = 5


@dataclass(frozen=True)
class LeaderStatus:
    """The current leader of a group, as the database records it."""

    node: int
    priority: int
    term: int
    host: str
    pid: int
    since: datetime
    renewed_at: datetime
    #: Seconds since the leader last renewed its lease (database clock).
    renewed_age: float
    #: The same as ``renewed_age`` (kept for scripts written for 0.1, which heard leaders'
    #: heartbeats on the channel; since 0.2 the session's renewal is the heartbeat).
    heartbeat_age: float | None = None


@dataclass(frozen=True)
class MemberStatus:
    """A live member: ``rank`` 1 is the highest (priority, then node id)."""

    node: int
    priority: int
    host: str
    pid: int
    joined_at: datetime
    rank: int
    role: str  # "leader", "standby" (takes over first) or "follower"
    #: The URL the member advertises (``ElectionGroup(advertise_url=...)``), if any.
    url: str | None = None


@dataclass(frozen=True)
class Transition:
    """One term of the group's history, newest first."""

    term: int
    node: int
    host: str
    pid: int
    started_at: datetime
    ended_at: datetime | None
    reason: str | None  # None while the term is current; "lost" when it ended uncleanly


@dataclass(frozen=True)
class GroupStatus:
    namespace: str
    leader: LeaderStatus | None
    members: list[MemberStatus] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    #: Why there is no leader although the database recorded one (released, session gone).
    vacancy: str | None = None
    #: The group's scheduled jobs (``@group.every``, ``@group.cron``).
    jobs: list[JobStatus] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = _jsonable(asdict(self))
        return data


@dataclass(frozen=True)
class Snapshot:
    """Every group's status at one instant of the database clock."""

    at: datetime
    groups: list[GroupStatus]
    prefix: str

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "prefix": self.prefix,
            "groups": [g.to_json() for g in self.groups],
        }

    def group(self, namespace: str) -> GroupStatus | None:
        return next((g for g in self.groups if g.namespace == namespace), None)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


class StatusReader:
    """Reads group status over one connection (which it does not own)."""

    def __init__(
        self,
        conn: asyncpg.Connection[Any],
        names: Names,
        *,
        namespace: str | None = None,
        transitions: int = DEFAULT_TRANSITIONS,
    ) -> None:
        self.conn = conn
        self.names = names
        self.namespace = namespace
        self.transitions = transitions
        self._leaders_sql = sql.status_leaders(names)
        self._members_sql = sql.status_members(names)
        self._history_sql = sql.status_history(names)
        self._jobs_sql = jobs_query(names)

    async def read(self) -> Snapshot:
        """One consistent snapshot (a single read-only transaction)."""
        conn = self.conn
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            at: datetime = await conn.fetchval(sql.CLOCK)
            leaders = await conn.fetch(self._leaders_sql, self.namespace)
            members = await conn.fetch(self._members_sql, self.namespace)
            history = await conn.fetch(self._history_sql, self.namespace, self.transitions)
            jobs = by_namespace(await conn.fetch(self._jobs_sql, self.namespace))
        snap = _assemble(at, leaders, members, history, self.namespace, self.names)
        for group in snap.groups:
            group.jobs.extend(jobs.get(group.namespace, []))
        return snap


def _assemble(
    at: datetime,
    leaders: Sequence[asyncpg.Record],
    members: Sequence[asyncpg.Record],
    history: Sequence[asyncpg.Record],
    namespace: str | None,
    names: Names,
) -> Snapshot:
    by_ns_members: dict[str, list[asyncpg.Record]] = {}
    for row in members:
        by_ns_members.setdefault(row["namespace"], []).append(row)
    by_ns_history: dict[str, list[asyncpg.Record]] = {}
    for row in history:
        by_ns_history.setdefault(row["namespace"], []).append(row)
    by_ns_leader = {row["namespace"]: row for row in leaders}

    # Groups that are running now: live members or a leader that has not let go. With an
    # explicit namespace, that group is shown even if nothing runs (its history may).
    wanted = set(by_ns_members) | {
        ns for ns, row in by_ns_leader.items() if not row["released"] and row["live"]
    }
    if namespace is not None:
        wanted.add(namespace)

    groups = []
    for ns in sorted(wanted):
        lrow = by_ns_leader.get(ns)
        leader: LeaderStatus | None = None
        vacancy: str | None = None
        if lrow is not None and not lrow["released"] and lrow["live"]:
            leader = LeaderStatus(
                node=lrow["node"],
                priority=lrow["priority"],
                term=lrow["term"],
                host=lrow["host"],
                pid=lrow["pid"],
                since=lrow["since"],
                renewed_at=lrow["renewed_at"],
                renewed_age=round(max(0.0, lrow["renewed_age"]), 3),
                heartbeat_age=round(max(0.0, lrow["renewed_age"]), 3),
            )
        elif lrow is not None and lrow["released"]:
            vacancy = f"node {lrow['node']} released term {lrow['term']}"
        elif lrow is not None:
            vacancy = f"the session of node {lrow['node']} (term {lrow['term']}) is gone"
        ranked = by_ns_members.get(ns, [])
        leader_node = leader.node if leader else None
        recorded_standby = lrow["standby"] if leader is not None and lrow is not None else None
        standby_taken = False
        member_list = []
        for rank, m in enumerate(ranked, start=1):
            if m["node"] == leader_node:
                role = "leader"
            elif m["node"] == recorded_standby or (recorded_standby is None and not standby_taken):
                role, standby_taken = "standby", True
            else:
                role = "follower"
            member_list.append(
                MemberStatus(
                    node=m["node"],
                    priority=m["priority"],
                    host=m["host"],
                    pid=m["pid"],
                    joined_at=m["joined_at"],
                    rank=rank,
                    role=role,
                    url=m["url"],
                )
            )
        transitions = [
            Transition(
                term=h["term"],
                node=h["node"],
                host=h["host"],
                pid=h["pid"],
                started_at=h["started_at"],
                ended_at=h["ended_at"],
                reason=h["reason"],
            )
            for h in by_ns_history.get(ns, [])
        ]
        groups.append(GroupStatus(ns, leader, member_list, transitions, vacancy))
    return Snapshot(at, groups, names.prefix)
