"""The election's rules, one table each: every row reads like a line of the docs."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from notifelect.messages import Kind, Message, Rank
from notifelect.rules import (
    Ask,
    Belief,
    Freed,
    Sighting,
    StayOut,
    View,
    abstaining,
    addressee,
    believe,
    best_candidate,
    ended_cleanly,
    how_it_ended,
    leader_silent,
    lease_age,
    lease_end,
    lease_holds,
    lease_left,
    lease_recheck,
    may_fence,
    may_fence_guard,
    sight,
    silent_from,
    standby,
    stay_out,
    successor,
    takeover_wait,
    unchanged_for,
)
from notifelect.transport.base import LeaderRecord

LEADER = (7, 100)  # node, term

#: (what happens, what was seen before, the reading: subject, mark, database age, at,
#:  how long it has been quiet then)
SIGHTINGS = [
    (
        "first reading, renewed 0.2 s ago by the database's clock",
        None,
        (LEADER, "r1", 0.2, 10.0),
        0.2,
    ),
    ("first reading, the database cannot say", None, (LEADER, "r1", None, 10.0), 0.0),
    (
        "first reading after the database's clock stepped back: the renewal lies in its future",
        None,
        (LEADER, "r1", -60.0, 10.0),
        0.0,
    ),
    (
        "the renewal changed: a sign of life now",
        Sighting(LEADER, "r1", 5.0),
        (LEADER, "r2", 0.1, 10.0),
        0.0,
    ),
    (
        "the renewal did not change: quiet since it last did, whatever the database's age",
        Sighting(LEADER, "r1", 5.0),
        (LEADER, "r1", -3600.0, 10.0),
        5.0,
    ),
    (
        "unchanged, and the database's clock jumped a year ahead: still only as quiet as seen",
        Sighting(LEADER, "r1", 9.0),
        (LEADER, "r1", 365 * 86400.0, 10.0),
        1.0,
    ),
    (
        "a new term of another leader starts a new sighting",
        Sighting(LEADER, "r1", 1.0),
        ((8, 101), "r1", 0.5, 10.0),
        0.5,
    ),
]


@pytest.mark.parametrize(
    ("what", "before", "reading", "quiet"), SIGHTINGS, ids=[row[0] for row in SIGHTINGS]
)
def test_silence_is_judged_on_this_nodes_clock(
    what: str,
    before: Sighting | None,
    reading: tuple[tuple[int, int], str, float | None, float],
    quiet: float,
) -> None:
    subject, mark, age, at = reading
    seen = sight(before, subject, mark, age, at)
    assert seen.subject == subject
    assert seen.mark == mark
    assert unchanged_for(seen, at) == pytest.approx(quiet)


def test_quiet_never_goes_negative() -> None:
    assert unchanged_for(Sighting(LEADER, "r1", 10.0), 9.0) == 0.0


#: (what happened, ended cleanly, how long the term row has been found held, may fence)
GUARDS = [
    ("the leader was cut off or paused: the claimant waited out its lease", False, 0.0, True),
    ("the leader's process was seen to end (the fast crash path)", False, 0.0, True),
    ("a clean hand-over: a guarded write may still be committing", True, 0.0, False),
    ("a clean hand-over, the write still open half a lease later", True, 0.75, False),
    ("a clean hand-over, the write still open a lease later: stuck", True, 1.5, True),
]


@pytest.mark.parametrize(("what", "clean", "held_for", "may"), GUARDS, ids=[g[0] for g in GUARDS])
def test_a_guarded_transaction_of_an_ended_leadership_is_fenced(
    what: str, clean: bool, held_for: float, may: bool
) -> None:
    assert may_fence_guard(clean, held_for, lease=1.5) is may


#: (what happened, previous leader, released, fenced, strict, evidence, wait, why)
WAITS = [
    ("the group never had a leader", None, False, False, True, None, 0.0, None),
    ("the leader resigned: a clean hand-over", 5, True, False, True, None, 0.0, None),
    (
        "this node led it before (its gates closed when it lost the claim)",
        7,
        False,
        False,
        True,
        None,
        0.0,
        None,
    ),
    (
        "the leader crashed, its anchor seen to end, strict (default)",
        5,
        False,
        False,
        True,
        5,
        2.0,
        "strict_takeover",
    ),
    (
        "the leader crashed, its anchor seen to end, fast crash path",
        5,
        False,
        False,
        False,
        5,
        0.0,
        None,
    ),
    (
        "the anchor of another node ended: no evidence about this leader",
        5,
        False,
        False,
        False,
        6,
        2.0,
        "no evidence that its process is gone",
    ),
    (
        "the leader's session ended, nothing seen (a half-open path)",
        5,
        False,
        False,
        False,
        None,
        2.0,
        "no evidence that its process is gone",
    ),
    (
        "this node fenced the silent leader: even with evidence, a lease",
        5,
        False,
        True,
        False,
        5,
        2.0,
        "fenced",
    ),
]


@pytest.mark.parametrize(
    ("what", "previous", "released", "fenced", "strict", "evidence", "wait", "why"),
    WAITS,
    ids=[w[0] for w in WAITS],
)
def test_how_long_a_new_leader_waits_before_it_takes_its_term(
    what: str,
    previous: int | None,
    released: bool,
    fenced: bool,
    strict: bool,
    evidence: int | None,
    wait: float,
    why: str | None,
) -> None:
    got = takeover_wait(
        previous=previous,
        released=released,
        me=7,
        fenced=fenced,
        strict=strict,
        evidence=evidence,
        lease=1.5,
        recorded_lease=2.0,  # the old leader acted on a longer lease: that one counts
    )
    assert got == (wait, why)
    assert ended_cleanly(previous, released, 7) is (
        wait == 0.0 and why is None and evidence is None
    )


def test_a_successor_waits_the_longer_of_the_two_leases() -> None:
    def wait(recorded: float | None) -> float:
        return takeover_wait(
            previous=5,
            released=False,
            me=7,
            fenced=False,
            strict=True,
            evidence=None,
            lease=1.5,
            recorded_lease=recorded,
        )[0]

    assert (wait(None), wait(1.0), wait(3.0)) == (1.5, 1.5, 3.0)


#: (what, members as (priority, node), leader, standby, successor when the leader leaves)
MEMBERS = [
    ("alone", [(0, 5)], 5, None, None),
    ("equals: the next node id after the leader's", [(0, 3), (0, 5), (0, 8), (0, 9)], 5, 8, 9),
    ("equals: wrapping around after the largest id", [(0, 3), (0, 5), (0, 8), (0, 9)], 9, 3, 8),
    ("a higher priority always first", [(0, 3), (1, 4), (0, 8), (0, 9)], 8, 4, 4),
    ("among the highest priority, the next after the leader", [(1, 2), (1, 6), (0, 8)], 8, 2, 6),
]


@pytest.mark.parametrize(
    ("what", "members", "leader", "watcher", "heir"), MEMBERS, ids=[m[0] for m in MEMBERS]
)
def test_who_stands_by_and_who_succeeds(
    what: str, members: list[tuple[int, int]], leader: int, watcher: int | None, heir: int | None
) -> None:
    assert standby(members, leader) == watcher
    assert successor(members, leader) == heir


#: (what, members, excluding, best)
CANDIDATES = [
    ("nobody", [], None, None),
    ("the highest priority", [(0, 9), (2, 3), (1, 7)], None, (2, 3)),
    ("among equals, the largest node id", [(1, 3), (1, 8), (0, 9)], None, (1, 8)),
    ("not the recorded leader", [(1, 3), (1, 8), (0, 9)], 8, (1, 3)),
    ("only the recorded leader", [(0, 4)], 4, None),
]


@pytest.mark.parametrize(
    ("what", "members", "excluding", "best"), CANDIDATES, ids=[c[0] for c in CANDIDATES]
)
def test_who_should_lead_when_nobody_does(
    what: str,
    members: list[tuple[int, int]],
    excluding: int | None,
    best: tuple[int, int] | None,
) -> None:
    assert best_candidate(members, excluding) == best


#: (what the standby saw: watched leader, recorded leader, released, observed alive, how)
ENDINGS = [
    ("the leader released its term: a clean hand-over", 5, 5, True, True, Freed.RELEASED),
    ("released, though the watch began after it let go", 5, 5, True, False, Freed.RELEASED),
    ("seen alive, then gone, its term not released", 5, 5, False, True, Freed.DIED),
    ("already gone when the watch began: nothing seen", 5, 5, False, False, Freed.UNOBSERVED),
    ("the leadership moved on to another node", 5, 6, False, True, Freed.UNOBSERVED),
    ("another node's term was released meanwhile", 5, 6, True, True, Freed.UNOBSERVED),
    ("no leader row at all", 5, None, False, True, Freed.UNOBSERVED),
]


@pytest.mark.parametrize(
    ("what", "watched", "recorded", "released", "observed", "how"),
    ENDINGS,
    ids=[e[0] for e in ENDINGS],
)
def test_how_a_standby_saw_a_leadership_end(
    what: str, watched: int, recorded: int | None, released: bool, observed: bool, how: Freed
) -> None:
    assert how_it_ended(watched, recorded, released, observed) is how


#: (what, seconds the leader's renewal has not changed, silent with leader_timeout 2 s)
SILENCES = [
    ("renewed just now", 0.0, False),
    ("one interval late", 0.5, False),
    ("just under the followers' patience", 1.999, False),
    ("exactly the followers' patience", 2.0, True),
    ("stopped renewing long ago", 60.0, True),
    ("never seen: unknown is not silent", None, False),
]


@pytest.mark.parametrize(("what", "quiet", "silent"), SILENCES, ids=[s[0] for s in SILENCES])
def test_when_a_leader_has_fallen_silent(what: str, quiet: float | None, silent: bool) -> None:
    assert leader_silent(quiet, leader_timeout=2.0) is silent
    if quiet is not None:  # the same moment, as a follower's timer sees it
        renewed_at = 10.0
        assert (renewed_at + quiet >= silent_from(renewed_at, 2.0)) is silent


#: (what, the holder is the recorded leader, quiet for, may fence) with leader_timeout 2 s,
#: lease 1.5 s, io_timeout 2 s
FENCES = [
    ("the leader renews: never", True, 0.3, False),
    ("the leader is late but within the followers' patience", True, 1.9, False),
    ("the leader has been silent for the followers' patience", True, 2.0, True),
    ("a holder taking over, idle while it waits out the old lease", False, 1.5, False),
    ("a holder taking over, idle for a lease and a call: stuck", False, 3.5, True),
]


@pytest.mark.parametrize(("what", "recorded", "quiet", "may"), FENCES, ids=[f[0] for f in FENCES])
def test_when_a_silent_claim_holder_is_fenced(
    what: str, recorded: bool, quiet: float, may: bool
) -> None:
    got = may_fence(
        recorded=recorded, quiet_for=quiet, leader_timeout=2.0, lease=1.5, io_timeout=2.0
    )
    assert got is may


def test_a_leader_is_fenced_only_after_the_longer_of_patience_and_lease() -> None:
    # A lease longer than the followers' patience: a leader renewing late but within its
    # lease (a slow server) is never fenced.
    assert not may_fence(
        recorded=True, quiet_for=2.5, leader_timeout=2.0, lease=3.0, io_timeout=3.0
    )
    assert may_fence(recorded=True, quiet_for=3.0, leader_timeout=2.0, lease=3.0, io_timeout=3.0)


#: (what, confirmed at, now, lease holds, seconds left, seconds since renewed, recheck in)
#: with a lease of 1.5 s and an interval of 0.5 s
LEASES = [
    ("just confirmed", 10.0, 10.0, True, 1.5, 0.0, 0.25),
    ("an interval later, not renewed", 10.0, 10.5, True, 1.0, 0.5, 0.25),
    ("close to its end: looked at when it runs out", 10.0, 11.4, True, 0.1, 1.4, 0.1),
    ("exactly at its end: it no longer holds", 10.0, 11.5, False, 0.0, 1.5, 0.0),
    ("long after its end (a resumed process)", 10.0, 100.0, False, 0.0, 90.0, 0.0),
]


@pytest.mark.parametrize(
    ("what", "confirmed", "at", "holds", "left", "age", "recheck"),
    LEASES,
    ids=[row[0] for row in LEASES],
)
def test_this_nodes_own_lease(
    what: str, confirmed: float, at: float, holds: bool, left: float, age: float, recheck: float
) -> None:
    end = lease_end(confirmed, 1.5)
    assert lease_holds(end, at) is holds
    assert lease_left(end, at) == pytest.approx(left)
    assert lease_age(end, 1.5, at) == pytest.approx(age)
    assert lease_recheck(end, at, interval=0.5) == pytest.approx(recheck)


#: (why, from, stays out until) with leader_timeout 2 s, coordinator_wait 0.5 s
STAYS = [
    ("its leader work failed: another member takes over", StayOut.ABDICATED, 10.0, 12.0),
    (
        "back after losing a leadership: the standby may be taking over",
        StayOut.RETURNED,
        10.0,
        10.5,
    ),
]


@pytest.mark.parametrize(("what", "why", "at", "until"), STAYS, ids=[row[0] for row in STAYS])
def test_how_long_a_node_stays_out_of_elections(
    what: str, why: StayOut, at: float, until: float
) -> None:
    got = stay_out(why, at, leader_timeout=2.0, coordinator_wait=0.5)
    assert got == pytest.approx(until)
    assert abstaining(at, got)
    assert abstaining(got - 0.001, got)
    assert not abstaining(got, got)


# ---------------------------------------------------------------- which messages are believed

ME, LEADER_NODE, TERM = 3, 7, 100


def _record(
    node: int = LEADER_NODE,
    term: int = TERM,
    *,
    priority: int = 0,
    released: bool = False,
    quiet: float | None = 0.2,
) -> LeaderRecord:
    return LeaderRecord(
        node, priority, term, "host", 1, datetime.now(UTC), released, quiet, None, quiet
    )


def _msg(kind: Kind, node: int = LEADER_NODE, term: int | None = TERM, **kw: int) -> Message:
    priority = kw.pop("priority", 0)
    return Message(kind, "g", Rank(priority, node), term, **kw)


FOLLOWER = View(
    me=ME, leading=False, leader_term=TERM, verified=None, verified_age=0.0, leader_timeout=2.0
)
READ = dataclasses.replace(FOLLOWER, record=_record(), record_read=True)
NO_ROW = dataclasses.replace(FOLLOWER, record=None, record_read=True)
LEADING = dataclasses.replace(FOLLOWER, leading=True, preempts=True)
BELIEVED = Belief(True)

#: (what arrives, message, what this node knows and read, verdict)
BELIEFS: list[tuple[str, Message, View, Belief | Ask]] = [
    # leader announcements (COORDINATOR; HEARTBEAT from 0.2 nodes)
    ("an announcement of an older term: stale, no query", _msg(Kind.HEARTBEAT, term=99),
     FOLLOWER, Belief(False, "stale term")),
    ("an announcement not yet checked: read the leader row", _msg(Kind.COORDINATOR),
     FOLLOWER, Ask.RECORD),
    ("an announcement the leader row confirms", _msg(Kind.COORDINATOR), READ, BELIEVED),
    ("a 0.2 node's heartbeat the leader row confirms", _msg(Kind.HEARTBEAT), READ, BELIEVED),
    ("an announcement of a term nobody holds", _msg(Kind.COORDINATOR, term=101), READ,
     Belief(False, "unverified leader")),
    ("an announcement by a node that does not hold the term", _msg(Kind.COORDINATOR, node=8),
     READ, Belief(False, "unverified leader")),
    ("an announcement with another priority than the leader's",
     _msg(Kind.COORDINATOR, priority=5), READ, Belief(False, "unverified leader")),
    ("an announcement of a released term", _msg(Kind.COORDINATOR),
     dataclasses.replace(READ, record=_record(released=True)), Belief(False, "unverified leader")),
    ("an announcement when the group has no leader row", _msg(Kind.COORDINATOR), NO_ROW,
     Belief(False, "unverified leader")),
    ("a replayed announcement of a leader that stopped renewing", _msg(Kind.HEARTBEAT),
     dataclasses.replace(READ, record=_record(quiet=2.0)), Belief(False, "silent leader")),
    ("an announcement of the leadership confirmed a moment ago: no query",
     _msg(Kind.HEARTBEAT), dataclasses.replace(FOLLOWER, verified=(7, 100), verified_age=1.0),
     Belief(False, "known leader", ignored=True)),
    ("an announcement while this node leads: its own renewals are the truth",
     _msg(Kind.COORDINATOR), LEADING, Belief(False, "announcement while leading", ignored=True)),
    ("an announcement confirmed longer ago than leader_timeout: read again",
     _msg(Kind.HEARTBEAT), dataclasses.replace(FOLLOWER, verified=(7, 100), verified_age=2.0),
     Ask.RECORD),
    # resignations
    ("a resignation naming another node: its claim speaks for it",
     _msg(Kind.RESIGN, successor=9), FOLLOWER,
     Belief(False, "resign naming another", ignored=True)),
    ("a resignation naming this node: read the leader row", _msg(Kind.RESIGN, successor=ME),
     FOLLOWER, Ask.RECORD),
    ("a resignation whose term the leader row shows released", _msg(Kind.RESIGN, successor=ME),
     dataclasses.replace(READ, record=_record(released=True)), BELIEVED),
    ("a resignation naming nobody, released", _msg(Kind.RESIGN),
     dataclasses.replace(READ, record=_record(released=True)), BELIEVED),
    ("a resignation in the leader's name, its term not released",
     _msg(Kind.RESIGN, successor=ME), READ, Belief(False, "unverified resign")),
    ("a resignation of an older term", _msg(Kind.RESIGN, term=99, successor=ME), FOLLOWER,
     Belief(False, "stale term")),
    # elections
    ("an election that cannot depose this node: believed", _msg(Kind.ELECTION, term=None),
     FOLLOWER, BELIEVED),
    ("an election that would depose this leader: ask whether its sender is a member",
     _msg(Kind.ELECTION, node=9, term=None, priority=5), LEADING, Ask.MEMBER),
    ("an election that would depose this leader, from a live member",
     _msg(Kind.ELECTION, node=9, term=None, priority=5),
     dataclasses.replace(LEADING, member=True), BELIEVED),
    ("an election that would depose this leader, from nobody",
     _msg(Kind.ELECTION, node=9, term=None, priority=5),
     dataclasses.replace(LEADING, member=False), Belief(False, "unknown member")),
    ("an ALIVE: believed (it moves no leadership)", _msg(Kind.ALIVE, term=None), FOLLOWER,
     BELIEVED),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "message", "view", "verdict"), BELIEFS, ids=[b[0] for b in BELIEFS]
)
def test_which_messages_are_believed(
    what: str, message: Message, view: View, verdict: Belief | Ask
) -> None:
    assert believe(message, view) == verdict


def test_a_leadership_is_not_valid_in_a_forked_child() -> None:
    # A child forked while its parent leads shares the leadership's memory and the clock,
    # not the claim: every gate, fence and transaction must refuse there.
    import os

    from notifelect._clock import now
    from notifelect.leadership import Leadership
    from notifelect.schema import Names

    ls = Leadership("g", Names(), term=1, node=1, valid_until=now() + 60)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if not ls.is_valid and not ls.admits else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ls.is_valid  # in the process it was granted to


#: (what, message, addressee)
ADDRESSEES = [
    ("a RESIGN naming its successor: the successor alone", _msg(Kind.RESIGN, successor=7), 7),
    ("a RESIGN naming nobody: the group", _msg(Kind.RESIGN), None),
    ("an ELECTION: the group", _msg(Kind.ELECTION, term=None), None),
    ("an ALIVE: the group", _msg(Kind.ALIVE, term=None), None),
]


@pytest.mark.parametrize(("what", "message", "to"), ADDRESSEES, ids=[a[0] for a in ADDRESSEES])
def test_who_a_message_goes_to(what: str, message: Message, to: int | None) -> None:
    assert addressee(message) == to
