"""The pure protocol, driven by a simulated group with a fake clock, as it ships: the
leader row that each node's session reads once per interval is the leader's heartbeat."""

from __future__ import annotations

import dataclasses

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
    state, effects = p.step(sim.states[1], p.Stop(), sim.now)
    order = [type(e).__name__ for e in effects if not isinstance(e, p.CancelTimer | p.Watch)]
    assert order == ["Deposed", "Release", "Send"]
    send = next(e for e in effects if isinstance(e, p.Send))
    assert send.message.kind is Kind.RESIGN
    # The successor is chosen once, when the RESIGN is sent: from the database's members.
    assert send.message.successor is None
    assert state.role is p.Role.STOPPED


@pytest.mark.parametrize("strict", [True, False], ids=["default", "fast-crash"])
def test_crash_is_noticed_by_the_standby_without_waiting_for_silence(strict: bool) -> None:
    sim = Sim(strict_takeover=strict)
    for node in range(1, 6):
        sim.add(node)
    settle(sim)
    # The standby named in the leader row: among equals, the next node id after the
    # leader's, wrapping around (rules.standby, as the session's SQL).
    assert sim.watchers == {1: 5}
    sim.crash(5)
    t0 = sim.now
    settle(sim, sim.lease + 0.1)
    assert sim.leaders() == [1]
    took = next(t for t, node, _ in sim.elected_log if node == 1) - t0
    if strict:  # nothing proves the process stopped: a whole lease, noticed at once
        assert sim.lease <= took < sim.lease + 0.01
    else:  # the fast crash path: the anchor's end is the proof
        assert took < 0.01


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
    # Detection runs from the last renewal seen, which came up to one interval before;
    # the fenced leader may trust its lease until it ends, so the successor waits it out.
    lower = CONFIG.leader_timeout - sim.interval + sim.lease
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

    keep = Sim(config=p.Config(0.05, 2.0, 0.5, preempt=p.Preempt.NEVER))
    keep.add(1)
    settle(keep)
    keep.add(2, priority=9)
    settle(keep, 3)
    assert keep.leaders() == [1]


def test_steady_state_traffic_is_one_renewal_per_interval_and_no_message() -> None:
    sim = Sim()
    for node in range(1, 11):
        sim.add(node)
    settle(sim)
    before, renewals = len(sim.sent), sim.renewals
    settle(sim, 10.0)
    sent = sim.sent[before:]
    assert set(kinds(sent)) == set()  # the leader row is the heartbeat
    assert 0 < sim.renewals - renewals <= 10.0 / sim.interval + 1


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
    for event in (p.TimerFired(p.Timer.PREEMPT), p.ClaimRefused(), freed):
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
    sim._push(sim.now, 2, p.Abdicate("failed", sim.now + 2.0))
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
    assert sim.watchers == {1: 4}
    _, effects = p.step(sim.states[1], p.ClaimFreed(p.Freed.RELEASED, 4), sim.now)
    assert not any(isinstance(e, p.Claim) for e in effects)
    assert any(isinstance(e, p.SetTimer) and e.timer is p.Timer.COORDINATOR for e in effects)
    _, effects = p.step(sim.states[1], p.ClaimFreed(p.Freed.DIED, 4), sim.now)
    assert p.Claim(fence=False, evidence=4) in effects  # the process is gone: at once
    _, effects = p.step(sim.states[1], p.ClaimFreed(p.Freed.UNOBSERVED, 4), sim.now)
    assert p.Survey() in effects  # nothing seen: an ordinary search, no evidence


# ---------------------------------------------------------------- leadership that sticks


def test_a_newcomer_of_equal_priority_never_preempts() -> None:
    sim = Sim()
    sim.add(1)
    settle(sim)
    for node in range(2, 12):  # a rolling deploy: every newcomer draws a larger sequence
        sim.add(node)
        settle(sim, 3.0)
    assert sim.leaders() == [1]
    assert [node for _, node, _ in sim.elected_log] == [1]


def test_a_higher_priority_newcomer_preempts_only_after_its_hold_off() -> None:
    sim = Sim()
    sim.add(1)
    settle(sim)
    joined = sim.now
    sim.add(2, priority=1)
    settle(sim, CONFIG.join_holdoff / 2)
    assert sim.leaders() == [1]  # still holding off
    settle(sim, CONFIG.join_holdoff)
    assert sim.leaders() == [2]
    took = next(t for t, node, _ in sim.elected_log if node == 2) - joined
    assert CONFIG.join_holdoff <= took < CONFIG.join_holdoff + 0.1
    assert sim.max_acting == 1


def test_a_crash_looping_higher_priority_replica_never_takes_over() -> None:
    sim = Sim()
    sim.add(1)
    settle(sim)
    for node in range(2, 8):  # up for less than its hold-off each time
        sim.add(node, priority=5)
        settle(sim, CONFIG.join_holdoff / 2)
        sim.crash(node)
        settle(sim, 0.5)
    assert sim.leaders() == [1]
    assert [node for _, node, _ in sim.elected_log] == [1]


def test_a_resumed_leader_never_takes_leadership_back() -> None:
    sim = Sim()
    for node in range(1, 4):
        sim.add(node)
    settle(sim)
    sim.pause(3)
    settle(sim, CONFIG.leader_timeout + sim.lease + 1.0)
    assert sim.leaders() == [2]
    sim.paused.discard(3)
    sim.dispatch(3, p.Lost("lease expired"))  # it notices, steps down, reconnects
    sim.states[3] = p.initial_state("sim", Rank(0, 3), CONFIG)
    sim._push(sim.now, 3, p.Start())
    settle(sim, 10.0)
    assert sim.leaders() == [2]


def test_a_node_that_learns_the_claim_is_held_does_not_elect() -> None:
    state = p.initial_state("x", Rank(0, 5), CONFIG)
    state, effects = p.step(state, p.Start(), 0.0)
    assert effects[-1] == p.Survey()
    assert not any(isinstance(e, p.Send) for e in effects)
    state, effects = p.step(state, p.Surveyed(held=True, best=Rank(0, 5)), 0.01)
    assert not any(isinstance(e, p.Send | p.Claim) for e in effects)  # it waits to hear
    assert state.role is p.Role.FOLLOWER
    # A refused claim also means somebody holds it: follow, no election.
    claiming = dataclasses.replace(state, role=p.Role.CLAIMING)
    state, effects = p.step(claiming, p.ClaimRefused(), 0.02)
    assert not any(isinstance(e, p.Send) for e in effects)
    assert state.role is p.Role.FOLLOWER


def test_only_candidates_answer_an_election() -> None:
    lower = Message(Kind.ELECTION, "x", Rank(0, 1))
    follower = dataclasses.replace(
        p.initial_state("x", Rank(0, 5), CONFIG), role=p.Role.FOLLOWER, started=True
    )
    # A follower without a leader, of the same priority: quiet (no ALIVE, no election).
    _, effects = p.step(follower, p.Receive(lower), 1.0)
    assert effects == []
    # A candidate answers.
    electing = dataclasses.replace(follower, role=p.Role.ELECTING)
    _, effects = p.step(electing, p.Receive(lower), 1.0)
    assert [e.message.kind for e in effects if isinstance(e, p.Send)] == [Kind.ALIVE]
    # A follower of strictly higher priority is a rival candidate: it answers and runs.
    higher = dataclasses.replace(follower, rank=Rank(1, 5))
    _, effects = p.step(higher, p.Receive(lower), 1.0)
    sent = [e.message.kind for e in effects if isinstance(e, p.Send)]
    assert sent == [Kind.ALIVE, Kind.ELECTION]


def test_search_timers_are_jittered_and_back_off() -> None:
    state = dataclasses.replace(
        p.initial_state("x", Rank(0, 1), CONFIG), role=p.Role.FOLLOWER, started=True
    )
    delays = []
    for misses in range(2):
        s = dataclasses.replace(state, misses=misses, surveying=True)
        _, effects = p.step(s, p.Surveyed(held=False, best=Rank(0, 9)), 0.0)
        (timer,) = [e for e in effects if isinstance(e, p.SetTimer)]
        assert timer.timer is p.Timer.COORDINATOR
        assert timer.spread > 0  # jittered
        delays.append(timer.at)
    assert delays[1] == 2 * delays[0]  # backed off
    # After two misses it stops waiting for the better candidate and claims itself.
    s = dataclasses.replace(state, misses=2, surveying=True)
    _, effects = p.step(s, p.Surveyed(held=False, best=Rank(0, 9)), 0.0)
    assert p.Claim(fence=False) in effects


def test_a_burst_of_elections_costs_the_leader_nothing() -> None:
    # The candidates learn who leads from the database (a refused claim, the leader row):
    # the leader sends nothing, however many run.
    sim = Sim()
    sim.add(1)
    settle(sim)
    leader = sim.states[1]
    for node in range(2, 50):
        leader, effects = p.step(
            leader, p.Receive(Message(Kind.ELECTION, "sim", Rank(0, node))), sim.now
        )
        assert effects == []
    assert leader.is_leader


def test_a_resign_that_names_a_node_mid_claim_makes_it_claim_again() -> None:
    state = dataclasses.replace(
        p.initial_state("x", Rank(0, 2), CONFIG), role=p.Role.CLAIMING, started=True
    )
    resign = Message(Kind.RESIGN, "x", Rank(0, 3), term=7, successor=2)
    state, effects = p.step(state, p.Receive(resign), 0.0)
    assert state.successor_named
    state, effects = p.step(state, p.ClaimRefused(), 0.01)
    assert p.Claim(fence=False) in effects  # not a wait of coordinator_wait + an election
    assert state.role is p.Role.CLAIMING


@pytest.mark.parametrize("n", [50, 100])
def test_many_nodes_with_costly_deliveries_settle_on_one_leader(n: int) -> None:
    # Each delivery costs its receiver 0.5 ms: a burst of N broadcasts (N^2 deliveries)
    # would keep every node busy for N * N * 0.5 ms, longer than the timers that start
    # more broadcasts (congestion collapse). One search round ends with one claim.
    sim = Sim(cost=0.0005)
    for node in range(1, n + 1):
        sim.add(node, at=node * 0.01)  # joins spread over n * 10 ms, as processes start
    settle(sim, n * 0.01 + 2.0)
    assert len(sim.leaders()) == 1
    (leader,) = sim.leaders()
    assert sim.known_leaders() == {leader}  # every node knows it
    assert len(sim.elected_log) == 1  # one term
    elections = sum(1 for m in sim.sent if m.kind is Kind.ELECTION)
    assert elections == 0  # the database said who should claim: nobody had to ask
    assert sim.claims <= 3
    assert sim.backlog() < n  # nobody is drowning


def test_steady_state_renewals_per_interval_are_flat_in_n() -> None:
    per_interval = []
    for n in (2, 10, 50):
        sim = Sim()
        for node in range(1, n + 1):
            sim.add(node)
        settle(sim, 2.0)
        before, renewals = len(sim.sent), sim.renewals
        settle(sim, 10.0)
        assert len(sim.sent) == before  # no message at all
        per_interval.append((sim.renewals - renewals) / (10.0 / sim.interval))
    assert max(per_interval) <= 1.05
    assert min(per_interval) >= 0.95


def test_a_newcomer_follows_the_leader_the_database_names_at_once() -> None:
    state = p.initial_state("x", Rank(0, 9), CONFIG)
    state, _ = p.step(state, p.Start(), 0.0)
    state, effects = p.step(state, p.Surveyed(True, Rank(0, 9), Rank(0, 3), 42), 0.01)
    assert state.leader == Rank(0, 3)
    assert state.leader_term == 42
    assert p.SetTimer(p.Timer.LEADER, 0.01 + CONFIG.leader_timeout) in effects
    assert not any(isinstance(e, p.Send | p.Claim) for e in effects)


@pytest.mark.parametrize(("standby", "watches"), [(9, 3), (7, None), (None, None)])
def test_a_newcomer_named_standby_by_the_survey_watches_the_leader_at_once(
    standby: int | None, watches: int | None
) -> None:
    # The standby learns that it is one from the answer that names the leader, not an
    # interval later: a crash right after a cold start is a crash like any other.
    state = p.initial_state("x", Rank(0, 9), CONFIG)
    state, _ = p.step(state, p.Start(), 0.0)
    surveyed = p.Surveyed(True, Rank(0, 9), Rank(0, 3), 42, standby)
    state, effects = p.step(state, surveyed, 0.01)
    assert state.leader == Rank(0, 3)
    assert state.watching == watches
    assert [e for e in effects if isinstance(e, p.Watch)] == (
        [] if watches is None else [p.Watch(3)]
    )
    # The leader row, read at the next interval, names the same standby: nothing changes.
    seen = p.LeaderSeen(Rank(0, 3), 42, standby, renewed_at=0.4)
    state, effects = p.step(state, seen, 0.5)
    assert state.watching == watches
    assert not any(isinstance(e, p.Watch) for e in effects)


def test_a_leadership_whose_watch_saw_nothing_is_not_watched_again() -> None:
    # The standby's watch found no anchor held (the leader was gone already, or leads on
    # a borrowed connection): the search that follows names the same leadership, and
    # watching it again would end at once, again and again, the leader timer never
    # firing. It is left to its renewals (or their silence) until its term changes.
    state = p.initial_state("x", Rank(0, 9), CONFIG)
    state, _ = p.step(state, p.Start(), 0.0)
    state, effects = p.step(state, p.Surveyed(True, Rank(0, 9), Rank(0, 3), 42, 9), 0.01)
    assert p.Watch(3) in effects
    state, effects = p.step(state, p.ClaimFreed(p.Freed.UNOBSERVED, 3), 0.02)
    assert state.watching is None
    assert p.Survey() in effects
    state, effects = p.step(state, p.Surveyed(True, Rank(0, 9), Rank(0, 3), 42, 9), 0.03)
    assert state.leader == Rank(0, 3)
    assert state.watching is None
    assert not any(isinstance(e, p.Watch) for e in effects)
    timer = [e for e in effects if isinstance(e, p.SetTimer) and e.timer is p.Timer.LEADER]
    assert timer  # the leader's silence is timed from here
    state, effects = p.step(state, p.LeaderSeen(Rank(0, 3), 42, 9, renewed_at=0.03), 0.04)
    assert not any(isinstance(e, p.Watch) for e in effects)
    # A new term of that leader is watched again.
    state, effects = p.step(state, p.LeaderSeen(Rank(0, 3), 43, 9, renewed_at=0.05), 0.06)
    assert p.Watch(3) in effects


def test_a_refused_fencing_claim_looks_again_soon_without_backing_off() -> None:
    state = dataclasses.replace(
        p.initial_state("x", Rank(0, 2), CONFIG),
        role=p.Role.CLAIMING,
        started=True,
        fencing=True,
        misses=3,
    )
    _, effects = p.step(state, p.ClaimRefused(), 10.0)
    (timer,) = [e for e in effects if isinstance(e, p.SetTimer)]
    assert timer.timer is p.Timer.LEADER
    assert timer.at == 10.0 + CONFIG.leader_timeout / 2  # not leader_timeout * 2**misses


# ---------------------------------------------------------------- the leader row as heartbeat


def _following(seen_at: float = 0.0) -> p.State:
    state = dataclasses.replace(
        p.initial_state("x", Rank(0, 2), CONFIG), role=p.Role.FOLLOWER, started=True
    )
    state, _ = p.step(state, p.LeaderSeen(Rank(0, 5), 7, 2, seen_at), seen_at)
    return state


def test_the_leader_row_makes_a_follower_and_names_the_standby() -> None:
    state = dataclasses.replace(
        p.initial_state("x", Rank(0, 2), CONFIG), role=p.Role.FOLLOWER, started=True
    )
    state, effects = p.step(state, p.LeaderSeen(Rank(0, 5), 7, 2, 0.9), 1.0)
    assert (state.leader, state.leader_term) == (Rank(0, 5), 7)
    assert p.Watch(5) in effects  # named the standby: it watches the leader's process
    assert p.SetTimer(p.Timer.LEADER, 0.9 + CONFIG.leader_timeout) in effects
    # The same row an interval later moves only the sighting on: no effect at all.
    state, effects = p.step(state, p.LeaderSeen(Rank(0, 5), 7, 2, 1.4), 1.5)
    assert effects == []
    assert state.leader_seen_at == 1.4
    # Another standby named: this node stops watching.
    state, effects = p.step(state, p.LeaderSeen(Rank(0, 5), 7, 3, 1.9), 2.0)
    assert p.Watch(None) in effects


def test_the_leader_timer_waits_on_while_renewals_are_seen_and_searches_once_silent() -> None:
    state = _following(seen_at=0.0)
    state, _ = p.step(state, p.LeaderSeen(Rank(0, 5), 7, 2, 1.5), 1.5)
    state, effects = p.step(state, p.TimerFired(p.Timer.LEADER), CONFIG.leader_timeout)
    assert effects == [p.SetTimer(p.Timer.LEADER, 1.5 + CONFIG.leader_timeout)]
    assert state.leader == Rank(0, 5)
    # No renewal seen since: silent, a search that may fence it.
    state, effects = p.step(state, p.TimerFired(p.Timer.LEADER), 1.5 + CONFIG.leader_timeout)
    assert p.Survey() in effects
    assert state.leader is None
    assert state.fencing


@pytest.mark.parametrize(
    ("what", "seen"),
    [
        ("the row of a leader that stopped renewing", p.LeaderSeen(Rank(0, 5), 7, 2, 0.0)),
        (
            "a released term of a leader it did not follow",
            p.LeaderSeen(Rank(0, 5), 7, 2, 9.9, True),
        ),
        ("a row of an older term", p.LeaderSeen(Rank(0, 5), 6, 2, 9.9)),
    ],
)
def test_rows_that_show_no_leader_alive_are_not_followed(what: str, seen: p.LeaderSeen) -> None:
    state = dataclasses.replace(
        p.initial_state("x", Rank(0, 2), CONFIG),
        role=p.Role.FOLLOWER,
        started=True,
        leader_term=7,
    )
    new, effects = p.step(state, seen, 10.0)
    assert new.leader is None
    assert effects == []


def test_a_follower_lets_a_released_leader_go_and_its_successor_still_claims() -> None:
    # The RESIGN of a hand-over goes to the successor alone: the others learn of it
    # from the leader row, which shows the term given back.
    state = _following(seen_at=0.0)
    state, effects = p.step(state, p.LeaderSeen(Rank(0, 5), 7, 2, 0.4, True), 0.5)
    assert state.leader is None
    assert p.CancelTimer(p.Timer.LEADER) in effects
    assert [e.timer for e in effects if isinstance(e, p.SetTimer)] == [p.Timer.COORDINATOR]
    assert not any(isinstance(e, p.Claim | p.Survey) for e in effects)
    # The RESIGN naming this node, read after the row: it claims at once all the same.
    resign = Message(Kind.RESIGN, "x", Rank(0, 5), term=7, successor=2)
    state, effects = p.step(state, p.Receive(resign), 0.5)
    assert p.Claim(fence=False) in effects


@pytest.mark.parametrize("kind", [Kind.COORDINATOR, Kind.HEARTBEAT])
def test_announcements_of_older_nodes_move_nothing_in_the_protocol(kind: Kind) -> None:
    # An older node may still send them; the driver checks one against the database and
    # hands on the leader row that confirms it. The message itself does nothing.
    state = dataclasses.replace(
        p.initial_state("x", Rank(0, 2), CONFIG), role=p.Role.FOLLOWER, started=True
    )
    message = Message(kind, "x", Rank(9, 9), term=99, standby=2)
    new, effects = p.step(state, p.Receive(message), 1.0)
    assert (new, effects) == (state, [])


def test_a_hundred_nodes_at_half_a_millisecond_per_delivery_end_with_one_term_no_backlog() -> None:
    n = 100
    sim = Sim(cost=0.0005)
    for node in range(1, n + 1):
        sim.add(node, at=node * 0.01)
    settle(sim, n * 0.01 + 5.0)
    (leader,) = sim.leaders()
    assert len(sim.elected_log) == 1  # one term
    assert sim.known_leaders() == {leader}
    assert sim.backlog() == 0
    assert sim.reads > 0  # the leader row is what carried it
    assert sim.renewals > 0
