"""Junk and forged messages on the channel of a running group on a real PostgreSQL."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
import pytest

from notifelect import ElectionGroup, Settings, messages
from notifelect.messages import Kind, Message, Rank
from notifelect.schema import Names
from tests.support.waiting import eventually, until

SECRET = "a shared secret of enough bytes"


@asynccontextmanager
async def running(dsn: str, settings: Settings, n: int) -> AsyncIterator[list[ElectionGroup]]:
    async with AsyncExitStack() as stack:
        groups = [
            await stack.enter_async_context(ElectionGroup(dsn, settings=settings)) for _ in range(n)
        ]
        await settled(groups)
        yield groups


def agreed(groups: list[ElectionGroup]) -> tuple[int, int] | None:
    leaders = [g for g in groups if g.is_leader]
    views = {(g.leader.node, g.leader.term) if g.leader else None for g in groups}
    if len(leaders) != 1 or len(views) != 1 or None in views:
        return None
    ls = leaders[0].leadership
    assert ls is not None
    return leaders[0].node or 0, ls.term


async def settled(groups: list[ElectionGroup], timeout: float = 15.0) -> tuple[int, int]:
    found = await until(groups, lambda: agreed(groups), timeout=timeout, what="one leader")
    assert found is not None
    return found


async def database_leadership(conn: asyncpg.Connection[Any], namespace: str) -> tuple[Any, ...]:
    row = await conn.fetchrow(
        "SELECT node, term, released, (SELECT count(*) FROM notifelect_history h"
        " WHERE h.namespace = $1) AS terms FROM notifelect_leader WHERE namespace = $1",
        namespace,
    )
    assert row is not None
    return tuple(row)


def _env(namespace: str, **fields: object) -> str:
    return json.dumps({"v": 1, "ns": namespace, **fields})


def junk_and_forgeries(
    namespace: str, nodes: list[int], leader: tuple[int, int], rng: random.Random
) -> list[str]:
    """Thousands of payloads no honest node sends, each kind well represented."""
    leader_node, term = leader
    top = 2**31 - 1
    out: list[str] = []

    def forged(kind: Kind, priority: int, node: int, **kw: int | None) -> str:
        return messages.encode(Message(kind, namespace, Rank(priority, node), **kw))

    for _ in range(400):  # random text, no NUL (PostgreSQL text cannot hold it)
        out.append("".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 200))))
    for i in range(300):
        out.append(rng.choice(["{", "[1,", '{"v":1,', "nul", "{'v': 1}", "\\x00"]) + str(i))
    for i in range(300):  # wrong types
        field = rng.choice(["n", "p", "t", "k", "s", "u"])
        value = rng.choice(["1", 1.5, None, [1], {"a": 1}, True])
        body = {"k": "heartbeat", "n": leader_node, "p": 0, "t": term, field: value, "i": i}
        out.append(_env(namespace, **body))
    for i in range(200):  # huge and negative numbers
        value = rng.choice([2**64 + i, -(2**63) - i, 10**40 + i, -1 - i])
        out.append(_env(namespace, k="coordinator", n=value, p=value, t=value))
    for i in range(40):  # the largest payloads PostgreSQL carries
        body = json.loads(_env(namespace, k="election", n=2**62 + i, p=top, pad=""))
        body["pad"] = "x" * (7999 - len(json.dumps(body)))
        out.append(json.dumps(body))
        out.append(str(i) + "y" * (7999 - len(str(i))))
    for i in range(200):
        version = rng.choice([0, 2, "1", 1.0, True, None])
        body = {"v": version, "ns": namespace, "k": "coordinator", "n": 2**62 + i, "p": top}
        out.append(json.dumps({**body, "t": term + 1 + i}))
    for i in range(200):  # well-formed, for namespaces nobody here is in
        out.append(forged(Kind.COORDINATOR, top, 2**62 + i, term=term + 1).replace(
            json.dumps(namespace), json.dumps(f"{namespace}-other-{i}")))  # fmt: skip
    for i in range(300):  # leader claims for ranks or terms no node holds
        kind = Kind.COORDINATOR if i % 2 else Kind.HEARTBEAT
        if i % 3 == 0:
            out.append(forged(kind, top, 2**62 + i, term=term + 1 + i, standby=rng.choice(nodes)))
        elif i % 3 == 1:  # the real leader's rank with a term it does not hold
            out.append(forged(kind, 0, leader_node, term=term + 1 + i))
        else:  # the real term from a node that does not hold it
            out.append(forged(kind, 0, rng.choice([*nodes, 2**62]), term=term, standby=i))
    for i in range(300):  # elections that would depose the leader, from nobody
        out.append(forged(Kind.ELECTION, top - (i % 5), 2**62 + i))
        out.append(forged(Kind.ELECTION, 0, leader_node + 1000 + i))
    for i in range(200):  # resignations in the leader's name, and ALIVE from nobody
        out.append(forged(Kind.RESIGN, 0, leader_node, term=term, successor=2**62 + i))
        out.append(forged(Kind.ALIVE, top, 2**62 + i))
    rng.shuffle(out)
    return out


async def flood(
    conn: asyncpg.Connection[Any], namespace: str, payloads: list[str], batch: int = 100
) -> int:
    """Send ``payloads`` on the group's channel in transactions of ``batch``; return how
    many notifications went out."""
    channel = Names().group_channel(namespace)
    sent = 0
    for start in range(0, len(payloads), batch):
        chunk = payloads[start : start + batch]
        await conn.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", channel, chunk)
        sent += len(set(chunk))  # PostgreSQL folds duplicates within one transaction
    return sent


@pytest.mark.timeout(120)
async def test_thousands_of_junk_and_forged_messages_change_nothing(
    dsn: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="notifelect")
    settings = Settings(namespace=namespace)
    conn = await asyncpg.connect(dsn)
    try:
        async with running(dsn, settings, 5) as groups:
            leader = agreed(groups)
            assert leader is not None
            before_db = await database_leadership(conn, namespace)
            received = {id(g): g.stats["received"] for g in groups}
            payloads = junk_and_forgeries(
                namespace, [g.node or 0 for g in groups], leader, random.Random(8)
            )
            assert len(payloads) >= 2900
            sent = await flood(conn, namespace, payloads)

            def all_received() -> bool:
                return all(g.stats["received"] - received[id(g)] >= sent for g in groups)

            await eventually(all_received, timeout=90, what="every node read the flood")
            leader_group = next(g for g in groups if g.node == leader[0])
            followers = [g for g in groups if g is not leader_group]

            def all_checked() -> bool:
                # 300 elections come from a higher priority than the leader's (only those
                # could preempt it, so only those are checked); 200 leader claims name
                # nobody's term; 200 resignations in the leader's name were never made.
                return leader_group.stats["dropped:unknown member"] >= 300 and all(
                    g.stats["dropped:unverified leader"] >= 200
                    and g.stats["dropped:unverified resign"]
                    + g.stats["ignored:resign naming another"]
                    >= 200
                    for g in followers
                )

            await eventually(all_checked, timeout=90, what="every forgery checked")
            assert await settled(groups) == leader
            assert await database_leadership(conn, namespace) == before_db
            assert all(g.is_open and g._driver.failure is None for g in groups)
            assert sum(g.is_leader for g in groups) == 1

            for g in groups:
                for reason in ("not json", "unknown version", "malformed: n is not an integer",
                               "malformed: n out of range"):  # fmt: skip
                    assert g.stats[f"dropped:{reason}"] > 0, (g.node, reason, g.stats)
                assert g.stats["dropped"] >= 1000
            assert leader_group.is_leader
    finally:
        await conn.close()
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert 5 <= len(warnings) <= 15  # rate-limited: once per node per 10 s
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.timeout(120)
async def test_signed_group_ignores_unsigned_and_wrongly_signed_messages(
    dsn: str, namespace: str
) -> None:
    settings = Settings(namespace=namespace, secret=SECRET)
    conn = await asyncpg.connect(dsn)
    try:
        async with running(dsn, settings, 3) as groups:
            leader = agreed(groups)
            assert leader is not None
            before_db = await database_leadership(conn, namespace)
            top = 2**31 - 1
            forged = [
                messages.encode(Message(Kind.ELECTION, namespace, Rank(top, 2**62 + i)), key)
                for i in range(100)
                for key in (None, b"not the shared secret at all....")
            ]
            sent = await flood(conn, namespace, forged)
            await eventually(
                lambda: all(g.stats["dropped:bad signature"] >= sent for g in groups),
                timeout=60,
                what="every node dropped the unsigned messages",
            )
            # A node with another secret is heard by nobody: it cannot take over even though
            # it outranks everyone (it learns who leads from the database, and its challenge
            # is dropped by every member).
            stranger_settings = settings.replace(secret="another secret, also long enough")
            async with ElectionGroup(dsn, settings=stranger_settings.replace(priority=5)) as s:
                await eventually(
                    lambda: all(g.stats["dropped:bad signature"] > sent for g in groups),
                    timeout=30,
                    what="the stranger's challenge dropped by every member",
                )
                assert not s.is_leader
                assert await settled(groups) == leader
            assert await database_leadership(conn, namespace) == before_db
    finally:
        await conn.close()


HOSTILE_NAMESPACES = [
    "x'; drop table t; --",
    "quote\"d'",
    "ünïcödé 选举 🗳 $1 $$",
    "n" * 200,
]


@pytest.mark.timeout(120)
async def test_hostile_namespaces_are_bound_parameters(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE t (id int)")
        fast = Settings(election_interval=0.1, election_timeout=0.05, lease=1.0,
                        leader_timeout=0.5)  # fmt: skip
        for namespace in HOSTILE_NAMESPACES:
            async with running(dsn, fast.replace(namespace=namespace), 2) as groups:
                leader = agreed(groups)
                assert leader is not None
                row = await conn.fetchrow(
                    "SELECT namespace, node, term FROM notifelect_leader WHERE namespace = $1",
                    namespace,
                )
                assert row is not None
                assert tuple(row) == (namespace, *leader)
        assert await conn.fetchval("SELECT to_regclass('t') IS NOT NULL")
        stored = await conn.fetch("SELECT namespace FROM notifelect_term ORDER BY namespace")
        assert sorted(r["namespace"] for r in stored) == sorted(HOSTILE_NAMESPACES)
    finally:
        await conn.close()
