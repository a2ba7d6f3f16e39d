"""``status --watch`` and ``listen`` run through a restart of the database."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from notifelect import Names
from notifelect.messages import Kind, Message, Rank, encode
from tests.cli.running import cli_argv, spawn
from tests.support.servers import ThrowawayPostgres


def said(lines: list[str], words: str) -> int:
    return sum(words in line for line in lines)


@pytest.mark.timeout(90)
async def test_watch_and_listen_say_when_the_database_goes_and_comes_back(
    throwaway_pg: ThrowawayPostgres, namespace: str
) -> None:
    dsn = throwaway_pg.dsn
    watch_argv = cli_argv("status", "--watch", "--json", "--interval", "0.2", "--dsn", dsn)
    listen_argv = cli_argv("listen", "--json", "--dsn", dsn, "--namespace", namespace)
    async with spawn(*watch_argv) as watcher, spawn(*listen_argv) as listener:
        await watcher.wait_for(lambda: watcher.stdout, timeout=30, what="a first view")
        await listener.wait_for(
            lambda: said(listener.stderr, "listening"), timeout=30, what="LISTEN active"
        )
        await asyncio.to_thread(throwaway_pg.stop)
        for process in (watcher, listener):
            await process.wait_for(
                lambda p=process: said(p.stderr, "lost the connection"),  # type: ignore[misc]
                timeout=30,
                what="the loss said",
            )
        views = len(watcher.stdout)
        await asyncio.to_thread(throwaway_pg.start)
        for process in (watcher, listener):
            await process.wait_for(
                lambda p=process: said(p.stderr, "reconnected"),  # type: ignore[misc]
                timeout=30,
                what="the return said",
            )
        # Both work again: the watch redraws, the listener hears its group's channel.
        await watcher.wait_for(lambda: len(watcher.stdout) > views, timeout=10, what="a redraw")
        assert json.loads(watcher.stdout[-1])["groups"] == []
        # The listener said it is back once LISTEN was active again.
        sender = await asyncpg.connect(dsn)
        try:
            message = encode(Message(Kind.ELECTION, namespace, Rank(3, 7)))
            channel = Names().group_channel(namespace)
            await sender.execute("SELECT pg_notify($1, $2)", channel, message)
        finally:
            await sender.close()
        await listener.wait_for(
            lambda: any('"node":7' in line for line in listener.stdout), timeout=10, what="heard"
        )
        assert await watcher.stop() == 0
        assert await listener.stop() == 0
    for process in (watcher, listener):
        assert said(process.stderr, "lost the connection") == 1, process.output
        assert said(process.stderr, "reconnected") == 1, process.output
        assert "Traceback" not in process.output
    assert said(listener.stderr, "messages sent meanwhile were missed") == 1
