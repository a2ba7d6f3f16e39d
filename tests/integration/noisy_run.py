"""A run that used to leave interpreter noise behind (see test_safety.py).

``python -m tests.integration.noisy_run DSN``: three groups whose leader's backend is
terminated again and again, then groups opened in a gather where one fails to open.
Everything the library starts must be awaited or retrieved: stderr stays clean.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

import asyncpg

from notifelect import ElectionGroup, SchemaError, Settings
from notifelect.transport.postgres import PostgresTransport


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

    async def opened(group: ElectionGroup) -> None:
        async with group:
            await asyncio.sleep(0.5)  # held open while the others fail

    bad = ElectionGroup(dsn, "noise", Settings(prefix="nosuch_"))
    good = [ElectionGroup(dsn, "noise2", fast) for _ in range(3)]
    try:
        await asyncio.gather(*(opened(g) for g in good), opened(bad))
    except SchemaError:
        print("the bad group failed to open")


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(sys.argv[1]))
    gc.collect()
    print("done")
