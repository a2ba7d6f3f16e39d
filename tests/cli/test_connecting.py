"""What every command says about where it connects: passwords never shown, a server that
does not answer named as such, and a reader that stops reading not blamed on the database."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys

import pytest

from notifelect.cli import _common
from notifelect.cli._common import Unreachable, open_connection, redact
from tests.cli.running import ROOT, clean_env, run_cli
from tests.support.servers import free_port


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://app:s3cret@db/app", "postgresql://app:***@db/app"),
        ("postgresql://app@db/app?password=s3cret", "postgresql://app@db/app?password=***"),
        (
            "postgresql://app@db/app?sslmode=require&sslpassword=s3cret&PASSWORD=s3cret",
            "postgresql://app@db/app?sslmode=require&sslpassword=***&PASSWORD=***",
        ),
        (
            "postgresql://app@db/app?application_name=x",
            "postgresql://app@db/app?application_name=x",
        ),
        ("host=db password=s3cret dbname=app", "host=db password=*** dbname=app"),
        ("host=db password = 's3 cret' dbname=app", "host=db password = *** dbname=app"),
        ("host=db sslpassword=s3cret", "host=db sslpassword=***"),
        # A key the driver decodes (pass%77ord is password), and a URL no parser reads.
        ("postgresql://app@db/app?pass%77ord=s3cret", "postgresql://app@db/app?pass%77ord=***"),
        (
            "postgresql://app:s3cret@[::1:5432/app?password=s3cret&x=1",
            "postgresql://app:***@[::1:5432/app?password=***&x=1",
        ),
    ],
)
def test_every_password_of_a_dsn_is_masked(dsn: str, shown: str) -> None:
    assert redact(dsn) == shown


@pytest.mark.timeout(60)
async def test_a_password_in_the_query_is_not_echoed() -> None:
    port = free_port()  # nothing listens there
    result = await run_cli(
        "status", "--dsn", f"postgresql://nobody@127.0.0.1:{port}/db?password=s3cret"
    )
    assert result.rc == 1
    assert (
        f"cannot connect to PostgreSQL at postgresql://nobody@127.0.0.1:{port}/db?password=***"
        in (result.stderr)
    )
    assert "s3cret" not in result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["status", "listen"])
@pytest.mark.parametrize(
    ("where", "why"),
    [
        ("127.0.0.1:notaport", "invalid literal for int()"),
        ("127.0.0.1:99999", "connect(): port must be 0-65535"),
        ("[::1:5432", "Invalid IPv6 URL"),
    ],
)
async def test_a_url_that_cannot_be_read_is_named_as_such(
    command: str, where: str, why: str
) -> None:
    result = await run_cli(command, "--dsn", f"postgresql://app:s3cret@{where}/db")
    assert result.rc == 2, result.stderr
    assert f"cannot read the connection options postgresql://app:***@{where}/db: {why}" in (
        result.stderr
    )
    assert "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(60)
async def test_a_key_value_dsn_is_named_as_unreadable_not_as_a_server_down() -> None:
    result = await run_cli("install", "--dsn", "host=127.0.0.1 password=s3cret dbname=db")
    assert result.rc == 2
    assert "cannot read the connection options host=127.0.0.1 password=*** dbname=db" in (
        result.stderr
    )
    assert "postgresql://user:password@host:port/database" in result.stderr
    assert "Check that the server runs" not in result.stderr
    assert "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(30)
async def test_a_server_that_never_answers_is_named_as_such(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, and never a byte in answer

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(_common, "CONNECT_TIMEOUT", 0.3)
    args = argparse.Namespace(dsn=f"postgresql://app:s3cret@127.0.0.1:{port}/db")
    try:
        with pytest.raises(Unreachable) as caught:
            await open_connection(args)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    said = str(caught.value)
    assert f"postgresql://app:***@127.0.0.1:{port}/db: no answer within 0.3s." in said


@pytest.mark.timeout(30)
def test_a_reader_that_stops_reading_is_not_blamed_on_the_database() -> None:
    # `install --dry-run | head -1`: the reader is gone before the SQL is written. The
    # dry run connects to nothing; it ends quietly and successfully.
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "notifelect", "install", "--dry-run"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=clean_env(),
            timeout=25,
        )
    finally:
        os.close(write)
    assert result.stderr == ""
    assert result.returncode == 0
