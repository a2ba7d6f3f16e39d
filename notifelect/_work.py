"""The work that runs under a node's leaderships, and what happens to it when one ends.

:class:`LeaderWork` starts the ``on_elected`` tasks of a new leadership, tracks every
``leader_only`` call (coroutines as tasks, plain ``def`` calls in any thread), and stops
them when the leadership ends:

* on a *hand-over* (the node still holds its claim) no new call is admitted, calls marked
  ``finish_on_loss`` and plain ``def`` calls may finish while the lease keeps being
  renewed (at most ``finish_timeout``), everything else is cancelled and awaited;
* on a *loss* (connection or lease gone) everything is cancelled at once: nothing vouches
  for the leadership any more.

Every wait is bounded (``callback_timeout``, ``finish_timeout``), so a callback that hangs
or ignores cancellation is logged and left behind rather than wedging the node.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .leadership import DeposedCallback, ElectedCallback, Leadership, _current
from .settings import Settings

log = logging.getLogger(__name__)

Extra = Callable[..., dict[str, object]]


@dataclass(eq=False)
class _Call:
    """A leader-only ``async def`` call in flight."""

    task: asyncio.Task[Any]
    cancel_on_loss: bool


class LeaderWork:
    """Leader work of one group's node (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        elected: list[tuple[ElectedCallback, bool]],
        deposed: list[DeposedCallback],
        *,
        extra: Extra,
        on_failed: Callable[[Leadership], None],
    ) -> None:
        self.settings = settings
        self._elected = elected
        self._deposed = deposed
        self._extra = extra
        self._on_failed = on_failed  # an on_elected callback asked to resign
        self._tasks: set[asyncio.Task[Any]] = set()
        self._calls: set[_Call] = set()
        self._threads: set[concurrent.futures.Future[None]] = set()
        self._threads_lock = threading.Lock()

    # ------------------------------------------------------------ starting and tracking

    def start(self, ls: Leadership) -> None:
        """Start every ``on_elected`` callback for the new leadership ``ls``."""
        for callback, resign_on_error in self._elected:
            task = asyncio.create_task(self._run_elected(callback, ls, resign_on_error))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_elected(self, callback: ElectedCallback, ls: Leadership, resign: bool) -> None:
        _current.set(ls)
        try:
            await callback(ls)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "on_elected callback %s failed on node %s (term %s)%s",
                getattr(callback, "__qualname__", callback),
                ls.node,
                ls.term,
                "; resigning so another node can lead" if resign else "",
                extra=self._extra("callback_failed", term=ls.term),
            )
            if resign:
                self._on_failed(ls)

    def track_call(self, task: asyncio.Task[Any], cancel_on_loss: bool) -> None:
        call = _Call(task, cancel_on_loss)
        self._calls.add(call)
        task.add_done_callback(lambda _: self._calls.discard(call))

    @contextlib.contextmanager
    def track_thread(self) -> Iterator[None]:
        """Count a plain ``def`` leader-only call (any thread) until it returns."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._threads_lock:
            self._threads.add(done)
        try:
            yield
        finally:
            with self._threads_lock:
                self._threads.discard(done)
            done.set_result(None)

    # ------------------------------------------------------------ stopping

    def cancel(self, *, everything: bool) -> list[asyncio.Task[Any]]:
        """Cancel ``on_elected`` tasks and the calls that must not outlive the leadership
        (all calls with ``everything``); return the cancelled tasks. A task is cancelled
        once: a second cancellation would cut its own clean-up short."""
        cancelled = list(self._tasks)
        cancelled += [c.task for c in self._calls if everything or c.cancel_on_loss]
        for task in cancelled:
            if not task.cancelling():
                task.cancel()
        return cancelled

    async def stopped(self, timeout: float) -> None:
        """Wait (up to ``timeout``) until no tracked work runs any more, threads included."""
        with self._threads_lock:
            threads = [asyncio.wrap_future(f) for f in self._threads]
        pending = [*self._tasks, *(c.task for c in self._calls), *threads]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def stop(
        self,
        ls: Leadership,
        reason: str,
        *,
        voluntary: bool,
        renew: Callable[[Leadership], Awaitable[None]],
    ) -> None:
        """End ``ls``'s work as the module docstring says, then run ``on_deposed``.

        ``renew`` renews the lease once; it is called every interval while work finishes
        during a hand-over.
        """
        if voluntary:
            ls._drain(reason)  # no new work; what may finish still sees a valid leadership
        else:
            ls._end(reason)
        cancelled = self.cancel(everything=not voluntary)
        finishing = [c.task for c in self._calls if not c.task.done() and c.task not in cancelled]
        with self._threads_lock:
            threads = [asyncio.wrap_future(f) for f in self._threads]
        # During a hand-over the claim is still this node's: keep its lease renewed for as
        # long as anything of it runs (cancelled work winding down, work allowed to finish,
        # on_deposed), so the hand-over stays clean. After a loss nothing can be renewed.
        renewing = None
        if voluntary and ls.is_valid:
            renewing = asyncio.create_task(self._keep_renewing(ls, finishing, renew))
        try:
            await self._wait_for(
                cancelled, self.settings.callback_timeout, "cancelled leader work", ls
            )
            if finishing or threads:
                left = await self._wait_for(
                    [*finishing, *threads], self.settings.finish_timeout, "work finishing", ls
                )
                for task in left:
                    if not (isinstance(task, asyncio.Task) and task.cancelling()):  # once
                        task.cancel()
                await self._wait_for(
                    [t for t in left if t in finishing], self.settings.callback_timeout, "work", ls
                )
            ls._end(reason)
            for callback in self._deposed:
                try:
                    async with asyncio.timeout(self.settings.callback_timeout):
                        await callback(ls)
                except TimeoutError:
                    log.error(
                        "on_deposed callback %s took over %.1fs; no longer waiting for it",
                        getattr(callback, "__qualname__", callback),
                        self.settings.callback_timeout,
                        extra=self._extra("callback_timeout", term=ls.term),
                    )
                except Exception:
                    log.exception(
                        "on_deposed callback failed", extra=self._extra("callback_failed")
                    )
        finally:
            ls._end(reason)
            if renewing is not None:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing

    async def _wait_for(
        self, tasks: Sequence[asyncio.Future[Any]], timeout: float, what: str, ls: Leadership
    ) -> list[asyncio.Future[Any]]:
        """Wait for ``tasks`` up to ``timeout``; log and return those still running."""
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return []
        _, still = await asyncio.wait(pending, timeout=timeout)
        if still:
            log.error(
                "%d %s still running after %.1fs on node %s of group %r; no longer waiting",
                len(still),
                what,
                timeout,
                ls.node,
                ls.namespace,
                extra=self._extra("callback_timeout", term=ls.term),
            )
        return list(still)

    async def _keep_renewing(
        self,
        ls: Leadership,
        finishing: list[asyncio.Task[Any]],
        renew: Callable[[Leadership], Awaitable[None]],
    ) -> None:
        """While work finishes during a hand-over, keep the claim's lease renewed; if the
        lease can no longer be vouched for, cancel that work too."""
        try:
            while True:
                await asyncio.sleep(self.settings.election_interval)
                await renew(ls)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "could not renew the lease of term %s while work finished: %r; cancelling it",
                ls.term,
                exc,
                extra=self._extra("lapsed", term=ls.term),
            )
            ls._end("lease could not be renewed")
            for task in finishing:
                if not task.cancelling():  # once (see cancel)
                    task.cancel()


__all__ = ["LeaderWork"]
