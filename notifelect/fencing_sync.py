"""The lease-bounded transaction in sync form, for a SQLAlchemy ``Engine`` (psycopg 3 or
psycopg2): ``with leadership.transaction(engine) as conn:``.

A thread cannot be cancelled, so the end of the lease is enforced on the connection: a
follower (on the election's event loop, the election's own thread, when the leadership
has one and the block does not run on it; else a thread of its own) shuts the
connection's socket down the moment the lease ends. Whatever the block waits on in the
database fails at once, nothing more is committed, and leaving the block raises
:class:`NotLeaderError`. The guarantees are those of :func:`.fencing.lease_bounded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .errors import NotLeaderError
from .fencing import (
    _FOLLOW,
    Lease,
    check_term_sync,
    guard_held,
    guard_lost,
    lapsed_message,
    shut_socket,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine


class LoopLease(Lease, Protocol):
    """A lease that knows the event loop of the election holding it."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...


@contextlib.contextmanager
def lease_bounded_sync(leadership: LoopLease, engine: Engine) -> Iterator[Connection]:
    """A transaction on a connection of ``engine``, guarded by ``leadership``'s term and
    bounded by its lease (see :meth:`Leadership.transaction`); blocks the calling thread."""
    leadership.check()
    follower = _Follower(leadership)
    conn = engine.connect()
    clean = False  # the connection may go back to the pool as it is
    try:
        raw = conn.connection
        if getattr(raw.dbapi_connection, "autocommit", False):
            # An engine in AUTOCOMMIT: each statement would commit on its own and the
            # guard would hold nothing. This one transaction is a real one.
            conn.execution_options(
                isolation_level=conn.dialect.default_isolation_level or "READ COMMITTED"
            )
        driver = raw.driver_connection
        follower.start(None if driver is None else int(driver.fileno()))
        conn.begin()
        try:
            check_term_sync(conn, leadership.names, leadership.namespace, leadership.term)
        except Exception:
            conn.rollback()  # the block never ran: an ordinary refusal
            clean = True
            raise
        try:
            yield conn
        except Exception:
            if not follower.lapsed:
                conn.rollback()
                clean = True
            raise
        # The block may have ended the transaction itself: what it wrote since is not
        # guarded, and must not be committed.
        _require_guard(conn, leadership)
        if follower.lapsed or not leadership.is_valid:  # the lease ended while it ran
            raise NotLeaderError(lapsed_message(leadership, committing=False))
        follower.committing = True  # the lease bounds the COMMIT too
        conn.commit()
        clean = True
    except Exception as exc:
        if follower.lapsed and not isinstance(exc, NotLeaderError):
            raise NotLeaderError(
                lapsed_message(leadership, committing=follower.committing)
            ) from exc
        raise
    finally:
        follower.finish()
        if not clean:
            conn.invalidate()  # never a round trip on a connection that may be cut off
        conn.close()


def _require_guard(conn: Connection, ls: Lease) -> None:
    """Raise unless this transaction still holds the group's guard (:func:`guard_held`)."""
    if not conn.scalar(*guard_held(ls)):
        raise guard_lost(ls, "at its commit")


class _Follower:
    """Follows a leadership's lease for one sync transaction and cuts its connection off
    when the lease ends (module docstring)."""

    def __init__(self, leadership: LoopLease) -> None:
        self.leadership = leadership
        self.lapsed = False
        self.committing = False  # the COMMIT was sent
        self._lock = threading.Lock()
        self._fd: int | None = None  # cut only while the transaction runs (fds get reused)
        self._done = threading.Event()
        self._future: Any = None

    def start(self, fd: int | None) -> None:
        self._fd = fd
        loop = self.leadership.loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        # Not on the election's loop if this very thread runs it: it could not follow
        # while the block holds the thread.
        if loop is not None and loop is not running and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
                self._future = asyncio.run_coroutine_threadsafe(self._follow_async(), loop)
                return
        threading.Thread(target=self._follow_thread, name="notifelect-lease", daemon=True).start()

    def finish(self) -> None:
        """Stop following; the connection is never cut after this returns."""
        with self._lock:
            self._fd = None
            self._done.set()
            if self._future is not None:
                self._future.cancel()

    def _remaining(self) -> float:
        ls = self.leadership
        return ls.lease_remaining if ls.is_valid else 0.0

    async def _follow_async(self) -> None:
        while True:
            remaining = self._remaining()
            if remaining <= 0 or self._done.is_set():
                break
            await asyncio.sleep(min(remaining, _FOLLOW))
        self._cut()

    def _follow_thread(self) -> None:
        while (remaining := self._remaining()) > 0:
            if self._done.wait(min(remaining, _FOLLOW)):
                return
        self._cut()

    def _cut(self) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self.lapsed = True
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    shut_socket(self._fd)
