"""Starting a group on a database without the schema (or with another version) fails at once.

Each condition gets its own message, naming the database, schema and prefix checked, the
version found and needed, and the next step: these tests make each condition for real.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from urllib.parse import urlsplit

import pytest

from notifelect import ElectionGroup, SchemaError, Settings, __version__, cli
from notifelect.schema import SCHEMA_VERSION, Names, install_statements, statements_for_version
from tests.migration.conftest import execute

#: Generous bound: the error must come from the first connection, not after retries.
_AT_ONCE = 20.0


async def start(dsn: str, settings: Settings | None = None) -> SchemaError:
    async with asyncio.timeout(_AT_ONCE):
        with pytest.raises(SchemaError) as raised:
            async with ElectionGroup(dsn, "reports", settings):
                pass
    return raised.value


def database(dsn: str) -> str:
    """The name of the database ``dsn`` points at."""
    return urlsplit(dsn).path.lstrip("/")


def assert_names_every_step(message: str, prefix: str = "") -> None:
    x = f" -x notifelect_prefix={prefix}" if prefix else ""
    install = f"'python -m notifelect install{f' --prefix {prefix}' if prefix else ''}'"
    assert f"needs schema version {SCHEMA_VERSION}" in message
    assert f"notifelect {__version__} needs" in message
    assert "'python -m notifelect alembic revision' writes the revision" in message
    assert f"then 'alembic{x} upgrade head'" in message
    assert f"'alembic{x} upgrade heads'" in message
    assert f"(c) the command line: {install} against database" in message


@pytest.mark.timeout(60)
async def test_missing_schema_is_not_installed(empty_dsn: str) -> None:
    message = str(await start(empty_dsn))
    assert message.startswith(
        f"the notifelect schema is not installed in database '{database(empty_dsn)}' "
        "(schema 'public' from search_path "
    )
    assert "neither 'notifelect_version' nor 'seq_notifelect' can be found there" in message
    assert_names_every_step(message)


@pytest.mark.timeout(60)
async def test_missing_prefixed_schema_names_the_prefix(empty_dsn: str) -> None:
    # The unprefixed schema is there; the group wants the one with its prefix.
    await execute(empty_dsn, *install_statements(Names()))
    message = str(await start(empty_dsn, Settings(prefix="billing_")))
    assert "is not installed" in message
    assert "; object prefix 'billing_')" in message
    assert "'billing_seq_notifelect'" in message
    assert_names_every_step(message, "billing_")


@pytest.mark.timeout(60)
async def test_a_search_path_without_the_schema_is_named(empty_dsn: str) -> None:
    await execute(empty_dsn, *install_statements(Names()))
    joiner = "&" if "?" in empty_dsn else "?"
    message = str(await start(f"{empty_dsn}{joiner}search_path=elsewhere"))
    assert "is not installed in database" in message
    assert "(no schema: none of search_path elsewhere exists; no object prefix)" in message


@pytest.mark.timeout(60)
async def test_an_older_version_is_named_with_the_upgrade_step(empty_dsn: str) -> None:
    await execute(
        empty_dsn, *install_statements(Names()), 'UPDATE "notifelect_version" SET version = 1'
    )
    message = str(await start(empty_dsn))
    assert message.startswith(
        f"the notifelect schema in database '{database(empty_dsn)}' (schema 'public' from "
    )
    assert f"no object prefix) is at version 1; notifelect {__version__} needs" in message
    assert "not installed" not in message
    assert_names_every_step(message)


@pytest.mark.timeout(60)
async def test_a_newer_version_asks_for_the_newer_release(empty_dsn: str) -> None:
    newer = SCHEMA_VERSION + 1
    await execute(
        empty_dsn,
        *install_statements(Names()),
        f'UPDATE "notifelect_version" SET version = {newer}',
    )
    message = str(await start(empty_dsn))
    assert f"is at version {newer}, newer than this release knows" in message
    assert f"Run the notifelect release that installed version {newer}" in message
    assert "alembic revision" not in message  # no step of ours writes a downgrade


@pytest.mark.timeout(60)
async def test_a_schema_missing_a_table_is_incomplete(empty_dsn: str) -> None:
    await execute(empty_dsn, *install_statements(Names()), 'DROP TABLE "notifelect_session"')
    message = str(await start(empty_dsn))
    assert (
        f"is incomplete: it records version {SCHEMA_VERSION} but 'notifelect_session' cannot "
        "be found" in message
    )
    assert "'python -m notifelect install' recreates what is missing" in message


@pytest.mark.timeout(60)
async def test_the_0_0_3_sequence_alone_is_named_as_such(empty_dsn: str) -> None:
    # The 0.0.3 sequence alone, as the seed's users have it deployed.
    await execute(empty_dsn, 'CREATE SEQUENCE "seq_notifelect"')
    message = str(await start(empty_dsn))
    assert "has only the sequence 'seq_notifelect' of notifelect 0.0.3, no schema version" in (
        message
    )
    assert "not installed" not in message
    assert_names_every_step(message)


@pytest.mark.timeout(60)
async def test_the_install_step_for_a_service_in_another_schema_installs_it_there(
    empty_dsn: str,
) -> None:
    """The service looks in schema 'app' (its search_path): running step (c) as the message
    writes it, against the database it names, gives the service the schema it needs."""
    await execute(empty_dsn, "CREATE SCHEMA app")
    joiner = "&" if "?" in empty_dsn else "?"
    service = f"{empty_dsn}{joiner}options=-csearch_path%3Dapp"
    await execute(service, *statements_for_version(Names(), 1))
    message = str(await start(service))
    assert "(schema 'app' from search_path app; no object prefix) is at version 1" in message
    step = re.search(r"\(c\) the command line: '(python -m notifelect install[^']*)'", message)
    assert step is not None, message
    argv = shlex.split(step.group(1))[3:]  # what follows 'python -m notifelect'
    code = await asyncio.to_thread(cli.main, [*argv, "--dsn", empty_dsn])
    assert code == 0
    async with ElectionGroup(service, "reports", Settings(election_interval=0.1)) as group:
        await group.wait_for_leadership(timeout=20)
