"""What a leadership is, as leader-only code sees it: a leaf module that imports nothing back.

:class:`Leadership` is one term held by this node; :class:`LeaderInfo` says who leads a
group; :func:`current_leadership` gives leader-only code the leadership it runs under.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from ._clock import now
from .errors import NotLeaderError
from .fencing import check_term
from .schema import Names
from .transport.base import LeaderRecord

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["LeaderInfo", "Leadership", "current_leadership"]

_current: contextvars.ContextVar[Leadership | None] = contextvars.ContextVar(
    "notifelect_leadership", default=None
)


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
        self._ended = False
        self._draining = False
        self.ended_reason: str | None = None

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
        return not self._ended and now() < self._valid_until

    @property
    def admits(self) -> bool:
        """Whether new leader-only work may start under this leadership."""
        return self.is_valid and not self._draining

    @property
    def lease_remaining(self) -> float:
        """Seconds until the lease runs out if it is not renewed (0 once ended)."""
        return 0.0 if self._ended else max(0.0, self._valid_until - now())

    def check(self) -> None:
        """Raise NotLeaderError unless this leadership is still valid."""
        if not self.is_valid:
            raise NotLeaderError(
                f"leadership term {self.term} of group {self.namespace!r} is no longer valid"
                + (f" ({self.ended_reason})" if self.ended_reason else "")
            )

    async def fence(self, executor: Any) -> None:
        """Fencing guard for a write in ``executor``'s open transaction.

        Locks the group's term row FOR SHARE and raises StaleLeaderError unless it still
        holds this term; a newer leader cannot take its term until the transaction ends,
        so a write that passes the guard and commits was made under the current term.
        """
        self.check()
        await check_term(executor, self.names, self.namespace, self.term)

    def transaction(self, engine: AsyncEngine) -> AbstractAsyncContextManager[AsyncConnection]:
        """A fenced transaction bounded by this leadership's lease.

        ``async with leadership.transaction(engine) as conn:`` checks out a connection of
        ``engine`` (a SQLAlchemy ``AsyncEngine``), begins a transaction and passes the
        guard (:meth:`fence`), then runs the block; leaving it commits. Raises
        :class:`NotLeaderError` at once if the lease has lapsed, and
        :class:`StaleLeaderError` if a newer term exists.

        The block and its commit are bounded by the lease: the deadline follows every
        renewal, and when the lease runs out or the leadership ends first the block is
        cancelled, the connection is terminated (not closed gracefully: no round trip
        on a network that may be gone) and :class:`NotLeaderError` is raised. The same
        happens when the caller is cancelled. So the work of a leader cut off from the
        database ends within its lease, whatever the network does. An exception of the
        block rolls back as usual. Use ``AsyncSession(bind=conn)`` for the ORM.
        """
        from .fencing import lease_bounded

        return lease_bounded(self, engine)

    # The election driver's side (not for users).

    def _renewed(self, confirmed_at: float, lease: float) -> None:
        self._valid_until = max(self._valid_until, confirmed_at + lease)

    def _drain(self, reason: str) -> None:
        if not self._ended:
            self._draining = True
            self.ended_reason = reason

    def _end(self, reason: str) -> None:
        if not self._ended:
            self._ended = True
            self.ended_reason = self.ended_reason or reason


#: ``async def callback(leadership)`` registered with ``on_elected`` / ``on_deposed``.
ElectedCallback = Callable[[Leadership], Awaitable[Any]]
DeposedCallback = Callable[[Leadership], Awaitable[Any]]
ElectedT = TypeVar("ElectedT", bound=ElectedCallback)
DeposedT = TypeVar("DeposedT", bound=DeposedCallback)
