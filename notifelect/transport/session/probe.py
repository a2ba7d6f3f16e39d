"""The environment probe of a session's election connection, once per session: is it
PostgreSQL's own session (not a pooler's), do its triggers fire, is the schema this
release's; and the settings that bound its waits."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

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


async def rename(conn: asyncpg.Connection[Any], name: str) -> None:
    """Name the session ``name`` unless the user named it (it is then left as it is)."""
    await conn.execute(
        "SELECT set_config('application_name', $2, false)"
        " WHERE current_setting('application_name') = $1",
        APPLICATION_NAME,
        name,
    )


async def bound_waits(conn: asyncpg.Connection[Any], io_timeout: float) -> None:
    """Let the server itself end any lock wait of the election session after
    ``io_timeout`` (the claim's own waits set a shorter one), and end the session of a
    client that has gone even while it waits (PostgreSQL 14 and later): a client-side
    timeout alone would leave a backend behind, waiting and holding what it took.

    Commits do not wait for the disk (or a synchronous replica): a renewal lost in a
    crash of the server ends with every session anyway. Only taking terms asks for a
    durable commit (see :meth:`.claims.Claims.take_terms`)."""
    await conn.execute(
        f"SET lock_timeout = {max(1, int(io_timeout * 1000))}; SET synchronous_commit = off"
    )
    with contextlib.suppress(asyncpg.UndefinedObjectError):
        await conn.execute("SET client_connection_check_interval = 1000")


async def check_replication_role(conn: asyncpg.Connection[Any], *, borrowed: bool) -> None:
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
    if borrowed:
        raise ConfigurationError(fix)
    try:
        await conn.execute("SET session_replication_role = origin")
    except asyncpg.InsufficientPrivilegeError as exc:
        raise ConfigurationError(fix) from exc


async def check_environment(
    conn: asyncpg.Connection[Any],
    other: Callable[[], Awaitable[asyncpg.Connection[Any]]] | None,
) -> None:
    """Fail fast (once per session) if the session is not PostgreSQL's own.

    A transaction-pooling proxy hands each transaction to whichever server session is
    free: another client can share our backend (and our advisory locks), and a
    notification sent to us while we are idle is never delivered. A second session
    (``other`` opens it) therefore compares backend pids and notifies a private channel
    this one listens on. A borrowed connection has no second session; it only gets the
    prepared-statement check that such proxies usually trip.
    """
    try:
        await _probe_session(conn, other)
    except (
        asyncpg.exceptions.DuplicatePreparedStatementError,
        asyncpg.exceptions.InvalidSQLStatementNameError,
    ) as exc:
        raise ConfigurationError(
            f"the election connection lost its prepared statements between transactions "
            f"({exc.__class__.__name__}), so it goes through a transaction-pooling proxy; "
            + _POOLER_FIX
        ) from exc


async def _probe_session(
    conn: asyncpg.Connection[Any],
    other_connection: Callable[[], Awaitable[asyncpg.Connection[Any]]] | None,
) -> None:
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    if other_connection is None:
        return
    channel = f"notifelect_probe_{pid}_{secrets.token_hex(4)}"
    arrived = asyncio.Event()

    def on_probe(*_: object) -> None:
        arrived.set()

    await conn.add_listener(channel, on_probe)
    try:
        other = await other_connection()
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
