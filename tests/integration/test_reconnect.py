"""Reconnecting: several hosts, a host that never answers, failures that are said, and a
close that does not wait for any of it.

A :class:`FaultProxy` in ``blackhole`` mode stands for a host that drops every packet: it
accepts connections and never answers (counted in its stats).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from urllib.parse import urlsplit

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import QueuePool

from notifelect import ElectionGroup, HealthState, RetryPolicy, Settings
from notifelect.transport.postgres import PostgresTransport
from tests.support.proxy import FaultProxy, Mode
from tests.support.servers import ThrowawayPostgres
from tests.support.waiting import until

FAST = Settings(election_interval=0.1, lease=0.5, leader_timeout=0.5, connect_timeout=0.5)
#: What closing while reconnecting may take at most here: far less than the connect
#: attempt (5 s) or the backoff (5 s) it cuts short.
CLOSE_BOUND = 2.5


def _hosts(dsn: str, *ports: int) -> str:
    """``dsn`` going to 127.0.0.1 on each of ``ports`` in turn (SQLAlchemy's form)."""
    parts = urlsplit(dsn)
    hosts = "&".join(f"host=127.0.0.1:{port}" for port in ports)
    return f"postgresql://{parts.username}@{parts.path}?{hosts}"


def _port(dsn: str) -> int:
    port = urlsplit(dsn).port
    assert port is not None
    return port


@pytest.fixture
def dsn(throwaway_pg: ThrowawayPostgres) -> str:
    """A server reached over TCP (the hosts below are 127.0.0.1 ports), of this test's own:
    the shared one may be an embedded server on a Unix socket."""
    return throwaway_pg.dsn


@pytest.fixture
async def silent() -> AsyncIterator[FaultProxy]:
    """A host that accepts connections and never answers."""
    proxy = await FaultProxy("127.0.0.1", 9).start()  # never reached: black-holed
    proxy.set_mode(Mode.BLACKHOLE)
    yield proxy
    await proxy.close()


async def _backends(group: ElectionGroup) -> list[int]:
    transport = group._transport
    assert isinstance(transport, PostgresTransport)
    assert transport.session is not None
    return transport.session.backend_pids()


@pytest.mark.timeout(60)
async def test_a_silent_first_host_costs_one_budget_then_goes_last(
    dsn: str, namespace: str, silent: FaultProxy
) -> None:
    # Repeated host parameters (SQLAlchemy's multi-host form) in a DSN string: every host
    # is kept, the silent one is given up after its budget, and the session's other
    # connections (probe, anchor) and its reconnects go to the host that answered.
    multi = _hosts(dsn, silent.port, _port(dsn))
    admin = await asyncpg.connect(dsn)
    try:
        async with ElectionGroup(multi, namespace, FAST) as group:
            await group.wait_for_leadership(timeout=10)
            assert silent.stats.connections == 1
            for pid in await _backends(group):
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
            await until([group], lambda: not group.is_leader, what="the loss noticed")
            await group.wait_for_leadership(timeout=10)
            assert group.stats["reconnects"] >= 1
            assert silent.stats.connections == 1
    finally:
        await admin.close()


@pytest.mark.timeout(60)
async def test_an_engine_with_several_hosts_keeps_its_settings(
    dsn: str, namespace: str, silent: FaultProxy
) -> None:
    # A SQLAlchemy multi-host URL whose first host is silent (asyncpg alone would spend its
    # whole connect timeout there): the election's connections honour the engine's
    # connect_args and never touch its pool.
    url = _hosts(dsn, silent.port, _port(dsn)).replace("postgresql://", "postgresql+asyncpg://")
    engine = create_async_engine(
        url,
        pool_size=1,
        max_overflow=0,
        connect_args={"timeout": 30, "server_settings": {"application_name": "billing"}},
    )
    admin = await asyncpg.connect(dsn)
    try:
        async with ElectionGroup(engine, namespace, FAST) as group:
            await group.wait_for_leadership(timeout=10)
            names = await admin.fetch(
                "SELECT application_name FROM pg_stat_activity WHERE pid = ANY($1::int[])",
                await _backends(group),
            )
            assert {r["application_name"] for r in names} == {"billing"}
            assert silent.stats.connections == 1
            pool = engine.sync_engine.pool
            assert isinstance(pool, QueuePool)
            assert pool.checkedin() == pool.checkedout() == 0  # nothing of its pool used
    finally:
        await admin.close()
        await engine.dispose()


@pytest.mark.timeout(60)
async def test_an_engine_whose_hosts_come_from_pghost_tries_them_in_turn(
    dsn: str, namespace: str, silent: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An engine URL without a host: asyncpg reads $PGHOST itself and would spend its
    # whole timeout on a silent first host; the election tries each host in turn.
    monkeypatch.setenv("PGHOST", "127.0.0.1,127.0.0.1")
    monkeypatch.setenv("PGPORT", f"{silent.port},{_port(dsn)}")
    parts = urlsplit(dsn)
    engine = create_async_engine(f"postgresql+asyncpg://{parts.username}@{parts.path}")
    try:
        async with ElectionGroup(engine, namespace, FAST) as group:
            await group.wait_for_leadership(timeout=10)
            assert silent.stats.connections == 1  # tried first, given up, then last
    finally:
        await engine.dispose()


@pytest.mark.timeout(60)
async def test_closing_cuts_a_hanging_connect_attempt_short(dsn: str, namespace: str) -> None:
    settings = FAST.replace(connect_timeout=5.0)
    async with FaultProxy("127.0.0.1", _port(dsn)) as proxy:
        via = _hosts(dsn, proxy.port)
        group = ElectionGroup(via, namespace, settings)
        await group.__aenter__()
        try:
            await group.wait_for_leadership(timeout=10)
            opened = proxy.stats.connections
            proxy.set_mode(Mode.BLACKHOLE)  # the session is lost within io_timeout
            await until(
                [group],
                lambda: proxy.stats.connections > opened,
                timeout=10,
                what="a reconnect attempt under way",
            )
        finally:
            started = time.monotonic()
            await group.close()
            took = time.monotonic() - started
        assert took < CLOSE_BOUND, f"close took {took:.2f}s"


@pytest.mark.timeout(60)
async def test_closing_cuts_the_backoff_short_and_failures_are_said(
    dsn: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="notifelect")
    settings = FAST.replace(retry=RetryPolicy(initial=5.0, maximum=5.0, jitter=0.0))
    proxy = await FaultProxy("127.0.0.1", _port(dsn)).start()
    group = ElectionGroup(_hosts(dsn, proxy.port), namespace, settings)
    await group.__aenter__()
    try:
        await group.wait_for_leadership(timeout=10)
        await proxy.close()  # the address refuses from now on

        def warned() -> list[logging.LogRecord]:
            return [
                r
                for r in caplog.records
                if getattr(r, "notifelect_event", None) == "reconnect_failing"
            ]

        await until([group], warned, timeout=10, what="a failing reconnect said")
        (record,) = warned()
        assert record.levelno == logging.WARNING
        assert getattr(record, "notifelect_attempts", None) == 1
        assert "Connect call failed" in getattr(record, "notifelect_error", "")
        assert group.health.state is HealthState.CONNECTING
    finally:
        started = time.monotonic()
        await group.close()
        took = time.monotonic() - started
    assert took < CLOSE_BOUND, f"close took {took:.2f}s"


@pytest.mark.timeout(60)
async def test_failing_reconnects_are_said_once_per_interval_per_group(
    dsn: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Three groups on one session, retrying every 20 ms against an address that refuses:
    # every failure is counted, one warning per group is logged, and closing them all
    # takes no time.
    caplog.set_level(logging.WARNING, logger="notifelect")
    settings = FAST.replace(retry=RetryPolicy(initial=0.02, maximum=0.02, jitter=0.0))
    proxy = await FaultProxy("127.0.0.1", _port(dsn)).start()
    via = _hosts(dsn, proxy.port)
    names = [namespace, f"{namespace}-b", f"{namespace}-c"]
    async with AsyncExitStack() as stack:
        groups = [
            await stack.enter_async_context(ElectionGroup(via, name, settings)) for name in names
        ]
        await until(groups, lambda: all(g.leader for g in groups), timeout=10, what="led")
        await proxy.close()
        await until(
            groups,
            lambda: all(g.stats["reconnect_failures"] >= 5 for g in groups),
            timeout=10,
            what="five failures in every group",
        )
        said = [
            r.notifelect_namespace  # type: ignore[attr-defined]
            for r in caplog.records
            if getattr(r, "notifelect_event", None) == "reconnect_failing"
        ]
        assert sorted(said) == sorted(names)
        started = time.monotonic()
    took = time.monotonic() - started
    assert took < CLOSE_BOUND, f"closing three groups took {took:.2f}s"
    await asyncio.sleep(0)  # let the loop run the done callbacks of what was cancelled


@pytest.mark.timeout(60)
async def test_a_lone_host_slow_to_let_sessions_in_gets_the_whole_io_timeout(
    dsn: str, namespace: str
) -> None:
    # One host, at the default settings: the server lets new sessions in only after
    # 1.4 s (as when a hundred processes start at once on a busy server). That is beyond
    # half of io_timeout, the budget of each host of a multi-host URL, and within the
    # whole of it, which a lone host gets: the join waits rather than failing.
    settings = Settings()
    assert settings.host_timeout < 1.4 < settings.lone_host_timeout
    async with FaultProxy("127.0.0.1", _port(dsn)) as slow:
        slow.set_mode(Mode.BLACKHOLE)
        asyncio.get_running_loop().call_later(1.4, slow.set_mode, Mode.PASS)
        lone = urlsplit(dsn)._replace(netloc=f"{urlsplit(dsn).username}@127.0.0.1:{slow.port}")
        started = time.monotonic()
        async with ElectionGroup(lone.geturl(), namespace, settings) as group:
            assert time.monotonic() - started >= 1.4  # it did wait for the slow host
            assert group.node is not None
        assert slow.stats.connections >= 2  # the election connection and the anchor
