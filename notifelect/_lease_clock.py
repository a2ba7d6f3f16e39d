"""This node's own lease: when it was renewed, when it lapses.

One group's clock, kept by its driver. A term granted at a time confirmed by the database
starts a :class:`~notifelect.leadership.Leadership` whose lease runs from there; every
renewal the session reports moves its end on (:func:`notifelect.rules.lease_end`); a
timer looks at it when it would run out, and at least every half interval (the event
loop's timers stop during a suspend, the lease's clock does not). When it lapses, the
driver is told once: the leadership has already ended by then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from . import rules
from ._clock import now
from .leadership import Leadership
from .schema import Names


class LeaseClock:
    """The lease of the leadership this node holds in one group, if any."""

    def __init__(
        self,
        namespace: str,
        names: Names,
        *,
        lease: float,
        interval: float,
        on_lapse: Callable[[Leadership], None],
    ) -> None:
        self._namespace = namespace
        self._names = names
        self._lease = lease
        self._interval = interval
        self._on_lapse = on_lapse
        self.leadership: Leadership | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: When the database confirmed each term granted but not yet led (this clock).
        self._granted: dict[int, float] = {}

    def granted(self, term: int, confirmed_at: float) -> None:
        """The claim gave ``term``, confirmed by the database at ``confirmed_at``."""
        self._granted[term] = confirmed_at

    def start(self, term: int, node: int) -> Leadership:
        """Lead ``term``: its lease runs from the grant's confirmation."""
        confirmed_at = self._granted.pop(term, now())
        end = rules.lease_end(confirmed_at, self._lease)
        ls = Leadership(self._namespace, self._names, term, node, end)
        self.leadership = ls
        self._arm()
        return ls

    def renewed(self, term: int, confirmed_at: float) -> bool:
        """The database renewed ``term``'s lease at ``confirmed_at``; False if this node
        does not hold that term (any more)."""
        ls = self.leadership
        if ls is None or ls.term != term or ls._ended:
            return False
        ls._renewed(confirmed_at, self._lease)
        self._arm()
        return True

    def age(self) -> float | None:
        """Seconds since the lease of the leadership held was last renewed (None: none)."""
        ls = self.leadership
        if ls is None or ls._ended:
            return None
        return rules.lease_age(ls._valid_until, self._lease, now())

    def stop(self) -> None:
        """Stop looking at the lease (the leadership is over, or the node stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def clear(self) -> None:
        """The leadership is over and its work has stopped."""
        self.stop()
        self.leadership = None

    def _arm(self) -> None:
        self.stop()
        ls = self.leadership
        if ls is None:
            return
        delay = rules.lease_recheck(ls._valid_until, now(), self._interval)
        self._timer = asyncio.get_running_loop().call_later(delay, self._check, ls)

    def _check(self, ls: Leadership) -> None:
        if ls is not self.leadership or ls._ended:
            return
        if ls.is_valid:
            self._arm()
            return
        ls._end("lease expired")
        self._on_lapse(ls)
