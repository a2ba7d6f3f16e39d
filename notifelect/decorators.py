"""Decorators that gate code on leadership: leader_only, on_elected, on_deposed (and, from
:mod:`notifelect.jobs`, the scheduled jobs: every, cron).

Each has one implementation here, written against :class:`GateHost` (what an election
group offers them); the group's methods (``@group.leader_only``) delegate to these
functions, and the function forms take the group first (``@leader_only(group)``). Options
go in the call (``@group.leader_only(raise_if_not_leader=True)``). Arguments are checked
when the decorator is applied.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from ._gate import GateHost, admit, require_host, run_tracked
from .errors import ConfigurationError
from .jobs import Periodic, cron, every
from .leadership import (
    DeposedCallback,
    DeposedT,
    ElectedCallback,
    ElectedT,
    _current,
    current_leadership,
)

__all__ = [
    "Gate",
    "GateHost",
    "Periodic",
    "cron",
    "current_leadership",
    "every",
    "leader_only",
    "on_deposed",
    "on_elected",
]


P = ParamSpec("P")
R = TypeVar("R")


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
    require_host(group, "leader_only")

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise ConfigurationError(f"leader_only target is not callable: {f!r}")
        name = getattr(f, "__qualname__", repr(f))
        if inspect.iscoroutinefunction(f):

            @functools.wraps(f)
            async def gated(*args: Any, **kwargs: Any) -> Any:
                ls = admit(group, name, raise_if_not_leader)
                if ls is None:
                    return None
                return await run_tracked(group, ls, name, f(*args, **kwargs), finish_on_loss)

            return gated

        @functools.wraps(f)
        def gated_sync(*args: Any, **kwargs: Any) -> Any:
            ls = admit(group, name, raise_if_not_leader)
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
    require_host(group, "on_elected")

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
    require_host(group, "on_deposed")

    def register(f: DeposedT) -> DeposedT:
        if not callable(f):
            raise ConfigurationError(f"on_deposed callback is not callable: {f!r}")
        group._add_deposed(f)
        return f

    return register(fn) if fn is not None else register
