"""The election on a real PostgreSQL: namespaces, hand-over, loss."""

from __future__ import annotations

import asyncio
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import pytest

from notifelect import ElectionGroup, Settings, messages
from notifelect._cluster.harness import Cluster
from notifelect.messages import Kind
from notifelect.schema import Names
from notifelect.transport.postgres import PostgresTransport
from notifelect.transport.session import Session
from tests.support.waiting import settled, until


@pytest.mark.timeout(30)
async def test_two_namespaces_elect_independent_leaders(dsn: str) -> None:
    async with AsyncExitStack() as stack:
        groups: dict[str, list[ElectionGroup]] = {"alpha": [], "beta": []}
        for name, members in groups.items():
            for _ in range(3):
                members.append(await stack.enter_async_context(ElectionGroup(dsn, name)))
        every = groups["alpha"] + groups["beta"]
        await until(every, lambda: all(settled(ms) for ms in groups.values()), timeout=10)
        leaders = {name: next(g for g in ms if g.is_leader) for name, ms in groups.items()}
        # Groups on one DSN share the process's sessions: three nodes serve both groups.
        assert {g.node for g in groups["alpha"]} == {g.node for g in groups["beta"]}
        assert len({g.node for g in every}) == 3
        # Stopping alpha's leader does not disturb beta, even on a shared session.
        beta_term = leaders["beta"].leadership.term  # type: ignore[union-attr]
        await leaders["alpha"].close()
        rest = [g for g in groups["alpha"] if g is not leaders["alpha"]]
        await until(rest, lambda: sum(g.is_leader for g in rest) == 1, timeout=5)
        assert leaders["beta"].is_leader
        assert leaders["beta"].leadership.term == beta_term  # type: ignore[union-attr]


@pytest.mark.timeout(30)
async def test_leader_leaving_hands_over_within_half_a_second(dsn: str, namespace: str) -> None:
    async with AsyncExitStack() as stack:
        groups = [await stack.enter_async_context(ElectionGroup(dsn, namespace)) for _ in range(5)]
        await until(groups, lambda: settled(groups), timeout=10)
        for _ in range(3):
            leader = next(g for g in groups if g.is_leader)
            groups.remove(leader)
            started = time.monotonic()
            await leader.close()
            await until(groups, lambda: sum(g.is_leader for g in groups) == 1, timeout=5)
            assert time.monotonic() - started < 0.5
            assert not leader.is_leader


@pytest.mark.timeout(30)
async def test_a_hand_over_wakes_the_successor_alone(dsn: str, namespace: str) -> None:
    """The RESIGN of a clean hand-over goes on the successor's own channel: the group's
    channel carries none of it, and the other members learn the new leader from the
    leader row, as they learn of every leader."""
    heard: list[str] = []
    listener = await asyncpg.connect(dsn)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(listener.close)
        await listener.add_listener(
            Names().group_channel(namespace), lambda *args: heard.append(args[3])
        )
        groups = [await stack.enter_async_context(ElectionGroup(dsn, namespace)) for _ in range(4)]
        await until(groups, lambda: settled(groups), timeout=10)
        leader = next(g for g in groups if g.is_leader)
        groups.remove(leader)
        before = len(heard)
        await leader.close()
        await until(groups, lambda: settled(groups), timeout=5)
        sent = [messages.parse(payload, namespace) for payload in heard[before:]]
        assert not [m for m in sent if isinstance(m, messages.Message) and m.kind is Kind.RESIGN]


@pytest.mark.timeout(30)
async def test_node_whose_connection_is_terminated_is_never_leader_after(
    dsn: str, namespace: str
) -> None:
    settings = Settings(namespace=namespace)
    async with AsyncExitStack() as stack:
        conns = [await asyncpg.connect(dsn) for _ in range(3)]
        for conn in conns:
            stack.push_async_callback(conn.close)
        groups = [
            await stack.enter_async_context(ElectionGroup(conn, settings=settings))
            for conn in conns
        ]
        await until(groups, lambda: settled(groups), timeout=10)
        leader = next(g for g in groups if g.is_leader)
        victim = conns[groups.index(leader)]
        admin = await asyncpg.connect(dsn)
        stack.push_async_callback(admin.close)
        await admin.execute("SELECT pg_terminate_backend($1)", victim.get_server_pid())
        await until(groups, lambda: not leader.is_leader, timeout=5)
        others = [g for g in groups if g is not leader]
        # No anchor on a borrowed connection: the others notice the silence, then wait out
        # the lease (leader_timeout + lease + jitter; the bound is generous).
        await until(others, lambda: sum(g.is_leader for g in others) == 1, timeout=15)
        # A borrowed connection cannot be replaced: the node stays out for good.
        await asyncio.sleep(0.5)  # observation window
        assert not leader.is_leader
        assert sum(g.is_leader for g in groups) == 1


@pytest.mark.timeout(30)
async def test_a_borrowed_connection_is_left_listening_on_nothing(dsn: str, namespace: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with ElectionGroup(conn, namespace) as group:
            await group.wait_for_leadership(timeout=10)
            # The group's channel and the node's own channel.
            assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 2
        assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
    finally:
        await conn.close()


@pytest.mark.timeout(60)
async def test_a_borrowed_connection_listens_only_for_its_live_session_after_losses(
    dsn: str, namespace: str
) -> None:
    """A group on a borrowed connection whose session is lost while the connection lives
    (its row deleted from the session table) comes back on the same connection as a new
    node. What the lost session listened on goes with it: after each of three losses the
    connection listens on the group's channel and the new node's own channel, no more,
    and no listener callback keeps a lost session."""
    settings = Settings(
        namespace=namespace, election_interval=0.1, election_timeout=0.05, lease=0.5,
        leader_timeout=0.5,
    )  # fmt: skip
    names = Names()
    conn = await asyncpg.connect(dsn)
    admin = await asyncpg.connect(dsn)
    try:
        async with ElectionGroup(conn, settings=settings) as group:
            await group.wait_for_leadership(timeout=10)
            transport = group._transport
            assert isinstance(transport, PostgresTransport)
            lost: list[Session] = []
            for _ in range(3):
                old = transport.session
                assert old is not None
                assert old.node is not None
                lost.append(old)
                await admin.execute(f"DELETE FROM {names.session} WHERE node = $1", old.node)
                gone = {None, old.node}
                await until(
                    [group],
                    lambda: group.node not in gone and transport.session is not None,  # noqa: B023
                    timeout=10,
                    what="the group back as a new node",
                )
                live = transport.session
                assert live is not None
                assert live is not old
                assert live.serial is not None
                assert live.node is not None
                assert group.node == live.node
                wanted = {names.group_channel(namespace), names.node_channel(live.node)}
                # The server's view, asked through the session's own turns on the
                # connection (never beside one of its calls).
                rows = await live.serial.fetch("SELECT pg_listening_channels() AS c")
                assert {row["c"] for row in rows} == wanted
                listeners = conn._listeners  # type: ignore[attr-defined]
                assert set(listeners) == wanted
                owners = {id(cb.cb.__self__) for cbs in listeners.values() for cb in cbs}
                assert owners == {id(live)}
                assert not {id(s) for s in lost} & owners
            # The lost sessions let go of the connection in turns with the new ones: no
            # reconnect met a call of theirs in progress.
            assert group.stats["reconnect_failures"] == 0
    finally:
        await admin.close()
        await conn.close()


@pytest.mark.timeout(60)
async def test_a_hand_over_to_a_frozen_successor_is_noticed_at_the_next_reading(
    dsn: str, namespace: str, tmp_path: Path
) -> None:
    """The successor a leaving leader names is a stopped process (SIGSTOP: its session
    lives, its RESIGN waits unread). The other members see the leader row released at
    their next reading and let the departed leader go; one of them leads within a few
    ``coordinator_wait``, not after their whole ``leader_timeout`` (5 s here)."""
    settings = Settings(election_interval=0.25, lease=1.0, leader_timeout=5.0)
    timing = ["--interval", "0.25", "--lease", "1.0", "--leader-timeout", "5.0"]
    async with Cluster(dsn, tmp_path, namespace, argv=timing) as cluster, AsyncExitStack() as stack:
        leader = await stack.enter_async_context(
            ElectionGroup(dsn, namespace, settings.replace(priority=2))
        )
        await leader.wait_for_leadership(timeout=10)
        (heir,) = await cluster.spawn(1, ["--priority", "1"])
        rest = [
            await stack.enter_async_context(ElectionGroup(dsn, namespace, settings))
            for _ in range(2)
        ]
        old = (leader.node, leader.leadership.term)  # type: ignore[union-attr]
        await until(
            rest,
            lambda: all(g.leader is not None and g.leader.node == old[0] for g in rest),
            timeout=10,
        )
        await cluster.until(lambda: heir.sees == old, timeout=10, what="the heir follows")
        cluster.signal(heir, signal.SIGSTOP)
        try:
            await leader.close()
            await until(
                rest,
                lambda: all(g.leader is None or g.leader.node != old[0] for g in rest),
                timeout=1.5,
                what="the followers let the departed leader go",
            )
            await until(rest, lambda: any(g.is_leader for g in rest), timeout=4.0)
        finally:
            cluster.signal(heir, signal.SIGCONT)
