"""Operational commands: status, listen, demo (registered into the CLI)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from . import cli
from .schema import Names, validate_namespace

Command = Callable[[argparse.Namespace], int]


class Unreachable(Exception):
    """The database could not be reached; the message says where we looked."""


def register(sub: Any, commands: dict[str, Command]) -> None:
    """Add this module's subcommands to the CLI's subparsers."""
    p = sub.add_parser(
        "status",
        help="who leads each group, since when, its members and last terms",
        description=(
            "Show, for each election group running in the database (or the one given), "
            "the current leader (node, host, pid, term, since), the live members in rank "
            "order and the last terms. Listens up to --wait seconds for the leaders' "
            "heartbeats. Exits 2 if the schema is missing, 1 if the database is unreachable."
        ),
    )
    cli.add_connection_arguments(p)
    cli.add_prefix_argument(p)
    p.add_argument("--namespace", "-n", help="only this group")
    p.add_argument("--json", action="store_true", help="one JSON document (a line per refresh)")
    p.add_argument("--watch", "-w", action="store_true", help="refresh live until Ctrl-C")
    p.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        help="--watch: seconds between refreshes; changes show at once (default 1)",
    )
    p.add_argument(
        "--wait",
        type=_non_negative_float,
        default=None,
        help="seconds to listen for leaders' heartbeats (default 0.6, one default heartbeat)",
    )
    p.add_argument(
        "--terms",
        type=_non_negative_int,
        default=5,
        help="how many past terms to show per group (default 5)",
    )
    commands["status"] = _status

    p = sub.add_parser(
        "listen",
        help="print election messages as they pass, one line each",
        description=(
            "LISTEN on the election channel and print every message, decoded, one line "
            "each (rejected payloads too, with the reason). For debugging."
        ),
    )
    cli.add_connection_arguments(p)
    cli.add_prefix_argument(p)
    p.add_argument("--namespace", "-n", help="only messages of this group")
    p.add_argument("--json", action="store_true", help="JSON lines")
    p.add_argument("--count", type=int, help="exit after this many messages")
    p.add_argument("--for", dest="duration", type=_positive_float, help="exit after SECONDS")
    commands["listen"] = _listen

    from . import demo

    demo.register(sub, commands)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def describe_target(args: argparse.Namespace) -> str:
    """Where the connection options point, without the password."""
    kwargs = cli.connection_kwargs(args)
    dsn = kwargs.pop("dsn", None)
    parts = []
    if dsn:
        url = urlsplit(dsn)
        if url.password:
            netloc = url.netloc.replace(":" + url.password + "@", ":***@", 1)
            url = url._replace(netloc=netloc)
        parts.append(urlunsplit(url))
    parts += [f"{k}={v}" for k, v in kwargs.items() if k != "password"]
    env = [
        f"{k}={os.environ[k]}"
        for k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE")
        if os.environ.get(k)
    ]
    if parts:
        return " ".join(parts)
    if env:
        return " ".join(env)
    return "the default local server (no --dsn, --pg-* or PG* variables given)"


async def open_connection(args: argparse.Namespace) -> asyncpg.Connection[Any]:
    """cli.connect, with a failure turned into Unreachable naming the target and the fix."""
    try:
        return await cli.connect(args)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Unreachable(
            f"cannot connect to PostgreSQL at {describe_target(args)}: {exc or type(exc).__name__}."
            " Check that the server runs and pass --dsn, --pg-host/--pg-port/... or set"
            " PGHOST/PGPORT/PGUSER/PGDATABASE."
        ) from exc


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine: Ctrl-C ends it quietly, a lost database exits 1."""
    try:
        return asyncio.run(main)
    except KeyboardInterrupt:
        return 0
    except Unreachable as exc:
        print(f"notifelect: error: {exc}", file=sys.stderr)
        return 1


def _namespace(args: argparse.Namespace) -> str | None:
    return None if args.namespace is None else validate_namespace(args.namespace)


def _status(args: argparse.Namespace) -> int:
    from . import status

    names = Names.from_env(args.prefix)
    namespace = _namespace(args)

    async def main() -> int:
        conn = await open_connection(args)
        try:
            if args.watch:
                screen = status.Screen(as_json=args.json)
                await status.watch(
                    conn,
                    names,
                    screen,
                    namespace=namespace,
                    interval=args.interval,
                    transitions=args.terms,
                )
                return 0
            wait = status.DEFAULT_WAIT if args.wait is None else args.wait
            snap = await status.snapshot(
                conn, names, namespace=namespace, wait=wait, transitions=args.terms
            )
            if args.json:
                print(status.render_json(snap))
            else:
                print(status.render_text(snap, wait=wait), end="")
            return 0
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)

    return run(main())


def _listen(args: argparse.Namespace) -> int:
    from . import listen

    names = Names.from_env(args.prefix)
    namespace = _namespace(args)

    async def main() -> int:
        conn = await open_connection(args)
        try:
            printer = listen.Printer(as_json=args.json, namespace=namespace)
            only = f" for group {namespace!r}" if namespace else ""

            def ready() -> None:
                print(
                    f"notifelect: listening on channel {names.channel!r}{only} (Ctrl-C to stop)",
                    file=sys.stderr,
                    flush=True,
                )

            await listen.listen(
                conn, names, printer, count=args.count, duration=args.duration, ready=ready
            )
            return 0
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)

    return run(main())
