"""Fixtures of the integration tests beside those of ``tests/conftest.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa


@pytest.fixture
def sync_engine(dsn: str) -> Iterator[sa.Engine]:
    """A sync engine on psycopg 3 for the test's database."""
    engine = sa.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    yield engine
    engine.dispose()
