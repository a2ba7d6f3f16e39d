"""One node of ``notifelect demo``: joins a group and reports what happens to it.

Every event is one JSON line on stdout with the node's own ``time.monotonic()`` (the same
clock for every process of the machine, so the demo can subtract them). A line ``exit`` on
stdin, the end of stdin (the demo is gone), SIGINT or SIGTERM make it leave the group
cleanly: resign if it leads, then exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from ..group import ElectionGroup
from ..leadership import Leadership
from ..settings import Settings

WORK_EVERY = 0.05


def emit(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, "t": time.monotonic(), "pid": os.getpid(), **fields})
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run(dsn: str, settings: Settings) -> None:
    group = ElectionGroup(dsn, settings=settings)

    @group.on_elected
    async def leading(leadership: Leadership) -> None:
        emit("elected", node=leadership.node, term=leadership.term)
        # Leader-only work, reported so that the demo can check it never overlaps: it
        # runs only while the lease is valid and is cancelled when leadership ends.
        while leadership.is_valid:
            emit("work", node=leadership.node, term=leadership.term)
            await asyncio.sleep(WORK_EVERY)

    @group.on_deposed
    async def deposed(leadership: Leadership) -> None:
        emit(
            "deposed",
            node=leadership.node,
            term=leadership.term,
            reason=leadership.ended_reason or "ended",
        )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while True:
            line = await reader.readline()
            if not line or line.strip() == b"exit":
                stop.set()
                return

    async def observe() -> None:
        # Who this node believes leads, each time that changes (also after a reconnect).
        seen: tuple[int, int] | None = None
        while True:
            info = group.leader
            now = None if info is None else (info.node, info.term)
            if now != seen:
                seen = now
                emit("sees", node=group.node, leader=info and info.node, term=info and info.term)
            await group.wait_for_change()

    async with group:
        emit("joined", node=group.node)
        helpers = [asyncio.create_task(commands()), asyncio.create_task(observe())]
        try:
            await stop.wait()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        emit("leaving", node=group.node, leader=group.is_leader)
    emit("left", node=group.node)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m notifelect.cli._demo_node")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--prefix")
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--leader-timeout", type=float, default=0.6)
    args = parser.parse_args()
    settings = Settings(
        namespace=args.namespace,
        prefix=args.prefix,
        election_interval=args.interval,
        lease=args.lease,
        leader_timeout=args.leader_timeout,
    )
    asyncio.run(run(args.dsn, settings))


if __name__ == "__main__":
    main()
