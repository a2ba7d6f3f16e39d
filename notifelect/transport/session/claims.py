"""The claim locks a session's election connection holds, and the terms it takes.

Many groups' claims are tried in one statement and their terms taken in one transaction
(see :class:`~notifelect.transport.serial.Batched`); each lock is taken once, and given
back once, whatever happens to the statement that took it.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from ...sql import lock_halves
from ..base import TransportError
from ..serial import Batched
from .common import NEVER_LED, Claimed, SessionView

log = logging.getLogger(__name__)

#: How long taking terms waits on the server for a row (milliseconds): a guarded
#: transaction's rows are skipped, not waited for; this bounds any other wait.
_ROW_LOCK_WAIT_MS = 20
#: A session holds claim locks in at most 1/CLAIM_SHARE of the server's shared lock
#: table. A session lock takes an entry of that table for as long as it is held, and the
#: rest of the table is what every other statement of every session on the server needs
#: (their table locks, other processes' claims, the standbys' watchers' waits): a full
#: table fails them all with "out of shared memory". A quarter leaves room for three
#: more such processes and everything else.
CLAIM_SHARE = 4
#: SQLSTATE of "out of shared memory": the lock table is full.
_OUT_OF_SHARED_MEMORY = "53200"
#: The lock table of a server with PostgreSQL's default settings (64 for each of 122 slots), until
#: the session has read its own.
_DEFAULT_LOCK_TABLE = 64 * 122


def claim_budget(lock_table: int) -> int:
    """How many claim locks a session may hold on a server whose lock table has
    ``lock_table`` entries (at least one)."""
    return max(1, lock_table // CLAIM_SHARE)


class Claims:
    """The claims of one session's groups, on its election connection."""

    def __init__(self, session: SessionView) -> None:
        self.session = session
        #: The claim locks the election connection holds (each taken once: a lock taken
        #: twice would need two unlocks).
        self.held: set[int] = set()
        #: The entries of the server's lock table (set once the session has read it).
        self.lock_table = _DEFAULT_LOCK_TABLE
        self._said_refused = False
        #: Claim locks to try, and terms to take, for several groups at once.
        self.tries = Batched(lambda: session.serial, "claiming", self._try_claims)
        self.terms = Batched(lambda: session.serial, "taking terms", self._take_terms)

    @property
    def budget(self) -> int:
        """How many claim locks the connection may hold (see :data:`CLAIM_SHARE`)."""
        return claim_budget(self.lock_table)

    async def inherit(self, conn: asyncpg.Connection[Any], namespace: str) -> None:
        """On a borrowed connection, give back what a lost session left of ``namespace``'s
        claim: a borrowed connection outlives its sessions, and so do its locks."""
        s = self.session
        key = s.names.claim_key(namespace)
        held = await conn.fetchval(s.queries.backend_holds, *lock_halves(key))
        if not held:
            return
        await conn.execute(s.queries.disown_backend, namespace)
        for _ in range(64):  # taken at most once per lost session; bounded all the same
            if not await conn.fetchval("SELECT pg_advisory_unlock($1)", key):
                break
        self.held.discard(key)

    async def _try_claims(
        self, conn: asyncpg.Connection[Any], asks: list[tuple[int, str]]
    ) -> list[Claimed | None]:
        """Try the claim locks ``asks`` (key, namespace); read what is recorded of the
        groups whose lock was taken (after taking it, so that it is not older). A lock
        the connection holds already counts as taken; beyond the session's budget (see
        :data:`CLAIM_SHARE`), or if the server's lock table is full, a lock is not taken,
        as if another session held it."""
        queries = self.session.queries
        # Each key once: a lock taken twice would need two unlocks.
        keys = list(dict.fromkeys(key for key, _ in asks if key not in self.held))
        room = max(0, self.budget - len(self.held))
        if len(keys) > room:
            self._refused(len(keys) - room, None)
            keys = keys[:room]
        if keys:
            await self._lock(conn, keys)
        taken = {namespace for key, namespace in asks if key in self.held}
        recorded = dict.fromkeys(taken, NEVER_LED)
        if taken:
            for row in await conn.fetch(queries.leaders_released, list(taken)):
                recorded[row["namespace"]] = Claimed(
                    row["node"], row["term"], row["released"], row["lease"]
                )
        return [recorded.get(namespace) for _, namespace in asks]

    async def _lock(self, conn: asyncpg.Connection[Any], keys: list[int]) -> None:
        """Try the claim locks ``keys`` (none of them held), counting those taken."""
        try:
            rows = await conn.fetch(self.session.queries.try_claims, [str(key) for key in keys])
        except asyncpg.PostgresError as exc:
            # A statement that failed on the server (a full lock table, a statement
            # timeout, a cancel) may have taken some of the locks first, and a session
            # lock outlives the statement that took it. None of them was held before, so
            # each is given back by one unlock (false, with a warning, where it was not
            # taken), without asking which are held: with a full lock table, reading
            # pg_locks fails too, while an unlock needs no room. If even that fails, the
            # session is lost: its end frees every lock.
            try:
                await conn.execute(
                    "SELECT pg_advisory_unlock(u.k) FROM unnest($1::text[]::bigint[]) AS u(k)",
                    [str(key) for key in keys],
                )
            except asyncpg.PostgresError as again:
                self.session.lose(
                    f"the claim locks of a failed claim could not be given back: {again!r}"
                )
                raise TransportError(
                    f"giving back the locks of a failed claim failed: {again!r}"
                ) from exc
            if exc.sqlstate != _OUT_OF_SHARED_MEMORY:
                raise
            # Another client filled the lock table: these groups get no leader from this
            # session for now, and nothing else of it fails.
            self._refused(len(keys), exc)
            return
        for key, row in zip(keys, rows, strict=True):
            if row["got"]:
                self.held.add(key)

    def _refused(self, groups: int, exc: asyncpg.PostgresError | None) -> None:
        """Say once per session that ``groups`` claims were not tried (beyond the budget,
        or the lock table was full: ``exc``) and which server setting to raise."""
        if self._said_refused:
            return
        self._said_refused = True
        s = self.session
        why = (
            f"this session may hold at most {self.budget} claim lock(s), its share"
            f" (1/{CLAIM_SHARE}) of the server's lock table of about"
            f" {self.lock_table} entries"
            if exc is None
            else f"the server's lock table is full ({exc.__class__.__name__}: {exc})"
        )
        log.error(
            "election session node %s could not claim %d group(s): %s; such groups get no"
            " leader from this session while there is no room (said once per session)."
            " Raise max_locks_per_transaction on the server (it takes a restart) or spread"
            " the groups over more processes",
            s.node,
            groups,
            why,
            extra={"notifelect_event": "lock_table_full", "notifelect_node": s.node},
        )

    async def _take_terms(
        self, conn: asyncpg.Connection[Any], asks: list[tuple[str, int, float]]
    ) -> list[int | None]:
        """Take the next term of the groups ``asks`` (namespace, priority, lease) in one
        transaction; None for a group whose old term is still held by a guarded
        transaction, or whose leader row another session is writing."""
        s = self.session
        unique = {namespace: (priority, lease) for namespace, priority, lease in asks}
        # One statement (one round trip): a term must never be handed out twice, even if
        # the server runs with asynchronous commit and crashes right after, so its commit
        # is made durable (see ElectionQueries.take_terms).
        rows = await conn.fetch(
            s.queries.take_terms,
            list(unique),
            [str(priority) for priority, _ in unique.values()],
            s.node,
            s.host,
            s.pid,
            [repr(float(lease)) for _, lease in unique.values()],
            str(_ROW_LOCK_WAIT_MS),
        )
        terms = {row["namespace"]: int(row["term"]) for row in rows}
        return [terms.get(namespace) for namespace, _, _ in asks]

    async def let_go(
        self, key: int, namespace: str, node: int, *, release: tuple[int, str] | None = None
    ) -> int | None:
        """Give back claim lock ``key`` of group ``namespace`` if the connection holds it
        when this call's turn comes (after every claim of the group already under way).

        With ``release`` (term, reason) the term is marked released first: a clean
        hand-over; the lock goes in the statement that reads the best other live member,
        which is returned (the successor to name). Otherwise a term of ``node`` that was
        not released is no longer held by this session: it is disowned first (committed
        before the lock goes), or the session's renewals would go on counting for it and
        the followers would never take over while the session lives. If it cannot be
        disowned at once (another session holds the row), the session is lost instead:
        its end frees every claim and stops every renewal. Without ``release``, raises
        only :class:`TransportError`.
        """
        s = self.session
        serial = s.serial
        if serial is None:
            return None

        async def give_back(conn: asyncpg.Connection[Any]) -> int | None:
            if release is not None:
                await conn.execute(s.queries.release, namespace, *release)
            if key not in self.held:
                return None
            successor: int | None = None
            try:
                if release is None:
                    await conn.execute(s.queries.disown, namespace, node)
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)
                else:
                    row = await conn.fetchrow(s.queries.unlock_successor, namespace, node, key)
                    successor = None if row is None else row["successor"]
            except asyncpg.PostgresError as exc:
                # Whether the lock went is unknown: the session must not go on believing
                # either way. Its end frees every claim.
                s.lose(f"the claim of {namespace!r} could not be given back: {exc!r}")
                raise TransportError(f"giving back the claim failed: {exc!r}") from exc
            self.held.discard(key)
            return successor

        return await serial.run("giving back a claim", give_back)
