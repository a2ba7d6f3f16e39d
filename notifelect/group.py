"""ElectionGroup: drives the election protocol over a transport and runs leader-only work."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_never
from tenacity.wait import wait_exponential, wait_random

from . import messages, protocol
from .errors import (
    ConfigurationError,
    GroupStateError,
    NotLeaderError,
    SchemaError,
)
from .fencing import check_term
from .messages import Kind, Message, Rank
from .settings import RetryPolicy, Settings
from .transport.base import LeaderRecord, LeaseLostError, Member, Transport

if TYPE_CHECKING:
    import asyncpg
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .decorators import Gate, Periodic
    from .transport.memory import MemoryBus

log = logging.getLogger("notifelect")

P = ParamSpec("P")
R = TypeVar("R")
ElectedCallback = Callable[["Leadership"], Awaitable[Any]]
DeposedCallback = Callable[["Leadership"], Awaitable[Any]]
ElectedT = TypeVar("ElectedT", bound=ElectedCallback)
DeposedT = TypeVar("DeposedT", bound=DeposedCallback)
_WARN_EVERY = 10.0


class _Life(enum.Enum):
    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True)
class LeaderInfo:
    """Who leads a group: enough to find the process and to order leaderships."""

    node: int
    priority: int
    term: int
    host: str | None
    pid: int | None
    since: datetime | None

    @classmethod
    def from_record(cls, record: LeaderRecord) -> LeaderInfo:
        return cls(record.node, record.priority, record.term, record.host, record.pid, record.since)


class Leadership:
    """One term of leadership held by this node.

    ``term`` is the fencing token: it grows with every new leadership of the group.
    ``is_valid`` is true only while the term is held and its lease (last confirmation by
    the database plus ``Settings.lease``, on the monotonic clock) has not run out.
    """

    def __init__(self, group: ElectionGroup, term: int, node: int, valid_until: float) -> None:
        self.group = group
        self.term = term
        self.node = node
        self.since = datetime.now(UTC)
        self._valid_until = valid_until
        self._ended = False
        self.ended_reason: str | None = None

    def __repr__(self) -> str:
        state = "ended" if self._ended else ("valid" if self.is_valid else "lapsed")
        return f"<Leadership {self.group.name!r} term={self.term} node={self.node} {state}>"

    @property
    def is_valid(self) -> bool:
        return not self._ended and time.monotonic() < self._valid_until

    @property
    def lease_remaining(self) -> float:
        """Seconds until the lease runs out if it is not renewed (0 once ended)."""
        return 0.0 if self._ended else max(0.0, self._valid_until - time.monotonic())

    def check(self) -> None:
        """Raise NotLeaderError unless this leadership is still valid."""
        if not self.is_valid:
            raise NotLeaderError(
                f"leadership term {self.term} of group {self.group.name!r} is no longer valid"
                + (f" ({self.ended_reason})" if self.ended_reason else "")
            )

    async def fence(self, executor: Any) -> None:
        """Fencing guard for a write in ``executor``'s open transaction.

        Locks the group's term row FOR SHARE and raises StaleLeaderError unless it still
        holds this term; a newer leader cannot take its term until the transaction ends,
        so a write that passes the guard and commits was made under the current term.
        """
        self.check()
        await check_term(executor, self.group.settings.names, self.group.name, self.term)

    def _renewed(self, confirmed_at: float, lease: float) -> None:
        self._valid_until = max(self._valid_until, confirmed_at + lease)

    def _end(self, reason: str) -> None:
        if not self._ended:
            self._ended = True
            self.ended_reason = reason


@dataclass(eq=False)
class _Call:
    """A leader-only call in flight."""

    task: asyncio.Task[Any]
    cancel_on_loss: bool


class ElectionGroup:
    """One node's membership of an election group.

    ``engine`` is a SQLAlchemy ``AsyncEngine`` on the asyncpg driver, a DSN string, or an
    asyncpg connection (borrowed: never closed, no reconnect). The group takes one
    dedicated connection from the engine (detached from its pool, so LISTEN and locks never
    leak back into it) and, while it is the standby, one more.

    ``async with group:`` returns once the node is connected, listening and has its id; the
    election then runs in the background. Leaving the block resigns (leader work is
    cancelled and awaited, then the claim is released and the successor named) and
    disconnects. A group is entered once.
    """

    def __init__(
        self,
        engine: AsyncEngine | str | asyncpg.Connection[Any] | None = None,
        name: str | None = None,
        settings: Settings | None = None,
        *,
        transport: Transport | None = None,
        member: Member | None = None,
    ) -> None:
        settings = settings or Settings()
        if name is not None:
            settings = settings.replace(namespace=name)
        self.settings = settings
        self.name = settings.namespace
        self._member = member or Member(priority=settings.priority)
        if transport is None:
            if engine is None:
                raise ConfigurationError(
                    "ElectionGroup needs an AsyncEngine (postgresql+asyncpg://...), a DSN, "
                    "or transport="
                )
            transport = _postgres_transport(engine, settings, self._member)
        elif engine is not None:
            raise ConfigurationError("pass either an engine or transport=, not both")
        self._transport = transport
        self._life = _Life.NEW
        self._node: int | None = None
        self._proto: protocol.State | None = None
        self._events = _EventQueue()
        self._timers: dict[protocol.Timer, asyncio.TimerHandle] = {}
        self._driver: asyncio.Task[None] | None = None
        self._claimer: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._lease_timer: asyncio.TimerHandle | None = None
        self._granted: dict[int, float] = {}
        self._generation = 0
        self._connected = False
        self._leadership: Leadership | None = None
        self._leader_info: LeaderInfo | None = None
        self._verified: tuple[int, int] | None = None
        self._elected: list[tuple[ElectedCallback, bool]] = []
        self._deposed: list[DeposedCallback] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._calls: set[_Call] = set()
        self._changed = asyncio.Event()
        self._failure: BaseException | None = None
        self.stats: Counter[str] = Counter()
        self._last_warning = 0.0
        self._warned_count = 0

    @classmethod
    def in_memory(
        cls, bus: MemoryBus, name: str, settings: Settings | None = None, *, priority: int = 0
    ) -> ElectionGroup:
        """A group on an in-process bus, for tests of code that uses leader-only gates."""
        settings = (settings or Settings()).replace(namespace=name, priority=priority)
        member = Member(priority=priority)
        return cls(settings=settings, transport=bus.transport(name, member), member=member)

    def __repr__(self) -> str:
        role = self._proto.role.value if self._proto else self._life.value
        return f"<ElectionGroup {self.name!r} node={self._node} {role}>"

    # ------------------------------------------------------------ public state

    @property
    def node(self) -> int | None:
        """This node's sequence id (None before the group is entered)."""
        return self._node

    @property
    def rank(self) -> Rank | None:
        return None if self._node is None else Rank(self.settings.priority, self._node)

    @property
    def is_leader(self) -> bool:
        """True only while this node holds a leadership whose lease is valid."""
        ls = self._leadership
        return ls is not None and self._connected and ls.is_valid

    @property
    def leadership(self) -> Leadership | None:
        """The current leadership of this node, if it leads (valid or lapsing)."""
        return self._leadership

    @property
    def leader(self) -> LeaderInfo | None:
        """Who leads the group as far as this node knows, or None during an election."""
        proto = self._proto
        if proto is None or not self._connected or proto.role is protocol.Role.STOPPED:
            return None
        if proto.leader is None:
            return None
        info = self._leader_info
        if info is not None and info.node == proto.leader.node:
            return info
        return LeaderInfo(
            proto.leader.node, proto.leader.priority, proto.leader_term or 0, None, None, None
        )

    @property
    def is_open(self) -> bool:
        return self._life is _Life.OPEN

    async def wait_for_leadership(self, timeout: float | None = None) -> Leadership:
        """Wait until this node leads; return its Leadership. Raises TimeoutError."""
        async with asyncio.timeout(timeout):
            while True:
                self._require_open("wait_for_leadership")
                ls = self._leadership
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
        self._changed.set()
        self._changed = asyncio.Event()

    def _require_open(self, what: str) -> None:
        if self._life is _Life.NEW or self._life is _Life.OPENING:
            raise GroupStateError(
                f"{what} on group {self.name!r} before it was entered: use 'async with group:'"
            )
        if self._life is not _Life.OPEN:
            raise GroupStateError(f"{what} on group {self.name!r} after it was closed")
        if self._failure is not None:
            raise GroupStateError(
                f"group {self.name!r} gave up reconnecting: {self._failure!r}"
            ) from self._failure

    # ------------------------------------------------------------ decorators

    @overload
    def leader_only(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Callable[P, Coroutine[Any, Any, R | None]]: ...

    @overload
    def leader_only(self, fn: Callable[P, R], /) -> Callable[P, R | None]: ...

    @overload
    def leader_only(
        self, /, *, raise_if_not_leader: bool = False, finish_on_loss: bool = False
    ) -> Gate: ...

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
        from .decorators import leader_only

        gate = leader_only(
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

        It starts when the node becomes leader and is cancelled (and awaited) when the
        leadership ends. An exception in it is logged and, with ``resign_on_error``, makes
        the node hand leadership to another node.
        """

        def register(f: ElectedCallback) -> ElectedCallback:
            if not callable(f):
                raise ConfigurationError(f"on_elected callback is not callable: {f!r}")
            self._elected.append((f, resign_on_error))
            return f

        return register(fn) if fn is not None else register

    @overload
    def on_deposed(self, fn: DeposedT, /) -> DeposedT: ...

    @overload
    def on_deposed(self, /) -> Callable[[DeposedT], DeposedT]: ...

    def on_deposed(self, fn: DeposedCallback | None = None, /) -> Any:
        """Register ``async def fn(leadership)`` to run after leadership ended.

        It runs after every ``on_elected`` task of that leadership has finished.
        """

        def register(f: DeposedCallback) -> DeposedCallback:
            if not callable(f):
                raise ConfigurationError(f"on_deposed callback is not callable: {f!r}")
            self._deposed.append(f)
            return f

        return register(fn) if fn is not None else register

    def every(
        self, interval: timedelta | float, *, initial_delay: timedelta | float = 0.0
    ) -> Callable[[Callable[[], Awaitable[R]]], Periodic[R]]:
        """Run ``async def job()`` on the leader every ``interval``, never overlapping itself."""
        from .decorators import every

        return every(self, interval, initial_delay=initial_delay)

    def _track_call(self, task: asyncio.Task[Any], cancel_on_loss: bool) -> _Call:
        call = _Call(task, cancel_on_loss)
        self._calls.add(call)
        task.add_done_callback(lambda _: self._calls.discard(call))
        return call

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ElectionGroup:
        if self._life is not _Life.NEW:
            raise GroupStateError(
                f"group {self.name!r} cannot be entered twice or reopened "
                f"(it is {self._life.value}); create a new ElectionGroup"
            )
        self._life = _Life.OPENING
        try:
            await self._open()
        except BaseException:
            self._life = _Life.CLOSED
            raise
        self._life = _Life.OPEN
        self._driver = asyncio.create_task(self._drive(), name=f"notifelect:{self.name}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Resign (if leading), disconnect and stop; idempotent."""
        if self._life in (_Life.CLOSING, _Life.CLOSED, _Life.NEW):
            self._life = _Life.CLOSED
            return
        self._life = _Life.CLOSING
        driver = self._driver
        if driver is not None and not driver.done():
            self._events.put_nowait(_Control.STOP)
            try:
                await asyncio.shield(driver)
            except asyncio.CancelledError:
                driver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await driver
                raise
            except Exception:
                log.exception("notifelect: election driver failed while stopping")
        await self._teardown()
        self._life = _Life.CLOSED
        self._notify_change()

    async def _open(self) -> None:
        self._generation += 1
        generation = self._generation
        self._node = await self._transport.open(
            self._on_payload, lambda exc: self._on_lost(exc, generation)
        )
        self._connected = True
        assert self._node is not None
        s = self.settings
        config = protocol.Config(
            election_timeout=s.election_timeout,
            leader_timeout=s.leader_timeout,
            coordinator_wait=s.coordinator_wait,
            heartbeat_interval=s.election_interval,
            preempt=s.preempt,
        )
        self._proto = protocol.initial_state(self.name, Rank(s.priority, self._node), config)
        self._verified = None
        self._events.put_nowait(protocol.Start())
        log.info(
            "notifelect: node %s joined group %r (priority %s)",
            self._node,
            self.name,
            s.priority,
            extra={"namespace": self.name, "node": self._node, "event": "joined"},
        )

    async def _teardown(self) -> None:
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        await self._stop_background()
        self._connected = False
        await self._transport.close()

    async def _stop_background(self) -> None:
        """Cancel the timers and the claim and watch tasks of the current connection."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        tasks = [t for t in (self._claimer, self._watcher) if t is not None]
        self._claimer = self._watcher = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # our own cancellation still propagates
            for task in tasks:
                if not task.cancelled():
                    task.exception()  # retrieved: failures were handled inside the task

    # ------------------------------------------------------------ inputs

    def _on_payload(self, payload: str) -> None:
        self.stats["received"] += 1
        parsed = messages.parse(payload, self.name, self.settings.secret_key)
        if isinstance(parsed, messages.Rejected):
            if parsed.reason == "other namespace":
                self.stats["ignored:other namespace"] += 1
            else:
                self._drop(parsed.reason, payload)
            return
        self._events.put_nowait(protocol.Receive(parsed))

    def _drop(self, reason: str, payload: str) -> None:
        self.stats[f"dropped:{reason}"] += 1
        self.stats["dropped"] += 1
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            log.warning(
                "notifelect: dropped %d bad message(s) on group %r since the last warning; "
                "latest: %s: %.80r",
                self.stats["dropped"] - self._warned_count,
                self.name,
                reason,
                payload,
                extra={"namespace": self.name, "node": self._node, "event": "dropped"},
            )
            self._last_warning = now
            self._warned_count = self.stats["dropped"]

    def _on_lost(self, exc: BaseException | None, generation: int) -> None:
        if generation != self._generation or not self._connected:
            return
        self._connected = False  # gates close now, before the driver gets to it
        if self._leadership is not None:
            self._leadership._end("connection lost")
        self._notify_change()
        self._events.put_nowait(_Lost(generation, "connection lost"))

    # ------------------------------------------------------------ the driver

    async def _drive(self) -> None:
        while True:
            event = await self._events.get()
            if event is _Control.STOP:
                await self._stop()
                return
            if event is _Control.ABDICATE:
                await self._abdicate()
                continue
            if isinstance(event, _Lost):
                if event.generation != self._generation:
                    continue
                await self._apply(protocol.Lost(event.reason))
                if not await self._reconnect():
                    return
                continue
            if not self._connected and not isinstance(event, protocol.Start):
                continue  # the connection is gone; a _Lost event is queued ahead of these
            if isinstance(event, protocol.Receive) and not await self._credible(event.message):
                continue
            await self._apply(event)

    async def _apply(self, event: protocol.Event) -> None:
        assert self._proto is not None
        before = (self._proto.role, self._proto.leader, self._proto.leader_term)
        self._proto, effects = protocol.step(self._proto, event, time.monotonic())
        try:
            for effect in effects:
                await self._perform(effect)
        except Exception as exc:
            # Whatever failed, the node cannot vouch for its state: start afresh.
            if not (_is_connection_error(exc) or isinstance(exc, LeaseLostError)):
                log.exception("notifelect: unexpected error in the election of %r", self.name)
            self._lost_during_io(exc)
        after = (self._proto.role, self._proto.leader, self._proto.leader_term)
        if after != before:
            self._notify_change()

    def _lost_during_io(self, exc: BaseException) -> None:
        if not self._connected:  # already known; the reconnect is under way
            self._transport.abort()
            return
        log.warning(
            "notifelect: node %s lost its election connection: %r",
            self._node,
            exc,
            extra={"namespace": self.name, "node": self._node, "event": "lost"},
        )
        self._transport.abort()

    async def _perform(self, effect: protocol.Effect) -> None:
        match effect:
            case protocol.Send(message):
                if message.kind is Kind.RESIGN:
                    message = await self._with_successor(message)
                await self._transport.publish(messages.encode(message, self.settings.secret_key))
            case protocol.Announce(kind, term):
                await self._announce(kind, term)
            case protocol.SetTimer(timer, at):
                self._set_timer(timer, at)
            case protocol.CancelTimer(timer):
                handle = self._timers.pop(timer, None)
                if handle is not None:
                    handle.cancel()
            case protocol.Claim(fence):
                if self._claimer is None or self._claimer.done():
                    self._claimer = asyncio.create_task(self._claim(fence, self._generation))
            case protocol.Elected(term):
                self._become_leader(term)
            case protocol.Deposed(reason):
                await self._step_down(reason)
            case protocol.Release(term):
                await self._transport.release(term, "resigned")
            case protocol.Watch(active):
                self._set_watch(active)

    def _set_timer(self, timer: protocol.Timer, at: float) -> None:
        old = self._timers.pop(timer, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, at - time.monotonic())
        loop = asyncio.get_running_loop()
        self._timers[timer] = loop.call_later(
            delay, self._events.put_nowait, protocol.TimerFired(timer)
        )

    async def _credible(self, m: Message) -> bool:
        """Check claims about leadership against the database before believing them."""
        proto = self._proto
        if proto is None or m.rank.node == self._node:
            return True
        if m.kind in (Kind.COORDINATOR, Kind.HEARTBEAT):
            assert m.term is not None
            if self._verified == (m.rank.node, m.term) or proto.role is protocol.Role.LEADER:
                return True
            record = await self._guarded(self._transport.leader())
            if record is None:
                return False
            ok = (
                record.node == m.rank.node
                and record.term == m.term
                and record.priority == m.rank.priority
                and not record.released
            )
            if not ok:
                self.stats["dropped:unverified leader"] += 1
                self.stats["dropped"] += 1
                return False
            self._verified = (m.rank.node, m.term)
            self._leader_info = LeaderInfo.from_record(record)
            return True
        if m.kind is Kind.ELECTION and proto.role is protocol.Role.LEADER and m.rank > proto.rank:
            # Only a live member may make the leader step down.
            member = await self._guarded(self._transport.is_member(m.rank.node, m.rank.priority))
            if not member:
                self.stats["dropped:unknown member"] += 1
                self.stats["dropped"] += 1
                return False
        return True

    async def _guarded(self, aw: Awaitable[R]) -> R | None:
        """Await a database read; on any failure drop the connection (to reconnect)."""
        try:
            return await aw
        except Exception as exc:
            if not _is_connection_error(exc):
                log.exception("notifelect: unexpected error in the election of %r", self.name)
            self._lost_during_io(exc)
            return None

    async def _announce(self, kind: Kind, term: int) -> None:
        sent_at = time.monotonic()
        standby = await self._transport.renew(term)
        ls = self._leadership
        if ls is not None and ls.term == term:
            ls._renewed(sent_at, self.settings.lease)
            self._arm_lease_timer()
        assert self._proto is not None
        message = Message(kind, self.name, self._proto.rank, term=term, standby=standby)
        await self._transport.publish(messages.encode(message, self.settings.secret_key))

    async def _claim(self, fence: bool, generation: int) -> None:
        try:
            granted = await self._transport.claim(fence=fence)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _is_connection_error(exc) or isinstance(exc, ConnectionError | OSError):
                if generation == self._generation:
                    self._lost_during_io(exc)
                return
            log.exception("notifelect: claim failed on group %r", self.name)
            self._events.put_nowait(protocol.ClaimRefused())
            return
        if generation != self._generation:
            return
        if granted is None:
            self._events.put_nowait(protocol.ClaimRefused())
        else:
            self._granted[granted.term] = granted.confirmed_at
            self._events.put_nowait(protocol.ClaimGranted(granted.term))

    def _set_watch(self, active: bool) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if active:
            self._watcher = asyncio.create_task(self._watch(self._generation))

    async def _watch(self, generation: int) -> None:
        """Block until the claim is free, retrying (with the reconnect policy) on errors."""
        clean = False
        try:
            async for attempt in _retrying(self.settings.retry):
                with attempt:
                    try:
                        clean = await self._transport.watch()
                    except Exception as exc:
                        log.info("notifelect: standby watcher failed, retrying: %r", exc)
                        raise
        except Exception as exc:
            log.warning("notifelect: standby watcher gave up: %r", exc)
            return
        if generation == self._generation:
            self._events.put_nowait(protocol.ClaimFreed(clean))

    # ------------------------------------------------------------ leadership

    def _become_leader(self, term: int) -> None:
        assert self._node is not None
        confirmed_at = self._granted.pop(term, time.monotonic())
        ls = Leadership(self, term, self._node, confirmed_at + self.settings.lease)
        self._leadership = ls
        self._verified = (self._node, term)
        self._leader_info = LeaderInfo(
            self._node, self.settings.priority, term, self._member.host, self._member.pid, ls.since
        )
        self._arm_lease_timer()
        log.info(
            "notifelect: node %s is leader of group %r (term %s)",
            self._node,
            self.name,
            term,
            extra={"namespace": self.name, "node": self._node, "term": term, "event": "elected"},
        )
        for callback, resign_on_error in self._elected:
            task = asyncio.create_task(self._run_elected(callback, ls, resign_on_error))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._notify_change()

    async def _run_elected(self, callback: ElectedCallback, ls: Leadership, resign: bool) -> None:
        from .decorators import _current

        _current.set(ls)
        try:
            await callback(ls)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "notifelect: on_elected callback %s failed on node %s (term %s)%s",
                getattr(callback, "__qualname__", callback),
                self._node,
                ls.term,
                "; resigning so another node can lead" if resign else "",
                extra={"namespace": self.name, "node": self._node, "term": ls.term},
            )
            if resign and self._leadership is ls and self._life is _Life.OPEN:
                self._events.put_nowait(_Control.ABDICATE)

    def _arm_lease_timer(self) -> None:
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        ls = self._leadership
        if ls is None:
            return
        loop = asyncio.get_running_loop()
        self._lease_timer = loop.call_later(ls.lease_remaining, self._lease_check, ls)

    def _lease_check(self, ls: Leadership) -> None:
        if ls is not self._leadership or ls._ended:
            return
        if ls.is_valid:
            self._arm_lease_timer()
            return
        log.warning(
            "notifelect: node %s could not renew its lease of group %r (term %s) in time; "
            "stepping down and reconnecting",
            self._node,
            self.name,
            ls.term,
            extra={"namespace": self.name, "node": self._node, "term": ls.term, "event": "lapsed"},
        )
        ls._end("lease expired")
        self._transport.abort()

    async def _step_down(self, reason: str) -> None:
        ls = self._leadership
        if ls is None:
            return
        ls._end(reason)
        self._notify_change()
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        cancelled = list(self._tasks)
        cancelled += [c.task for c in list(self._calls) if c.cancel_on_loss]
        finishing = [c.task for c in list(self._calls) if not c.cancel_on_loss]
        for task in cancelled:
            task.cancel()
        if cancelled or finishing:
            await asyncio.wait(cancelled + finishing)
        for callback in self._deposed:
            try:
                await callback(ls)
            except Exception:
                log.exception("notifelect: on_deposed callback failed")
        self._leadership = None
        log.info(
            "notifelect: node %s stepped down from group %r (term %s): %s",
            self._node,
            self.name,
            ls.term,
            reason,
            extra={"namespace": self.name, "node": self._node, "term": ls.term, "event": "deposed"},
        )

    async def _with_successor(self, message: Message) -> Message:
        """Name the highest-ranked live member as successor in a RESIGN.

        The database knows every member that has registered, also those whose election
        messages this node has not seen yet (many nodes joining at once), so a hand-over
        goes straight to the node that would win rather than through a chain of them.
        """
        best = await self._transport.successor()
        if best is None or best == self._node:
            return message
        return dataclasses.replace(message, successor=best)

    async def _stop(self) -> None:
        await self._apply(protocol.Stop(None))  # the RESIGN is given its successor on sending
        await self._step_down("stopped")  # no-op unless the connection was already lost

    async def _abdicate(self) -> None:
        until = time.monotonic() + self.settings.leader_timeout
        await self._apply(protocol.Abdicate("on_elected failed", None, until))

    async def _reconnect(self) -> bool:
        """Reconnect with backoff; False if the group gave up or is closing."""
        await self._teardown_connection()
        policy = self.settings.retry
        retrying = _retrying(policy)
        try:
            async for attempt in retrying:
                with attempt:
                    if self._life is not _Life.OPEN:
                        return False
                    await self._open()
        except Exception as exc:
            self._failure = exc
            log.error(
                "notifelect: node %s gave up reconnecting to group %r: %r",
                self._node,
                self.name,
                exc,
                extra={"namespace": self.name, "node": self._node, "event": "failed"},
            )
            self._notify_change()
            return False
        return True

    async def _teardown_connection(self) -> None:
        await self._stop_background()
        # Events queued for the old connection no longer apply.
        self._events.clear(keep=_Control.STOP)


class _Control(enum.Enum):
    STOP = "stop"
    ABDICATE = "abdicate"


@dataclass(frozen=True)
class _Lost:
    generation: int
    reason: str


_Queued = protocol.Event | _Control | _Lost


class _EventQueue:
    """The driver's inbox: its own decisions (timers, claims, losses) go before messages.

    Under a burst of notifications (many nodes electing at once) the leader's heartbeat,
    which renews its lease, must not wait behind hundreds of messages.
    """

    def __init__(self) -> None:
        self._urgent: collections.deque[_Queued] = collections.deque()
        self._messages: collections.deque[_Queued] = collections.deque()
        self._ready = asyncio.Event()

    def put_nowait(self, event: _Queued) -> None:
        queue = self._messages if isinstance(event, protocol.Receive) else self._urgent
        queue.append(event)
        self._ready.set()

    async def get(self) -> _Queued:
        while not (self._urgent or self._messages):
            self._ready.clear()
            await self._ready.wait()
        return self._urgent.popleft() if self._urgent else self._messages.popleft()

    def clear(self, *, keep: _Queued) -> None:
        """Drop everything queued except ``keep`` events."""
        kept = [e for e in self._urgent if e is keep]
        self._urgent.clear()
        self._messages.clear()
        self._urgent.extend(kept)


def _retrying(policy: RetryPolicy) -> AsyncRetrying:
    return AsyncRetrying(
        wait=wait_exponential(multiplier=policy.initial, max=policy.maximum)
        + wait_random(0, policy.jitter),
        stop=stop_never if policy.attempts is None else stop_after_attempt(policy.attempts),
        # Only errors are retried: a cancellation (BaseException) must end the loop at once.
        retry=retry_if_exception(
            lambda exc: (
                isinstance(exc, Exception) and not isinstance(exc, SchemaError | ConfigurationError)
            )
        ),
        reraise=True,
    )


def _is_connection_error(exc: BaseException) -> bool:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(
        exc,
        asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions.PostgresConnectionError
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.exceptions.CannotConnectNowError
        | ConnectionError
        | OSError
        | TimeoutError,
    )


def _postgres_transport(engine: Any, settings: Settings, member: Member) -> Transport:
    from .transport.connect import connector_for
    from .transport.postgres import PostgresTransport

    connect, borrowed = connector_for(engine)
    return PostgresTransport(
        namespace=settings.namespace,
        names=settings.names,
        member=member,
        lease=settings.lease,
        leader_timeout=settings.leader_timeout,
        fence=settings.fence,
        strict_takeover=settings.strict_takeover,
        connect=connect,
        connection=borrowed,
    )
