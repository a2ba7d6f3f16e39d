"""The hosts an election connection may go to, and trying them one at a time.

A multi-host URL (``postgresql://u@a:5432,b:5432/db``, ``?host=a:5432&host=b:5432``,
``?host=a,b&port=5432,5433``) names the servers of one database, of which one is the
primary at any time. Each host is tried in turn within a time budget of its own, so that
a host that does not answer at all (a failed machine whose packets are dropped) costs at
most that budget before the next one is tried; a host that is not what
``target_session_attrs`` asks for (a standby, an old primary that came back read-only) is
skipped as soon as it says so. The host that last accepted goes first next time.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode

import asyncpg

from ..errors import ConfigurationError
from .base import TransportError

#: What the election asks of a server when the URL does not say: it writes (its sequence,
#: its session and leader rows), so a standby or a read-only server cannot serve it, and
#: skipping one at connect time costs nothing (PostgreSQL 14 and later report both states
#: at start-up; older servers are asked with one query).
DEFAULT_TARGET = "read-write"
#: ``target_session_attrs`` values under which the election can work (it writes).
WRITABLE_TARGETS = ("read-write", "primary", "any")
_READ_ONLY_TARGETS = ("read-only", "standby", "prefer-standby")


@dataclass(frozen=True)
class Address:
    """One host of a URL: a name, an IP address or a Unix socket directory, and a port
    (None: ``$PGPORT``, else 5432)."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def _port(text: str, where: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigurationError(f"port {text!r} in {where} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigurationError(f"port {port} in {where} is out of range (1-65535)")
    return port


def parse_hostspec(spec: str, where: str) -> list[tuple[str, int | None]]:
    """``a:1,[::1]:2,/tmp,b`` -> ``[("a", 1), ("::1", 2), ("/tmp", None), ("b", None)]``."""
    found: list[tuple[str, int | None]] = []
    for item in spec.split(","):
        item = unquote(item.strip())
        if not item:
            continue
        if item.startswith("/"):  # a Unix socket directory
            found.append((item, None))
        elif item.startswith("["):
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ConfigurationError(f"invalid IPv6 address {item!r} in {where}")
            found.append((host, _port(rest[1:], where) if rest else None))
        else:
            host, colon, port = item.partition(":")
            found.append((host, _port(port, where) if colon and port else None))
    return found


def addresses(
    hosts: Sequence[tuple[str, int | None]], ports: Sequence[int | None], where: str
) -> list[Address]:
    """Pair hosts with a list of ports (libpq's ``port=p1,p2``): one port applies to
    every host without a port of its own; otherwise there must be one port per host."""
    if len(ports) > 1 and len(ports) != len(hosts):
        raise ConfigurationError(
            f"{len(hosts)} host(s) but {len(ports)} ports in {where}: give one port for "
            "all hosts or one per host (host=a,b&port=5432,5433), or write each host as "
            "host:port"
        )
    found = []
    for i, (host, port) in enumerate(hosts):
        default = ports[0] if len(ports) == 1 else ports[i] if ports else None
        found.append(Address(host, port if port is not None else default))
    return found


def env_addresses() -> list[Address]:
    """The hosts of ``$PGHOST`` and ``$PGPORT``, as libpq reads them (none if unset)."""
    spec = os.environ.get("PGHOST", "")
    ports = [_port(p, "$PGPORT") for p in os.environ.get("PGPORT", "").split(",") if p]
    return addresses(parse_hostspec(spec, "$PGHOST"), ports, "$PGHOST/$PGPORT") if spec else []


def target_of(value: object) -> str:
    """The ``target_session_attrs`` in force: ``value``, else ``$PGTARGETSESSIONATTRS``,
    else :data:`DEFAULT_TARGET`. One the election cannot work under is refused."""
    if value is None:
        value = os.environ.get("PGTARGETSESSIONATTRS") or DEFAULT_TARGET
    text = str(getattr(value, "value", value))
    if text == "any":
        # The election writes (its sequence, its rows, LISTEN): only a server that takes
        # writes can serve it, so "any" host means any read-write one.
        return DEFAULT_TARGET
    if text in _READ_ONLY_TARGETS:
        raise ConfigurationError(
            f"target_session_attrs={text} sends the election to a standby, where it cannot "
            f"write; use one of {', '.join(WRITABLE_TARGETS)} (default {DEFAULT_TARGET}), "
            "or give ElectionGroup an engine or DSN of its own that reaches the primary"
        )
    if text not in WRITABLE_TARGETS:
        raise ConfigurationError(
            f"unknown target_session_attrs {text!r}; use one of {', '.join(WRITABLE_TARGETS)}"
        )
    return text


@dataclass(frozen=True)
class SplitDsn:
    """A DSN taken apart: the rest of it (no host, port or ``target_session_attrs``), its
    hosts and the ``target_session_attrs`` it asks for (None: not given)."""

    rest: str
    hosts: list[Address]
    target: str | None
    query: dict[str, str]


#: libpq's client-side connection knobs, which a DSN written for psycopg may carry and
#: asyncpg does not read: it would send them to the server as settings, which refuses
#: them ("unrecognized configuration parameter"). Dropped, as for an engine on psycopg
#: (``connect_timeout`` gives way to ``Settings.connect_timeout``).
LIBPQ_CLIENT_ONLY = frozenset(
    {
        "connect_timeout",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "gssencmode",
        "channel_binding",
        "sslcompression",
        "sslsni",
        "requiressl",
    }
)


def split_dsn(dsn: str) -> SplitDsn:
    """Take the hosts out of a ``postgresql://`` DSN (scheme already checked).

    Hosts may be listed in the address part (``u@a:1,b:2/db``), as repeated ``host``
    parameters (``?host=a:1&host=b:2``, as SQLAlchemy writes them) or as comma-separated
    ``host`` and ``port`` parameters (``?host=a,b&port=1,2``), but not in both the
    address part and the parameters. libpq's client-side knobs asyncpg does not read
    (:data:`LIBPQ_CLIENT_ONLY`) are dropped.
    """
    where = "the DSN"
    _, _, rest = dsn.partition("://")
    rest, _, _fragment = rest.partition("#")
    base, _, raw_query = rest.partition("?")
    netloc, slash, path = base.partition("/")
    userinfo, at, hostspec = netloc.rpartition("@")
    params = parse_qsl(raw_query, keep_blank_values=True)
    query_hosts = [v for k, v in params if k == "host"]
    query_ports = [v for k, v in params if k == "port"]
    targets = [v for k, v in params if k == "target_session_attrs"]
    others = [
        (k, v)
        for k, v in params
        if k not in ("host", "port", "target_session_attrs") and k not in LIBPQ_CLIENT_ONLY
    ]
    hosts = parse_hostspec(hostspec, where)
    if hosts and any(h for h in query_hosts):
        raise ConfigurationError(
            f"the DSN names hosts both before the path ({hostspec!r}) and in its host "
            f"parameter ({', '.join(query_hosts)}): list them in one place"
        )
    for spec in query_hosts:
        hosts.extend(parse_hostspec(spec, where))
    ports = [_port(p, where) for spec in query_ports for p in spec.split(",") if p.strip()]
    found = addresses(hosts, ports, where)
    if not found and not any(k == "service" for k, _ in others):
        found = env_addresses()
    plain = f"postgresql://{userinfo}{at}{slash}{path}"
    if others:
        plain += "?" + urlencode(others)
    return SplitDsn(plain, found, targets[-1] if targets else None, dict(others))


#: Connecting to one host (None: the driver's own defaults) within a budget (seconds).
Attempt = Callable[[Address | None, float], Awaitable["asyncpg.Connection[Any]"]]


def _why(exc: BaseException, budget: float, target: str) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {budget:g}s"
    if isinstance(exc, asyncpg.exceptions.TargetServerAttributeNotMatched):
        return f"not {target} (a standby, or read-only)"
    return repr(exc)


class Budgets(NamedTuple):
    """How long connecting to one host may take: ``several`` seconds per host when the
    target lists several (a silent one must leave time for the next), ``alone`` (if set)
    when it lists one, which has nothing after it to leave time for."""

    several: float
    alone: float | None = None

    def per_host(self, hosts: int) -> float:
        """The budget of each host of a target listing ``hosts`` hosts."""
        return self.alone if hosts <= 1 and self.alone is not None else self.several


class HostOrder:
    """Tries the hosts of one connection target in turn, each within its budget (of
    ``budgets``, by how many hosts the call has); the host that last accepted a
    connection goes first."""

    def __init__(self, budgets: Budgets, target: str) -> None:
        self.budgets = budgets
        self.target = target
        self._good: Address | None = None

    def order(self, hosts: Sequence[Address]) -> list[Address]:
        good = self._good
        if good is None or good not in hosts:
            return list(hosts)
        return [good, *(h for h in hosts if h != good)]

    def bound(self, hosts: int) -> float:
        """The longest a call with ``hosts`` hosts takes: each tried within its budget."""
        return max(1, hosts) * self.budgets.per_host(hosts)

    async def connect(self, hosts: Sequence[Address], attempt: Attempt) -> asyncpg.Connection[Any]:
        """The first connection one of ``hosts`` accepts (``attempt(None, budget)`` once if
        there are none: the driver's own defaults). Raises the error of a single host, or a
        :class:`TransportError` naming what each host said; a cancellation at once."""
        budget = self.budgets.per_host(len(hosts))
        if not hosts:
            return await attempt(None, budget)
        failures: list[tuple[Address, Exception]] = []
        for address in self.order(hosts):
            try:
                conn = await attempt(address, budget)
            except asyncpg.exceptions.ClientConfigurationError:
                raise  # the same for every host
            except Exception as exc:
                failures.append((address, exc))
                continue
            self._good = address
            return conn
        if len(failures) == 1:
            address, error = failures[0]
            if isinstance(error, TimeoutError):
                why = _why(error, budget, self.target)
                raise TimeoutError(f"{address}: {why}") from error
            if isinstance(error, asyncpg.exceptions.TargetServerAttributeNotMatched):
                why = _why(error, budget, self.target)
                raise TransportError(
                    f"{address}: {why}; target_session_attrs={self.target}"
                ) from error
            raise error
        said = "; ".join(f"{a}: {_why(e, budget, self.target)}" for a, e in failures)
        raise TransportError(
            f"no host accepted the election connection ({budget:g}s each, "
            f"target_session_attrs={self.target}): {said}"
        ) from failures[-1][1]
