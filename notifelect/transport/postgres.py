"""The PostgreSQL transport: a group's handle on its process's shared election session.

The session (:mod:`notifelect.transport.session`) owns the connections; this module is
what one group does on them: LISTEN on the group's channel, take the group's claim (a
session advisory lock) and its term, and release or fence it. The statements themselves
are in :mod:`notifelect.sql`.

(Longer than most modules: a claim, the fencing it may need and the waits between them
are one sequence of steps that must be read together.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Hashable
from typing import Any

import asyncpg

from .._clock import now
from ..errors import ConfigurationError
from ..rules import (
    Sighting,
    ended_cleanly,
    may_fence,
    may_fence_guard,
    sight,
    takeover_wait,
    unchanged_for,
)
from ..schema import Names
from ..sql import ElectionQueries, lock_halves
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
from .serial import Serial
from .session import REGISTRY, Claimed, Connect, Session, Tick, Timing
from .session.common import NEVER_LED

log = logging.getLogger(__name__)

#: How long a claim tries for a lock it expects to be freed within milliseconds (a dead
#: leader's, a fenced one's), and how often; if it is still held the claim is refused and
#: tried again later. Nothing waits on the server: the connection serves every group.
_SHORT_LOCK_WAIT = 0.2
_LOCK_POLL = 0.005


class PostgresTransport(Transport):
    """A group's transport over asyncpg, on the election session it shares with every
    other group of this process on the same engine (or DSN, or borrowed connection).

    ``connect`` opens new dedicated connections (the election session, its anchor and its
    watchers). With ``connection`` an existing connection is used instead and never
    closed; groups on a borrowed connection cannot replace it (a session lost while it
    lives is opened again on it, as a new node), have no anchor and no standby watcher,
    so a successor always waits out the lease. ``share`` names what the connections go
    to (the engine, the DSN): groups with equal ``share``, names and timing share a
    session. By default only groups given the very same ``connect`` share one.

    Every node holds an *anchor* (see :mod:`~notifelect.transport.session`); the standby
    watches it to take over from a crashed leader at once. Every other unclean end of a
    leadership makes the successor wait a whole lease on its own clock.
    """

    def __init__(
        self,
        *,
        namespace: str,
        names: Names,
        member: Member,
        lease: float,
        leader_timeout: float,
        io_timeout: float | None = None,
        interval: float = 0.5,
        fence: bool = True,
        strict_takeover: bool = True,
        connect: Connect | None = None,
        connection: asyncpg.Connection[Any] | None = None,
        share: Hashable | None = None,
    ) -> None:
        if connect is None and connection is None:
            raise ConfigurationError("PostgresTransport needs connect= or connection=")
        self._connect = connect
        self._borrowed = connection
        self.stats: Counter[str] = Counter()
        self.namespace = namespace
        self.channel = names.group_channel(namespace)
        self._names = names
        self._member = member
        self._lease = lease
        self._leader_timeout = leader_timeout
        self._io_timeout = io_timeout if io_timeout is not None else max(lease, leader_timeout)
        self._timing = Timing(lease, leader_timeout, self._io_timeout, interval)
        target = connection if connection is not None else (share if share is not None else connect)
        self._share = (target, names, self._timing, member.host, member.pid)
        self._fence_enabled = fence
        self._strict = strict_takeover
        self._key = names.claim_key(namespace)
        self._key_halves = lock_halves(self._key)
        self._q = ElectionQueries(names)
        self._session: Session | None = None  # while joined
        self._anchored: Session | None = None  # until the group's work has stopped
        self._node: int | None = None
        self._on_payload: PayloadHandler | None = None
        self._on_lost: LostHandler | None = None
        self._on_record: RecordHandler | None = None
        self._on_renewal: RenewalHandler | None = None
        self._warned: set[str] = set()  # fencings that could not be done, logged once
        self._holder_seen: Sighting | None = None  # a claim holder's activity, as seen
        #: The old term a claim found held by a guarded transaction, and since when.
        self._term_held: tuple[int | None, float] | None = None
        self._term: int | None = None
        self._term_taken_at = 0.0
        self._last: tuple[float, LeaderRecord | None] | None = None
        self._leaving: asyncio.Future[None] | None = None
        #: The successor read as the last release gave the claim back (used once).
        self._successor: int | None = None

    def _extra(self, event: str) -> dict[str, object]:
        return {
            "notifelect_event": event,
            "notifelect_namespace": self.namespace,
            "notifelect_node": self._node,
        }

    # ------------------------------------------------------------ lifecycle

    @property
    def node(self) -> int | None:
        return self._node

    @property
    def session(self) -> Session | None:
        """The shared election session while joined (for diagnostics and tests)."""
        return self._session

    @property
    def connection(self) -> asyncpg.Connection[Any] | None:
        """The election connection while open (for diagnostics and tests)."""
        return None if self._session is None else self._session.conn

    @property
    def anchor(self) -> asyncpg.Connection[Any] | None:
        """The anchor connection while open (for diagnostics and tests)."""
        return None if self._session is None else self._session.anchor

    @property
    def leading(self) -> bool:
        return self._term is not None

    def observe(self, on_record: RecordHandler, on_renewal: RenewalHandler) -> None:
        self._on_record = on_record
        self._on_renewal = on_renewal

    async def open(self, on_payload: PayloadHandler, on_lost: LostHandler) -> int:
        if self._leaving is not None:
            # The previous membership is still being given back on the shared session
            # (every call of it is bounded): it must be over before a new one begins.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._leaving)
            self._leaving = None
        session = REGISTRY.take(self._share, self, self._make_session, self._borrowed)
        self._on_payload = on_payload
        self._on_lost = on_lost
        self._last = None
        node = await session.join(self)
        self._session = self._anchored = session
        self._node = node
        try:
            self._require()
            member = self._member
            await session.ticker.registrations((self.namespace, member.priority, member.url))
        except BaseException:
            self._session = None
            await session.leave(self)
            raise
        # After the registration: the periodic statement goes before every other call.
        session.ticker.start()
        return node

    def _make_session(self) -> Session:
        return Session(
            names=self._names,
            timing=self._timing,
            host=self._member.host,
            pid=self._member.pid,
            connect=self._connect,
            connection=self._borrowed,
        )

    def notified(self, payload: str) -> None:
        if self._on_payload is not None and self._session is not None:
            self._on_payload(payload)

    def ticked(self, tick: Tick, record: LeaderRecord | None) -> None:
        """The session's periodic statement renewed the session's lease and read
        ``record`` for this group."""
        self._last = (tick.sent_at, record)
        if self._session is None:
            return
        term = self._term
        if term is not None and tick.sent_at > self._term_taken_at:
            if self._on_renewal is not None:
                try:
                    renewal = self._renewal(term, tick.sent_at, record)
                except LeaseLostError:
                    self._on_renewal(term, None)
                else:
                    self._on_renewal(term, renewal)
        elif record is not None and self._on_record is not None:
            self._on_record(record)

    def _renewal(self, term: int, sent_at: float, record: LeaderRecord | None) -> Renewal:
        if record is None or record.node != self._node or record.term != term:
            raise LeaseLostError(f"term {term} is no longer current")
        if record.released:
            raise LeaseLostError(f"term {term} was released")
        return Renewal(record.standby, sent_at)

    def lost(self) -> None:
        """The session is lost: the group closes its gates (it lets go later, by abort)."""
        self._term = None
        if self._on_lost is not None and self._session is not None:
            self._on_lost(None)

    def release_anchor(self) -> None:
        session, self._anchored = self._anchored, None
        if session is not None:
            session.work_stopped(self)

    async def close(self) -> None:
        """Unregister and leave the session within about two ``io_timeout``; never raises.

        If the caller is cancelled, the group's claim is given back by dropping the whole
        session before the cancellation propagates: nothing is left holding a lock.
        """
        session, self._session = self._session, None
        self._on_payload = None
        if session is None:
            leaving, self._leaving = self._leaving, None
            if leaving is not None:
                # A lost membership is still being given back on the shared session
                # (bounded): it must not outlive the group that closes.
                with contextlib.suppress(Exception):
                    await asyncio.shield(leaving)
            self.release_anchor()
            return
        leaving = asyncio.ensure_future(self._leave(session))
        try:
            await asyncio.shield(leaving)
        except asyncio.CancelledError:
            # Giving the claim back goes on (bounded); the anchor stays until it is over.
            leaving.add_done_callback(lambda _: self.release_anchor())
            raise
        self.release_anchor()

    async def _give_back(self, session: Session) -> None:
        """Release the claim if still held, unregister (bounded; errors break the session)."""
        serial = session.serial
        if serial is None or not session.usable:
            return
        with contextlib.suppress(TransportError, asyncpg.PostgresError):
            await self._let_go(session)
            self._term = None
            await serial.execute(self._q.unregister_member, self.namespace, self._node)

    def abort(self) -> None:
        session, self._session = self._session, None
        self._term = None
        if session is None:
            return
        if self._on_lost is not None:
            self._on_lost(None)  # the group closes its gates before the claim is freed
        self._on_payload = None
        if not session.usable:
            session.forget(self)
            session.detach(self)
            return
        # The session serves other groups: give this group's claim back and leave it.
        self._leaving = asyncio.ensure_future(self._leave(session))

    async def _leave(self, session: Session) -> None:
        try:
            await self._give_back(session)
        finally:
            await session.leave(self)

    def _require(self) -> Serial:
        session = self._session
        if session is None or session.serial is None or not session.usable:
            raise TransportError("the election session is closed")
        return session.serial

    # ------------------------------------------------------------ traffic

    async def publish(self, payload: str) -> None:
        await self._require().execute("SELECT pg_notify($1, $2)", self.channel, payload)

    async def send(self, node: int, payload: str) -> None:
        # A copy for observers (status --watch) on a channel no node listens on.
        names = self._names
        await self._require().execute(
            "SELECT pg_notify($1, $3), pg_notify($2, $3)",
            names.node_channel(node),
            names.changes_channel,
            payload,
        )

    async def claim(self, *, fence: bool, evidence: int | None = None) -> Granted | None:
        conn = self._require()
        session = self._session
        assert session is not None
        try:
            granted = await self._claim(conn, session, fence, evidence)
        except BaseException:
            # Whatever was taken is given back, even a term committed just as the attempt
            # was cut short (its leader row is disowned: nobody may renew it).
            with contextlib.suppress(Exception):
                await asyncio.shield(self._let_go(session))
            raise
        if granted is None:
            await self._let_go(session)
        return granted

    async def _claim(
        self, conn: Serial, session: Session, fence: bool, evidence: int | None
    ) -> Granted | None:
        # With evidence, the standby saw the leader's process end: its election session is
        # ending too (PostgreSQL frees the lock within milliseconds of the process's death).
        wait = 0.0 if evidence is None else _SHORT_LOCK_WAIT
        claimed = await self._lock_within(session, wait)
        fenced = claimed is None
        if claimed is None:
            if not (fence and self._fence_enabled) or not await self._fence(conn, session):
                return None
            row = await conn.fetchrow(self._q.leader_released, self.namespace)
            claimed = (
                NEVER_LED
                if row is None
                else Claimed(row["node"], row["term"], row["released"], row["lease"])
            )
        taken_at = now()
        old = claimed.leader
        wait, why = takeover_wait(
            previous=old,
            released=claimed.released,
            me=self._node,
            fenced=fenced,
            strict=self._strict,
            evidence=evidence,
            lease=self._lease,
            recorded_lease=claimed.lease,
        )
        if why is not None:
            log.info(
                "waiting %.3fs for the previous leader's lease to run out (%s)",
                wait,
                why,
                extra=self._extra("lease_wait"),
            )
            await asyncio.sleep(max(0.0, taken_at + wait - now()))
        confirmed_at = now()
        term = await self._take_term(session)
        if term is None:
            clean = ended_cleanly(old, claimed.released, self._node)
            term = await self._fence_guards(conn, session, claimed.term, ended_cleanly=clean)
        if term is None:
            # A transaction guarded by the old term still holds its row (FOR SHARE) and
            # could not be fenced, or the holder was just ending. Give the claim back and
            # try again later.
            log.info(
                "the previous term is still held by a guarded transaction; claim later",
                extra=self._extra("term_busy"),
            )
            return None
        self._term = term
        self._term_taken_at = now()
        self._term_held = None
        self._successor = None
        return Granted(term, confirmed_at)

    async def _lock_within(self, session: Session, seconds: float) -> Claimed | None:
        """Try for up to ``seconds`` to take the claim lock, without ever waiting on the
        server (the connection serves every group of the session); the tries of every
        group of the session are made together."""
        deadline = now() + seconds
        while True:
            claimed = await session.claims.tries((self._key, self.namespace))
            if claimed is not None:
                return claimed
            if now() >= deadline:
                return None
            await asyncio.sleep(_LOCK_POLL)  # between tries the connection serves others

    async def _take_term(self, session: Session) -> int | None:
        """Take the next term (with every group of the session that takes one now); None
        if a transaction still holds the old one, or another session its leader row."""
        try:
            return await session.claims.terms((self.namespace, self._member.priority, self._lease))
        except asyncpg.LockNotAvailableError:
            log.info(
                "taking the term met a row held by another session; claim later",
                extra=self._extra("term_busy"),
            )
            return None

    async def _fence_guards(
        self, conn: Serial, session: Session, old_term: int | None, *, ended_cleanly: bool
    ) -> int | None:
        """Take the term from guarded transactions of an ended leadership; the new term,
        or None if it is still held.

        We hold the claim. After an unclean end the old lease has run out (:meth:`_claim`
        waited for it) or the old process was seen to end: whatever still holds the term
        row belongs to a leadership that is over, typically a leader cut off mid-write,
        whose backend waits on its client (holding the row, whatever the server's
        timeouts say) for as long as the path stays half-open. After a clean release the
        old leader's work was done; a guarded transaction may still be committing, so it
        gets one lease from when the term row was first found held (see
        :func:`notifelect.rules.may_fence_guard`). Terminating is safe: a transaction
        that never committed leaves no write behind, and one that commits first was
        fenced by the old term, still current until we take the next one.
        """
        at = now()
        if self._term_held is None or self._term_held[0] != old_term:
            self._term_held = (old_term, at)
        if not may_fence_guard(ended_cleanly, at - self._term_held[1], self._lease):
            return None
        if not self._fence_enabled:
            self._warn_once(
                "guard",
                "the previous term of the group is still held by a guarded transaction and"
                " fencing is off (fence=False): the group has no leader until it ends",
            )
            return None
        try:
            # Looked up and terminated in one statement: only what holds the guard now.
            rows = await conn.fetch(self._q.fence_guards, *self._key_halves)
        except asyncpg.InsufficientPrivilegeError:
            self._warn_once(
                "guard",
                "no permission to terminate the backend whose transaction holds the previous"
                " term of the group (a guarded write of a leadership that is over): the group"
                " has no leader until it ends. Grant pg_signal_backend to the election role"
                " (or run the application's connections as the same role), and set"
                " transaction_timeout (PostgreSQL 17 and later) or TCP keep-alives on the"
                " server",
            )
            return None
        for row in rows:
            if not row["ended"]:
                continue  # gone already
            self._count_fenced("guarded transaction")
            log.warning(
                "fenced out a guarded transaction of an ended leadership: backend pid %s,"
                " %s, open for %.3fs",
                row["pid"],
                row["state"] or "state unknown",
                row["age"] if row["age"] is not None else float("nan"),
                extra=self._extra("fenced_guard"),
            )
        # The terminated backends end within milliseconds, their row locks with them (and
        # a holder that just ended has let go already).
        deadline = now() + _SHORT_LOCK_WAIT
        while True:
            term = await self._take_term(session)
            if term is not None or now() >= deadline:
                return term
            await asyncio.sleep(_LOCK_POLL)

    def _count_fenced(self, what: str) -> None:
        self.stats["fenced"] += 1
        self.stats[f"fenced:{what}"] += 1

    def _warn_once(self, what: str, message: str) -> None:
        """Log a fencing that cannot be done at WARNING, once per kind and group."""
        if what in self._warned:
            return
        self._warned.add(what)
        log.warning(message, extra=self._extra("fence_denied"))

    async def _fence(self, conn: Serial, session: Session) -> bool:
        """Terminate a holder whose lease renewals stopped; True once we hold the claim.

        Silence is judged on this node's clock, by how long the database has shown no
        change (of the leader's renewal, or of the holder's activity): never by the
        database's clock, which may have stepped.
        """
        read_at = now()
        row = await conn.fetchrow(self._q.fence_view, self.namespace, *self._key_halves)
        assert row is not None
        holder, age = row["holder"], row["age"]
        if holder is None:
            return await self._lock_within(session, 0.0) is not None
        if row["leader_pid"] != holder:
            # The holder is taking over (waiting out the old lease, idle meanwhile). Only a
            # holder idle for longer than that wait can take is stuck (paused): fence it.
            if row["holder_changed"] is None:
                return False  # its activity is hidden from this role: cannot tell
            self._holder_seen = sight(
                self._holder_seen,
                holder,
                row["holder_changed"],
                row["holder_idle"],
                read_at,
            )
            silent = unchanged_for(self._holder_seen, read_at)
            if not may_fence(
                recorded=False,
                quiet_for=silent,
                leader_timeout=self._leader_timeout,
                lease=self._lease,
                io_timeout=self._io_timeout,
            ):
                return False
        else:
            mark = (row["renewed_at"], row["session_renewed_at"])
            leader = (row["node"], row["term"])
            silent = session.quiet_for(self.namespace, leader, mark, age, read_at)
            fenceable = may_fence(
                recorded=True,
                quiet_for=silent,
                leader_timeout=self._leader_timeout,
                lease=self._lease,
                io_timeout=self._io_timeout,
            )
            if not fenceable:
                return False  # the leader renews its lease: only our notifications are late
        try:
            ended = await conn.fetchval("SELECT pg_terminate_backend($1)", holder)
        except asyncpg.InsufficientPrivilegeError:
            self._warn_once(
                "claim",
                f"no permission to terminate the silent leader's backend (pid {holder});"
                " falling back to lease-based fencing: the group waits until that leader"
                " resumes and gives up its expired lease. Grant pg_signal_backend to the"
                " election role for fast fencing.",
            )
            return False
        if ended:  # (another group of ours may have fenced the same session just now)
            self._count_fenced("claim")
            log.warning(
                "fenced out silent leader backend pid %s (silent for %.3fs)",
                holder,
                silent,
                extra=self._extra("fenced"),
            )
        # Wait for the terminated backend to let go, bounded on the server side: a client-side
        # timeout would leave the connection busy cancelling the statement.
        return await self._lock_within(session, _SHORT_LOCK_WAIT) is not None

    async def renew(self, term: int) -> Renewal:
        last = self._last
        if last is not None and last[0] > self._term_taken_at:
            # The session's periodic statement renewed the lease of every group it leads,
            # after this term was taken: what it read decides.
            return self._renewal(term, *last)
        sent_at = now()
        row = await self._require().fetchrow(self._q.renew, self.namespace, self._node, term)
        if row is None or not row["ok"]:
            raise LeaseLostError(f"term {term} is no longer current")
        standby: int | None = row["standby"]
        return Renewal(standby, sent_at)

    async def release(self, term: int, reason: str) -> None:
        self._require()
        assert self._session is not None
        # The statement that gives the lock back also reads the successor to name.
        self._successor = await self._let_go(self._session, (term, reason))
        self._term = None

    async def _let_go(self, session: Session, release: tuple[int, str] | None = None) -> int | None:
        """Give the claim back if the session holds it (see
        :meth:`~.session.claims.Claims.let_go`)."""
        assert self._node is not None
        return await session.claims.let_go(self._key, self.namespace, self._node, release=release)

    async def successor(self) -> int | None:
        """The best other live member; read with the release just made, if any (the
        successor is chosen once, as the claim goes)."""
        successor, self._successor = self._successor, None
        if successor is not None:
            return successor
        node: int | None = await self._require().fetchval(
            self._q.successor, self.namespace, self._node
        )
        return node

    async def survey(
        self,
    ) -> tuple[bool, tuple[int, int] | None, tuple[int, int, int, int | None] | None]:
        self._require()
        assert self._session is not None
        row = await self._session.ticker.surveys((self.namespace, self._key))
        best = None if row["node"] is None else (int(row["priority"]), int(row["node"]))
        held = bool(row["held"])
        leader = None
        if held and row["leader_node"] is not None:
            standby = row["leader_standby"]
            leader = (
                int(row["leader_priority"]),
                int(row["leader_node"]),
                int(row["leader_term"]),
                None if standby is None else int(standby),
            )
        return held, best, leader

    async def is_member(self, node: int, priority: int) -> bool:
        found = await self._require().fetchval(self._q.is_member, self.namespace, node, priority)
        return bool(found)

    async def leader(self) -> LeaderRecord | None:
        self._require()
        session = self._session
        assert session is not None
        # Read with every group of the session that asks now (many groups verifying the
        # announcements of one new leader cost one statement).
        row, read_at = await session.ticker.leaders(self.namespace)
        if row is None:
            return None
        fields = dict(row)
        del fields["namespace"]
        mark = (fields.pop("renewed_at"), fields.pop("session_renewed_at"))
        leader = (fields["node"], fields["term"])
        quiet = session.quiet_for(self.namespace, leader, mark, fields["renewed_age"], read_at)
        return LeaderRecord(**fields, quiet_for=quiet)

    async def watch(self, leader: int) -> Freed:
        session = self._session
        if self._connect is None or session is None:
            await asyncio.Future()  # a borrowed connection has no standby watcher
        assert session is not None
        return await session.watchers.watch(leader, self.namespace)
