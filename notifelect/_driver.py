"""The election driver: runs one group's protocol over a transport and supervises its work.

(Longer than most modules on purpose: it is one loop that owns one group's election state
and every part of it reads or changes that state; the leader work it supervises is in
:mod:`notifelect._work`, the decisions in :mod:`notifelect.protocol`.)

It owns the loop that feeds events (messages, timers, answers from the database) into the
pure protocol and performs the effects it returns, in order. Time and I/O enter the
election only here and in the transport. It also supervises leader-only work: a
leadership's lease, the ``on_elected`` tasks and ``leader_only`` calls running under it,
and what happens to them when the leadership ends.

Why some things are ordered as they are:

* Gates close in the transport's loss callback itself, before anything else, and a
  node's anchor (the evidence a standby uses to take over at once) is dropped only after
  its leader work has been stopped and awaited.
* The driver's own decisions (timers, claims, losses, the leader rows its session read)
  go before queued messages, and the message queue is bounded: under a burst of
  notifications a follower never hears of the leader's renewals hundreds of messages
  late. (The lease itself is renewed by the session's tick, not through this queue.)
* Every database call is bounded (``Settings.io_timeout``); a call that takes longer is
  a lost connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import logging
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from . import messages, protocol, rules
from ._clock import now
from ._retry import retrying
from ._work import LeaderWork
from .health import Vacancies
from .leadership import DeposedCallback, ElectedCallback, LeaderInfo, Leadership
from .messages import Kind, Message, Rank
from .settings import Settings
from .transport.base import Freed, LeaderRecord, LeaseLostError, Member, Renewal, Transport

log = logging.getLogger(__name__)

R = TypeVar("R")
_WARN_EVERY = 10.0
#: Anchors kept until cancelled work has stopped, after a stop that could not finish.
_LINGERING: set[asyncio.Future[None]] = set()
#: Messages waiting for the driver beyond this are dropped (and counted): the election
#: recovers from lost messages (timers, database surveys), not from an unbounded backlog.
MAX_QUEUED_MESSAGES = 10_000


class _Control(enum.Enum):
    STOP = "stop"
    ABDICATE = "abdicate"


@dataclass(frozen=True)
class _Lost:
    generation: int
    reason: str


_Queued = protocol.Event | _Control | _Lost


class Inbox:
    """The driver's inbox: its own decisions go before messages; messages are bounded."""

    def __init__(self, limit: int = MAX_QUEUED_MESSAGES) -> None:
        self._urgent: collections.deque[_Queued] = collections.deque()
        self._messages: collections.deque[_Queued] = collections.deque()
        self._limit = limit
        self._ready = asyncio.Event()

    def put(self, event: _Queued) -> bool:
        """Queue ``event``; False if it was a message and the queue was full (dropped)."""
        if isinstance(event, protocol.Receive):
            if len(self._messages) >= self._limit:
                return False
            self._messages.append(event)
        else:
            self._urgent.append(event)
        self._ready.set()
        return True

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


class Driver:
    """Runs the election of one group on one transport (see the module docstring).

    ``on_change`` is called whenever what the group reports (leader, leadership,
    connection, failure) may have changed.
    """

    def __init__(
        self,
        *,
        name: str,
        settings: Settings,
        transport: Transport,
        member: Member,
        elected: list[tuple[ElectedCallback, bool]],
        deposed: list[DeposedCallback],
        on_change: Callable[[], None],
    ) -> None:
        self.name = name
        self.settings = settings
        self.transport = transport
        self.member = member
        self._elected = elected
        self._deposed = deposed
        self._notify = on_change
        self.node: int | None = None
        self.proto: protocol.State | None = None
        self.connected = False
        self.leadership: Leadership | None = None
        self.leader_info: LeaderInfo | None = None
        self.failure: BaseException | None = None
        self.stats: Counter[str] = Counter()
        #: How long the group went without a leader, as this node saw it.
        self.vacancies = Vacancies()
        #: The leadership (node, term) last known, and the open vacancy: since when, and
        #: which leadership was lost.
        self._known: tuple[int, int] | None = None
        self._vacant: tuple[float, tuple[int, int]] | None = None
        #: The last renewal of the known leader's lease this node saw: (node, term, when,
        #: on this node's clock).
        self._renewal: tuple[int, int, float] | None = None
        self.closing = False
        self._inbox = Inbox()
        self._timers: dict[protocol.Timer, asyncio.TimerHandle] = {}
        self._task: asyncio.Task[None] | None = None
        self._helpers: set[asyncio.Task[Any]] = set()  # claim, survey: one connection's
        self._watcher: asyncio.Task[None] | None = None
        self._lease_timer: asyncio.TimerHandle | None = None
        self._granted: dict[int, float] = {}
        self._generation = 0
        self._lost_leadership = False
        self._verified: tuple[int, int] | None = None
        self._verified_at = 0.0
        self.work = LeaderWork(
            settings, elected, deposed, extra=self._extra, on_failed=self._callback_failed
        )
        self._last_warning = 0.0
        self._warned_count = 0
        #: While the loop waits to reconnect or tries to: nothing is held then, so a stop
        #: cuts the attempt (or the wait before the next one) short.
        self._reconnecting = False
        self._reconnect_warned_at = -math.inf
        cfg = settings
        self.config = protocol.Config(
            election_timeout=cfg.election_timeout,
            leader_timeout=cfg.leader_timeout,
            coordinator_wait=cfg.coordinator_wait,
            preempt=protocol.Preempt(cfg.preempt),
            join_holdoff=cfg.holdoff,
        )
        transport.observe(self._on_record, self._on_renewal)
        transport.stats = self.stats

    def _stay_out(self, why: rules.StayOut) -> float:
        s = self.settings
        return rules.stay_out(
            why, now(), leader_timeout=s.leader_timeout, coordinator_wait=s.coordinator_wait
        )

    def _extra(self, event: str, **fields: object) -> dict[str, object]:
        extra: dict[str, object] = {
            "notifelect_event": event,
            "notifelect_namespace": self.name,
            "notifelect_node": self.node,
        }
        extra.update({f"notifelect_{k}": v for k, v in fields.items()})
        return extra

    # ------------------------------------------------------------ what the group reports

    def known_leader(self) -> LeaderInfo | None:
        """Who leads the group as far as this node knows now; None during an election,
        and while this node is not connected."""
        proto = self.proto
        if proto is None or not self.connected or proto.role is protocol.Role.STOPPED:
            return None
        if proto.leader is None:
            return None
        info = self.leader_info
        if info is not None and info.node == proto.leader.node:
            return info
        return LeaderInfo(
            proto.leader.node, proto.leader.priority, proto.leader_term or 0, None, None, None
        )

    def leader_renewal_age(self) -> float | None:
        """Seconds since the known leader last renewed its lease, on this node's clock, as
        far as this node has seen (its own last renewal if it leads); None if unknown."""
        ls = self.leadership
        if ls is not None and not ls._ended:
            return rules.lease_age(ls._valid_until, self.settings.lease, now())
        leader, seen = self.known_leader(), self._renewal
        if leader is None or seen is None or seen[:2] != (leader.node, leader.term):
            return None
        return max(0.0, now() - seen[2])

    def _saw_renewal(self, node: int, term: int, at: float) -> None:
        """Leader ``node`` renewed its lease of ``term`` at ``at`` (this node's clock)."""
        seen = self._renewal
        if seen is None or seen[:2] != (node, term) or seen[2] < at:
            self._renewal = (node, term, at)
        vacant = self._vacant
        if vacant is not None and vacant[1] == (node, term) and at > vacant[0]:
            self._vacant = None  # it renewed after it seemed lost: this node lost sight of it

    def _on_change(self) -> None:
        """What the group reports may have changed: time the vacancies, tell the group."""
        if not self.closing:
            self._time_vacancy()
        self._notify()

    def _time_vacancy(self) -> None:
        """A vacancy runs from the moment this node sees no leader after it knew one to the
        moment it knows a different leadership. Seeing the lost one again does not end it
        (a late message of a dead leader); a renewal of it made after the loss cancels it
        (only this node had lost sight of it, as across its own reconnect)."""
        info = self.known_leader()
        at = now()
        if info is None:
            if self._vacant is None and self._known is not None:
                self._vacant = (at, self._known)
            return
        current = (info.node, info.term)
        if self._vacant is not None:
            since, lost = self._vacant
            if current != lost:
                self.vacancies.observe(at - since)
                self._vacant = None
        elif self._known is not None and current != self._known:
            self.vacancies.observe(0.0)  # the next leader was seen before any gap was
        self._known = current

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect, listen and register; queue the protocol's start. Raises on failure."""
        self._generation += 1
        generation = self._generation
        self.node = await self.transport.open(
            self._on_payload, lambda exc: self._on_lost(exc, generation)
        )
        self.connected = True
        self.proto = protocol.initial_state(
            self.name, Rank(self.settings.priority, self.node), self.config
        )
        if self._lost_leadership:
            # Back after losing a leadership: leave the claim to the standby, which may be
            # taking over right now, instead of racing it for leadership it just left.
            self._lost_leadership = False
            until = self._stay_out(rules.StayOut.RETURNED)
            self.proto = dataclasses.replace(self.proto, abstain_until=until)
        self._verified = None
        self._inbox.put(protocol.Start())
        log.info(
            "node %s joined group %r (priority %s)",
            self.node,
            self.name,
            self.settings.priority,
            extra=self._extra("joined", priority=self.settings.priority),
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._drive(), name=f"notifelect:{self.name}")

    @property
    def close_bound(self) -> float:
        """How long a graceful stop may take before the connections are simply dropped."""
        s = self.settings
        return s.finish_timeout + 2 * s.callback_timeout + 5 * s.io_timeout

    async def stop(self) -> None:
        """Resign (if leading) and disconnect, within :attr:`close_bound`; never leaves a
        connection or lock behind, even if the caller is cancelled."""
        self.closing = True
        task = self._task
        try:
            if task is not None and not task.done() and self._reconnecting:
                # Nothing to resign or hand over: a connect attempt, or the backoff before
                # the next one, would only delay the stop (by seconds per group).
                task.cancel()
                await asyncio.wait([task])
            elif task is not None and not task.done():
                self._inbox.put(_Control.STOP)
                try:
                    async with asyncio.timeout(self.close_bound):
                        await asyncio.shield(task)
                except TimeoutError:
                    log.error(
                        "stopping group %r took over %.1fs; dropping its connection",
                        self.name,
                        self.close_bound,
                        extra=self._extra("stop_timeout"),
                    )
                except Exception:
                    log.exception("election driver of group %r failed while stopping", self.name)
            try:
                async with asyncio.timeout(3 * self.settings.io_timeout):
                    await self._teardown()
            except TimeoutError:
                pass  # the network does not answer: the connections are dropped below
        except asyncio.CancelledError:
            self._abandon()
            raise
        finally:
            if task is not None and not task.done():
                task.cancel()
            self._abandon()
            self.connected = False
            self._on_change()

    def _abandon(self) -> None:
        """Drop everything at once, synchronously (the end of a stop that could not finish)."""
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for t in (*self._helpers, *([self._watcher] if self._watcher else [])):
            t.cancel()
        ls = self.leadership
        if ls is not None:
            ls._end("stopped")
        self.work.cancel(everything=True)
        self.transport.abort()
        # The anchor goes only once the cancelled work has stopped (bounded), so that a
        # standby never takes it as evidence while that work may still act.
        task = asyncio.ensure_future(self._release_anchor_after_work())
        _LINGERING.add(task)
        task.add_done_callback(_LINGERING.discard)

    async def _release_anchor_after_work(self) -> None:
        try:
            await self.work.stopped(self.settings.callback_timeout)
        finally:
            self.transport.release_anchor()

    async def _teardown(self) -> None:
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        await self._stop_background()
        self.connected = False
        await self.transport.close()

    async def _stop_background(self) -> None:
        """Cancel the timers and the claim, survey and watch tasks of the connection."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        tasks = [*self._helpers, *([self._watcher] if self._watcher else [])]
        self._helpers.clear()
        self._watcher = None
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
        if not self._inbox.put(protocol.Receive(parsed)):
            self._drop("queue full", payload)

    def _drop(self, reason: str, payload: str) -> None:
        self.stats[f"dropped:{reason}"] += 1
        self.stats["dropped"] += 1
        t = now()
        if t - self._last_warning >= _WARN_EVERY:
            log.warning(
                "dropped %d bad message(s) on group %r since the last warning; latest: %s: %.80r",
                self.stats["dropped"] - self._warned_count,
                self.name,
                reason,
                payload,
                extra=self._extra("dropped", reason=reason),
            )
            self._last_warning = t
            self._warned_count = self.stats["dropped"]

    def _on_lost(self, exc: BaseException | None, generation: int) -> None:
        if generation != self._generation or not self.connected:
            return
        self.connected = False  # gates close now, before the driver gets to it
        ls = self.leadership
        if ls is not None:
            ls._end("connection lost")
            self.work.cancel(everything=True)
            self._lost_leadership = True
        self._on_change()
        self._inbox.put(_Lost(generation, "connection lost"))

    # ------------------------------------------------------------ the loop

    async def _drive(self) -> None:
        while True:
            event = await self._inbox.get()
            if event is _Control.STOP:
                await self._stop()
                return
            if event is _Control.ABDICATE:
                until = self._stay_out(rules.StayOut.ABDICATED)
                await self._apply(protocol.Abdicate("on_elected failed", until))
                continue
            if isinstance(event, _Lost):
                if event.generation != self._generation:
                    continue
                await self._apply(protocol.Lost(event.reason))
                if not await self._reconnect():
                    return
                continue
            if not self.connected and not isinstance(event, protocol.Start):
                continue  # the connection is gone; a _Lost event is queued ahead of these
            if isinstance(event, protocol.Receive):
                believed = await self._credible(event.message)
                if believed is None:
                    continue
                event = believed
            await self._apply(event)

    async def _apply(self, event: protocol.Event) -> None:
        assert self.proto is not None
        before = (self.proto.role, self.proto.leader, self.proto.leader_term)
        self.proto, effects = protocol.step(self.proto, event, now())
        try:
            for effect in effects:
                await self._perform(effect)
        except Exception as exc:
            # Whatever failed, the node cannot vouch for its state: start afresh.
            if not isinstance(exc, ConnectionError | OSError | LeaseLostError):
                log.exception("unexpected error in the election of %r", self.name)
            self._lost_during_io(exc)
        after = (self.proto.role, self.proto.leader, self.proto.leader_term)
        if after != before:
            self._on_change()

    def _lost_during_io(self, exc: BaseException) -> None:
        if self.connected:
            log.warning(
                "node %s lost its election connection: %r",
                self.node,
                exc,
                extra=self._extra("lost", error=repr(exc)),
            )
        # Gates close now; the connection (and the claim on it) is dropped only after the
        # leader work has stopped, by the reconnect that follows.
        self._on_lost(exc, self._generation)

    async def _perform(self, effect: protocol.Effect) -> None:
        match effect:
            case protocol.Send(message):
                if message.kind is Kind.RESIGN and message.successor is None:
                    message = await self._with_successor(message)
                await self.transport.publish(messages.encode(message, self.settings.secret_key))
            case protocol.SetTimer(timer, at, spread):
                self._set_timer(timer, at + (random.uniform(0, spread) if spread else 0.0))
            case protocol.CancelTimer(timer):
                handle = self._timers.pop(timer, None)
                if handle is not None:
                    handle.cancel()
            case protocol.Claim(fence, evidence):
                self.stats["elections"] += 1
                self._helper(self._claim(fence, evidence, self._generation))
            case protocol.Survey():
                self._helper(self._survey(self._generation))
            case protocol.Elected(term):
                self.stats["elected"] += 1
                self._become_leader(term)
            case protocol.Deposed(reason, voluntary):
                if self.leadership is not None:
                    self.stats["handovers" if voluntary else "failovers"] += 1
                await self._step_down(reason, voluntary=voluntary)
            case protocol.Release(term):
                await self.transport.release(term, "resigned")
            case protocol.Watch(leader):
                self._set_watch(leader)

    def _set_timer(self, timer: protocol.Timer, at: float) -> None:
        old = self._timers.pop(timer, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[timer] = loop.call_later(
            max(0.0, at - now()), self._inbox.put, protocol.TimerFired(timer)
        )

    def _helper(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    # ------------------------------------------------------------ database checks

    async def _credible(self, m: Message) -> protocol.Event | None:
        """What to make of message ``m``: the event it means (the message itself, or for a
        leader's announcement the leader row that confirms it), or None (not believed).
        :func:`notifelect.rules.believe` decides; this reads the facts it asks for."""
        proto = self.proto
        if proto is None or m.rank.node == self.node:
            return protocol.Receive(m)  # (the protocol ignores its own messages)
        view = rules.View(
            me=self.node,
            leading=proto.role is protocol.Role.LEADER,
            leader_term=proto.leader_term,
            verified=self._verified,
            verified_age=now() - self._verified_at,
            leader_timeout=self.settings.leader_timeout,
            preempts=protocol.preempts(self.config, m.rank, proto.rank),
        )
        record: LeaderRecord | None = None
        while True:
            verdict = rules.believe(m, view)
            if verdict is rules.Ask.RECORD:
                record = await self._guarded(self.transport.leader())
                if not self.connected:
                    return None  # the read failed: the connection is being replaced
                view = dataclasses.replace(view, record=record, record_read=True)
            elif verdict is rules.Ask.MEMBER:
                member = await self._guarded(self.transport.is_member(m.rank.node, m.rank.priority))
                if member is None:
                    return None
                view = dataclasses.replace(view, member=member)
            else:
                break
        if not verdict.believed:
            assert verdict.reason is not None
            if verdict.ignored:
                self.stats[f"ignored:{verdict.reason}"] += 1
            else:
                self._unbelieved(verdict.reason)
            return None
        if m.kind in (Kind.COORDINATOR, Kind.HEARTBEAT) and record is not None:
            # (an older node's announcement): what is believed is the row that confirms it.
            self._verified = (record.node, record.term)
            self._verified_at = now()
            self.leader_info = LeaderInfo.from_record(record)
            return self._seen(record, now() - (record.quiet_for or 0.0))
        return protocol.Receive(m)

    def _unbelieved(self, reason: str) -> bool:
        self.stats[f"dropped:{reason}"] += 1
        self.stats["dropped"] += 1
        return False

    async def _guarded(self, aw: Awaitable[R]) -> R | None:
        """Await a database read; on any failure drop the connection (to reconnect)."""
        try:
            return await aw
        except Exception as exc:
            if not isinstance(exc, ConnectionError | OSError):
                log.exception("unexpected error in the election of %r", self.name)
            self._lost_during_io(exc)
            return None

    def _on_record(self, record: LeaderRecord) -> None:
        """The group's leader row, read by the session about once per interval: to a
        follower it is the leader's heartbeat (the protocol's ``LeaderSeen``)."""
        proto = self.proto
        if proto is None or not self.connected or record.node == self.node:
            return
        if record.released or record.quiet_for is None:
            return
        renewed_at = now() - record.quiet_for  # the database's age is not this clock's
        self._saw_renewal(record.node, record.term, renewed_at)
        if not rules.leader_silent(record.quiet_for, self.settings.leader_timeout):
            self._verified = (record.node, record.term)
            self._verified_at = now()
        info = self.leader_info
        if info is None or (info.node, info.term) != (record.node, record.term):
            self.stats["records"] += 1
            self.leader_info = LeaderInfo.from_record(record)
        self._inbox.put(self._seen(record, renewed_at))

    @staticmethod
    def _seen(record: LeaderRecord, renewed_at: float) -> protocol.LeaderSeen:
        return protocol.LeaderSeen(
            Rank(record.priority, record.node),
            record.term,
            record.standby,
            renewed_at,
            record.released,
        )

    def _on_renewal(self, term: int, renewal: Renewal | None) -> None:
        """The session renewed (or found lost) the lease of the term this node holds."""
        ls = self.leadership
        if ls is None or ls.term != term or ls._ended:
            return
        if renewal is not None:
            ls._renewed(renewal.confirmed_at, self.settings.lease)
        elif self.connected:
            self._lost_during_io(LeaseLostError(f"term {term} is no longer current"))

    async def _claim(self, fence: bool, evidence: int | None, generation: int) -> None:
        try:
            granted = await self.transport.claim(fence=fence, evidence=evidence)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, ConnectionError | OSError):
                if generation == self._generation:
                    self._lost_during_io(exc)
                return
            log.exception("claim failed on group %r", self.name)
            self._inbox.put(protocol.ClaimRefused())
            return
        if generation != self._generation:
            return
        if granted is None:
            self._inbox.put(protocol.ClaimRefused())
        else:
            self._granted[granted.term] = granted.confirmed_at
            self._inbox.put(protocol.ClaimGranted(granted.term))

    async def _survey(self, generation: int) -> None:
        result = await self._guarded(self.transport.survey())
        if result is not None and generation == self._generation:
            held, best, leader = result
            known = None if leader is None else (Rank(leader[0], leader[1]), leader[2])
            self._inbox.put(
                protocol.Surveyed(
                    held,
                    None if best is None else Rank(*best),
                    None if known is None else known[0],
                    None if known is None else known[1],
                )
            )

    def _set_watch(self, leader: int | None) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if leader is not None:
            self._watcher = asyncio.create_task(self._watch(leader, self._generation))

    async def _watch(self, leader: int, generation: int) -> None:
        """Watch the leader's process, retrying (with the reconnect policy) on errors."""
        how = Freed.UNOBSERVED
        try:
            async for attempt in retrying(self.settings.retry):
                with attempt:
                    try:
                        how = await self.transport.watch(leader)
                    except Exception as exc:
                        log.info("standby watcher failed, retrying: %r", exc)
                        raise
        except Exception as exc:
            log.warning("standby watcher gave up: %r", exc)
            return
        if generation == self._generation:
            self._inbox.put(protocol.ClaimFreed(how, leader))

    async def _with_successor(self, message: Message) -> Message:
        """Name the highest-ranked live member as successor in a RESIGN that names none
        (the protocol names one only when it is preempted: the node that preempts it).

        The database knows every member that has registered, also those whose election
        messages this node has not seen yet (many nodes joining at once), so a hand-over
        goes straight to the node that would win rather than through a chain of them.
        """
        best = await self.transport.successor()
        if best is None or best == self.node:
            return message
        return dataclasses.replace(message, successor=best)

    # ------------------------------------------------------------ leadership

    def _become_leader(self, term: int) -> None:
        assert self.node is not None
        confirmed_at = self._granted.pop(term, now())
        ls = Leadership(
            self.name,
            self.settings.names,
            term,
            self.node,
            rules.lease_end(confirmed_at, self.settings.lease),
        )
        self.leadership = ls
        self._verified = (self.node, term)
        self.leader_info = LeaderInfo(
            self.node, self.settings.priority, term, self.member.host, self.member.pid, ls.since
        )
        self._arm_lease_timer()
        log.info(
            "node %s is leader of group %r (term %s)",
            self.node,
            self.name,
            term,
            extra=self._extra("elected", term=term),
        )
        self.work.start(ls)
        self._on_change()

    def _callback_failed(self, ls: Leadership) -> None:
        if self.leadership is ls and not self.closing:
            self._inbox.put(_Control.ABDICATE)

    def _arm_lease_timer(self) -> None:
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        ls = self.leadership
        if ls is None:
            return
        # The event loop's timers run on a clock that stops during a suspend; checking at
        # least every half interval bounds how long a resumed node takes to notice.
        delay = rules.lease_recheck(ls._valid_until, now(), self.settings.election_interval)
        self._lease_timer = asyncio.get_running_loop().call_later(delay, self._lease_check, ls)

    def _lease_check(self, ls: Leadership) -> None:
        if ls is not self.leadership or ls._ended:
            return
        if ls.is_valid:
            self._arm_lease_timer()
            return
        log.warning(
            "node %s could not renew its lease of group %r (term %s) in time; "
            "stepping down and reconnecting",
            self.node,
            self.name,
            ls.term,
            extra=self._extra("lapsed", term=ls.term),
        )
        ls._end("lease expired")
        self.work.cancel(everything=True)
        self._lost_leadership = True
        # As for a lost connection: the claim is dropped once the work has stopped.
        self._on_lost(None, self._generation)

    async def _step_down(self, reason: str, *, voluntary: bool) -> None:
        ls = self.leadership
        if ls is None:
            return
        self._on_change()  # the gates close first (the leadership drains or ends)
        try:
            await self.work.stop(ls, reason, voluntary=voluntary, renew=self._renew)
        finally:
            if self._lease_timer is not None:
                self._lease_timer.cancel()
            self.leadership = None
            self._on_change()
        log.info(
            "node %s stepped down from group %r (term %s): %s",
            self.node,
            self.name,
            ls.term,
            reason,
            extra=self._extra("deposed", term=ls.term, reason=reason),
        )

    async def _renew(self, ls: Leadership) -> None:
        renewal = await self.transport.renew(ls.term)
        ls._renewed(renewal.confirmed_at, self.settings.lease)
        self._arm_lease_timer()

    async def _stop(self) -> None:
        await self._apply(protocol.Stop())  # the RESIGN is given its successor on sending
        await self._step_down("stopped", voluntary=False)  # no-op unless already lost

    async def _reconnect(self) -> bool:
        """Reconnect with backoff; False if the group gave up or is closing."""
        await self._stop_background()
        self._inbox.clear(keep=_Control.STOP)  # events of the old connection no longer apply
        self.transport.abort()
        # Leader work has stopped: only now let the anchor go (see the module docstring).
        self.transport.release_anchor()
        lost_at = now()
        failed = 0
        self._reconnect_warned_at = -math.inf  # a new outage is said at its first failure
        self._reconnecting = True
        try:
            async for attempt in retrying(self.settings.retry):
                with attempt:
                    if self.closing:
                        return False
                    try:
                        await self.open()
                    except Exception as exc:
                        failed += 1
                        self._reconnect_failed(failed, now() - lost_at, exc)
                        raise
                    self.stats["reconnects"] += 1
        except Exception as exc:
            self.failure = exc
            log.error(
                "node %s gave up reconnecting to group %r: %r",
                self.node,
                self.name,
                exc,
                extra=self._extra("failed", error=repr(exc)),
            )
            self._on_change()
            return False
        finally:
            self._reconnecting = False
        return True

    def _reconnect_failed(self, attempts: int, since: float, exc: BaseException) -> None:
        """Say that reconnecting fails: at the first failure after a loss, then at most
        every ``_WARN_EVERY`` s while it goes on."""
        self.stats["reconnect_failures"] += 1
        t = now()
        if t - self._reconnect_warned_at < _WARN_EVERY:
            return
        self._reconnect_warned_at = t
        log.warning(
            "group %r cannot reconnect: %d attempt(s) failed in %.1fs since its connection "
            "was lost; still retrying; latest: %r",
            self.name,
            attempts,
            since,
            exc,
            extra=self._extra("reconnect_failing", attempts=attempts, error=repr(exc)),
        )

    # ------------------------------------------------------------ calls

    def track_call(self, task: asyncio.Task[Any], cancel_on_loss: bool) -> None:
        self.work.track_call(task, cancel_on_loss)

    def track_thread(self) -> contextlib.AbstractContextManager[None]:
        return self.work.track_thread()
