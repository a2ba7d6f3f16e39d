"""Turn what users hand to ElectionGroup (engine, DSN, connection) into asyncpg connections.

Connections made here carry an ``application_name`` so that an election's sessions can be
told apart in ``pg_stat_activity``: the one the user configured (in the DSN's query, the
engine's ``connect_args``/URL, or ``$PGAPPNAME``), else :data:`APPLICATION_NAME`. A
borrowed asyncpg connection is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import asyncpg

from ..errors import ConfigurationError, ConnectionLimitError

Connect = Callable[[], Awaitable["asyncpg.Connection[Any]"]]

_ASYNC_HINT = (
    "use a SQLAlchemy AsyncEngine on the asyncpg driver, e.g. "
    "create_async_engine('postgresql+asyncpg://user@host/db'), or a DSN string"
)


#: ``application_name`` of the election's connections unless the user set one; once the
#: session has its node id, ``notifelect:<node>`` (see :func:`session_name`). Anchors and
#: watchers are named apart (:data:`ANCHOR_NAME`, :data:`WATCHER_NAME`) so that operators
#: can tell them apart and leave anchors alone.
APPLICATION_NAME = "notifelect"
ANCHOR_NAME = "notifelect-anchor"
WATCHER_NAME = "notifelect-watch"


def session_name(kind: str, node: int) -> str:
    """``<kind>:<node>``: the name of a session's connection of that kind (the node id is
    the one in ``notifelect_status`` and the logs)."""
    return f"{kind}:{node}"


def connector_for(
    engine: Any, *, application_name: str = APPLICATION_NAME
) -> tuple[Connect | None, asyncpg.Connection[Any] | None]:
    """Return (connect, borrowed): a factory of dedicated connections, or a borrowed one.

    Dedicated connections get ``application_name`` when neither the DSN or engine nor
    ``$PGAPPNAME`` sets one.
    """
    if isinstance(engine, asyncpg.Connection):
        return None, engine
    if isinstance(engine, str):
        return _dsn_connector(engine, application_name), None
    try:
        from sqlalchemy.engine import Engine
        from sqlalchemy.ext.asyncio import AsyncEngine
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        raise ConfigurationError(f"cannot use {type(engine).__name__}: {_ASYNC_HINT}") from None
    if isinstance(engine, Engine):
        raise ConfigurationError(
            f"ElectionGroup got a synchronous Engine ({engine.url.drivername}); {_ASYNC_HINT}"
        )
    if isinstance(engine, AsyncEngine):
        dialect = engine.dialect
        if dialect.name != "postgresql" or dialect.driver != "asyncpg":
            raise ConfigurationError(
                f"ElectionGroup needs PostgreSQL through asyncpg, got an AsyncEngine for "
                f"{engine.url.drivername!r}; {_ASYNC_HINT}"
            )
        return _engine_connector(engine, application_name), None
    raise ConfigurationError(f"ElectionGroup cannot use a {type(engine).__name__}; {_ASYNC_HINT}")


def _default_name(application_name: str) -> str:
    """``$PGAPPNAME`` (which libpq honours and asyncpg does not), else ours."""
    return os.environ.get("PGAPPNAME") or application_name


def _observe_lost_ssl_probes() -> None:
    """Keep a cancelled connect from leaving a "Future exception was never retrieved".

    Unless ``sslmode`` says otherwise asyncpg first asks the server for SSL on a
    connection of its own protocol, ``TLSUpgradeProto``, whose ``on_data`` future holds
    the answer. If the connect is cancelled (a timeout, a session given up, the loop
    shutting down) after that protocol is made and before ``create_connection()``
    returns, asyncio closes the transport and ``connection_lost()`` sets an exception on
    ``on_data`` that nobody awaits any more (asyncpg retrieves its own ``connected``
    future in that case, not this one). Mark it retrieved once the connection is lost:
    whoever still awaits it gets it all the same.
    """
    from asyncpg import connect_utils

    base: Any = getattr(connect_utils, "TLSUpgradeProto", None)
    if base is None or getattr(base, "_notifelect_observes_lost", False):
        return

    class _TLSUpgradeProto(base):  # type: ignore[misc]
        _notifelect_observes_lost = True

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            answer = getattr(self, "on_data", None)
            if answer is not None and answer.done() and not answer.cancelled():
                answer.exception()

    connect_utils.TLSUpgradeProto = _TLSUpgradeProto  # type: ignore[misc]


_observe_lost_ssl_probes()


def _dsn_connector(dsn: str, application_name: str) -> Connect:
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        raise ConfigurationError(f"not a DSN: {dsn!r}; expected postgresql://user@host/db")
    base, _, driver = scheme.partition("+")
    if base not in ("postgresql", "postgres") or driver not in ("", "asyncpg"):
        raise ConfigurationError(
            f"ElectionGroup needs a PostgreSQL DSN for asyncpg, got scheme {scheme!r}; "
            f"{_ASYNC_HINT}"
        )
    plain = f"postgresql://{rest}"
    query = dict(parse_qsl(rest.partition("?")[2]))
    settings = (
        None
        if "application_name" in query
        else {"application_name": _default_name(application_name)}
    )

    async def connect() -> asyncpg.Connection[Any]:
        try:
            return await asyncpg.connect(plain, server_settings=settings)
        except Exception as exc:
            _raise_if_full(exc)
            raise

    return connect


def _engine_connector(engine: Any, application_name: str) -> Connect:
    async def connect() -> asyncpg.Connection[Any]:
        # A connection from the engine's pool honours its URL, connect_args and connect
        # events; detaching it means it is closed by us and never returned to the pool
        # with our LISTEN or advisory lock on it, and frees its slot in the pool.
        try:
            fairy = await engine.raw_connection()
        except Exception as exc:
            _raise_if_full(exc)
            raise
        conn: asyncpg.Connection[Any] = fairy.driver_connection
        fairy.detach()
        try:
            if not conn.get_settings().application_name:
                # The engine's URL and connect_args named none: a plain SET (no prepared
                # statement), once per dedicated connection.
                name = _default_name(application_name).replace("'", "''")
                await conn.execute(f"SET application_name = '{name}'")
        except BaseException:
            conn.terminate()
            raise
        return conn

    return connect


def _raise_if_full(exc: BaseException) -> None:
    """Re-raise a refusal for lack of connection slots as a ConnectionLimitError."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, asyncpg.exceptions.TooManyConnectionsError):
            raise ConnectionLimitError(
                f"PostgreSQL refused the election connection: {cause} (SQLSTATE 53300, all "
                "max_connections slots are in use). Each node needs one dedicated connection "
                "and the standby one more: raise max_connections on the server, shrink the "
                "connection pools of the applications, or run fewer nodes"
            ) from exc
        orig = getattr(cause, "orig", None)  # SQLAlchemy wraps the driver's error
        cause = orig if isinstance(orig, BaseException) else (cause.__cause__ or cause.__context__)
