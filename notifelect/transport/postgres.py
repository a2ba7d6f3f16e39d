"""The PostgreSQL transport: LISTEN/NOTIFY for messages, an advisory lock for the claim.

(Longer than most modules on purpose: one node's three kinds of session and the order of
what happens on them belong together; the statements themselves are in
:mod:`notifelect.sql`.)

A node's election connection listens on the channel, holds the group's session advisory
lock while the node leads, and renews the lease; its anchor is an idle session holding a
lock named after the node; the standby opens one more connection, waiting on the leader's
anchor, to notice a crashed leader within milliseconds (PostgreSQL ends a dead process's
sessions, and frees their locks, at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from .._clock import now
from ..errors import ConfigurationError, SchemaError
from ..schema import SCHEMA_VERSION, Names, missing_schema_message, required_relations
from ..sql import RELATIONS_EXIST, ElectionQueries, schema_version
from .base import (
    Freed,
    Granted,
    LeaderRecord,
    LeaseLostError,
    LostHandler,
    Member,
    PayloadHandler,
    Transport,
    TransportError,
)
from .connect import anchor_name_for, application_name_for

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


class _Serial:
    """The election connection, used by the election driver and a claim task at once.

    asyncpg runs one operation per connection at a time; this runs them one after another
    instead of failing with "another operation is in progress". Every call is bounded by
    ``timeout`` (waiting for the connection included) and every failure of the driver
    comes out as a :class:`TransportError`, so a black-holed path never hangs the election.
    """

    def __init__(self, conn: asyncpg.Connection[Any], timeout: float) -> None:
        self.raw = conn
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._broken: str | None = None

    def is_closed(self) -> bool:
        return self.raw.is_closed()

    @contextlib.asynccontextmanager
    async def _bounded(self, what: str, timeout: float | None) -> AsyncIterator[None]:
        limit = self.timeout if timeout is None else timeout
        if self._broken is not None:
            # A call was cut off mid-way: the connection's state is unknown. It stays open
            # (it holds the claim) until the group drops it, but it is used no more.
            raise TransportError(f"{what} refused: {self._broken}")
        try:
            async with asyncio.timeout(limit), self._lock:
                try:
                    yield
                except asyncio.CancelledError:
                    self._broken = f"an earlier call was cancelled while it ran ({what})"
                    raise
        except TimeoutError as exc:
            self._broken = f"{what} took over {limit:g}s"
            raise TransportError(f"{what} on the election connection took over {limit:g}s") from exc
        except (
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
        ) as exc:
            self._broken = f"{what} failed: {exc!r}"
            raise TransportError(f"{what} failed: {exc!r}") from exc
        except asyncpg.AdminShutdownError as exc:
            self._broken = "the server ended the session"
            raise TransportError(f"{what} failed: the server ended the session") from exc

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        async with self._bounded("a statement", timeout):
            return await self.raw.execute(query, *args)

    async def fetchval(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        async with self._bounded("a query", timeout):
            return await self.raw.fetchval(query, *args)

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> asyncpg.Record | None:
        async with self._bounded("a query", timeout):
            return await self.raw.fetchrow(query, *args)

    @contextlib.asynccontextmanager
    async def transaction(
        self, timeout: float | None = None
    ) -> AsyncIterator[asyncpg.Connection[Any]]:
        async with self._bounded("a transaction", timeout), self.raw.transaction():
            yield self.raw


class PostgresTransport(Transport):
    """Transport over asyncpg.

    ``connect`` opens a new dedicated connection (the election connection, the anchor,
    and the standby's watcher). With ``connection`` an existing connection is used instead
    and never closed; a node on a borrowed connection cannot reconnect, has no anchor and
    no standby watcher, so a successor always waits out its lease.

    Besides the election connection every node holds an *anchor*: an idle session that
    holds a lock named after the node and carries no traffic. It is set up so that the
    server does not end it before the node's lease has run out (no ``tcp_user_timeout``,
    keep-alive probes spread over more than a lease, no idle timeout), and notifelect
    never terminates it. The anchor ending is therefore evidence that the node's process
    is gone (or that the node closed it itself after closing its gates); the standby
    watches it to take over from a crashed leader at once. Every other unclean end of a
    leadership makes the successor wait a whole lease on its own clock.
    """

    def __init__(
        self,
        *,
        namespace: str,
        names: Names,
        member: Member,
        lease: float,
        leader_timeout: float,
        io_timeout: float | None = None,
        fence: bool = True,
        strict_takeover: bool = True,
        connect: Connect | None = None,
        connection: asyncpg.Connection[Any] | None = None,
    ) -> None:
        if connect is None and connection is None:
            raise ConfigurationError("PostgresTransport needs connect= or connection=")
        self._connect = connect
        self._borrowed = connection
        self._namespace = namespace
        self._names = names
        self._member = member
        self._lease = lease
        self._leader_timeout = leader_timeout
        self._io_timeout = io_timeout if io_timeout is not None else max(lease, leader_timeout)
        self._fence_enabled = fence
        self._strict = strict_takeover
        self._key = names.claim_key(namespace)
        self._conn: asyncpg.Connection[Any] | None = None
        self._serial: _Serial | None = None
        self._anchor: asyncpg.Connection[Any] | None = None
        self._node: int | None = None
        self._on_payload: PayloadHandler | None = None
        self._on_lost: LostHandler | None = None
        self._fence_denied_logged = False
        self._environment_checked = False
        self._q = ElectionQueries(names)
        self._key_halves = ((self._key >> 32) & 0xFFFFFFFF, self._key & 0xFFFFFFFF)

    def _extra(self, event: str) -> dict[str, object]:
        return {
            "notifelect_event": event,
            "notifelect_namespace": self._namespace,
            "notifelect_node": self._node,
        }

    # ------------------------------------------------------------ lifecycle

    @property
    def node(self) -> int | None:
        return self._node

    @property
    def connection(self) -> asyncpg.Connection[Any] | None:
        """The election connection while open (for diagnostics and tests)."""
        return self._conn

    @property
    def anchor(self) -> asyncpg.Connection[Any] | None:
        """The anchor connection while open (for diagnostics and tests)."""
        return self._anchor

    async def open(self, on_payload: PayloadHandler, on_lost: LostHandler) -> int:
        try:
            async with asyncio.timeout(self._io_timeout + PROBE_TIMEOUT):
                return await self._open(on_payload, on_lost)
        except TimeoutError as exc:
            raise TransportError(
                f"connecting the election session took over {self._io_timeout + PROBE_TIMEOUT:g}s"
            ) from exc

    async def _open(self, on_payload: PayloadHandler, on_lost: LostHandler) -> int:
        conn = self._borrowed if self._borrowed is not None else await self._new_connection()
        anchor: asyncpg.Connection[Any] | None = None
        try:
            await self._check_environment(conn)
            await self._check_schema(conn)
            await self._bound_waits(conn)
            if self._node is None:
                self._node = int(await conn.fetchval(self._q.next_node))
            if self._connect is not None:
                anchor = await self._open_anchor(self._node)
            self._on_payload = on_payload
            self._on_lost = on_lost
            await conn.add_listener(self._names.channel, self._notified)
            conn.add_termination_listener(self._terminated)
            await conn.execute(
                self._q.register_member,
                self._namespace,
                self._node,
                self._member.priority,
                self._member.host,
                self._member.pid,
            )
        except BaseException:
            await self._discard(conn)
            if anchor is not None:
                anchor.remove_termination_listener(self._anchor_terminated)
                anchor.terminate()
            raise
        self._conn = conn
        self._anchor = anchor
        self._serial = _Serial(conn, self._io_timeout)
        return self._node

    async def _bound_waits(self, conn: asyncpg.Connection[Any]) -> None:
        """Let the server itself end any lock wait of the election session after
        ``io_timeout`` (the claim's own waits set a longer one), and end the session of a
        client that has gone even while it waits (PostgreSQL 14 and later): a client-side
        timeout alone would leave a backend behind, waiting and holding what it took."""
        if self._borrowed is not None:
            return  # a borrowed connection's settings are its owner's
        await conn.execute(f"SET lock_timeout = {max(1, int(self._io_timeout * 1000))}")
        with contextlib.suppress(asyncpg.UndefinedObjectError):
            await conn.execute("SET client_connection_check_interval = 1000")

    async def _open_anchor(self, node: int) -> asyncpg.Connection[Any]:
        """Open the node's anchor and take its lock (see the class docstring)."""
        anchor = await self._new_connection()
        try:
            # Keep-alive probes: the server may end a silent anchor only after more than a
            # lease, when the node has stopped acting on its own. Unix sockets ignore these.
            probe = max(1, math.ceil(self._lease))
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
            # Named apart from the election sessions, so that operators can leave anchors
            # alone (ending one tells a standby this node's process is gone).
            await anchor.execute(
                "SELECT set_config('application_name', $2, false)"
                " WHERE current_setting('application_name') = $1",
                application_name_for(self._namespace),
                anchor_name_for(self._namespace),
            )
            # A standby may hold the anchor's lock in share mode for a moment while it
            # looks: wait for it, briefly (a retry follows if it takes longer).
            try:
                await anchor.execute(f"SET lock_timeout = {max(1, int(self._io_timeout * 1000))}")
                await anchor.execute("SELECT pg_advisory_lock($1)", self._names.anchor_key(node))
                await anchor.execute("SET lock_timeout = 0")
            except asyncpg.LockNotAvailableError as exc:
                raise TransportError(
                    f"node id {node} is still anchored by another session (a standby looking, "
                    "or the previous connection of this node not gone yet)"
                ) from exc
            anchor.add_termination_listener(self._anchor_terminated)
        except BaseException:
            anchor.terminate()
            raise
        return anchor

    async def _new_connection(self) -> asyncpg.Connection[Any]:
        assert self._connect is not None
        return await self._connect()

    async def _check_schema(self, conn: asyncpg.Connection[Any]) -> None:
        present = await conn.fetchval(RELATIONS_EXIST, required_relations(self._names))
        if not present:
            raise SchemaError(missing_schema_message(self._names, None))
        version = await conn.fetchval(schema_version(self._names))
        if version != SCHEMA_VERSION:
            raise SchemaError(missing_schema_message(self._names, version))

    async def _check_environment(self, conn: asyncpg.Connection[Any]) -> None:
        """On the first open, fail fast if the session is not PostgreSQL's own.

        A transaction-pooling proxy hands each transaction to whichever server session is
        free: another client can share our backend (and our advisory locks), and a
        notification sent to us while we are idle is never delivered. A second session
        therefore compares backend pids and notifies a private channel this one listens on.
        A borrowed connection has no second session; it only gets the prepared-statement
        check that such proxies usually trip.
        """
        if self._environment_checked:
            return
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
        self._environment_checked = True

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
            other = await self._new_connection()
            try:
                other_pid = await other.fetchval("SELECT pg_backend_pid()")
                if other_pid == pid:
                    raise ConfigurationError(
                        f"two connections to the database share one server session (backend "
                        f"pid {pid}): they go through a transaction-pooling proxy; " + _POOLER_FIX
                    )
                await other.execute("SELECT pg_notify($1, '')", channel)
            finally:
                await self._discard(other)
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

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        if self._on_payload is not None and isinstance(payload, str):
            self._on_payload(payload)

    def _terminated(self, conn: object) -> None:
        if conn is self._conn:
            self._lost()

    def _anchor_terminated(self, conn: object) -> None:
        if conn is self._anchor:
            log.warning(
                "the anchor session of node %s ended; stepping down and reconnecting",
                self._node,
                extra=self._extra("anchor_lost"),
            )
            self._anchor = None
            # The group closes its gates now and stops its work; the claim stays held
            # until then (the group's reconnect drops the election connection).
            if self._on_lost is not None:
                self._on_lost(None)

    def _lost(self) -> None:
        """The election session is gone. The anchor stays until the group has stopped its
        leader work and calls :meth:`abort` or :meth:`close`."""
        self._conn = None
        if self._on_lost is not None:
            self._on_lost(None)

    def release_anchor(self) -> None:
        self._drop_anchor()

    def _drop_anchor(self) -> None:
        anchor, self._anchor = self._anchor, None
        if anchor is not None:
            anchor.remove_termination_listener(self._anchor_terminated)
            anchor.terminate()

    async def _discard(self, conn: asyncpg.Connection[Any]) -> None:
        """Detach our callbacks from ``conn`` and close it if it is ours (bounded)."""
        conn.remove_termination_listener(self._terminated)
        if self._borrowed is conn:
            if not conn.is_closed():
                with contextlib.suppress(Exception, TimeoutError):
                    async with asyncio.timeout(self._io_timeout):
                        await conn.remove_listener(self._names.channel, self._notified)
            return
        try:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=self._io_timeout)
        finally:
            if not conn.is_closed():
                conn.terminate()

    async def close(self) -> None:
        """Unregister and disconnect within about two ``io_timeout``; never raises.

        If the caller is cancelled, the connections are terminated before the
        cancellation propagates: nothing is left holding a lock.
        """
        conn, self._conn = self._conn, None
        try:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        conn.execute(self._q.unregister_member, self._namespace, self._node),
                        timeout=self._io_timeout,
                    )
            if conn is not None:
                await self._discard(conn)
        finally:
            if conn is not None and conn is not self._borrowed and not conn.is_closed():
                conn.terminate()
            self._drop_anchor()

    def abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.remove_termination_listener(self._terminated)
            if self._on_lost is not None:
                self._on_lost(None)  # the group closes its gates before the claim is freed
            if conn is not self._borrowed:
                conn.terminate()

    def _require(self) -> _Serial:
        conn = self._conn
        if conn is None or conn.is_closed() or self._serial is None:
            raise TransportError("the election connection is closed")
        return self._serial

    # ------------------------------------------------------------ traffic

    async def publish(self, payload: str) -> None:
        await self._require().execute("SELECT pg_notify($1, $2)", self._names.channel, payload)

    async def claim(self, *, fence: bool, evidence: int | None = None) -> Granted | None:
        conn = self._require()
        fenced = False
        if evidence is not None:
            # The standby saw the leader's process end; its election session is ending
            # too (PostgreSQL frees the lock within milliseconds of the process's death).
            got = await self._lock_within(conn, self._leader_timeout)
        else:
            got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key))
        if not got:
            if not (fence and self._fence_enabled) or not await self._fence(conn):
                return None
            fenced = True
        taken_at = now()
        try:
            row = await conn.fetchrow(self._q.leader_released, self._namespace)
            # Act at once only after a clean release, on positive evidence that the old
            # leader's process is gone, or when the old leader was this very node (whose
            # gates closed when it lost the claim). Otherwise the old leader may still
            # trust its lease: its session may have been ended by the server while the
            # process lives on (a half-open path, a restart, our own fencing). Wait the
            # whole lease out on this node's clock: the old leader's lease was last
            # renewed before we got the claim, so it has surely run out by then.
            unclean = row is not None and not row["released"] and row["node"] != self._node
            proven = evidence is not None and row is not None and row["node"] == evidence
            if unclean and (fenced or self._strict or not proven):
                log.info(
                    "waiting %.3fs for the previous leader's lease to run out (%s)",
                    self._lease,
                    "fenced"
                    if fenced
                    else "strict_takeover"
                    if proven
                    else "no evidence that its process is gone",
                    extra=self._extra("lease_wait"),
                )
                await asyncio.sleep(max(0.0, taken_at + self._lease - now()))
            confirmed_at = now()
            try:
                term = await self._take_term(conn)
            except asyncpg.LockNotAvailableError:
                # A transaction guarded by the old term still holds its row (FOR SHARE):
                # the new term must wait for it. Give the claim back and try again later.
                log.info(
                    "the previous term is still held by a guarded transaction; claim later",
                    extra=self._extra("term_busy"),
                )
                await conn.execute("SELECT pg_advisory_unlock($1)", self._key)
                return None
        except BaseException:
            with contextlib.suppress(Exception):
                if not conn.is_closed():
                    await asyncio.shield(conn.execute("SELECT pg_advisory_unlock($1)", self._key))
            raise
        return Granted(term, confirmed_at)

    async def _lock_within(self, conn: _Serial, seconds: float) -> bool:
        """Wait up to ``seconds`` for the claim lock, bounded on the server side."""
        try:
            async with conn.transaction(timeout=seconds + self._io_timeout) as raw:
                await raw.execute(f"SET LOCAL lock_timeout = {max(1, int(seconds * 1000))}")
                await raw.execute("SELECT pg_advisory_lock($1)", self._key)
        except asyncpg.LockNotAvailableError:
            return False
        return True  # a session lock outlives the transaction that took it

    async def _take_term(self, serial: _Serial) -> int:
        m = self._member
        # The server's lock_timeout (io_timeout) ends a wait for a guarded transaction
        # first, cleanly; the client-side bound is only for a path that does not answer.
        async with serial.transaction(timeout=2 * self._io_timeout) as conn:
            # A term must never be handed out twice, even if the server runs with
            # asynchronous commit and crashes right after: make this commit durable.
            await conn.execute("SET LOCAL synchronous_commit = on")
            # Terms never fall below the grant's wall-clock time in milliseconds: if a
            # database failover loses the last bump (asynchronous replication), the next
            # term still exceeds every term handed out before, as long as the new
            # primary's clock is not behind the old one by more than the failover took.
            term = int(await conn.fetchval(self._q.take_term, self._namespace))
            await conn.execute(self._q.close_history, self._namespace)
            await conn.execute(
                self._q.open_history, self._namespace, term, self._node, m.host, m.pid
            )
            await conn.execute(
                self._q.record_leader,
                self._namespace,
                term,
                self._node,
                m.priority,
                m.host,
                m.pid,
            )
        return term

    async def _fence(self, conn: _Serial) -> bool:
        """Terminate a holder whose lease renewals stopped; True once we hold the claim."""
        row = await conn.fetchrow(self._q.fence_view, self._namespace, *self._key_halves)
        assert row is not None
        holder, age = row["holder"], row["age"]
        if holder is None:
            return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key))
        if row["leader_pid"] != holder:
            # The holder is taking over (waiting out the old lease, idle meanwhile). Only a
            # holder idle for longer than that wait can take is stuck (paused): fence it.
            idle = row["holder_idle"]
            if idle is None or idle < self._lease + self._io_timeout:
                return False
        elif age is not None and age < self._leader_timeout:
            return False  # the leader renews its lease: only our notifications are late
        try:
            await conn.fetchval("SELECT pg_terminate_backend($1)", holder)
        except asyncpg.InsufficientPrivilegeError:
            if not self._fence_denied_logged:
                self._fence_denied_logged = True
                log.warning(
                    "no permission to terminate the silent leader's backend (pid %s);"
                    " falling back to lease-based fencing: the group waits until that leader"
                    " resumes and gives up its expired lease. Grant pg_signal_backend to the"
                    " election role for fast fencing.",
                    holder,
                    extra=self._extra("fence_denied"),
                )
            return False
        log.warning(
            "fenced out silent leader backend pid %s (lease last renewed %.3fs ago)",
            holder,
            age if age is not None else float("nan"),
            extra=self._extra("fenced"),
        )
        # Wait for the terminated backend to let go, bounded on the server side: a client-side
        # timeout would leave the connection busy cancelling the statement.
        return await self._lock_within(conn, self._lease)

    async def renew(self, term: int) -> int | None:
        row = await self._require().fetchrow(self._q.renew, self._namespace, self._node, term)
        if row is None or not row["ok"]:
            raise LeaseLostError(f"term {term} is no longer current")
        standby: int | None = row["standby"]
        return standby

    async def release(self, term: int, reason: str) -> None:
        conn = self._require()
        await conn.execute(self._q.release, self._namespace, term, reason)
        await conn.execute("SELECT pg_advisory_unlock($1)", self._key)

    async def successor(self) -> int | None:
        node: int | None = await self._require().fetchval(
            self._q.successor, self._namespace, self._node
        )
        return node

    async def survey(
        self,
    ) -> tuple[bool, tuple[int, int] | None, tuple[int, int, int] | None]:
        row = await self._require().fetchrow(self._q.survey, self._namespace, *self._key_halves)
        assert row is not None
        best = None if row["node"] is None else (int(row["priority"]), int(row["node"]))
        held = bool(row["held"])
        leader = None
        if held and row["leader_node"] is not None:
            leader = (int(row["leader_priority"]), int(row["leader_node"]), int(row["leader_term"]))
        return held, best, leader

    async def is_member(self, node: int, priority: int) -> bool:
        found = await self._require().fetchval(self._q.is_member, self._namespace, node, priority)
        return bool(found)

    async def leader(self) -> LeaderRecord | None:
        row = await self._require().fetchrow(self._q.leader_record, self._namespace)
        return None if row is None else LeaderRecord(**dict(row))

    async def watch(self, leader: int) -> Freed:
        if self._connect is None:
            await asyncio.Future()  # a borrowed connection has no standby watcher
        key = self._names.anchor_key(leader)
        conn = await self._new_connection()
        try:
            # The wait goes on in rounds of a bounded lock wait on this one connection (so
            # what it observed still holds): a backend blocked on a lock does not notice
            # that its client has gone, and a watcher dropped while waiting must not leave
            # its backend behind for longer than a round. Where PostgreSQL can (14 and
            # later), the backend also checks every second that its client is still there.
            wait_ms = max(1000, int(2 * self._lease * 1000))
            await conn.execute(f"SET statement_timeout = 0; SET lock_timeout = {wait_ms}")
            with contextlib.suppress(asyncpg.UndefinedObjectError):
                await conn.execute("SET client_connection_check_interval = 1000")
            if await conn.fetchval("SELECT pg_try_advisory_lock_shared($1)", key):
                await conn.execute("SELECT pg_advisory_unlock_shared($1)", key)
                return await self._how_ended(conn, leader, observed=False)
            while True:
                try:
                    await conn.execute(
                        "SELECT pg_advisory_lock_shared($1), pg_advisory_unlock_shared($1)", key
                    )
                    break
                except (TimeoutError, asyncpg.LockNotAvailableError):
                    continue
            return await self._how_ended(conn, leader, observed=True)
        finally:
            conn.terminate()

    async def _how_ended(
        self, conn: asyncpg.Connection[Any], leader: int, *, observed: bool
    ) -> Freed:
        # A leader that resigns marks its term released before it lets go of anything.
        row = await conn.fetchrow(self._q.leader_released, self._namespace)
        if row is None or row["node"] != leader:
            return Freed.UNOBSERVED  # the leadership had moved on already
        if row["released"]:
            return Freed.RELEASED
        return Freed.DIED if observed else Freed.UNOBSERVED
