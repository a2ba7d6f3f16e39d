"""One election session per process and database, shared by every group on it.

(Longer than most modules on purpose: a session's three kinds of connection, and the order
in which they open, break and close, belong together.)

A :class:`Session` owns what used to be every group's own:

* the *election connection*: it listens on the channel of each group, holds the claim
  (a session advisory lock) of each group it leads, and runs one statement per interval
  that renews the session's lease for all of them and reads what changed in every group's
  leadership (the followers' heartbeat);
* the *anchor*: an idle session holding a lock named after the session's node id, ended
  only with the process (or after every group has stopped its leader work), which a
  standby watches to notice a crashed leader within milliseconds;
* *watchers*: one connection per leader session that this process stands by for, however
  many of its groups that leader leads.

Groups join and leave a session independently (:class:`~.postgres.PostgresTransport` is a
group's handle on it). When the election connection or the anchor is lost, every group is
told at once; the connection is dropped once every group has let go of it (their leader
work stopped), and the anchor once every group's work has stopped. The groups then open a
new session, with a new node id.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Container, Hashable, Iterable
from typing import Any, NamedTuple, Protocol

import asyncpg

from .._clock import now
from ..errors import ConfigurationError
from ..rules import Sighting, sight, unchanged_for
from ..schema import Names
from ..schema_check import check_schema
from ..sql import TICK_LEADER, ElectionQueries, lock_halves
from .base import Freed, LeaderRecord, TransportError
from .connect import ANCHOR_NAME, APPLICATION_NAME, WATCHER_NAME, connect_bound, session_name
from .serial import Batched, Serial, retrieve

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable["asyncpg.Connection[Any]"]]
#: How long the first open waits for a notification sent by a second session to itself.
PROBE_TIMEOUT = 2.0
_POOLER_FIX = (
    "LISTEN/NOTIFY and session advisory locks do not work through a pooler in transaction or "
    "statement mode (such as PgBouncer with pool_mode = transaction), so the election could "
    "not keep one leader. Connect notifelect directly to PostgreSQL (give ElectionGroup its "
    "own DSN or engine that bypasses the pooler) or use a pool in session mode "
    "(PgBouncer: pool_mode = session)"
)


class SessionGroup(Protocol):
    """A group on a session, as the session sees it (a ``PostgresTransport``)."""

    @property
    def namespace(self) -> str: ...

    @property
    def channel(self) -> str: ...

    @property
    def leading(self) -> bool: ...

    def notified(self, payload: str) -> None: ...

    def ticked(self, tick: Tick, record: LeaderRecord | None) -> None: ...

    def lost(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Timing:
    """What a session's groups must agree on; groups that differ get sessions of their own."""

    lease: float
    leader_timeout: float
    io_timeout: float
    interval: float


@dataclasses.dataclass(frozen=True)
class Tick:
    """One periodic statement of the session: when it was sent and what it read."""

    sent_at: float
    records: dict[str, LeaderRecord]


#: How long taking terms waits on the server for a row (milliseconds): a guarded
#: transaction's rows are skipped, not waited for; this bounds any other wait.
_ROW_LOCK_WAIT_MS = 20


class Claimed(NamedTuple):
    """A group's claim lock, taken; and its leadership as recorded once it was."""

    leader: int | None  # the recorded leader's node (None: the group never had one)
    term: int | None  # its term
    released: bool  # whether that leader released its term
    lease: float | None  # the lease that leader acts on (None: not recorded)


class _Watcher:
    """One connection waiting on one leader session's anchor, for every group of this
    process that stands by for that leader."""

    def __init__(self, session: Session, node: int) -> None:
        self.session = session
        self.node = node
        self.waiting: dict[str, asyncio.Future[Freed]] = {}
        self.conn: asyncpg.Connection[Any] | None = None
        self.task = asyncio.create_task(self._run(), name=f"notifelect:watch:{node}")

    def add(self, namespace: str) -> asyncio.Future[Freed]:
        old = self.waiting.pop(namespace, None)
        if old is not None and not old.done():
            old.cancel()
        future: asyncio.Future[Freed] = asyncio.get_running_loop().create_future()
        self.waiting[namespace] = future
        return future

    def discard(self, namespace: str, future: asyncio.Future[Freed]) -> None:
        if self.waiting.get(namespace) is future:
            del self.waiting[namespace]
        if not self.waiting and not self.task.done():
            self.task.cancel()

    def _finish(self, how: dict[str, Freed], error: BaseException | None = None) -> None:
        for namespace, future in list(self.waiting.items()):
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(how.get(namespace, Freed.UNOBSERVED))
        self.waiting.clear()

    async def _run(self) -> None:
        try:
            how = await self._watch()
        except asyncio.CancelledError:
            self._finish({}, TransportError("the watcher was stopped"))
            raise
        except Exception as exc:
            self._finish({}, exc)
        else:
            self._finish(how)
        finally:
            if self.session._watchers.get(self.node) is self:
                del self.session._watchers[self.node]

    async def _watch(self) -> dict[str, Freed]:
        s = self.session
        key = s.names.anchor_key(self.node)
        assert s.node is not None
        conn = self.conn = await s.new_connection(session_name(WATCHER_NAME, s.node))
        try:
            # The wait goes on in rounds of a bounded lock wait on this one connection (so
            # what it observed still holds): a backend blocked on a lock does not notice
            # that its client has gone, and a watcher dropped while waiting must not leave
            # its backend behind for longer than a round. Where PostgreSQL can (14 and
            # later), the backend also checks every second that its client is still there.
            wait_ms = max(1000, int(2 * s.timing.lease * 1000))
            await conn.execute(f"SET statement_timeout = 0; SET lock_timeout = {wait_ms}")
            with contextlib.suppress(asyncpg.UndefinedObjectError):
                await conn.execute("SET client_connection_check_interval = 1000")
            observed = not await conn.fetchval("SELECT pg_try_advisory_lock_shared($1)", key)
            if not observed:
                await conn.execute("SELECT pg_advisory_unlock_shared($1)", key)
            while observed:
                try:
                    await conn.execute(
                        "SELECT pg_advisory_lock_shared($1), pg_advisory_unlock_shared($1)", key
                    )
                    break
                except (TimeoutError, asyncpg.LockNotAvailableError):
                    continue
            # A leader that resigns marks its term released before it lets go of anything.
            rows = await conn.fetch(s.queries.leaders_released, list(self.waiting))
            how: dict[str, Freed] = {}
            for row in rows:
                if row["node"] != self.node:
                    how[row["namespace"]] = Freed.UNOBSERVED  # leadership moved on already
                elif row["released"]:
                    how[row["namespace"]] = Freed.RELEASED
                else:
                    how[row["namespace"]] = Freed.DIED if observed else Freed.UNOBSERVED
            return how
        finally:
            self.conn = None
            conn.terminate()


class _Known:
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

    def nodes(self) -> list[int]:
        """The leaders whose sessions' renewals count for the groups."""
        return sorted({row[_NODE] for row in self._rows.values()})

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
        for leader in row["leaders"]:
            if leader[_NAMESPACE] in groups:
                self._rows[leader[_NAMESPACE]] = leader
        self._read.update(namespace for namespace in fresh if namespace in groups)
        sessions = {node: (pid, renewed_at) for node, pid, renewed_at in row["sessions"]}
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


_NAMESPACE = TICK_LEADER.index("namespace")
_NODE = TICK_LEADER.index("node")


class Session:
    """The shared election session of one process on one database (module docstring)."""

    def __init__(
        self,
        *,
        names: Names,
        timing: Timing,
        host: str,
        pid: int,
        connect: Connect | None,
        connection: asyncpg.Connection[Any] | None,
    ) -> None:
        self.names = names
        self.timing = timing
        self.queries = ElectionQueries(names)
        self._host = host
        self._pid = pid
        self._connect = connect
        self._borrowed = connection
        self.node: int | None = None
        self.conn: asyncpg.Connection[Any] | None = None
        self.serial: Serial | None = None
        self.anchor: asyncpg.Connection[Any] | None = None
        self.broken: str | None = None
        self.closed = False
        self._opening: asyncio.Task[None] | None = None
        self._groups: dict[str, SessionGroup] = {}
        #: Groups that must still let go (detach) / stop their work (release the anchor)
        #: before the connection / the anchor of a broken session is dropped.
        self._holding: set[SessionGroup] = set()
        self._working: set[SessionGroup] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._watchers: dict[int, _Watcher] = {}
        self._standbys_at = 0.0
        self._wake = asyncio.Event()
        self._known = _Known()
        #: The claim locks the election connection holds (each taken once: a lock taken
        #: twice would need two unlocks).
        self._claimed: set[int] = set()
        #: Claim locks to try, and terms to take, for several groups at once.
        self.claims = Batched(lambda: self.serial, "claiming", self._try_claims)
        self.terms = Batched(lambda: self.serial, "taking terms", self._take_terms)
        #: Surveys and member registrations of several groups at once: many groups
        #: joining, or losing the leader they share, cost a statement, not one each.
        self.surveys = Batched(lambda: self.serial, "surveying", self._survey)
        self.registrations = Batched(lambda: self.serial, "registering", self._register)
        self.leaders = Batched(lambda: self.serial, "reading leaders", self._read_leaders)

    def _extra(self, event: str) -> dict[str, object]:
        return {"notifelect_event": event, "notifelect_node": self.node}

    @property
    def usable(self) -> bool:
        return self.broken is None and not self.closed

    def quiet_for(
        self,
        namespace: str,
        leader: tuple[int, int],
        mark: Hashable,
        age: float | None,
        read_at: float,
    ) -> float:
        """Seconds, on this node's clock, since this session last saw the renewal of
        ``leader`` (node, term) of group ``namespace`` change, taking in a reading of its
        ``mark`` sent at ``read_at`` (see :func:`notifelect.rules.sight`)."""
        return self._known.quiet_for(namespace, leader, mark, age, read_at)

    # ------------------------------------------------------------ joining and leaving

    async def join(self, group: SessionGroup) -> int:
        """Open the session if needed and add ``group`` (reserved by the registry),
        listening on its channel."""
        try:
            if self._opening is None:
                self._opening = asyncio.ensure_future(self._open())
                self._opening.add_done_callback(retrieve)  # its groups get its outcome
            await asyncio.shield(self._opening)
        except BaseException:
            self.forget(group)
            opening = self._opening
            if opening is not None and not opening.done() and not self._groups:
                # Nobody waits for it any more (every group that asked was closed or gave
                # up): stop connecting at once rather than within the open's bound.
                opening.cancel()
            raise
        if not self.usable:
            self.forget(group)
            raise TransportError(f"the election session ended: {self.broken or 'closed'}")
        serial = self.serial
        assert serial is not None
        assert self.node is not None
        self._holding.add(group)
        self._working.add(group)
        try:
            await serial.add_listener(group.channel, self._notified)
            if self._borrowed is not None:
                await serial.run("giving back a lost session's claim", self._inheritor(group))
        except BaseException:
            self._holding.discard(group)
            self._working.discard(group)
            self.forget(group)
            raise
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_loop(), name="notifelect:session")
        return self.node

    async def leave(self, group: SessionGroup) -> None:
        """Remove ``group``: stop listening on its channel; close the session if it was
        the last. Never raises."""
        if self._groups.get(group.namespace) is group:
            del self._groups[group.namespace]
            self._known.forget(group.namespace)
        serial = self.serial
        if group.namespace not in self._groups and self.usable and serial is not None:
            with contextlib.suppress(Exception):
                await serial.remove_listener(group.channel, self._notified)
        self.detach(group)
        if self._unused:
            await self.close()

    @property
    def _unused(self) -> bool:
        """Open, and no group is in it or still giving something back."""
        opened = self._opening is not None and self._opening.done()
        return opened and self.usable and not self._groups and not self._holding

    def detach(self, group: SessionGroup) -> None:
        """``group`` holds nothing on the connection any more (see the module docstring)."""
        self._holding.discard(group)
        if self.broken is not None and not self._holding:
            self._drop_connection()

    def work_stopped(self, group: SessionGroup) -> None:
        """``group``'s leader work has stopped; a lost or closed session's anchor goes
        once no group's work runs any more."""
        self._working.discard(group)
        if self._working:
            return
        if (self.broken is not None and not self._holding) or self.closed:
            self._drop_anchor()

    def forget(self, group: SessionGroup) -> None:
        """Drop ``group`` from the session without talking to the database."""
        if self._groups.get(group.namespace) is group:
            del self._groups[group.namespace]
            self._known.forget(group.namespace)
        if self._unused:  # an open that was given up
            self.close_soon()

    # ------------------------------------------------------------ opening

    async def _open(self) -> None:
        # Connecting may try every host (each within its own budget) once; the connections
        # after the first go to the host that accepted it.
        bound = self.timing.io_timeout + PROBE_TIMEOUT + connect_bound(self._connect)
        deadline = asyncio.timeout(bound)
        try:
            async with deadline:
                await self._connect_all()
        except TimeoutError as exc:
            if not deadline.expired():  # a host's own budget: its message names the host
                self._fail(repr(exc))
                raise TransportError(f"connecting the election session failed: {exc}") from exc
            self._fail(f"connecting took over {bound:g}s")
            raise TransportError(f"connecting the election session took over {bound:g}s") from exc
        except BaseException as exc:
            self._fail(repr(exc))
            raise
        if not self._groups:
            # Every group that asked for it gave up waiting: nobody will use it.
            self.close_soon()

    def _fail(self, reason: str) -> None:
        self.closed = True
        _REGISTRY.discard(self)
        self._terminate_all()
        log.debug("election session could not open: %s", reason)

    async def _connect_all(self) -> None:
        conn = self._borrowed if self._borrowed is not None else await self.new_connection()
        self.conn = conn
        await self._check_environment(conn)
        await self._check_replication_role(conn)
        await self._check_schema(conn)
        await self._bound_waits(conn)
        self.node = int(await conn.fetchval(self.queries.next_node))
        if self._borrowed is None:
            await _rename(conn, session_name(APPLICATION_NAME, self.node))
        if self._connect is not None:
            self.anchor = await self._open_anchor(self.node)
        conn.add_termination_listener(self._terminated)
        await conn.execute(self.queries.register_session, self.node, self._host, self._pid)
        self.serial = Serial(conn, self.timing.io_timeout, self.lose)
        log.info("election session node %s opened", self.node, extra=self._extra("session_opened"))

    async def new_connection(
        self, application_name: str = APPLICATION_NAME
    ) -> asyncpg.Connection[Any]:
        assert self._connect is not None
        conn = await self._connect()
        if application_name != APPLICATION_NAME:
            try:
                await _rename(conn, application_name)
            except BaseException:
                conn.terminate()
                raise
        return conn

    async def _bound_waits(self, conn: asyncpg.Connection[Any]) -> None:
        """Let the server itself end any lock wait of the election session after
        ``io_timeout`` (the claim's own waits set a shorter one), and end the session of a
        client that has gone even while it waits (PostgreSQL 14 and later): a client-side
        timeout alone would leave a backend behind, waiting and holding what it took.

        Commits do not wait for the disk (or a synchronous replica): a renewal lost in a
        crash of the server ends with every session anyway. Only taking terms asks for a
        durable commit (see :meth:`_take_terms`)."""
        if self._borrowed is not None:
            return  # a borrowed connection's settings are its owner's
        await conn.execute(
            f"SET lock_timeout = {max(1, int(self.timing.io_timeout * 1000))};"
            " SET synchronous_commit = off"
        )
        with contextlib.suppress(asyncpg.UndefinedObjectError):
            await conn.execute("SET client_connection_check_interval = 1000")

    async def _open_anchor(self, node: int) -> asyncpg.Connection[Any]:
        """Open the session's anchor and take its lock (see the module docstring).

        It is set up so that the server does not end it before a lease has run out (no
        ``tcp_user_timeout``, keep-alive probes spread over more than a lease, no idle
        timeout), and notifelect never terminates another node's anchor: its end is
        evidence that the process is gone (or that every group stopped its work).
        """
        anchor = await self.new_connection(session_name(ANCHOR_NAME, node))
        try:
            probe = max(1, math.ceil(self.timing.lease))
            await anchor.execute(
                "SELECT set_config('tcp_user_timeout', '0', false),"
                " set_config('tcp_keepalives_idle', $1, false),"
                " set_config('tcp_keepalives_interval', $1, false),"
                " set_config('tcp_keepalives_count', '3', false),"
                " set_config('statement_timeout', '0', false),"
                " set_config('idle_in_transaction_session_timeout', '0', false)",
                str(probe),
            )
            with contextlib.suppress(asyncpg.UndefinedObjectError):  # PostgreSQL < 14
                await anchor.execute("SET idle_session_timeout = 0")
            lock = max(1, int(self.timing.io_timeout * 1000))
            try:
                await anchor.execute(f"SET lock_timeout = {lock}")
                await anchor.execute("SELECT pg_advisory_lock($1)", self.names.anchor_key(node))
                await anchor.execute("SET lock_timeout = 0")
            except asyncpg.LockNotAvailableError as exc:
                raise TransportError(f"node id {node} is anchored by another session") from exc
            anchor.add_termination_listener(self._anchor_terminated)
        except BaseException:
            anchor.terminate()
            raise
        return anchor

    async def _check_schema(self, conn: asyncpg.Connection[Any]) -> None:
        """Refuse (SchemaError naming the database, versions and fix) to open on a schema
        that is missing, older or newer than this release's."""
        await check_schema(conn, self.names)

    async def _check_replication_role(self, conn: asyncpg.Connection[Any]) -> None:
        """The election's writes must fire the trigger that stamps each change of a leader
        row (the other sessions read only what changed): with ``session_replication_role``
        other than ``origin`` (a role's or database's setting meant for replication
        tools) it does not fire. Set it back on a connection of our own; refuse otherwise."""
        role = await conn.fetchval("SELECT current_setting('session_replication_role')")
        if role in ("origin", "local"):  # ordinary triggers fire under both
            return
        fix = (
            f"the election connection runs with session_replication_role = {role}, under "
            "which the trigger that marks each change of a leader row does not fire, so the "
            "other members would not see this node's leaderships. Reset it for the role or "
            "database notifelect connects as (ALTER ROLE ... RESET session_replication_role), "
            "or give notifelect a role without it"
        )
        if self._borrowed is not None:
            raise ConfigurationError(fix)
        try:
            await conn.execute("SET session_replication_role = origin")
        except asyncpg.InsufficientPrivilegeError as exc:
            raise ConfigurationError(fix) from exc

    async def _check_environment(self, conn: asyncpg.Connection[Any]) -> None:
        """Fail fast (once per session) if the session is not PostgreSQL's own.

        A transaction-pooling proxy hands each transaction to whichever server session is
        free: another client can share our backend (and our advisory locks), and a
        notification sent to us while we are idle is never delivered. A second session
        therefore compares backend pids and notifies a private channel this one listens on.
        A borrowed connection has no second session; it only gets the prepared-statement
        check that such proxies usually trip.
        """
        try:
            await self._probe_session(conn)
        except (
            asyncpg.exceptions.DuplicatePreparedStatementError,
            asyncpg.exceptions.InvalidSQLStatementNameError,
        ) as exc:
            raise ConfigurationError(
                f"the election connection lost its prepared statements between transactions "
                f"({exc.__class__.__name__}), so it goes through a transaction-pooling proxy; "
                + _POOLER_FIX
            ) from exc

    async def _probe_session(self, conn: asyncpg.Connection[Any]) -> None:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        if self._connect is None:
            return
        channel = f"notifelect_probe_{pid}_{secrets.token_hex(4)}"
        arrived = asyncio.Event()

        def on_probe(*_: object) -> None:
            arrived.set()

        await conn.add_listener(channel, on_probe)
        try:
            other = await self.new_connection()
            try:
                other_pid = await other.fetchval("SELECT pg_backend_pid()")
                if other_pid == pid:
                    raise ConfigurationError(
                        f"two connections to the database share one server session (backend "
                        f"pid {pid}): they go through a transaction-pooling proxy; " + _POOLER_FIX
                    )
                await other.execute("SELECT pg_notify($1, '')", channel)
            finally:
                other.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), PROBE_TIMEOUT)
            if not arrived.is_set():
                # A direct session has received it by the end of its next round trip.
                await conn.fetchval("SELECT 1")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), 0.2)
            if not arrived.is_set():
                raise ConfigurationError(
                    f"a notification sent to this connection by another one never arrived "
                    f"(waited {PROBE_TIMEOUT:g}s): it goes through a transaction-pooling "
                    "proxy; " + _POOLER_FIX
                )
        finally:
            if not conn.is_closed():
                with contextlib.suppress(Exception):  # never mask the probe's own error
                    await conn.remove_listener(channel, on_probe)

    # ------------------------------------------------------------ traffic in

    def _notified(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        if not isinstance(payload, str):
            return
        for group in list(self._groups.values()):
            if group.channel == channel:
                group.notified(payload)

    def _terminated(self, conn: object) -> None:
        if conn is self.conn:
            self.lose("the election connection was closed")

    def _anchor_terminated(self, conn: object) -> None:
        if conn is self.anchor:
            self.anchor = None
            self.lose("the anchor session ended")

    def lose(self, reason: str) -> None:
        """The session can no longer vouch for its groups: tell every one of them.

        Their gates close in the callbacks; the connection (and the claims on it) stays
        until every group has let go, the anchor until every group's work has stopped.
        """
        if self.broken is not None or self.closed:
            return
        self.broken = reason
        _REGISTRY.discard(self)
        log.warning(
            "election session node %s lost: %s; its groups step down and reconnect",
            self.node,
            reason,
            extra=self._extra("session_lost"),
        )
        self._wake.set()  # the periodic statement ends by itself (never cut off mid-call)
        for watcher in list(self._watchers.values()):
            watcher.task.cancel()
        for group in list(self._groups.values()):
            group.lost()
        self._groups.clear()
        if not self._holding:
            self._drop_connection()
        if not self._holding and not self._working:
            self._drop_anchor()

    # ------------------------------------------------------------ the periodic statement

    async def _tick_loop(self) -> None:
        interval = self.timing.interval
        while self.usable:
            started = now()
            try:
                await self._tick()
                if now() - self._standbys_at >= self.timing.leader_timeout:
                    await self._update_standbys()
            except TransportError:
                return  # the session is lost (the serial connection broke it)
            except Exception as exc:  # a bug, or a refusal of the database: start afresh
                log.exception("election session node %s: periodic statement failed", self.node)
                self.lose(f"the periodic statement failed: {exc!r}")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, started + interval - now()))

    async def _tick(self) -> None:
        serial = self.serial
        if serial is None or not self._groups:
            return
        known = self._known
        fresh = known.unread(self._groups)
        sent_at = now()
        query, node, horizon, nodes = self.queries.tick, self.node, known.horizon, known.nodes()
        row = await serial.run(
            "a renewal",
            lambda c: c.fetchrow(query, node, horizon, fresh, nodes),
            urgent=True,
        )
        if row is None or not row["renewed"]:
            self.lose("the session's row is gone from the session table")
            return
        records = known.update(self._groups, fresh, row, sent_at)
        tick = Tick(sent_at, records)
        for namespace, group in list(self._groups.items()):
            group.ticked(tick, records.get(namespace))

    async def _update_standbys(self) -> None:
        serial = self.serial
        led = [ns for ns, g in self._groups.items() if g.leading]
        self._standbys_at = now()
        if serial is None or not led:
            return
        # Urgent too: the renewals of the next intervals wait for it.
        await serial.fetch(self.queries.update_standbys, self.node, led, urgent=True)

    # ------------------------------------------------------------ claims of many groups

    def _inheritor(
        self, group: SessionGroup
    ) -> Callable[[asyncpg.Connection[Any]], Awaitable[None]]:
        return lambda conn: self._inherit(conn, group.namespace)

    async def _inherit(self, conn: asyncpg.Connection[Any], namespace: str) -> None:
        """On a borrowed connection, give back what a lost session left of ``namespace``'s
        claim: a borrowed connection outlives its sessions, and so do its locks."""
        key = self.names.claim_key(namespace)
        held = await conn.fetchval(self.queries.backend_holds, *lock_halves(key))
        if not held:
            return
        await conn.execute(self.queries.disown_backend, namespace)
        for _ in range(64):  # taken at most once per lost session; bounded all the same
            if not await conn.fetchval("SELECT pg_advisory_unlock($1)", key):
                break
        self._claimed.discard(key)

    async def _try_claims(
        self, conn: asyncpg.Connection[Any], asks: list[tuple[int, str]]
    ) -> list[Claimed | None]:
        """Try the claim locks ``asks`` (key, namespace); read what is recorded of the
        groups whose lock was taken (after taking it, so that it is not older). A lock
        the connection holds already counts as taken."""
        unique = [ask for ask in dict.fromkeys(asks) if ask[0] not in self._claimed]
        keys = [key for key, _ in unique]
        try:
            rows = await conn.fetch(self.queries.try_claims, keys)
        except asyncpg.PostgresError:
            # A statement that failed on the server (a full lock table, a statement
            # timeout, a cancel) may have taken some of the locks first, and a session
            # lock outlives the statement that took it: learn from the server which ones
            # are held, so that they are given back like any claim cut short.
            await self._reconcile_claims(conn, keys)
            raise
        for (key, _), row in zip(unique, rows, strict=True):
            if row["got"]:
                self._claimed.add(key)
        taken = {namespace for key, namespace in asks if key in self._claimed}
        recorded = dict.fromkeys(taken, Claimed(None, None, False, None))
        if taken:
            for row in await conn.fetch(self.queries.leaders_released, list(taken)):
                recorded[row["namespace"]] = Claimed(
                    row["node"], row["term"], row["released"], row["lease"]
                )
        return [recorded.get(namespace) for _, namespace in asks]

    async def _survey(
        self, conn: asyncpg.Connection[Any], asks: list[tuple[str, int]]
    ) -> list[asyncpg.Record]:
        """Survey the groups ``asks`` (namespace, claim key): one row each, in order."""
        unique = list(dict.fromkeys(asks))
        halves = [lock_halves(key) for _, key in unique]
        rows = await conn.fetch(
            self.queries.surveys,
            [namespace for namespace, _ in unique],
            [hi for hi, _ in halves],
            [lo for _, lo in halves],
        )
        found = {row["namespace"]: row for row in rows}
        return [found[namespace] for namespace, _ in asks]

    async def _read_leaders(
        self, conn: asyncpg.Connection[Any], asks: list[str]
    ) -> list[tuple[asyncpg.Record | None, float]]:
        """The leader rows of the groups ``asks`` (None: none recorded), each with when the
        statement was sent (this node's clock)."""
        read_at = now()
        rows = await conn.fetch(self.queries.leader_records, list(dict.fromkeys(asks)))
        found = {row["namespace"]: row for row in rows}
        return [(found.get(namespace), read_at) for namespace in asks]

    async def _register(
        self, conn: asyncpg.Connection[Any], asks: list[tuple[str, int, str | None]]
    ) -> list[None]:
        """Register this session as a member of the groups ``asks`` (namespace,
        priority, advertised URL)."""
        unique = {namespace: (priority, url) for namespace, priority, url in asks}
        await conn.execute(
            self.queries.register_members,
            list(unique),
            self.node,
            [priority for priority, _ in unique.values()],
            self._host,
            self._pid,
            [url for _, url in unique.values()],
        )
        return [None for _ in asks]

    async def _reconcile_claims(self, conn: asyncpg.Connection[Any], keys: list[int]) -> None:
        """Count among the held claims those of ``keys`` that this backend holds. If the
        server cannot say, the session is lost: its end frees every lock."""
        try:
            rows = await conn.fetch(self.queries.held_claims)
        except asyncpg.PostgresError as exc:
            self.lose(f"the claim locks held could not be read after a failed claim: {exc!r}")
            raise TransportError(f"reading the claim locks held failed: {exc!r}") from exc
        held = {(row["classid"], row["objid"]) for row in rows}
        self._claimed.update(key for key in keys if lock_halves(key) in held)

    async def _take_terms(
        self, conn: asyncpg.Connection[Any], asks: list[tuple[str, int, float]]
    ) -> list[int | None]:
        """Take the next term of the groups ``asks`` (namespace, priority, lease) in one
        transaction; None for a group whose old term is still held by a guarded
        transaction, or whose leader row another session is writing."""
        unique = {namespace: (priority, lease) for namespace, priority, lease in asks}
        async with conn.transaction():
            # A term must never be handed out twice, even if the server runs with
            # asynchronous commit and crashes right after: make this commit durable.
            await conn.execute(
                f"SET LOCAL synchronous_commit = on; SET LOCAL lock_timeout = {_ROW_LOCK_WAIT_MS}"
            )
            rows = await conn.fetch(
                self.queries.take_terms,
                list(unique),
                [priority for priority, _ in unique.values()],
                self.node,
                self._host,
                self._pid,
                [lease for _, lease in unique.values()],
            )
        terms = {row["namespace"]: int(row["term"]) for row in rows}
        return [terms.get(namespace) for namespace, _, _ in asks]

    async def let_go(
        self, key: int, namespace: str, node: int, *, release: tuple[int, str] | None = None
    ) -> None:
        """Give back claim lock ``key`` of group ``namespace`` if the connection holds it
        when this call's turn comes (after every claim of the group already under way).

        With ``release`` (term, reason) the term is marked released first: a clean
        hand-over. Otherwise a term of ``node`` that was not released is no longer held by
        this session: it is disowned first (committed before the lock goes), or the
        session's renewals would go on counting for it and the followers would never take
        over while the session lives. If it cannot be disowned at once (another session
        holds the row), the session is lost instead: its end frees every claim and stops
        every renewal. Without ``release``, raises only :class:`TransportError`.
        """
        serial = self.serial
        if serial is None:
            return

        async def give_back(conn: asyncpg.Connection[Any]) -> None:
            if release is not None:
                await conn.execute(self.queries.release, namespace, *release)
            if key not in self._claimed:
                return
            try:
                if release is None:
                    await conn.execute(self.queries.disown, namespace, node)
                await conn.execute("SELECT pg_advisory_unlock($1)", key)
            except asyncpg.PostgresError as exc:
                # Whether the lock went is unknown: the session must not go on believing
                # either way. Its end frees every claim.
                self.lose(f"the claim of {namespace!r} could not be given back: {exc!r}")
                raise TransportError(f"giving back the claim failed: {exc!r}") from exc
            self._claimed.discard(key)

        await serial.run("giving back a claim", give_back)

    # ------------------------------------------------------------ watching other sessions

    async def watch(self, leader: int, namespace: str) -> Freed:
        """Wait until ``leader``'s session ends (one watcher per leader, for every group)."""
        watcher = self._watchers.get(leader)
        if watcher is None or watcher.task.done():
            watcher = _Watcher(self, leader)
            self._watchers[leader] = watcher
        future = watcher.add(namespace)
        try:
            return await future
        finally:
            watcher.discard(namespace, future)

    def backend_pids(self) -> list[int]:
        """The server pids of every connection the session holds now: the election
        connection, the anchor and the watchers (for diagnostics and tests)."""
        conns = [self.conn, self.anchor, *(w.conn for w in self._watchers.values())]
        return [c.get_server_pid() for c in conns if c is not None and not c.is_closed()]

    # ------------------------------------------------------------ closing

    def close_soon(self) -> None:
        """Close in the background; from now on no group is given this session."""
        if self.closed:
            return
        self._begin_close()
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            # Asked by a task being cancelled (the loop may be shutting down, and would
            # not wait for a new task): drop the connections at once instead.
            self._terminate_all()
            return
        task = asyncio.ensure_future(self._finish_close())
        task.add_done_callback(retrieve)

    async def close(self) -> None:
        """Unregister and disconnect within about two ``io_timeout``; never raises."""
        if self.closed:
            return
        self._begin_close()
        await self._finish_close()

    def _begin_close(self) -> None:
        self.closed = True
        _REGISTRY.discard(self)
        self._wake.set()

    async def _finish_close(self) -> None:
        ticker = self._ticker
        if ticker is not None and not ticker.done():
            # Let a statement in flight finish rather than cut it off (bounded).
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(asyncio.shield(ticker), self.timing.io_timeout)
            ticker.cancel()
        for watcher in list(self._watchers.values()):
            watcher.task.cancel()
        conn, serial = self.conn, self.serial
        try:
            if conn is not None and serial is not None and self.broken is None:
                # After every call still in flight (of groups that stopped waiting).
                with contextlib.suppress(Exception):
                    await serial.execute(self.queries.unregister_session, self.node)
                if conn is not self._borrowed and self.broken is None:
                    with contextlib.suppress(Exception):
                        await serial.run("closing", lambda c: c.close())
        finally:
            self._terminate_all()

    def _terminate_all(self) -> None:
        """Drop the connection, and the anchor unless a group's work still runs (then the
        last :meth:`work_stopped` drops it)."""
        self._drop_connection()
        if not self._working:
            self._drop_anchor()

    def _drop_connection(self) -> None:
        conn = self.conn
        if conn is None:
            return
        conn.remove_termination_listener(self._terminated)
        if conn is not self._borrowed and not conn.is_closed():
            conn.terminate()

    def _drop_anchor(self) -> None:
        anchor, self.anchor = self.anchor, None
        if anchor is not None:
            anchor.remove_termination_listener(self._anchor_terminated)
            anchor.terminate()


async def _rename(conn: asyncpg.Connection[Any], name: str) -> None:
    """Name the session ``name`` unless the user named it (it is then left as it is)."""
    await conn.execute(
        "SELECT set_config('application_name', $2, false)"
        " WHERE current_setting('application_name') = $1",
        APPLICATION_NAME,
        name,
    )


class _Registry:
    """The open sessions of this process, by event loop and what they connect to.

    A session holds at most one member of each group: a second member of a group in the
    same process (tests, or several nodes of one group on purpose) gets a session of its
    own.
    """

    def __init__(self) -> None:
        self._sessions: dict[tuple[asyncio.AbstractEventLoop, Hashable], list[Session]] = {}

    def take(
        self,
        key: Hashable,
        group: SessionGroup,
        make: Callable[[], Session],
        borrowed: asyncpg.Connection[Any] | None = None,
    ) -> Session:
        """A usable session of ``key`` without ``group``'s namespace, with it reserved.

        On a ``borrowed`` connection there is only ever one session (a backend's advisory
        locks are shared by everything on it): a second member of a group, or a group with
        other timing or names, is refused."""
        loop = asyncio.get_running_loop()
        sessions = self._sessions.setdefault((loop, key), [])
        sessions[:] = [s for s in sessions if s.usable]
        if borrowed is not None:
            for (lp, other), others in self._sessions.items():
                for s in others:
                    if (
                        lp is loop
                        and s._borrowed is borrowed
                        and s.usable
                        and (other != key or group.namespace in s._groups)
                    ):
                        raise ConfigurationError(
                            "one asyncpg connection serves one member of each group, all with"
                            " the same settings (its advisory locks are shared by all of"
                            " them): give this group another connection, an engine or a DSN"
                        )
        for session in sessions:
            if group.namespace not in session._groups:
                break
        else:
            session = make()
            sessions.append(session)
        session._groups[group.namespace] = group
        return session

    def discard(self, session: Session) -> None:
        for sessions in self._sessions.values():
            if session in sessions:
                sessions.remove(session)

    def open_sessions(self) -> list[Session]:
        loop = asyncio.get_running_loop()
        return [s for (lp, _), ss in self._sessions.items() if lp is loop for s in ss]


_REGISTRY = _Registry()


def open_sessions() -> list[Session]:
    """The election sessions open on the running event loop (for diagnostics and tests)."""
    return _REGISTRY.open_sessions()
