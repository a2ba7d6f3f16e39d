"""Decorators that gate code on leadership: leader_only, on_elected, on_deposed, every.

Each is available as a method of the group (``@group.leader_only``) and as a function
taking the group (``@leader_only(group)``); options go in the call
(``@group.leader_only(raise_if_not_leader=True)``). Arguments are checked when the
decorator is applied.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, overload

from .errors import ConfigurationError, LeadershipLost, NotLeaderError

if TYPE_CHECKING:
    from .group import (
        DeposedCallback,
        DeposedT,
        ElectedCallback,
        ElectedT,
        ElectionGroup,
        Leadership,
    )

log = logging.getLogger("notifelect")

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

_current: contextvars.ContextVar[Leadership | None] = contextvars.ContextVar(
    "notifelect_leadership", default=None
)


def current_leadership() -> Leadership | None:
    """The Leadership under which the running leader-only code was started, if any."""
    return _current.get()


class Gate(Protocol):
    """What ``leader_only(...)`` with options returns: a decorator keeping the signature."""

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Callable[P, Coroutine[Any, Any, R | None]]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R | None]: ...


@overload
def leader_only(
    group: ElectionGroup, fn: Callable[P, Coroutine[Any, Any, R]], /
) -> Callable[P, Coroutine[Any, Any, R | None]]: ...


@overload
def leader_only(group: ElectionGroup, fn: Callable[P, R], /) -> Callable[P, R | None]: ...


@overload
def leader_only(
    group: ElectionGroup, /, *, raise_if_not_leader: bool = False, finish_on_loss: bool = False
) -> Gate: ...


def leader_only(
    group: ElectionGroup,
    fn: Callable[..., Any] | None = None,
    /,
    *,
    raise_if_not_leader: bool = False,
    finish_on_loss: bool = False,
) -> Any:
    """Run the decorated function only on the group's valid leader.

    On the leader, the call runs and returns its result. Elsewhere it is skipped and
    returns None (logged at DEBUG), or raises NotLeaderError with ``raise_if_not_leader``.
    Leadership is checked when the call starts (lease included). An ``async def`` call that
    is still running when leadership ends is cancelled and its caller gets LeadershipLost;
    with ``finish_on_loss`` it may finish, and the node releases its claim only after it
    has. A plain ``def`` is gated the same way (for thread-based schedulers) but cannot be
    interrupted. Calling before the group was entered raises GroupStateError.
    """
    _require_group(group, "leader_only")

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise ConfigurationError(f"leader_only target is not callable: {f!r}")
        name = getattr(f, "__qualname__", repr(f))
        if inspect.iscoroutinefunction(f):

            @functools.wraps(f)
            async def gated(*args: Any, **kwargs: Any) -> Any:
                ls = _admit(group, name, raise_if_not_leader)
                if ls is None:
                    return None

                async def run() -> Any:
                    _current.set(ls)
                    return await f(*args, **kwargs)

                task = asyncio.ensure_future(run())
                group._track_call(task, cancel_on_loss=not finish_on_loss)
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

            return gated

        @functools.wraps(f)
        def gated_sync(*args: Any, **kwargs: Any) -> Any:
            ls = _admit(group, name, raise_if_not_leader)
            if ls is None:
                return None
            token = _current.set(ls)
            try:
                return f(*args, **kwargs)
            finally:
                _current.reset(token)

        return gated_sync

    return decorate(fn) if fn is not None else decorate


def _admit(group: ElectionGroup, name: str, raise_if_not_leader: bool) -> Leadership | None:
    group._require_open(f"leader-only call {name}")
    ls = group.leadership
    if ls is not None and group.is_leader:
        return ls
    if raise_if_not_leader:
        raise NotLeaderError(
            f"{name} runs on the leader only; node {group.node} is not the valid leader of "
            f"group {group.name!r} (current leader: {group.leader})"
        )
    log.debug(
        "notifelect: skipped %s: node %s does not lead group %r", name, group.node, group.name
    )
    return None


def _require_group(group: object, what: str) -> None:
    from .group import ElectionGroup

    if not isinstance(group, ElectionGroup):
        raise ConfigurationError(
            f"{what} needs an ElectionGroup as first argument, got {group!r}; "
            f"write @{what}(group) or @group.{what}"
        )


@overload
def on_elected(
    group: ElectionGroup, fn: ElectedT, /, *, resign_on_error: bool = True
) -> ElectedT: ...


@overload
def on_elected(
    group: ElectionGroup, /, *, resign_on_error: bool = True
) -> Callable[[ElectedT], ElectedT]: ...


def on_elected(
    group: ElectionGroup, fn: ElectedCallback | None = None, /, *, resign_on_error: bool = True
) -> Any:
    """Function form of :meth:`ElectionGroup.on_elected`."""
    _require_group(group, "on_elected")
    return (
        group.on_elected(fn, resign_on_error=resign_on_error)
        if fn
        else group.on_elected(resign_on_error=resign_on_error)
    )


@overload
def on_deposed(group: ElectionGroup, fn: DeposedT, /) -> DeposedT: ...


@overload
def on_deposed(group: ElectionGroup, /) -> Callable[[DeposedT], DeposedT]: ...


def on_deposed(group: ElectionGroup, fn: DeposedCallback | None = None, /) -> Any:
    """Function form of :meth:`ElectionGroup.on_deposed`."""
    _require_group(group, "on_deposed")
    return group.on_deposed(fn) if fn else group.on_deposed()


def _seconds(value: timedelta | float, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds != seconds:
        raise ConfigurationError(f"{what} must be a timedelta or seconds, got {value!r}")
    return float(seconds)


class Periodic(Generic[R_co]):
    """A job run on the leader every ``interval`` seconds; calling it runs it once, gated."""

    def __init__(
        self,
        group: ElectionGroup,
        job: Callable[[], Awaitable[R_co]],
        interval: float,
        delay: float,
    ) -> None:
        self.group = group
        self.job = job
        self.interval = interval
        self.initial_delay = delay
        self.runs = 0
        self.failures = 0
        functools.update_wrapper(self, job)

    async def __call__(self) -> R_co | None:
        if _admit(self.group, getattr(self.job, "__qualname__", "job"), False) is None:
            return None
        return await self.job()

    async def _loop(self, ls: Leadership) -> None:
        name = getattr(self.job, "__qualname__", repr(self.job))
        await asyncio.sleep(self.initial_delay)
        next_at = time.monotonic()
        while ls.is_valid:
            try:
                await self.job()
                self.runs += 1
            except Exception:
                self.failures += 1
                log.exception("notifelect: periodic job %s failed (term %s)", name, ls.term)
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:  # overran: skip the ticks we missed, keep the cadence
                next_at = now + (self.interval - (now - next_at) % self.interval)
            await asyncio.sleep(next_at - now)


def every(
    group: ElectionGroup, interval: timedelta | float, *, initial_delay: timedelta | float = 0.0
) -> Callable[[Callable[[], Awaitable[R]]], Periodic[R]]:
    """Run ``async def job()`` on the leader on a fixed cadence.

    The job starts ``initial_delay`` after this node becomes leader, then every ``interval``
    measured from the previous start; a run that overruns delays the next one (runs never
    overlap). It stops when leadership ends (a running job is cancelled) and starts again on
    whichever node leads next. Exceptions are logged and the cadence continues.
    """
    _require_group(group, "every")
    seconds = _seconds(interval, "interval")
    delay = _seconds(initial_delay, "initial_delay")
    if seconds <= 0:
        raise ConfigurationError(f"every() interval must be > 0, got {interval!r}")
    if delay < 0:
        raise ConfigurationError(f"every() initial_delay must be >= 0, got {initial_delay!r}")

    def decorate(job: Callable[[], Awaitable[R]]) -> Periodic[R]:
        if not callable(job):
            raise ConfigurationError(f"every() job is not callable: {job!r}")
        periodic = Periodic(group, job, seconds, delay)

        async def loop(ls: Leadership) -> None:
            _current.set(ls)
            await periodic._loop(ls)

        group.on_elected(loop, resign_on_error=False)
        return periodic

    return decorate
