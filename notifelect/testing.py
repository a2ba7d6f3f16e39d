"""Helpers for testing code that uses notifelect, without a database.

Leader-only code can be exercised on an in-memory bus, where groups elect exactly as they
do on PostgreSQL (one claim holder, growing terms), in one event loop::

    from notifelect import MemoryBus
    from notifelect.testing import solo_leader

    async def test_report_runs_on_the_leader() -> None:
        async with solo_leader("reports") as group:
            job = group.leader_only(build_report)
            assert await job() == expected

    async def test_followers_skip() -> None:
        bus = MemoryBus()
        async with ElectionGroup.in_memory(bus, "reports", priority=1) as leader, \\
                   ElectionGroup.in_memory(bus, "reports") as follower:
            await leader.wait_for_leadership(timeout=5)
            ...

``bus.disconnect(group.node)`` simulates a lost connection; ``bus.pause(group.node)`` a
stopped process that keeps its claim.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .group import ElectionGroup
from .settings import Settings
from .transport.memory import MemoryBus

__all__ = ["MemoryBus", "solo_leader"]


@asynccontextmanager
async def solo_leader(
    name: str = "test", settings: Settings | None = None, *, timeout: float = 5.0
) -> AsyncIterator[ElectionGroup]:
    """An entered in-memory group that is the only member and already leads."""
    group = ElectionGroup.in_memory(MemoryBus(), name, settings)
    async with group:
        await group.wait_for_leadership(timeout=timeout)
        yield group
