"""The demo's script: start the nodes, then kill, pause and stop leaders, timing each failover.

Each node is a ``python -m notifelect.cli._demo_node`` process in its own session, which
reports what happens to it as JSON lines; :class:`Demo` reads them as events, prints the
story and checks that leader-only work never overlapped.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ..schema import Names
from ..settings import Settings
from .render import render_text
from .status import snapshot

#: Quick settings so that the demo is over in seconds (the library's defaults are safer
#: against slow networks and pauses).
_DEFAULTS = Settings()
INTERVAL = 0.2
LEASE = 1.0
LEADER_TIMEOUT = 0.6
MIN_NODES = 3


@dataclass(eq=False)
class Node:
    index: int
    proc: asyncio.subprocess.Process
    node: int | None = None
    state: str = "starting"  # starting, running, paused, killed, left, crashed
    sees: tuple[int, int] | None = None  # (leader node, term) as this node believes
    last_work: float = 0.0  # monotonic time of its last leader-only work
    stderr: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def label(self) -> str:
        return f"node {self.node}" if self.node is not None else f"process {self.pid}"


@dataclass(frozen=True)
class Event:
    node: Node
    kind: str
    t: float
    data: dict[str, Any]


class _Reaper:
    """Kills the nodes' process groups if the demo exits without its own cleanup."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        atexit.register(self.kill_all)

    def kill_all(self) -> None:
        for pid in list(self.pids):
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
        self.pids.clear()


_reaper = _Reaper()


def kill_leftovers() -> None:
    """Kill the process group of every node not reaped yet (the demo's last resort)."""
    _reaper.kill_all()


class StepFailed(Exception):
    pass


class Demo:
    def __init__(
        self, dsn: str, namespace: str, prefix: str | None, nodes: int, step_timeout: float
    ) -> None:
        self.dsn = dsn
        self.namespace = namespace
        self.prefix = prefix
        self.count = nodes
        self.step_timeout = step_timeout
        self.nodes: list[Node] = []
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.readers: list[asyncio.Task[None]] = []
        self.leader: Node | None = None
        self.term = 0
        self.started = time.monotonic()
        self.results: list[tuple[str, float, str]] = []
        self.overlaps = 0

    # ------------------------------------------------------------ output

    def say(self, text: str) -> None:
        print(text, flush=True)

    def stamp(self, t: float | None = None) -> str:
        return f"[{(t if t is not None else time.monotonic()) - self.started:6.2f}s]"

    def roster(self) -> str:
        marks = []
        for n in self.nodes:
            name = str(n.node) if n.node is not None else "?"
            if n is self.leader:
                marks.append(f"*{name}")
            elif n.state in ("paused", "killed", "left", "crashed"):
                marks.append(f"{name}({n.state})")
            else:
                marks.append(name)
        return "nodes: " + " ".join(marks)

    # ------------------------------------------------------------ nodes

    async def spawn(self, index: int) -> Node:
        argv = [
            sys.executable,
            "-m",
            "notifelect.cli._demo_node",
            "--dsn",
            self.dsn,
            "--namespace",
            self.namespace,
            "--interval",
            str(INTERVAL),
            "--lease",
            str(LEASE),
            "--leader-timeout",
            str(LEADER_TIMEOUT),
        ]
        if self.prefix is not None:
            argv += ["--prefix", self.prefix]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C goes to the demo only
        )
        _reaper.pids.add(proc.pid)
        node = Node(index, proc)
        self.nodes.append(node)
        self.readers.append(asyncio.create_task(self._read_stdout(node)))
        self.readers.append(asyncio.create_task(self._read_stderr(node)))
        return node

    async def _read_stdout(self, node: Node) -> None:
        assert node.proc.stdout is not None
        async for raw in node.proc.stdout:
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            if isinstance(data, dict) and isinstance(data.get("event"), str):
                self.events.put_nowait(Event(node, data["event"], float(data["t"]), data))
        self.events.put_nowait(Event(node, "eof", time.monotonic(), {}))

    async def _read_stderr(self, node: Node) -> None:
        assert node.proc.stderr is not None
        async for raw in node.proc.stderr:
            node.stderr.append(raw.decode(errors="replace").rstrip())

    async def next_event(self, deadline: float, waiting_for: str) -> Event:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StepFailed(f"{waiting_for}: nothing within {self.step_timeout:g}s")
        try:
            async with asyncio.timeout(remaining):
                event = await self.events.get()
        except TimeoutError:
            raise StepFailed(f"{waiting_for}: nothing within {self.step_timeout:g}s") from None
        self._apply(event)
        return event

    def _apply(self, event: Event) -> None:
        node = event.node
        if event.kind == "joined":
            node.node = event.data.get("node")
            node.state = "running"
        elif event.kind == "elected":
            self.leader = node
            self.term = int(event.data["term"])
            self.say(
                f"{self.stamp(event.t)} {node.label} leads (term {self.term}, pid {node.pid})"
                f"   {self.roster()}"
            )
        elif event.kind == "deposed":
            if self.leader is node:
                self.leader = None
            self.say(
                f"{self.stamp(event.t)} {node.label} stopped leading term "
                f"{event.data.get('term')}: {event.data.get('reason')}"
            )
        elif event.kind == "work":
            node.last_work = event.t
        elif event.kind == "sees":
            leader, term = event.data.get("leader"), event.data.get("term")
            node.sees = None if leader is None or term is None else (int(leader), int(term))
        elif event.kind == "leaving":
            node.state = "left"
        elif event.kind == "eof" and node.state not in ("killed", "left"):
            node.state = "crashed"
            detail = "\n    ".join(node.stderr) or "(no output)"
            self.say(f"{self.stamp()} {node.label} exited unexpectedly:\n    {detail}")

    async def wait_new_leader(self, after_term: int, what: str) -> Event:
        deadline = time.monotonic() + self.step_timeout
        while True:
            event = await self.next_event(deadline, what)
            if event.kind == "elected" and int(event.data["term"]) > after_term:
                return event

    async def wait_event(self, node: Node, kind: str, what: str) -> Event:
        deadline = time.monotonic() + self.step_timeout
        while True:
            event = await self.next_event(deadline, what)
            if event.node is node and event.kind == kind:
                return event

    def current_leader(self) -> Node:
        if self.leader is None:
            raise StepFailed("no node leads")
        return self.leader

    async def settle(self, what: str) -> None:
        """Wait until every running node follows the leader, then a few heartbeats more
        (the standby opens its watch on the leader's lock after a heartbeat names it)."""
        deadline = time.monotonic() + self.step_timeout
        while self.leader is None or any(
            n.state == "running" and n.sees != (self.leader.node, self.term) for n in self.nodes
        ):
            await self.next_event(deadline, what)
        pause_until = time.monotonic() + 3 * INTERVAL
        with contextlib.suppress(StepFailed):
            while True:
                await self.next_event(pause_until, what)

    def signal(self, node: Node, sig: signal.Signals) -> float:
        at = time.monotonic()
        os.killpg(node.pid, sig)
        return at

    # ------------------------------------------------------------ the script

    async def run(self) -> int:
        try:
            return await self._script()
        except StepFailed as exc:
            self.say(f"notifelect demo: step failed: {exc}")
            return 1
        finally:
            await self.stop_all()

    async def _script(self) -> int:
        say = self.say
        say(
            f"settings: heartbeat {INTERVAL:g}s, lease {LEASE:g}s, leader timeout "
            f"{LEADER_TIMEOUT:g}s (quick, for the demo; the defaults are "
            f"{_DEFAULTS.election_interval:g}s, {_DEFAULTS.lease:g}s,"
            f" {_DEFAULTS.leader_timeout:g}s); "
            "a running leader keeps leading until it fails or leaves"
        )
        for i in range(self.count):
            await self.spawn(i)
        say(
            f"started {self.count} node processes (pids "
            + ", ".join(str(n.pid) for n in self.nodes)
            + ") in group "
            + repr(self.namespace)
            + "; Ctrl-C stops everything"
        )
        deadline = time.monotonic() + self.step_timeout + 10 * self.count  # cold starts
        while self.leader is None or any(n.state == "starting" for n in self.nodes):
            await self.next_event(deadline, "waiting for every node to join and a leader")
        await self.settle("every node following the leader")
        say(f"{self.stamp()} all {self.count} nodes joined and follow it   {self.roster()}")

        # 1. crash
        victim = self.current_leader()
        say(f"\nstep 1/3: kill -9 the leader ({victim.label}, pid {victim.pid})")
        victim.state = "killed"
        self.leader = None
        t0 = self.signal(victim, signal.SIGKILL)
        elected = await self.wait_new_leader(self.term, "after the kill, a new leader")
        self._result(
            "leader killed (SIGKILL)", elected.t - t0, "seen at once, then its lease is waited out"
        )
        await self.settle("the nodes following the new leader")

        # 2. pause
        paused = self.current_leader()
        say(
            f"\nstep 2/3: pause the leader ({paused.label}, pid {paused.pid}) with SIGSTOP, "
            "as a long GC pause or a frozen VM would"
        )
        paused.state = "paused"
        self.leader = None
        t0 = self.signal(paused, signal.SIGSTOP)
        elected = await self.wait_new_leader(self.term, "after the pause, a new leader")
        took = elected.t - t0
        note = f"followers wait {LEADER_TIMEOUT:g}s of silence, fence it, then its lease"
        self._result("leader paused (SIGSTOP)", took, note)
        say(f"  resuming {paused.label} (SIGCONT): it must notice it lost its leadership")
        paused.state = "running"
        self.signal(paused, signal.SIGCONT)
        await self.wait_event(paused, "deposed", "the resumed node standing down")
        self._overlap(paused, elected)
        await self.settle("the resumed node rejoining")  # it reconnects, then follows
        say(f"{self.stamp()} {paused.label} rejoined as a follower   {self.roster()}")

        # 3. clean exit
        leaving = self.current_leader()
        say(f"\nstep 3/3: the leader ({leaving.label}) exits cleanly, as in a deploy")
        assert leaving.proc.stdin is not None
        leaving.proc.stdin.write(b"exit\n")
        await leaving.proc.stdin.drain()
        term_before = self.term
        left = await self.wait_event(leaving, "leaving", "the leader starting to leave")
        stopped: Event | None = None
        elected_ev: Event | None = None
        deadline = time.monotonic() + self.step_timeout
        while stopped is None or elected_ev is None:
            event = await self.next_event(deadline, "the hand-over")
            if event.node is leaving and event.kind == "deposed":
                stopped = event
            elif event.kind == "elected" and int(event.data["term"]) > term_before:
                elected_ev = event
        assert stopped is not None
        assert elected_ev is not None
        self._result("leader exited cleanly", elected_ev.t - left.t, "it resigns and names one")
        self._overlap(leaving, elected_ev)

        say("\nfailover times (from the nodes' own monotonic clocks):")
        for label, seconds, why in self.results:
            say(f"  {label:<26} {seconds * 1000:8.1f} ms   ({why})")
        await self._show_status()
        if self.overlaps:
            say(
                f"\nWARNING: leader-only work overlapped {self.overlaps} time(s); that is a "
                "bug in notifelect, please report it with this output"
            )
        return 0

    def _overlap(self, old: Node, elected: Event) -> None:
        """Say whether the old leader's last leader-only work came before the new leader."""
        gap = elected.t - old.last_work
        if gap > 0:
            self.say(
                f"  no overlap: {old.label} did its last leader-only work {gap * 1000:.1f} ms "
                f"before {elected.node.label} started"
            )
        else:  # would be a bug in the library
            self.say(
                f"  OVERLAP: {old.label} worked {-gap * 1000:.1f} ms after "
                f"{elected.node.label} started"
            )
            self.overlaps += 1

    def _result(self, label: str, seconds: float, why: str) -> None:
        self.results.append((label, seconds, why))
        self.say(f"  failover: {seconds * 1000:.1f} ms")

    async def _show_status(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            snap = await snapshot(conn, Names.from_env(self.prefix), namespace=self.namespace)
        finally:
            await conn.close()
        self.say("\nwhat 'python -m notifelect status' shows now:\n" + render_text(snap).rstrip())

    async def stop_all(self) -> None:
        """Ask live nodes to leave, kill what remains, reap everything; safe to repeat."""
        alive = [n for n in self.nodes if n.proc.returncode is None]
        for n in alive:
            if n.state not in ("paused", "killed") and n.proc.stdin is not None:
                with contextlib.suppress(Exception):
                    n.proc.stdin.write(b"exit\n")
        if alive:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*(n.proc.wait() for n in alive))
        for n in self.nodes:
            if n.proc.returncode is None:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(n.pid, sig)
        for n in self.nodes:
            await n.proc.wait()
            _reaper.pids.discard(n.pid)
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
