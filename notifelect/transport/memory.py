"""An in-process transport: a message bus and claim table shared by nodes in one event loop.

It keeps the guarantees the PostgreSQL transport gives (one claim holder per group, terms
that only grow, a dead process's claim is freed, a successor waits out the lease unless
it saw the old leader's process end) and runs the election as it runs there: each node
ticks once per interval like an election session, renewing the lease of the term it holds
and reading the group's leader row (the followers' heartbeat). So the election, and
users' own leader-only code, can be tested without a database::

    bus = MemoryBus()
    group = ElectionGroup.in_memory(bus, "reports")

``bus.disconnect(node)`` ends a node's session as the server would (a terminated backend:
the process lives on); ``bus.kill(node)`` ends the node's process (its anchor too, so the
standby may take over at once); ``bus.pause(node)`` freezes a node's session like a
stopped process: it keeps the claim (and its anchor), renews nothing, and its calls wait
until it resumes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .._clock import now
from ..rules import best_candidate, how_it_ended, may_fence, standby, successor, takeover_wait
from .base import (
    Freed,
    Granted,
    LeaderRecord,
    LeaseLostError,
    LostHandler,
    Member,
    PayloadHandler,
    RecordHandler,
    Renewal,
    RenewalHandler,
    Transport,
    TransportError,
)


@dataclass
class _Group:
    holder: MemoryTransport | None = None
    term: int = 0
    record: LeaderRecord | None = None
    renewed_at: float = 0.0
    freed: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryBus:
    """Shared state of all memory transports that talk to each other."""

    def __init__(
        self,
        *,
        lease: float = 1.5,
        leader_timeout: float = 2.0,
        strict_takeover: bool = True,
        interval: float = 0.5,
    ) -> None:
        self._next_node = 0
        self._groups: dict[str, _Group] = {}
        self._open: dict[int, MemoryTransport] = {}
        #: Every node's transport, open or not (a paused node may be cut off meanwhile).
        self._nodes: dict[int, MemoryTransport] = {}
        #: Anchors of living processes: the event is set when the process ends.
        self._anchors: dict[int, asyncio.Event] = {}
        #: How many standbys watch each node's process right now.
        self.watchers: collections.Counter[int] = collections.Counter()
        self.lease = lease
        self.leader_timeout = leader_timeout
        self.strict_takeover = strict_takeover
        #: How often each node ticks (``Settings.election_interval``), unless its
        #: transport is given its own.
        self.interval = interval
        #: Every leadership granted, in order, per namespace: (node, term).
        self.terms: dict[str, list[tuple[int, int]]] = {}

    def transport(
        self,
        namespace: str,
        member: Member | None = None,
        *,
        strict_takeover: bool | None = None,
        interval: float | None = None,
    ) -> MemoryTransport:
        strict = self.strict_takeover if strict_takeover is None else strict_takeover
        return MemoryTransport(
            self,
            namespace,
            member or Member(),
            strict_takeover=strict,
            interval=self.interval if interval is None else interval,
        )

    def group(self, namespace: str) -> _Group:
        return self._groups.setdefault(namespace, _Group())

    def next_node(self) -> int:
        self._next_node += 1
        return self._next_node

    def broadcast(self, payload: str) -> None:
        loop = asyncio.get_running_loop()
        for transport in list(self._open.values()):
            if not transport.paused:
                loop.call_soon(transport.deliver, payload)

    def send(self, node: int, payload: str) -> None:
        transport = self._open.get(node)
        if transport is not None and not transport.paused:
            asyncio.get_running_loop().call_soon(transport.deliver, payload)

    def holder(self, namespace: str) -> int | None:
        """Node id holding the claim of ``namespace``, if any."""
        holder = self.group(namespace).holder
        return None if holder is None else holder.node

    def disconnect(self, node: int) -> None:
        """End ``node``'s session as the server would: the process (and its anchor) lives."""
        transport = self._open.get(node)
        if transport is not None:
            transport.drop(notify=True)

    def kill(self, node: int) -> None:
        """End ``node``'s process: its session and its anchor end at once, unnoticed by it."""
        transport = self._open.get(node)
        if transport is not None:
            transport.drop(notify=False)
            transport.dead = True
        self.unanchor(node)

    def pause(self, node: int, paused: bool = True) -> None:
        """Freeze (or resume) ``node``: it neither sends, receives nor renews, but keeps its
        claim and its anchor; its calls wait until it resumes."""
        self._nodes[node].set_paused(paused)

    def anchor(self, node: int) -> None:
        self._anchors.setdefault(node, asyncio.Event())

    def unanchor(self, node: int) -> None:
        ended = self._anchors.pop(node, None)
        if ended is not None:
            ended.set()

    def register(self, transport: MemoryTransport) -> None:
        assert transport.node is not None
        self._open[transport.node] = transport
        self._nodes[transport.node] = transport

    def unregister(self, transport: MemoryTransport) -> None:
        if transport.node is not None and self._open.get(transport.node) is transport:
            del self._open[transport.node]
        for group in self._groups.values():
            if group.holder is transport:
                group.holder = None
                group.freed.set()

    def members(self, namespace: str) -> list[MemoryTransport]:
        return [t for t in self._open.values() if t.namespace == namespace]


class MemoryTransport(Transport):
    def __init__(
        self,
        bus: MemoryBus,
        namespace: str,
        member: Member,
        *,
        strict_takeover: bool = True,
        interval: float = 0.5,
    ) -> None:
        self.bus = bus
        self.strict_takeover = strict_takeover
        self.interval = interval
        self.namespace = namespace
        self.member = member
        self.node: int | None = None
        self.paused = False
        self.dead = False
        self._wake = asyncio.Event()
        self._open = False
        self._on_payload: PayloadHandler | None = None
        self._on_lost: LostHandler | None = None
        self._on_record: RecordHandler | None = None
        self._on_renewal: RenewalHandler | None = None
        self._ticker: asyncio.Task[None] | None = None
        #: The term this node holds, as its ticks renew it.
        self._term: int | None = None
        #: What a paused node was asked to do meanwhile (drop its session, let its
        #: anchor go): done when it resumes, as a stopped process would.
        self._deferred: list[str] = []

    def observe(self, on_record: RecordHandler, on_renewal: RenewalHandler) -> None:
        self._on_record = on_record
        self._on_renewal = on_renewal

    async def open(self, on_payload: PayloadHandler, on_lost: LostHandler) -> int:
        while self.paused:  # a stopped process does not reconnect
            await self._wake.wait()
        if self.dead:
            raise TransportError("the process of this node was killed")
        if self.node is None:
            self.node = self.bus.next_node()
        self._on_payload, self._on_lost = on_payload, on_lost
        self._open = True
        self.bus.register(self)
        self.bus.anchor(self.node)
        self._ticker = asyncio.create_task(self._tick_loop(), name=f"notifelect:memory:{self.node}")
        return self.node

    async def _awake(self) -> None:
        """Wait while the node is paused (a stopped process makes no call), unless its
        session ends meanwhile."""
        while self.paused and self._open:
            await self._wake.wait()

    def _nudge(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    async def _tick_loop(self) -> None:
        """Once per interval, as an election session does: renew the lease of the term
        held and read the group's leader row."""
        while self._open:
            await asyncio.sleep(self.interval)
            await self._awake()
            if self._open:
                self._tick()

    def _tick(self) -> None:
        group = self.bus.group(self.namespace)
        term = self._term
        if term is not None:
            if self._on_renewal is None:
                return
            try:
                renewal = self._renew(group, term, now())
            except LeaseLostError:
                self._term = None
                self._on_renewal(term, None)
            else:
                self._on_renewal(term, renewal)
        elif group.record is not None and self._on_record is not None:
            self._on_record(self._record(group))

    def deliver(self, payload: str) -> None:
        if self._open and not self.paused and self._on_payload is not None:
            self._on_payload(payload)

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        if not paused:
            deferred, self._deferred = self._deferred, []
            if "abort" in deferred:
                self.drop(notify=True)
            if "anchor" in deferred:
                self.release_anchor()
        self._nudge()

    def drop(self, *, notify: bool) -> None:
        if not self._open:
            return
        self._open = False
        self._term = None
        self._nudge()
        ticker, self._ticker = self._ticker, None
        if ticker is not None and ticker is not asyncio.current_task():
            ticker.cancel()
        if notify and self._on_lost is not None:
            self._on_lost(None)  # the node closes its gates before its claim is freed
        self.bus.unregister(self)

    def _require(self) -> _Group:
        if not self._open:
            raise TransportError("the memory transport is closed")
        return self.bus.group(self.namespace)

    async def publish(self, payload: str) -> None:
        await self._awake()
        self._require()
        self.bus.broadcast(payload)

    async def send(self, node: int, payload: str) -> None:
        await self._awake()
        self._require()
        self.bus.send(node, payload)

    async def claim(self, *, fence: bool, evidence: int | None = None) -> Granted | None:
        await self._awake()
        group = self._require()
        fenced = False
        if evidence is not None and group.holder is not None and group.holder is not self:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.bus.leader_timeout):
                    while group.holder is not None:
                        await group.freed.wait()
            group = self._require()
        if group.holder is not None and group.holder is not self:
            # Only the recorded leader can be fenced: a holder that is still taking over
            # (waiting out the old lease) has not renewed anything yet.
            recorded = group.record is not None and group.record.node == group.holder.node
            stale = recorded and may_fence(
                recorded=True,
                quiet_for=now() - group.renewed_at,
                leader_timeout=self.bus.leader_timeout,
                lease=self.bus.lease,
                io_timeout=max(self.bus.lease, self.bus.leader_timeout),
            )
            if evidence is not None or not (fence and stale):
                return None
            group.holder.drop(notify=True)
            fenced = True
        group.holder = self
        group.freed.clear()
        taken_at = now()
        record = group.record
        wait, why = takeover_wait(
            previous=None if record is None else record.node,
            released=record is not None and record.released,
            me=self.node,
            fenced=fenced,
            strict=self.strict_takeover,
            evidence=evidence,
            lease=self.bus.lease,
            recorded_lease=None,
        )
        if why is not None:
            await asyncio.sleep(max(0.0, taken_at + wait - now()))
            if group.holder is not self:  # dropped while waiting
                raise TransportError("the memory transport is closed")
        confirmed_at = now()
        group.term += 1
        assert self.node is not None
        group.record = LeaderRecord(
            node=self.node,
            priority=self.member.priority,
            term=group.term,
            host=self.member.host,
            pid=self.member.pid,
            since=datetime.now(UTC),
            released=False,
            standby=self._standby(),
        )
        group.renewed_at = confirmed_at
        self._term = group.term
        self.bus.terms.setdefault(self.namespace, []).append((self.node, group.term))
        return Granted(group.term, confirmed_at)

    def _standby(self) -> int | None:
        assert self.node is not None
        members = [(t.member.priority, t.node) for t in self.bus.members(self.namespace) if t.node]
        return standby(members, self.node)

    def _renew(self, group: _Group, term: int, sent_at: float) -> Renewal:
        """Renew ``term``'s lease and record its standby, as a session's tick does."""
        record = group.record
        if group.holder is not self or group.term != term or record is None or record.released:
            raise LeaseLostError(f"term {term} is no longer current")
        group.renewed_at = sent_at
        group.record = dataclasses.replace(record, standby=self._standby())
        return Renewal(group.record.standby, sent_at)

    async def renew(self, term: int) -> Renewal:
        sent_at = now()
        await self._awake()  # a paused session does not answer
        return self._renew(self._require(), term, sent_at)

    async def release(self, term: int, reason: str) -> None:
        await self._awake()
        group = self._require()
        if group.holder is self:
            if group.record is not None and group.record.term == term:
                group.record = dataclasses.replace(group.record, released=True)
            group.holder = None
            self._term = None
            group.freed.set()

    async def successor(self) -> int | None:
        await self._awake()
        assert self.node is not None
        members = [(t.member.priority, t.node) for t in self.bus.members(self.namespace) if t.node]
        return successor(members, self.node)

    async def survey(
        self,
    ) -> tuple[bool, tuple[int, int] | None, tuple[int, int, int, int | None] | None]:
        await self._awake()
        group = self._require()
        held = group.holder is not None
        record = group.record if held and group.record is not None else None
        leader = None if record is None else record.node
        members = [(t.member.priority, t.node) for t in self.bus.members(self.namespace) if t.node]
        recorded = None
        if record is not None and not record.released:
            recorded = (record.priority, record.node, record.term, record.standby)
        return held, best_candidate(members, leader), recorded

    async def is_member(self, node: int, priority: int) -> bool:
        await self._awake()
        self._require()
        return any(
            t.node == node and t.member.priority == priority
            for t in self.bus.members(self.namespace)
        )

    async def leader(self) -> LeaderRecord | None:
        await self._awake()
        group = self._require()
        return None if group.record is None else self._record(group)

    @staticmethod
    def _record(group: _Group) -> LeaderRecord:
        assert group.record is not None
        age = now() - group.renewed_at  # one clock for every member: it cannot step
        return dataclasses.replace(group.record, renewed_age=age, quiet_for=age)

    async def watch(self, leader: int) -> Freed:
        await self._awake()
        self._require()
        ended = self.bus._anchors.get(leader)
        observed = ended is not None
        if ended is not None:
            self.bus.watchers[leader] += 1
            try:
                await ended.wait()
            finally:
                self.bus.watchers[leader] -= 1
        if not self._open:
            raise TransportError("the memory transport is closed")
        record = self.bus.group(self.namespace).record
        if record is None:
            return how_it_ended(leader, None, False, observed)
        return how_it_ended(leader, record.node, record.released, observed)

    async def close(self) -> None:
        self.drop(notify=False)
        if self.node is not None:
            self.bus.unanchor(self.node)

    def abort(self) -> None:
        if self.paused:
            self._deferred.append("abort")
            return
        self.drop(notify=True)

    def release_anchor(self) -> None:
        if self.paused:
            self._deferred.append("anchor")
            return
        if self.node is not None and not self.dead:
            self.bus.unanchor(self.node)
