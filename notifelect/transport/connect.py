"""Turn what users hand to ElectionGroup (engine, DSN, connection) into asyncpg connections.

Any SQLAlchemy engine for PostgreSQL will do, sync or async, on asyncpg, psycopg 3 or
psycopg2: the election always runs on asyncpg connections of its own. An asyncpg engine
makes them through its own connect path; for the other drivers the arguments the engine
would connect with (its URL, ``connect_args`` and ``do_connect`` listeners) are read and
given to asyncpg instead (:class:`_ForeignEngineConnector`).

Connections made here carry an ``application_name`` so that an election's sessions can be
told apart in ``pg_stat_activity``: the one the user configured (in the DSN's query, the
engine's ``connect_args``/URL, or ``$PGAPPNAME``), else :data:`APPLICATION_NAME`. A
borrowed asyncpg connection is left as it is. Which host a connection goes to, and how
long each may take, is :mod:`.hosts`'s business.

(Longer than most modules: each kind of target, engine driver and connect argument has
its own small translation, and they read best side by side.)
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import asyncpg
from asyncpg.connect_utils import SessionAttribute

from .._threads import in_thread
from ..errors import ConfigurationError, ConnectionLimitError
from .hosts import (
    DEFAULT_TARGET,
    Address,
    Budgets,
    HostOrder,
    addresses,
    env_addresses,
    parse_hostspec,
    split_dsn,
    target_of,
)

Connect = Callable[[], Awaitable["asyncpg.Connection[Any]"]]

#: How long connecting to one host may take unless the settings say otherwise (see
#: ``Settings.connect_timeout``).
DEFAULT_HOST_TIMEOUT = 1.0

_ASYNC_HINT = (
    "use a SQLAlchemy engine for PostgreSQL (create_engine or create_async_engine on "
    "postgresql+asyncpg, +psycopg or +psycopg2), a postgresql:// DSN string, or an asyncpg "
    "connection"
)
#: The SQLAlchemy PostgreSQL drivers whose connect arguments are libpq's (see
#: :func:`libpq_to_dsn`).
_LIBPQ_DRIVERS = ("psycopg", "psycopg_async", "psycopg2", "psycopg2cffi")
#: DSN schemes taken as they are (a SQLAlchemy URL's driver says nothing to asyncpg).
_DSN_DRIVERS = ("", "asyncpg", "psycopg", "psycopg_async", "psycopg2")


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
    engine: Any,
    *,
    application_name: str = APPLICATION_NAME,
    host_timeout: float = DEFAULT_HOST_TIMEOUT,
    lone_host_timeout: float | None = None,
) -> tuple[Connect | None, asyncpg.Connection[Any] | None]:
    """Return (connect, borrowed): a factory of dedicated connections, or a borrowed one.

    Dedicated connections get ``application_name`` when neither the DSN or engine nor
    ``$PGAPPNAME`` sets one. They go to the hosts of the DSN or engine one at a time, each
    within ``host_timeout`` seconds (``lone_host_timeout``, if given, when there is only
    one host: nothing else to try), skipping a host that is not what
    ``target_session_attrs`` asks for (default ``read-write``): see :mod:`.hosts`. A
    connection being opened is given up at once if its caller is cancelled.
    """
    budgets = Budgets(host_timeout, lone_host_timeout)
    if isinstance(engine, asyncpg.Connection):
        return None, engine
    if isinstance(engine, str):
        return _DsnConnector(engine, application_name, HostOrder(budgets, DEFAULT_TARGET)), None
    try:
        from sqlalchemy.engine import Engine
        from sqlalchemy.ext.asyncio import AsyncEngine
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        raise ConfigurationError(f"cannot use {type(engine).__name__}: {_ASYNC_HINT}") from None
    if isinstance(engine, Engine | AsyncEngine):
        dialect = engine.dialect
        if dialect.name == "postgresql" and dialect.driver == "asyncpg":
            if isinstance(engine, AsyncEngine):
                return _EngineConnector(engine, application_name, budgets), None
        elif dialect.name != "postgresql" or dialect.driver not in _LIBPQ_DRIVERS:
            kind = "an AsyncEngine" if isinstance(engine, AsyncEngine) else "an Engine"
            raise ConfigurationError(
                f"ElectionGroup needs PostgreSQL through asyncpg, psycopg or psycopg2, got "
                f"{kind} for {engine.url.drivername!r}; {_ASYNC_HINT}"
            )
        return _ForeignEngineConnector(engine, application_name, budgets), None
    raise ConfigurationError(f"ElectionGroup cannot use a {type(engine).__name__}; {_ASYNC_HINT}")


def connect_bound(connect: Connect | None) -> float:
    """The longest one call of ``connect`` takes by its own per-host bounds (0 if it does
    not say)."""
    return float(getattr(connect, "bound", 0.0))


def one_host(connect: Connect | None) -> bool:
    """Whether every call of ``connect`` goes to the one host it can (then connections
    may be opened side by side; otherwise the first finds the host that answers)."""
    return int(getattr(connect, "hosts", 2)) == 1


#: asyncpg's statement cache keeps a prepared statement for a while from when it was
#: prepared (five minutes by default), used or not; after that the next call prepares it
#: again, a round trip more and a plan made anew. The election's connections prepare a
#: few dozen statements, some used only when a leader fails (warmed once, then idle for
#: as long as the leader lives): they keep them for good (the cache stays bounded by its
#: size). Not for a borrowed connection, nor one made by an engine's own ``creator``.
_STATEMENT_LIFETIME = 0  # seconds; 0: for as long as the connection lives


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


class _DsnConnector:
    """Dedicated connections from a DSN, one host at a time (see :mod:`.hosts`)."""

    def __init__(
        self,
        dsn: str,
        application_name: str,
        order: HostOrder,
        *,
        ssl: Any = None,
    ) -> None:
        #: asyncpg's own ``ssl`` argument (an ``SSLContext`` or a mode) when the engine
        #: gave one; None: the DSN's ``sslmode`` decides, as asyncpg's default.
        self._ssl = ssl
        scheme, sep, _ = dsn.partition("://")
        if not sep:
            raise ConfigurationError(f"not a DSN: {dsn!r}; expected postgresql://user@host/db")
        base, _, driver = scheme.partition("+")
        if base not in ("postgresql", "postgres") or driver not in _DSN_DRIVERS:
            raise ConfigurationError(
                f"ElectionGroup needs a PostgreSQL DSN for asyncpg, got scheme {scheme!r}; "
                f"{_ASYNC_HINT}"
            )
        split = split_dsn(dsn)
        self._rest = split.rest
        self._hosts = split.hosts
        #: How many hosts a call may try (1: connections may be opened side by side).
        self.hosts = max(1, len(self._hosts))
        order.target = target_of(split.target)  # the DSN's own, read when it is
        self._order = order
        self._settings = (
            None
            if "application_name" in split.query
            else {"application_name": _default_name(application_name)}
        )
        #: The longest one call takes: every host tried, each within its budget.
        self.bound = order.bound(self.hosts)

    async def _attempt(self, address: Address | None, budget: float) -> asyncpg.Connection[Any]:
        return await asyncpg.connect(
            self._rest,
            host=None if address is None else address.host,
            port=None if address is None else address.port,
            server_settings=self._settings,
            timeout=budget,
            target_session_attrs=SessionAttribute(self._order.target),
            ssl=self._ssl,
            max_cached_statement_lifetime=_STATEMENT_LIFETIME,
        )

    async def __call__(self) -> asyncpg.Connection[Any]:
        try:
            return await self._order.connect(self._hosts, self._attempt)
        except Exception as exc:
            _raise_if_full(exc)
            raise


#: The election connection an :class:`_EngineConnector` is opening in this task, if any
#: (read by its ``do_connect`` listener, which SQLAlchemy runs in the same context).
_OPENING: contextvars.ContextVar[_EngineAttempt | None] = contextvars.ContextVar(
    "notifelect_opening", default=None
)


class _EngineAttempt:
    """One election connection being opened through an engine's own connect path."""

    def __init__(self, order: HostOrder) -> None:
        self.order = order
        self.made: asyncpg.Connection[Any] | None = None

    def take_over(self, cparams: dict[str, Any]) -> None:
        """Make the engine's connect call go through :meth:`each_host` (from its
        ``do_connect`` event: ``cparams`` are the arguments it is about to use)."""
        original = cparams.get("async_creator_fn", asyncpg.connect)

        async def each_host(*args: Any, **kwargs: Any) -> asyncpg.Connection[Any]:
            return await self.each_host(original, args, kwargs)

        cparams["async_creator_fn"] = each_host

    async def each_host(
        self, original: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> asyncpg.Connection[Any]:
        order = self.order
        target = target_of(kwargs.get("target_session_attrs"))
        where = "the engine's URL or connect_args"
        hosts = addresses(
            [h for spec in _listed(kwargs.get("host")) for h in parse_hostspec(spec, where)],
            [int(p) for spec in _listed(kwargs.get("port")) for p in spec.split(",") if p],
            where,
        )
        if not kwargs.get("host"):
            # asyncpg would read $PGHOST itself, trying every host it lists within one
            # timeout: a silent first host would use all of it.
            hosts = env_addresses()
        timeout = kwargs.get("timeout")

        async def attempt(address: Address | None, budget: float) -> asyncpg.Connection[Any]:
            if timeout is not None:
                budget = min(float(timeout), budget)
            chosen = dict(kwargs, timeout=budget, target_session_attrs=target)
            if original is asyncpg.connect:  # (the engine's own setting, if any, stands)
                chosen.setdefault("max_cached_statement_lifetime", _STATEMENT_LIFETIME)
            if address is not None:
                chosen.update(host=address.host, port=address.port)
            conn: asyncpg.Connection[Any] = await original(*args, **chosen)
            return conn

        order.target = target
        self.made = await order.connect(hosts, attempt)
        return self.made

    def discard(self) -> None:
        """Drop the connection made, if the engine did not hand it over."""
        if self.made is not None and not self.made.is_closed():
            self.made.terminate()


def _listed(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def _on_do_connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
    attempt = _OPENING.get()
    if attempt is not None:
        attempt.take_over(cparams)


class _EngineConnector:
    """Dedicated connections through an AsyncEngine's own connect path, one host at a time.

    Why this way: the connection must be what the engine would make (its URL, its
    ``connect_args``, its ``do_connect`` listeners that supply a password or a token, its
    ``connect`` listeners), yet go to one host at a time within a budget of its own, and
    never come from or go back to the engine's pool. So a fresh copy of the pool
    (``Pool.recreate()``: the same connect function and events, nothing pooled) makes each
    connection, and a ``do_connect`` listener on the engine, active only while this
    connector opens one, routes the engine's final arguments through :mod:`.hosts`. An
    engine made with ``creator``/``async_creator`` connects as its creator says (whose
    hosts the election cannot see), bounded only by the session's own open timeout.
    """

    def __init__(self, engine: Any, application_name: str, budgets: Budgets) -> None:
        from sqlalchemy import event

        self._engine = engine
        self._name = application_name
        sync = engine.sync_engine
        if not event.contains(sync, "do_connect", _on_do_connect):
            event.listen(sync, "do_connect", _on_do_connect)
        _, cparams = engine.dialect.create_connect_args(engine.url)
        #: How many hosts a call tries, as far as the URL (else $PGHOST) shows them.
        self.hosts = max(1, len(_listed(cparams.get("host"))) or len(env_addresses()))
        target = target_of(engine.url.query.get("target_session_attrs"))
        self._order = HostOrder(budgets, target)
        self.bound = self._order.bound(self.hosts)

    async def __call__(self) -> asyncpg.Connection[Any]:
        from sqlalchemy.util import greenlet_spawn

        attempt = _EngineAttempt(self._order)
        opening = _OPENING.set(attempt)
        try:
            pool = self._engine.sync_engine.pool.recreate()
            fairy = await greenlet_spawn(pool.connect)
        except BaseException as exc:
            attempt.discard()
            if isinstance(exc, Exception):
                _raise_if_full(exc)
            raise
        finally:
            _OPENING.reset(opening)
        conn: asyncpg.Connection[Any] = fairy.driver_connection
        fairy.detach()  # ours to close; never returned to a pool
        try:
            if not conn.get_settings().application_name:
                # The engine's URL and connect_args named none: a plain SET (no prepared
                # statement), once per dedicated connection.
                name = _default_name(self._name).replace("'", "''")
                async with asyncio.timeout(self._order.budgets.per_host(1)):
                    await conn.execute(f"SET application_name = '{name}'")
        except BaseException:
            conn.terminate()
            raise
        return conn


class _Arguments(Exception):
    """What an engine's connect path was about to connect with (raised to stop it)."""

    def __init__(self, cparams: dict[str, Any]) -> None:
        super().__init__("connect arguments read")
        self.cparams = dict(cparams)


async def _blocking(connect: Callable[[], Any], name: str) -> Any:
    """``connect()`` on a thread of its own; a connection it makes after the caller gave
    up waiting is dropped."""
    future = in_thread(connect, name=name)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_drop_made)
        raise


def _drop_made(future: asyncio.Future[Any]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    future.result().invalidate()


#: True while a :class:`_ForeignEngineConnector` reads an engine's connect arguments in
#: this context (the thread that reads it and ``greenlet_spawn`` carry it along).
_READING: contextvars.ContextVar[bool] = contextvars.ContextVar("notifelect_reading", default=False)


def _on_read_arguments(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
    if _READING.get():
        raise _Arguments(cparams)


#: libpq keywords asyncpg reads from a DSN itself (``options`` and ``application_name``
#: go to the server at start-up, which is what libpq does with them too).
_ASYNCPG_KEYWORDS = frozenset(
    {
        "host",
        "port",
        "user",
        "password",
        "passfile",
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
        "application_name",
        "options",
    }
)


def libpq_to_dsn(cparams: dict[str, Any]) -> str:
    """The ``postgresql://`` DSN asyncpg reads for libpq-style connect arguments (those
    psycopg and psycopg2 connect with): hosts and ports (several: ``host=a,b``), database,
    user, password, the SSL settings (``sslmode``, ``sslrootcert``, ``sslcert``,
    ``sslkey``, ...), ``target_session_attrs``, ``application_name`` and ``options``.

    Left out: the drivers' own Python options (``context``, ``cursor_factory``,
    ``autocommit``, ...), which mean nothing to asyncpg, and libpq's client-side knobs
    asyncpg has no equivalent for (``keepalives*``, ``gssencmode``, ``channel_binding``);
    ``connect_timeout`` gives way to the election's own per-host budget
    (``Settings.connect_timeout``).
    """
    # What the engine's driver (libpq) would read and asyncpg would not: the election
    # would connect elsewhere than the engine (another database, another search_path)
    # without a word. Refused, with how to say the same thing in the URL.
    unread = [k for k in ("service", "servicefile", "dsn") if cparams.get(k)]
    if cparams.get("hostaddr") and cparams.get("host"):
        unread.append("hostaddr (beside host)")
    unread += [
        f"${var}"
        for var in ("PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGHOSTADDR")
        if os.environ.get(var)
    ]
    if unread:
        raise ConfigurationError(
            f"the engine's connection settings use {', '.join(unread)}, which the election's "
            "own connections (asyncpg) cannot read, so they would reach another server, "
            "database or search_path than the engine: give the host, port, dbname, user and "
            "options in the engine's URL or connect_args instead"
        )
    pairs: list[tuple[str, str]] = []
    for key, value in cparams.items():
        if key == "database":
            key = "dbname"
        if isinstance(value, list | tuple):  # several hosts or ports, as some dialects give them
            value = ",".join(str(v) for v in value if v is not None)
        if value is None or not isinstance(value, str | int):
            continue
        if key == "dbname" or key in _ASYNCPG_KEYWORDS:
            pairs.append((key, str(value)))
    if "host" not in cparams and isinstance(cparams.get("hostaddr"), str):
        pairs.append(("host", cparams["hostaddr"]))
    return "postgresql://?" + urlencode(pairs) if pairs else "postgresql://"


class _ForeignEngineConnector:
    """Dedicated asyncpg connections for an engine on another driver (psycopg 3, sync or
    async, or psycopg2), or a sync engine on asyncpg.

    Why asyncpg underneath rather than the engine's own driver: the election session is a
    long-lived, mostly idle connection that must hear NOTIFY the moment it arrives, be
    dropped without a round trip when its lease is in doubt, and keep one code path (one
    set of failure tests) for every user; asyncpg does all three on the event loop the
    election already runs. psycopg's async connection could carry it too, but psycopg2 and
    sync psycopg could not, and two session implementations would double what has to be
    proved safe. So the engine is asked only *where* and *as whom* to connect: its pool's
    connect path runs (a fresh copy of the pool, nothing pooled, so the user's pool stays
    untouched) with its URL, ``connect_args`` and ``do_connect`` listeners (which may
    supply a password or a token), and a last ``do_connect`` listener, active only while
    this connector reads, takes the final arguments and stops before any connection is
    made. They are mapped to asyncpg's (:func:`libpq_to_dsn`) and the hosts tried one at a
    time (:mod:`.hosts`). An engine made with ``creator=`` hides where it connects: it is
    refused on the first connect, with the fix.
    """

    def __init__(self, engine: Any, application_name: str, budgets: Budgets) -> None:
        from sqlalchemy import event
        from sqlalchemy.ext.asyncio import AsyncEngine

        self._is_async = isinstance(engine, AsyncEngine)
        self._sync = engine.sync_engine if self._is_async else engine
        self._url = engine.url
        self._name = application_name
        if not event.contains(self._sync, "do_connect", _on_read_arguments):
            event.listen(self._sync, "do_connect", _on_read_arguments)
        _, cparams = engine.dialect.create_connect_args(engine.url)
        hosts = str(cparams.get("host") or "").split(",")
        #: How many hosts a call tries, as far as the URL (else $PGHOST) shows them.
        self.hosts = max(1, len([h for h in hosts if h]) or len(env_addresses()))
        self._order = HostOrder(budgets, target_of(engine.url.query.get("target_session_attrs")))
        self.bound = self._order.bound(self.hosts)

    async def arguments(self) -> dict[str, Any]:
        """The arguments the engine would connect with now (its listeners run: a token
        may change from one connection to the next)."""
        from sqlalchemy.util import greenlet_spawn

        pool = self._sync.pool.recreate()
        reading = _READING.set(True)
        try:
            if self._is_async:
                made = await greenlet_spawn(pool.connect)
            else:
                # Listeners of a sync engine may block (fetching a token): not on the loop,
                # and not in an executor either (see notifelect._threads: executors are shut
                # down once the main thread returns, and a reconnect must still work then).
                made = await _blocking(pool.connect, f"notifelect-connect-{self._name}")
        except _Arguments as read:
            return read.cparams
        finally:
            _READING.reset(reading)
        made.invalidate()
        raise ConfigurationError(
            f"the engine for {self._url.render_as_string()!r} connects through creator= or a "
            "do_connect listener that makes the connection itself, so the election cannot "
            "see where it connects; give ElectionGroup a DSN (or an engine without a creator) "
            "for the same database"
        )

    async def __call__(self) -> asyncpg.Connection[Any]:
        cparams = await self.arguments()
        dsn = libpq_to_dsn(cparams)
        # An engine on asyncpg (a sync Engine) may give asyncpg's own ``ssl`` argument in
        # connect_args: an SSLContext, a mode or a bool, which no DSN can carry.
        chosen = cparams.get("ssl")
        connect = _DsnConnector(dsn, self._name, self._order, ssl=chosen)
        try:
            return await connect()
        except Exception as exc:
            _raise_if_unverified(exc, cparams)
            raise


def _raise_if_unverified(exc: BaseException, cparams: dict[str, Any]) -> None:
    """Re-raise a refused server certificate saying which of the engine's settings refused
    it (the same exception class: what handles it stays the same)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            given = ", ".join(
                f"{key}={cparams[key]!r}"
                for key in ("sslmode", "sslrootcert", "ssl")
                if cparams.get(key) is not None
            )
            raise ssl.SSLCertVerificationError(
                f"the election's connection refused the server's certificate: "
                f"{cause.verify_message or cause} (the engine's SSL settings: "
                f"{given or 'none'}): the CA given there (sslrootcert, or the ssl context's "
                "CA file; libpq's default is ~/.postgresql/root.crt) must be the one that "
                "signed the server's certificate, and with verify-full the certificate must "
                "name the host connected to"
            ) from exc
        cause = cause.__cause__ or cause.__context__


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
