"""The environment probe of a session's election connection, once per session: is it
PostgreSQL's own session (not a pooler's), do its triggers fire; and the settings that
bound its waits. (The schema check is :func:`notifelect.schema_check.check_schema`.)

Each step costs as few round trips as it can: the settings, the replication role and the
probe's notification go in one statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from typing import Any, NamedTuple

import asyncpg

from ...errors import ConfigurationError
from ..connect import APPLICATION_NAME

#: How long the first open waits for a notification sent by a second session to itself.
PROBE_TIMEOUT = 2.0
_POOLER_FIX = (
    "LISTEN/NOTIFY and session advisory locks do not work through a pooler in transaction or "
    "statement mode (such as PgBouncer with pool_mode = transaction), so the election could "
    "not keep one leader. Connect notifelect directly to PostgreSQL (give ElectionGroup its "
    "own DSN or engine that bypasses the pooler) or use a pool in session mode "
    "(PgBouncer: pool_mode = session)"
)
_ROLE_FIX = (
    "the election connection runs with session_replication_role = {role}, under "
    "which the trigger that marks each change of a leader row does not fire, so the "
    "other members would not see this node's leaderships. Reset it for the role or "
    "database notifelect connects as (ALTER ROLE ... RESET session_replication_role), "
    "or give notifelect a role without it"
)
#: Under these ordinary triggers fire.
_FIRING = ("origin", "local")
#: The number of entries the server's shared lock table is made for (every lock a session
#: holds, a session advisory lock too, takes one): max_locks_per_transaction per server
#: process slot or prepared transaction. The slots are the backends
#: (max_connections), the autovacuum workers (autovacuum_worker_slots from PostgreSQL 18,
#: autovacuum_max_workers before) and their launcher, the background workers and the WAL
#: senders. The server may find room for more in spare shared memory: this is a floor.
LOCK_TABLE = (
    "current_setting('max_locks_per_transaction')::bigint"
    " * (current_setting('max_connections')::bigint"
    " + current_setting('max_prepared_transactions')::bigint"
    " + coalesce(current_setting('autovacuum_worker_slots', true),"
    "   current_setting('autovacuum_max_workers'))::bigint + 1"
    " + current_setting('max_worker_processes')::bigint"
    " + current_setting('max_wal_senders')::bigint)"
)


def literal(text: str) -> str:
    """``text`` as an SQL string literal (for the statements sent without parameters)."""
    return "'" + text.replace("'", "''") + "'"


def newer_than_14(conn: asyncpg.Connection[Any]) -> bool:
    """Whether the server has the settings of PostgreSQL 14 (client_connection_check_interval,
    idle_session_timeout): read from what the server said at connect, no round trip."""
    return conn.get_server_version().major >= 14


async def rename(conn: asyncpg.Connection[Any], name: str) -> None:
    """Name the session ``name`` unless the user named it (it is then left as it is)."""
    await conn.execute(
        "SELECT set_config('application_name', $2, false)"
        " WHERE current_setting('application_name') = $1",
        APPLICATION_NAME,
        name,
    )


@contextlib.contextmanager
def pooler_errors() -> Iterator[None]:
    """Turn the errors a transaction-pooling proxy makes of prepared statements into the
    ConfigurationError that names the fix."""
    try:
        yield
    except (
        asyncpg.exceptions.DuplicatePreparedStatementError,
        asyncpg.exceptions.InvalidSQLStatementNameError,
    ) as exc:
        raise ConfigurationError(
            f"the election connection lost its prepared statements between transactions "
            f"({exc.__class__.__name__}), so it goes through a transaction-pooling proxy; "
            + _POOLER_FIX
        ) from exc


class Settled(NamedTuple):
    """What :func:`settle` learnt of the election connection's server."""

    pid: int  # the backend pid
    lock_table: int  # the entries of its shared lock table (see LOCK_TABLE)


async def settle(conn: asyncpg.Connection[Any], *, io_timeout: float, notify: str) -> Settled:
    """Set up an election connection of our own in one statement; its backend pid and
    the size of the server's lock table.

    The election's writes must fire the trigger that stamps each change of a leader row
    (the other sessions read only what changed): a ``session_replication_role`` other than
    ``origin`` (a role's or database's setting meant for replication tools) is set back,
    or refused if the role may not. The server itself ends any lock wait after
    ``io_timeout`` (the claim's own waits set a shorter one) and, from PostgreSQL 14, the
    session of a client that has gone even while it waits: a client-side timeout alone
    would leave a backend behind, waiting and holding what it took. Commits do not wait
    for the disk (or a synchronous replica): a renewal lost in a crash of the server ends
    with every session anyway; only taking terms asks for a durable commit. The same
    statement sends the probe's notification to channel ``notify`` (see
    :class:`PoolerProbe`).
    """
    check = ", set_config('client_connection_check_interval', '1000', false)"
    query = (
        f"SELECT pg_backend_pid() AS pid, {LOCK_TABLE} AS lock_table,"
        f" CASE WHEN r.role NOT IN {_FIRING!r}"
        "  THEN set_config('session_replication_role', 'origin', false) END AS reset,"
        " set_config('lock_timeout', $1, false), set_config('synchronous_commit', 'off', false)"
        f"{check if newer_than_14(conn) else ''}, pg_notify($2, '')"
        " FROM (SELECT current_setting('session_replication_role') AS role) r"
    )
    try:
        row = await conn.fetchrow(query, str(max(1, int(io_timeout * 1000))), notify)
    except asyncpg.InsufficientPrivilegeError as exc:
        role = await conn.fetchval("SELECT current_setting('session_replication_role')")
        raise ConfigurationError(_ROLE_FIX.format(role=role)) from exc
    assert row is not None
    return Settled(int(row["pid"]), int(row["lock_table"]))


async def check_borrowed(conn: asyncpg.Connection[Any]) -> int:
    """The checks a borrowed connection gets: its settings are its owner's, so a
    replication role under which triggers do not fire is refused, not set back; and it
    has no second session to compare with, only the prepared-statement check that
    transaction-pooling proxies usually trip. Returns the size of the server's lock table
    (read in the same statement)."""
    with pooler_errors():
        row = await conn.fetchrow(
            "SELECT current_setting('session_replication_role') AS role,"
            f" {LOCK_TABLE} AS lock_table"
        )
    assert row is not None
    if row["role"] not in _FIRING:
        raise ConfigurationError(_ROLE_FIX.format(role=row["role"]))
    return int(row["lock_table"])


async def same_sessions(
    conn: asyncpg.Connection[Any], other: asyncpg.Connection[Any], pids: tuple[int, int]
) -> None:
    """Raise ConfigurationError unless ``conn`` and ``other`` still run on the backends
    ``pids`` when each asks in turn while the other is idle.

    A session of PostgreSQL's own keeps its backend. A transaction-pooling proxy gives each
    transaction whichever server session is free: asked in turn, the two connections land
    on one server (a proxy that reuses the last freed one) or rotate (round robin), and the
    pids change, even when a notification happened to reach the listener because its next
    transaction ran on the server that received it."""
    with pooler_errors():
        seen = []
        for _ in range(2):
            seen.append(int(await other.fetchval("SELECT pg_backend_pid()")))
            seen.append(int(await conn.fetchval("SELECT pg_backend_pid()")))
    if seen[0::2] != [pids[1]] * 2 or seen[1::2] != [pids[0]] * 2:
        raise ConfigurationError(
            f"two connections to the database changed server sessions between transactions "
            f"(backend pids {pids[0]} and {pids[1]}, then {seen}): they go through a "
            "transaction-pooling proxy; " + _POOLER_FIX
        )


class PoolerProbe:
    """Fail fast (once per session) if the session is not PostgreSQL's own.

    A transaction-pooling proxy hands each transaction to whichever server session is
    free: another client can share our backend (and our advisory locks), and a
    notification sent to a session while it is idle is never delivered. So a second
    session of ours (the anchor, before it takes its lock) listens on a private channel
    that the election connection notifies, and the two compare backend pids.
    """

    def __init__(self) -> None:
        self.channel = f"notifelect_probe_{secrets.token_hex(8)}"
        self._arrived = asyncio.Event()

    def _on_probe(self, *_: object) -> None:
        self._arrived.set()

    async def listen(self, conn: asyncpg.Connection[Any]) -> None:
        """Listen on the probe's channel on ``conn`` (the second session)."""
        with pooler_errors():
            await conn.add_listener(self.channel, self._on_probe)

    async def verdict(self, listener: asyncpg.Connection[Any], pids: tuple[int, int]) -> None:
        """Raise ConfigurationError unless the two sessions' backend ``pids`` differ and
        the notification reached ``listener``."""
        if pids[0] == pids[1]:
            raise ConfigurationError(
                f"two connections to the database share one server session (backend "
                f"pid {pids[0]}): they go through a transaction-pooling proxy; " + _POOLER_FIX
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), PROBE_TIMEOUT)
        if not self._arrived.is_set():
            # A direct session has received it by the end of its next round trip.
            await listener.fetchval("SELECT 1")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), 0.2)
        if not self._arrived.is_set():
            raise ConfigurationError(
                f"a notification sent to this connection by another one never arrived "
                f"(waited {PROBE_TIMEOUT:g}s): it goes through a transaction-pooling "
                "proxy; " + _POOLER_FIX
            )
