"""A group's inbox: what its driver handles next, and the messages of its channel.

The driver's own decisions (timers, claims, losses, the leader rows its session read) go
before messages, and messages are bounded: under a burst of notifications nothing the
driver decided waits behind hundreds of them. :class:`Intake` turns the channel's
payloads into queued messages, counting (and, at most every ``WARN_EVERY`` seconds,
saying) what it drops.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from . import messages, protocol
from ._clock import now

log = logging.getLogger(__name__)

#: Messages waiting for the driver beyond this are dropped (and counted): the election
#: recovers from lost messages (timers, database surveys), not from an unbounded backlog.
MAX_QUEUED_MESSAGES = 10_000
#: Dropped messages are said at most this often (seconds) per group.
WARN_EVERY = 10.0


class Control(enum.Enum):
    """The driver's own requests to its loop."""

    STOP = "stop"
    ABDICATE = "abdicate"


@dataclass(frozen=True)
class Lost:
    """The connection of ``generation`` was lost."""

    generation: int
    reason: str


Queued = protocol.Event | Control | Lost


class Inbox:
    """The driver's inbox: its own decisions go before messages; messages are bounded."""

    def __init__(self, limit: int = MAX_QUEUED_MESSAGES) -> None:
        self._urgent: collections.deque[Queued] = collections.deque()
        self._messages: collections.deque[Queued] = collections.deque()
        self._limit = limit
        self._ready = asyncio.Event()

    def put(self, event: Queued) -> bool:
        """Queue ``event``; False if it was a message and the queue was full (dropped)."""
        if isinstance(event, protocol.Receive):
            if len(self._messages) >= self._limit:
                return False
            self._messages.append(event)
        else:
            self._urgent.append(event)
        self._ready.set()
        return True

    async def get(self) -> Queued:
        while not (self._urgent or self._messages):
            self._ready.clear()
            await self._ready.wait()
        return self._urgent.popleft() if self._urgent else self._messages.popleft()

    def clear(self, *, keep: Queued) -> None:
        """Drop everything queued except ``keep`` events."""
        kept = [e for e in self._urgent if e is keep]
        self._urgent.clear()
        self._messages.clear()
        self._urgent.extend(kept)


class Intake:
    """The payloads of a group's channel, parsed into its inbox (or counted as dropped)."""

    def __init__(
        self,
        name: str,
        secret: bytes | None,
        inbox: Inbox,
        stats: Counter[str],
        extra: Callable[..., dict[str, object]],
    ) -> None:
        self._name = name
        self._secret = secret
        self._inbox = inbox
        self._stats = stats
        self._extra = extra
        self._last_warning = 0.0
        self._warned_count = 0

    def payload(self, payload: str) -> None:
        self._stats["received"] += 1
        parsed = messages.parse(payload, self._name, self._secret)
        if isinstance(parsed, messages.Rejected):
            if parsed.reason == "other namespace":
                self._stats["ignored:other namespace"] += 1
            else:
                self._drop(parsed.reason, payload)
            return
        if not self._inbox.put(protocol.Receive(parsed)):
            self._drop("queue full", payload)

    def _drop(self, reason: str, payload: str) -> None:
        stats = self._stats
        stats[f"dropped:{reason}"] += 1
        stats["dropped"] += 1
        t = now()
        if t - self._last_warning >= WARN_EVERY:
            log.warning(
                "dropped %d bad message(s) on group %r since the last warning; latest: %s: %.80r",
                stats["dropped"] - self._warned_count,
                self._name,
                reason,
                payload,
                extra=self._extra("dropped", reason=reason),
            )
            self._last_warning = t
            self._warned_count = stats["dropped"]
