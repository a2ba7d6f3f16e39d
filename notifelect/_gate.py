"""What the leader-only gates share: the host they are written against and how a gated
call is admitted, run and tracked. Used by :mod:`notifelect.decorators` and
:mod:`notifelect.jobs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

from .errors import ConfigurationError, LeadershipLost, NotLeaderError
from .leadership import DeposedCallback, ElectedCallback, Leadership, _current

__all__ = ["GateHost", "admit", "require_host", "run_tracked", "seconds"]

log = logging.getLogger("notifelect.decorators")

R = TypeVar("R")


@runtime_checkable
class GateHost(Protocol):
    """What the decorators need from an election group (``ElectionGroup`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def node(self) -> int | None: ...

    @property
    def leadership(self) -> Leadership | None: ...

    def _require_open(self, what: str) -> None: ...

    def _admitting(self) -> Leadership | None: ...

    def _track_call(self, task: asyncio.Task[Any], cancel_on_loss: bool) -> None: ...

    def _track_thread(self) -> contextlib.AbstractContextManager[None]: ...

    def _add_elected(self, callback: ElectedCallback, resign_on_error: bool) -> None: ...

    def _add_deposed(self, callback: DeposedCallback) -> None: ...


async def run_tracked(
    group: GateHost, ls: Leadership, name: str, coro: Awaitable[R], finish_on_loss: bool
) -> R:
    """Run ``coro`` as a task the group can cancel (or wait for) when leadership ends."""

    async def run() -> R:
        _current.set(ls)
        return await coro

    task = asyncio.ensure_future(run())
    group._track_call(task, not finish_on_loss)
    try:
        return await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if task.cancelled() and (me is None or me.cancelling() == 0):
            raise LeadershipLost(
                f"{name} was cancelled because node {ls.node} stopped leading group "
                f"{group.name!r} (term {ls.term}: {ls.ended_reason or 'ended'})"
            ) from None
        raise


def admit(group: GateHost, name: str, raise_if_not_leader: bool) -> Leadership | None:
    group._require_open(f"leader-only call {name}")
    ls = group._admitting()
    if ls is not None:
        return ls
    if raise_if_not_leader:
        raise NotLeaderError(
            f"{name} runs on the leader only; node {group.node} is not the valid leader of "
            f"group {group.name!r}"
        )
    log.debug("skipped %s: node %s does not lead group %r", name, group.node, group.name)
    return None


def require_host(group: object, what: str) -> None:
    if not isinstance(group, GateHost):
        raise ConfigurationError(
            f"{what} needs an ElectionGroup as first argument, got {group!r}; "
            f"write @{what}(group) or @group.{what}"
        )


def seconds(value: timedelta | float, what: str) -> float:
    """``value`` (a timedelta or a number of seconds) in seconds; ConfigurationError else."""
    found = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(found, bool) or not isinstance(found, int | float) or found != found:
        raise ConfigurationError(f"{what} must be a timedelta or seconds, got {value!r}")
    return float(found)
