"""Compatibility with notifelect 0.0.3: ``election_manager.Coordinator``.

::

    async with election_manager.Coordinator(conn) as outcome:
        outcome.winner   # True on exactly one node once the election settles

``conn`` is a raw asyncpg connection; it is borrowed, never closed. Leadership is the same
as :class:`notifelect.ElectionGroup`'s: held through the database claim and a lease.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from types import TracebackType
from typing import Any

import asyncpg

from .group import ElectionGroup
from .settings import Settings


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings)}


def seed_settings(
    settings: Settings | None = None,
    *,
    namespace: str | None = None,
    election_interval: timedelta | float | None = None,
    election_timeout: timedelta | float | None = None,
) -> Settings:
    """Settings for the seed's ``Coordinator`` arguments, on top of ``settings``.

    notifelect 0.0.3 had only an interval and a timeout (its defaults: 20 s and 5 s). When
    the interval or the timeout is longer than the default ``lease`` and ``leader_timeout``
    allow, and those two were left at their defaults, they are derived from it: each becomes
    ``max(default, 2 x election_interval, 2 x election_timeout)``. A lease or leader timeout
    set explicitly in ``settings`` is kept as it is (and validated as usual).
    """
    settings = settings or Settings()
    changes: dict[str, Any] = {}
    if namespace is not None:
        changes["namespace"] = namespace
    interval = settings.election_interval
    timeout = settings.election_timeout
    if election_interval is not None:
        interval = changes["election_interval"] = _seconds(election_interval)
    if election_timeout is not None:
        timeout = changes["election_timeout"] = _seconds(election_timeout)
    floor = max(2 * interval, 2 * timeout)
    for name in ("lease", "leader_timeout"):
        current = getattr(settings, name)
        if current == _DEFAULTS[name] and current < floor:
            changes[name] = floor
    return settings.replace(**changes) if changes else settings


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

    ``namespace`` names the election; ``election_interval`` is how often the leader's
    session renews its lease (and the followers' sessions read it); ``election_timeout``
    how long a candidate waits for higher-ranked nodes. Both accept seconds or a
    timedelta. Other Settings can be passed as ``settings``. The
    seed's own values work as they are: ``election_interval=timedelta(seconds=20),
    election_timeout=timedelta(seconds=5)`` gives a lease and a leader timeout of 40 s
    (see :func:`seed_settings`). As in the seed, the highest node id wins: without
    ``settings`` the Coordinator runs classic Bully (``Settings(preempt="rank")``), where
    a newer node preempts the leader.
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
        settings = seed_settings(
            settings or Settings(preempt="rank"),  # the seed's rule: highest id wins
            namespace=namespace,
            election_interval=election_interval,
            election_timeout=election_timeout,
        )
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
