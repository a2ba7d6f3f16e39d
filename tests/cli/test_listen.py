"""``notifelect listen``: election messages, decoded, one line each."""

from __future__ import annotations

import asyncio
import io
import json
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from notifelect import ElectionGroup, Names, Settings
from notifelect.cli.listen import Printer, decode_any, describe, listen
from notifelect.messages import Kind, Message, Rank, Rejected, encode
from tests.cli.running import cli_argv, run_cli, spawn
from tests.support.waiting import until

FAST = Settings(election_interval=0.1, lease=1.0, leader_timeout=0.5)


def records(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def hand_over_seen(lines: list[str], old: int, new: int, old_term: int) -> bool:
    """The old leader's RESIGN naming its successor (the new leadership itself is read
    from the database, not announced on the channel)."""
    return any(
        r.get("kind") == "resign"
        and r["node"] == old
        and r["term"] == old_term
        and r["successor"] == new
        for r in records(lines)
    )


@pytest.mark.timeout(60)
async def test_listen_shows_a_hand_over(dsn: str, namespace: str) -> None:
    argv = cli_argv("listen", "--json", "--dsn", dsn, "--namespace", namespace)
    async with spawn(*argv) as listener, AsyncExitStack() as stack:
        await listener.wait_for(
            lambda: any("listening" in line for line in listener.stderr),
            timeout=20,
            what="LISTEN active",
        )
        members = [
            await stack.enter_async_context(ElectionGroup(dsn, namespace, FAST)) for _ in range(2)
        ]
        await until(members, lambda: any(g.is_leader for g in members), timeout=10)
        top = next(g for g in members if g.is_leader)
        assert top.leadership is not None
        term = top.leadership.term
        other = next(g for g in members if g is not top)
        await top.close()
        await until([other], lambda: other.is_leader, timeout=10)
        assert other.node is not None
        assert top.node is not None
        await listener.wait_for(
            lambda: hand_over_seen(listener.stdout, top.node or 0, other.node or 0, term),
            timeout=10,
            what="the resign naming the successor",
        )
        assert all(r["namespace"] == namespace for r in records(listener.stdout))
        assert await listener.stop() == 0


@pytest.mark.timeout(30)
async def test_listen_prints_junk_as_rejected_and_filters_namespaces(dsn: str) -> None:
    out = io.StringIO()
    everything = Printer(out)
    ready = asyncio.Event()
    conn = await asyncpg.connect(dsn)
    sender = await asyncpg.connect(dsn)
    try:
        task = asyncio.create_task(
            listen(
                conn, Names(), everything, namespace="reports", count=3, ready=lambda _: ready.set()
            )
        )
        await asyncio.wait_for(ready.wait(), 10)
        good = encode(Message(Kind.ELECTION, "reports", Rank(5, 42)))
        for payload in ("not json at all", good, '{"v": 1, "ns": 7}'):
            channel = Names().group_channel("reports")
            await sender.execute("SELECT pg_notify($1, $2)", channel, payload)
        assert await asyncio.wait_for(task, 10) == 3
    finally:
        await conn.close()
        await sender.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "rejected (not json)" in lines[0]
    assert "'not json at all'" in lines[0]
    assert "'reports'  election" in lines[1]
    assert "node 42 (priority 5)" in lines[1]
    assert "rejected (no namespace)" in lines[2]


@pytest.mark.timeout(60)
async def test_listen_without_the_schema_exits_2_naming_the_fix(empty_dsn: str) -> None:
    """As ``status`` does: the schema error with its steps, not a driver error."""
    result = await run_cli("listen", "--dsn", empty_dsn, "--for", "1")
    assert result.rc == 2, result.stderr
    assert "the notifelect schema is not installed" in result.stderr
    assert "python -m notifelect install" in result.stderr


def test_decode_any_reads_every_namespace_and_never_raises() -> None:
    message = Message(Kind.HEARTBEAT, "a group", Rank(1, 9), term=4, standby=3)
    assert decode_any(encode(message)) == message
    for junk in ("", "[]", "{", '{"v":1}', '{"v":2,"ns":"x"}', "x" * 9000, "\x00"):
        assert isinstance(decode_any(junk), Rejected), junk
    line = describe(message, encode(message), datetime.now(UTC), 1234)
    assert "heartbeat" in line
    assert "term 4" in line
    assert "standby 3" in line


def test_printer_filter_and_json_lines() -> None:
    out = io.StringIO()
    printer = Printer(out, as_json=True, namespace="mine")
    assert not printer(encode(Message(Kind.ELECTION, "other", Rank(0, 1))), 1)
    assert not printer("junk", 1)  # a rejected payload has no namespace to match
    assert printer(encode(Message(Kind.RESIGN, "mine", Rank(0, 2), term=3, successor=1)), 77)
    (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert record["kind"] == "resign"
    assert record["node"] == 2
    assert record["term"] == 3
    assert record["successor"] == 1
    assert record["backend_pid"] == 77
