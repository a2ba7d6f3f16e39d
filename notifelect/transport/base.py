"""The seam between the election and the database: what a transport must do."""

from __future__ import annotations

import abc
import os
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from ..rules import Freed as Freed  # how a standby saw a claim end

PayloadHandler = Callable[[str], None]
LostHandler = Callable[[BaseException | None], None]
RecordHandler = Callable[["LeaderRecord"], None]
#: Called with a term and its renewal, or None if the term was found lost.
RenewalHandler = Callable[[int, "Renewal | None"], None]


@dataclass(frozen=True)
class Member:
    """What a node tells the others about itself."""

    priority: int = 0
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    #: The URL this member advertises (``ElectionGroup(advertise_url=...)``), if any.
    url: str | None = None


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
    #: Seconds since the leader last renewed its lease, on the database's clock (used to
    #: tell a silent leader from a live one, never to time a wait); None if unknown.
    renewed_age: float | None = None
    #: The member that watches this leader's process to take over at once, if recorded.
    standby: int | None = None
    #: Seconds, on this node's own clock, since this node last saw the leader's lease
    #: renewed (a change of the renewal between two readings; see
    #: :func:`notifelect.rules.sight`): what tells a silent leader from a live one,
    #: whatever the database's clock does. None if unknown.
    quiet_for: float | None = None


@dataclass(frozen=True)
class Granted:
    """A claim was taken: ``term`` is the new fencing token.

    ``confirmed_at`` is the monotonic time at which the database was last asked; the lease
    runs from there.
    """

    term: int
    confirmed_at: float


@dataclass(frozen=True)
class Renewal:
    """A lease renewal: the standby to name, and the monotonic time at which the renewal
    was sent (the lease runs from there)."""

    standby: int | None
    confirmed_at: float


class LeaseLostError(Exception):
    """The database no longer lists this node's term as current."""


class TransportError(ConnectionError):
    """The transport lost its connection, or a call on it did not finish in time.

    The election treats it as a lost connection: leader-only work stops at once and the
    node reconnects. Transports raise it (or a subclass) instead of their driver's errors,
    so the election never needs to know which driver is underneath.
    """


class Transport(abc.ABC):
    """Moves election traffic and decides claims for one node of one group.

    A transport is opened once per connection: after a loss, ``open`` is called again and
    must re-listen and re-register. While open it ticks once per interval (see
    :meth:`observe`). Callbacks are invoked on the event loop and must not block.
    """

    #: Counters of what the transport did for the group (fencing, by kind); the driver
    #: hands it its own counters (``group.stats``) before opening.
    stats: Counter[str]

    @abc.abstractmethod
    def observe(self, on_record: RecordHandler, on_renewal: RenewalHandler) -> None:
        """Report what the transport's periodic tick finds, about once per interval: it
        renews the lease of the term this node holds and calls ``on_renewal`` with it
        (with None once the term is found lost), and otherwise reads the group's leader
        row and calls ``on_record`` with it (to a follower, the leader's heartbeat)."""

    @abc.abstractmethod
    async def open(self, on_payload: PayloadHandler, on_lost: LostHandler) -> int:
        """Connect, check the schema, listen, register; return this node's sequence id.

        The id is drawn once; reopening keeps it.
        """

    @abc.abstractmethod
    async def publish(self, payload: str) -> None:
        """Broadcast ``payload`` to every node of every group on the channel."""

    @abc.abstractmethod
    async def send(self, node: int, payload: str) -> None:
        """Deliver ``payload`` to node ``node`` alone (see :func:`notifelect.rules.addressee`);
        nothing happens if it is not there."""

    @abc.abstractmethod
    async def claim(self, *, fence: bool, evidence: int | None = None) -> Granted | None:
        """Try to take the group's claim and a new term; None if another node holds it.

        With ``fence``, a holder whose lease renewals have stopped is terminated first.
        Whenever the previous term was not released cleanly, the claim is granted only
        after a whole lease has passed on this node's clock since the claim was taken,
        unless the previous leader was node ``evidence``, whose process the standby saw
        end (:attr:`Freed.DIED`).
        """

    @abc.abstractmethod
    async def renew(self, term: int) -> Renewal:
        """Confirm ``term`` is still current and renew its lease now, besides the ticks
        (a leader whose work finishes in a hand-over keeps it renewed so); return the
        standby's id and when the renewal was sent.

        Raises LeaseLostError if the term is no longer current.
        """

    @abc.abstractmethod
    async def release(self, term: int, reason: str) -> None:
        """Mark ``term`` as ended cleanly and give the claim back."""

    @abc.abstractmethod
    async def successor(self) -> int | None:
        """The highest-ranked other live member, if any."""

    @abc.abstractmethod
    async def survey(
        self,
    ) -> tuple[bool, tuple[int, int] | None, tuple[int, int, int, int | None] | None]:
        """Whether the claim is held, the best candidate as (priority, node), and the
        recorded leadership as (priority, node, term, standby) while the claim is held.

        The best candidate is the highest-ranked live member, not counting the recorded
        leader while the claim is held: the node that should take over from it.
        """

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
    async def watch(self, leader: int) -> Freed:
        """Block while node ``leader``'s process is alive and leads; say how it ended.

        The standby calls it. Its answer is :attr:`Freed.DIED` only if this call itself
        saw the leader's anchor held and then freed, on one unbroken connection.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Unregister and disconnect; never raises."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the election connection at once without talking to the database (the
        claim is freed); never raises. The node's anchor stays: see :meth:`release_anchor`.
        """

    @abc.abstractmethod
    def release_anchor(self) -> None:
        """Let the node's anchor go (its end tells a standby the node can act no more).

        The group calls it only once its leader work has stopped; never raises.
        """
