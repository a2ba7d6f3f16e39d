"""The life of a shared session: opening it (once, for every group that asks), groups
joining and leaving it, losing it, and closing it in the order its connections must go."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable
from typing import Any

import asyncpg

from ... import messages
from ...schema import Names
from ...schema_check import check_schema
from ...sql import ElectionQueries
from ..base import TransportError
from ..connect import APPLICATION_NAME, connect_bound, one_host
from ..serial import Serial, retrieve, turns_of
from . import probe
from .claims import Claims
from .common import Connect, SessionGroup, Timing
from .liveness import Watchers, take_anchor
from .registry import Registry
from .tick import Ticker

log = logging.getLogger(__name__)


class Session:
    """The shared election session of one process on one database (see the package's
    docstring)."""

    def __init__(
        self,
        *,
        names: Names,
        timing: Timing,
        host: str,
        pid: int,
        connect: Connect | None,
        connection: asyncpg.Connection[Any] | None,
    ) -> None:
        self.names = names
        self.timing = timing
        self.queries = ElectionQueries(names)
        self.host = host
        self.pid = pid
        self._connect = connect
        self.borrowed = connection
        self.node: int | None = None
        self.conn: asyncpg.Connection[Any] | None = None
        self.serial: Serial | None = None
        self.anchor: asyncpg.Connection[Any] | None = None
        self.broken: str | None = None
        self.closed = False
        self._opening: asyncio.Task[None] | None = None
        #: The groups on the session (reserved by the registry before they join).
        self.groups: dict[str, SessionGroup] = {}
        #: Groups that must still let go (detach) / stop their work (release the anchor)
        #: before the connection / the anchor of a broken session is dropped.
        self._holding: set[SessionGroup] = set()
        self._working: set[SessionGroup] = set()
        #: What the session listens on (channel: callback), to be removed from a borrowed
        #: connection, which outlives the session.
        self._listening: dict[str, Callable[..., None]] = {}
        self.ticker = Ticker(self, self.groups)
        self.claims = Claims(self)
        self.watchers = Watchers(self)

    def _extra(self, event: str) -> dict[str, object]:
        return {"notifelect_event": event, "notifelect_node": self.node}

    @property
    def usable(self) -> bool:
        return self.broken is None and not self.closed

    def quiet_for(
        self,
        namespace: str,
        leader: tuple[int, int],
        mark: Hashable,
        age: float | None,
        read_at: float,
    ) -> float:
        """Seconds, on this node's clock, since this session last saw the renewal of
        ``leader`` (node, term) of group ``namespace`` change, taking in a reading of its
        ``mark`` sent at ``read_at`` (see :func:`notifelect.rules.sight`)."""
        return self.ticker.known.quiet_for(namespace, leader, mark, age, read_at)

    def backend_pids(self) -> list[int]:
        """The server pids of every connection the session holds now: the election
        connection, the anchor and the watchers (for diagnostics and tests)."""
        conns = [self.conn, self.anchor, *self.watchers.connections()]
        return [c.get_server_pid() for c in conns if c is not None and not c.is_closed()]

    # ------------------------------------------------------------ joining and leaving

    async def join(self, group: SessionGroup) -> int:
        """Open the session if needed and add ``group`` (reserved by the registry),
        listening on its channel."""
        try:
            if self._opening is None:
                self._opening = asyncio.ensure_future(self._open())
                self._opening.add_done_callback(retrieve)  # its groups get its outcome
            await asyncio.shield(self._opening)
        except BaseException:
            self.forget(group)
            opening = self._opening
            if opening is not None and not opening.done() and not self.groups:
                # Nobody waits for it any more (every group that asked was closed or gave
                # up): stop connecting at once rather than within the open's bound.
                opening.cancel()
            raise
        if not self.usable:
            self.forget(group)
            raise TransportError(f"the election session ended: {self.broken or 'closed'}")
        serial = self.serial
        assert serial is not None
        assert self.node is not None
        self._holding.add(group)
        self._working.add(group)
        try:
            self._listening[group.channel] = self._notified
            await serial.add_listener(group.channel, self._notified)
            if self.borrowed is not None:
                namespace = group.namespace
                await serial.run(
                    "giving back a lost session's claim",
                    lambda conn: self.claims.inherit(conn, namespace),
                )
        except BaseException:
            self._holding.discard(group)
            self._working.discard(group)
            self.forget(group)
            raise
        return self.node

    async def leave(self, group: SessionGroup) -> None:
        """Remove ``group``: stop listening on its channel; close the session if it was
        the last. Never raises."""
        if self.groups.get(group.namespace) is group:
            del self.groups[group.namespace]
            self.ticker.known.forget(group.namespace)
        serial = self.serial
        if group.namespace not in self.groups and self.usable and serial is not None:
            self._listening.pop(group.channel, None)
            with contextlib.suppress(Exception):
                await serial.remove_listener(group.channel, self._notified)
        self.detach(group)
        if self._unused:
            await self.close()

    @property
    def _unused(self) -> bool:
        """Open, and no group is in it or still giving something back."""
        opened = self._opening is not None and self._opening.done()
        return opened and self.usable and not self.groups and not self._holding

    def detach(self, group: SessionGroup) -> None:
        """``group`` holds nothing on the connection any more (see the package docstring)."""
        self._holding.discard(group)
        if self.broken is not None and not self._holding:
            self._drop_connection()

    def work_stopped(self, group: SessionGroup) -> None:
        """``group``'s leader work has stopped; a lost or closed session's anchor goes
        once no group's work runs any more."""
        self._working.discard(group)
        if self._working:
            return
        if (self.broken is not None and not self._holding) or self.closed:
            self._drop_anchor()

    def forget(self, group: SessionGroup) -> None:
        """Drop ``group`` from the session without talking to the database."""
        if self.groups.get(group.namespace) is group:
            del self.groups[group.namespace]
            self.ticker.known.forget(group.namespace)
        if self._unused:  # an open that was given up
            self.close_soon()

    # ------------------------------------------------------------ opening

    async def _open(self) -> None:
        # Connecting may try every host (each within its own budget) once; the connections
        # after the first go to the host that accepted it.
        bound = self.timing.io_timeout + probe.PROBE_TIMEOUT + connect_bound(self._connect)
        deadline = asyncio.timeout(bound)
        try:
            async with deadline:
                await self._connect_all()
        except TimeoutError as exc:
            if not deadline.expired():  # a host's own budget: its message names the host
                self._fail(repr(exc))
                why = str(exc) or "no answer within the connect timeout"
                raise TransportError(f"connecting the election session failed: {why}") from exc
            self._fail(f"connecting took over {bound:g}s")
            raise TransportError(f"connecting the election session took over {bound:g}s") from exc
        except BaseException as exc:
            self._fail(repr(exc))
            raise
        if not self.groups:
            # Every group that asked for it gave up waiting: nobody will use it.
            self.close_soon()

    def _fail(self, reason: str) -> None:
        self.closed = True
        REGISTRY.discard(self)
        self._terminate_all()
        log.debug("election session could not open: %s", reason)

    async def _connect_all(self) -> None:
        turns = None
        if self.borrowed is not None:
            conn = self.conn = self.borrowed
            # After what a lost session on the connection still does (see turns_of).
            turns = turns_of(conn)
            await turns.acquire(urgent=False)
            try:
                lock_table = await probe.check_borrowed(conn)
                await check_schema(conn, self.names)
                await self._register(conn, rename=False)
            finally:
                turns.release()
        else:
            lock_table = await self._connect_own()
        self.claims.lock_table = lock_table
        assert self.conn is not None
        assert self.node is not None
        self.conn.add_termination_listener(self._terminated)
        self.serial = Serial(self.conn, self.timing.io_timeout, self.lose, turns)
        channel = self.names.node_channel(self.node)
        self._listening[channel] = self._sent
        await self.serial.add_listener(channel, self._sent)
        log.info("election session node %s opened", self.node, extra=self._extra("session_opened"))

    async def _connect_own(self) -> int:
        """Open the election connection and the anchor side by side, each doing its part
        while the other waits on the server: the anchor is the environment probe's
        second session before it takes its lock; the election connection checks the
        schema meanwhile, then settles its settings (sending the probe's notification)
        and registers the session. Where there are several hosts to try, the anchor is
        connected once the election connection has found the one that answers. Returns
        the size of the server's lock table."""
        pooler = probe.PoolerProbe()
        anchor: asyncio.Future[asyncpg.Connection[Any]] | None = None
        if one_host(self._connect):
            anchor = asyncio.ensure_future(self._second_session(pooler))
        node: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        anchored: asyncio.Future[int] | None = None
        try:
            conn = self.conn = await self.new_connection()
            if anchor is None:
                anchor = asyncio.ensure_future(self._second_session(pooler))
            with probe.pooler_errors():
                await check_schema(conn, self.names)
                other = await anchor
                anchored = asyncio.ensure_future(self._anchor(other, node, pooler.channel))
                settled = await probe.settle(
                    conn, io_timeout=self.timing.io_timeout, notify=pooler.channel
                )
                node.set_result(await self._register(conn, rename=True))
                other_pid = await anchored
            await pooler.verdict(other, (settled.pid, other_pid))
            await probe.same_sessions(conn, other, (settled.pid, other_pid))
        except BaseException:
            for task in (anchor, anchored):
                if task is not None and not task.done():
                    task.cancel()
            if anchor is not None:
                # Whether it ended or was cancelled just now, its connection goes.
                anchor.add_done_callback(_terminate_made)
            raise
        other.add_termination_listener(self._anchor_terminated)
        self.anchor = other
        return settled.lock_table

    async def _second_session(self, pooler: probe.PoolerProbe) -> asyncpg.Connection[Any]:
        """A connection that listens on the probe's channel (the anchor-to-be)."""
        assert self._connect is not None
        other = await self._connect()
        try:
            await pooler.listen(other)
        except BaseException:
            other.terminate()
            raise
        return other

    async def _anchor(
        self, other: asyncpg.Connection[Any], node: asyncio.Future[int], channel: str
    ) -> int:
        """Make ``other`` the anchor of ``node`` once it is drawn; its backend pid."""
        with probe.pooler_errors():
            pid = int(await other.fetchval("SELECT pg_backend_pid()"))
        await take_anchor(other, self, await node, unlisten=channel)
        return pid

    async def _register(self, conn: asyncpg.Connection[Any], *, rename: bool) -> int:
        """Draw the node id and register the session (and name the connection)."""
        row = await conn.fetchrow(
            self.queries.open_session,
            self.host,
            self.pid,
            rename,
            APPLICATION_NAME,
            f"{APPLICATION_NAME}:",  # then the node id: see session_name
        )
        if row is None:
            raise TransportError("the session could not register (its backend is not listed)")
        self.node = int(row["node"])
        return self.node

    async def new_connection(
        self, application_name: str = APPLICATION_NAME
    ) -> asyncpg.Connection[Any]:
        assert self._connect is not None
        conn = await self._connect()
        if application_name != APPLICATION_NAME:
            try:
                await probe.rename(conn, application_name)
            except BaseException:
                conn.terminate()
                raise
        return conn

    # ------------------------------------------------------------ traffic in

    def _notified(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        if not isinstance(payload, str):
            return
        for group in list(self.groups.values()):
            if group.channel == channel:
                group.notified(payload)

    def _sent(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        """A message for this node alone (on its own channel), to the group it names."""
        if not isinstance(payload, str):
            return
        group = self.groups.get(messages.namespace_of(payload) or "")
        if group is not None:
            group.notified(payload)

    def _terminated(self, conn: object) -> None:
        if conn is self.conn:
            self.lose("the election connection was closed")

    def _anchor_terminated(self, conn: object) -> None:
        if conn is self.anchor:
            self.anchor = None
            self.lose("the anchor session ended")

    def lose(self, reason: str) -> None:
        """The session can no longer vouch for its groups: tell every one of them.

        Their gates close in the callbacks; the connection (and the claims on it) stays
        until every group has let go, the anchor until every group's work has stopped.
        """
        if self.broken is not None or self.closed:
            return
        self.broken = reason
        REGISTRY.discard(self)
        log.warning(
            "election session node %s lost: %s; its groups step down and reconnect",
            self.node,
            reason,
            extra=self._extra("session_lost"),
        )
        self.ticker.wake()  # the periodic statement ends by itself (never cut off mid-call)
        self.watchers.cancel()
        for group in list(self.groups.values()):
            group.lost()
        self.groups.clear()
        if not self._holding:
            self._drop_connection()
        if not self._holding and not self._working:
            self._drop_anchor()

    # ------------------------------------------------------------ closing

    def close_soon(self) -> None:
        """Close in the background; from now on no group is given this session."""
        if self.closed:
            return
        self._begin_close()
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            # Asked by a task being cancelled (the loop may be shutting down, and would
            # not wait for a new task): drop the connections at once instead.
            self._terminate_all()
            return
        task = asyncio.ensure_future(self._finish_close())
        task.add_done_callback(retrieve)

    async def close(self) -> None:
        """Unregister and disconnect within about two ``io_timeout``; never raises."""
        if self.closed:
            return
        self._begin_close()
        await self._finish_close()

    def _begin_close(self) -> None:
        self.closed = True
        REGISTRY.discard(self)
        self.ticker.wake()

    async def _finish_close(self) -> None:
        ticker = self.ticker.task
        if ticker is not None and not ticker.done():
            # Let a statement in flight finish rather than cut it off (bounded).
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(asyncio.shield(ticker), self.timing.io_timeout)
            ticker.cancel()
        self.watchers.cancel()
        conn, serial = self.conn, self.serial
        try:
            if conn is not None and serial is not None and self.broken is None:
                # After every call still in flight (of groups that stopped waiting).
                with contextlib.suppress(Exception):
                    await serial.execute(self.queries.unregister_session, self.node)
                if conn is self.borrowed:
                    await serial.unlisten(self._unlistened())
                if conn is not self.borrowed and self.broken is None:
                    with contextlib.suppress(Exception):
                        await serial.run("closing", lambda c: c.close())
        finally:
            self._terminate_all()

    def _terminate_all(self) -> None:
        """Drop the connection, and the anchor unless a group's work still runs (then the
        last :meth:`work_stopped` drops it)."""
        self._drop_connection()
        if not self._working:
            self._drop_anchor()

    def _drop_connection(self) -> None:
        conn = self.conn
        if conn is None:
            return
        conn.remove_termination_listener(self._terminated)
        if conn is not self.borrowed:
            if not conn.is_closed():
                conn.terminate()
            return
        # A borrowed connection lives on (a lost session's group may come back on it as a
        # new node): what this session listened on goes, after the calls it still makes.
        listening, serial = self._unlistened(), self.serial
        if listening and serial is not None and not conn.is_closed():
            task = asyncio.ensure_future(serial.unlisten(listening))
            task.add_done_callback(retrieve)

    def _unlistened(self) -> list[tuple[str, Callable[..., None]]]:
        """What the session listens on, forgotten (to be removed once)."""
        listening, self._listening = self._listening, {}
        return list(listening.items())

    def _drop_anchor(self) -> None:
        anchor, self.anchor = self.anchor, None
        if anchor is not None:
            anchor.remove_termination_listener(self._anchor_terminated)
            anchor.terminate()


def _terminate_made(task: asyncio.Future[asyncpg.Connection[Any]]) -> None:
    """Drop the connection a given-up task made, if it made one."""
    if not task.cancelled() and task.exception() is None:
        task.result().terminate()


#: The open sessions of this process.
REGISTRY: Registry[Session] = Registry()


def open_sessions() -> list[Session]:
    """The election sessions open on the running event loop (for diagnostics and tests)."""
    return REGISTRY.open_sessions()
