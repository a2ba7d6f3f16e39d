"""Compatibility with notifelect 0.0.3: ``election_manager.Coordinator``.

::

    async with election_manager.Coordinator(conn) as outcome:
        outcome.winner   # True on exactly one node once the election settles

``conn`` is a raw asyncpg connection; it is borrowed, never closed. Leadership is the same
as :class:`notifelect.ElectionGroup`'s: held through the database claim and a lease.
"""

from __future__ import annotations

from datetime import timedelta
from types import TracebackType
from typing import Any

import asyncpg

from .group import ElectionGroup
from .settings import Settings


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class Outcome:
    """What a Coordinator yields: whether this node currently wins the election."""

    def __init__(self, group: ElectionGroup) -> None:
        self.group = group

    @property
    def winner(self) -> bool:
        """True while this node is the valid leader."""
        return self.group.is_leader

    def __repr__(self) -> str:
        return f"<Outcome winner={self.winner} node={self.group.node}>"


class Coordinator:
    """Join an election on a raw asyncpg connection for the duration of the block.

    ``namespace`` names the election; ``election_interval`` is how often the leader
    heartbeats; ``election_timeout`` how long a candidate waits for higher-ranked nodes.
    Both accept seconds or a timedelta. Other Settings can be passed as ``settings``.
    As in the seed, the highest node id wins: the Coordinator runs classic Bully
    (``Settings(preempt="rank")``), where a newer node preempts the leader.
    """

    def __init__(
        self,
        connection: asyncpg.Connection[Any],
        *,
        namespace: str | None = None,
        election_interval: timedelta | float | None = None,
        election_timeout: timedelta | float | None = None,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or Settings(preempt="rank")  # the seed's rule: highest id wins
        changes: dict[str, Any] = {}
        if namespace is not None:
            changes["namespace"] = namespace
        if election_interval is not None:
            changes["election_interval"] = _seconds(election_interval)
        if election_timeout is not None:
            changes["election_timeout"] = _seconds(election_timeout)
        if changes:
            settings = settings.replace(**changes)
        self.settings = settings
        self.group = ElectionGroup(connection, settings=settings)

    async def __aenter__(self) -> Outcome:
        await self.group.__aenter__()
        return Outcome(self.group)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.group.close()
