"""The transport's rules for fencing a claim holder, as pure functions of what it saw.

(They belong with :mod:`notifelect.rules`; kept apart while that module is reworked.)
The PostgreSQL transport reports how long, on this node's clock, the database has shown
no sign of life from a holder (see :func:`notifelect.rules.sight`) and these decide.
"""

from __future__ import annotations

__all__ = ["leader_fenceable", "standbys_due", "taker_stuck"]


def leader_fenceable(silent_for: float, *, leader_timeout: float, lease: float) -> bool:
    """Whether the recorded leader, holding the claim, may be terminated: its renewals
    have been silent for longer than the followers' patience and than a lease. A leader
    that renews late but within its lease (a slow server) is never fenced."""
    return silent_for >= max(leader_timeout, lease)


def taker_stuck(idle_for: float, *, lease: float, io_timeout: float) -> bool:
    """Whether a claim holder that is not the recorded leader (one taking over, which
    waits out the old lease idle) may be terminated: idle for longer than that wait and
    one bounded call can take, it is stuck (paused)."""
    return idle_for >= lease + io_timeout


def standbys_due(since: float, *, leader_timeout: float) -> bool:
    """Whether a session records its groups' standbys again, ``since`` seconds after it
    last did: once per ``leader_timeout``, so that a standby that left is replaced before
    the followers' patience runs out."""
    return since >= leader_timeout
