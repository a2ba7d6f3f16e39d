"""What a node believes about its group's leader, and why.

One group's view, kept by its driver: the leadership the database last confirmed (from
the leader row its session reads every interval, or read to check a message), what is
known of the leader (host, pid, since), when this node last saw the leader's lease
renewed, and the vacancies between leaderships as this node saw them. It turns the
session's leader rows into the protocol's ``LeaderSeen`` and decides, with
:func:`notifelect.rules.believe`, what a message means, reading the facts that rule asks
for. It does no I/O of its own: the reads are the driver's (bounded, and a failure drops
the connection).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Awaitable, Callable

from . import protocol, rules
from ._clock import now
from .health import Vacancies
from .leadership import LeaderInfo
from .messages import Kind, Message, Rank
from .transport.base import LeaderRecord

#: Reads the group's leader row (None: no row, or the read failed and the connection
#: is being replaced: then ``connected()`` says so).
ReadRecord = Callable[[], Awaitable[LeaderRecord | None]]
#: Asks whether ``node`` is a live member with ``priority`` (None: the read failed).
ReadMember = Callable[[int, int], Awaitable[bool | None]]


class LeaderView:
    """One group's view of its leader, as one node sees it (module docstring)."""

    def __init__(self, leader_timeout: float, stats: Counter[str]) -> None:
        self._timeout = leader_timeout
        self._stats = stats
        #: Who leads, as the database last described the leadership (host, pid, since).
        self.info: LeaderInfo | None = None
        #: How long the group went without a leader, as this node saw it.
        self.vacancies = Vacancies()
        #: The leadership (node, term) the database last confirmed alive, and when.
        self.verified: tuple[int, int] | None = None
        self._verified_at = 0.0
        #: The last renewal of a leader's lease this node saw: (node, term, when, on this
        #: node's clock).
        self._renewal: tuple[int, int, float] | None = None
        #: The leadership (node, term) last known, and the open vacancy: since when, and
        #: which leadership was lost.
        self._known: tuple[int, int] | None = None
        self._vacant: tuple[float, tuple[int, int]] | None = None

    def reset(self) -> None:
        """A new connection: nothing is confirmed on it yet."""
        self.verified = None

    # ------------------------------------------------------------ who leads

    def leader(self, proto: protocol.State | None) -> LeaderInfo | None:
        """Who leads as the protocol follows it, with what the database said of it."""
        if proto is None or proto.role is protocol.Role.STOPPED or proto.leader is None:
            return None
        info = self.info
        if info is not None and info.node == proto.leader.node:
            return info
        leader = proto.leader
        return LeaderInfo(leader.node, leader.priority, proto.leader_term or 0, None, None, None)

    def renewal_age(self, leader: LeaderInfo | None) -> float | None:
        """Seconds since ``leader`` was last seen to renew its lease (this node's clock)."""
        seen = self._renewal
        if leader is None or seen is None or seen[:2] != (leader.node, leader.term):
            return None
        return max(0.0, now() - seen[2])

    def leading(self, info: LeaderInfo) -> None:
        """This node took a term: it is the leader it knows of."""
        self.info = info
        self.verified = (info.node, info.term)

    # ------------------------------------------------------------ what the database shows

    def seen(self, record: LeaderRecord, me: int | None) -> protocol.LeaderSeen | None:
        """Take in the leader row the session read; the protocol's event for it (None:
        nothing to tell, as for this node's own row).

        A released row is no sign of life, but it is news: a hand-over's RESIGN goes to
        the successor alone, and the others learn from this row that the leader they
        follow has gone (the protocol lets it go, see ``protocol.LeaderSeen``)."""
        if record.node == me or record.quiet_for is None:
            return None
        if record.released:
            return _event(record, now() - record.quiet_for)
        renewed_at = now() - record.quiet_for  # the database's age is not this clock's
        self._saw_renewal(record.node, record.term, renewed_at)
        if not rules.leader_silent(record.quiet_for, self._timeout):
            self._confirm(record)
        info = self.info
        if info is None or (info.node, info.term) != (record.node, record.term):
            self._stats["records"] += 1
            self.info = LeaderInfo.from_record(record)
        return _event(record, renewed_at)

    def _confirm(self, record: LeaderRecord) -> None:
        self.verified = (record.node, record.term)
        self._verified_at = now()

    def _saw_renewal(self, node: int, term: int, at: float) -> None:
        seen = self._renewal
        if seen is None or seen[:2] != (node, term) or seen[2] < at:
            self._renewal = (node, term, at)
        vacant = self._vacant
        if vacant is not None and vacant[1] == (node, term) and at > vacant[0]:
            self._vacant = None  # it renewed after it seemed lost: this node lost sight of it

    def time_vacancy(self, info: LeaderInfo | None) -> None:
        """A vacancy runs from the moment this node sees no leader after it knew one to the
        moment it knows a different leadership. Seeing the lost one again does not end it
        (a late message of a dead leader); a renewal of it made after the loss cancels it
        (only this node had lost sight of it, as across its own reconnect)."""
        at = now()
        if info is None:
            if self._vacant is None and self._known is not None:
                self._vacant = (at, self._known)
            return
        current = (info.node, info.term)
        if self._vacant is not None:
            since, lost = self._vacant
            if current != lost:
                self.vacancies.observe(at - since)
                self._vacant = None
        elif self._known is not None and current != self._known:
            self.vacancies.observe(0.0)  # the next leader was seen before any gap was
        self._known = current

    # ------------------------------------------------------------ messages

    async def believe(
        self,
        m: Message,
        proto: protocol.State,
        *,
        preempts: bool,
        read_record: ReadRecord,
        read_member: ReadMember,
        connected: Callable[[], bool],
    ) -> protocol.Event | None:
        """What message ``m`` means: the event to apply (the message itself, or for a
        leader's announcement the leader row that confirms it), or None (not believed,
        counted as dropped or ignored). :func:`notifelect.rules.believe` decides; this
        reads the facts it asks for."""
        if m.rank.node == proto.rank.node:
            return protocol.Receive(m)  # (the protocol ignores its own messages)
        view = rules.View(
            me=proto.rank.node,
            leading=proto.role is protocol.Role.LEADER,
            leader_term=proto.leader_term,
            verified=self.verified,
            verified_age=now() - self._verified_at,
            leader_timeout=self._timeout,
            preempts=preempts,
        )
        record: LeaderRecord | None = None
        while True:
            verdict = rules.believe(m, view)
            if verdict is rules.Ask.RECORD:
                record = await read_record()
                if not connected():
                    return None  # the read failed: the connection is being replaced
                view = dataclasses.replace(view, record=record, record_read=True)
            elif verdict is rules.Ask.MEMBER:
                member = await read_member(m.rank.node, m.rank.priority)
                if member is None:
                    return None
                view = dataclasses.replace(view, member=member)
            else:
                break
        if not verdict.believed:
            self._count(verdict)
            return None
        if m.kind in (Kind.COORDINATOR, Kind.HEARTBEAT) and record is not None:
            # An older node's announcement: what is believed is the row that confirms it.
            self._confirm(record)
            self.info = LeaderInfo.from_record(record)
            return _event(record, now() - (record.quiet_for or 0.0))
        return protocol.Receive(m)

    def _count(self, verdict: rules.Belief) -> None:
        if verdict.ignored:
            self._stats[f"ignored:{verdict.reason}"] += 1
        else:
            self._stats[f"dropped:{verdict.reason}"] += 1
            self._stats["dropped"] += 1


def _event(record: LeaderRecord, renewed_at: float) -> protocol.LeaderSeen:
    leader = Rank(record.priority, record.node)
    return protocol.LeaderSeen(leader, record.term, record.standby, renewed_at, record.released)
