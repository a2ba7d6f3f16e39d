"""Which groups ride which session: the open sessions of this process, by event loop and
what they connect to."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

import asyncpg

from ...errors import ConfigurationError
from .common import SessionGroup


class Registered(Protocol):
    """A session as the registry sees it."""

    @property
    def usable(self) -> bool: ...

    @property
    def borrowed(self) -> asyncpg.Connection[Any] | None: ...

    @property
    def groups(self) -> dict[str, SessionGroup]: ...


S = TypeVar("S", bound=Registered)


class Registry(Generic[S]):
    """The open sessions of this process, by event loop and what they connect to.

    A session holds at most one member of each group: a second member of a group in the
    same process (tests, or several nodes of one group on purpose) gets a session of its
    own.
    """

    def __init__(self) -> None:
        self._sessions: dict[tuple[asyncio.AbstractEventLoop, Hashable], list[S]] = {}

    def take(
        self,
        key: Hashable,
        group: SessionGroup,
        make: Callable[[], S],
        borrowed: asyncpg.Connection[Any] | None = None,
    ) -> S:
        """A usable session of ``key`` without ``group``'s namespace, with it reserved.

        On a ``borrowed`` connection there is only ever one session (a backend's advisory
        locks are shared by everything on it): a second member of a group, or a group with
        other timing or names, is refused."""
        loop = asyncio.get_running_loop()
        sessions = self._sessions.setdefault((loop, key), [])
        sessions[:] = [s for s in sessions if s.usable]
        if borrowed is not None:
            for (lp, other), others in self._sessions.items():
                for s in others:
                    if (
                        lp is loop
                        and s.borrowed is borrowed
                        and s.usable
                        and (other != key or group.namespace in s.groups)
                    ):
                        raise ConfigurationError(
                            "one asyncpg connection serves one member of each group, all with"
                            " the same settings (its advisory locks are shared by all of"
                            " them): give this group another connection, an engine or a DSN"
                        )
        for session in sessions:
            if group.namespace not in session.groups:
                break
        else:
            session = make()
            sessions.append(session)
        session.groups[group.namespace] = group
        return session

    def discard(self, session: S) -> None:
        for sessions in self._sessions.values():
            if session in sessions:
                sessions.remove(session)

    def open_sessions(self) -> list[S]:
        loop = asyncio.get_running_loop()
        return [s for (lp, _), ss in self._sessions.items() if lp is loop for s in ss]
