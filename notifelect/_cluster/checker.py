"""Checks of a run of node processes: what must hold whatever the faults were.

Pure functions over plain records, so they are unit-tested on hand-made histories
(``tests/faults/test_checker.py``) as well as run on the audit table and the nodes'
reports by the fault suite, the benchmarks and the demo. Every end is taken from what the
processes recorded; nothing assumes the outcome it checks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Execution:
    """One committed leader-only execution (a row of the audit table)."""

    node: int
    term: int
    started: float
    ended: float
    kind: str = "exec"
    db_at: datetime | None = None


@dataclass(frozen=True)
class Span:
    """One leadership's activity as its process recorded it.

    ``started``: when its ``on_elected`` work began. ``last_act``: the last moment the
    process itself recorded acting under this term (a leader-only action taken after it
    checked its leadership), None if it never did. ``open_at_end``: the process never
    reported that every activity of this term was over (its ``on_elected`` work or a
    leader-only call was still running when the process ended or the run stopped).
    ``dead_at``: when the process was killed (the SIGKILL sent, once it was seen gone
    or a zombie) or seen to exit, or None if it lived on.
    """

    node: int
    term: int
    started: float
    last_act: float | None = None
    open_at_end: bool = False
    dead_at: float | None = None

    @property
    def end(self) -> float:
        """Until when this leadership may have acted, never shorter than the process says:
        its last recorded action; if an activity never reported its end, until the process
        is proven dead (forever if it is not)."""
        last = self.started if self.last_act is None else max(self.started, self.last_act)
        if self.open_at_end:
            return math.inf if self.dead_at is None else max(last, self.dead_at)
        return last


@dataclass
class Report:
    """What a check found; ``ok`` when every list of violations is empty."""

    executions: int = 0
    terms: int = 0
    overlaps: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    stale_accepted: list[str] = field(default_factory=list)
    span_overlaps: list[str] = field(default_factory=list)
    term_owners: list[str] = field(default_factory=list)

    @property
    def violations(self) -> dict[str, list[str]]:
        """Each check that found something, and what it found."""
        names = ("overlaps", "regressions", "stale_accepted", "span_overlaps", "term_owners")
        return {name: getattr(self, name) for name in names if getattr(self, name)}

    @property
    def ok(self) -> bool:
        return not self.violations

    def __str__(self) -> str:
        found = [f"{k} ({len(v)}): " + "; ".join(v[:5]) for k, v in self.violations.items()]
        return ", ".join([f"{self.executions} executions over {self.terms} terms", *found])


def overlaps(executions: Sequence[Execution]) -> list[str]:
    """Pairs of executions of different leaderships (node, term) that overlap in time."""
    found: list[str] = []
    active: list[Execution] = []  # executions still running at the current start time
    for e in sorted(executions, key=lambda e: (e.started, e.ended)):
        active = [a for a in active if a.ended > e.started]
        for a in active:
            if (a.node, a.term) != (e.node, e.term):
                found.append(
                    f"node {e.node} term {e.term} [{e.started:.6f}, {e.ended:.6f}] overlaps "
                    f"node {a.node} term {a.term} [{a.started:.6f}, {a.ended:.6f}]"
                )
        active.append(e)
    return found


def regressions(executions: Sequence[Execution]) -> list[str]:
    """Executions whose term is lower than the term of an execution that started earlier."""
    found: list[str] = []
    highest: Execution | None = None
    for e in sorted(executions, key=lambda e: (e.started, e.ended)):
        if highest is not None and e.term < highest.term:
            found.append(
                f"term {e.term} (node {e.node}) at {e.started:.6f} after term {highest.term} "
                f"(node {highest.node}) at {highest.started:.6f}"
            )
        if highest is None or e.term > highest.term:
            highest = e
    return found


def term_owners(executions: Iterable[Execution], owners: Mapping[int, int]) -> list[str]:
    """Executions recorded under a term that the database gave to another node."""
    found = []
    for e in executions:
        owner = owners.get(e.term)
        if owner is not None and owner != e.node:
            found.append(f"node {e.node} wrote under term {e.term} of node {owner}")
    return found


def stale_accepted(
    executions: Iterable[Execution], term_started: Mapping[int, datetime]
) -> list[str]:
    """Writes that committed after a newer term had begun (the guard let a stale one in).

    ``term_started`` maps each term to the database time its leadership began. A write of
    term t is stale if it was made (``db_at``, the database clock at insert) after any
    term above t started. Independent of the guard itself: it only compares timestamps.
    """
    found = []
    terms = sorted(term_started)
    for e in executions:
        if e.db_at is None:
            continue
        later = [term_started[t] for t in terms if t > e.term]
        if later and e.db_at >= min(later):
            found.append(
                f"{e.kind} of node {e.node} under term {e.term} written at {e.db_at} "
                f"after term {min(t for t in terms if t > e.term)} began at {min(later)}"
            )
    return found


def span_overlaps(spans: Sequence[Span]) -> list[str]:
    """Leaderships that began before an earlier one (by term) could have stopped acting.

    Nothing is assumed about faults: a leadership lasts until its last recorded action,
    or, if its process never reported the end of its activity, until the process was
    proven dead.
    """
    found: list[str] = []
    for before, after in overlapping(spans):
        end = "never" if math.isinf(before.end) else f"{before.end:.6f}"
        found.append(
            f"term {after.term} (node {after.node}) started at {after.started:.6f} "
            f"before term {before.term} (node {before.node}) stopped acting (at {end})"
        )
    return found


def overlapping(spans: Sequence[Span]) -> list[tuple[Span, Span]]:
    """The pairs (earlier, later) behind :func:`span_overlaps`: a later leadership (by
    term) that began before the earlier one could have stopped acting."""
    ordered = sorted(spans, key=lambda s: s.term)
    return [
        (before, after)
        for i, after in enumerate(ordered)
        for before in ordered[:i]
        if before.end > after.started
    ]


def check(
    executions: Sequence[Execution],
    *,
    spans: Sequence[Span] = (),
    term_started: Mapping[int, datetime] | None = None,
    owners: Mapping[int, int] | None = None,
) -> Report:
    """Every check at once."""
    return Report(
        executions=len(executions),
        terms=len({e.term for e in executions}),
        overlaps=overlaps(executions),
        regressions=regressions(executions),
        stale_accepted=stale_accepted(executions, term_started or {}),
        span_overlaps=span_overlaps(spans),
        term_owners=term_owners(executions, owners or {}),
    )
