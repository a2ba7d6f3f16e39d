"""A deterministic simulation of a group running the pure protocol, as it ships.

Time is a number; messages are delivered after ``delay``; the claim is a perfect mutex with
a term counter, like the database's advisory lock and term row, and surveys read the
claim and the live members as the database would. No asyncio, no database.

Each node ticks once per ``interval`` as an election session does: the claim holder
renews its lease and records its standby, every other node reads the leader row and
hands it to its protocol (``LeaderSeen``). The rules are the package's own
(``notifelect.rules``): standby and successor, the take-over wait, how a watched
leadership ended, when a silent holder may be fenced.

Each node handles its events one at a time, and with ``cost`` every message it handles
takes that long: a node that receives more than it can handle builds a backlog, as a real
process does under a burst of notifications. Its own timers and the answers of the
database go before queued messages, as in the driver. Jitter is drawn from a seeded RNG.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from notifelect import protocol as p
from notifelect import rules
from notifelect.messages import Kind, Message, Rank


@dataclass(order=True)
class _Item:
    at: float
    seq: int
    node: int = field(compare=False)
    event: p.Event | None = field(compare=False)  # None: the node's turn to handle one event
    timer_gen: int | None = field(compare=False, default=None)
    #: Instead of an event: something the database or the node's session does.
    call: Callable[[], None] | None = field(compare=False, default=None)


CONFIG = p.Config(
    election_timeout=0.05,
    leader_timeout=2.0,
    coordinator_wait=0.5,
    join_holdoff=2.0,
)
CLASSIC = p.Config(
    election_timeout=0.05,
    leader_timeout=2.0,
    coordinator_wait=0.5,
    preempt=p.Preempt.RANK,
)


class Sim:
    def __init__(
        self,
        config: p.Config = CONFIG,
        delay: float = 0.001,
        namespace: str = "sim",
        *,
        lease: float = 2.0,
        cost: float = 0.0,
        seed: int = 1,
        strict_takeover: bool = True,
        interval: float = 0.5,
    ):
        self.config = config
        self.interval = interval
        self.delay = delay
        self.cost = cost
        self.lease = lease
        self.strict_takeover = strict_takeover
        self.namespace = namespace
        self.rng = random.Random(seed)
        self.now = 0.0
        self.states: dict[int, p.State] = {}
        self.alive: set[int] = set()
        self.registered: dict[int, float] = {}
        self.paused: set[int] = set()
        self.queue: list[_Item] = []
        self.inbox: dict[int, tuple[collections.deque[p.Event], collections.deque[p.Event]]] = {}
        self.busy_until: dict[int, float] = {}
        self.scheduled: set[int] = set()
        self.seq = itertools.count()
        self.timer_gen: dict[tuple[int, p.Timer], int] = {}
        self.holder: int | None = None
        self.holder_since = 0.0  # when the holder took the claim
        self.record: tuple[int, bool] | None = None  # (node, released) of the last term
        self.standby: int | None = None  # as the leader row records it
        self.term = 0
        self.renewed: float = 0.0
        self.renewals = 0  # lease renewals written by leaders' ticks
        self.reads = 0  # leader rows read by the other nodes' ticks
        self.watchers: dict[int, int] = {}  # watcher -> leader it watches
        self.acting: set[int] = set()  # between Elected and Deposed
        self.lapses: dict[int, float] = {}  # a paused leader stops acting when its lease ends
        self.max_acting = 0
        self.sent: list[Message] = []
        self.deliveries = 0
        self.handled = 0
        self.surveys = 0
        self.claims = 0
        self.elected_log: list[tuple[float, int, int]] = []

    # ---------------------------------------------------------------- control

    def add(self, node: int, priority: int = 0, at: float | None = None) -> None:
        self.states[node] = p.initial_state(self.namespace, Rank(priority, node), self.config)
        self.registered[node] = self.now if at is None else at  # its member row
        self.alive.add(node)
        self.inbox[node] = (collections.deque(), collections.deque())
        start = self.now if at is None else at
        self._push(start, node, p.Start())
        self._call(start + self.interval, node, lambda: self._tick(node))

    def stop(self, node: int) -> None:
        self._push(self.now, node, p.Stop())

    def _members(self) -> list[tuple[int, int]]:
        """The live members, as (priority, node)."""
        return [(self.states[n].rank.priority, n) for n in self.alive]

    def _call(self, at: float, node: int, call: Callable[[], None]) -> None:
        heapq.heappush(self.queue, _Item(at, next(self.seq), node, None, call=call))

    def _tick(self, node: int) -> None:
        """``node``'s session ticks: it renews the lease of the term it holds, or reads the
        leader row. A paused session skips its ticks; a dead one ticks no more."""
        if node not in self.alive:
            return
        self._call(self.now + self.interval, node, lambda: self._tick(node))
        if node in self.paused or self.record is None:
            return
        leader, released = self.record
        if leader == node:
            if self.holder == node and not released:
                self.renewed = self.now
                self.standby = rules.standby(self._members(), node)
                self.renewals += 1
            return
        self.reads += 1
        self._push(self.now + self.delay, node, self.leader_row())

    def leader_row(self) -> p.LeaderSeen:
        """The leader row as read now (one clock for every node: the renewal's age is
        exact)."""
        assert self.record is not None
        leader, released = self.record
        rank = self.states[leader].rank
        return p.LeaderSeen(rank, self.term, self.standby, self.renewed, released)

    def crash(self, node: int) -> None:
        """The process dies: its session and anchor end, the database frees its claim."""
        self.alive.discard(node)
        self.acting.discard(node)
        self.watchers.pop(node, None)
        if self.holder == node:
            self.holder = None
        for watcher, leader in list(self.watchers.items()):
            if leader == node:
                del self.watchers[watcher]
                self._push(self.now + self.delay, watcher, p.ClaimFreed(self._how(node), node))

    def pause(self, node: int) -> None:
        self.paused.add(node)

    def inject(self, node: int, message: Message) -> None:
        self._push(self.now, node, p.Receive(message))

    def leaders(self) -> list[int]:
        return [n for n in self.alive if n not in self.paused and self.states[n].is_leader]

    def known_leaders(self) -> set[int | None]:
        """Who each live, unpaused node believes leads."""
        return {
            None if self.states[n].leader is None else self.states[n].leader.node  # type: ignore[union-attr]
            for n in self.alive
            if n not in self.paused
        }

    def backlog(self) -> int:
        return sum(len(u) + len(m) for u, m in self.inbox.values())

    def run(self, until: float) -> None:
        while self.queue and self.queue[0].at <= until:
            item = heapq.heappop(self.queue)
            self.now = max(self.now, item.at)
            if item.call is not None:
                item.call()
                continue
            if item.node not in self.alive or item.node in self.paused:
                continue
            if item.event is None:
                self._turn(item.node)
                continue
            if item.timer_gen is not None:
                assert isinstance(item.event, p.TimerFired)
                if self.timer_gen.get((item.node, item.event.timer)) != item.timer_gen:
                    continue
            urgent, messages = self.inbox[item.node]
            (messages if isinstance(item.event, p.Receive) else urgent).append(item.event)
            self._schedule(item.node)
        self.now = max(self.now, until)

    def _schedule(self, node: int) -> None:
        if node not in self.scheduled:
            self.scheduled.add(node)
            at = max(self.now, self.busy_until.get(node, 0.0))
            heapq.heappush(self.queue, _Item(at, next(self.seq), node, None))

    def _turn(self, node: int) -> None:
        self.scheduled.discard(node)
        urgent, messages = self.inbox[node]
        if not (urgent or messages):
            return
        event = urgent.popleft() if urgent else messages.popleft()
        if isinstance(event, p.Receive):
            self.busy_until[node] = self.now + self.cost
        self.handled += 1
        self.dispatch(node, event)
        if urgent or messages:
            self._schedule(node)

    def dispatch(self, node: int, event: p.Event) -> None:
        for other, at in list(self.lapses.items()):
            if at <= self.now:
                self.acting.discard(other)
                del self.lapses[other]
        state, effects = p.step(self.states[node], event, self.now)
        self.states[node] = state
        for effect in effects:
            self._perform(node, effect)
        self.max_acting = max(self.max_acting, len(self.acting))

    # ---------------------------------------------------------------- effects

    def _push(self, at: float, node: int, event: p.Event, gen: int | None = None) -> None:
        heapq.heappush(self.queue, _Item(at, next(self.seq), node, event, gen))

    def _send(self, message: Message) -> None:
        """To the group, or to its one addressee (as the driver sends it)."""
        self.sent.append(message)
        to = rules.addressee(message)
        for other in self.alive if to is None else [to] if to in self.alive else []:
            self.deliveries += 1
            self._push(self.now + self.delay, other, p.Receive(message))

    def _how(self, leader: int) -> p.Freed:
        """A watcher registers while its leader lives: it always saw the process alive."""
        recorded, released = self.record or (None, False)
        return rules.how_it_ended(leader, recorded, released, observed=True)

    def _best(self) -> Rank | None:
        skip = self.record[0] if self.holder is not None and self.record else None
        registered = [
            (priority, n) for priority, n in self._members() if self.registered[n] <= self.now
        ]
        best = rules.best_candidate(registered, skip)
        return None if best is None else Rank(*best)

    def _perform(self, node: int, effect: p.Effect) -> None:
        match effect:
            case p.Send(message):
                if message.kind is Kind.RESIGN and message.successor is None:
                    # As the driver does: the best other live member, from the database.
                    heir = rules.successor(self._members(), node)
                    message = dataclasses.replace(message, successor=heir)
                self._send(message)
            case p.SetTimer(timer, at, spread):
                gen = self.timer_gen.get((node, timer), 0) + 1
                self.timer_gen[(node, timer)] = gen
                self._push(at + self.rng.uniform(0, spread), node, p.TimerFired(timer), gen)
            case p.CancelTimer(timer):
                self.timer_gen[(node, timer)] = self.timer_gen.get((node, timer), 0) + 1
            case p.Survey():
                self.surveys += 1
                self._push(self.now + self.delay, node, self._surveyed())
            case p.Claim(fence, evidence):
                self.claims += 1
                self._claim(node, fence, evidence)
            case p.Elected(term):
                assert self.holder == node
                assert self.term == term
                self.acting.add(node)
                self.elected_log.append((self.now, node, term))
            case p.Deposed():
                self.acting.discard(node)
            case p.Release(term):
                if self.holder == node:
                    self.holder = None
                    self.record = (node, True)
                    for watcher, leader in list(self.watchers.items()):
                        if leader == node:
                            del self.watchers[watcher]
                            self._push(
                                self.now + self.delay, watcher, p.ClaimFreed(p.Freed.RELEASED, node)
                            )
            case p.Watch(leader):
                self.watchers.pop(node, None)
                if leader is not None and leader in self.alive:
                    self.watchers[node] = leader
                elif leader is not None:  # already gone: nothing was seen
                    freed = p.ClaimFreed(p.Freed.UNOBSERVED, leader)
                    self._push(self.now + self.delay, node, freed)

    def _surveyed(self) -> p.Surveyed:
        held = self.holder is not None
        if not held or self.record is None or self.record[1]:
            return p.Surveyed(held, self._best())
        leader = self.record[0]
        return p.Surveyed(held, self._best(), self.states[leader].rank, self.term)

    def _may_fence(self) -> bool:
        """Whether the claim holder has been silent long enough to be fenced."""
        recorded = self.record is not None and self.record[0] == self.holder
        quiet = self.now - (self.renewed if recorded else self.holder_since)
        timeout = self.config.leader_timeout
        return rules.may_fence(
            recorded=recorded,
            quiet_for=quiet,
            leader_timeout=timeout,
            lease=self.lease,
            io_timeout=max(self.lease, timeout),
        )

    def _claim(self, node: int, fence: bool, evidence: int | None) -> None:
        fenced = False
        if self.holder is not None and fence and evidence is None and self._may_fence():
            # Fenced out: its backend is terminated, its process lives on until its lease
            # (from its last renewal) runs out.
            self.lapses[self.holder] = self.renewed + self.lease
            self.holder = None
            fenced = True
        if self.holder is not None:
            self._push(self.now + self.delay, node, p.ClaimRefused())
            return
        self.holder = node
        self.holder_since = self.now
        wait, _ = rules.takeover_wait(
            previous=None if self.record is None else self.record[0],
            released=self.record is not None and self.record[1],
            me=node,
            fenced=fenced,
            strict=self.strict_takeover,
            evidence=evidence,
            lease=self.lease,
            recorded_lease=None,
        )
        self._call(self.now + wait, node, lambda: self._grant(node))

    def _grant(self, node: int) -> None:
        """The claimant takes the next term (after waiting out the old lease, if it had
        to), recorded with its standby."""
        if self.holder != node:
            return  # it died while it waited
        self.term += 1
        self.record = (node, False)
        self.renewed = self.now
        self.standby = rules.standby(self._members(), node)
        self._push(self.now + self.delay, node, p.ClaimGranted(self.term))


def kinds(messages: list[Message]) -> list[Kind]:
    return [m.kind for m in messages]
