"""Who leads each election group, since when, and who else is there: ``notifelect status``.

The database is the source of truth (the leader row, the live members, the history of
terms); the channel adds what only a live leader can show, its heartbeats. A one-shot
status listens for up to one heartbeat so that it can say whether each leader is heard.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, TextIO

import asyncpg

from .errors import SchemaError
from .listen import decode_any
from .messages import Kind, Message
from .schema import (
    SCHEMA_VERSION,
    Names,
    missing_schema_message,
    quote_ident,
    required_relations,
)

#: How many past terms each group shows by default.
DEFAULT_TRANSITIONS = 5
#: How long a one-shot status listens for heartbeats: a little over the default interval.
DEFAULT_WAIT = 0.6


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
    #: Seconds since a heartbeat of this leader and term was heard on the channel, or None
    #: if none was heard while status listened.
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


# ---------------------------------------------------------------- reading the database


async def check_schema(conn: asyncpg.Connection[Any], names: Names) -> None:
    """Raise SchemaError (naming the fix) unless the schema of this version is installed."""
    present = await conn.fetchval(
        "SELECT bool_and(to_regclass(n) IS NOT NULL) FROM unnest($1::text[]) AS n",
        required_relations(names),
    )
    if not present:
        raise SchemaError(missing_schema_message(names, None))
    version = await conn.fetchval(f"SELECT max(version) FROM {quote_ident(names.version)}")
    if version != SCHEMA_VERSION:
        raise SchemaError(missing_schema_message(names, version))


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
        q = quote_ident
        live = (
            "EXISTS (SELECT FROM pg_stat_activity a"
            " WHERE a.pid = m.backend_pid"
            " AND (a.backend_start = m.backend_start OR a.backend_start IS NULL))"
        )
        only = "($1::text IS NULL OR {col} = $1)"
        self._leaders_sql = (
            "SELECT l.namespace, l.node, l.priority, l.term, l.host, l.pid, l.since,"
            " l.renewed_at, l.released,"
            " extract(epoch FROM clock_timestamp() - l.renewed_at)::float8 AS renewed_age,"
            f" EXISTS (SELECT FROM {q(names.member)} m WHERE m.namespace = l.namespace"
            f"         AND m.node = l.node AND {live}) AS live"
            f" FROM {q(names.leader)} l WHERE {only.format(col='l.namespace')}"
        )
        self._members_sql = (
            "SELECT m.namespace, m.node, m.priority, m.host, m.pid, m.joined_at"
            f" FROM {q(names.member)} m WHERE {live} AND {only.format(col='m.namespace')}"
            " ORDER BY m.namespace, m.priority DESC, m.node DESC"
        )
        self._history_sql = (
            "SELECT namespace, term, node, host, pid, started_at, ended_at, reason FROM ("
            "  SELECT h.*, row_number() OVER (PARTITION BY h.namespace ORDER BY h.term DESC) AS n"
            f"  FROM {q(names.history)} h WHERE {only.format(col='h.namespace')}"
            ") x WHERE n <= $2 ORDER BY namespace, term DESC"
        )

    async def read(self, heard: HeartbeatLog | None = None) -> Snapshot:
        """One consistent snapshot (a single read-only transaction)."""
        conn = self.conn
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            at: datetime = await conn.fetchval("SELECT clock_timestamp()")
            leaders = await conn.fetch(self._leaders_sql, self.namespace)
            members = await conn.fetch(self._members_sql, self.namespace)
            history = await conn.fetch(self._history_sql, self.namespace, self.transitions)
        return _assemble(at, leaders, members, history, self.namespace, self.names, heard)


def _assemble(
    at: datetime,
    leaders: Sequence[asyncpg.Record],
    members: Sequence[asyncpg.Record],
    history: Sequence[asyncpg.Record],
    namespace: str | None,
    names: Names,
    heard: HeartbeatLog | None,
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
                heartbeat_age=heard.age(ns, lrow["node"], lrow["term"]) if heard else None,
            )
        elif lrow is not None and lrow["released"]:
            vacancy = f"node {lrow['node']} released term {lrow['term']}"
        elif lrow is not None:
            vacancy = f"the session of node {lrow['node']} (term {lrow['term']}) is gone"
        ranked = by_ns_members.get(ns, [])
        leader_node = leader.node if leader else None
        standby_taken = False
        member_list = []
        for rank, m in enumerate(ranked, start=1):
            if m["node"] == leader_node:
                role = "leader"
            elif not standby_taken:
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


# ---------------------------------------------------------------- the channel


class HeartbeatLog:
    """The last heartbeat or coordinator message heard from each group's leader."""

    def __init__(self, namespace: str | None = None) -> None:
        self.namespace = namespace
        self._last: dict[str, tuple[int, int, float]] = {}  # ns -> (node, term, monotonic)
        self._changed = asyncio.Event()
        #: Set when a message announced a change of leadership (coordinator or resign).
        self.turnover = False

    def feed(self, payload: str) -> Message | None:
        message = decode_any(payload)
        if not isinstance(message, Message):
            return None
        if self.namespace is not None and message.namespace != self.namespace:
            return None
        if message.kind in (Kind.HEARTBEAT, Kind.COORDINATOR) and message.term is not None:
            self._last[message.namespace] = (message.rank.node, message.term, time.monotonic())
        if message.kind in (Kind.COORDINATOR, Kind.RESIGN):
            self.turnover = True
        self._changed.set()
        return message

    def age(self, namespace: str, node: int, term: int) -> float | None:
        last = self._last.get(namespace)
        if last is None or last[0] != node or last[1] != term:
            return None
        return round(time.monotonic() - last[2], 3)

    async def wait(self, timeout: float) -> bool:
        """Wait for the next message (True) or until ``timeout`` (False)."""
        self._changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True


class _Listening:
    """LISTEN on the channel for the duration of an ``async with`` block."""

    def __init__(self, conn: asyncpg.Connection[Any], channel: str, log: HeartbeatLog) -> None:
        self.conn = conn
        self.channel = channel
        self.log = log

    def _on(self, conn: object, pid: int, channel: str, payload: object) -> None:
        if isinstance(payload, str):
            self.log.feed(payload)

    async def __aenter__(self) -> HeartbeatLog:
        await self.conn.add_listener(self.channel, self._on)
        return self.log

    async def __aexit__(self, *exc: object) -> None:
        if not self.conn.is_closed():
            await self.conn.remove_listener(self.channel, self._on)


async def snapshot(
    conn: asyncpg.Connection[Any],
    names: Names,
    *,
    namespace: str | None = None,
    wait: float = DEFAULT_WAIT,
    transitions: int = DEFAULT_TRANSITIONS,
) -> Snapshot:
    """Status of every running group (or of ``namespace``), within about one heartbeat.

    Reads the database, then listens up to ``wait`` seconds until every leader has been
    heard on the channel; reads again if a leadership changed meanwhile.
    """
    await check_schema(conn, names)
    reader = StatusReader(conn, names, namespace=namespace, transitions=transitions)
    async with _Listening(conn, names.channel, HeartbeatLog(namespace)) as heard:
        snap = await reader.read(heard)
        deadline = time.monotonic() + wait
        while True:
            unheard = [
                g
                for g in snap.groups
                if g.leader is not None
                and heard.age(g.namespace, g.leader.node, g.leader.term) is None
            ]
            remaining = deadline - time.monotonic()
            if not unheard or remaining <= 0:
                break
            await heard.wait(remaining)
            if heard.turnover:
                heard.turnover = False
                snap = await reader.read(heard)
        return await reader.read(heard)


async def watch(
    conn: asyncpg.Connection[Any],
    names: Names,
    show: Callable[[Snapshot], None],
    *,
    namespace: str | None = None,
    interval: float = 1.0,
    transitions: int = DEFAULT_TRANSITIONS,
    stop: asyncio.Event | None = None,
) -> None:
    """Call ``show`` with a fresh snapshot every ``interval`` and at once on every change.

    Runs until ``stop`` is set or the task is cancelled.
    """
    await check_schema(conn, names)
    reader = StatusReader(conn, names, namespace=namespace, transitions=transitions)
    stop = stop or asyncio.Event()
    async with _Listening(conn, names.channel, HeartbeatLog(namespace)) as heard:
        while not stop.is_set():
            show(await reader.read(heard))
            next_at = time.monotonic() + interval
            while not stop.is_set():
                remaining = next_at - time.monotonic()
                if remaining <= 0:
                    break
                await heard.wait(min(remaining, 0.25))
                if heard.turnover:
                    heard.turnover = False
                    break


# ---------------------------------------------------------------- rendering


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.2f}s"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _when(value: datetime, now: datetime) -> str:
    local = value.astimezone()
    return f"{local:%Y-%m-%d %H:%M:%S} ({_ago((now - value).total_seconds())} ago)"


def render_text(snap: Snapshot, *, wait: float | None = None) -> str:
    """The human-readable status: one block per group."""
    out: list[str] = []
    prefix = f" (prefix {snap.prefix!r})" if snap.prefix else ""
    if not snap.groups:
        return f"no election group is running in this database{prefix}\n"
    for g in snap.groups:
        out.append(f"group {g.namespace!r}{prefix}")
        ld = g.leader
        if ld is None:
            why = f": {g.vacancy}" if g.vacancy else ""
            out.append(f"  leader     none{why}")
        else:
            out.append(
                f"  leader     node {ld.node} (host {ld.host}, pid {ld.pid}), term {ld.term}"
            )
            out.append(f"  since      {_when(ld.since, snap.at)}")
            if ld.heartbeat_age is not None:
                beat = f"heard {_ago(ld.heartbeat_age)} ago"
            elif wait is not None:
                beat = f"none heard within {wait:g}s (slow heartbeat, or a paused leader?)"
            else:
                beat = "none heard yet"
            out.append(f"  lease      renewed {_ago(ld.renewed_age)} ago; heartbeat {beat}")
        if g.members:
            out.append("  members    rank  node      priority  role      host/pid")
            for m in g.members:
                out.append(
                    f"             {m.rank:<5} {m.node:<9} {m.priority:<9} {m.role:<9}"
                    f" {m.host}/{m.pid}"
                )
        else:
            out.append("  members    none running")
        if g.transitions:
            out.append("  terms      term  node      started              ended / reason")
            for t in g.transitions:
                started = f"{t.started_at.astimezone():%Y-%m-%d %H:%M:%S}"
                if t.ended_at is None:
                    end = "current" if ld and ld.term == t.term else "open"
                else:
                    length = (t.ended_at - t.started_at).total_seconds()
                    end = f"after {_ago(length)}, {t.reason or 'ended'}"
                out.append(f"             {t.term:<5} {t.node:<9} {started}  {end}")
        out.append("")
    return "\n".join(out)


def render_json(snap: Snapshot) -> str:
    return json.dumps(snap.to_json(), separators=(",", ":"))


class Screen:
    """Shows successive snapshots: redrawn in place on a terminal, appended otherwise."""

    def __init__(self, out: TextIO | None = None, *, as_json: bool = False) -> None:
        self.out = out or sys.stdout
        self.as_json = as_json
        self.tty = self.out.isatty()

    def __call__(self, snap: Snapshot) -> None:
        if self.as_json:
            self.out.write(render_json(snap) + "\n")
        else:
            text = render_text(snap)
            stamp = f"{snap.at.astimezone():%H:%M:%S}  (Ctrl-C to stop)"
            if self.tty:
                self.out.write("\x1b[H\x1b[2J" + stamp + "\n\n" + text)
            else:
                self.out.write(f"--- {stamp}\n{text}")
        self.out.flush()
