"""Forged and arbitrary messages against a simulated group running the pure protocol.

The simulation's claim is a perfect mutex with a term counter, as the database's advisory
lock and term row are. Two groups of properties:

* raw: any sequence of messages reaches the protocol unfiltered, interleaved with joins,
  crashes, clean exits and time passing. The protocol never raises, never has two nodes
  acting as leader, and once the forgeries stop a leader exists again.
* checked: messages pass the group's database check first (``rules.believe``: a leader
  claim must match the leader row, which then stands for it; an election that would depose
  the leader must come from a live member), as ``ElectionGroup`` does. Then forgeries do
  not even move a settled leadership.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifelect import messages, rules
from notifelect import protocol as p
from notifelect.messages import Kind, Message, Rank
from notifelect.transport.base import LeaderRecord
from tests.support.sim import Sim

NS = "sim"
NODE_IDS = st.integers(1, 12) | st.integers(0, 2**63 - 1)
PRIORITIES = st.integers(-2, 2) | st.integers(-(2**31), 2**31 - 1)
TERMS = st.integers(0, 6) | st.integers(0, 2**63 - 1)

forged = st.builds(
    lambda kind, node, priority, term, standby, successor: Message(
        kind,
        NS,
        Rank(priority, node),
        term if kind in (Kind.COORDINATOR, Kind.HEARTBEAT, Kind.RESIGN) else None,
        standby,
        successor,
    ),
    st.sampled_from(list(Kind)),
    NODE_IDS,
    PRIORITIES,
    TERMS,
    st.none() | NODE_IDS,
    st.none() | NODE_IDS,
)


@dataclass(frozen=True)
class Inject:
    target: int | None  # None: broadcast to every live node
    message: Message


@dataclass(frozen=True)
class Junk:
    payload: str


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class Crash:
    index: int


@dataclass(frozen=True)
class Leave:
    index: int


@dataclass(frozen=True)
class Join:
    priority: int


forgery_ops = (
    st.builds(Inject, st.none() | st.integers(0, 7), forged)
    | st.builds(Junk, st.text(max_size=60))
    | st.builds(Advance, st.floats(0.0, 1.5))
)
membership_ops = (
    st.builds(Crash, st.integers(0, 7))
    | st.builds(Leave, st.integers(0, 7))
    | st.builds(Join, st.integers(-1, 2))
)
Op = Inject | Junk | Advance | Crash | Leave | Join


class Harness:
    def __init__(self, priorities: list[int], *, checked: bool) -> None:
        self.sim = Sim(namespace=NS)
        self.checked = checked
        self.next_id = 1
        self.dropped = 0
        for priority in priorities:
            self.join(priority)

    def join(self, priority: int) -> None:
        self.sim.add(self.next_id, priority)
        self.next_id += 1

    def live(self) -> list[int]:
        return sorted(
            n for n in self.sim.alive if self.sim.states[n].role is not p.Role.STOPPED
        ) or [n for n in self.sim.alive if not self.sim.states[n].started]

    def credible(self, target: int, m: Message) -> bool:
        """What the group's driver asks the database (``rules.believe``), against the
        simulated claim."""
        if not self.checked:
            return True
        sim = self.sim
        state = sim.states[target]
        view = rules.View(
            me=target,
            leading=state.is_leader,
            leader_term=state.leader_term,
            verified=None,
            verified_age=0.0,
            leader_timeout=sim.config.leader_timeout,
            preempts=p.preempts(sim.config, m.rank, state.rank),
        )
        while True:
            verdict = rules.believe(m, view)
            if verdict is rules.Ask.RECORD:
                view = dataclasses.replace(view, record=self.record(), record_read=True)
            elif verdict is rules.Ask.MEMBER:
                member = any(
                    sim.states[n].rank == m.rank and sim.states[n].role is not p.Role.STOPPED
                    for n in sim.alive
                )
                view = dataclasses.replace(view, member=member)
            else:
                return verdict.believed

    def record(self) -> LeaderRecord | None:
        """The simulated leader row: the last term, and how long ago it was renewed."""
        sim = self.sim
        if sim.record is None:
            return None
        node, released = sim.record
        quiet = sim.now - sim.renewed
        priority = sim.states[node].rank.priority
        since = datetime.now(UTC)
        return LeaderRecord(node, priority, sim.term, "sim", 1, since, released, quiet, None, quiet)

    def deliver(self, target: int | None, m: Message) -> None:
        nodes = sorted(self.sim.alive)
        if not nodes:
            return
        targets = nodes if target is None else [nodes[target % len(nodes)]]
        for node in targets:
            if not self.credible(node, m):
                self.dropped += 1
            elif self.checked and m.kind in (Kind.COORDINATOR, Kind.HEARTBEAT):
                # As the driver does: what is believed is the leader row that confirms it.
                self.sim._push(self.sim.now, node, self.sim.leader_row())
            else:
                self.sim.inject(node, m)

    def apply(self, op: Op) -> None:
        sim = self.sim
        nodes = sorted(sim.alive)
        match op:
            case Inject(target, message):
                self.deliver(target, message)
            case Junk(payload):
                parsed = messages.parse(payload, NS)
                if isinstance(parsed, Message):
                    self.deliver(None, parsed)
                else:
                    self.dropped += 1
            case Advance():
                pass
            case Crash(index) if nodes:
                sim.crash(nodes[index % len(nodes)])
            case Leave(index) if nodes:
                sim.stop(nodes[index % len(nodes)])
            case Join(priority):
                self.join(priority)
        sim.run(sim.now + (op.seconds if isinstance(op, Advance) else 0.002))
        assert sim.max_acting <= 1, f"two acting leaders: {sim.acting}"
        assert len(sim.leaders()) <= 1, f"two leaders: {sim.leaders()}"

    def settle(self, seconds: float = 12.0) -> None:
        self.sim.run(self.sim.now + seconds)
        assert self.sim.max_acting <= 1

    def running(self) -> list[int]:
        return [n for n in self.sim.alive if self.sim.states[n].role is not p.Role.STOPPED]


def _check_live(h: Harness) -> None:
    running = h.running()
    leaders = h.sim.leaders()
    if running:
        assert len(leaders) == 1, f"no single leader among {running}: {leaders}"
        assert h.sim.holder == leaders[0]
    else:
        assert leaders == []


SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("checked", [False, True], ids=["raw", "checked"])
@SETTINGS
@given(
    st.lists(st.integers(-1, 2), min_size=1, max_size=5),
    st.lists(forgery_ops | membership_ops, max_size=40),
)
def test_message_sequences_never_break_safety_and_a_leader_returns(
    checked: bool, priorities: list[int], ops: list[Op]
) -> None:
    h = Harness(priorities, checked=checked)
    h.sim.run(1.0)
    for op in ops:
        h.apply(op)
    h.settle()
    _check_live(h)


@SETTINGS
@given(st.lists(st.integers(-1, 2), min_size=2, max_size=5), st.lists(forgery_ops, max_size=60))
def test_checked_forgeries_do_not_move_a_settled_leadership(
    priorities: list[int], ops: list[Op]
) -> None:
    h = Harness(priorities, checked=True)
    h.sim.run(2.0)
    _check_live(h)
    before = (h.sim.holder, h.sim.term)
    for op in ops:
        h.apply(op)
    h.settle(3.0)
    assert (h.sim.holder, h.sim.term) == before
    _check_live(h)
