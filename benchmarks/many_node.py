"""A process that joins many election groups on one engine (the many-groups runs).

``python -m benchmarks.many_node --dsn DSN --groups G --tag T`` opens groups ``T-0`` ..
``T-(G-1)`` on one SQLAlchemy engine and writes JSON lines to stdout:

* ``ready``: every group is open (``t``: wall-clock time, ``node``: the session's id);
* ``elected`` / ``deposed``: a leadership of group ``ns`` began or ended (``node``, ``term``);
* ``sessions``: every second, the server pids of every connection the process's election
  sessions hold (election connection, anchor, watchers), and how many notifications its
  groups have received so far;
* ``act``: every ``--act`` seconds, the groups this process may act for right now (its
  leadership is valid), by term: what a ``@leader_only`` job would see (``led``, only
  when it changed; a line without it means the same groups as the line before). A killed
  process's leadership ends, at the latest, with its last ``act`` line.

SIGTERM closes every group (each hands over) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from notifelect import ElectionGroup, Leadership, Settings
from notifelect.transport.session import open_sessions


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"ev": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


def _url(dsn: str) -> str:
    _, _, rest = dsn.partition("://")
    return f"postgresql+asyncpg://{rest}"


async def main(args: argparse.Namespace) -> None:
    settings = Settings(strict_takeover=not args.fast_crash)
    engine = create_async_engine(_url(args.dsn), pool_size=1, max_overflow=0)
    groups = [
        ElectionGroup(engine, settings=settings.replace(namespace=f"{args.tag}-{i}"))
        for i in range(args.groups)
    ]

    for group in groups:

        async def elected(ls: Leadership) -> None:
            emit("elected", ns=ls.namespace, node=ls.node, term=ls.term)

        async def deposed(ls: Leadership) -> None:
            emit("deposed", ns=ls.namespace, node=ls.node, term=ls.term)

        group.on_elected(elected)
        group.on_deposed(deposed)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    started = time.time()
    await asyncio.gather(*(g.__aenter__() for g in groups))
    emit("ready", node=groups[0].node, pid=os.getpid(), took=time.time() - started)
    report_at = 0.0
    last_led: dict[str, int] | None = None
    try:
        while not stop.is_set():
            led = {
                g.settings.namespace: g.leadership.term
                for g in groups
                if g.leadership is not None and g.leadership.is_valid
            }
            # The whole set only when it changed: a line of a thousand groups four times a
            # second would fill the pipe and stall this very loop.
            if led != last_led:
                emit("act", led=led)
                last_led = led
            else:
                emit("act")
            if time.monotonic() >= report_at:
                pids = sorted(p for s in open_sessions() for p in s.backend_pids())
                received = sum(g.stats["received"] for g in groups)
                emit("sessions", sessions=len(open_sessions()), pids=pids, received=received)
                report_at = time.monotonic() + 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.act)
    finally:
        await asyncio.gather(*(g.close() for g in groups), return_exceptions=True)
        await engine.dispose()
        emit("exit")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--groups", type=int, required=True)
    parser.add_argument("--tag", required=True, help="namespaces are TAG-0 .. TAG-(G-1)")
    parser.add_argument("--act", type=float, default=0.1, help="seconds between act lines")
    parser.add_argument(
        "--fast-crash", action="store_true", help="strict_takeover=False (take over at once)"
    )
    asyncio.run(main(parser.parse_args()))
