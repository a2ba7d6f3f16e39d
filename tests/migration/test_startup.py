"""Starting a group on a database without the schema (or with an older one) fails at once."""

from __future__ import annotations

import asyncio

import pytest

from notifelect import ElectionGroup, SchemaError, Settings
from notifelect.schema import SCHEMA_VERSION, Names, install_statements
from tests.migration.conftest import execute

#: Generous bound: the error must come from the first connection, not after retries.
_AT_ONCE = 20.0


async def start(dsn: str, settings: Settings | None = None) -> SchemaError:
    async with asyncio.timeout(_AT_ONCE):
        with pytest.raises(SchemaError) as raised:
            async with ElectionGroup(dsn, "reports", settings):
                pass
    return raised.value


def assert_names_both_fixes(message: str) -> None:
    assert "python -m notifelect install" in message
    assert "alembic upgrade head" in message


@pytest.mark.timeout(60)
async def test_missing_schema_names_both_fixes(empty_dsn: str) -> None:
    message = str(await start(empty_dsn))
    assert "is not installed" in message
    assert "'seq_notifelect'" in message
    assert_names_both_fixes(message)


@pytest.mark.timeout(60)
async def test_missing_prefixed_schema_names_the_prefix(empty_dsn: str) -> None:
    # The unprefixed schema is there; the group wants the one with its prefix.
    await execute(empty_dsn, *install_statements(Names()))
    message = str(await start(empty_dsn, Settings(prefix="billing_")))
    assert "'billing_seq_notifelect'" in message
    assert "NOTIFELECT_PREFIX=billing_" in message
    assert_names_both_fixes(message)


@pytest.mark.timeout(60)
async def test_outdated_schema_names_both_fixes(empty_dsn: str) -> None:
    await execute(
        empty_dsn, *install_statements(Names()), 'UPDATE "notifelect_version" SET version = 0'
    )
    message = str(await start(empty_dsn))
    assert f"at version 0, this code needs {SCHEMA_VERSION}" in message
    assert_names_both_fixes(message)


@pytest.mark.timeout(60)
async def test_half_installed_schema_is_reported_as_missing(empty_dsn: str) -> None:
    # The 0.0.3 sequence alone, as the seed's users have it deployed.
    await execute(empty_dsn, 'CREATE SEQUENCE "seq_notifelect"')
    assert_names_both_fixes(str(await start(empty_dsn)))
