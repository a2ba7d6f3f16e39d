"""``notifelect listen``: election messages as they pass on the channel, for debugging.

It runs until stopped, through restarts of the database: a lost connection is said on
stderr and reconnected with backoff (messages sent while it was away are not seen).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

import asyncpg

from .. import messages, sql
from ..messages import Message, Rejected
from ..schema import Names
from ..schema_check import check_schema
from ._common import (
    Subparsers,
    add_connection_arguments,
    add_prefix_argument,
    names_from,
    namespace_from,
    positive_float,
    run,
)
from ._reconnect import ConnectionLost, keep_connected

#: Longest part of a rejected payload that is printed.
_SHOWN = 200
#: The longest a check of the connection may take before it counts as lost (seconds).
_CHECK_TIMEOUT = 5.0


def decode_any(payload: str) -> Message | Rejected:
    """Decode a payload of any namespace; never raises (see :func:`messages.parse`)."""
    return messages.parse(payload, None)


def describe(message: Message | Rejected, payload: str, at: datetime, sender: int) -> str:
    """One line for a person: time, group, kind, sender, term and the kind's extra field."""
    stamp = f"{at.astimezone():%H:%M:%S.%f}"[:-3]
    if isinstance(message, Rejected):
        shown = payload if len(payload) <= _SHOWN else payload[:_SHOWN] + "..."
        return f"{stamp}  rejected ({message.reason}) from backend {sender}: {shown!r}"
    parts = [
        stamp,
        repr(message.namespace),
        f"{message.kind.value:<11}",
        f"node {message.rank.node} (priority {message.rank.priority})",
    ]
    if message.term is not None:
        parts.append(f"term {message.term}")
    if message.standby is not None:
        parts.append(f"standby {message.standby}")
    if message.successor is not None:
        parts.append(f"successor {message.successor}")
    return "  ".join(parts)


def as_record(
    message: Message | Rejected, payload: str, at: datetime, sender: int
) -> dict[str, Any]:
    """The JSON-lines form: every field of the message, or the reason it was rejected."""
    if isinstance(message, Rejected):
        return {
            "at": at.isoformat(),
            "backend_pid": sender,
            "rejected": message.reason,
            "payload": payload[:_SHOWN],
        }
    return {
        "at": at.isoformat(),
        "backend_pid": sender,
        "namespace": message.namespace,
        "kind": message.kind.value,
        "node": message.rank.node,
        "priority": message.rank.priority,
        "term": message.term,
        "standby": message.standby,
        "successor": message.successor,
    }


class Printer:
    """Writes each message as one line (text or JSON), flushed at once."""

    def __init__(
        self, out: TextIO | None = None, *, as_json: bool = False, namespace: str | None = None
    ) -> None:
        self.out = out or sys.stdout
        self.as_json = as_json
        self.namespace = namespace
        self.count = 0

    def __call__(self, payload: str, sender: int) -> bool:
        """Print ``payload`` unless filtered out; True if it was printed."""
        message = decode_any(payload)
        if self.namespace is not None and (
            not isinstance(message, Message) or message.namespace != self.namespace
        ):
            return False
        at = datetime.now(UTC)
        if self.as_json:
            line = json.dumps(as_record(message, payload, at, sender), separators=(",", ":"))
        else:
            line = describe(message, payload, at, sender)
        self.out.write(line + "\n")
        self.out.flush()
        self.count += 1
        return True


async def listen(
    conn: asyncpg.Connection[Any],
    names: Names,
    printer: Callable[[str, int], bool],
    *,
    namespace: str | None = None,
    count: int | None = None,
    duration: float | None = None,
    ready: Callable[[int], None] | None = None,
    rescan: float = 1.0,
) -> int:
    """Feed every notification on the groups' channels to ``printer`` until ``count``
    messages were printed, ``duration`` seconds passed, or the task is cancelled. Returns
    the count.

    Each group has a channel of its own: with ``namespace`` only that group's is heard;
    otherwise every group that has members or a leader, looked up again every ``rescan``
    seconds for groups that start later. The copies of the messages sent to one node
    alone (``Names.changes_channel``) are heard too, filtered by ``printer``. ``ready``
    is called once LISTEN is active (with the number of group channels); nothing sent
    before that is seen. A schema other than this release's raises
    :class:`~notifelect.errors.SchemaError` first. The connection is checked
    every ``rescan`` seconds too: if it is lost, :class:`ConnectionLost` (or the error of
    the check) is raised.
    """
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    lost = asyncio.Event()
    printed = 0
    channels: set[str] = set()

    def on_notify(_conn: object, pid: int, _channel: str, payload: object) -> None:
        nonlocal printed
        if isinstance(payload, str) and not done.is_set() and printer(payload, pid):
            printed += 1
            if count is not None and printed >= count:
                done.set()

    def on_closed(_conn: object) -> None:
        lost.set()

    async def follow() -> None:
        groups = [namespace] if namespace is not None else await _group_names(conn, names)
        for group in groups:
            channel = names.group_channel(group)
            if channel not in channels:
                await conn.add_listener(channel, on_notify)
                channels.add(channel)

    # As status: a missing or outdated schema is named, with its fix, before anything.
    await check_schema(conn, names)
    conn.add_termination_listener(on_closed)
    try:
        # Messages sent to one node alone (a hand-over's RESIGN) are copied there.
        await conn.add_listener(names.changes_channel, on_notify)
        channels.add(names.changes_channel)
        await follow()
        if ready is not None:
            ready(len(channels) - 1)
        deadline = None if duration is None else loop.time() + duration
        while not done.is_set():
            wait = rescan if deadline is None else min(rescan, deadline - loop.time())
            if wait <= 0:
                break
            await _first_of(done, lost, timeout=wait)
            if lost.is_set():
                raise ConnectionLost("the server closed the connection")
            if not done.is_set():
                # Bounded: a server that stopped answering counts as lost too.
                async with asyncio.timeout(max(rescan, _CHECK_TIMEOUT)):
                    if namespace is None:
                        await follow()
                    else:
                        await conn.fetchval("SELECT 1")
    finally:
        conn.remove_termination_listener(on_closed)
        if not conn.is_closed():
            with contextlib.suppress(Exception):
                for channel in channels:
                    await conn.remove_listener(channel, on_notify)
    return printed


async def _first_of(*events: asyncio.Event, timeout: float) -> None:
    """Wait until one of ``events`` is set, or ``timeout`` seconds."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _group_names(conn: asyncpg.Connection[Any], names: Names) -> list[str]:
    rows = await conn.fetch(sql.group_names(names))
    return [row["namespace"] for row in rows]


# ---------------------------------------------------------------- the command


def configure_listen_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "listen",
        help="print election messages as they pass, one line each",
        description=(
            "LISTEN on the election channel and print every message, decoded, one line "
            "each (rejected payloads too, with the reason). For debugging."
        ),
    )
    add_connection_arguments(parser)
    add_prefix_argument(parser)
    parser.add_argument("--namespace", "-n", help="only messages of this group")
    parser.add_argument("--json", action="store_true", help="JSON lines")
    parser.add_argument("--count", type=int, help="exit after this many messages")
    parser.add_argument("--for", dest="duration", type=positive_float, help="exit after SECONDS")
    parser.set_defaults(func=listen_command)


def listen_command(args: argparse.Namespace) -> int:
    names = names_from(args)
    namespace = namespace_from(args)

    async def main() -> int:
        printer = Printer(as_json=args.json, namespace=namespace)

        def ready(channels: int) -> None:
            where = (
                f"the channel of group {namespace!r}"
                if namespace
                else f"the channels of {channels} group(s), and of any that starts"
            )
            print(
                f"notifelect: listening on {where} (Ctrl-C to stop)",
                file=sys.stderr,
                flush=True,
            )

        async def session(conn: asyncpg.Connection[Any], back: Callable[[], None] | None) -> int:
            left = None if args.count is None else args.count - printer.count
            await listen(
                conn,
                names,
                printer,
                namespace=namespace,
                count=left,
                ready=ready if back is None else lambda _: back(),
            )
            return 0

        timer = asyncio.timeout(args.duration)
        try:
            async with timer:
                return await keep_connected(
                    args,
                    session,
                    back="; listening again (messages sent meanwhile were missed)",
                )
        except TimeoutError:
            if not timer.expired():
                raise
            return 0

    return run(main())
