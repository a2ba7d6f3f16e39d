"""The session's SQL orders members as the rules do (``notifelect.rules``): the standby a
leader names and the successor a leaving leader names, checked on a real PostgreSQL, with
the very statements the session runs (:func:`notifelect.sql.standby_of`,
:func:`notifelect.sql.successor_of`): among the live members only, whatever the order in
which the statement checks them."""

from __future__ import annotations

import random

import asyncpg
import pytest

from notifelect import rules
from notifelect.sql import RANK_ORDER, STANDBY_ORDER, standby_of, successor_of
from tests.unit.test_rules import MEMBERS

Case = tuple[list[tuple[int, int]], int, set[int]]


def _cases() -> list[Case]:
    """The rules' own table (``tests/unit/test_rules.py``, every member live), then random
    memberships in which some members' sessions are gone."""
    cases: list[Case] = [
        (members, leader, {node for _, node in members}) for _, members, leader, _, _ in MEMBERS
    ]
    rng = random.Random(20)
    for _ in range(200):
        nodes = rng.sample(range(1, 40), rng.randint(1, 8))
        members = [(rng.choice([0, 0, 0, 1, 2]), node) for node in nodes]
        live = {node for node in nodes if rng.random() < 0.7}
        cases.append((members, rng.choice(nodes), live))
    return cases


@pytest.mark.timeout(60)
async def test_the_sql_orders_members_as_the_rules_do(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TEMP TABLE m (namespace text, node bigint, priority int,"
            " backend_pid int, backend_start timestamptz)"
        )
        me = await conn.fetchrow(
            "SELECT pid, backend_start FROM pg_stat_get_activity(pg_backend_pid())"
        )
        assert me is not None
        standby = standby_of("pg_temp.m", "'g'", "$1")
        successor = successor_of("pg_temp.m", "'g'", "$1")
        for members, leader, live in _cases():
            await conn.execute("TRUNCATE pg_temp.m")
            # A gone session: no backend with its pid (odd nodes), or its pid now serves
            # another session (even nodes).
            gone = {1: (0, me["backend_start"]), 0: (me["pid"], None)}
            rows = [
                (
                    "g",
                    node,
                    priority,
                    *((me["pid"], me["backend_start"]) if node in live else gone[node % 2]),
                )
                for priority, node in members
            ]
            await conn.executemany(
                "INSERT INTO pg_temp.m VALUES"
                " ($1, $2, $3, $4, coalesce($5::timestamptz, '-infinity'))",
                rows,
            )
            alive = [(priority, node) for priority, node in members if node in live]
            case = (members, leader, live)
            assert await conn.fetchval(standby, leader) == rules.standby(alive, leader), case
            assert await conn.fetchval(successor, leader) == rules.successor(alive, leader), case
            # The orders themselves, over every member.
            values = ", ".join(f"({priority}, {node})" for priority, node in members)
            others = f"FROM (VALUES {values}) m(priority, node) WHERE m.node <> {leader}"
            first = await conn.fetchval(
                f"SELECT m.node {others} ORDER BY {STANDBY_ORDER.format(leader=leader)} LIMIT 1"
            )
            heir = await conn.fetchval(f"SELECT m.node {others} ORDER BY {RANK_ORDER} LIMIT 1")
            assert first == rules.standby(members, leader), case
            assert heir == rules.successor(members, leader), case
    finally:
        await conn.close()
