"""The election's own connections keep the SSL settings of the engine they come from.

A throwaway PostgreSQL that accepts SSL connections only (``hostssl`` in pg_hba.conf, a
server certificate signed by a throwaway CA): a sync psycopg 3 engine with
``sslmode=verify-full`` or ``require`` (in the URL or in ``connect_args``) and a sync
engine on asyncpg with an ``ssl`` context in ``connect_args`` elect over SSL, as
``pg_stat_ssl`` shows for the election's backends; a CA that did not sign the server's
certificate is refused, with an error that says so.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from notifelect import Settings
from notifelect.sync import SyncElectionGroup
from tests.conftest import install
from tests.support.servers import ThrowawayPostgres, _bin_dir

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command is needed to make certificates"
)


def ssl_binaries() -> Path | None:
    """A directory of PostgreSQL binaries built with SSL: the test servers' own if they
    are, else an installed PostgreSQL's (the embedded build has no SSL)."""
    candidates = [_bin_dir()]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for bin_dir in candidates:
        pg_config = bin_dir / "pg_config"
        if not (bin_dir / "postgres").exists() or not pg_config.exists():
            continue
        configure = subprocess.run(
            [str(pg_config), "--configure"], capture_output=True, text=True, check=False
        ).stdout
        if "--with-openssl" in configure or "--with-ssl=openssl" in configure:
            return bin_dir
    return None


FAST = Settings(election_interval=0.2, lease=2.0, leader_timeout=1.0, connect_timeout=5.0)


@dataclass
class SslServer:
    server: ThrowawayPostgres
    ca: Path  # the CA that signed the server's certificate
    other_ca: Path  # a CA that did not

    def url(self, driver: str, **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.server.port}/postgres?{params}"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(where: Path) -> None:
    """ca.crt, other-ca.crt, and server.crt/server.key for 127.0.0.1 signed by ca.crt."""
    for ca in ("ca", "other-ca"):
        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-subj", f"/CN=notifelect {ca}",
            cwd=where,
        )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1", cwd=where,
    )  # fmt: skip
    (where / "san.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "server.crt", "-extfile", "san.ext",
        cwd=where,
    )  # fmt: skip


@pytest.fixture(scope="module")
def ssl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SslServer]:
    binaries = ssl_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL built with SSL on this machine")
    certs = tmp_path_factory.mktemp("certs")
    make_certificates(certs)
    server = ThrowawayPostgres()
    server._bin = binaries
    server.start()
    try:
        server.stop()
        data = server.data
        owner = data.stat()
        for name in ("server.crt", "server.key"):
            shutil.copy(certs / name, data / name)
            os.chown(data / name, owner.st_uid, owner.st_gid)
            (data / name).chmod(0o600)
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 trust\n"
            "hostnossl all all 127.0.0.1/32 reject\n"
        )
        server.restart()
        asyncio.run(install(server.dsn + "?sslmode=require"))
        yield SslServer(server, certs / "ca.crt", certs / "other-ca.crt")
    finally:
        server.destroy()


def election_backends(server: SslServer) -> list[tuple[str, bool]]:
    """(application_name, ssl) of the server's election backends."""
    with psycopg.connect(
        f"host=127.0.0.1 port={server.server.port} user=postgres dbname=postgres "
        f"sslmode=verify-full sslrootcert={server.ca}",
        autocommit=True,
    ) as conn:
        rows = conn.execute(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a "
            "JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'notifelect%'"
        ).fetchall()
    return [(str(name), bool(on)) for name, on in rows]


def elects_over_ssl(engine: sa.Engine, namespace: str, server: SslServer) -> None:
    with SyncElectionGroup(engine, namespace, FAST) as group:
        group.wait_for_leadership(20)
        backends = election_backends(server)
    assert backends, "no election backend found"
    assert all(on for _, on in backends), backends


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["url", "connect_args"])
def test_psycopg_verify_full_elects_over_ssl(
    ssl_server: SslServer, namespace: str, where: str
) -> None:
    settings = {"sslmode": "verify-full", "sslrootcert": str(ssl_server.ca)}
    if where == "url":
        engine = sa.create_engine(ssl_server.url("psycopg", **settings))
    else:
        engine = sa.create_engine(ssl_server.url("psycopg"), connect_args=settings)
    try:
        elects_over_ssl(engine, namespace, ssl_server)
    finally:
        engine.dispose()


@pytest.mark.timeout(60)
def test_psycopg_require_elects_over_ssl(ssl_server: SslServer, namespace: str) -> None:
    engine = sa.create_engine(ssl_server.url("psycopg", sslmode="require"))
    try:
        elects_over_ssl(engine, namespace, ssl_server)
    finally:
        engine.dispose()


@pytest.mark.timeout(60)
def test_an_asyncpg_engine_ssl_context_in_connect_args_is_used(
    ssl_server: SslServer, namespace: str
) -> None:
    context = ssl.create_default_context(cafile=str(ssl_server.ca))
    engine = sa.create_engine(ssl_server.url("asyncpg"), connect_args={"ssl": context})
    try:
        elects_over_ssl(engine, namespace, ssl_server)
    finally:
        engine.dispose()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_a_wrong_ca_is_refused_with_a_clear_error(
    ssl_server: SslServer, namespace: str, driver: str
) -> None:
    engine: sa.Engine
    connect_args: dict[str, Any] = {}
    if driver == "psycopg":
        engine = sa.create_engine(
            ssl_server.url("psycopg", sslmode="verify-full", sslrootcert=str(ssl_server.other_ca))
        )
    else:
        connect_args["ssl"] = ssl.create_default_context(cafile=str(ssl_server.other_ca))
        engine = sa.create_engine(ssl_server.url("asyncpg"), connect_args=connect_args)
    try:
        group = SyncElectionGroup(engine, namespace, FAST)
        with pytest.raises(ssl.SSLCertVerificationError) as refused:
            group.start()
        group.close()
    finally:
        engine.dispose()
    assert isinstance(refused.value, ssl.SSLCertVerificationError)
    message = str(refused.value)
    assert "refused the server's certificate" in message
    assert "must be the one that signed the server's certificate" in message
    if driver == "psycopg":
        assert str(ssl_server.other_ca) in message  # the sslrootcert that was given
    assert election_backends(ssl_server) == []
