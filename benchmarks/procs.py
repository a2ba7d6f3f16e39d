"""Node processes of one system, the shared event log they write to, and /proc readings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NODE_SCRIPT = Path(__file__).with_name("node.py")
ROOT = NODE_SCRIPT.parent.parent  # the checkout whose package the harness measures
_TICKS = os.sysconf("SC_CLK_TCK")

Event = dict[str, Any]


class Log:
    """Every event of every node process, in arrival order, with waiting on new ones."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def add(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = asyncio.Event()

    def mark(self) -> int:
        return len(self.events)

    async def changed(self, timeout: float) -> None:
        """Return at the next event, or after ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), max(0.0, timeout))

    async def first(
        self, predicate: Callable[[Event], bool], timeout: float, start: int = 0
    ) -> Event | None:
        """The first event from index ``start`` on that matches, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.events):
                if predicate(self.events[i]):
                    return self.events[i]
                i += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await self.changed(remaining)


@dataclass(eq=False)
class Node:
    """A node process; ``send`` writes one command line to its stdin."""

    system: str
    proc: asyncio.subprocess.Process
    alive: bool = True
    stopped: bool = False
    reader: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        with contextlib.suppress(ConnectionError):
            await self.proc.stdin.drain()

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        if sig is signal.SIGKILL:
            self.alive = False
        elif sig is signal.SIGSTOP:
            self.stopped = True
        elif sig is signal.SIGCONT:
            self.stopped = False

    async def kill(self) -> None:
        if self.stopped:
            self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        await self.proc.wait()
        if self.reader is not None:
            await self.reader


class Cluster:
    """Spawns node processes of one system (``ours`` or ``seed``) and keeps idle ones warm."""

    def __init__(self, system: str, python: str, log: Log, stderr_dir: Path) -> None:
        self.system = system
        self.python = python
        self.log = log
        self.stderr_dir = stderr_dir
        self.idle: list[Node] = []
        self.nodes: list[Node] = []

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "NOTIFELECT_"))}
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONPATH", None)
        if self.system == "ours":
            # This checkout's package, whatever an editable install elsewhere points to.
            env["PYTHONPATH"] = str(ROOT)
        return env

    def _stderr(self) -> Any:
        """Where the nodes' stderr goes (tracebacks, warnings): one file per system."""
        return (self.stderr_dir / f"{self.system}-nodes.stderr").open("ab")

    async def spawn(self, count: int) -> list[Node]:
        """Start ``count`` processes and wait until each has imported its system."""
        if count <= 0:
            return []
        start = self.log.mark()
        stderr = self._stderr()
        nodes = []
        try:
            for _ in range(count):
                proc = await asyncio.create_subprocess_exec(
                    self.python,
                    str(NODE_SCRIPT),
                    self.system,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=stderr,
                    cwd=str(self.stderr_dir),
                    env=self._env(),
                )
                node = Node(self.system, proc)
                node.reader = asyncio.create_task(self._read(node))
                nodes.append(node)
        finally:
            stderr.close()
        self.nodes += nodes
        pids = {n.pid for n in nodes}
        ready: set[int] = set()
        deadline = time.monotonic() + 60 + count
        i = start
        while ready != pids:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pids - ready)} {self.system} node(s) did not start")
            await self.log.changed(1.0)
            for event in self.log.events[i:]:
                if event["ev"] == "ready" and event["pid"] in pids:
                    ready.add(event["pid"])
            i = len(self.log.events)
        return nodes

    async def _read(self, node: Node) -> None:
        assert node.proc.stdout is not None
        while line := await node.proc.stdout.readline():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                event["system"] = self.system
                self.log.add(event)
        node.alive = False

    async def take(self, count: int) -> list[Node]:
        """``count`` ready processes, reusing idle ones first."""
        self.idle = [n for n in self.idle if n.alive]
        taken, self.idle = self.idle[:count], self.idle[count:]
        return taken + await self.spawn(count - len(taken))

    async def reserve(self, count: int) -> None:
        """Have at least ``count`` idle processes ready (started in one batch)."""
        self.idle = [n for n in self.idle if n.alive]
        self.idle += await self.spawn(count - len(self.idle))

    def give_back(self, node: Node) -> None:
        if node.alive and not node.stopped:
            self.idle.append(node)

    async def close(self) -> None:
        for node in self.nodes:
            if node.alive:
                with contextlib.suppress(Exception):
                    await node.send(op="quit")
        deadline = time.monotonic() + 3.0
        for node in self.nodes:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(node.proc.wait(), max(0.0, deadline - time.monotonic()))
            if node.proc.returncode is None:
                await node.kill()
            elif node.reader is not None:
                await node.reader
        self.idle.clear()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (from /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process in MiB (from /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None
