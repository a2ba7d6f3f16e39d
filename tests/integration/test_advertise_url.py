"""Advertised URLs on a real PostgreSQL: stored with the member rows, read by followers
(``group.leader.url``, read in the background; ``group.leader_url()``) and shown by
``status``."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack

import pytest

from notifelect import ElectionGroup, Settings
from tests.cli.running import run_cli
from tests.support.waiting import until

FAST = Settings(election_interval=0.1, lease=1.0, leader_timeout=0.5)


def url_of(group: ElectionGroup) -> str | None:
    leader = group.leader
    return None if leader is None else leader.url


@pytest.mark.timeout(60)
async def test_followers_find_the_leader_url(dsn: str, namespace: str) -> None:
    async with AsyncExitStack() as stack:
        first = ElectionGroup(dsn, namespace, FAST, advertise_url="http://10.0.0.1:8000")
        await stack.enter_async_context(first)
        await first.wait_for_leadership(timeout=20)
        second = ElectionGroup(dsn, namespace, FAST, advertise_url="http://10.0.0.2:8000")
        await stack.enter_async_context(second)
        await until([first, second], lambda: second.leader is not None, timeout=20)
        # Read in the background once the leader is known, without leader_url().
        await until([first, second], lambda: url_of(second) is not None, timeout=20)
        assert url_of(second) == "http://10.0.0.1:8000"
        assert await second.leader_url() == "http://10.0.0.1:8000"
        assert await first.leader_url() == "http://10.0.0.1:8000"  # its own, no query

        result = await run_cli("status", "--json", "--dsn", dsn, "--namespace", namespace)
        text = await run_cli("status", "--dsn", dsn, "--namespace", namespace)
    assert result.rc == 0, result.stderr
    (group,) = json.loads(result.stdout)["groups"]
    assert {m["node"]: m["url"] for m in group["members"]} == {
        first.node: "http://10.0.0.1:8000",
        second.node: "http://10.0.0.2:8000",
    }
    assert "  url        http://10.0.0.1:8000" in text.stdout
