"""Waiting on conditions with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from notifelect import ElectionGroup

T = TypeVar("T")


async def eventually(probe: Callable[[], T], *, timeout: float = 5.0, what: str = "condition") -> T:
    """Poll ``probe`` on every loop tick (yielding) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s (last: {value!r})")
        await asyncio.sleep(0.002)


async def until(
    groups: Sequence[ElectionGroup],
    predicate: Callable[[], T],
    *,
    timeout: float = 5.0,
    what: str = "condition",
    recheck: float = 0.05,
) -> T:
    """Wait until ``predicate()`` is truthy.

    Re-checks whenever any group reports a change, and at least every ``recheck`` seconds
    for conditions that depend on more than the groups' state.
    """
    deadline = time.monotonic() + timeout
    while True:
        events = [g._changed for g in groups]  # captured before the check: no lost wake-up
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{what} not reached within {timeout}s (last: {value!r})")
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(
                waiters, timeout=min(remaining, recheck), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waiters:
                w.cancel()


def settled(groups: Sequence[ElectionGroup]) -> bool:
    """Exactly one leader, known to every group, and no preemption pending.

    No preemption pending: under classic Bully (``preempt="rank"``) the leader is the
    highest-ranked node; by default it has the highest priority; with ``"never"`` any.
    """
    leaders = [g for g in groups if g.is_leader]
    ranks = [g.rank for g in groups if g.rank is not None]
    if len(leaders) != 1 or not ranks:
        return False
    leader = leaders[0]
    assert leader.rank is not None
    if any(g.leader is None or g.leader.node != leader.node for g in groups):
        return False
    preempt = leader.settings.preempt
    if preempt == "rank":
        return leader.rank == max(ranks)
    if preempt == "priority":
        return leader.rank.priority == max(r.priority for r in ranks)
    return True
