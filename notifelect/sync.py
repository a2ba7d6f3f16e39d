"""The thread-backed facade for threaded and sync services (Flask, Django, gunicorn,
APScheduler's ``BackgroundScheduler``): no asyncio in the user's code.

:class:`SyncElectionGroup` (also importable as ``notifelect.sync.ElectionGroup``) runs an
:class:`notifelect.ElectionGroup` on a background thread with an event loop of its own.
It is a class of its own, not a sync mode of ``ElectionGroup``, because the two forms
would clash on the same names: ``wait_for_leadership`` blocks here and is a coroutine
there, ``with`` and ``async with`` would mean different threads, and the decorators here
take plain ``def`` functions and run them in threads. One implementation underneath (the
async group, its decorators and its leader work) keeps the semantics the same.

A group started in one process is not usable in a process forked from it afterwards (its
connections and thread stay with the parent): see :func:`_after_fork_in_child`.

(Longer than most modules: it mirrors the public surface of the async group, one
blocking method with its docstring for each.)
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from . import decorators
from ._threads import in_thread, is_worker_of
from .errors import ConfigurationError, GroupStateError
from .group import ElectionGroup as _AsyncGroup
from .health import Health
from .jobs import KEEP_RUNS
from .leadership import LeaderInfo, Leadership
from .schedule import CatchUp
from .settings import Settings

if TYPE_CHECKING:
    import asyncpg
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["ElectionGroup", "SyncElectionGroup"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
SyncElected = Callable[[Leadership], Any]
SyncElectedT = TypeVar("SyncElectedT", bound=SyncElected)

#: Groups of this process, to find the started ones after a fork.
_LIVE: weakref.WeakSet[SyncElectionGroup] = weakref.WeakSet()
#: Groups a fork left behind in this process: kept alive so that nothing of theirs is
#: ever closed (or written to) from here; the connections are the parent's.
_ABANDONED: list[object] = []


class SyncElectionGroup:
    """One node's membership of an election group, for plain sync code.

    ``engine`` is anything :class:`notifelect.ElectionGroup` takes (a sync ``Engine`` on
    psycopg 3 or psycopg2 is the usual one here). ``with group:`` (or :meth:`start`)
    starts a daemon thread named ``notifelect-<name>`` that runs the election on its own
    event loop, and returns once the node is connected, listening and has its id (it
    raises what joining raised). Leaving the block (or :meth:`close`) resigns, hands over
    at once and stops the thread, within :attr:`close_bound` seconds; a group still
    running when the interpreter exits is closed the same way. A group is started once.

    Every property and method may be called from any thread. ``@group.leader_only``,
    ``@group.every`` and ``@group.on_elected`` take plain ``def`` functions and run them
    in threads, tracked like async leader work: a hand-over waits for them (up to
    ``Settings.finish_timeout`` for leader-only calls, ``Settings.callback_timeout`` for
    ``on_elected`` and ``every`` work) before the claim is released, so the successor
    starts only after they returned. A thread cannot be interrupted: when the leadership
    is *lost* (connection or lease gone) the work goes on until it returns by itself;
    ``leadership.wait_until_over()``, ``leadership.is_valid``, ``leadership.fence(conn)``
    and ``leadership.transaction(engine)`` are how it notices and how its writes stay safe.
    """

    def __init__(
        self,
        engine: Engine | AsyncEngine | str | asyncpg.Connection[Any] | None = None,
        name: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self._group = _AsyncGroup(engine, name, settings)
        self.name = self._group.name
        self.settings = self._group.settings
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._closed = False
        self._pid = os.getpid()  # where it was started (or created)
        self._forked_from: int | None = None
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"<SyncElectionGroup {self.name!r} node={self.node}>"

    # ------------------------------------------------------------ state (any thread)

    @property
    def node(self) -> int | None:
        """This node's id (None before the group is started)."""
        return self._group.node

    @property
    def instance(self) -> str:
        """This member's name for the life of the group object (see
        ``ElectionGroup.instance``): the ``node`` label of its metrics."""
        return self._group.instance

    @property
    def is_leader(self) -> bool:
        """True only while this node holds a valid leadership that admits new work."""
        self._check_process("is_leader")
        return self._group.is_leader

    @property
    def leadership(self) -> Leadership | None:
        """The current leadership of this node, if it leads."""
        self._check_process("leadership")
        return self._group.leadership

    @property
    def leader(self) -> LeaderInfo | None:
        """Who leads the group as far as this node knows, or None during an election."""
        self._check_process("leader")
        return self._group.leader

    @property
    def health(self) -> Health:
        """Where the group stands now (no I/O)."""
        self._check_process("health")
        return self._group.health

    @property
    def is_open(self) -> bool:
        """True between starting and closing, unless the group gave up reconnecting."""
        return self._forked_from is None and self._group.is_open

    @property
    def close_bound(self) -> float:
        """The most seconds :meth:`close` takes (see ``ElectionGroup.close_bound``)."""
        return self._group.close_bound + 1.0

    def wait_for_leadership(self, timeout: float | None = None) -> Leadership:
        """Block until this node leads; return its Leadership. Raises TimeoutError after
        ``timeout`` seconds, GroupStateError if the group is not running."""
        return self._call(self._group.wait_for_leadership(timeout), "wait_for_leadership")

    def wait_for_leader(self, timeout: float | None = None) -> LeaderInfo:
        """Block until some node is known to lead; return who. Raises TimeoutError."""
        return self._call(self._group.wait_for_leader(timeout), "wait_for_leader")

    def _call(self, coro: Coroutine[Any, Any, R], what: str) -> R:
        try:
            loop = self._running_loop(what)
        except BaseException:
            coro.close()
            raise
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt in the waiting thread
            raise

    def _running_loop(self, what: str) -> asyncio.AbstractEventLoop:
        self._check_process(what)
        loop = self._loop
        if loop is None or self._closed:
            state = "after it was closed" if self._closed else "before it was started"
            raise GroupStateError(
                f"{what} on group {self.name!r} {state}: use 'with group:' or group.start()"
            )
        return loop

    def _check_process(self, what: str) -> None:
        if self._forked_from is not None:
            raise GroupStateError(
                f"{what} on group {self.name!r}, which was started in process "
                f"{self._forked_from}; this process ({os.getpid()}) is a fork of it, and the "
                "group's connections and election thread stay with the parent. Start the "
                "group in each process after the fork: create it before if you like, but "
                "enter it ('with group:' or group.start()) in the child - with gunicorn "
                "--preload in a post_fork hook, with multiprocessing in the child's target "
                "- or create a new SyncElectionGroup there"
            )

    # ------------------------------------------------------------ decorators

    @overload
    def leader_only(self, fn: Callable[P, R], /) -> Callable[P, R | None]: ...

    @overload
    def leader_only(
        self, /, *, raise_if_not_leader: bool = False
    ) -> Callable[[Callable[P, R]], Callable[P, R | None]]: ...

    def leader_only(
        self, fn: Callable[..., Any] | None = None, /, *, raise_if_not_leader: bool = False
    ) -> Any:
        """Gate a plain ``def`` to run on the leader only, in the calling thread.

        On the leader the call runs and returns its result; elsewhere it returns None (or
        raises NotLeaderError with ``raise_if_not_leader``). Leadership is checked when
        the call starts. A hand-over waits for a running call (up to
        ``Settings.finish_timeout``); a lost leadership cannot stop it.
        """

        def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
            _require_plain(f, "leader_only")
            gate = decorators.leader_only(self._group, raise_if_not_leader=raise_if_not_leader)
            gated: Callable[..., Any] = gate(f)
            what = f"leader-only call {getattr(f, '__qualname__', f)!r}"

            @functools.wraps(f)
            def checked(*args: Any, **kwargs: Any) -> Any:
                # In a process forked after the start the group's state is the parent's:
                # say so, rather than return None as if another node led.
                self._check_process(what)
                return gated(*args, **kwargs)

            return checked

        return decorate if fn is None else decorate(fn)

    @overload
    def on_elected(self, fn: SyncElectedT, /, *, resign_on_error: bool = True) -> SyncElectedT: ...

    @overload
    def on_elected(
        self, /, *, resign_on_error: bool = True
    ) -> Callable[[SyncElectedT], SyncElectedT]: ...

    def on_elected(self, fn: SyncElected | None = None, /, *, resign_on_error: bool = True) -> Any:
        """Run ``def fn(leadership)`` in a thread of its own each time this node becomes
        leader. It cannot be cancelled: it should return once
        ``leadership.wait_until_over(...)`` says so. The hand-over waits for it (up to
        ``Settings.callback_timeout``) before the claim is released. An exception is
        logged and, with ``resign_on_error``, hands leadership to another node."""

        def register(f: SyncElectedT) -> SyncElectedT:
            _require_plain(f, "on_elected")

            async def elected(ls: Leadership) -> None:
                await self._in_thread(f, ls, what="on_elected callback")

            functools.update_wrapper(elected, f)
            self._group.on_elected(elected, resign_on_error=resign_on_error)
            return f

        return register if fn is None else register(fn)

    @overload
    def on_deposed(self, fn: SyncElectedT, /) -> SyncElectedT: ...

    @overload
    def on_deposed(self, /) -> Callable[[SyncElectedT], SyncElectedT]: ...

    def on_deposed(self, fn: SyncElected | None = None, /) -> Any:
        """Run ``def fn(leadership)`` in a thread after a leadership of this node ended."""

        def register(f: SyncElectedT) -> SyncElectedT:
            _require_plain(f, "on_deposed")

            async def deposed(ls: Leadership) -> None:
                # The leadership is over: nothing to protect by waiting for the thread
                # past Settings.callback_timeout (which cancels this).
                await self._in_thread(f, ls, what="on_deposed callback", wait_when_cancelled=False)

            functools.update_wrapper(deposed, f)
            self._group.on_deposed(deposed)
            return f

        return register if fn is None else register(fn)

    def every(
        self,
        interval: timedelta | float,
        *,
        initial_delay: timedelta | float = 0.0,
        run_on_start: bool = True,
        catch_up: CatchUp | str | timedelta | float = CatchUp.LATEST,
        jitter: timedelta | float = 0.0,
        name: str | None = None,
        keep: int = KEEP_RUNS,
    ) -> Callable[[Callable[[], R]], Callable[[], R | None]]:
        """Run ``def job()`` in a thread on the leader every ``interval``, on the group's
        schedule kept in the database, with the same arguments and policies as
        :func:`notifelect.every` (``name`` keeps a moved or renamed job's schedule). When
        the leadership ends the running job is waited for (a thread cannot be cancelled):
        on a hand-over up to ``Settings.finish_timeout`` and then
        ``Settings.callback_timeout``. Returns the job gated like :meth:`leader_only`:
        calling it runs it once, on the leader only."""

        schedule = self._group.every(
            interval,
            initial_delay=initial_delay,
            run_on_start=run_on_start,
            catch_up=catch_up,
            jitter=jitter,
            name=name,
            keep=keep,
        )
        return self._scheduled("every", schedule)

    def cron(
        self,
        expression: str,
        *,
        tz: str = "UTC",
        initial_delay: timedelta | float = 0.0,
        run_on_start: bool = False,
        catch_up: CatchUp | str | timedelta | float = CatchUp.LATEST,
        jitter: timedelta | float = 0.0,
        name: str | None = None,
        keep: int = KEEP_RUNS,
    ) -> Callable[[Callable[[], R]], Callable[[], R | None]]:
        """Run ``def job()`` in a thread on the leader at the times of a cron
        ``expression`` in the time zone ``tz``, on the group's schedule (see
        :func:`notifelect.cron`; needs the ``cron`` extra). Otherwise as :meth:`every`."""

        schedule = self._group.cron(
            expression,
            tz=tz,
            initial_delay=initial_delay,
            run_on_start=run_on_start,
            catch_up=catch_up,
            jitter=jitter,
            name=name,
            keep=keep,
        )
        return self._scheduled("cron", schedule)

    def _scheduled(
        self, what: str, schedule: Callable[[Callable[[], Coroutine[Any, Any, R]]], object]
    ) -> Callable[[Callable[[], R]], Callable[[], R | None]]:
        """The decorator of :meth:`every` and :meth:`cron`: ``schedule`` runs the ``def``
        job on a thread; the job itself is returned gated like :meth:`leader_only`."""

        def decorate(job: Callable[[], R]) -> Callable[[], R | None]:
            _require_plain(job, what)
            schedule(self._threaded_job(job))
            gated: Callable[[], R | None] = self.leader_only(job)
            return gated

        return decorate

    def _threaded_job(self, job: Callable[[], R]) -> Callable[[], Coroutine[Any, Any, R]]:
        """``job`` as the coroutine function a schedule runs: the call on a thread of its
        own, under the job's own module and qualified name (its default ``name``)."""

        async def run() -> R:
            return await self._in_thread(job, what="scheduled job")

        functools.update_wrapper(run, job)
        return run

    async def _in_thread(
        self, fn: Callable[..., R], *args: Any, what: str, wait_when_cancelled: bool = True
    ) -> R:
        """Run ``fn(*args)`` on a thread of its own (see :mod:`notifelect._threads`), with
        this task's context (so ``current_leadership()`` works there).

        Cancelled, it waits for the thread to return, which it cannot interrupt: leader
        work counts as stopped only once it really stopped (the leader work's own bounds,
        ``callback_timeout``, limit how long the election waits for that). If the thread
        then raised, that exception is the outcome, as it is for an ``async`` callback
        that raises while being cancelled: it is logged once, where async failures are.
        A thread no longer waited for that fails later is logged here."""
        name = getattr(fn, "__qualname__", repr(fn))
        future = in_thread(
            functools.partial(fn, *args), name=f"notifelect-{self.name}-work", owner=self
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if wait_when_cancelled:
                try:
                    await asyncio.wait([future])
                except BaseException:
                    future.add_done_callback(functools.partial(_late_failure, what, name))
                    raise
                failure = None if future.cancelled() else future.exception()
                if isinstance(failure, Exception):
                    raise failure from None
            else:
                future.add_done_callback(functools.partial(_late_failure, what, name))
            raise

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> SyncElectionGroup:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the election thread and join; return once joined (see the class doc).

        Raises what joining raised (SchemaError, ConfigurationError, ...), and
        GroupStateError on a second start."""
        self._check_process("start")
        with self._lock:
            if self._thread is not None or self._closed:
                raise GroupStateError(
                    f"group {self.name!r} cannot be started twice or reopened; create a new "
                    "SyncElectionGroup"
                )
            started: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, args=(started,), name=f"notifelect-{self.name}", daemon=True
            )
            self._thread.start()
        try:
            started.result()
        except BaseException:
            # Joining failed, or this thread was interrupted (Ctrl-C) while it went on:
            # tell the election thread to leave once it has joined, and wait for it.
            self._request_close()
            self._thread.join(self.close_bound)
            raise

    def close(self) -> None:
        """Resign (if leading), disconnect and stop the thread; idempotent. Blocks for at
        most :attr:`close_bound` seconds. In a process forked after the start it only
        marks the group closed: the connections belong to the parent.

        Called from one of the group's own ``def`` callbacks or jobs (``on_elected``,
        ``on_deposed``, ``every``), it starts the close and returns at once: the
        hand-over waits for that very callback, so waiting here would only wait for
        itself (until ``callback_timeout``). The group is closed once the callback has
        returned; no new leader work starts meanwhile.

        Called while :meth:`start` is still joining (from another thread), it makes that
        start raise GroupStateError once joined, and the group leaves at once. Called
        while another thread's close is under way, it waits for that close."""
        self._request_close()
        thread = self._thread
        if self._forked_from is not None or thread is None:
            return
        if thread is not threading.current_thread() and not is_worker_of(self):
            thread.join(self.close_bound)

    def _request_close(self) -> None:
        """Mark the group closed and tell its election thread to leave: now if it has
        joined, else as soon as it has (:meth:`_main` reads the mark under the lock)."""
        with self._lock:
            already, self._closed = self._closed, True
            loop, stop = self._loop, self._stop
        if already or self._forked_from is not None:
            return
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        asyncio.run(self._main(started))

    async def _main(self, started: concurrent.futures.Future[None]) -> None:
        self._stop = asyncio.Event()
        try:
            await self._group.__aenter__()
        except BaseException as exc:
            started.set_exception(exc)
            return
        with self._lock:
            closing = self._closed  # close() came while joining: it could not tell us
            if not closing:
                self._loop = asyncio.get_running_loop()
        if closing:
            try:
                await self._group.close()
            finally:
                started.set_exception(
                    GroupStateError(
                        f"group {self.name!r} was closed while it was starting; it has left"
                    )
                )
            return
        started.set_result(None)
        try:
            await self._stop.wait()
        finally:
            await self._group.close()
            self._loop = None

    def _forked(self, parent: int) -> None:
        """In a child process: this group's thread is gone, its connections are the
        parent's. Leave them be, and refuse every use with the fix."""
        if self._thread is not None and not self._closed:
            self._forked_from = parent
            _ABANDONED.append(self._group)


#: ``from notifelect.sync import ElectionGroup``: the facade under the familiar name.
ElectionGroup = SyncElectionGroup


def _require_plain(fn: object, what: str) -> None:
    if not callable(fn):
        raise ConfigurationError(f"{what} target is not callable: {fn!r}")
    if inspect.iscoroutinefunction(fn):
        raise ConfigurationError(
            f"{what} of a SyncElectionGroup takes a plain def function, got the coroutine "
            f"function {getattr(fn, '__qualname__', fn)!r}; use notifelect.ElectionGroup "
            "with 'async with' for async code"
        )


def _after_fork_in_child() -> None:
    """Mark the groups started in the parent as not usable here (see
    :meth:`SyncElectionGroup._check_process` for the error and the fix). Only threads
    of the forking one survive a fork, and the connections' sockets are shared with the
    parent: restarting them here silently would make the parent's election and the
    child's share a server session, and a child that quietly joined the election too
    would surprise more than a clear error."""
    parent = os.getppid()
    for group in list(_LIVE):
        group._forked(parent)


def _close_at_exit() -> None:
    """At interpreter exit, resign the groups still running in this process: the
    successor takes over at once instead of after a lease (daemon threads are still alive
    while ``atexit`` handlers run)."""
    for group in list(_LIVE):
        if group._pid == os.getpid():
            group.close()


def _late_failure(what: str, name: str, future: asyncio.Future[Any]) -> None:
    """Log the failure of a ``def`` callback's thread that was no longer waited for."""
    failure = None if future.cancelled() else future.exception()
    if isinstance(failure, Exception):
        log.error(
            "%s %s failed after it was no longer waited for",
            what,
            name,
            exc_info=failure,
            extra={"notifelect_event": "callback_failed"},
        )


os.register_at_fork(after_in_child=_after_fork_in_child)
# An atexit handler, which runs once every non-daemon thread has returned: a group lives
# as long as the process does, even after the main thread returned while other threads
# go on. (Not threading's own exit hooks, which run as soon as the main thread returns.)
# The callbacks' threads are daemon threads, so none of them holds the exit up.
atexit.register(_close_at_exit)
