"""A run that used to leave interpreter noise behind (see test_safety.py).

``python -m tests.integration.noisy_run DSN``: three groups whose leader's backend is
terminated again and again, then groups closed while they reconnect (their address
refusing, or silent mid-connect), then groups opened in a gather where one fails to open
(the others are still open when the run ends).
Everything the library starts must be awaited or retrieved: stderr stays clean.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from notifelect import ElectionGroup, RetryPolicy, SchemaError, Settings
from notifelect.transport.postgres import PostgresTransport
from tests.support.proxy import FaultProxy, Mode
from tests.support.waiting import eventually


async def main(dsn: str) -> None:
    fast = Settings(election_interval=0.05, election_timeout=0.01, lease=0.3, leader_timeout=0.2)
    groups = [ElectionGroup(dsn, "noise", fast) for _ in range(3)]
    admin = await asyncpg.connect(dsn)
    for g in groups:
        await g.__aenter__()
    for _ in range(10):
        await asyncio.sleep(0.3)  # the fault schedule
        leader = next((g for g in groups if g.is_leader), None)
        if leader is None:
            continue
        transport = leader._transport
        assert isinstance(transport, PostgresTransport)
        if transport.connection is not None:
            pid = transport.connection.get_server_pid()
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
    for g in groups:
        await g.close()
    await admin.close()
    gc.collect()

    for mode in ("refusing", "silent"):
        await closed_while_reconnecting(dsn, mode)
        gc.collect()

    async def opened(group: ElectionGroup) -> None:
        async with group:
            await asyncio.sleep(0.5)  # held open while the others fail

    bad = ElectionGroup(dsn, "noise", Settings(prefix="nosuch_"))
    good = [ElectionGroup(dsn, "noise2", fast) for _ in range(3)]
    try:
        await asyncio.gather(*(opened(g) for g in good), opened(bad))
    except SchemaError:
        print("the bad group failed to open")


async def closed_while_reconnecting(dsn: str, mode: str) -> None:
    """Three groups on one session lose their database and are closed while they try to
    reconnect: between attempts (the address refuses) or during one (it never answers)."""
    parts = urlsplit(dsn)
    assert parts.port is not None
    proxy = await FaultProxy("127.0.0.1", parts.port).start()
    via = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    fast = Settings(
        election_interval=0.05,
        election_timeout=0.01,
        lease=0.3,
        leader_timeout=0.2,
        connect_timeout=5.0,
        retry=RetryPolicy(initial=0.05, maximum=5.0),
    )
    groups = [ElectionGroup(via, f"noise-{mode}-{i}", fast) for i in range(3)]
    for g in groups:
        await g.__aenter__()
    opened = proxy.stats.connections
    if mode == "refusing":
        await proxy.close()
    else:
        proxy.set_mode(Mode.BLACKHOLE)
    if mode == "silent":
        await eventually(lambda: proxy.stats.connections > opened, timeout=10)  # an attempt
    else:  # every group waits before its next attempt
        await eventually(lambda: all(g.stats["reconnect_failures"] for g in groups), timeout=10)
    for g in groups:
        await g.close()
    await proxy.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(sys.argv[1]))
    gc.collect()
    print("done")
