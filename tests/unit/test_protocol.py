"""The pure protocol, driven by a simulated group with a fake clock."""

from __future__ import annotations

import pytest

from notifelect import protocol as p
from notifelect.messages import Kind, Message, Rank
from tests.support.sim import CLASSIC, CONFIG, Sim, kinds


def settle(sim: Sim, seconds: float = 1.0) -> None:
    sim.run(sim.now + seconds)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 25])
def test_cold_start_elects_exactly_the_highest(n: int) -> None:
    sim = Sim()
    for node in range(1, n + 1):
        sim.add(node)
    settle(sim)
    assert sim.leaders() == [n]
    assert sim.max_acting == 1
    # The winner claims once the election timeout passes: well under a second.
    assert sim.elected_log[0][0] < 0.1


def test_priority_beats_sequence() -> None:
    sim = Sim()
    sim.add(1, priority=5)
    for node in range(2, 6):
        sim.add(node)
    settle(sim)
    assert sim.leaders() == [1]


def test_clean_resign_hands_over_to_named_successor_at_once() -> None:
    sim = Sim()
    for node in range(1, 6):
        sim.add(node)
    settle(sim)
    sim.stop(5)
    t0 = sim.now
    settle(sim, 0.1)
    assert sim.leaders() == [4]
    handover = next(t for t, node, _ in sim.elected_log if node == 4) - t0
    assert handover < 0.01  # a few message delays, no election timeout
    assert sim.max_acting == 1


def test_resign_effects_are_ordered_work_then_claim_then_message() -> None:
    sim = Sim()
    sim.add(1)
    settle(sim)
    state, effects = p.step(sim.states[1], p.Stop(successor=2), sim.now)
    order = [type(e).__name__ for e in effects if not isinstance(e, p.CancelTimer | p.Watch)]
    assert order == ["Deposed", "Release", "Send"]
    send = next(e for e in effects if isinstance(e, p.Send))
    assert send.message.kind is Kind.RESIGN
    assert send.message.successor == 2
    assert state.role is p.Role.STOPPED


def test_crash_is_noticed_by_the_standby_without_waiting_for_heartbeats() -> None:
    sim = Sim()
    for node in range(1, 6):
        sim.add(node)
    settle(sim)
    assert sim.watchers == {4: 5}  # named standby in the leader's announcement
    sim.crash(5)
    t0 = sim.now
    settle(sim, 0.1)
    assert sim.leaders() == [4]
    assert next(t for t, node, _ in sim.elected_log if node == 4) - t0 < 0.01


def test_paused_leader_is_fenced_after_leader_timeout_then_its_lease_is_waited_out() -> None:
    sim = Sim()
    for node in range(1, 4):
        sim.add(node)
    settle(sim)
    sim.pause(3)
    t0 = sim.now
    settle(sim, CONFIG.leader_timeout + sim.lease + 1.0)
    assert sim.leaders() == [2]
    took = next(t for t, node, _ in sim.elected_log if node == 2) - t0
    # Detection runs from the last heartbeat heard, which came up to one interval before;
    # the fenced leader may trust its lease until it ends, so the successor waits it out.
    lower = CONFIG.leader_timeout - CONFIG.heartbeat_interval + sim.lease
    assert lower <= took < CONFIG.leader_timeout + sim.lease + 0.05
    assert sim.max_acting == 1


def test_classic_bully_lets_a_higher_newcomer_preempt_and_never_keeps_the_incumbent() -> None:
    sim = Sim(config=CLASSIC)
    sim.add(1)
    settle(sim)
    sim.add(2)
    settle(sim)
    assert sim.leaders() == [2]
    assert sim.max_acting == 1

    keep = Sim(config=p.Config(0.05, 2.0, 0.5, 0.5, preempt=p.Preempt.NEVER))
    keep.add(1)
    settle(keep)
    keep.add(2, priority=9)
    settle(keep, 3)
    assert keep.leaders() == [1]


def test_steady_state_traffic_is_one_heartbeat_per_interval() -> None:
    sim = Sim()
    for node in range(1, 11):
        sim.add(node)
    settle(sim)
    before = len(sim.sent)
    settle(sim, 10.0)
    sent = sim.sent[before:]
    assert set(kinds(sent)) == {Kind.HEARTBEAT}
    assert len(sent) <= 10.0 / CONFIG.heartbeat_interval + 1


def test_forged_and_foreign_messages_do_not_create_a_leader() -> None:
    sim = Sim()
    for node in range(1, 4):
        sim.add(node)
    settle(sim)
    forged = Message(Kind.COORDINATOR, "sim", Rank(99, 99), term=999, standby=1)
    other = Message(Kind.ELECTION, "elsewhere", Rank(99, 98))
    for node in (1, 2, 3):
        sim.inject(node, forged)
        sim.inject(node, other)
    settle(sim, 5.0)
    assert sim.leaders() == [3]
    assert sim.max_acting == 1


def test_stale_timer_and_claim_events_are_ignored() -> None:
    state = p.initial_state("x", Rank(0, 1), CONFIG)
    freed = p.ClaimFreed(p.Freed.DIED, 2)
    for event in (p.TimerFired(p.Timer.HEARTBEAT), p.ClaimRefused(), freed):
        new, effects = p.step(state, event, 0.0)
        assert new == state
        assert effects == []
    # A claim granted after the node stopped is handed back at once.
    _, effects = p.step(state, p.ClaimGranted(7), 0.0)
    assert effects == [p.Release(7)]


def test_connection_loss_deposes_without_release() -> None:
    sim = Sim()
    sim.add(1)
    settle(sim)
    state, effects = p.step(sim.states[1], p.Lost("connection lost"), sim.now)
    assert state.role is p.Role.STOPPED
    assert any(isinstance(e, p.Deposed) for e in effects)
    assert not any(isinstance(e, p.Release | p.Send) for e in effects)


def test_abdicating_leader_stays_out_then_returns() -> None:
    sim = Sim()
    sim.add(1)
    sim.add(2)
    settle(sim)
    assert sim.leaders() == [2]
    sim._push(sim.now, 2, p.Abdicate("failed", 1, sim.now + 2.0))
    settle(sim, 0.5)
    assert sim.leaders() == [1]  # 2 does not challenge while abstaining
    settle(sim, 3.0)
    assert sim.max_acting == 1


def test_newcomer_fences_a_silent_leader_it_never_heard() -> None:
    # A higher-ranked node joins just as the leader falls silent: its own claim is refused
    # and it never hears a leader, yet it must go on to fence the silent holder.
    sim = Sim()
    for node in range(1, 4):
        sim.add(node)
    settle(sim)
    sim.pause(3)
    sim.add(4)
    settle(sim, 3 * CONFIG.leader_timeout)
    assert sim.leaders() == [4]
    assert sim.max_acting == 1


def test_standby_leaves_a_cleanly_released_claim_to_the_named_successor() -> None:
    sim = Sim()
    for node in range(1, 5):
        sim.add(node)
    settle(sim)
    assert sim.watchers == {3: 4}
    _, effects = p.step(sim.states[3], p.ClaimFreed(p.Freed.RELEASED, 4), sim.now)
    assert not any(isinstance(e, p.Claim) for e in effects)
    assert any(isinstance(e, p.SetTimer) and e.timer is p.Timer.COORDINATOR for e in effects)
    _, effects = p.step(sim.states[3], p.ClaimFreed(p.Freed.DIED, 4), sim.now)
    assert p.Claim(fence=False, evidence=4) in effects  # the process is gone: at once
    _, effects = p.step(sim.states[3], p.ClaimFreed(p.Freed.UNOBSERVED, 4), sim.now)
    assert p.Survey() in effects  # nothing seen: an ordinary search, no evidence
