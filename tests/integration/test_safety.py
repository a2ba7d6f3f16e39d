"""Safety details on a real PostgreSQL: clocks, cancelled closes, terms across failovers,
and nothing left unretrieved."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from notifelect import ElectionGroup, Settings, _clock
from notifelect.messages import Kind, Message, Rank, encode
from notifelect.schema import Names
from notifelect.transport.postgres import PostgresTransport
from tests.support.proxy import FaultProxy, Mode
from tests.support.servers import ThrowawayPostgres
from tests.support.waiting import until

ROOT = Path(__file__).resolve().parents[2]
FAST = Settings(election_interval=0.1, lease=1.0, leader_timeout=0.5)


async def record_a_gone_leader(
    conn: asyncpg.Connection[Any], namespace: str, *, renewed: str
) -> None:
    """Record term 1 of node 999999 (no such process), last renewed at ``renewed``."""
    await conn.execute("INSERT INTO notifelect_term (namespace, term) VALUES ($1, 1)", namespace)
    await conn.execute(
        "INSERT INTO notifelect_leader (namespace, term, node, priority, host, pid,"
        " backend_pid, since, renewed_at, released) VALUES ($1, 1, 999999, 0, 'gone', 1,"
        f" 1, {renewed}, {renewed}, false)",
        namespace,
    )


def test_leases_run_on_a_clock_that_counts_a_suspend() -> None:
    if sys.platform.startswith("linux"):
        assert _clock.CLOCK_NAME == "CLOCK_BOOTTIME"
    # No lease, timer or wait of the library reads the monotonic clock directly (the
    # command line and the process harness of the demo, tests and benchmarks aside).
    for source in (ROOT / "notifelect").rglob("*.py"):
        if source.parent.name in ("cli", "_cluster") or source.name == "_clock.py":
            continue
        assert "time.monotonic" not in source.read_text(), source


@pytest.mark.timeout(60)
async def test_a_server_clock_step_does_not_shorten_the_successors_wait(
    dsn: str, namespace: str
) -> None:
    # The previous leader's last renewal looks an hour old, as it does after the server's
    # clock jumped forward: its lease must still be waited out on the successor's clock.
    conn = await asyncpg.connect(dsn)
    try:
        await record_a_gone_leader(conn, namespace, renewed="now() - interval '1 hour'")
    finally:
        await conn.close()
    async with ElectionGroup(dsn, namespace, FAST) as group:
        started = _clock.now()
        await group.wait_for_leadership(timeout=20)
        assert _clock.now() - started >= FAST.lease


@pytest.mark.timeout(60)
async def test_cancelling_close_still_tears_everything_down(dsn: str, namespace: str) -> None:
    group = ElectionGroup(dsn, namespace, FAST)
    await group.__aenter__()
    await group.wait_for_leadership(timeout=10)
    transport = group._transport
    assert isinstance(transport, PostgresTransport)
    assert transport.connection is not None
    assert transport.anchor is not None
    pids = [transport.connection.get_server_pid(), transport.anchor.get_server_pid()]
    closing = asyncio.ensure_future(group.close())
    await asyncio.sleep(0)  # let close() begin
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    admin = await asyncpg.connect(dsn)
    try:
        for _ in range(200):  # the server notices the terminated sessions within moments
            left = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
            )
            if left == 0:
                break
            await asyncio.sleep(0.05)
        assert left == 0
        key = Names().claim_key(namespace)
        assert await admin.fetchval("SELECT pg_try_advisory_lock($1)", key)  # the claim is free
    finally:
        await admin.close()
    started = time.monotonic()
    await group.close()  # idempotent, and nothing left to do
    assert time.monotonic() - started < 0.1
    assert not group.is_open


@pytest.mark.timeout(60)
async def test_terms_stay_unique_when_a_database_failover_loses_the_last_bump(
    dsn: str, namespace: str
) -> None:
    async with ElectionGroup(dsn, namespace, FAST) as first:
        ls = await first.wait_for_leadership(timeout=10)
        admin = await asyncpg.connect(dsn)
        try:
            # What an asynchronous replica promoted a moment too early would hold.
            await admin.execute(
                "UPDATE notifelect_term SET term = term - 1 WHERE namespace = $1", namespace
            )
        finally:
            await admin.close()
    async with ElectionGroup(dsn, namespace, FAST) as second:
        again = await second.wait_for_leadership(timeout=10)
        assert again.term > ls.term


@pytest.mark.timeout(120)
def test_nothing_is_left_unretrieved(throwaway_pg: ThrowawayPostgres) -> None:
    # A server of its own, over TCP: the run proxies its connections to it.
    run = subprocess.run(
        [sys.executable, "-m", "tests.integration.noisy_run", throwaway_pg.dsn],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 0, run.stderr
    assert "done" in run.stdout
    for noise in ("Traceback", "never retrieved", "Task was destroyed", "unexpected error"):
        assert noise not in run.stderr, run.stderr


@pytest.mark.timeout(60)
async def test_a_replayed_heartbeat_does_not_keep_a_silent_leader_in_place(
    throwaway_pg: ThrowawayPostgres, namespace: str
) -> None:
    # The leader is cut off; somebody replays its genuine heartbeat on the channel. The
    # followers re-check the database at least every leader_timeout and replace it. (A
    # server of its own: the leader's path goes through a TCP proxy.)
    dsn = throwaway_pg.dsn
    proxy = await FaultProxy("127.0.0.1", throwaway_pg.port).start()
    proxied = _via(dsn, proxy.port)
    sender = await asyncpg.connect(dsn)
    try:
        async with contextlib.AsyncExitStack() as stack:
            a = await stack.enter_async_context(ElectionGroup(proxied, namespace, FAST))
            ls = await a.wait_for_leadership(timeout=10)  # alone, so it leads
            b = await stack.enter_async_context(ElectionGroup(dsn, namespace, FAST))
            await b.wait_for_leader(timeout=10)
            assert a.node is not None
            heartbeat = encode(Message(Kind.HEARTBEAT, namespace, Rank(0, a.node), term=ls.term))
            channel = Names().group_channel(namespace)
            proxy.set_mode(Mode.BLACKHOLE)

            async def replay() -> None:
                while True:
                    await sender.execute("SELECT pg_notify($1, $2)", channel, heartbeat)
                    await asyncio.sleep(0.05)  # the attacker's cadence

            replaying = asyncio.create_task(replay())
            try:
                started = time.monotonic()
                await b.wait_for_leadership(timeout=20)
                took = time.monotonic() - started
            finally:
                replaying.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replaying
            # Silence detection, one re-check, fencing and a whole lease: well bounded.
            assert took < 4 * (FAST.leader_timeout + FAST.lease)
            assert b.stats["dropped:silent leader"] > 0
            proxy.set_mode(Mode.PASS)
    finally:
        await sender.close()
        await proxy.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("step", ["60 seconds", "1 year"])
async def test_a_server_clock_step_back_does_not_stall_the_take_over(
    throwaway_pg: ThrowawayPostgres, namespace: str, step: str
) -> None:
    # The leader is cut off just after its last renewal, and the server's clock steps
    # back (or comes back from a jump ahead): that renewal now lies in the database's
    # future. Silence is judged on the followers' own clocks, by the renewals that stop
    # changing, so the take-over takes what it always does.
    dsn = throwaway_pg.dsn
    proxy = await FaultProxy("127.0.0.1", throwaway_pg.port).start()
    admin = await asyncpg.connect(dsn)
    try:
        async with contextlib.AsyncExitStack() as stack:
            proxied = ElectionGroup(_via(dsn, proxy.port), namespace, FAST)
            a = await stack.enter_async_context(proxied)
            await a.wait_for_leadership(timeout=10)  # alone, so it leads
            b = await stack.enter_async_context(ElectionGroup(dsn, namespace, FAST))
            await b.wait_for_leader(timeout=10)
            proxy.set_mode(Mode.BLACKHOLE)
            cut = time.monotonic()
            await admin.execute(
                f"UPDATE notifelect_session SET renewed_at = clock_timestamp() + interval '{step}'"
                " WHERE node = $1",
                a.node,
            )
            await admin.execute(
                f"UPDATE notifelect_leader SET renewed_at = clock_timestamp() + interval '{step}'"
                " WHERE namespace = $1",
                namespace,
            )
            await b.wait_for_leadership(timeout=20)
            took = time.monotonic() - cut
            # Silence, fencing and a whole lease, with room to spare; not the step.
            assert took < 2 * (FAST.leader_timeout + FAST.lease) + 1.0, took
            proxy.set_mode(Mode.PASS)
    finally:
        proxy.set_mode(Mode.PASS)
        await admin.close()
        await proxy.close()


@pytest.mark.timeout(60)
async def test_a_stuck_claimer_is_fenced(dsn: str, namespace: str) -> None:
    # A session took the claim to take over from a gone leader, then froze while waiting
    # out the lease (a SIGSTOP in that moment): it holds the lock but never leads. It must
    # not keep the group leaderless.
    stuck = await asyncpg.connect(dsn)
    try:
        await record_a_gone_leader(stuck, namespace, renewed="now()")
        await stuck.execute("SELECT pg_advisory_lock($1)", Names().claim_key(namespace))
        stuck_pid = stuck.get_server_pid()
        async with ElectionGroup(dsn, namespace, FAST) as group:
            await group.wait_for_leadership(timeout=30)
        admin = await asyncpg.connect(dsn)
        try:
            alive = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", stuck_pid
            )
        finally:
            await admin.close()
        assert alive == 0  # it was fenced out
    finally:
        stuck.terminate()


@pytest.mark.timeout(60)
async def test_standby_watchers_leave_no_backend_behind(dsn: str, namespace: str) -> None:
    # Members come and go while one leader stays: each standby's watcher is dropped when
    # the standby changes, and its backend, blocked on a lock, must not linger.
    # (Newcomers of a higher priority become the standby; no one preempts the leader.)
    steady = FAST.replace(preempt="never")
    admin = await asyncpg.connect(dsn)
    try:
        async with contextlib.AsyncExitStack() as stack:
            leader = await stack.enter_async_context(ElectionGroup(dsn, namespace, steady))
            await leader.wait_for_leadership(timeout=10)  # alone, so it leads
            standby = await stack.enter_async_context(ElectionGroup(dsn, namespace, steady))
            await standby.wait_for_leader(timeout=10)
            for _ in range(4):  # each newcomer becomes the standby, then leaves
                async with ElectionGroup(dsn, namespace, steady.replace(priority=1)) as member:
                    await member.wait_for_leader(timeout=10)
                    await until([leader], lambda: _standby_is(leader, member), timeout=10)

            async def waiting() -> int:
                return int(
                    await admin.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                )

            for _ in range(100):  # dropped watchers notice their client is gone
                if await waiting() <= 1:
                    break
                await asyncio.sleep(0.05)
            left = await admin.fetch(
                "SELECT pid, application_name, state, query, now() - state_change AS waited"
                " FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            # the standby's one watcher, nothing left behind
            assert len(left) <= 1, [dict(row) for row in left]
    finally:
        await admin.close()


def _standby_is(leader: ElectionGroup, member: ElectionGroup) -> bool:
    proto = member._driver.proto
    return proto is not None and proto.watching == leader.node


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.timeout(60)
async def test_a_session_ended_by_the_server_is_reported_as_such_before_its_close_is_seen(
    throwaway_pg: ThrowawayPostgres, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The server ends the election session; the client reads the server's notice of it but
    # not yet that the connection closed (as after a freeze of the process, or a slow
    # path). asyncpg is left consuming the notice, and the next call finds the connection
    # busy ("another operation is in progress"): no call of notifelect ran beside another,
    # the session had ended. It is lost, and says why.
    dsn = throwaway_pg.dsn
    proxy = await FaultProxy("127.0.0.1", throwaway_pg.port).start()
    admin = await asyncpg.connect(dsn)
    caplog.set_level(logging.WARNING, logger="notifelect")
    try:
        async with ElectionGroup(_via(dsn, proxy.port), namespace, FAST) as group:
            await group.wait_for_leadership(timeout=10)
            transport = group._transport
            assert isinstance(transport, PostgresTransport)
            assert transport.connection is not None
            pid = transport.connection.get_server_pid()
            proxy.set_mode(Mode.HOLD_CLOSE)
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)

            def lost() -> list[str]:
                return [
                    r.getMessage()
                    for r in caplog.records
                    if getattr(r, "notifelect_event", None) == "session_lost"
                ]

            await until([group], lost, timeout=20, what="the session lost")
            (message,) = lost()[:1]
            assert "ended the session" in message or "was closed" in message, message
            proxy.set_mode(Mode.PASS)
            await group.wait_for_leadership(timeout=20)  # a new session leads again
    finally:
        proxy.set_mode(Mode.PASS)
        await admin.close()
        await proxy.close()
