"""ElectionGroup on SQLAlchemy AsyncEngines against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from notifelect import (
    ElectionGroup,
    Health,
    Leadership,
    NotLeaderError,
    Settings,
    StaleLeaderError,
)
from notifelect.fencing import check_term
from notifelect.metrics import register
from notifelect.transport.postgres import PostgresTransport
from tests.support.exposition import labelled, sample, samples
from tests.support.proxy import FaultProxy, Mode
from tests.support.servers import ThrowawayPostgres, sqlalchemy_url
from tests.support.waiting import settled, until

FAST = Settings(election_interval=0.2, lease=2.0, leader_timeout=1.0)


async def engines(stack: AsyncExitStack, dsn: str, n: int) -> list[AsyncEngine]:
    result = []
    for _ in range(n):
        engine = create_async_engine(sqlalchemy_url(dsn), pool_size=1, max_overflow=0)
        stack.push_async_callback(engine.dispose)
        result.append(engine)
    return result


def backend_pid(group: ElectionGroup) -> int:
    transport = group._transport
    assert isinstance(transport, PostgresTransport)
    assert transport.connection is not None
    return transport.connection.get_server_pid()


@pytest.mark.parametrize("n", [3, 10])
@pytest.mark.timeout(60)
async def test_groups_gate_work_and_hand_over_in_order(dsn: str, namespace: str, n: int) -> None:
    log: list[tuple[str, int | None, int]] = []
    ticks: list[tuple[int | None, int]] = []
    async with AsyncExitStack() as stack:
        groups = [ElectionGroup(engine, namespace, FAST) for engine in await engines(stack, dsn, n)]
        jobs = []
        for g in groups:

            @g.leader_only
            async def job(g: ElectionGroup = g) -> int | None:
                return g.node

            @g.on_elected
            async def leading(ls: Leadership, g: ElectionGroup = g) -> None:
                log.append(("elected", g.node, ls.term))
                try:
                    await asyncio.Event().wait()
                finally:
                    log.append(("cancelled", g.node, ls.term))

            @g.on_deposed
            async def deposed(ls: Leadership, g: ElectionGroup = g) -> None:
                log.append(("deposed", g.node, ls.term))

            @g.every(0.02)
            async def tick(g: ElectionGroup = g) -> None:
                assert g.leadership is not None
                ticks.append((g.node, g.leadership.term))

            jobs.append(job)
            await stack.enter_async_context(g)

        await until(groups, lambda: settled(groups), timeout=10)
        leader = next(g for g in groups if g.is_leader)
        results = [await job() for job in jobs]
        assert [r for r in results if r is not None] == [leader.node]
        assert leader.leadership is not None
        term = leader.leadership.term
        await until(groups, lambda: len([t for _, t in ticks if t == term]) >= 3)
        # (Earlier ticks may come from a node that led before higher-ranked ones joined.)
        assert {node for node, t in ticks if t == term} == {leader.node}

        for _ in range(2):
            old = next(g for g in groups if g.is_leader)
            assert old.leadership is not None
            old_term = old.leadership.term
            groups.remove(old)
            await old.close()
            await until(groups, lambda: settled(groups), timeout=10)
            new = next(g for g in groups if g.is_leader)
            assert new.leadership is not None
            new_term = new.leadership.term
            elected = ("elected", new.node, new_term)
            await until(groups, lambda: elected in log)  # noqa: B023
            assert log.index(("cancelled", old.node, old_term)) < log.index(
                ("deposed", old.node, old_term)
            )
            assert log.index(("deposed", old.node, old_term)) < log.index(
                ("elected", new.node, new_term)
            )
            expected_tick = (new.node, new_term)
            await until(groups, lambda: expected_tick in ticks)  # noqa: B023

        # Ticks ran only under the leadership of their node, and terms only grow.
        terms = [term for _, term in ticks]
        assert terms == sorted(terms)
        by_term: dict[int, set[int | None]] = {}
        for node, term in ticks:
            by_term.setdefault(term, set()).add(node)
        assert all(len(nodes) == 1 for nodes in by_term.values())


@pytest.mark.timeout(60)
async def test_engine_pool_is_left_clean_and_not_starved(dsn: str, namespace: str) -> None:
    engine = create_async_engine(sqlalchemy_url(dsn), pool_size=2, max_overflow=0)
    try:
        async with ElectionGroup(engine, namespace, FAST) as group:
            await group.wait_for_leadership(timeout=10)
            election_pid = backend_pid(group)
            # The application still gets its full pool while the group runs.
            async with engine.connect() as a, engine.connect() as b:
                pids = set()
                for conn in (a, b):
                    pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                    pids.add(pid)
                    channels = (
                        await conn.execute(text("SELECT count(*) FROM pg_listening_channels()"))
                    ).scalar_one()
                    assert channels == 0
                assert len(pids) == 2
                assert election_pid not in pids
        # After exit: no pooled connection carries a LISTEN or an advisory lock, and the
        # group's own sessions (terminated, so their backends end a moment later) are gone.
        async with engine.connect() as a, engine.connect() as b:
            for conn in (a, b):
                listening = (
                    await conn.execute(text("SELECT count(*) FROM pg_listening_channels()"))
                ).scalar_one()
                assert listening == 0

            async def advisory_locks() -> int:
                held = await a.execute(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database"
                        " = (SELECT oid FROM pg_database WHERE datname = current_database())"
                    )
                )
                await a.commit()
                return int(held.scalar_one())

            for _ in range(100):
                if await advisory_locks() == 0:
                    break
                await asyncio.sleep(0.05)
            assert await advisory_locks() == 0
            gone = (
                await a.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": election_pid},
                )
            ).scalar_one()
            assert gone == 0
    finally:
        await engine.dispose()


@pytest.mark.timeout(90)
async def test_terminated_backend_steps_down_at_once_reconnects_and_rejoins(
    throwaway_pg: ThrowawayPostgres, namespace: str
) -> None:
    async with AsyncExitStack() as stack:
        groups = [
            ElectionGroup(engine, namespace, FAST)
            for engine in await engines(stack, throwaway_pg.dsn, 3)
        ]
        for g in groups:
            await stack.enter_async_context(g)
        await until(groups, lambda: settled(groups), timeout=10)
        leader = next(g for g in groups if g.is_leader)
        seen: list[bool] = []
        original = leader._driver._on_lost

        def spy(exc: BaseException | None, generation: int) -> None:
            original(exc, generation)
            seen.append(leader.is_leader)

        leader._driver._on_lost = spy  # type: ignore[method-assign]
        old_pid = backend_pid(leader)
        admin = await asyncpg.connect(throwaway_pg.dsn)
        stack.push_async_callback(admin.close)
        started = time.monotonic()
        await admin.execute("SELECT pg_terminate_backend($1)", old_pid)
        await until(groups, lambda: not leader.is_leader, timeout=5)
        assert time.monotonic() - started < 5
        # The gates closed in the very callback that reported the loss.
        assert seen[:1] == [False]
        # It reconnects on a new backend, rejoins, and the group has one leader again.
        await until(
            groups, lambda: leader._driver.connected and backend_pid(leader) != old_pid, timeout=10
        )
        await until(groups, lambda: sum(g.is_leader for g in groups) == 1, timeout=10)
        members = await admin.fetchval(
            "SELECT count(*) FROM notifelect_status WHERE namespace = $1", namespace
        )
        assert members == 3


def via(dsn: str, port: int) -> str:
    """``dsn`` through a proxy listening on ``port`` of 127.0.0.1."""
    parts = urlsplit(dsn)
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.timeout(90)
async def test_a_lost_term_ends_where_its_lease_ran_out_while_followers_stay_ready(
    throwaway_pg: ThrowawayPostgres, namespace: str
) -> None:
    # The leader is cut off (its path to the server stops forwarding); the follower fences
    # it and takes over one lease later. The history row of the lost term ends where its
    # lease ran out, before the next term starts; the follower stayed ready throughout;
    # the cut-off node comes back with a new node id and the same metrics label.
    settings = Settings(election_interval=0.1, lease=1.0, leader_timeout=0.5)
    dsn = throwaway_pg.dsn
    admin = await asyncpg.connect(dsn)
    proxy = await FaultProxy("127.0.0.1", throwaway_pg.port).start()
    registry = CollectorRegistry()
    seen: list[Health] = []
    try:
        async with AsyncExitStack() as stack:
            cut = await stack.enter_async_context(
                ElectionGroup(via(dsn, proxy.port), namespace, settings)
            )
            lost = await cut.wait_for_leadership(timeout=10)
            follower = await stack.enter_async_context(ElectionGroup(dsn, namespace, settings))
            await until([follower], lambda: follower.health.leader_renewal_age is not None)
            age = follower.health.leader_renewal_age
            assert age is not None
            assert 0 <= age < settings.lease  # read from the leader's session renewals
            register(cut, follower, registry=registry)
            old_node = cut.node
            notify = follower._driver._notify

            def record() -> None:
                notify()
                seen.append(follower.health)

            follower._driver._notify = record
            before = await admin.fetchval("SELECT clock_timestamp()")
            proxy.set_mode(Mode.BLACKHOLE)
            after = await admin.fetchval("SELECT clock_timestamp()")
            won = await follower.wait_for_leadership(timeout=20)
            follower._driver._notify = notify
            proxy.set_mode(Mode.PASS)

            def back() -> bool:
                leader = cut.leader
                return cut.node != old_node and leader is not None and leader.term == won.term

            await until([cut], back, timeout=30)
            lines = samples(generate_latest(registry))
            vacancies = follower.vacancies
        history = {
            row["term"]: row
            for row in await admin.fetch(
                "SELECT term, started_at, ended_at, reason FROM notifelect_history"
                " WHERE namespace = $1",
                namespace,
            )
        }
    finally:
        await admin.close()
        await proxy.close()

    old, new = history[lost.term], history[won.term]
    assert old["reason"] == "lost"
    lease = timedelta(seconds=settings.lease)
    # Its last renewal came at most a few intervals before the cut and none after it.
    assert before + lease - timedelta(seconds=0.5) <= old["ended_at"]
    assert old["ended_at"] <= after + lease + timedelta(seconds=0.05)
    # The gap is the vacancy: the follower noticed the silence (leader_timeout), fenced,
    # and waited a whole lease from its claim.
    gap = (new["started_at"] - old["ended_at"]).total_seconds()
    assert 0.25 <= gap < 10
    # The follower never went unready, though it saw the group without a leader.
    assert any(not h.has_leader for h in seen)
    assert all(h.ready for h in seen)
    assert vacancies.count == 1
    assert vacancies.last is not None
    assert settings.lease - 0.05 <= vacancies.last < 10
    # The terms are exact in the metrics, and the cut-off node kept its label.
    assert sample(lines, "notifelect_term", follower) == won.term
    (info,) = labelled(lines, "notifelect_leader_info", cut)
    assert info["term"] == str(won.term)
    assert info["leader_node"] == str(follower.node)
    (node,) = labelled(lines, "notifelect_node_info", cut)
    assert node["node_id"] == str(cut.node) != str(old_node)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
@pytest.mark.timeout(120)
async def test_group_settles_on_one_leader_after_server_restart(
    throwaway_pg: ThrowawayPostgres, namespace: str, mode: str
) -> None:
    async with AsyncExitStack() as stack:
        groups = [
            ElectionGroup(engine, namespace, FAST)
            for engine in await engines(stack, throwaway_pg.dsn, 3)
        ]
        for g in groups:
            await stack.enter_async_context(g)
        await until(groups, lambda: sum(g.is_leader for g in groups) == 1, timeout=10)
        before = next(g for g in groups if g.is_leader).leadership
        assert before is not None
        generations = [g._driver._generation for g in groups]
        await asyncio.to_thread(throwaway_pg.restart, mode)
        # Every node noticed the loss and reconnected on a new connection...
        await until(
            groups,
            lambda: all(
                g._driver._generation > n for g, n in zip(groups, generations, strict=True)
            ),
            timeout=30,
        )
        # ...and the group settles on one leader with a new term.
        await until(groups, lambda: settled(groups), timeout=30)
        after = next(g for g in groups if g.is_leader).leadership
        assert after is not None
        assert after.term > before.term


@pytest.mark.timeout(60)
async def test_fencing_guard_refuses_writes_of_a_stale_term(
    dsn: str, namespace: str, engine: AsyncEngine
) -> None:
    settings = FAST.replace(preempt=False)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE audit (term bigint, note text)"))
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(ElectionGroup(dsn, namespace, settings))
        ls = await first.wait_for_leadership(timeout=10)
        async with engine.begin() as conn:
            await ls.fence(conn)
            await conn.execute(text("INSERT INTO audit VALUES (:t, 'ok')"), {"t": ls.term})
        second = await stack.enter_async_context(ElectionGroup(dsn, namespace, settings))
        await first.close()  # hands over: a new term
        await second.wait_for_leadership(timeout=10)
        # Locally the old leadership is over...
        with pytest.raises(NotLeaderError):
            ls.check()
        # ...and the database refuses its writes even if the local check were skipped
        # (a process paused between its check and its write).
        async with engine.connect() as conn, conn.begin():
            await conn.execute(text("INSERT INTO audit VALUES (:t, 'stale')"), {"t": ls.term})
            with pytest.raises(StaleLeaderError, match=f"term {ls.term} of group .* is stale"):
                await check_term(conn, settings.names, namespace, ls.term)
            await conn.rollback()  # what an application does when the guard raises
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT note FROM audit"))).scalars().all()
    assert rows == ["ok"]


@pytest.mark.timeout(60)
async def test_new_term_waits_for_an_open_fenced_transaction(
    dsn: str, namespace: str, engine: AsyncEngine
) -> None:
    settings = FAST.replace(preempt=False)
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(ElectionGroup(dsn, namespace, settings))
        ls = await first.wait_for_leadership(timeout=10)
        second = await stack.enter_async_context(ElectionGroup(dsn, namespace, settings))
        waiting = asyncio.ensure_future(second.wait_for_leadership(timeout=20))
        async with engine.begin() as conn:
            await ls.fence(conn)  # holds the term row FOR SHARE until commit
            closing = asyncio.create_task(first.close())
            await until([first], lambda: not first.is_leader)
            # The successor holds the claim but cannot take its term while the guarded
            # transaction is open: an observation window, not synchronisation.
            done, _ = await asyncio.wait([waiting], timeout=0.5)
            assert not done
            assert not second.is_leader
        await closing
        new = await waiting
        assert new.term > ls.term
