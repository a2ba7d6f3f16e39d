"""What the election connects with for an engine on psycopg 3 or psycopg2: the engine's
URL and connect_args, mapped to asyncpg's, read without touching the engine's pool."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from notifelect.errors import ConfigurationError
from notifelect.transport.connect import _ForeignEngineConnector, connector_for, libpq_to_dsn
from notifelect.transport.hosts import split_dsn


def test_libpq_arguments_map_to_an_asyncpg_dsn() -> None:
    dsn = libpq_to_dsn(
        {
            "host": "a,b",
            "port": "5433,5434",
            "dbname": "app",
            "user": "svc",
            "password": "p@ss&word",
            "sslmode": "verify-full",
            "sslrootcert": "/etc/ca.pem",
            "sslcert": "/etc/c.pem",
            "sslkey": "/etc/k.pem",
            "target_session_attrs": "primary",
            "options": "-c search_path=app",
            "application_name": "web",
            "connect_timeout": "10",
            "keepalives": "1",
            "context": object(),  # psycopg's own Python option
        }
    )
    query = dict(parse_qsl(urlsplit(dsn).query))
    assert query == {
        "host": "a,b",
        "port": "5433,5434",
        "dbname": "app",
        "user": "svc",
        "password": "p@ss&word",
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ca.pem",
        "sslcert": "/etc/c.pem",
        "sslkey": "/etc/k.pem",
        "target_session_attrs": "primary",
        "options": "-c search_path=app",
        "application_name": "web",
    }
    split = split_dsn(dsn)
    assert [str(a) for a in split.hosts] == ["a:5433", "b:5434"]
    assert split.target == "primary"


@pytest.mark.parametrize(
    ("make", "url"),
    [
        (sa.create_engine, "postgresql+psycopg://u:pw@h1:5433/db?sslmode=require"),
        (sa.create_engine, "postgresql+psycopg2://u:pw@h1:5433/db?sslmode=require"),
        (create_async_engine, "postgresql+psycopg://u:pw@h1:5433/db?sslmode=require"),
    ],
)
def test_the_engines_arguments_and_listeners_are_read_without_connecting(
    make: Any, url: str
) -> None:
    engine = make(url, connect_args={"application_name": "web"})
    sync = getattr(engine, "sync_engine", engine)

    @event.listens_for(sync, "do_connect")
    def token(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["password"] = "fresh-token"

    connect, borrowed = connector_for(engine)
    assert borrowed is None
    assert isinstance(connect, _ForeignEngineConnector)
    cparams = asyncio.run(connect.arguments())
    assert cparams["password"] == "fresh-token"
    assert cparams["host"] == "h1"
    assert str(cparams["port"]) == "5433"
    assert cparams["sslmode"] == "require"
    assert cparams["application_name"] == "web"
    assert sync.pool.checkedout() == 0


def test_a_read_only_target_is_refused_at_construction() -> None:
    engine = sa.create_engine("postgresql+psycopg://u@h/db?target_session_attrs=standby")
    with pytest.raises(ConfigurationError, match="target_session_attrs=standby"):
        connector_for(engine)


def test_hosts_and_ports_given_as_lists_are_kept() -> None:
    dsn = libpq_to_dsn({"host": ["a", "b"], "port": [5433, 5434], "database": "app"})
    split = split_dsn(dsn)
    assert [str(a) for a in split.hosts] == ["a:5433", "b:5434"]
    assert "dbname=app" in dsn
