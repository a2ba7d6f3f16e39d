"""One election participant driven by the benchmark harness over stdin/stdout.

Run as a script (``python benchmarks/node.py ours|seed``), never with ``-m``: the seed
package's import name is ``notifelect`` too, and running from the repository root would
put this checkout's package first on ``sys.path``. This file imports only the standard
library and the system under test, so the same wrapper runs in both environments.

Commands arrive as JSON lines on stdin::

    {"op": "join", "dsn": ..., "namespace": ..., "interval": s, "timeout": s, "at": t}
    {"op": "leave"}       leave the group through the system's own context exit
    {"op": "quit"}

SIGTERM leaves the group the same way (as a service's shutdown hook would) and then ends
the process. Optional ``join`` fields of ours: ``lease``, ``leader_timeout``,
``strict_takeover``, ``preempt``.

Events leave as JSON lines on stdout, each stamped with ``time.monotonic()`` (one clock
for every process on the host, so the harness compares stamps across processes):
``ready``, ``joined``, ``elected`` (leader-only work may start), ``deposed`` (it stopped),
``leader`` (who this node believes leads; ours only), ``leaving``, ``left``, ``resumed``
(after SIGCONT), ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

Emit = Callable[..., None]


def emit(ev: str, **fields: Any) -> None:
    line = json.dumps({"ev": ev, "t": time.monotonic(), "pid": os.getpid(), **fields})
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Member:
    """One membership of a group; ``run`` returns after a clean leave."""

    def __init__(self, cmd: dict[str, Any]) -> None:
        self.cmd = cmd
        self.leave = asyncio.Event()

    async def run(self) -> None:
        raise NotImplementedError

    def on_resume(self) -> dict[str, Any]:
        return {}


class OursMember(Member):
    """This repository's ElectionGroup; acting = its ``on_elected`` callback is running."""

    group: Any = None

    async def run(self) -> None:
        from notifelect import ElectionGroup, Settings

        cmd = self.cmd
        names = ("lease", "leader_timeout", "strict_takeover", "preempt")
        extra = {k: cmd[k] for k in names if k in cmd}
        settings = Settings(
            namespace=cmd["namespace"],
            election_interval=cmd["interval"],
            election_timeout=cmd["timeout"],
            **extra,
        )
        group = ElectionGroup(cmd["dsn"], settings=settings)
        self.group = group

        @group.on_elected
        async def acting(leadership: Any) -> None:
            emit("elected", term=leadership.term, node=group.node)
            try:
                await asyncio.Future()
            finally:
                emit("deposed", term=leadership.term, node=group.node)

        async with group:
            emit("joined", node=group.node)
            follower = asyncio.create_task(self._follow(group))
            try:
                await self.leave.wait()
                emit("leaving", node=group.node)
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
        emit("left", node=group.node)

    @staticmethod
    async def _follow(group: Any) -> None:
        seen: int | None = -1
        while True:
            info = group.leader
            current = None if info is None else info.node
            if current != seen:
                seen = current
                emit("leader", leader=current, node=group.node)
            await group.wait_for_change()

    def on_resume(self) -> dict[str, Any]:
        group = self.group
        if group is None:
            return {}
        leadership = group.leadership
        # The lease end as it stood when the process was stopped: nothing could renew it
        # while stopped, and a renewal needs a database round trip that has not happened
        # yet when this signal handler runs. Read for measurement only.
        lease_end = None if leadership is None else getattr(leadership, "_valid_until", None)
        return {"is_leader": bool(group.is_leader), "lease_end": lease_end}


class SeedMember(Member):
    """The seed package's Coordinator; acting = ``outcome.winner`` is true.

    The seed exposes the result only as a flag it sets at the end of each round, so the
    flag's assignments are recorded as they happen (no polling, no change to its logic).
    """

    outcome: Any = None

    async def run(self) -> None:
        import asyncpg

        # The seed's module, typed as Any: type checkers see this checkout's notifelect.
        election_manager: Any = importlib.import_module("notifelect.election_manager")
        cmd = self.cmd
        coordinator: Any = None

        class RecordingOutcome(election_manager.Outcome):  # type: ignore[misc]
            def __setattr__(self, name: str, value: Any) -> None:
                if name == "winner":
                    before = getattr(self, "winner", False)
                    if value and not before:
                        emit("elected", node=coordinator.sequence)
                    elif before and not value:
                        emit("deposed", node=coordinator.sequence)
                super().__setattr__(name, value)

        conn = await asyncpg.connect(cmd["dsn"])
        coordinator = election_manager.Coordinator(
            conn,
            namespace=cmd["namespace"],
            election_interval=timedelta(seconds=cmd["interval"]),
            election_timeout=timedelta(seconds=cmd["timeout"]),
        )
        coordinator.outcome = RecordingOutcome()
        self.outcome = coordinator.outcome
        try:
            async with coordinator:
                emit("joined", node=coordinator.sequence)
                await self.leave.wait()
                emit("leaving", node=coordinator.sequence)
            emit("left", node=coordinator.sequence)
        finally:
            await conn.close()

    def on_resume(self) -> dict[str, Any]:
        return {"is_leader": bool(self.outcome is not None and self.outcome.winner)}


async def main(system: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    kind = OursMember if system == "ours" else SeedMember
    member: Member | None = None
    task: asyncio.Task[None] | None = None

    def resumed() -> None:
        emit("resumed", **(member.on_resume() if member is not None else {}))

    async def terminate() -> None:
        emit("terminating")
        if member is not None:
            member.leave.set()
        if task is not None:
            await asyncio.wait([task])
        os._exit(0)

    loop.add_signal_handler(signal.SIGCONT, resumed)
    shutdown: list[asyncio.Task[None]] = []  # keeps the task referenced
    loop.add_signal_handler(signal.SIGTERM, lambda: shutdown.append(loop.create_task(terminate())))
    # Everything a join needs is imported before "ready", so no import lands in a timing.
    import asyncpg  # noqa: F401

    import notifelect

    importlib.import_module(
        "notifelect.group" if system == "ours" else "notifelect.election_manager"
    )

    emit("ready", system=system, module=notifelect.__file__)
    while line := await reader.readline():
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "join":
            if task is not None and not task.done():
                emit("error", error="join while still a member")
                continue
            member = kind(cmd)
            task = asyncio.create_task(_join(member, cmd["at"]))
        elif op == "leave":
            if member is not None:
                member.leave.set()
            if task is not None:
                await asyncio.wait([task])
            member = task = None
        elif op == "quit":
            break
    os._exit(0)  # skip interpreter teardown: the harness is waiting for nothing else


async def _join(member: Member, at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    try:
        await member.run()
    except Exception as exc:
        emit("error", error=repr(exc))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
