"""The election's rules, as pure functions of what a node observed.

Nothing here reads a clock or does I/O: the session, the transports and the driver report
facts (a row as read, when this node read it on its own clock) and these decide. Each rule
has a table-driven test in ``tests/unit/test_rules.py`` whose rows read like the failure
table of the docs.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

__all__ = [
    "Freed",
    "Sighting",
    "ended_cleanly",
    "may_fence_guard",
    "sight",
    "standby",
    "successor",
    "takeover_wait",
    "unchanged_for",
]


class Freed(enum.Enum):
    """How a standby saw a leader's claim end (what its watch of the leader's process
    reports)."""

    #: The leader marked its term released before letting go: a clean hand-over; its
    #: RESIGN names the successor.
    RELEASED = "released"
    #: The leader's process was seen alive (its anchor held) and then gone, on a session
    #: that stayed connected throughout: positive evidence that it can no longer act.
    DIED = "died"
    #: Nothing was observed: the anchor was already free (or the watch was re-established
    #: after a disconnect). Not evidence of anything; a successor waits out the lease.
    UNOBSERVED = "unobserved"


@dataclass(frozen=True)
class Sighting:
    """What this node last saw of something that should keep changing while it lives (a
    leader's lease renewal, a claim holder's activity), on this node's clock.

    ``subject`` names what is watched (a leadership: node and term; a claim holder: its
    backend pid); ``mark`` is its state as last read, which changes whenever it shows a
    sign of life; ``changed_at`` is when this node saw the mark change.
    """

    subject: Hashable
    mark: Hashable
    changed_at: float


def sight(
    last: Sighting | None, subject: Hashable, mark: Hashable, age: float | None, at: float
) -> Sighting:
    """Fold one reading, taken at ``at`` on this node's clock, into what was seen before.

    A sign of life is a *change* of the mark between two readings of the same subject,
    whatever the database's clock says: a clock that steps back makes a renewal look
    younger than it is, one that steps forward makes it look older, and neither may stall
    or hasten a take-over. Only at the first reading of a subject does the database's own
    ``age`` of the mark (a difference of two readings of one clock, in one statement)
    date it; an unknown or negative age (a clock that stepped back) counts as now.
    """
    if last is not None and last.subject == subject:
        return last if last.mark == mark else Sighting(subject, mark, at)
    since = age if age is not None and age > 0 else 0.0
    return Sighting(subject, mark, at - since)


def unchanged_for(seen: Sighting, at: float) -> float:
    """Seconds, on this node's clock, that ``seen`` has shown no sign of life as of ``at``."""
    return max(0.0, at - seen.changed_at)


def may_fence_guard(ended_cleanly: bool, held_for: float, lease: float) -> bool:
    """Whether a node that holds a group's claim may terminate the transactions that
    still hold the old term (the fencing guard), ``held_for`` seconds after it first found
    them holding it.

    After an unclean end the claimant has waited out the old lease (or seen the old
    process end), so they belong to a leadership that is over: at once. After a clean
    release the old leader's work was done, but a guarded transaction may still be
    committing: it gets one ``lease``.
    """
    return not ended_cleanly or held_for >= lease


def ended_cleanly(previous: int | None, released: bool, me: int | None) -> bool:
    """Whether the previous leadership of a group, as a node that just took its claim
    found it recorded, ended so that nobody can still act on it: the group never had a
    leader, its leader released its term (a clean hand-over, after its work was done), or
    it was this very node's (whose gates closed when it lost the claim)."""
    return previous is None or released or previous == me


def takeover_wait(
    *,
    previous: int | None,
    released: bool,
    me: int | None,
    fenced: bool,
    strict: bool,
    evidence: int | None,
    lease: float,
    recorded_lease: float | None,
) -> tuple[float, str | None]:
    """How long a node that has just taken a group's claim waits, on its own clock,
    before it takes the next term; and why (None: no wait).

    It acts at once after a clean release (``released``), when the group never had a
    leader, or when the previous leader was this very node (whose gates closed when it
    lost the claim). After any other end the previous leader may still trust its lease
    (its session may have been ended by the server while its process lives on), so the
    node waits a whole lease, the longer of its own and the one recorded with the
    previous term: that lease was last renewed before the claim was taken, so it has run
    out by then. Only with ``strict=False`` and ``evidence`` that the previous leader's
    process ended (its anchor seen to end), and when that leader was not fenced by this
    node, does it act at once (the fast crash path).
    """
    if ended_cleanly(previous, released, me):
        return 0.0, None
    proven = evidence is not None and previous == evidence
    if proven and not strict and not fenced:
        return 0.0, None
    why = (
        "fenced"
        if fenced
        else "strict_takeover"
        if proven
        else "no evidence that its process is gone"
    )
    return max(lease, recorded_lease or 0.0), why


def standby(members: Iterable[tuple[int, int]], leader: int) -> int | None:
    """The member that watches ``leader``'s process to take over at once if it ends:
    among the other ``members`` (priority, node), the highest priority, and among equals
    the next node id after the leader's, wrapping around (so that, among equals, each
    session watches one other, whatever the number of groups). The SQL of the session
    follows the same order (``notifelect.sql.STANDBY_ORDER``, checked against this)."""
    others = [(priority, node) for priority, node in members if node != leader]
    if not others:
        return None
    return min(others, key=lambda m: (-m[0], m[1] <= leader, m[1]))[1]


def successor(members: Iterable[tuple[int, int]], leaving: int) -> int | None:
    """The member a leaving leader names to claim at once: the best other member by rank
    (priority, then node id)."""
    others = [(priority, node) for priority, node in members if node != leaving]
    return max(others)[1] if others else None
