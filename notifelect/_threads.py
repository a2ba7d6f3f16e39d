"""Blocking calls made from an event loop, each on a thread of its own.

Plain ``def`` leader work of the thread facade and the blocking steps of connecting
through a sync engine (its ``do_connect`` listeners may fetch a token) run here, not in a
``concurrent.futures`` executor (nor ``asyncio.to_thread``, which uses the loop's
default one): once the main thread returns, ``concurrent.futures`` shuts down every
executor of the process (its ``threading`` exit hook) even while other threads keep the
process alive, and every later submission fails. A service whose main thread only starts
worker threads would then run no leader work and never reconnect. A thread per call costs
little next to what it runs (a job, a connection attempt).

The threads are daemon threads: one blocked in user code never keeps the process from
exiting, and the group's exit handler still gets to resign.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["in_thread", "is_worker_of"]

R = TypeVar("R")

#: The owner (any object, e.g. a group) of the calling thread, when it is one of ours.
_owner = threading.local()


def in_thread(fn: Callable[[], R], *, name: str, owner: object = None) -> asyncio.Future[R]:
    """Run ``fn()`` on a new daemon thread named ``name``, in a copy of the caller's
    context (context variables carry over); return a future of the running loop that
    gets its outcome. Cancelling the future does not stop the thread (nothing can): its
    outcome is then dropped. ``owner`` is what :func:`is_worker_of` answers for."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[R] = loop.create_future()
    context = contextvars.copy_context()

    def settle(ok: bool, outcome: Any) -> None:
        if future.done():
            return  # cancelled meanwhile
        if ok:
            future.set_result(outcome)
        else:
            future.set_exception(outcome)

    def run() -> None:
        _owner.value = owner
        ok: bool
        outcome: Any
        try:
            result = context.run(fn)
        except BaseException as exc:  # handed to the awaiting side, whatever it is
            ok, outcome = False, exc
        else:
            ok, outcome = True, result
        finally:
            _owner.value = None
        # A closed loop (RuntimeError): nobody waits for the outcome any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, ok, outcome)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def is_worker_of(owner: object) -> bool:
    """Whether the calling thread is running a call :func:`in_thread` started for
    ``owner``."""
    return owner is not None and getattr(_owner, "value", None) is owner
