"""``notifelect demo``: watch an election survive a crash, a pause and a deploy.

Starts N node processes (the node program, ``notifelect._cluster.node``) in one group, shows who
leads as it changes, then kills the leader (SIGKILL), pauses the next one (SIGSTOP, later
SIGCONT) and lets the third exit cleanly, printing each failover time as the nodes measured
it. Without a database given it runs on an embedded PostgreSQL in a temporary directory.

A Ctrl-C in the terminal reaches the nodes too, which leave their group cleanly; the demo
then stops what remains, waits for every node and removes the embedded server: nothing is
left running (an atexit hook kills leftover nodes if the demo dies of an unexpected
exception).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import uuid
import warnings
from types import FrameType
from urllib.parse import quote, urlencode

import asyncpg

from ..schema import Names, install_statements, validate_namespace
from . import schema
from ._common import Subparsers, add_connection_arguments, add_prefix_argument, redact
from .demo_script import MIN_NODES, Demo, kill_leftovers

_PG_ENV = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSERVICE")


def configure_demo_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run N nodes, kill, pause and stop leaders, print the failover times",
        description=(
            "Run N node processes in one election group and show who leads; then kill the "
            "leader (SIGKILL), pause the next one (SIGSTOP/SIGCONT) and let the third exit "
            "cleanly, printing each failover time. Without --dsn, --pg-* or PG* variables "
            "it starts an embedded PostgreSQL (the embedded extra: pip install -e "
            "'.[embedded]' in a checkout of notifelect) and "
            "removes it at the end. Ctrl-C stops everything."
        ),
    )
    parser.add_argument(
        "--nodes", type=int, default=5, help=f"node processes (default 5, at least {MIN_NODES})"
    )
    add_connection_arguments(parser)
    add_prefix_argument(parser)
    parser.add_argument("--namespace", help="group name (default: demo-<random>)")
    parser.add_argument(
        "--step-timeout",
        type=float,
        default=20.0,
        help="give up if a step shows no new leader within SECONDS (default 20)",
    )
    parser.set_defaults(func=run_demo)


def _external_dsn(args: argparse.Namespace) -> str | None:
    """A DSN for the database the user named, or None to use the embedded one."""
    if args.dsn:
        return str(args.dsn).replace("postgresql+asyncpg://", "postgresql://", 1)
    query = {
        key: value
        for key, value in (
            ("host", args.pg_host),
            ("port", args.pg_port),
            ("user", args.pg_user),
            ("password", args.pg_password),
        )
        if value is not None
    }
    if query or args.pg_database or any(os.environ.get(k) for k in _PG_ENV):
        # Anything not given here comes from the PG* variables, in every process.
        path = quote(args.pg_database, safe="") if args.pg_database else ""
        return f"postgresql:///{path}" + (f"?{urlencode(query)}" if query else "")
    return None


async def _install(dsn: str, prefix: str | None) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await schema.apply(conn, install_statements(Names.from_env(prefix)))
    finally:
        await conn.close()


async def _main(demo: Demo, install: bool) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def stop() -> None:
        # Until the script gives up: on Python 3.11 ``asyncio.wait_for`` can swallow a
        # cancellation that lands as its inner wait completes, and the demo went on. Not
        # once it is stopping its nodes (bounded): a cancelled clean-up would leave them
        # running and their pipes to a closed loop.
        if not task.done() and not demo.finished:
            task.cancel()
            loop.call_later(0.1, stop)

    loop.add_signal_handler(signal.SIGTERM, stop)
    if install:
        await _install(demo.dsn, demo.prefix)
    demo.started = time.monotonic()
    return await demo.run()


class _Interrupted(BaseException):
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted


def run_demo(args: argparse.Namespace) -> int:
    if args.nodes < MIN_NODES:
        print(
            f"notifelect: error: the demo needs --nodes {MIN_NODES} or more (one is killed, "
            "one paused, one exits)",
            file=sys.stderr,
        )
        return 2
    namespace = validate_namespace(args.namespace or f"demo-{uuid.uuid4().hex[:6]}")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    embedded = None
    try:
        dsn = _external_dsn(args)
        if dsn is None:
            from ..embedded import EmbeddedPostgres

            print("starting an embedded PostgreSQL (no --dsn, --pg-* or PG* variables given)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pgserver's note about XDG_RUNTIME_DIR
                embedded = EmbeddedPostgres()
            dsn = embedded.dsn
            print(f"  embedded PostgreSQL in {embedded.root} (removed at the end)", flush=True)
        else:
            print(f"using the database given: {redact(dsn)}", flush=True)
        demo = Demo(dsn, namespace, args.prefix, args.nodes, args.step_timeout)
        try:
            return asyncio.run(_main(demo, install=True))
        except (KeyboardInterrupt, _Interrupted, asyncio.CancelledError):
            print("\nnotifelect demo: interrupted; every node process was stopped", flush=True)
            return 130
    except (KeyboardInterrupt, _Interrupted):
        print("\nnotifelect demo: interrupted", flush=True)
        return 130
    finally:
        # Cleanup must finish: a second Ctrl-C or SIGTERM must not leave the server behind.
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        kill_leftovers()
        if embedded is not None:
            embedded.close()
            print(f"removed the embedded PostgreSQL ({embedded.root})", flush=True)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, interrupt)
