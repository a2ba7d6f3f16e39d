"""Checks of a fault-injection run: what must hold whatever the faults were.

Pure functions over plain records, so they are unit-tested on hand-made histories
(``test_checker.py``) as well as run on the audit table and the nodes' reports.
"""

from __future__ import annotations

import itertools
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
    """One leadership's ``on_elected`` work as its node reported it; ``ended`` None if the
    node never reported the end (it was killed)."""

    node: int
    term: int
    started: float
    ended: float | None


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
    def ok(self) -> bool:
        return not (
            self.overlaps
            or self.regressions
            or self.stale_accepted
            or self.span_overlaps
            or self.term_owners
        )

    def __str__(self) -> str:
        parts = [f"{self.executions} executions over {self.terms} terms"]
        for name in ("overlaps", "regressions", "stale_accepted", "span_overlaps", "term_owners"):
            found: list[str] = getattr(self, name)
            if found:
                parts.append(f"{name} ({len(found)}): " + "; ".join(found[:5]))
        return ", ".join(parts)


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


def span_overlaps(spans: Sequence[Span], claim_gone: Mapping[int, Sequence[float]]) -> list[str]:
    """Leaderships whose ``on_elected`` work started before the previous one's was over.

    The previous leadership is over when its node reported the end of its ``on_elected``
    work, or when its claim was gone: the test killed, paused or cut off that node, or
    terminated its backend (``claim_gone`` maps a node to those fault times). Spans are
    ordered by term.
    """
    found: list[str] = []
    ordered = sorted(spans, key=lambda s: s.term)
    for before, after in itertools.pairwise(ordered):
        end = before.ended if before.ended is not None else math.inf
        faults = [t for t in claim_gone.get(before.node, ()) if t >= before.started]
        if faults:
            end = min(end, min(faults))
        if end > after.started:
            found.append(
                f"on_elected of term {after.term} (node {after.node}) started at "
                f"{after.started:.6f} before term {before.term} (node {before.node}) ended "
                f"(end {'never' if math.isinf(end) else f'{end:.6f}'})"
            )
    return found


def check(
    executions: Sequence[Execution],
    *,
    spans: Sequence[Span] = (),
    claim_gone: Mapping[int, Sequence[float]] | None = None,
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
        span_overlaps=span_overlaps(spans, claim_gone or {}),
        term_owners=term_owners(executions, owners or {}),
    )
