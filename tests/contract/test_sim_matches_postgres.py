"""The simulation runs the protocol as it ships; this checks that it also ends where the
PostgreSQL transport ends: the same script (three members join one at a time, then the
leader crashes, pauses or hands over cleanly) gives the same outcome on both: who leads
(by the order in which the members joined), and how many terms the group had.

On PostgreSQL the members are groups of this process, each on a session of its own. A
crash ends the member's process as the server sees it: its election loop stops and every
backend of its session (the election connection, the anchor) is terminated. A pause
stops its election loop and its session's periodic renewal, and leaves its connections
idle, holding what they hold, as a stopped process does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import pytest

from notifelect import ElectionGroup, Settings
from notifelect import protocol as p
from notifelect.transport.postgres import PostgresTransport
from tests.support.sim import Sim
from tests.support.waiting import until

SETTINGS = Settings(election_interval=0.1, election_timeout=0.05, lease=0.6, leader_timeout=0.4)
MEMBERS = 3
EVENTS = ["crash", "pause", "hand-over"]

#: Who leads afterwards (index in the order of joining) and how many terms there were.
Outcome = tuple[int, int]


def simulated(event: str) -> Outcome:
    s = SETTINGS
    config = p.Config(
        election_timeout=s.election_timeout,
        leader_timeout=s.leader_timeout,
        coordinator_wait=s.coordinator_wait,
        preempt=p.Preempt(s.preempt),
        join_holdoff=s.holdoff,
    )
    sim = Sim(config, lease=s.lease, interval=s.election_interval, strict_takeover=True)
    joined = []
    for node in range(1, MEMBERS + 1):
        sim.add(node)
        joined.append(node)
        sim.run(sim.now + 1.0)
    (leader,) = sim.leaders()
    assert leader in sim.watchers.values()  # its standby watches it
    if event == "crash":
        sim.crash(leader)
    elif event == "pause":
        sim.pause(leader)
    else:
        sim.stop(leader)
    sim.run(sim.now + 10 * (s.leader_timeout + s.lease))
    assert sim.max_acting == 1
    (new,) = sim.leaders()
    assert sim.known_leaders() == {new}
    return joined.index(new), len(sim.elected_log)


@pytest.mark.parametrize("event", EVENTS)
def test_the_simulated_outcomes_are_the_rules(event: str) -> None:
    # Crash: the standby (among equals, the next node after the leader's) proves the end
    # and takes over; pause: the best other member fences it; a hand-over goes to the
    # best other member. One new term each.
    assert simulated(event) == ({"crash": 1, "pause": 2, "hand-over": 2}[event], 2)


async def _freeze(group: ElectionGroup) -> None:
    """Stop ``group``'s election loop and its session's renewals, as a stopped (or dead)
    process no longer runs them."""
    driver = group._driver
    task = driver._task
    assert task is not None
    task.cancel()
    await asyncio.wait([task])
    await driver._stop_background()
    driver.lease.stop()
    transport = group._transport
    assert isinstance(transport, PostgresTransport)
    session = transport.session
    assert session is not None
    ticker = session.ticker.task
    assert ticker is not None
    ticker.cancel()
    await asyncio.wait([ticker])


async def _terminate(admin: asyncpg.Connection[Any], group: ElectionGroup) -> None:
    """End every backend of ``group``'s session, its anchor last (once the others are
    gone): a standby then sees what it sees when a process dies."""
    transport = group._transport
    assert isinstance(transport, PostgresTransport)
    session = transport.session
    assert session is not None
    anchor = session.anchor
    assert anchor is not None
    last = anchor.get_server_pid()
    first = [pid for pid in session.backend_pids() if pid != last]
    for pids in (first, [last]):
        await admin.execute("SELECT pg_terminate_backend(p) FROM unnest($1::int[]) AS p", pids)

        async def gone(pids: list[int] = pids) -> bool:
            query = "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = ANY($1::int[])"
            return bool(await admin.fetchval(query, pids))

        for _ in range(500):
            if await gone():
                break
            await asyncio.sleep(0.01)  # polling the server, which alone knows
        else:
            raise AssertionError(f"backends {pids} did not end")


def _settled(groups: Sequence[ElectionGroup]) -> int | None:
    """The node every group agrees leads, if exactly one of them leads."""
    leaders = [g for g in groups if g.is_leader]
    views = {(g.leader.node, g.leader.term) if g.leader else None for g in groups}
    if len(leaders) != 1 or len(views) != 1:
        return None
    return leaders[0].node


@pytest.mark.timeout(90)
@pytest.mark.parametrize("event", EVENTS)
async def test_postgres_ends_where_the_simulation_ends(
    dsn: str, namespace: str, event: str
) -> None:
    admin = await asyncpg.connect(dsn)
    groups: list[ElectionGroup] = []
    try:
        async with AsyncExitStack() as stack:
            for _ in range(MEMBERS):
                group = ElectionGroup(dsn, namespace, SETTINGS)
                groups.append(group)
                await stack.enter_async_context(group)
                await until(groups, lambda: _settled(groups), timeout=10, what="one leader")
            leader = next(g for g in groups if g.is_leader)
            rest = [g for g in groups if g is not leader]

            def watched() -> bool:
                # The session records a leader's standby at most every leader_timeout.
                return any(
                    g._driver.proto and g._driver.proto.watching == leader.node for g in rest
                )

            await until(rest, watched, timeout=10, what="the standby watching")
            if event == "hand-over":
                await leader.close()
            else:
                await _freeze(leader)
                if event == "crash":
                    await _terminate(admin, leader)
            new = await until(rest, lambda: _settled(rest), timeout=30, what="a new leader")
            # No further term follows: the group stays settled for several leases.
            with pytest.raises(TimeoutError):
                await until(
                    rest,
                    lambda: _settled(rest) != new,
                    timeout=3 * (SETTINGS.leader_timeout + SETTINGS.lease),
                    what="another leader",
                )
            terms = await admin.fetchval(
                "SELECT count(*) FROM notifelect_history WHERE namespace = $1", namespace
            )
            outcome = ([g.node for g in groups].index(new), int(terms))
            assert outcome == simulated(event)
            if event == "pause":
                await _terminate(admin, leader)  # the end of the test: the process goes
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
