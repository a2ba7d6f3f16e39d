"""Fixtures of the fault-injection suite: a cluster of node processes on a throwaway server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.harness import Cluster
from tests.support.servers import ThrowawayPostgres


@pytest.fixture
async def cluster(throwaway_pg: ThrowawayPostgres, tmp_path: Path) -> AsyncIterator[Cluster]:
    """An empty cluster on a private PostgreSQL; every process it started is gone after."""
    async with Cluster(throwaway_pg, tmp_path, f"faults-{uuid.uuid4().hex[:8]}") as c:
        yield c
