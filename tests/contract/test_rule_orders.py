"""The session's SQL orders members as the rules do (``notifelect.rules``): the standby a
leader names and the successor a leaving leader names, checked on a real PostgreSQL."""

from __future__ import annotations

import random

import asyncpg
import pytest

from notifelect import rules
from notifelect.sql import RANK_ORDER, STANDBY_ORDER
from tests.unit.test_rules import MEMBERS


def _cases() -> list[tuple[list[tuple[int, int]], int]]:
    """The rules' own table (``tests/unit/test_rules.py``), then random memberships."""
    cases = [(members, leader) for _, members, leader, _, _ in MEMBERS]
    rng = random.Random(20)
    for _ in range(200):
        nodes = rng.sample(range(1, 40), rng.randint(1, 8))
        members = [(rng.choice([0, 0, 0, 1, 2]), node) for node in nodes]
        cases.append((members, rng.choice(nodes)))
    return cases


@pytest.mark.timeout(60)
async def test_the_sql_orders_members_as_the_rules_do(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for members, leader in _cases():
            values = ", ".join(f"({priority}, {node})" for priority, node in members)
            others = f"FROM (VALUES {values}) m(priority, node) WHERE m.node <> {leader}"
            standby = await conn.fetchval(
                f"SELECT m.node {others} ORDER BY {STANDBY_ORDER.format(leader=leader)} LIMIT 1"
            )
            heir = await conn.fetchval(f"SELECT m.node {others} ORDER BY {RANK_ORDER} LIMIT 1")
            assert standby == rules.standby(members, leader), (members, leader)
            assert heir == rules.successor(members, leader), (members, leader)
    finally:
        await conn.close()
