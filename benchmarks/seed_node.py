"""The seed's package, ``notifelect==0.0.3``, behind the node program's protocol.

Run as a script on the seed environment's Python (``python benchmarks/seed_node.py``),
never with ``-m``: the seed's import name is ``notifelect`` too, so this file imports only
the standard library, asyncpg and the seed. It speaks the protocol of
:mod:`notifelect._cluster.node` (the commands on stdin; ``started``, ``ready``,
``elected``, ``act``, ``span_end``, ``leaving``, ``left`` on stdout, stamped ``t`` and
``m``), so the shared harness runs it like one of ours. Its ``started`` report names the
package's version, module path and Coordinator defaults.

Acting: the seed sets ``outcome.winner`` at the end of each round; the flag's assignments
are recorded as they happen (no polling, no change to its logic), and while it is set the
node acts every ``--act-period``. The seed has no terms: a leadership is numbered by the
monotonic nanosecond it began.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import os
import signal
import sys
import time
from datetime import timedelta
from importlib.metadata import version
from typing import Any


def emit(event: str, **fields: Any) -> None:
    fields.update(ev=event, t=time.time(), m=time.monotonic(), pid=os.getpid())
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def member(argv: list[str], at: float | None, leave: asyncio.Event) -> None:
    import asyncpg

    opts = dict(zip(argv[::2], argv[1::2], strict=True))  # as the harness sends them
    namespace, period = opts["--namespace"], float(opts["--act-period"])
    # The seed's module, typed as Any: type checkers see this checkout's notifelect.
    manager: Any = importlib.import_module("notifelect.election_manager")
    coordinator: Any = None
    acting: list[asyncio.Task[None]] = []

    async def act(term: int) -> None:
        while True:
            emit("act", term=term, ns=namespace, at=time.time())
            await asyncio.sleep(period)

    class RecordingOutcome(manager.Outcome):  # type: ignore[misc]
        term = 0

        def __setattr__(self, name: str, value: Any) -> None:
            if name == "winner":
                before = getattr(self, "winner", False)
                if value and not before:
                    self.term = time.monotonic_ns()
                    emit("elected", node=coordinator.sequence, term=self.term, ns=namespace)
                    acting.append(asyncio.get_running_loop().create_task(act(self.term)))
                elif before and not value and not leave.is_set():
                    for task in acting:
                        task.cancel()
                    emit("span_end", node=coordinator.sequence, term=self.term, ns=namespace)
            super().__setattr__(name, value)

    await asyncio.sleep(max(0.0, (at or 0.0) - time.monotonic()))  # the shared start instant
    conn = await asyncpg.connect(opts["--dsn"])
    coordinator = manager.Coordinator(
        conn,
        namespace=namespace,
        election_interval=timedelta(seconds=float(opts["--interval"])),
        election_timeout=timedelta(seconds=float(opts["--election-timeout"])),
    )
    coordinator.outcome = RecordingOutcome()
    try:
        async with coordinator:
            emit("ready", node=coordinator.sequence)
            await leave.wait()
            # The application's work ends when it leaves the block, whatever the flag says.
            for task in acting:
                task.cancel()
            if coordinator.outcome.winner:
                term = coordinator.outcome.term
                emit("span_end", node=coordinator.sequence, term=term, ns=namespace)
            emit("leaving", node=coordinator.sequence)
        emit("left", node=coordinator.sequence)
    finally:
        for task in acting:
            task.cancel()
        await conn.close()


async def main() -> None:
    import notifelect

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    loop.add_signal_handler(signal.SIGTERM, lambda: os._exit(0))  # the harness kills it
    manager: Any = importlib.import_module("notifelect.election_manager")  # none in a timing
    defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(manager.Coordinator)}
    timing = {k: defaults[k].total_seconds() for k in ("election_interval", "election_timeout")}
    emit("started", module=notifelect.__file__, version=version("notifelect"), **timing)
    leave = asyncio.Event()
    task: asyncio.Task[None] | None = None
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["op"] == "join":
            leave = asyncio.Event()
            task = asyncio.create_task(member(cmd["argv"], cmd.get("at"), leave))
        elif cmd["op"] == "leave" and task is not None:
            leave.set()
            await asyncio.wait([task])
        else:
            break
    os._exit(0)  # skip interpreter teardown: nothing waits for it


if __name__ == "__main__":
    asyncio.run(main())
