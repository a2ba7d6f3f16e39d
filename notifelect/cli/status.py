"""``notifelect status``: who leads each election group, since when, and who else is there.

The records come from the database (:mod:`.records`); the channel adds what only a live
leader can show, its heartbeats. A one-shot status listens for up to one heartbeat so
that it can say whether each leader is heard; ``--watch`` redraws on every change.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import asyncpg

from .. import messages
from ..messages import Kind, Message
from ..schema import Names
from ._common import (
    Subparsers,
    add_connection_arguments,
    add_prefix_argument,
    close_quietly,
    names_from,
    namespace_from,
    non_negative_float,
    non_negative_int,
    open_connection,
    positive_float,
    run,
)
from .records import DEFAULT_TRANSITIONS, Snapshot, StatusReader, check_schema
from .render import render_json, render_text

#: How long a one-shot status listens for heartbeats: a little over the default interval.
DEFAULT_WAIT = 0.6


# ---------------------------------------------------------------- the channel


class HeartbeatLog:
    """The last heartbeat or coordinator message heard from each group's leader."""

    def __init__(self, namespace: str | None = None) -> None:
        self.namespace = namespace
        self._last: dict[str, tuple[int, int, float]] = {}  # ns -> (node, term, monotonic)
        self._changed = asyncio.Event()
        #: Set when a message announced a change of leadership (coordinator or resign).
        self.turnover = False

    def feed(self, payload: str) -> Message | None:
        message = messages.parse(payload, None)
        if not isinstance(message, Message):
            return None
        if self.namespace is not None and message.namespace != self.namespace:
            return None
        if message.kind in (Kind.HEARTBEAT, Kind.COORDINATOR) and message.term is not None:
            self._last[message.namespace] = (message.rank.node, message.term, time.monotonic())
        if message.kind in (Kind.COORDINATOR, Kind.RESIGN):
            self.turnover = True
        self._changed.set()
        return message

    def age(self, namespace: str, node: int, term: int) -> float | None:
        last = self._last.get(namespace)
        if last is None or last[0] != node or last[1] != term:
            return None
        return round(time.monotonic() - last[2], 3)

    async def wait(self, timeout: float) -> bool:
        """Wait for the next message (True) or until ``timeout`` (False)."""
        self._changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True


class _Listening:
    """LISTEN on the channel for the duration of an ``async with`` block."""

    def __init__(self, conn: asyncpg.Connection[Any], channel: str, heard: HeartbeatLog) -> None:
        self.conn = conn
        self.channel = channel
        self.heard = heard

    def _on(self, conn: object, pid: int, channel: str, payload: object) -> None:
        if isinstance(payload, str):
            self.heard.feed(payload)

    async def __aenter__(self) -> HeartbeatLog:
        await self.conn.add_listener(self.channel, self._on)
        return self.heard

    async def __aexit__(self, *exc: object) -> None:
        if not self.conn.is_closed():
            await self.conn.remove_listener(self.channel, self._on)


async def snapshot(
    conn: asyncpg.Connection[Any],
    names: Names,
    *,
    namespace: str | None = None,
    wait: float = DEFAULT_WAIT,
    transitions: int = DEFAULT_TRANSITIONS,
) -> Snapshot:
    """Status of every running group (or of ``namespace``), within about one heartbeat.

    Reads the database, then listens up to ``wait`` seconds until every leader has been
    heard on the channel; reads again if a leadership changed meanwhile.
    """
    await check_schema(conn, names)
    reader = StatusReader(conn, names, namespace=namespace, transitions=transitions)
    async with _Listening(conn, names.channel, HeartbeatLog(namespace)) as heard:
        snap = await reader.read(heard)
        deadline = time.monotonic() + wait
        while True:
            unheard = [
                g
                for g in snap.groups
                if g.leader is not None
                and heard.age(g.namespace, g.leader.node, g.leader.term) is None
            ]
            remaining = deadline - time.monotonic()
            if not unheard or remaining <= 0:
                break
            await heard.wait(remaining)
            if heard.turnover:
                heard.turnover = False
                snap = await reader.read(heard)
        return await reader.read(heard)


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

    Runs until ``stop`` is set or the task is cancelled.
    """
    await check_schema(conn, names)
    reader = StatusReader(conn, names, namespace=namespace, transitions=transitions)
    stop = stop or asyncio.Event()
    async with _Listening(conn, names.channel, HeartbeatLog(namespace)) as heard:
        while not stop.is_set():
            show(await reader.read(heard))
            next_at = time.monotonic() + interval
            while not stop.is_set():
                remaining = next_at - time.monotonic()
                if remaining <= 0:
                    break
                await heard.wait(min(remaining, 0.25))
                if heard.turnover:
                    heard.turnover = False
                    break


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
            "order and the last terms. Listens up to --wait seconds for the leaders' "
            "heartbeats. Exits 2 if the schema is missing, 1 if the database is unreachable."
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
    parser.add_argument(
        "--wait",
        type=non_negative_float,
        default=None,
        help="seconds to listen for leaders' heartbeats (default 0.6, one default heartbeat)",
    )
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

    async def main() -> int:
        conn = await open_connection(args)
        try:
            if args.watch:
                screen = Screen(as_json=args.json)
                await watch(
                    conn,
                    names,
                    screen,
                    namespace=namespace,
                    interval=args.interval,
                    transitions=args.terms,
                )
                return 0
            wait = DEFAULT_WAIT if args.wait is None else args.wait
            snap = await snapshot(
                conn, names, namespace=namespace, wait=wait, transitions=args.terms
            )
            if args.json:
                print(render_json(snap))
            else:
                print(render_text(snap, wait=wait), end="")
            return 0
        finally:
            await close_quietly(conn)

    return run(main())
