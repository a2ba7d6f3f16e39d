"""The election's rules, one table each: every row reads like a line of the docs."""

from __future__ import annotations

import pytest

from notifelect.rules import (
    Sighting,
    ended_cleanly,
    may_fence_guard,
    sight,
    standby,
    successor,
    takeover_wait,
    unchanged_for,
)

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
