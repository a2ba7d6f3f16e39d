"""A deterministic simulation of a group running the pure protocol.

Time is a number; messages are delivered after ``delay``; the claim is a perfect mutex with
a term counter, like the database's advisory lock and term row. No asyncio, no database.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from notifelect import protocol as p
from notifelect.messages import Kind, Message, Rank


@dataclass(order=True)
class _Item:
    at: float
    seq: int
    node: int = field(compare=False)
    event: p.Event = field(compare=False)
    timer_gen: int | None = field(compare=False, default=None)


CONFIG = p.Config(
    election_timeout=0.05,
    leader_timeout=2.0,
    coordinator_wait=0.5,
    heartbeat_interval=0.5,
    preempt=True,
)


class Sim:
    def __init__(self, config: p.Config = CONFIG, delay: float = 0.001, namespace: str = "sim"):
        self.config = config
        self.delay = delay
        self.namespace = namespace
        self.now = 0.0
        self.states: dict[int, p.State] = {}
        self.alive: set[int] = set()
        self.paused: set[int] = set()
        self.queue: list[_Item] = []
        self.seq = itertools.count()
        self.timer_gen: dict[tuple[int, p.Timer], int] = {}
        self.holder: int | None = None
        self.term = 0
        self.renewed: float = 0.0
        self.watchers: set[int] = set()
        self.acting: set[int] = set()  # between Elected and Deposed
        self.max_acting = 0
        self.sent: list[Message] = []
        self.elected_log: list[tuple[float, int, int]] = []

    # ---------------------------------------------------------------- control

    def add(self, node: int, priority: int = 0, at: float | None = None) -> None:
        self.states[node] = p.initial_state(self.namespace, Rank(priority, node), self.config)
        self.alive.add(node)
        self._push(self.now if at is None else at, node, p.Start())

    def stop(self, node: int) -> None:
        others = [n for n in self.alive if n != node]
        successor = max(others, key=lambda n: self.states[n].rank) if others else None
        self._push(self.now, node, p.Stop(successor))

    def crash(self, node: int) -> None:
        """The process dies: its session ends, the database frees its claim."""
        self.alive.discard(node)
        self.acting.discard(node)
        self.watchers.discard(node)
        if self.holder == node:
            self._free()

    def pause(self, node: int) -> None:
        self.paused.add(node)

    def inject(self, node: int, message: Message) -> None:
        self._push(self.now, node, p.Receive(message))

    def leaders(self) -> list[int]:
        return [n for n in self.alive if n not in self.paused and self.states[n].is_leader]

    def run(self, until: float) -> None:
        while self.queue and self.queue[0].at <= until:
            item = heapq.heappop(self.queue)
            self.now = max(self.now, item.at)
            if item.node not in self.alive or item.node in self.paused:
                continue
            if item.timer_gen is not None:
                assert isinstance(item.event, p.TimerFired)
                if self.timer_gen.get((item.node, item.event.timer)) != item.timer_gen:
                    continue
            self.dispatch(item.node, item.event)
        self.now = max(self.now, until)

    def dispatch(self, node: int, event: p.Event) -> None:
        state, effects = p.step(self.states[node], event, self.now)
        self.states[node] = state
        for effect in effects:
            self._perform(node, effect)
        self.max_acting = max(self.max_acting, len(self.acting))

    # ---------------------------------------------------------------- effects

    def _push(self, at: float, node: int, event: p.Event, gen: int | None = None) -> None:
        heapq.heappush(self.queue, _Item(at, next(self.seq), node, event, gen))

    def _broadcast(self, message: Message) -> None:
        self.sent.append(message)
        for other in self.alive:
            self._push(self.now + self.delay, other, p.Receive(message))

    def _free(self, *, clean: bool = False) -> None:
        self.holder = None
        for watcher in list(self.watchers):
            self._push(self.now + self.delay, watcher, p.ClaimFreed(clean))
        self.watchers.clear()

    def _perform(self, node: int, effect: p.Effect) -> None:
        match effect:
            case p.Send(message):
                self._broadcast(message)
            case p.Announce(kind, term):
                if self.holder == node and self.term == term:
                    self.renewed = self.now
                others = [n for n in self.alive if n != node]
                standby = max(others, key=lambda n: self.states[n].rank) if others else None
                rank = self.states[node].rank
                self._broadcast(Message(kind, self.namespace, rank, term=term, standby=standby))
            case p.SetTimer(timer, at):
                gen = self.timer_gen.get((node, timer), 0) + 1
                self.timer_gen[(node, timer)] = gen
                self._push(at, node, p.TimerFired(timer), gen)
            case p.CancelTimer(timer):
                self.timer_gen[(node, timer)] = self.timer_gen.get((node, timer), 0) + 1
            case p.Claim(fence):
                stale = (
                    self.holder in self.paused and self.now - self.renewed >= CONFIG.leader_timeout
                )
                if self.holder is not None and fence and stale:
                    self.crash(self.holder)  # fenced out: its backend is terminated
                if self.holder is None:
                    self.holder = node
                    self.term += 1
                    self.renewed = self.now
                    self._push(self.now + self.delay, node, p.ClaimGranted(self.term))
                else:
                    self._push(self.now + self.delay, node, p.ClaimRefused())
            case p.Elected(term):
                assert self.holder == node
                assert self.term == term
                self.acting.add(node)
                self.elected_log.append((self.now, node, term))
            case p.Deposed():
                self.acting.discard(node)
            case p.Release(term):
                if self.holder == node:
                    self._free(clean=True)
            case p.Watch(active):
                if active:
                    self.watchers.add(node)
                    if self.holder is None:
                        self._free()
                else:
                    self.watchers.discard(node)


def kinds(messages: list[Message]) -> list[Kind]:
    return [m.kind for m in messages]
