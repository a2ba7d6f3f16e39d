"""Waiting on conditions with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from notifelect import ElectionGroup

T = TypeVar("T")


async def eventually(probe: Callable[[], T], *, timeout: float = 5.0, what: str = "condition") -> T:
    """Poll ``probe`` on every loop tick (yielding) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s (last: {value!r})")
        await asyncio.sleep(0.002)


async def until(
    groups: Sequence[ElectionGroup],
    predicate: Callable[[], T],
    *,
    timeout: float = 5.0,
    what: str = "condition",
) -> T:
    """Wait until ``predicate()`` is truthy, re-checking whenever any group changes."""
    deadline = time.monotonic() + timeout
    while True:
        events = [g._changed for g in groups]  # captured before the check: no lost wake-up
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{what} not reached within {timeout}s (last: {value!r})")
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
