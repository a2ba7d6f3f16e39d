"""The fencing guard: make a write commit only while its leadership term is current.

Inside the application's own transaction, :func:`check_term` reads the group's term row
``FOR SHARE``. A new leader must update that row to take its term, so it waits until the
transaction ends: either the write commits under the still-current term, or the term has
already moved on and the check raises :class:`StaleLeaderError`, rolling the write back.

The guard also takes a shared transaction-level advisory lock named after the group (the
two-key form of the group's claim key), so that a new leader can find every backend whose
transaction holds the term row. A leader cut off mid-write leaves its backend waiting on
the client, holding the row, for as long as the path stays half-open; once its lease has
run out the new leader terminates that backend (a transaction that never committed leaves
no write behind) instead of waiting for it.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigurationError, StaleLeaderError
from .schema import Names, quote_ident


def guard_key(names: Names, namespace: str) -> tuple[int, int]:
    """The two signed 32-bit keys of a group's guard lock: the halves of its claim key.
    (The claim lock is the one-key form of the same key: ``pg_locks`` tells them apart by
    ``objsubid``, 1 for the claim and 2 for the guard.)"""
    key = names.claim_key(namespace) & 0xFFFFFFFFFFFFFFFF
    return _signed32(key >> 32), _signed32(key & 0xFFFFFFFF)


def _signed32(half: int) -> int:
    return half - (1 << 32) if half >= 1 << 31 else half


def _sql(names: Names, style: str) -> str:
    ns, hi, lo = ("$1", "$2", "$3") if style == "numeric" else (":namespace", ":hi", ":lo")
    # The advisory lock is taken before the row's (the row lock is the plan's top node).
    return (
        f"SELECT t.term FROM (SELECT pg_advisory_xact_lock_shared({hi}, {lo})) g,"
        f" {quote_ident(names.term)} t WHERE t.namespace = {ns} FOR SHARE OF t"
    )


async def read_term_for_share(executor: Any, names: Names, namespace: str) -> int | None:
    """The current term of ``namespace``, locked FOR SHARE in ``executor``'s transaction.

    ``executor`` is a SQLAlchemy ``AsyncSession`` or ``AsyncConnection``, or an asyncpg
    connection; it must be inside a transaction for the lock to matter.
    """
    try:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        AsyncConnection = AsyncSession = ()  # type: ignore[assignment,misc]
    hi, lo = guard_key(names, namespace)
    if isinstance(executor, AsyncSession | AsyncConnection):
        params = {"namespace": namespace, "hi": hi, "lo": lo}
        result = await executor.execute(text(_sql(names, "named")), params)
        value = result.scalar()
        return None if value is None else int(value)
    fetchval = getattr(executor, "fetchval", None)
    if fetchval is None:
        raise ConfigurationError(
            "the fencing guard needs a SQLAlchemy AsyncSession or AsyncConnection, or an "
            f"asyncpg connection; got {type(executor).__name__}"
        )
    value = await fetchval(_sql(names, "numeric"), namespace, hi, lo)
    return None if value is None else int(value)


async def check_term(executor: Any, names: Names, namespace: str, term: int) -> None:
    """Raise StaleLeaderError unless ``term`` is the group's current term (see module doc)."""
    current = await read_term_for_share(executor, names, namespace)
    if current != term:
        raise StaleLeaderError(namespace, term, current)
