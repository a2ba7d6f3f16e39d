"""The fencing guard: make a write commit only while its leadership term is current.

Inside the application's own transaction, :func:`check_term` reads the group's term row
``FOR SHARE``. A new leader must update that row to take its term, so it waits until the
transaction ends: either the write commits under the still-current term, or the term has
already moved on and the check raises :class:`StaleLeaderError`, rolling the write back.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigurationError, StaleLeaderError
from .schema import Names, quote_ident


def _sql(names: Names, style: str) -> str:
    param = "$1" if style == "numeric" else ":namespace"
    return f"SELECT term FROM {quote_ident(names.term)} WHERE namespace = {param} FOR SHARE"


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
    if isinstance(executor, AsyncSession | AsyncConnection):
        result = await executor.execute(text(_sql(names, "named")), {"namespace": namespace})
        value = result.scalar()
        return None if value is None else int(value)
    fetchval = getattr(executor, "fetchval", None)
    if fetchval is None:
        raise ConfigurationError(
            "the fencing guard needs a SQLAlchemy AsyncSession or AsyncConnection, or an "
            f"asyncpg connection; got {type(executor).__name__}"
        )
    value = await fetchval(_sql(names, "numeric"), namespace)
    return None if value is None else int(value)


async def check_term(executor: Any, names: Names, namespace: str, term: int) -> None:
    """Raise StaleLeaderError unless ``term`` is the group's current term (see module doc)."""
    current = await read_term_for_share(executor, names, namespace)
    if current != term:
        raise StaleLeaderError(namespace, term, current)
