"""What a leadership is, as leader-only code sees it: a leaf module that imports nothing back.

:class:`Leadership` is one term held by this node; :class:`LeaderInfo` says who leads a
group; :func:`current_leadership` gives leader-only code the leadership it runs under.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import Awaitable, Callable, Generator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import rules
from ._clock import now
from .errors import NotLeaderError
from .fencing import check_term, check_term_sync, is_sync_executor
from .schema import Names
from .transport.base import LeaderRecord

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["LeaderInfo", "Leadership", "current_leadership"]

_current: contextvars.ContextVar[Leadership | None] = contextvars.ContextVar(
    "notifelect_leadership", default=None
)


#: The process a leadership was granted in, as a count of the forks this process descends
#: from (a fork's child counts one more). Compared instead of ``os.getpid()`` on every
#: check: ``is_valid`` and ``is_leader`` are polled from many threads, and a system call
#: per poll is the dearest part of the check.
_forks = [0]


def _forked() -> None:
    _forks[0] += 1


os.register_at_fork(after_in_child=_forked)


def current_leadership() -> Leadership | None:
    """The Leadership under which the running leader-only code was started, if any."""
    return _current.get()


@dataclass(frozen=True)
class LeaderInfo:
    """Who leads a group: enough to find the process and to order leaderships."""

    node: int
    priority: int
    term: int
    host: str | None
    pid: int | None
    since: datetime | None
    #: The URL the leader advertises (``ElectionGroup(advertise_url=...)``), once known.
    url: str | None = None

    @classmethod
    def from_record(cls, record: LeaderRecord) -> LeaderInfo:
        return cls(record.node, record.priority, record.term, record.host, record.pid, record.since)


class Leadership:
    """One term of leadership held by this node.

    ``term`` is the fencing token: it grows with every new leadership of the group.
    ``is_valid`` is true only while the term is held and its lease (last confirmation by
    the database plus ``Settings.lease``, on a clock that keeps counting through a
    suspend) has not run out. During a hand-over the leadership *drains*: no new
    leader-only call starts, but work allowed to finish still sees a valid leadership
    (and passes :meth:`fence`) while the node keeps its claim and renews its lease.
    """

    def __init__(
        self, namespace: str, names: Names, term: int, node: int, valid_until: float
    ) -> None:
        self.namespace = namespace
        self.names = names
        self.term = term
        self.node = node
        self.since = datetime.now(UTC)
        self._valid_until = valid_until
        #: The process it was granted to: a child forked while it was valid shares its
        #: memory (and the clock) but not the claim; it must never act on it.
        self._pid = os.getpid()
        self._fork = _forks[0]
        self._ended = False
        self._draining = False
        self._over = threading.Event()  # set once no new work is admitted (drain or end)
        self.ended_reason: str | None = None
        #: How its lease was kept (see :class:`notifelect.health.Health`): renewals, late
        #: ones (made with less than half the lease left), and whether it ran out.
        self._renewals = 0
        self._late_renewals = 0
        self._lapsed = False
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    def __repr__(self) -> str:
        if self._ended:
            state = "ended"
        elif not self.is_valid:
            state = "lapsed"
        else:
            state = "draining" if self._draining else "valid"
        return f"<Leadership {self.namespace!r} term={self.term} node={self.node} {state}>"

    @property
    def is_valid(self) -> bool:
        return (
            not self._ended
            and self._fork == _forks[0]
            and rules.lease_holds(self._valid_until, now())
        )

    @property
    def admits(self) -> bool:
        """Whether new leader-only work may start under this leadership."""
        return self.is_valid and not self._draining

    @property
    def lease_remaining(self) -> float:
        """Seconds until the lease runs out if it is not renewed (0 once ended)."""
        return 0.0 if self._ended else rules.lease_left(self._valid_until, now())

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop of the election that holds this leadership (its own thread)."""
        return self._loop

    def wait_until_over(self, timeout: float | None = None) -> bool:
        """Block the calling thread until this leadership admits no new work (a hand-over
        began, it was lost, or its lease ran out) or ``timeout`` seconds passed; return
        whether it is over. For plain ``def`` leader work, which cannot be cancelled: loop
        ``while not leadership.wait_until_over(1.0): ...``. Never call it on an event
        loop."""
        deadline = None if timeout is None else now() + timeout
        while self.admits:
            left = self.lease_remaining
            if deadline is not None:
                left = min(left, deadline - now())
                if left <= 0:
                    return False
            self._over.wait(min(left, 0.05) if left > 0 else 0.05)
        return True

    def check(self) -> None:
        """Raise NotLeaderError unless this leadership is still valid."""
        if not self.is_valid:
            raise NotLeaderError(
                f"leadership term {self.term} of group {self.namespace!r} is no longer valid"
                + (f" ({self.ended_reason})" if self.ended_reason else "")
            )

    def fence(self, executor: Any) -> Awaitable[None]:
        """Fencing guard for a write in ``executor``'s open transaction.

        Locks the group's term row FOR SHARE and raises StaleLeaderError unless it still
        holds this term; a newer leader cannot take its term until the transaction ends,
        so a write that passes the guard and commits was made under the current term.

        ``executor``: a SQLAlchemy ``AsyncSession`` or ``AsyncConnection`` or an asyncpg or
        psycopg ``AsyncConnection`` (``await leadership.fence(conn)``); or a sync
        SQLAlchemy ``Session`` or ``Connection`` or a psycopg / psycopg2 connection, on
        any driver, which is checked during the call itself, blocking the thread
        (``leadership.fence(conn)``; awaiting the result as well does no harm).
        """
        self.check()
        if is_sync_executor(executor):
            check_term_sync(executor, self.names, self.namespace, self.term)
            return _Checked()
        return check_term(executor, self.names, self.namespace, self.term)

    @overload
    def transaction(self, engine: AsyncEngine) -> AbstractAsyncContextManager[AsyncConnection]: ...

    @overload
    def transaction(self, engine: Engine) -> AbstractContextManager[Connection]: ...

    def transaction(
        self, engine: AsyncEngine | Engine
    ) -> AbstractAsyncContextManager[AsyncConnection] | AbstractContextManager[Connection]:
        """A fenced transaction bounded by this leadership's lease.

        ``async with leadership.transaction(engine) as conn:`` checks out a connection of
        ``engine`` (a SQLAlchemy ``AsyncEngine``, any async PostgreSQL driver), begins a
        transaction and passes the guard (:meth:`fence`), then runs the block; leaving it
        commits. Raises :class:`NotLeaderError` at once if the lease has lapsed, and
        :class:`StaleLeaderError` if a newer term exists.

        The block and its commit are bounded by the lease: the deadline follows every
        renewal, and when the lease runs out or the leadership ends first the block is
        cancelled, the connection is terminated (not closed gracefully: no round trip
        on a network that may be gone) and :class:`NotLeaderError` is raised. The same
        happens when the caller is cancelled. So the work of a leader cut off from the
        database ends within its lease, whatever the network does. An exception of the
        block rolls back as usual. Use ``AsyncSession(bind=conn)`` for the ORM.

        With a sync ``Engine`` (psycopg 3 or psycopg2) it is a plain context manager,
        ``with leadership.transaction(engine) as conn:``. A thread cannot be cancelled, so
        at the end of the lease the connection's socket is shut down from the election's
        thread instead: whatever the block waits on in the database fails at once, and
        leaving the block raises :class:`NotLeaderError` without committing. Use
        ``Session(bind=conn)`` for the ORM.
        """
        from sqlalchemy.ext.asyncio import AsyncEngine

        from .fencing import lease_bounded
        from .fencing_sync import lease_bounded_sync

        if isinstance(engine, AsyncEngine):
            return lease_bounded(self, engine)
        return lease_bounded_sync(self, engine)

    # The election driver's side (not for users).

    def _renewed(self, confirmed_at: float, lease: float) -> None:
        end = rules.lease_end(confirmed_at, lease)
        if end > self._valid_until:
            self._renewals += 1
            if rules.lease_left(self._valid_until, confirmed_at) < lease / 2:
                self._late_renewals += 1
        self._valid_until = max(self._valid_until, end)

    def _drain(self, reason: str) -> None:
        if not self._ended:
            self._draining = True
            self.ended_reason = reason
            self._over.set()

    def _end(self, reason: str) -> None:
        if not self._ended:
            self._lapsed = now() >= self._valid_until  # it ran out before it was ended
            self._ended = True
            self.ended_reason = self.ended_reason or reason
            self._over.set()


class _Checked:
    """What :meth:`Leadership.fence` returns for a sync executor: the check is done, and
    awaiting it as well does nothing."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


#: ``async def callback(leadership)`` registered with ``on_elected`` / ``on_deposed``.
ElectedCallback = Callable[[Leadership], Awaitable[Any]]
DeposedCallback = Callable[[Leadership], Awaitable[Any]]
ElectedT = TypeVar("ElectedT", bound=ElectedCallback)
DeposedT = TypeVar("DeposedT", bound=DeposedCallback)
