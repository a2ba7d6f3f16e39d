"""``notifelect install`` and ``notifelect uninstall``: create or drop the schema.

Both run the idempotent DDL of :mod:`notifelect.schema` in one transaction, under the
schema-change lock, or print it with ``--dry-run``.
"""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg

from ..schema import ddl_lock_statement, install_statements, uninstall_statements
from ._common import (
    Subparsers,
    add_connection_arguments,
    add_prefix_argument,
    names_from,
    open_connection,
    run,
)

_INSTALL = "create the schema (idempotent; upgrades a 0.0.3 database in place)"
_UNINSTALL = "drop the schema (idempotent)"


def configure_install_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("install", help=_INSTALL, description=_INSTALL)
    _add_arguments(parser)
    parser.set_defaults(func=install)


def configure_uninstall_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("uninstall", help=_UNINSTALL, description=_UNINSTALL)
    _add_arguments(parser)
    parser.set_defaults(func=uninstall)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    add_prefix_argument(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the SQL, change nothing")


def install(args: argparse.Namespace) -> int:
    return _run(install_statements(names_from(args)), args, "schema installed")


def uninstall(args: argparse.Namespace) -> int:
    return _run(uninstall_statements(names_from(args)), args, "schema removed")


async def apply(conn: asyncpg.Connection[Any], statements: list[str]) -> None:
    """Run ``statements`` in one transaction holding the schema-change lock.

    The lock serialises concurrent runs: CREATE ... IF NOT EXISTS is not race-free.
    """
    async with conn.transaction():
        await conn.execute(ddl_lock_statement())
        for statement in statements:
            await conn.execute(statement)


def script(statements: list[str], search_path: str | None) -> list[str]:
    """What a run applies, as one script for ``psql``: one transaction under the
    schema-change lock, after setting ``search_path`` (``--search-path``) for it."""
    where = []
    if search_path is not None:
        literal = "'" + search_path.replace("'", "''") + "'"
        where = [f"SELECT pg_catalog.set_config('search_path', {literal}, true)"]
    return ["BEGIN", *where, ddl_lock_statement(), *statements, "COMMIT"]


def _run(statements: list[str], args: argparse.Namespace, done: str) -> int:
    if args.dry_run:
        for statement in script(statements, getattr(args, "search_path", None)):
            print(statement + ";\n")
        return 0

    async def apply_all() -> int:
        conn = await open_connection(args)  # unreachable: exits 1 naming the target and fix
        try:
            await apply(conn, statements)
        finally:
            await conn.close()
        names = names_from(args)
        print(f"notifelect: {done} (sequence {names.sequence}, channel {names.channel})")
        return 0

    return run(apply_all())
