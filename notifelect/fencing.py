"""The fencing guard: make a write commit only while its leadership term is current.

Inside the application's own transaction, :func:`check_term` reads the group's term row
``FOR SHARE``. A new leader must update that row to take its term, so it waits until the
transaction ends: either the write commits under the still-current term, or the term has
already moved on and the check raises :class:`StaleLeaderError`, rolling the write back.

The guard also takes a shared transaction-level advisory lock named after the group (the
two-key form of the group's claim key), so that a new leader can find every backend whose
transaction holds the term row. A leader cut off mid-write leaves its backend waiting on
the client, holding the row, for as long as the path stays half-open; once its lease has
run out the new leader terminates that backend (a transaction that never committed leaves
no write behind) instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigurationError, NotLeaderError, StaleLeaderError
from .schema import Names, quote_ident

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class Lease(Protocol):
    """What a lease-bounded transaction needs of a leadership (a
    :class:`~notifelect.leadership.Leadership`)."""

    namespace: str
    names: Names
    term: int
    ended_reason: str | None

    @property
    def is_valid(self) -> bool: ...

    @property
    def lease_remaining(self) -> float: ...

    def check(self) -> None: ...


#: How often a lease-bounded transaction looks at its lease (whose end moves with every
#: renewal, and which ends early when the leadership does).
_FOLLOW = 0.05


def guard_key(names: Names, namespace: str) -> tuple[int, int]:
    """The two signed 32-bit keys of a group's guard lock: the halves of its claim key.
    (The claim lock is the one-key form of the same key: ``pg_locks`` tells them apart by
    ``objsubid``, 1 for the claim and 2 for the guard.)"""
    key = names.claim_key(namespace) & 0xFFFFFFFFFFFFFFFF
    return _signed32(key >> 32), _signed32(key & 0xFFFFFFFF)


def _signed32(half: int) -> int:
    return half - (1 << 32) if half >= 1 << 31 else half


def _sql(names: Names, style: str) -> str:
    ns, hi, lo = {
        "numeric": ("$1", "$2", "$3"),
        "named": (":namespace", ":hi", ":lo"),
        "format": ("%s", "%s", "%s"),
    }[style]
    # The advisory lock is taken before the row's (the row lock is the plan's top node).
    return (
        f"SELECT t.term FROM (SELECT pg_advisory_xact_lock_shared({hi}, {lo})) g,"
        f" {quote_ident(names.term)} t WHERE t.namespace = {ns} FOR SHARE OF t"
    )


_EXECUTORS = (
    "a SQLAlchemy Connection, Session, AsyncConnection or AsyncSession (any PostgreSQL "
    "driver), or an asyncpg, psycopg or psycopg2 connection"
)


def is_sync_executor(executor: Any) -> bool:
    """Whether ``executor`` runs statements synchronously (a SQLAlchemy ``Connection`` or
    ``Session``, or a DBAPI connection of psycopg or psycopg2)."""
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    if isinstance(executor, Connection | Session):
        return True
    if hasattr(executor, "fetchval"):  # asyncpg
        return False
    execute = getattr(executor, "execute", None)
    if execute is not None and inspect.iscoroutinefunction(execute):
        return False  # psycopg's AsyncConnection
    return callable(getattr(executor, "cursor", None))


async def read_term_for_share(executor: Any, names: Names, namespace: str) -> int | None:
    """The current term of ``namespace``, locked FOR SHARE in ``executor``'s transaction.

    ``executor`` is a SQLAlchemy ``AsyncSession`` or ``AsyncConnection`` (any async
    driver), an asyncpg connection or a psycopg ``AsyncConnection``; it must be inside a
    transaction for the lock to matter. Sync executors: :func:`read_term_for_share_sync`.
    """
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    hi, lo = guard_key(names, namespace)
    if isinstance(executor, AsyncSession | AsyncConnection):
        params = {"namespace": namespace, "hi": hi, "lo": lo}
        result = await executor.execute(text(_sql(names, "named")), params)
        value = result.scalar()
        return None if value is None else int(value)
    fetchval = getattr(executor, "fetchval", None)
    if fetchval is not None:
        value = await fetchval(_sql(names, "numeric"), namespace, hi, lo)
        return None if value is None else int(value)
    execute = getattr(executor, "execute", None)
    if execute is None or not inspect.iscoroutinefunction(execute):
        raise ConfigurationError(
            f"the fencing guard needs {_EXECUTORS}; got {type(executor).__name__}"
        )
    cursor = await execute(_sql(names, "format"), (hi, lo, namespace))  # in the order they appear
    row = await cursor.fetchone()
    return None if row is None else int(row[0])


def read_term_for_share_sync(executor: Any, names: Names, namespace: str) -> int | None:
    """:func:`read_term_for_share` for a SQLAlchemy ``Connection`` or ``Session`` (any
    driver) or a psycopg / psycopg2 connection; blocks the calling thread."""
    from sqlalchemy import text
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    hi, lo = guard_key(names, namespace)
    if isinstance(executor, Connection | Session):
        params = {"namespace": namespace, "hi": hi, "lo": lo}
        value = executor.execute(text(_sql(names, "named")), params).scalar()
        return None if value is None else int(value)
    if not callable(getattr(executor, "cursor", None)):
        raise ConfigurationError(
            f"the fencing guard needs {_EXECUTORS}; got {type(executor).__name__}"
        )
    cursor = executor.cursor()
    try:
        cursor.execute(_sql(names, "format"), (hi, lo, namespace))  # in the order they appear
        row = cursor.fetchone()
    finally:
        cursor.close()
    return None if row is None else int(row[0])


def check_term_sync(executor: Any, names: Names, namespace: str, term: int) -> None:
    """:func:`check_term` for sync executors (see :func:`read_term_for_share_sync`)."""
    current = read_term_for_share_sync(executor, names, namespace)
    if current != term:
        raise StaleLeaderError(namespace, term, current)


async def check_term(executor: Any, names: Names, namespace: str, term: int) -> None:
    """Raise StaleLeaderError unless ``term`` is the group's current term (see module doc)."""
    current = await read_term_for_share(executor, names, namespace)
    if current != term:
        raise StaleLeaderError(namespace, term, current)


@contextlib.asynccontextmanager
async def lease_bounded(leadership: Lease, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction on a connection of ``engine``, guarded by ``leadership``'s term and
    bounded by its lease (see :meth:`Leadership.transaction`)."""
    leadership.check()
    bound = _Bound(leadership)
    try:
        async with bound.deadline:
            follow = asyncio.ensure_future(bound.follow())
            try:
                async with bound.fenced(engine) as conn:
                    yield conn
            finally:
                follow.cancel()
    except asyncio.CancelledError:
        raise  # the caller's own cancellation (the deadline's comes out as TimeoutError)
    except Exception as exc:
        if bound.lapsed:  # whatever the block saw of it, the lease ended first
            raise NotLeaderError(bound.message()) from exc
        raise


class _Bound:
    """One lease-bounded transaction: its connection, and the deadline that follows the
    lease."""

    def __init__(self, leadership: Lease) -> None:
        self.leadership = leadership
        self.deadline = asyncio.timeout(None)
        self.driver: Any = None  # the driver's connection, once checked out
        self.lapsed = False
        self.committing = False  # the COMMIT was sent

    def message(self) -> str:
        return lapsed_message(self.leadership, committing=self.committing)

    async def follow(self) -> None:
        """At the end of the lease (it moves with every renewal, and comes at once when
        the leadership ends): drop the connection, which fails whatever waits on it
        without a round trip, then cancel the block (whatever else it waits on)."""
        loop = asyncio.get_running_loop()
        ls = self.leadership
        while True:
            remaining = ls.lease_remaining if ls.is_valid else 0.0
            if remaining <= 0:
                break
            await asyncio.sleep(min(remaining, _FOLLOW))
        self.lapse()
        self.deadline.reschedule(loop.time())

    def lapse(self) -> None:
        self.lapsed = True
        _terminate(self.driver)

    @contextlib.asynccontextmanager
    async def fenced(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        ls = self.leadership
        conn = await engine.connect()
        clean = False  # the connection may go back to the pool as it is
        try:
            raw = await conn.get_raw_connection()
            self.driver = raw.driver_connection
            if getattr(raw.dbapi_connection, "autocommit", False):
                # An engine in AUTOCOMMIT: each statement would commit on its own and the
                # guard would hold nothing. This one transaction is a real one.
                level = conn.dialect.default_isolation_level or "READ COMMITTED"
                await conn.execution_options(isolation_level=level)
            await conn.begin()
            try:
                await check_term(conn, ls.names, ls.namespace, ls.term)
                await _require_guard(conn, ls, "as it began")
            except Exception:
                await conn.rollback()  # the block never ran: an ordinary refusal
                clean = True
                raise
            try:
                yield conn
            except Exception:
                if self.lapsed:
                    raise
                # The work failed, the lease still runs: roll back as usual (if the lease
                # ends first, the connection is dropped).
                await conn.rollback()
                clean = True
                raise
            # The block may have ended the transaction itself (a commit or a rollback of
            # its own): what it wrote since is not guarded, and must not be committed.
            await _require_guard(conn, ls, "at its commit")
            if not ls.is_valid:  # a block that blocked the loop past the lease
                self.lapse()
                raise NotLeaderError(self.message())
            self.committing = True
            await conn.commit()
            clean = True
        finally:
            if not clean:
                # Cancelled, out of lease, or the guard lost: never wait on a network that
                # may be gone. The client side ends now; a server backend left waiting on
                # a half-open path holds the group's guard, and the next leader fences it
                # before it takes its term.
                _terminate(self.driver)
                await conn.invalidate()
            await conn.close()


def lapsed_message(ls: Lease, *, committing: bool) -> str:
    """What NotLeaderError says when a lease-bounded transaction outlived its lease."""
    why = ls.ended_reason or "its lease ran out"
    head = f"leadership term {ls.term} of group {ls.namespace!r} ended while its transaction"
    if committing:
        return (
            f"{head} was committing ({why}): the connection was dropped and the outcome of the"
            f" COMMIT is unknown; if it committed, it did so under term {ls.term}, before any"
            " newer term"
        )
    return f"{head} ran ({why}); the connection was dropped, nothing of it was committed"


def guard_held(ls: Lease) -> tuple[Any, dict[str, int]]:
    """The statement (and its parameters) that tells whether this backend's transaction
    still holds ``ls``'s group guard (the lock named after the group, taken with the term
    row's): a transaction ended inside the block, or an engine in autocommit, would have
    let it go."""
    from sqlalchemy import text

    hi, lo = guard_key(ls.names, ls.namespace)
    query = text(
        "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND pid = pg_backend_pid() AND objsubid = 2 AND mode = 'ShareLock'"
        " AND classid = (:hi)::bigint & 4294967295 AND objid = (:lo)::bigint & 4294967295)"
    )
    return query, {"hi": hi, "lo": lo}


def guard_lost(ls: Lease, when: str) -> ConfigurationError:
    """The error of a transaction that no longer holds its guard (see :func:`guard_held`)."""
    return ConfigurationError(
        f"the transaction of group {ls.namespace!r} term {ls.term} no longer holds its guard"
        f" {when}: the block ended the transaction itself (a commit or rollback of its"
        " own, or of a session bound to the connection), or the engine commits every"
        " statement (AUTOCOMMIT). Nothing was committed after that point; write only"
        " inside the one transaction leadership.transaction() begins"
    )


async def _require_guard(conn: AsyncConnection, ls: Lease, when: str) -> None:
    """Raise unless this transaction still holds the group's guard (:func:`guard_held`)."""
    if not await conn.scalar(*guard_held(ls)):
        raise guard_lost(ls, when)


def _terminate(driver: Any) -> None:
    """Drop a driver connection at once, without a round trip."""
    if driver is None:
        return
    terminate = getattr(driver, "terminate", None)
    if callable(terminate):
        terminate()  # asyncpg
        return
    fileno = getattr(driver, "fileno", None)
    if callable(fileno):  # psycopg 3 (sync or async), psycopg2
        with contextlib.suppress(Exception):
            shut_socket(int(fileno()))


def shut_socket(fd: int) -> None:
    """Shut a connection's socket down for both directions, without touching the driver.

    Any thread may do this while another is blocked reading or writing on the socket: the
    kernel wakes the blocked call at once (the driver sees the connection closed and
    raises), and no library state is shared between the threads, which libpq would not
    allow. The descriptor is duplicated so that closing our socket object leaves the
    driver's own descriptor for the driver to close."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()
