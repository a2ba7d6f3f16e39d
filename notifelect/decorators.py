"""Decorators that gate code on leadership: leader_only, on_elected, on_deposed, every.

Each has one implementation here, written against :class:`GateHost` (what an election
group offers them); the group's methods (``@group.leader_only``) delegate to these
functions, and the function forms take the group first (``@leader_only(group)``). Options
go in the call (``@group.leader_only(raise_if_not_leader=True)``). Arguments are checked
when the decorator is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload, runtime_checkable

from ._clock import now
from .errors import ConfigurationError, LeadershipLost, NotLeaderError
from .leadership import (
    DeposedCallback,
    DeposedT,
    ElectedCallback,
    ElectedT,
    Leadership,
    _current,
    current_leadership,
)

__all__ = [
    "Gate",
    "GateHost",
    "Periodic",
    "current_leadership",
    "every",
    "leader_only",
    "on_deposed",
    "on_elected",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


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
    group: GateHost, fn: Callable[P, Coroutine[Any, Any, R]], /
) -> Callable[P, Coroutine[Any, Any, R | None]]: ...


@overload
def leader_only(group: GateHost, fn: Callable[P, R], /) -> Callable[P, R | None]: ...


@overload
def leader_only(
    group: GateHost, /, *, raise_if_not_leader: bool = False, finish_on_loss: bool = False
) -> Gate: ...


def leader_only(
    group: GateHost,
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
    is still running when leadership ends is cancelled and its caller gets LeadershipLost.
    With ``finish_on_loss`` it may finish during a hand-over (the node keeps its claim and
    renews its lease meanwhile, for at most ``Settings.finish_timeout``) and the successor
    starts only after it has; if the leadership is *lost* (connection, lease) it is
    cancelled like any other call, because nothing vouches for it any more.

    A plain ``def`` is gated the same way (for thread-based schedulers) but cannot be
    interrupted: a hand-over waits for it (up to ``finish_timeout``); a lost leadership
    cannot stop it. Calling before the group was entered raises GroupStateError.
    """
    _require_host(group, "leader_only")

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
                return await _run_tracked(group, ls, name, f(*args, **kwargs), finish_on_loss)

            return gated

        @functools.wraps(f)
        def gated_sync(*args: Any, **kwargs: Any) -> Any:
            ls = _admit(group, name, raise_if_not_leader)
            if ls is None:
                return None
            token = _current.set(ls)
            try:
                with group._track_thread():
                    return f(*args, **kwargs)
            finally:
                _current.reset(token)

        return gated_sync

    return decorate(fn) if fn is not None else decorate


async def _run_tracked(
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


def _admit(group: GateHost, name: str, raise_if_not_leader: bool) -> Leadership | None:
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


def _require_host(group: object, what: str) -> None:
    if not isinstance(group, GateHost):
        raise ConfigurationError(
            f"{what} needs an ElectionGroup as first argument, got {group!r}; "
            f"write @{what}(group) or @group.{what}"
        )


@overload
def on_elected(group: GateHost, fn: ElectedT, /, *, resign_on_error: bool = True) -> ElectedT: ...


@overload
def on_elected(
    group: GateHost, /, *, resign_on_error: bool = True
) -> Callable[[ElectedT], ElectedT]: ...


def on_elected(
    group: GateHost, fn: ElectedCallback | None = None, /, *, resign_on_error: bool = True
) -> Any:
    """Register ``async def fn(leadership)`` to run while this node leads.

    It starts when the node becomes leader and is cancelled (and awaited, for at most
    ``Settings.callback_timeout``) when the leadership ends, before the claim is released.
    An exception in it is logged and, with ``resign_on_error``, makes the node hand
    leadership to another node.
    """
    _require_host(group, "on_elected")

    def register(f: ElectedT) -> ElectedT:
        if not callable(f):
            raise ConfigurationError(f"on_elected callback is not callable: {f!r}")
        group._add_elected(f, resign_on_error)
        return f

    return register(fn) if fn is not None else register


@overload
def on_deposed(group: GateHost, fn: DeposedT, /) -> DeposedT: ...


@overload
def on_deposed(group: GateHost, /) -> Callable[[DeposedT], DeposedT]: ...


def on_deposed(group: GateHost, fn: DeposedCallback | None = None, /) -> Any:
    """Register ``async def fn(leadership)`` to run after leadership ended.

    It runs after every ``on_elected`` task of that leadership has finished, and may take
    at most ``Settings.callback_timeout``.
    """
    _require_host(group, "on_deposed")

    def register(f: DeposedT) -> DeposedT:
        if not callable(f):
            raise ConfigurationError(f"on_deposed callback is not callable: {f!r}")
        group._add_deposed(f)
        return f

    return register(fn) if fn is not None else register


def _seconds(value: timedelta | float, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds != seconds:
        raise ConfigurationError(f"{what} must be a timedelta or seconds, got {value!r}")
    return float(seconds)


class Periodic(Generic[R_co]):
    """A job run on the leader every ``interval`` seconds.

    Calling it runs the job once, gated and tracked exactly like a ``leader_only`` call:
    it returns None on a node that does not lead, sees :func:`current_leadership`, and is
    cancelled when the leadership ends.
    """

    def __init__(
        self,
        group: GateHost,
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
        self._name = getattr(job, "__qualname__", repr(job))
        functools.update_wrapper(self, job)

    async def __call__(self) -> R_co | None:
        ls = _admit(self.group, self._name, False)
        if ls is None:
            return None
        return await _run_tracked(self.group, ls, self._name, self.job(), False)

    async def _loop(self, ls: Leadership) -> None:
        await asyncio.sleep(self.initial_delay)
        next_at = now()
        while ls.admits:
            try:
                await self.job()
                self.runs += 1
            except Exception:
                self.failures += 1
                log.exception("periodic job %s failed (term %s)", self._name, ls.term)
            next_at += self.interval
            t = now()
            if next_at < t:  # overran: skip the ticks we missed, keep the cadence
                next_at = t + (self.interval - (t - next_at) % self.interval)
            await asyncio.sleep(next_at - t)


def every(
    group: GateHost, interval: timedelta | float, *, initial_delay: timedelta | float = 0.0
) -> Callable[[Callable[[], Awaitable[R]]], Periodic[R]]:
    """Run ``async def job()`` on the leader on a fixed cadence.

    The job starts ``initial_delay`` after this node becomes leader, then every ``interval``
    measured from the previous start; a run that overruns delays the next one (runs never
    overlap). It stops when leadership ends (a running job is cancelled) and starts again on
    whichever node leads next. Exceptions are logged and the cadence continues.
    """
    _require_host(group, "every")
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

        group._add_elected(loop, False)
        return periodic

    return decorate
