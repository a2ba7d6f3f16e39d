"""What the parts of a session share: its timing, what its periodic statement read, a
group as the session sees it, and the view of the session its parts work on."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

import asyncpg

from ...schema import Names
from ...sql import ElectionQueries
from ..base import LeaderRecord
from ..serial import Serial

Connect = Callable[[], Awaitable["asyncpg.Connection[Any]"]]


@dataclasses.dataclass(frozen=True)
class Timing:
    """What a session's groups must agree on; groups that differ get sessions of their own."""

    lease: float
    leader_timeout: float
    io_timeout: float
    interval: float


@dataclasses.dataclass(frozen=True)
class Tick:
    """One periodic statement of the session: when it was sent and what it read."""

    sent_at: float
    records: dict[str, LeaderRecord]


class Claimed(NamedTuple):
    """A group's claim lock, taken; and its leadership as recorded once it was."""

    leader: int | None  # the recorded leader's node (None: the group never had one)
    term: int | None  # its term
    released: bool  # whether that leader released its term
    lease: float | None  # the lease that leader acts on (None: not recorded)


#: What is recorded of a group that never had a leader.
NEVER_LED = Claimed(None, None, False, None)


class SessionGroup(Protocol):
    """A group on a session, as the session sees it (a ``PostgresTransport``)."""

    @property
    def namespace(self) -> str: ...

    @property
    def channel(self) -> str: ...

    @property
    def leading(self) -> bool: ...

    def notified(self, payload: str) -> None: ...

    def ticked(self, tick: Tick, record: LeaderRecord | None) -> None: ...

    def lost(self) -> None: ...


class SessionView(Protocol):
    """What the parts of a session (its tick, claims, watchers) read of it and call."""

    names: Names
    timing: Timing
    queries: ElectionQueries
    host: str
    pid: int
    node: int | None
    serial: Serial | None

    @property
    def usable(self) -> bool: ...

    def lose(self, reason: str) -> None: ...

    async def new_connection(self, application_name: str = ...) -> asyncpg.Connection[Any]: ...
