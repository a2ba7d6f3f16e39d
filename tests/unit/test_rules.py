"""The election's rules, one table each: every row reads like a line of the docs."""

from __future__ import annotations

import pytest

from notifelect.rules import Sighting, may_fence_guard, sight, unchanged_for

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
