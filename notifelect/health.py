"""What a group reports to probes and dashboards: its health, and the vacancies it saw.

:class:`Health` is a snapshot that :attr:`ElectionGroup.health` builds without I/O;
:class:`Vacancies` counts how long the group went without a leader, as this node saw it.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field
from typing import Any

from .leadership import LeaderInfo

__all__ = ["VACANCY_BUCKETS", "Health", "HealthState", "Vacancies"]


class HealthState(enum.Enum):
    """Where a group stands, for readiness probes and dashboards."""

    NEW = "new"  # created, not entered yet
    CONNECTING = "connecting"  # opening, or reconnecting after a loss
    ELECTING = "electing"  # connected and a member, no leader known right now
    FOLLOWING = "following"  # connected, another node leads
    LEADING = "leading"  # this node leads (its lease is valid)
    FAILED = "failed"  # gave up reconnecting: see Health.error
    CLOSED = "closed"  # left the group


#: The states in which the node is connected and a member of its group.
_MEMBER = frozenset({HealthState.ELECTING, HealthState.FOLLOWING, HealthState.LEADING})


@dataclass(frozen=True)
class Health:
    """A snapshot of a group's health, as this node sees it.

    - ``ready``: the node is connected and a member of the group (electing, following or
      leading). An election does not make it unready: a probe built on ``ready`` keeps
      every replica in service while the group fails over.
    - ``has_leader``: some node is known to lead right now (false during an election).
    - ``is_leader``: this node leads, with a valid lease: a check that routes
      leader-only traffic uses this one.
    - ``leader_renewal_age``: seconds since the known leader last renewed its lease, as
      this node last read it from the database and counted on this node's clock since
      then (for a leader, its own last renewal); None while no leader is known.
    - ``lease_lapses``: leaderships of this node whose lease ran out before a renewal
      reached it (renewals missed: a stalled event loop, a starved thread, a slow or cut
      network), over the life of the group; each ended that leadership.
    - ``late_renewals``: renewals of this node's leases made with less than half the
      lease left, over the life of the group: the margin was eaten into, a lapse came
      close.
    """

    state: HealthState
    leader: LeaderInfo | None = None
    error: BaseException | None = None
    group: str | None = None
    node: int | None = None
    leader_renewal_age: float | None = None
    lease_lapses: int = 0
    late_renewals: int = 0

    @property
    def ready(self) -> bool:
        return self.state in _MEMBER

    @property
    def has_leader(self) -> bool:
        return self.leader is not None

    @property
    def is_leader(self) -> bool:
        return self.state is HealthState.LEADING

    def as_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (``json.dumps`` takes it as is): enums as their values,
        datetimes as ISO 8601 strings, the error as its ``repr``."""
        leader = self.leader
        return {
            "group": self.group,
            "node": self.node,
            "state": self.state.value,
            "ready": self.ready,
            "has_leader": self.has_leader,
            "is_leader": self.is_leader,
            "leader": None
            if leader is None
            else {
                "node": leader.node,
                "priority": leader.priority,
                "term": leader.term,
                "host": leader.host,
                "pid": leader.pid,
                "since": None if leader.since is None else leader.since.isoformat(),
            },
            "leader_renewal_age": self.leader_renewal_age,
            "lease_lapses": self.lease_lapses,
            "late_renewals": self.late_renewals,
            "error": None if self.error is None else repr(self.error),
        }


#: Upper bounds (seconds) of the vacancy histogram's buckets: a clean hand-over takes
#: milliseconds, a failover about one lease (1.5 s by default), a database restart longer.
VACANCY_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@dataclass
class Vacancies:
    """How long the group went without a leader, as this node saw it, on its own clock:
    from the moment it saw the group lose its leader (a resignation, a leader gone silent,
    its own connection lost) to the moment it saw the next one (which may be itself).
    Joining a group that has no leader yet is not a vacancy.

    ``counts[i]`` is the number of vacancies of at most ``VACANCY_BUCKETS[i]`` seconds
    (not cumulative; the last entry counts the longer ones).
    """

    count: int = 0
    total: float = 0.0
    last: float | None = None
    counts: list[int] = field(default_factory=lambda: [0] * (len(VACANCY_BUCKETS) + 1))

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.count += 1
        self.total += seconds
        self.last = seconds
        self.counts[bisect.bisect_left(VACANCY_BUCKETS, seconds)] += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, vacancies of at most that long) per bucket, ending with +Inf."""
        result, running = [], 0
        for bound, n in zip((*VACANCY_BUCKETS, float("inf")), self.counts, strict=True):
            running += n
            result.append((bound, running))
        return result
