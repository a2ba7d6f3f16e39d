"""What every command shares: the connection and prefix options, and running a command.

The connection comes from ``--dsn``, else from ``--pg-host``/``--pg-port``/``--pg-user``/
``--pg-password``/``--pg-database``, else from the standard ``PG*`` environment variables
(``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGPASSWORD``, ``PGDATABASE``) as libpq reads them.
``--search-path`` sets the connection's ``search_path`` (where the schema is looked for and
created). The prefix comes from ``--prefix``, else from ``$NOTIFELECT_PREFIX``, else none.

The command modules import this one; it imports none of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeAlias
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import asyncpg

from ..errors import ConfigurationError
from ..schema import PREFIX_ENV, Names, validate_namespace

#: What ``set_defaults(func=...)`` names: runs the parsed command, returns the exit status.
Command = Callable[[argparse.Namespace], int]
#: What each ``configure_<command>_parser`` adds its parser to.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Unreachable(Exception):
    """The database could not be reached; the message says where we looked."""


# ---------------------------------------------------------------- options


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection (default: the PG* environment variables)")
    group.add_argument("--dsn", help="postgresql://user:password@host:port/database")
    group.add_argument("--pg-host", help="server host or socket directory ($PGHOST)")
    group.add_argument("--pg-port", type=int, help="server port ($PGPORT)")
    group.add_argument("--pg-user", help="role name ($PGUSER)")
    group.add_argument("--pg-password", help="password ($PGPASSWORD)")
    group.add_argument("--pg-database", help="database name ($PGDATABASE)")
    group.add_argument(
        "--search-path",
        help="the schemas to look in (and install into), as PostgreSQL's search_path "
        "(default: the one the role and database set)",
    )


def add_prefix_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefix",
        help=f"prefix of every object name (default: ${PREFIX_ENV}, else none)",
    )


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


# ---------------------------------------------------------------- reading them


def names_from(args: argparse.Namespace) -> Names:
    """The object names for ``--prefix``, else ``$NOTIFELECT_PREFIX``."""
    return Names.from_env(args.prefix)


def namespace_from(args: argparse.Namespace) -> str | None:
    """The validated ``--namespace``, or None for every group."""
    return None if args.namespace is None else validate_namespace(args.namespace)


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
    search_path = getattr(args, "search_path", None)
    if search_path is not None:
        kwargs["server_settings"] = {"search_path": search_path}
    return kwargs


#: The parameters of a DSN that hold a secret.
_SECRETS = frozenset({"password", "sslpassword"})
#: The password of a URL's user, and a secret parameter of its query, found by their
#: shape in a URL no parser reads.
_USERINFO_SECRET = re.compile(r"(://[^/@]*?:)[^@/]*@")
_QUERY_SECRET = re.compile(r"([?&](?:ssl)?password=)[^&]*", re.I)
#: A secret in libpq's key/value form (``host=db password='x y'``).
_KEYWORD_SECRET = re.compile(r"\b(password|sslpassword)(\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I)


def redact(dsn: str) -> str:
    """``dsn`` with every password in it replaced by ``***``: the user's in a URL, and
    ``password`` and ``sslpassword`` parameters, in a URL's query or in libpq's
    key/value form."""
    if "://" not in dsn:
        return _KEYWORD_SECRET.sub(r"\1\2***", dsn)
    try:
        url = urlsplit(dsn)
    except ValueError:  # not readable as a URL (a broken IPv6 address): mask by its shape
        dsn = _USERINFO_SECRET.sub(r"\1***@", dsn, count=1)
        return _QUERY_SECRET.sub(r"\1***", dsn)
    if url.password:
        url = url._replace(netloc=url.netloc.replace(f":{url.password}@", ":***@", 1))
    if url.query:
        pairs = (part.partition("=") for part in url.query.split("&"))
        url = url._replace(
            query="&".join(
                f"{key}{eq}***"
                if eq and unquote_plus(key).lower() in _SECRETS  # as the driver reads it
                else f"{key}{eq}{value}"
                for key, eq, value in pairs
            )
        )
    return urlunsplit(url)


def describe_target(args: argparse.Namespace) -> str:
    """Where the connection options point, without the password."""
    kwargs = connection_kwargs(args)
    dsn = kwargs.pop("dsn", None)
    parts = []
    if dsn:
        parts.append(redact(dsn))
    settings = kwargs.pop("server_settings", {})
    parts += [f"{k}={v}" for k, v in kwargs.items() if k != "password"]
    parts += [f"{k}={v}" for k, v in settings.items()]
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


# ---------------------------------------------------------------- connecting and running


#: How long a command waits for the server to let it in (seconds).
CONNECT_TIMEOUT = 10.0


async def connect(args: argparse.Namespace) -> asyncpg.Connection[Any]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(
        **connection_kwargs(args), timeout=CONNECT_TIMEOUT
    )
    return conn


async def open_connection(args: argparse.Namespace) -> asyncpg.Connection[Any]:
    """:func:`connect`, with a failure turned into Unreachable naming the target and the
    fix (or, for connection options that cannot be read, a ConfigurationError)."""
    try:
        return await connect(args)
    except (asyncpg.ClientConfigurationError, ValueError, OverflowError) as exc:
        # A DSN in another form, a port that is no number or out of range, a broken IPv6
        # address: what the driver could not read (ClientConfigurationError is one).
        raise ConfigurationError(
            f"cannot read the connection options {describe_target(args)}:"
            f" {str(exc).rstrip('.')}. Give --dsn"
            " as a URL, postgresql://user:password@host:port/database, or use --pg-host,"
            " --pg-port, ... (libpq's key/value form, host=... dbname=..., is not read)"
        ) from exc
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if isinstance(exc, TimeoutError):
            why = str(exc) or f"no answer within {CONNECT_TIMEOUT:g}s"
        else:
            why = str(exc) or type(exc).__name__
        raise Unreachable(
            f"cannot connect to PostgreSQL at {describe_target(args)}: {why}."
            " Check that the server runs and pass --dsn, --pg-host/--pg-port/... or set"
            " PGHOST/PGPORT/PGUSER/PGDATABASE."
        ) from exc


async def close_quietly(conn: asyncpg.Connection[Any]) -> None:
    """Close ``conn`` within two seconds, ignoring a connection that is already lost."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), timeout=2)


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine: Ctrl-C ends it quietly, a lost database exits 1."""
    try:
        return asyncio.run(main)
    except KeyboardInterrupt:
        return 0
    except Unreachable as exc:
        print(f"notifelect: error: {exc}", file=sys.stderr)
        return 1
