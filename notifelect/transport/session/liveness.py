"""Liveness: a session's anchor, and the watchers of other sessions' anchors.

The *anchor* is an idle session holding a lock named after the session's node id, ended
only with the process (or after every group has stopped its leader work). A standby
watches a leader's anchor to notice a crashed leader within milliseconds: one watcher
connection per leader session that this process stands by for, however many of its
groups that leader leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import asyncpg

from ...rules import Freed, how_it_ended
from ...schema import quote_ident
from ..base import TransportError
from ..connect import ANCHOR_NAME, APPLICATION_NAME, WATCHER_NAME, session_name
from .common import SessionView
from .probe import literal, newer_than_14


async def take_anchor(
    anchor: asyncpg.Connection[Any], session: SessionView, node: int, *, unlisten: str
) -> None:
    """Make ``anchor`` (a new connection of ``session``) node ``node``'s anchor, in one
    round trip: name it, stop listening on ``unlisten`` (the environment probe's channel)
    and take its lock.

    It is set up so that the server does not end it before a lease has run out (no
    ``tcp_user_timeout``, keep-alive probes spread over more than a lease, no idle
    timeout), and notifelect never terminates another node's anchor: its end is
    evidence that the process is gone (or that every group stopped its work).
    """
    probe = max(1, math.ceil(session.timing.lease))
    lock = max(1, int(session.timing.io_timeout * 1000))
    idle = "SET idle_session_timeout = 0;" if newer_than_14(anchor) else ""
    name = literal(session_name(ANCHOR_NAME, node))
    # Several statements in one message run as one transaction: all of it or none.
    statements = (
        f"UNLISTEN {quote_ident(unlisten)};"
        f" SELECT set_config('application_name', {name}, false)"
        f" WHERE current_setting('application_name') = {literal(APPLICATION_NAME)};"
        " SELECT set_config('tcp_user_timeout', '0', false),"
        f" set_config('tcp_keepalives_idle', '{probe}', false),"
        f" set_config('tcp_keepalives_interval', '{probe}', false),"
        " set_config('tcp_keepalives_count', '3', false),"
        " set_config('statement_timeout', '0', false),"
        " set_config('idle_in_transaction_session_timeout', '0', false);"
        f" {idle} SET lock_timeout = {lock};"
        f" SELECT pg_advisory_lock('{int(session.names.anchor_key(node))}'::bigint);"
        " SET lock_timeout = 0"
    )
    try:
        await anchor.execute(statements)
    except asyncpg.LockNotAvailableError as exc:
        raise TransportError(f"node id {node} is anchored by another session") from exc


#: How long a watcher waits, once a leader's anchor ended, for its claim locks to be
#: freed too (milliseconds, text): its election connection ends with its process, about
#: when the anchor does. (The claim tries again by itself if they are still held.)
_CLAIMS_FREED_MS = "200"

#: How long a watcher's connection stays open after its watch ended (seconds). Ending it
#: ends a server process, and on a host with few cores that exit competes for the CPU
#: with the claim that follows a crash (milliseconds of it): it is ended once that claim
#: is long over.
_RETIRE_AFTER = 1.0

#: A node id that no session has (they are drawn from a sequence of positive numbers):
#: the statement read after a leader's end, run once for it before the wait, waits for
#: nothing.
_NO_NODE = -1


async def _leaders_ended(
    conn: asyncpg.Connection[Any], s: SessionView, node: int, namespaces: list[str]
) -> list[Any]:
    """The leader rows of ``namespaces``, read once node ``node``'s anchor was seen to
    end; first, on the server and bounded, until no session holds the claim locks of the
    groups that node still led: the claims that follow a crash then find them free at
    their first try, rather than one poll later (see ``ElectionQueries.leaders_ended``)."""
    keys = [str(s.names.claim_key(namespace)) for namespace in namespaces]
    try:
        return await conn.fetch(s.queries.leaders_ended, namespaces, keys, node, _CLAIMS_FREED_MS)
    except asyncpg.LockNotAvailableError:
        # Still held after the bound: the rows alone (the claims try again by themselves).
        return await conn.fetch(s.queries.leaders_released, namespaces)


class Watchers:
    """The watchers of a session, one per leader session it stands by for."""

    def __init__(self, session: SessionView) -> None:
        self.session = session
        self._by_leader: dict[int, _Watcher] = {}
        #: Connections of watches that ended, until they are ended (see _RETIRE_AFTER).
        self._retiring: dict[asyncpg.Connection[Any], asyncio.TimerHandle] = {}

    async def watch(self, leader: int, namespace: str) -> Freed:
        """Wait until ``leader``'s session ends (one watcher per leader, for every group)."""
        watcher = self._by_leader.get(leader)
        if watcher is None or watcher.task.done():
            watcher = _Watcher(self, leader)
            self._by_leader[leader] = watcher
        future = watcher.add(namespace)
        try:
            return await future
        finally:
            watcher.discard(namespace, future)

    def connections(self) -> list[asyncpg.Connection[Any]]:
        watching = [w.conn for w in self._by_leader.values() if w.conn is not None]
        return [*watching, *self._retiring]

    def cancel(self) -> None:
        for watcher in list(self._by_leader.values()):
            watcher.task.cancel()
        for conn, handle in list(self._retiring.items()):
            handle.cancel()
            self._end(conn)

    def retire(self, conn: asyncpg.Connection[Any]) -> None:
        """End the connection of a watch that ended, a moment from now (see
        ``_RETIRE_AFTER``); at once if the session ends first."""
        loop = asyncio.get_running_loop()
        self._retiring[conn] = loop.call_later(_RETIRE_AFTER, self._end, conn)

    def _end(self, conn: asyncpg.Connection[Any]) -> None:
        self._retiring.pop(conn, None)
        conn.terminate()

    def _ended(self, watcher: _Watcher) -> None:
        if self._by_leader.get(watcher.node) is watcher:
            del self._by_leader[watcher.node]


class _Watcher:
    """One connection waiting on one leader session's anchor, for every group of this
    process that stands by for that leader."""

    def __init__(self, watchers: Watchers, node: int) -> None:
        self.watchers = watchers
        self.node = node
        self.waiting: dict[str, asyncio.Future[Freed]] = {}
        self.conn: asyncpg.Connection[Any] | None = None
        self.task = asyncio.create_task(self._run(), name=f"notifelect:watch:{node}")

    def add(self, namespace: str) -> asyncio.Future[Freed]:
        old = self.waiting.pop(namespace, None)
        if old is not None and not old.done():
            old.cancel()
        future: asyncio.Future[Freed] = asyncio.get_running_loop().create_future()
        self.waiting[namespace] = future
        return future

    def discard(self, namespace: str, future: asyncio.Future[Freed]) -> None:
        if self.waiting.get(namespace) is future:
            del self.waiting[namespace]
        if not self.waiting and not self.task.done():
            self.task.cancel()

    def _finish(self, how: dict[str, Freed], error: BaseException | None = None) -> None:
        for namespace, future in list(self.waiting.items()):
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(how.get(namespace, Freed.UNOBSERVED))
        self.waiting.clear()

    async def _run(self) -> None:
        try:
            how = await self._watch()
        except asyncio.CancelledError:
            self._finish({}, TransportError("the watcher was stopped"))
            raise
        except Exception as exc:
            self._finish({}, exc)
        else:
            self._finish(how)
        finally:
            self.watchers._ended(self)

    async def _watch(self) -> dict[str, Freed]:
        s = self.watchers.session
        key = s.names.anchor_key(self.node)
        assert s.node is not None
        conn = self.conn = await s.new_connection(session_name(WATCHER_NAME, s.node))
        ended = False
        try:
            # The wait goes on in rounds of a bounded lock wait on this one connection (so
            # what it observed still holds): a backend blocked on a lock does not notice
            # that its client has gone, and a watcher dropped while waiting must not leave
            # its backend behind for longer than a round. Where PostgreSQL can (14 and
            # later), the backend also checks every second that its client is still there.
            wait_ms = max(1000, int(2 * s.timing.lease * 1000))
            await conn.execute(f"SET statement_timeout = 0; SET lock_timeout = {wait_ms}")
            with contextlib.suppress(asyncpg.UndefinedObjectError):
                await conn.execute("SET client_connection_check_interval = 1000")
            observed = not await conn.fetchval("SELECT pg_try_advisory_lock_shared($1)", key)
            if not observed:
                await conn.execute("SELECT pg_advisory_unlock_shared($1)", key)
            else:
                # Run the statement that follows the leader's end once before the wait, on
                # the groups watched for and for no node (it waits for nothing): it then
                # finds what it needs loaded (milliseconds).
                await _leaders_ended(conn, s, _NO_NODE, list(self.waiting))
            while observed:
                try:
                    await conn.execute(
                        "SELECT pg_advisory_lock_shared($1), pg_advisory_unlock_shared($1)", key
                    )
                    break
                except (TimeoutError, asyncpg.LockNotAvailableError):
                    continue
            # A leader that resigns marks its term released before it lets go of anything.
            namespaces = list(self.waiting)
            if observed:
                rows = await _leaders_ended(conn, s, self.node, namespaces)
            else:
                rows = await conn.fetch(s.queries.leaders_released, namespaces)
            how = {
                row["namespace"]: how_it_ended(self.node, row["node"], row["released"], observed)
                for row in rows
            }
            ended = True
            return how
        finally:
            self.conn = None
            if ended:
                self.watchers.retire(conn)  # out of the way of the claim that follows
            else:
                conn.terminate()
