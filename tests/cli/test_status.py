"""``notifelect status``: what it reports matches what the groups are doing."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import pytest

from notifelect import ElectionGroup, Names, Settings
from notifelect.cli.render import render_text
from notifelect.cli.status import snapshot
from notifelect.errors import SchemaError
from notifelect.schema import uninstall_statements
from tests.cli.running import cli_argv, run_cli, spawn
from tests.support.servers import free_port
from tests.support.waiting import until

FAST = Settings(election_interval=0.1, lease=1.0, leader_timeout=0.5)


async def join(stack: AsyncExitStack, dsn: str, name: str, n: int) -> list[ElectionGroup]:
    return [await stack.enter_async_context(ElectionGroup(dsn, name, FAST)) for _ in range(n)]


def the_leader(groups: list[ElectionGroup]) -> ElectionGroup | None:
    """The one leader once the group has settled: every member knows it."""
    leaders = [g for g in groups if g.is_leader]
    if len(leaders) != 1:
        return None
    (leader,) = leaders
    known = all(g.leader is not None and g.leader.node == leader.node for g in groups)
    return leader if known else None


def by_namespace(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["namespace"]: g for g in document["groups"]}


@pytest.mark.timeout(60)
async def test_status_json_reports_the_leader_that_leads(dsn: str) -> None:
    async with AsyncExitStack() as stack:
        groups = {
            "alpha": await join(stack, dsn, "alpha", 3),
            "beta": await join(stack, dsn, "beta", 2),
        }
        every = groups["alpha"] + groups["beta"]
        await until(every, lambda: all(the_leader(gs) for gs in groups.values()), timeout=10)

        result = await run_cli("status", "--json", "--dsn", dsn)
        assert result.rc == 0, result.stderr
        reported = by_namespace(json.loads(result.stdout))

        assert set(reported) == {"alpha", "beta"}
        for name, members in groups.items():
            leader = the_leader(members)
            assert leader is not None
            assert leader.leadership is not None
            status = reported[name]
            assert status["leader"]["node"] == leader.node
            assert status["leader"]["term"] == leader.leadership.term
            assert status["leader"]["pid"] == leader._member.pid
            # heard through its session's lease renewals (every 0.1 s here)
            assert 0 <= status["leader"]["heartbeat_age"] < 1
            nodes = sorted((g.node or 0 for g in members), reverse=True)
            assert [m["node"] for m in status["members"]] == nodes  # rank order: highest first
            assert [m["rank"] for m in status["members"]] == list(range(1, len(nodes) + 1))
            roles = {m["node"]: m["role"] for m in status["members"]}
            assert roles[leader.node] == "leader"
            assert sorted(roles.values()).count("standby") == 1
            current = status["transitions"][0]
            assert current["term"] == leader.leadership.term
            assert current["node"] == leader.node
            assert current["ended_at"] is None


@pytest.mark.timeout(60)
async def test_status_shows_a_hand_over_in_the_terms(dsn: str, namespace: str) -> None:
    async with AsyncExitStack() as stack:
        members = await join(stack, dsn, namespace, 2)
        await until(members, lambda: the_leader(members), timeout=10)
        old = the_leader(members)
        assert old is not None
        assert old.leadership is not None
        old_term = old.leadership.term
        await old.close()
        rest = [g for g in members if g is not old]
        await until(rest, lambda: rest[0].is_leader, timeout=10)

        conn = await asyncpg.connect(dsn)
        try:
            snap = await snapshot(conn, Names(), namespace=namespace)
        finally:
            await conn.close()
        (group,) = snap.groups
        assert group.leader is not None
        assert group.leader.node == rest[0].node
        assert group.leader.term > old_term
        assert [m.node for m in group.members] == [rest[0].node]
        ended = next(t for t in group.transitions if t.term == old_term)
        assert ended.node == old.node
        assert ended.reason == "resigned"
        assert ended.ended_at is not None
        text = render_text(snap)
        assert f"leader     node {rest[0].node} " in text
        assert "resigned" in text


@pytest.mark.timeout(60)
async def test_status_text_and_namespace_filter(dsn: str, namespace: str) -> None:
    async with AsyncExitStack() as stack:
        members = await join(stack, dsn, namespace, 2)
        await join(stack, dsn, namespace + "-other", 1)
        await until(members, lambda: the_leader(members), timeout=10)
        leader = the_leader(members)
        assert leader is not None

        result = await run_cli("status", "--dsn", dsn, "--namespace", namespace)
        assert result.rc == 0, result.stderr
        assert f"group {namespace!r}" in result.stdout
        assert f"{namespace}-other" not in result.stdout
        assert f"leader     node {leader.node} " in result.stdout
        assert "lease      renewed" in result.stdout


@pytest.mark.timeout(60)
async def test_status_on_an_empty_database_says_nothing_runs(dsn: str) -> None:
    result = await run_cli("status", "--dsn", dsn)
    assert result.rc == 0, result.stderr
    assert "no election group is running" in result.stdout
    result = await run_cli("status", "--dsn", dsn, "--json", "--wait", "0")
    assert json.loads(result.stdout)["groups"] == []


@pytest.mark.timeout(60)
async def test_status_without_the_schema_exits_nonzero_naming_the_fix(empty_dsn: str) -> None:
    result = await run_cli("status", "--dsn", empty_dsn)
    assert result.rc == 2
    assert "not installed" in result.stderr
    assert "python -m notifelect install" in result.stderr
    conn = await asyncpg.connect(empty_dsn)
    try:
        with pytest.raises(SchemaError, match="notifelect install"):
            await snapshot(conn, Names())
    finally:
        await conn.close()


@pytest.mark.timeout(60)
async def test_status_of_an_unreachable_database_exits_nonzero() -> None:
    port = free_port()  # nothing listens there
    result = await run_cli("status", "--dsn", f"postgresql://nobody:secret@127.0.0.1:{port}/db")
    assert result.rc == 1
    assert "cannot connect to PostgreSQL" in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert "secret" not in result.stderr  # the password is not echoed
    assert "--dsn" in result.stderr


@pytest.mark.timeout(60)
async def test_status_watch_refreshes_on_a_hand_over(dsn: str, namespace: str) -> None:
    async with AsyncExitStack() as stack:
        members = await join(stack, dsn, namespace, 2)
        await until(members, lambda: the_leader(members), timeout=10)
        old = the_leader(members)
        assert old is not None

        def leaders(lines: list[str]) -> list[int | None]:
            out = []
            for line in lines:
                (group,) = json.loads(line)["groups"]
                out.append(group["leader"] and group["leader"]["node"])
            return out

        argv = cli_argv(
            "status", "--watch", "--json", "--interval", "30", "--dsn", dsn, "-n", namespace
        )
        async with spawn(*argv) as watcher:
            await watcher.wait_for(
                lambda: old.node in leaders(watcher.stdout), timeout=20, what="first view"
            )
            await old.close()
            new = next(g for g in members if g is not old)
            # The refresh interval is 30 s: only the channel can make it show this quickly.
            await watcher.wait_for(
                lambda: new.node in leaders(watcher.stdout), timeout=10, what="the new leader"
            )
            assert await watcher.stop() == 0


@pytest.mark.timeout(60)
async def test_status_watch_exits_2_naming_the_fix_when_the_schema_is_removed(
    dsn: str, namespace: str
) -> None:
    async with AsyncExitStack() as stack:
        members = await join(stack, dsn, namespace, 1)
        await until(members, lambda: the_leader(members), timeout=10)
        argv = cli_argv("status", "--watch", "--json", "--interval", "0.2", "--dsn", dsn)
        async with spawn(*argv) as watcher:
            await watcher.wait_for(lambda: watcher.stdout, timeout=20, what="first view")
            await members[0].close()
            conn = await asyncpg.connect(dsn)
            try:
                for statement in uninstall_statements(Names()):
                    await conn.execute(statement)
            finally:
                await conn.close()
            rc = await watcher.wait(timeout=20)
        assert rc == 2, watcher.output
        assert "not installed" in "\n".join(watcher.stderr)
        assert "python -m notifelect install" in "\n".join(watcher.stderr)
