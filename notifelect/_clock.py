"""The one clock every lease, timer and wait of notifelect is measured on.

Leases must keep running while the machine is suspended: ``time.monotonic()`` stops during
a VM or host suspend on Linux, so a leader resumed after a suspend would still trust a
lease that ran out long ago. ``CLOCK_BOOTTIME`` counts suspended time and never jumps with
the wall clock; where it does not exist (macOS, Windows) the monotonic clock is the best
there is.
"""

from __future__ import annotations

import time

__all__ = ["CLOCK_NAME", "now"]

_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def _boottime() -> float:
    assert _BOOTTIME is not None
    return time.clock_gettime(_BOOTTIME)


def _probe() -> bool:
    if _BOOTTIME is None:
        return False
    try:
        time.clock_gettime(_BOOTTIME)
    except OSError:  # pragma: no cover - a kernel without it
        return False
    return True


if _probe():
    now = _boottime
    CLOCK_NAME = "CLOCK_BOOTTIME"
else:  # pragma: no cover - not Linux
    now = time.monotonic
    CLOCK_NAME = "monotonic"
