"""The election driver: runs one group's protocol over a transport and supervises its work.

(Longer than the modules around it, on purpose: it is one loop that owns one group's
election state, its timers and its connection's life, and its stop, reconnect and effect
handling share the loop's task, inbox and connection generation; split further, each
piece would need all of that passed in. Its named pieces are elsewhere: the leader work
in :mod:`notifelect._work`, this node's own lease in :mod:`notifelect._lease_clock`, what
it believes about the leader in :mod:`notifelect._leader_view`, the decisions in
:mod:`notifelect.protocol` and :mod:`notifelect.rules`.)

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
import contextlib
import dataclasses
import logging
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import messages, protocol, rules
from ._clock import now
from ._inbox import WARN_EVERY, Control, Inbox, Intake, Lost
from ._leader_view import LeaderView
from ._lease_clock import LeaseClock
from ._retry import retrying
from ._work import LeaderWork
from .health import Vacancies
from .leadership import DeposedCallback, ElectedCallback, LeaderInfo, Leadership
from .messages import Kind, Message, Rank
from .settings import Settings
from .transport.base import Freed, LeaderRecord, LeaseLostError, Member, Renewal, Transport

log = logging.getLogger(__name__)

R = TypeVar("R")
#: Anchors kept until cancelled work has stopped, after a stop that could not finish.
_LINGERING: set[asyncio.Future[None]] = set()


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
        self.failure: BaseException | None = None
        self.stats: Counter[str] = Counter()
        self.view = LeaderView(settings.leader_timeout, self.stats)
        self.lease = LeaseClock(
            name,
            settings.names,
            lease=settings.lease,
            interval=settings.election_interval,
            on_lapse=self._lapsed,
        )
        self.closing = False
        self._inbox = Inbox()
        self._intake = Intake(name, settings.secret_key, self._inbox, self.stats, self._extra)
        self._timers: dict[protocol.Timer, asyncio.TimerHandle] = {}
        self._task: asyncio.Task[None] | None = None
        self._helpers: set[asyncio.Task[Any]] = set()  # claim, survey: one connection's
        self._watcher: asyncio.Task[None] | None = None
        self._generation = 0
        self._lost_leadership = False
        self.work = LeaderWork(
            settings, elected, deposed, extra=self._extra, on_failed=self._callback_failed
        )
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

    @property
    def leadership(self) -> Leadership | None:
        """The leadership this node holds (draining or ended ones until their work is over)."""
        return self.lease.leadership

    @property
    def vacancies(self) -> Vacancies:
        """How long the group went without a leader, as this node saw it."""
        return self.view.vacancies

    def known_leader(self) -> LeaderInfo | None:
        """Who leads the group as far as this node knows now; None during an election,
        and while this node is not connected."""
        return self.view.leader(self.proto) if self.connected else None

    def leader_renewal_age(self) -> float | None:
        """Seconds since the known leader last renewed its lease, on this node's clock, as
        far as this node has seen (its own last renewal if it leads); None if unknown."""
        own = self.lease.age()
        return own if own is not None else self.view.renewal_age(self.known_leader())

    def _on_change(self) -> None:
        """What the group reports may have changed: time the vacancies, tell the group."""
        if not self.closing:
            self.view.time_vacancy(self.known_leader())
        self._notify()

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect, listen and register; queue the protocol's start. Raises on failure."""
        self._generation += 1
        generation = self._generation
        self.node = await self.transport.open(
            self._intake.payload, lambda exc: self._on_lost(exc, generation)
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
        self.view.reset()
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
                self._inbox.put(Control.STOP)
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
        self.lease.stop()
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
        self.lease.stop()
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
        self._inbox.put(Lost(generation, "connection lost"))

    # ------------------------------------------------------------ the loop

    async def _drive(self) -> None:
        while True:
            event = await self._inbox.get()
            if event is Control.STOP:
                await self._stop()
                return
            if event is Control.ABDICATE:
                until = self._stay_out(rules.StayOut.ABDICATED)
                await self._apply(protocol.Abdicate("on_elected failed", until))
                continue
            if isinstance(event, Lost):
                if event.generation != self._generation:
                    continue
                await self._apply(protocol.Lost(event.reason))
                if not await self._reconnect():
                    return
                continue
            if not self.connected and not isinstance(event, protocol.Start):
                continue  # the connection is gone; a _Lost event is queued ahead of these
            if isinstance(event, protocol.Receive):
                assert self.proto is not None
                m = event.message
                believed = await self.view.believe(
                    m,
                    self.proto,
                    preempts=protocol.preempts(self.config, m.rank, self.proto.rank),
                    read_record=lambda: self._guarded(self.transport.leader()),
                    read_member=lambda n, p: self._guarded(self.transport.is_member(n, p)),
                    connected=lambda: self.connected,
                )
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
            if not _expected(exc):
                log.exception("unexpected error in the election of %r", self.name)
            self._lost_during_io(exc)
        after = (self.proto.role, self.proto.leader, self.proto.leader_term)
        if after != before:
            self._on_change()

    def _lost_during_io(self, exc: BaseException) -> None:
        if self.connected:
            hint = getattr(exc, "hint", None)  # the server's advice, with its error
            log.warning(
                "node %s lost its election connection: %r%s",
                self.node,
                exc,
                f" (hint: {hint})" if isinstance(hint, str) and hint else "",
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
                payload = messages.encode(message, self.settings.secret_key)
                to = rules.addressee(message)
                if to is None:
                    await self.transport.publish(payload)
                else:
                    await self.transport.send(to, payload)
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

    # ------------------------------------------------------------ database reads

    async def _guarded(self, aw: Awaitable[R]) -> R | None:
        """Await a database read; on any failure drop the connection (to reconnect)."""
        try:
            return await aw
        except Exception as exc:
            if not _expected(exc):
                log.exception("unexpected error in the election of %r", self.name)
            self._lost_during_io(exc)
            return None

    def _on_record(self, record: LeaderRecord) -> None:
        """The group's leader row, read by the session about once per interval: to a
        follower it is the leader's heartbeat (the protocol's ``LeaderSeen``)."""
        if self.proto is None or not self.connected:
            return
        seen = self.view.seen(record, self.node)
        if seen is not None:
            self._inbox.put(seen)

    def _on_renewal(self, term: int, renewal: Renewal | None) -> None:
        """The session renewed (or found lost) the lease of the term this node holds."""
        ls = self.leadership
        if ls is None or ls.term != term or ls._ended:
            return
        if renewal is not None:
            self.lease.renewed(term, renewal.confirmed_at)
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
            if _expected(exc):  # refused by the database: try again later, no traceback
                log.warning("claim failed on group %r: %r", self.name, exc)
            else:
                log.exception("claim failed on group %r", self.name)
            self._inbox.put(protocol.ClaimRefused())
            return
        if generation != self._generation:
            return
        if granted is None:
            self._inbox.put(protocol.ClaimRefused())
        else:
            self.lease.granted(granted.term, granted.confirmed_at)
            self._inbox.put(protocol.ClaimGranted(granted.term))

    async def _survey(self, generation: int) -> None:
        result = await self._guarded(self.transport.survey())
        if result is not None and generation == self._generation:
            held, best, leader = result
            self._inbox.put(
                protocol.Surveyed(
                    held,
                    None if best is None else Rank(*best),
                    None if leader is None else Rank(leader[0], leader[1]),
                    None if leader is None else leader[2],
                    None if leader is None else leader[3],
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
        ls = self.lease.start(term, self.node)
        self.view.leading(
            LeaderInfo(
                self.node, self.settings.priority, term, self.member.host, self.member.pid, ls.since
            )
        )
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
            self._inbox.put(Control.ABDICATE)

    def _lapsed(self, ls: Leadership) -> None:
        """The lease ran out before a renewal came (the leadership has ended)."""
        log.warning(
            "node %s could not renew its lease of group %r (term %s) in time; "
            "stepping down and reconnecting",
            self.node,
            self.name,
            ls.term,
            extra=self._extra("lapsed", term=ls.term),
        )
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
            self.lease.clear()
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
        self.lease.renewed(ls.term, renewal.confirmed_at)

    async def _stop(self) -> None:
        await self._apply(protocol.Stop())  # the RESIGN is given its successor on sending
        await self._step_down("stopped", voluntary=False)  # no-op unless already lost

    async def _reconnect(self) -> bool:
        """Reconnect with backoff; False if the group gave up or is closing."""
        await self._stop_background()
        self._inbox.clear(keep=Control.STOP)  # events of the old connection no longer apply
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
        every ``WARN_EVERY`` s while it goes on."""
        self.stats["reconnect_failures"] += 1
        t = now()
        if t - self._reconnect_warned_at < WARN_EVERY:
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


def _expected(exc: BaseException) -> bool:
    """Whether ``exc`` is a condition of the environment, said without a traceback: a
    lost connection or lease, or an error the database reported (it carries an SQLSTATE:
    a full lock table, a statement timeout). Anything else is a bug."""
    if isinstance(exc, ConnectionError | OSError | LeaseLostError):
        return True
    return isinstance(getattr(exc, "sqlstate", None), str)
