"""The seam between the election and the database: what a transport must do."""

from __future__ import annotations

import abc
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

PayloadHandler = Callable[[str], None]
LostHandler = Callable[[BaseException | None], None]


@dataclass(frozen=True)
class Member:
    """What a node tells the others about itself."""

    priority: int = 0
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


@dataclass(frozen=True)
class LeaderRecord:
    """The leadership the database knows of for a group."""

    node: int
    priority: int
    term: int
    host: str
    pid: int
    since: datetime
    released: bool


@dataclass(frozen=True)
class Granted:
    """A claim was taken: ``term`` is the new fencing token.

    ``confirmed_at`` is the monotonic time at which the database was last asked; the lease
    runs from there.
    """

    term: int
    confirmed_at: float


class LeaseLostError(Exception):
    """The database no longer lists this node's term as current."""


class Transport(abc.ABC):
    """Moves election traffic and decides claims for one node of one group.

    A transport is opened once per connection: after a loss, ``open`` is called again and
    must re-listen and re-register. Callbacks are invoked on the event loop and must not
    block.
    """

    @abc.abstractmethod
    async def open(self, on_payload: PayloadHandler, on_lost: LostHandler) -> int:
        """Connect, check the schema, listen, register; return this node's sequence id.

        The id is drawn once; reopening keeps it.
        """

    @abc.abstractmethod
    async def publish(self, payload: str) -> None:
        """Broadcast ``payload`` to every node of every group on the channel."""

    @abc.abstractmethod
    async def claim(self, *, fence: bool) -> Granted | None:
        """Try to take the group's claim and a new term; None if another node holds it.

        With ``fence``, a holder whose lease renewals have stopped is terminated first,
        and the old lease is waited out before the claim is granted.
        """

    @abc.abstractmethod
    async def renew(self, term: int) -> int | None:
        """Confirm ``term`` is still current and renew its lease; return the standby's id.

        Raises LeaseLostError if the term is no longer current.
        """

    @abc.abstractmethod
    async def release(self, term: int, reason: str) -> None:
        """Mark ``term`` as ended cleanly and give the claim back."""

    @abc.abstractmethod
    async def successor(self) -> int | None:
        """The highest-ranked other live member, if any."""

    @abc.abstractmethod
    async def is_member(self, node: int, priority: int) -> bool:
        """Whether ``node`` is a live member of the group with ``priority``.

        Messages can be forged by anyone who can NOTIFY on the channel; before a claim in a
        message changes who leads, the group asks the database whether its sender exists.
        """

    @abc.abstractmethod
    async def leader(self) -> LeaderRecord | None:
        """The group's current leadership as the database records it."""

    @abc.abstractmethod
    async def watch(self) -> bool:
        """Return once the claim is free: True if the holder released it, False if its
        session ended."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Unregister and disconnect; never raises."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the connection at once without talking to the database."""
