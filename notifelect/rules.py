"""The election's rules, as pure functions of what a node observed.

Nothing here reads a clock or does I/O: the session, the transports and the driver report
facts (a row as read, when this node read it on its own clock) and these decide. Each rule
has a table-driven test in ``tests/unit/test_rules.py`` whose rows read like the failure
table of the docs.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["Sighting", "may_fence_guard", "sight", "unchanged_for"]


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
