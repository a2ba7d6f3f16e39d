"""The PostgreSQL transport: LISTEN/NOTIFY for messages, an advisory lock for the claim.

One dedicated asyncpg connection per node carries everything: it listens on the channel,
holds the group's session advisory lock while the node leads, and renews the lease. The
standby opens one more connection, blocked on the lock, to notice a crashed leader within
milliseconds (PostgreSQL releases a dead session's locks at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from ..errors import ConfigurationError, SchemaError
from ..schema import SCHEMA_VERSION, Names, missing_schema_message, quote_ident, required_relations
from .base import (
    Granted,
    LeaderRecord,
    LeaseLostError,
    LostHandler,
    Member,
    PayloadHandler,
    Transport,
)

log = logging.getLogger("notifelect")

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
_LIVE = (
    "EXISTS (SELECT FROM pg_stat_activity a"
    " WHERE a.pid = m.backend_pid"
    " AND (a.backend_start = m.backend_start OR a.backend_start IS NULL))"
)


class _Serial:
    """The election connection, used by the election driver and a claim task at once.

    asyncpg runs one operation per connection at a time; this runs them one after another
    instead of failing with "another operation is in progress".
    """

    def __init__(self, conn: asyncpg.Connection[Any]) -> None:
        self.raw = conn
        self._lock = asyncio.Lock()

    def is_closed(self) -> bool:
        return self.raw.is_closed()

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        async with self._lock:
            return await self.raw.execute(query, *args, timeout=timeout)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self._lock:
            return await self.raw.fetchval(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self._lock:
            return await self.raw.fetchrow(query, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection[Any]]:
        async with self._lock, self.raw.transaction():
            yield self.raw


class PostgresTransport(Transport):
    """Transport over asyncpg.

    ``connect`` opens a new dedicated connection (the election connection, and the standby's
    watcher). With ``connection`` an existing connection is used instead and never closed;
    a node on a borrowed connection cannot reconnect and has no standby watcher.
    """

    def __init__(
        self,
        *,
        namespace: str,
        names: Names,
        member: Member,
        lease: float,
        leader_timeout: float,
        fence: bool = True,
        strict_takeover: bool = False,
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
        self._fence_enabled = fence
        self._strict = strict_takeover
        self._key = names.claim_key(namespace)
        self._conn: asyncpg.Connection[Any] | None = None
        self._node: int | None = None
        self._on_payload: PayloadHandler | None = None
        self._on_lost: LostHandler | None = None
        self._fence_denied_logged = False
        self._environment_checked = False
        q = quote_ident
        self._t_term = q(names.term)
        self._t_leader = q(names.leader)
        self._t_member = q(names.member)
        self._t_history = q(names.history)
        self._standby_sql = (
            f"SELECT m.node FROM {self._t_member} m WHERE m.namespace = $1 AND m.node <> $2"
            f" AND {_LIVE} ORDER BY m.priority DESC, m.node DESC LIMIT 1"
        )

    # ------------------------------------------------------------ lifecycle

    @property
    def node(self) -> int | None:
        return self._node

    @property
    def connection(self) -> asyncpg.Connection[Any] | None:
        """The election connection while open (for diagnostics and tests)."""
        return self._conn

    async def open(self, on_payload: PayloadHandler, on_lost: LostHandler) -> int:
        conn = self._borrowed if self._borrowed is not None else await self._new_connection()
        try:
            await self._check_environment(conn)
            await self._check_schema(conn)
            if self._node is None:
                self._node = int(
                    await conn.fetchval(
                        "SELECT nextval($1::regclass)", quote_ident(self._names.sequence)
                    )
                )
            self._on_payload = on_payload
            self._on_lost = on_lost
            await conn.add_listener(self._names.channel, self._notified)
            conn.add_termination_listener(self._terminated)
            await conn.execute(
                f"WITH gone AS (DELETE FROM {self._t_member} m WHERE m.namespace = $1"
                f" AND m.node <> $2 AND NOT {_LIVE})\n"
                f"INSERT INTO {self._t_member}"
                " (namespace, node, priority, host, pid, backend_pid, backend_start, joined_at)"
                " SELECT $1, $2, $3, $4, $5, a.pid, a.backend_start, clock_timestamp()"
                " FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()"
                " ON CONFLICT (namespace, node) DO UPDATE SET priority = EXCLUDED.priority,"
                " host = EXCLUDED.host, pid = EXCLUDED.pid, backend_pid = EXCLUDED.backend_pid,"
                " backend_start = EXCLUDED.backend_start",
                self._namespace,
                self._node,
                self._member.priority,
                self._member.host,
                self._member.pid,
            )
        except BaseException:
            await self._discard(conn)
            raise
        self._conn = conn
        self._serial = _Serial(conn)
        return self._node

    async def _new_connection(self) -> asyncpg.Connection[Any]:
        assert self._connect is not None
        return await self._connect()

    async def _check_schema(self, conn: asyncpg.Connection[Any]) -> None:
        present = await conn.fetchval(
            "SELECT bool_and(to_regclass(n) IS NOT NULL) FROM unnest($1::text[]) AS n",
            required_relations(self._names),
        )
        if not present:
            raise SchemaError(missing_schema_message(self._names, None))
        version = await conn.fetchval(
            f"SELECT max(version) FROM {quote_ident(self._names.version)}"
        )
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
            self._conn = None
            if self._on_lost is not None:
                self._on_lost(None)

    async def _discard(self, conn: asyncpg.Connection[Any]) -> None:
        """Detach our callbacks from ``conn`` and close it if it is ours."""
        conn.remove_termination_listener(self._terminated)
        if self._borrowed is conn:
            if not conn.is_closed():
                with contextlib.suppress(Exception):
                    await conn.remove_listener(self._names.channel, self._notified)
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), timeout=2)
        if not conn.is_closed():
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    conn.execute(
                        f"DELETE FROM {self._t_member} WHERE namespace = $1 AND node = $2",
                        self._namespace,
                        self._node,
                    ),
                    timeout=2,
                )
        await self._discard(conn)

    def abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.remove_termination_listener(self._terminated)
        if conn is not self._borrowed:
            conn.terminate()
        if self._on_lost is not None:
            self._on_lost(None)

    def _require(self) -> _Serial:
        conn = self._conn
        if conn is None or conn.is_closed():
            raise ConnectionError("the election connection is closed")
        return self._serial

    # ------------------------------------------------------------ traffic

    async def publish(self, payload: str) -> None:
        await self._require().execute("SELECT pg_notify($1, $2)", self._names.channel, payload)

    async def claim(self, *, fence: bool) -> Granted | None:
        conn = self._require()
        fenced = False
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key):
            if not (fence and self._fence_enabled) or not await self._fence(conn):
                return None
            fenced = True
        try:
            row = await conn.fetchrow(
                f"SELECT CASE WHEN released THEN 0 ELSE"
                f" extract(epoch FROM renewed_at - clock_timestamp())::float8 + $2 END"
                f" AS remaining,"
                f" extract(epoch FROM clock_timestamp() - renewed_at)::float8 AS age"
                f" FROM {self._t_leader} WHERE namespace = $1",
                self._namespace,
                self._lease,
            )
            remaining = None if row is None else row["remaining"]
            # A leader that had stopped renewing before it lost the claim was paused or cut
            # off, perhaps fenced by another node: it may still trust its lease, so wait it
            # out. One that was renewing until it vanished crashed: take over at once.
            silent = row is not None and row["age"] >= self._leader_timeout
            if remaining is not None and remaining > 0 and (fenced or silent or self._strict):
                log.info(
                    "notifelect: waiting %.3fs for the previous leader's lease to run out",
                    remaining,
                    extra={"namespace": self._namespace, "node": self._node},
                )
                await asyncio.sleep(remaining)
            confirmed_at = time.monotonic()
            term = await self._take_term(conn)
        except BaseException:
            with contextlib.suppress(Exception):
                if not conn.is_closed():
                    await asyncio.shield(conn.execute("SELECT pg_advisory_unlock($1)", self._key))
            raise
        return Granted(term, confirmed_at)

    async def _take_term(self, serial: _Serial) -> int:
        m = self._member
        async with serial.transaction() as conn:
            # A term must never be handed out twice, even if the server runs with
            # asynchronous commit and crashes right after: make this commit durable.
            await conn.execute("SET LOCAL synchronous_commit = on")
            term = int(
                await conn.fetchval(
                    f"INSERT INTO {self._t_term} AS t (namespace, term) VALUES ($1, 1)"
                    " ON CONFLICT (namespace) DO UPDATE SET term = t.term + 1 RETURNING term",
                    self._namespace,
                )
            )
            await conn.execute(
                f"UPDATE {self._t_history} SET ended_at = clock_timestamp(), reason = 'lost'"
                " WHERE namespace = $1 AND ended_at IS NULL",
                self._namespace,
            )
            await conn.execute(
                f"INSERT INTO {self._t_history} (namespace, term, node, host, pid, started_at)"
                " VALUES ($1, $2, $3, $4, $5, clock_timestamp())",
                self._namespace,
                term,
                self._node,
                m.host,
                m.pid,
            )
            await conn.execute(
                f"INSERT INTO {self._t_leader} AS l (namespace, term, node, priority, host, pid,"
                " backend_pid, since, renewed_at, released)"
                " VALUES ($1, $2, $3, $4, $5, $6, pg_backend_pid(), clock_timestamp(),"
                " clock_timestamp(), false)"
                " ON CONFLICT (namespace) DO UPDATE SET term = EXCLUDED.term,"
                " node = EXCLUDED.node, priority = EXCLUDED.priority, host = EXCLUDED.host,"
                " pid = EXCLUDED.pid, backend_pid = EXCLUDED.backend_pid,"
                " since = EXCLUDED.since, renewed_at = EXCLUDED.renewed_at, released = false",
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
        row = await conn.fetchrow(
            "SELECT (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            "         AND mode = 'ExclusiveLock' AND classid = $2 AND objid = $3 AND objsubid = 1"
            "         AND database = (SELECT oid FROM pg_database"
            "                         WHERE datname = current_database())) AS holder,"
            f"       (SELECT extract(epoch FROM clock_timestamp() - renewed_at)::float8"
            f"          FROM {self._t_leader} WHERE namespace = $1 AND NOT released) AS age,"
            f"       (SELECT backend_pid FROM {self._t_leader}"
            f"          WHERE namespace = $1 AND NOT released) AS leader_pid",
            self._namespace,
            (self._key >> 32) & 0xFFFFFFFF,
            self._key & 0xFFFFFFFF,
        )
        assert row is not None
        holder, age = row["holder"], row["age"]
        if holder is None:
            return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key))
        if age is not None and age < self._leader_timeout:
            return False  # the leader renews its lease: only our notifications are late
        if row["leader_pid"] != holder:
            return False  # the holder is still taking over (waiting out the old lease)
        try:
            await conn.fetchval("SELECT pg_terminate_backend($1)", holder)
        except asyncpg.InsufficientPrivilegeError:
            if not self._fence_denied_logged:
                self._fence_denied_logged = True
                log.warning(
                    "notifelect: no permission to terminate the silent leader's backend (pid %s);"
                    " falling back to lease-based fencing: the group waits until that leader"
                    " resumes and gives up its expired lease. Grant pg_signal_backend to the"
                    " election role for fast fencing.",
                    holder,
                    extra={"namespace": self._namespace, "node": self._node},
                )
            return False
        log.warning(
            "notifelect: fenced out silent leader backend pid %s (lease last renewed %.3fs ago)",
            holder,
            age if age is not None else float("nan"),
            extra={"namespace": self._namespace, "node": self._node},
        )
        # Wait for the terminated backend to let go, bounded on the server side: a client-side
        # timeout would leave the connection busy cancelling the statement.
        try:
            async with conn.transaction() as raw:
                await raw.execute(f"SET LOCAL lock_timeout = {int(self._lease * 1000)}")
                await raw.execute("SELECT pg_advisory_lock($1)", self._key)
        except asyncpg.LockNotAvailableError:
            return False
        return True  # a session lock outlives the transaction that took it

    async def renew(self, term: int) -> int | None:
        row = await self._require().fetchrow(
            f"WITH r AS (UPDATE {self._t_leader} SET renewed_at = clock_timestamp()"
            "            WHERE namespace = $1 AND term = $3 AND node = $2 AND NOT released"
            "            RETURNING 1)"
            f" SELECT EXISTS (SELECT FROM r) AS ok, ({self._standby_sql}) AS standby",
            self._namespace,
            self._node,
            term,
        )
        if row is None or not row["ok"]:
            raise LeaseLostError(f"term {term} is no longer current")
        standby: int | None = row["standby"]
        return standby

    async def release(self, term: int, reason: str) -> None:
        conn = self._require()
        await conn.execute(
            f"WITH l AS (UPDATE {self._t_leader} SET released = true,"
            "            renewed_at = clock_timestamp() WHERE namespace = $1 AND term = $2)"
            f" UPDATE {self._t_history} SET ended_at = clock_timestamp(), reason = $3"
            " WHERE namespace = $1 AND term = $2",
            self._namespace,
            term,
            reason,
        )
        await conn.execute("SELECT pg_advisory_unlock($1)", self._key)

    async def successor(self) -> int | None:
        node: int | None = await self._require().fetchval(
            self._standby_sql, self._namespace, self._node
        )
        return node

    async def is_member(self, node: int, priority: int) -> bool:
        found = await self._require().fetchval(
            f"SELECT EXISTS (SELECT FROM {self._t_member} m WHERE m.namespace = $1"
            f" AND m.node = $2 AND m.priority = $3 AND {_LIVE})",
            self._namespace,
            node,
            priority,
        )
        return bool(found)

    async def leader(self) -> LeaderRecord | None:
        row = await self._require().fetchrow(
            f"SELECT node, priority, term, host, pid, since, released FROM {self._t_leader}"
            " WHERE namespace = $1",
            self._namespace,
        )
        return None if row is None else LeaderRecord(**dict(row))

    async def watch(self) -> bool:
        if self._connect is None:
            await asyncio.Future()  # a borrowed connection has no standby watcher
        conn = await self._new_connection()
        try:
            # The wait is meant to last: no server-side timeout of the user's settings may
            # end it, and a client-side command_timeout only makes us ask again.
            await conn.execute("SET statement_timeout = 0; SET lock_timeout = 0")
            while True:
                try:
                    await conn.execute(
                        "SELECT pg_advisory_lock_shared($1), pg_advisory_unlock_shared($1)",
                        self._key,
                    )
                    break
                except TimeoutError:
                    continue
            # A leader that resigns marks its term released before it unlocks.
            released = await conn.fetchval(
                f"SELECT released FROM {self._t_leader} WHERE namespace = $1", self._namespace
            )
            return bool(released)
        finally:
            conn.terminate()
