"""Keeping a long-running command (``status --watch``, ``listen``) on its database.

A lost connection (a restart, a failover, a terminated backend, a network that stopped
answering) is said in one line on stderr, the command reconnects with backoff for as long
as it runs, and one more line says when it is back. Errors that a retry cannot fix (a
wrong password, a missing schema) end the command as they would at its start.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO, TypeAlias

import asyncpg

from .._retry import retrying
from ..settings import RetryPolicy
from ._common import close_quietly, connect, describe_target, open_connection

#: How a command reconnects: from 0.1 s up to 5 s between attempts, for as long as it runs.
RECONNECT = RetryPolicy(initial=0.1, maximum=5.0, jitter=0.1)

#: Errors that mean the connection (or the server behind it) is gone, not that a
#: statement was wrong: the server shutting down or starting up, a broken socket.
_LOST = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)

#: What a command runs on each connection: ``session(conn, back)`` returns the exit
#: status, or raises when the connection is lost. After a reconnect ``back`` is a function
#: that the session calls once it works again (says so on stderr); None the first time.
Session: TypeAlias = (
    "Callable[[asyncpg.Connection[Any], Callable[[], None] | None], Awaitable[int]]"
)


class ConnectionLost(ConnectionError):
    """The connection closed while the command waited for something to happen on it."""


def is_lost(exc: BaseException, conn: asyncpg.Connection[Any] | None = None) -> bool:
    """Whether ``exc`` means the connection is gone (rather than a bad statement)."""
    if isinstance(exc, _LOST):
        return True
    return conn is not None and conn.is_closed()


async def keep_connected(
    args: argparse.Namespace,
    session: Session,
    *,
    back: str = "",
    err: TextIO | None = None,
    policy: RetryPolicy = RECONNECT,
) -> int:
    """Run ``session`` on a connection to the database ``args`` names, reconnecting
    whenever it is lost; return what ``session`` returns.

    The first connection is made once: if it fails, :class:`~._common.Unreachable` is
    raised (the command exits 1). After that, each loss prints one line on ``err``
    (stderr), the reconnection is retried with ``policy`` until it succeeds or the task is
    cancelled, and once the session works again a line ending with ``back`` says so.
    Errors of ``session`` that do not mean a lost connection propagate.
    """
    where = describe_target(args)

    def say(line: str) -> None:
        print(f"notifelect: {line}", file=err or sys.stderr, flush=True)

    conn = await open_connection(args)
    returned: Callable[[], None] | None = None
    while True:
        try:
            return await session(conn, returned)
        except Exception as exc:
            if not is_lost(exc, conn):
                raise
            lost_at = time.monotonic()
            reason = str(exc) or type(exc).__name__
            say(f"lost the connection to PostgreSQL at {where} ({reason}); reconnecting")
        finally:
            await close_quietly(conn)
        conn = await _reconnect(args, policy)
        again = f"reconnected to PostgreSQL at {where}"
        returned = functools.partial(_say_back, say, again, lost_at, back)


def _say_back(say: Callable[[str], None], what: str, lost_at: float, back: str) -> None:
    say(f"{what} after {time.monotonic() - lost_at:.1f}s{back}")


async def _reconnect(args: argparse.Namespace, policy: RetryPolicy) -> asyncpg.Connection[Any]:
    async for attempt in retrying(policy, retry_on=is_lost):
        with attempt:
            return await connect(args)
    raise AssertionError("retrying ends by returning or raising")  # pragma: no cover
