"""ElectionGroup: what users hold. Lifecycle, state, waiters and the callback registry.

The election itself runs in :mod:`notifelect._driver`; the decorators live in
:mod:`notifelect.decorators` and the group's methods delegate to them.

(Longer than most modules: it is the public class, and most of its lines are the
docstrings of its public methods and properties.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import itertools
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload
from urllib.parse import urlsplit

from . import decorators
from . import jobs as scheduling
from ._driver import Driver
from .errors import ConfigurationError, GroupStateError
from .health import Health, HealthState, Vacancies
from .leadership import (
    DeposedCallback,
    DeposedT,
    ElectedCallback,
    ElectedT,
    LeaderInfo,
    Leadership,
)
from .messages import Rank
from .schedule import CatchUp
from .settings import Settings
from .transport.base import Member, Transport

if TYPE_CHECKING:
    import asyncpg
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .job_store import JobStore
    from .transport.memory import MemoryBus

__all__ = ["ElectionGroup"]

P = ParamSpec("P")
R = TypeVar("R")

#: How many groups of each name this process created: numbers their instance names.
_created: defaultdict[str, itertools.count[int]] = defaultdict(lambda: itertools.count(1))


class _Life(enum.Enum):
    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class ElectionGroup:
    """One node's membership of an election group.

    ``engine`` is a SQLAlchemy engine for PostgreSQL, sync (``Engine``) or async
    (``AsyncEngine``), on asyncpg, psycopg 3 or psycopg2; a DSN string; or an asyncpg
    connection (borrowed: never closed, and it serves one member of each group, with the
    same settings; if the connection itself is lost the group cannot reconnect). The
    election runs on asyncpg connections of its own whatever the engine's driver: for
    psycopg and psycopg2 engines it reads where and as whom the engine connects (URL,
    ``connect_args``, ``do_connect`` listeners) and connects there with asyncpg.
    Otherwise the group opens dedicated connections as the engine (or DSN) says, never
    taken from or returned to the engine's pool, so LISTEN and locks never leak into it:
    the election connection, the node's anchor (an idle session whose end tells a standby
    the process is gone) and, while it is the standby, a watcher. Several hosts in the URL
    are tried one at a time, each within ``Settings.connect_timeout``.

    ``advertise_url`` is the URL at which other replicas reach this one (absolute http or
    https); it is stored with the member's row and read by the followers
    (:meth:`leader_url`), e.g. to redirect leader-only requests to the leader.

    ``async with group:`` returns once the node is connected, listening and has its id; the
    election then runs in the background. Leaving the block resigns (leader work is
    cancelled and awaited, then the claim is released and the successor named) and
    disconnects, within ``close_bound`` seconds whatever the network does. A group is
    entered once.
    """

    def __init__(
        self,
        engine: AsyncEngine | Engine | str | asyncpg.Connection[Any] | None = None,
        name: str | None = None,
        settings: Settings | None = None,
        *,
        transport: Transport | None = None,
        member: Member | None = None,
        advertise_url: str | None = None,
    ) -> None:
        settings = settings or Settings()
        if name is not None:
            settings = settings.replace(namespace=name)
        self.settings = settings
        self.name = settings.namespace
        self.advertise_url = _check_url(advertise_url)
        self._member = member or Member(priority=settings.priority, url=self.advertise_url)
        self._urls: dict[int, str | None] = {}  # advertised URLs of leaders, by node
        self._urls_asked: set[int] = set()  # leaders whose member row was read in the back
        self._url_lookup: asyncio.Task[None] | None = None
        nth = next(_created[self.name])
        self._instance = f"{self._member.host}:{self._member.pid}" + (f"#{nth}" if nth > 1 else "")
        if transport is None:
            if engine is None:
                raise ConfigurationError(
                    "ElectionGroup needs a SQLAlchemy engine for PostgreSQL, a DSN, or transport="
                )
            transport = _postgres_transport(engine, settings, self._member)
        elif engine is not None:
            raise ConfigurationError("pass either an engine or transport=, not both")
        self._transport = transport
        self._engine = engine
        self._jobs: JobStore | None = None
        self._life = _Life.NEW
        self._elected: list[tuple[ElectedCallback, bool]] = []
        self._deposed: list[DeposedCallback] = []
        self._changed = asyncio.Event()
        #: How this node's leases were kept: (lapses, late renewals) of the leaderships
        #: that are over, and the leadership still counting (one tuple, replaced whole, so
        #: a reader in another thread never counts a leadership twice).
        self._leases: tuple[int, int, Leadership | None] = (0, 0, None)
        self._driver = Driver(
            name=self.name,
            settings=settings,
            transport=transport,
            member=self._member,
            elected=self._elected,
            deposed=self._deposed,
            on_change=self._notify_change,
        )

    @classmethod
    def in_memory(
        cls,
        bus: MemoryBus,
        name: str,
        settings: Settings | None = None,
        *,
        priority: int = 0,
        advertise_url: str | None = None,
    ) -> ElectionGroup:
        """A group on an in-process bus, for tests of code that uses leader-only gates."""
        settings = (settings or Settings()).replace(namespace=name, priority=priority)
        member = Member(priority=priority, url=_check_url(advertise_url))
        transport = bus.transport(
            name,
            member,
            strict_takeover=settings.strict_takeover,
            interval=settings.election_interval,
        )
        return cls(
            settings=settings, transport=transport, member=member, advertise_url=advertise_url
        )

    def __repr__(self) -> str:
        proto = self._driver.proto
        role = proto.role.value if proto else self._life.value
        return f"<ElectionGroup {self.name!r} node={self.node} {role}>"

    # ------------------------------------------------------------ public state

    @property
    def node(self) -> int | None:
        """This node's id (None before the group is entered): the id of the election
        session it is on, shared with the process's other groups on the same engine. A
        new session after a lost one (the connection or its anchor ended) has a new id."""
        return self._driver.node

    @property
    def rank(self) -> Rank | None:
        node = self.node
        return None if node is None else Rank(self.settings.priority, node)

    @property
    def stats(self) -> Counter[str]:
        """Counters of received, ignored and dropped messages (by reason)."""
        return self._driver.stats

    @property
    def is_leader(self) -> bool:
        """True only while this node holds a leadership whose lease is valid and that
        admits new leader-only work (false from the first moment of a hand-over)."""
        ls = self._driver.leadership
        return ls is not None and self._driver.connected and ls.admits

    @property
    def leadership(self) -> Leadership | None:
        """The current leadership of this node, if it leads (valid, draining or lapsing)."""
        return self._driver.leadership

    @property
    def leader(self) -> LeaderInfo | None:
        """Who leads the group as far as this node knows, or None during an election.

        Its ``url`` is the leader's advertised URL: this node's own when it leads; for
        another leader, once its member row was read: a group that advertises a URL
        itself reads it in the background as soon as it learns of a new leader (one
        query per leader node), any group when :meth:`leader_url` is awaited. None until
        then, or when the leader advertises none. The URL is not carried by the leader
        record every node reads each election interval: it is fixed for a member's
        session, so reading it once per leader is enough, and a group that advertises no
        URL makes no query for it unasked."""
        info = self._driver.known_leader()
        if info is None:
            return None
        url = self.advertise_url if info.node == self.node else self._urls.get(info.node)
        return info if url is None else dataclasses.replace(info, url=url)

    async def leader_url(self) -> str | None:
        """The URL the current leader advertises (``advertise_url``), or None when no
        leader is known or it advertises none.

        Reads the leader's member row once per leader node (a query on the group's
        engine, bounded by ``io_timeout``) and remembers it; returns at once for this
        node's own URL or a remembered one."""
        info = self._driver.known_leader()
        if info is None:
            return None
        if info.node == self.node:
            return self.advertise_url
        if info.node not in self._urls:
            url = await self._job_store().member_url(self.name, info.node)
            if url is None:
                return None  # not read yet, or not advertised: ask again next time
            self._urls[info.node] = url
        return self._urls[info.node]

    @property
    def jobs(self) -> list[decorators.Periodic[Any]]:
        """The scheduled jobs registered on this group (``every``, ``cron``)."""
        return scheduling.scheduled_jobs(self)

    @property
    def is_open(self) -> bool:
        """True between entering and leaving, unless the group gave up reconnecting."""
        return self._life is _Life.OPEN and self._driver.failure is None

    @property
    def health(self) -> Health:
        """Where the group stands now (see :class:`Health`); cheap, no I/O."""
        life, d = self._life, self._driver
        lapses, late = self._lease_counts()
        if life is _Life.NEW:
            state = HealthState.NEW
        elif life in (_Life.CLOSING, _Life.CLOSED):
            state = HealthState.CLOSED
        elif d.failure is not None:
            return Health(
                HealthState.FAILED,
                error=d.failure,
                group=self.name,
                node=self.node,
                lease_lapses=lapses,
                late_renewals=late,
            )
        elif life is _Life.OPENING or not d.connected:
            state = HealthState.CONNECTING
        else:
            leader = self.leader
            if self.is_leader:
                state = HealthState.LEADING
            elif leader is not None:
                state = HealthState.FOLLOWING
            else:
                state = HealthState.ELECTING
            return Health(
                state,
                leader=leader,
                group=self.name,
                node=self.node,
                leader_renewal_age=d.leader_renewal_age(),
                lease_lapses=lapses,
                late_renewals=late,
            )
        return Health(
            state, group=self.name, node=self.node, lease_lapses=lapses, late_renewals=late
        )

    def _lease_counts(self) -> tuple[int, int]:
        """(lease lapses, late renewals) of this node's leaderships so far."""
        lapses, late, ls = self._leases
        if ls is not None:
            lapses += ls._lapsed
            late += ls._late_renewals
        return lapses, late

    @property
    def vacancies(self) -> Vacancies:
        """How long the group went without a leader, as this node saw it (live counts)."""
        return self._driver.vacancies

    @property
    def instance(self) -> str:
        """A name of this member that stays the same for the life of the group object,
        across reconnects (unlike :attr:`node`): ``host:pid``, with ``#2``, ``#3`` ...
        for further groups of the same name created in this process."""
        return self._instance

    @property
    def close_bound(self) -> float:
        """The most seconds ``close()`` (leaving ``async with``) takes, whatever happens:
        ``finish_timeout + 2 * callback_timeout + 8 * io_timeout``."""
        return self._driver.close_bound + 3 * self.settings.io_timeout

    async def wait_for_leadership(self, timeout: float | None = None) -> Leadership:
        """Wait until this node leads; return its Leadership. Raises TimeoutError."""
        async with asyncio.timeout(timeout):
            while True:
                self._require_open("wait_for_leadership")
                ls = self._driver.leadership
                if ls is not None and self.is_leader:
                    return ls
                await self._changed.wait()

    async def wait_for_leader(self, timeout: float | None = None) -> LeaderInfo:
        """Wait until some node is known to lead; return who. Raises TimeoutError."""
        async with asyncio.timeout(timeout):
            while True:
                self._require_open("wait_for_leader")
                info = self.leader
                if info is not None:
                    return info
                await self._changed.wait()

    async def wait_for_change(self, timeout: float | None = None) -> None:
        """Wait for the next leadership change seen by this node."""
        async with asyncio.timeout(timeout):
            await self._changed.wait()

    def _notify_change(self) -> None:
        lapses, late, counting = self._leases
        ls = self._driver.leadership
        if ls is not counting:  # the leadership counted so far is over: add it up
            if counting is not None:
                lapses += counting._lapsed
                late += counting._late_renewals
            self._leases = (lapses, late, ls)
        self._changed.set()
        self._changed = asyncio.Event()
        self._ask_leader_url()

    def _ask_leader_url(self) -> None:
        """Read a new leader's advertised URL in the background (for :attr:`leader`)."""
        info = self._driver.known_leader()
        if (
            self._life is not _Life.OPEN
            or self.advertise_url is None  # a member that takes no part in the URLs
            or info is None
            or info.node == self.node
            or info.node in self._urls_asked
            or (self._url_lookup is not None and not self._url_lookup.done())
        ):
            return
        self._urls_asked.add(info.node)
        self._url_lookup = asyncio.get_running_loop().create_task(self._read_leader_url())

    async def _read_leader_url(self) -> None:
        with contextlib.suppress(Exception):  # only a convenience: leader_url() asks again
            await self.leader_url()
        self._ask_leader_url()  # the leader may have changed meanwhile

    def _require_open(self, what: str) -> None:
        if self._life is _Life.NEW or self._life is _Life.OPENING:
            raise GroupStateError(
                f"{what} on group {self.name!r} before it was entered: use 'async with group:'"
            )
        if self._life is not _Life.OPEN:
            raise GroupStateError(f"{what} on group {self.name!r} after it was closed")
        failure = self._driver.failure
        if failure is not None:
            raise GroupStateError(
                f"group {self.name!r} gave up reconnecting: {failure!r}"
            ) from failure

    # ------------------------------------------------------------ decorators (delegating)

    @overload
    def leader_only(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Callable[P, Coroutine[Any, Any, R | None]]: ...

    @overload
    def leader_only(self, fn: Callable[P, R], /) -> Callable[P, R | None]: ...

    @overload
    def leader_only(
        self, /, *, raise_if_not_leader: bool = False, finish_on_loss: bool = False
    ) -> decorators.Gate: ...

    def leader_only(
        self,
        fn: Any = None,
        /,
        *,
        raise_if_not_leader: bool = False,
        finish_on_loss: bool = False,
    ) -> Any:
        """Gate a coroutine function (or a plain function) to run on the leader only.

        See :func:`notifelect.leader_only`.
        """
        gate = decorators.leader_only(
            self, raise_if_not_leader=raise_if_not_leader, finish_on_loss=finish_on_loss
        )
        return gate if fn is None else gate(fn)

    @overload
    def on_elected(self, fn: ElectedT, /, *, resign_on_error: bool = True) -> ElectedT: ...

    @overload
    def on_elected(self, /, *, resign_on_error: bool = True) -> Callable[[ElectedT], ElectedT]: ...

    def on_elected(
        self, fn: ElectedCallback | None = None, /, *, resign_on_error: bool = True
    ) -> Any:
        """Register ``async def fn(leadership)`` to run while this node leads.

        See :func:`notifelect.on_elected`.
        """
        register = decorators.on_elected(self, resign_on_error=resign_on_error)
        return register if fn is None else register(fn)

    @overload
    def on_deposed(self, fn: DeposedT, /) -> DeposedT: ...

    @overload
    def on_deposed(self, /) -> Callable[[DeposedT], DeposedT]: ...

    def on_deposed(self, fn: DeposedCallback | None = None, /) -> Any:
        """Register ``async def fn(leadership)`` to run after leadership ended.

        See :func:`notifelect.on_deposed`.
        """
        register = decorators.on_deposed(self)
        return register if fn is None else register(fn)

    def every(
        self,
        interval: timedelta | float,
        *,
        initial_delay: timedelta | float = 0.0,
        run_on_start: bool = True,
        catch_up: CatchUp | str | timedelta | float = CatchUp.LATEST,
        jitter: timedelta | float = 0.0,
        name: str | None = None,
        keep: int = scheduling.KEEP_RUNS,
    ) -> Callable[[Callable[[], Awaitable[R]]], decorators.Periodic[R]]:
        """Run ``async def job()`` on the leader every ``interval``, on the group's
        schedule kept in the database (never overlapping itself).

        See :func:`notifelect.every`.
        """
        return scheduling.every(
            self,
            interval,
            initial_delay=initial_delay,
            run_on_start=run_on_start,
            catch_up=catch_up,
            jitter=jitter,
            name=name,
            keep=keep,
        )

    def cron(
        self,
        expression: str,
        *,
        tz: str = "UTC",
        initial_delay: timedelta | float = 0.0,
        run_on_start: bool = False,
        catch_up: CatchUp | str | timedelta | float = CatchUp.LATEST,
        jitter: timedelta | float = 0.0,
        name: str | None = None,
        keep: int = scheduling.KEEP_RUNS,
    ) -> Callable[[Callable[[], Awaitable[R]]], decorators.Periodic[R]]:
        """Run ``async def job()`` on the leader at the times of a cron expression in the
        time zone ``tz``, on the group's schedule kept in the database.

        See :func:`notifelect.cron`.
        """
        return scheduling.cron(
            self,
            expression,
            tz=tz,
            initial_delay=initial_delay,
            run_on_start=run_on_start,
            catch_up=catch_up,
            jitter=jitter,
            name=name,
            keep=keep,
        )

    # What the decorators need (decorators.GateHost).

    def _admitting(self) -> Leadership | None:
        ls = self._driver.leadership
        return ls if ls is not None and self.is_leader else None

    def _track_call(self, task: asyncio.Task[Any], cancel_on_loss: bool) -> None:
        self._driver.track_call(task, cancel_on_loss)

    def _track_thread(self) -> contextlib.AbstractContextManager[None]:
        return self._driver.track_thread()

    def _add_elected(self, callback: ElectedCallback, resign_on_error: bool) -> None:
        self._elected.append((callback, resign_on_error))

    def _add_deposed(self, callback: DeposedCallback) -> None:
        self._deposed.append(callback)

    def _job_store(self) -> JobStore:
        if self._jobs is None:
            self._jobs = scheduling.job_store_for(self._engine, self._transport, self.settings)
        return self._jobs

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ElectionGroup:
        if self._life is not _Life.NEW:
            raise GroupStateError(
                f"group {self.name!r} cannot be entered twice or reopened "
                f"(it is {self._life.value}); create a new ElectionGroup"
            )
        self._life = _Life.OPENING
        try:
            await self._driver.open()
        except BaseException:
            self._life = _Life.CLOSED
            self._driver.closing = True
            self._transport.abort()
            raise
        self._life = _Life.OPEN
        self._driver.start()
        self._ask_leader_url()  # a leader known from the start
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Resign (if leading), disconnect and stop; idempotent.

        Returns within :attr:`close_bound`. If the caller is cancelled, the connections
        are dropped at once (the server frees the claim) before the cancellation goes on.
        """
        if self._life in (_Life.CLOSING, _Life.CLOSED, _Life.NEW):
            self._life = _Life.CLOSED
            return
        self._life = _Life.CLOSING
        try:
            await self._driver.stop()
        finally:
            self._life = _Life.CLOSED
            self._notify_change()
            lookup = self._url_lookup
            if lookup is not None and not lookup.done():
                lookup.cancel()
                await asyncio.wait([lookup])


def _check_url(url: str | None) -> str | None:
    """``advertise_url`` if it is an absolute http(s) URL (or None)."""
    if url is None:
        return None
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            f"advertise_url must be an absolute http:// or https:// URL at which other "
            f"nodes reach this one, e.g. 'http://10.0.0.5:8000', got {url!r}"
        )
    return url


def _postgres_transport(engine: Any, settings: Settings, member: Member) -> Transport:
    from .transport.connect import connector_for
    from .transport.postgres import PostgresTransport

    connect, borrowed = connector_for(
        engine,
        host_timeout=settings.host_timeout,
        lone_host_timeout=settings.lone_host_timeout,
    )
    return PostgresTransport(
        namespace=settings.namespace,
        names=settings.names,
        member=member,
        lease=settings.lease,
        leader_timeout=settings.leader_timeout,
        io_timeout=settings.io_timeout,
        interval=settings.election_interval,
        fence=settings.fence,
        strict_takeover=settings.strict_takeover,
        connect=connect,
        connection=borrowed,
        share=engine,
    )
