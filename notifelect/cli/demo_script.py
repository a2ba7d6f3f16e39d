"""The demo's script: start the nodes, then kill, pause and stop leaders, timing each failover.

The nodes are processes of the node program (:mod:`notifelect._cluster.node`), started,
signalled and stopped by the shared harness (:mod:`notifelect._cluster.harness`).
:class:`Demo` prints the story as their reports arrive, times each
failover on the nodes' own monotonic clocks, and asks the checker whether leader-only work
ever overlapped (the end of a leadership is the last action its process recorded).
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from pathlib import Path

import asyncpg

from .._cluster import checker
from .._cluster.harness import Cluster, Event, NodeProcess, kill_leftovers
from ..schema import Names
from ..settings import Settings
from .render import render_text
from .status import snapshot

__all__ = ["MIN_NODES", "Demo", "kill_leftovers"]

#: Quick settings so that the demo is over in seconds (the library's defaults are safer
#: against slow networks and pauses).
_DEFAULTS = Settings()
INTERVAL = 0.2
LEASE = 1.0
LEADER_TIMEOUT = 0.6
WORK_EVERY = 0.05  # how often a leader does (and reports) its leader-only work
MIN_NODES = 3


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
        self.cluster: Cluster | None = None
        self.state: dict[NodeProcess, str] = {}  # starting, running, paused, killed, left, crashed
        self.leader: NodeProcess | None = None
        self.term = 0
        self.started = time.monotonic()
        self.results: list[tuple[str, float, str]] = []
        self.overlaps = 0
        self.finished = False  # the story is told: the nodes leaving at the end are not

    # ------------------------------------------------------------ output

    def say(self, text: str) -> None:
        print(text, flush=True)

    def stamp(self, t: float | None = None) -> str:
        return f"[{(t if t is not None else time.monotonic()) - self.started:6.2f}s]"

    @staticmethod
    def label(node: NodeProcess) -> str:
        return f"node {node.node}" if node.node is not None else f"process {node.pid}"

    def roster(self) -> str:
        marks = []
        for n, state in self.state.items():
            name = str(n.node) if n.node is not None else "?"
            if n is self.leader:
                marks.append(f"*{name}")
            elif state in ("paused", "killed", "left", "crashed"):
                marks.append(f"{name}({state})")
            else:
                marks.append(name)
        return "nodes: " + " ".join(marks)

    # ------------------------------------------------------------ nodes

    def _apply(self, node: NodeProcess, event: Event) -> None:
        """Tell the story of each report as it arrives."""
        kind = event["ev"]
        if self.finished:
            return
        if kind == "ready":
            self.state[node] = "running"
        elif kind == "elected":
            self.leader = node
            self.term = int(event["term"])
            self.say(
                f"{self.stamp(event['m'])} {self.label(node)} leads (term {self.term}, pid "
                f"{node.pid})   {self.roster()}"
            )
        elif kind == "deposed":
            if self.leader is node:
                self.leader = None
            self.say(
                f"{self.stamp(event['m'])} {self.label(node)} stopped leading term "
                f"{event.get('term')}: {event.get('reason') or 'ended'}"
            )
        elif kind == "leaving":
            self.state[node] = "left"
        elif kind == "gone" and self.state.get(node) not in ("killed", "left"):
            self.state[node] = "crashed"
            try:
                tail = node.log.read_text(errors="replace").splitlines()[-20:]
            except OSError:
                tail = []
            detail = "\n    ".join(tail) or "(no output)"
            self.say(f"{self.stamp()} {self.label(node)} exited unexpectedly:\n    {detail}")

    async def until(self, predicate: object, what: str, timeout: float | None = None) -> None:
        assert self.cluster is not None
        try:
            await self.cluster.until(
                predicate,  # type: ignore[arg-type]
                timeout=self.step_timeout if timeout is None else timeout,
                what=what,
            )
        except TimeoutError:
            raise StepFailed(f"{what}: nothing within {self.step_timeout:g}s") from None

    async def wait_new_leader(self, after_term: int, what: str) -> Event:
        assert self.cluster is not None
        found = await self.cluster.first(
            lambda e: e["ev"] == "elected" and int(e["term"]) > after_term, self.step_timeout
        )
        if found is None:
            raise StepFailed(f"{what}: nothing within {self.step_timeout:g}s")
        return found

    def current_leader(self) -> NodeProcess:
        if self.leader is None:
            raise StepFailed("no node leads")
        return self.leader

    async def settle(self, what: str) -> None:
        """Wait until every running node follows the leader, then a few intervals more
        (the standby opens its watch on the leader's anchor after a renewal names it)."""
        assert self.cluster is not None
        running = [n for n, state in self.state.items() if state == "running"]
        cluster = self.cluster
        await self.until(lambda: cluster.agreed(running), what)
        await asyncio.sleep(3 * INTERVAL)  # let the story catch up: a pause in the script

    def signal(self, node: NodeProcess, sig: signal.Signals) -> float:
        assert self.cluster is not None
        at = time.monotonic()
        self.cluster.signal(node, sig)
        return at

    def _overlap(self, old: NodeProcess, term: int, new: Event) -> None:
        """Say whether the old leader's last leader-only work came before the new leader,
        as the checker finds it from what the two processes recorded."""
        assert self.cluster is not None
        spans = self.cluster.spans(clock="m")
        found = checker.span_overlaps([spans[term], spans[int(new["term"])]])
        gap = new["m"] - spans[term].end
        newcomer = self.label(next(n for n in self.state if n.pid == new["pid"]))
        if not found:
            self.say(
                f"  no overlap: {self.label(old)} did its last leader-only work "
                f"{gap * 1000:.1f} ms before {newcomer} started"
            )
        else:  # would be a bug in the library
            self.say(f"  OVERLAP: {found[0]}")
            self.overlaps += 1

    # ------------------------------------------------------------ the script

    async def run(self) -> int:
        with tempfile.TemporaryDirectory(prefix="notifelect-demo-") as workdir:
            argv = ["--interval", str(INTERVAL), "--lease", str(LEASE)]
            argv += ["--leader-timeout", str(LEADER_TIMEOUT), "--act-period", str(WORK_EVERY)]
            if self.prefix is not None:
                argv += ["--prefix", self.prefix]
            self.cluster = Cluster(
                self.dsn, Path(workdir), self.namespace, argv=argv, on_event=self._apply
            )
            try:
                return await self._script()
            except StepFailed as exc:
                self.say(f"notifelect demo: step failed: {exc}")
                return 1
            finally:
                self.finished = True
                await self.cluster.close(timeout=5)

    async def _script(self) -> int:
        say = self.say
        cluster = self.cluster
        assert cluster is not None
        say(
            f"settings: heartbeat {INTERVAL:g}s, lease {LEASE:g}s, leader timeout "
            f"{LEADER_TIMEOUT:g}s (quick, for the demo; the defaults are "
            f"{_DEFAULTS.election_interval:g}s, {_DEFAULTS.lease:g}s,"
            f" {_DEFAULTS.leader_timeout:g}s); "
            "a running leader keeps leading until it fails or leaves"
        )
        for _ in range(self.count):
            self.state[await cluster.start([])] = "starting"
        say(
            f"started {self.count} node processes (pids "
            + ", ".join(str(n.pid) for n in cluster.nodes)
            + ") in group "
            + repr(self.namespace)
            + "; Ctrl-C stops everything"
        )
        await self.until(
            lambda: self.leader is not None and "starting" not in self.state.values(),
            "waiting for every node to join and a leader",
            timeout=self.step_timeout + 10 * self.count,  # cold starts
        )
        await self.settle("every node following the leader")
        say(f"{self.stamp()} all {self.count} nodes joined and follow it   {self.roster()}")

        # 1. crash
        victim = self.current_leader()
        say(f"\nstep 1/3: kill -9 the leader ({self.label(victim)}, pid {victim.pid})")
        self.state[victim] = "killed"
        self.leader = None
        t0 = self.signal(victim, signal.SIGKILL)
        elected = await self.wait_new_leader(self.term, "after the kill, a new leader")
        self._result(
            "leader killed (SIGKILL)",
            elected["m"] - t0,
            "seen at once, then its lease is waited out",
        )
        await self.settle("the nodes following the new leader")

        # 2. pause
        paused = self.current_leader()
        term = self.term
        say(
            f"\nstep 2/3: pause the leader ({self.label(paused)}, pid {paused.pid}) with "
            "SIGSTOP, as a long GC pause or a frozen VM would"
        )
        self.state[paused] = "paused"
        self.leader = None
        t0 = self.signal(paused, signal.SIGSTOP)
        elected = await self.wait_new_leader(term, "after the pause, a new leader")
        note = f"followers wait {LEADER_TIMEOUT:g}s of silence, fence it, then its lease"
        self._result("leader paused (SIGSTOP)", elected["m"] - t0, note)
        say(f"  resuming {self.label(paused)} (SIGCONT): it must notice it lost its leadership")
        self.state[paused] = "running"
        self.signal(paused, signal.SIGCONT)
        await self.until(lambda: self._ended(paused, term), "the resumed node standing down")
        self._overlap(paused, term, elected)
        await self.settle("the resumed node rejoining")  # it reconnects, then follows
        say(f"{self.stamp()} {self.label(paused)} rejoined as a follower   {self.roster()}")

        # 3. clean exit
        leaving = self.current_leader()
        term = self.term
        say(f"\nstep 3/3: the leader ({self.label(leaving)}) exits cleanly, as in a deploy")
        await cluster.send(leaving, op="exit")
        await self.until(lambda: leaving.of("leaving"), "the leader starting to leave")
        left = leaving.of("leaving")[0]
        elected = await self.wait_new_leader(term, "the hand-over")
        await self.until(lambda: self._ended(leaving, term), "the old leader's work ended")
        self._result("leader exited cleanly", elected["m"] - left["m"], "it resigns and names one")
        self._overlap(leaving, term, elected)

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

    @staticmethod
    def _ended(node: NodeProcess, term: int) -> bool:
        """``node`` reported that its leadership ``term`` and every work of it ended."""
        return bool(node.of("deposed", term=term) and node.of("span_end", term=term))

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
