"""``notifelect status``: who leads each election group, since when, and who else is there.

The records come from the database (:mod:`.records`), including how recently each
leader's session renewed its lease; ``--watch`` also listens on the groups' channels so
that it redraws at once when a leadership changes, and runs through restarts of the
database (a lost connection is said on stderr and reconnected with backoff).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import asyncpg

from .. import messages
from ..messages import Kind, Message
from ..schema import Names
from ..schema_check import check_schema
from ._common import (
    Subparsers,
    add_connection_arguments,
    add_prefix_argument,
    close_quietly,
    names_from,
    namespace_from,
    non_negative_int,
    open_connection,
    positive_float,
    run,
)
from ._reconnect import ConnectionLost, keep_connected
from .records import DEFAULT_TRANSITIONS, Snapshot, StatusReader
from .render import render_json, render_text

#: After a leader resigns, ``--watch`` re-reads this often (seconds) for up to
#: ``QUICK_WINDOW`` seconds, until the successor shows: the new leadership is read from
#: the database, not announced on the channel.
QUICK_REFRESH = 0.1
QUICK_WINDOW = 5.0
#: The longest a read may take before ``--watch`` takes the connection for lost (seconds).
_READ_TIMEOUT = 10.0


# ---------------------------------------------------------------- the channels


class Turnovers:
    """Leadership changes (coordinator and resign messages) on the groups' channels, so
    that ``--watch`` redraws at once rather than at its next refresh."""

    def __init__(self, conn: asyncpg.Connection[Any], names: Names) -> None:
        self.conn = conn
        self.names = names
        self._channels: set[str] = set()
        self._namespaces: set[str] = set()
        self._changed = asyncio.Event()
        #: The connection closed: the next wait raises instead of waiting for news.
        self.lost = False
        conn.add_termination_listener(self._closed)

    def _on(self, conn: object, pid: int, channel: str, payload: object) -> None:
        message = messages.parse(str(payload), None)
        if (
            isinstance(message, Message)
            and message.kind in (Kind.COORDINATOR, Kind.RESIGN)
            and message.namespace in self._namespaces
        ):
            self._changed.set()

    def _closed(self, conn: object) -> None:
        self.lost = True
        self._changed.set()

    async def follow(self, namespaces: Iterable[str]) -> None:
        """Follow the groups ``namespaces`` too: their channels, and the channel where
        the RESIGN of a hand-over (sent to the successor alone) is copied."""
        for namespace in namespaces:
            self._namespaces.add(namespace)
            for channel in (self.names.group_channel(namespace), self.names.changes_channel):
                if channel not in self._channels:
                    await self.conn.add_listener(channel, self._on)
                    self._channels.add(channel)

    async def wait(self, timeout: float) -> bool:
        """Wait for a change of leadership (True) or until ``timeout`` (False); raises
        :class:`ConnectionLost` once the connection has closed."""
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        finally:
            self._changed.clear()
        if self.lost:
            raise ConnectionLost("the server closed the connection")
        return True

    async def close(self) -> None:
        self.conn.remove_termination_listener(self._closed)
        if not self.conn.is_closed():
            with contextlib.suppress(Exception):
                for channel in self._channels:
                    await self.conn.remove_listener(channel, self._on)
        self._channels.clear()


async def snapshot(
    conn: asyncpg.Connection[Any],
    names: Names,
    *,
    namespace: str | None = None,
    transitions: int = DEFAULT_TRANSITIONS,
) -> Snapshot:
    """Status of every running group (or of ``namespace``), as the database has it now.

    How recently each leader was heard is the age of its session's last lease renewal:
    leaders renew once per interval for all their groups and send no per-group heartbeat.
    """
    await check_schema(conn, names)
    return await StatusReader(conn, names, namespace=namespace, transitions=transitions).read()


async def watch(
    conn: asyncpg.Connection[Any],
    names: Names,
    show: Callable[[Snapshot], None],
    *,
    namespace: str | None = None,
    interval: float = 1.0,
    transitions: int = DEFAULT_TRANSITIONS,
    stop: asyncio.Event | None = None,
) -> None:
    """Call ``show`` with a fresh snapshot every ``interval`` and at once on every change.

    Runs until ``stop`` is set or the task is cancelled; raises :class:`ConnectionLost`
    (or the error of a read, which is bounded in time) when the connection is lost, and
    :class:`~notifelect.errors.SchemaError` when the schema is removed meanwhile.
    """
    await check_schema(conn, names)
    reader = StatusReader(conn, names, namespace=namespace, transitions=transitions)
    stop = stop or asyncio.Event()
    turnovers = Turnovers(conn, names)
    quick_until = 0.0  # after a change: re-read often until the successor shows
    try:
        while not stop.is_set():
            async with asyncio.timeout(max(interval, _READ_TIMEOUT)):
                try:
                    snap = await reader.read()
                except asyncpg.UndefinedTableError:
                    # Removed (or moved) while watched: say so as at the start, and how
                    # to fix it, rather than as a database that cannot be used.
                    await check_schema(conn, names)
                    raise
            await turnovers.follow(g.namespace for g in snap.groups)
            show(snap)
            vacant = any(g.leader is None and g.members for g in snap.groups)
            quick = vacant and time.monotonic() < quick_until
            next_at = time.monotonic() + (min(interval, QUICK_REFRESH) if quick else interval)
            while not stop.is_set():
                remaining = next_at - time.monotonic()
                if remaining <= 0:
                    break
                if await turnovers.wait(min(remaining, 0.25)):
                    quick_until = time.monotonic() + QUICK_WINDOW
                    break
    finally:
        await turnovers.close()


class Screen:
    """Shows successive snapshots: redrawn in place on a terminal, appended otherwise."""

    def __init__(self, out: TextIO | None = None, *, as_json: bool = False) -> None:
        self.out = out or sys.stdout
        self.as_json = as_json
        self.tty = self.out.isatty()

    def __call__(self, snap: Snapshot) -> None:
        if self.as_json:
            self.out.write(render_json(snap) + "\n")
        else:
            text = render_text(snap)
            stamp = f"{snap.at.astimezone():%H:%M:%S}  (Ctrl-C to stop)"
            if self.tty:
                self.out.write("\x1b[H\x1b[2J" + stamp + "\n\n" + text)
            else:
                self.out.write(f"--- {stamp}\n{text}")
        self.out.flush()


# ---------------------------------------------------------------- the command


def configure_status_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "status",
        help="who leads each group, since when, its members and last terms",
        description=(
            "Show, for each election group running in the database (or the one given), "
            "the current leader (node, host, pid, term, since), the live members in rank "
            "order and the last terms. Exits 2 if the schema is missing, 1 if the database "
            "is unreachable."
        ),
    )
    add_connection_arguments(parser)
    add_prefix_argument(parser)
    parser.add_argument("--namespace", "-n", help="only this group")
    parser.add_argument(
        "--json", action="store_true", help="one JSON document (a line per refresh)"
    )
    parser.add_argument("--watch", "-w", action="store_true", help="refresh live until Ctrl-C")
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=1.0,
        help="--watch: seconds between refreshes; changes show at once (default 1)",
    )
    # Accepted and ignored since 0.2: leaders are heard through their lease renewals in
    # the database, so there is nothing to listen for.
    parser.add_argument("--wait", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--terms",
        type=non_negative_int,
        default=DEFAULT_TRANSITIONS,
        help="how many past terms to show per group (default 5)",
    )
    parser.set_defaults(func=status)


def status(args: argparse.Namespace) -> int:
    names = names_from(args)
    namespace = namespace_from(args)

    async def once() -> int:
        conn = await open_connection(args)
        try:
            snap = await snapshot(conn, names, namespace=namespace, transitions=args.terms)
            if args.json:
                print(render_json(snap))
            else:
                print(render_text(snap), end="")
            return 0
        finally:
            await close_quietly(conn)

    async def watching() -> int:
        screen = Screen(as_json=args.json)

        async def session(conn: asyncpg.Connection[Any], back: Callable[[], None] | None) -> int:
            def show(snap: Snapshot) -> None:
                nonlocal back
                screen(snap)
                if back is not None:
                    back()  # after the first view drawn from the new connection
                    back = None

            await watch(
                conn,
                names,
                show,
                namespace=namespace,
                interval=args.interval,
                transitions=args.terms,
            )
            return 0

        return await keep_connected(args, session)

    return run(watching() if args.watch else once())
