"""Command line: ``python -m notifelect {install,uninstall,status,listen,demo}``.

The connection comes from ``--dsn``, else from ``--pg-host``/``--pg-port``/``--pg-user``/
``--pg-password``/``--pg-database``, else from the standard ``PG*`` environment variables
(``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGPASSWORD``, ``PGDATABASE``) as libpq reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from .errors import NotifelectError
from .schema import (
    PREFIX_ENV,
    Names,
    ddl_lock_statement,
    install_statements,
    uninstall_statements,
)

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Command] = {}


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection (default: the PG* environment variables)")
    group.add_argument("--dsn", help="postgresql://user:password@host:port/database")
    group.add_argument("--pg-host", help="server host or socket directory ($PGHOST)")
    group.add_argument("--pg-port", type=int, help="server port ($PGPORT)")
    group.add_argument("--pg-user", help="role name ($PGUSER)")
    group.add_argument("--pg-password", help="password ($PGPASSWORD)")
    group.add_argument("--pg-database", help="database name ($PGDATABASE)")


def add_prefix_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefix",
        help=f"prefix of every object name (default: ${PREFIX_ENV}, else none)",
    )


def connection_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """asyncpg.connect() keyword arguments from the parsed connection options."""
    kwargs: dict[str, Any] = {}
    if args.dsn:
        kwargs["dsn"] = args.dsn.replace("postgresql+asyncpg://", "postgresql://", 1)
    for option, key in (
        ("pg_host", "host"),
        ("pg_port", "port"),
        ("pg_user", "user"),
        ("pg_password", "password"),
        ("pg_database", "database"),
    ):
        value = getattr(args, option, None)
        if value is not None:
            kwargs[key] = value
    return kwargs


async def connect(args: argparse.Namespace) -> asyncpg.Connection[Any]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(**connection_kwargs(args), timeout=10)
    return conn


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return register


def _ddl(statements: list[str], args: argparse.Namespace, verb: str) -> int:
    if args.dry_run:
        for statement in statements:
            print(statement + ";\n")
        return 0

    async def run() -> None:
        conn = await connect(args)
        try:
            async with conn.transaction():
                # Serialises concurrent runs: CREATE ... IF NOT EXISTS is not race-free.
                await conn.execute(ddl_lock_statement())
                for statement in statements:
                    await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())
    names = Names.from_env(args.prefix)
    print(f"notifelect: {verb} (sequence {names.sequence}, channel {names.channel})")
    return 0


@command("install")
def _install(args: argparse.Namespace) -> int:
    return _ddl(install_statements(Names.from_env(args.prefix)), args, "schema installed")


@command("uninstall")
def _uninstall(args: argparse.Namespace) -> int:
    return _ddl(uninstall_statements(Names.from_env(args.prefix)), args, "schema removed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m notifelect",
        description="Leader election on PostgreSQL LISTEN/NOTIFY.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("install", "create the schema (idempotent; upgrades a 0.0.3 database in place)"),
        ("uninstall", "drop the schema (idempotent)"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_connection_arguments(p)
        add_prefix_argument(p)
        p.add_argument("--dry-run", action="store_true", help="print the SQL, change nothing")
    _extend(sub)
    return parser


def _extend(sub: Any) -> None:
    """Add the operational commands (status, listen, demo) if present."""
    try:
        from . import ops
    except ImportError:  # pragma: no cover - ops ships with the package
        return
    ops.register(sub, _COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except NotifelectError as exc:
        print(f"notifelect: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"notifelect: error: cannot use the database: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
