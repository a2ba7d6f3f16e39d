"""Node processes of one run: spawn them, signal and stop them, collect what they report.

A :class:`Cluster` starts node programs (:mod:`notifelect._cluster.node`, or another
program that speaks its protocol) and keeps every line they report, per process and in
arrival order. Callers wait on those reports (:meth:`Cluster.until`), never on sleeps.
What it hands to :mod:`notifelect._cluster.checker` are the processes' own records:
:meth:`Cluster.spans` (each leadership from its ``elected`` to its last recorded action).
An exit hook kills the node still running if the caller dies without closing. (The nodes
stay in the caller's process group: a terminal's Ctrl-C makes them leave their groups
cleanly, as SIGTERM does.)

What every caller shares lives here; the fault suite's database checks (the audit table,
exactly one leader) extend :class:`Cluster` in ``tests/faults/harness.py``, and the
many-groups helpers below serve its many-groups test and ``benchmarks/groups.py`` alike.

(Longer than most modules: the one harness of the fault suite, the benchmarks and the
demo, so each of them does not keep one of its own.)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import select
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from . import checker

T = TypeVar("T")
Event = dict[str, Any]
#: The node program, as this interpreter runs it.
NODE_PROGRAM = (sys.executable, "-m", "notifelect._cluster.node")

_running: set[int] = set()  # pids of nodes not reaped yet


@atexit.register
def kill_leftovers() -> None:
    """Kill every node not reaped yet (the last resort)."""
    for pid in list(_running):
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
    _running.clear()


def proven_dead(pid: int, within: float = 5.0) -> tuple[float, float] | None:
    """After SIGKILL: when ``pid`` is first seen gone or a zombie (it can no longer run),
    on the wall and the monotonic clock, close to the real death.

    Where the platform has process file descriptors (Linux 5.3 and later), it waits on one
    (readable once the process has ended) without running: a loop that looks took one of
    a small host's cores for the very failover that is being timed, from the signal on.
    Elsewhere it looks in a tight loop."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return time.time(), time.monotonic()  # reaped already
    except (AttributeError, OSError):
        return _seen_dead(pid, within)
    try:
        ended = select.poll()
        ended.register(descriptor, select.POLLIN)
        if not ended.poll(within * 1000):
            return None
        return time.time(), time.monotonic()
    finally:
        os.close(descriptor)


def _seen_dead(pid: int, within: float) -> tuple[float, float] | None:
    """:func:`proven_dead` by looking at the process in a tight loop."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return time.time(), time.monotonic()  # reaped already
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return time.time(), time.monotonic()
    return None


@dataclass(eq=False)
class NodeProcess:
    """One node process and what it reported (of its current membership: ``of``)."""

    index: int
    proc: asyncio.subprocess.Process
    log: Path
    namespace: str | None = None
    #: Set by a fault suite: the proxy between this node and the server.
    proxy: Any = None
    events: list[Event] = field(default_factory=list)
    since: int = 0  # index of the current membership's first event
    node: int | None = None
    started: bool = False  # imported and listening for commands
    member: bool = False  # joined and not left
    paused: bool = False
    killed: bool = False
    exited: bool = False
    #: When the process was killed (SIGKILL sent, once proven dead) or seen to exit:
    #: wall, monotonic.
    dead_at: float | None = None
    dead_m: float | None = None
    sees: tuple[int | None, int | None] | None = None  # (leader node, term) it believes
    leading: dict[str, int] = field(default_factory=dict)  # group -> term it acts in
    led: dict[str, int] = field(default_factory=dict)  # its last ``led`` line: group -> term
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def live(self) -> bool:
        """Running and not paused (a node that can act)."""
        return not (self.exited or self.killed or self.paused)

    @property
    def leading_term(self) -> int | None:
        """The term this node reports leading its group in (its on_elected work runs)."""
        return self.leading.get(self.namespace or "")

    def of(self, kind: str, **match: Any) -> list[Event]:
        return [
            e
            for e in self.events[self.since :]
            if e["ev"] == kind and all(e.get(k) == v for k, v in match.items())
        ]

    def last(self, kind: str) -> Event | None:
        return found[-1] if (found := self.of(kind)) else None

    def apply(self, event: Event) -> None:
        self.events.append(event)
        ev = event["ev"]
        if ev == "started":
            self.started = True
        elif ev == "ready":
            self.member = True
            self.node = event["node"]
        elif ev == "elected":
            # A node's id is its election session's: a new session after a lost one
            # brings a new id, which the process reports when it is next elected.
            if event.get("ns", self.namespace) == self.namespace:
                self.node = event["node"]
            self.leading[event.get("ns", self.namespace or "")] = event["term"]
        elif ev in ("span_end", "deposed"):
            ns = event.get("ns", self.namespace or "")
            if self.leading.get(ns) == event["term"]:
                del self.leading[ns]
        elif ev == "sees":
            self.sees = (event["leader"], event["term"])
        elif ev == "left":
            self.member = False
        elif ev == "led" and "led" in event:
            self.led = event["led"]

    def describe(self) -> str:
        state = (
            "exited" if self.exited else "killed" if self.killed
            else "paused" if self.paused else "live"
        )  # fmt: skip
        tail = [
            {k: v for k, v in e.items() if k not in ("t", "m", "pid", "started", "ended")}
            for e in self.events
            if e["ev"] not in ("exec", "act", "led")
        ][-4:]
        return f"#{self.index} node={self.node} pid={self.pid} {state} last={tail}"


class Cluster:
    """The node processes of one run, on the database ``dsn``, in group ``namespace``.

    ``argv``: options every node of :meth:`spawn` gets; ``on_event(node, event)`` is
    called for each report as it arrives (and with ``{"ev": "gone"}`` when a process's
    output ends); ``workdir`` (made if missing) holds each node's stderr
    (``node-<index>.log``).
    """

    def __init__(
        self,
        dsn: str,
        workdir: Path,
        namespace: str = "default",
        *,
        argv: Sequence[str] = (),
        env: dict[str, str] | None = None,
        on_event: Callable[[NodeProcess, Event], None] | None = None,
    ) -> None:
        self._dsn = dsn
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        self.argv = list(argv)
        self.env = env
        self.on_event = on_event
        self.nodes: list[NodeProcess] = []
        #: Every report of every node, in arrival order.
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    @property
    def dsn(self) -> str:
        return self._dsn

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------ processes

    async def start(
        self,
        argv: Sequence[str] | None = None,
        *,
        dsn: str | None = None,
        command: Sequence[str] = NODE_PROGRAM,
    ) -> NodeProcess:
        """Start one node process: it joins at once with ``argv`` (and the cluster's),
        or, with ``argv`` None, waits for :meth:`join`. Returns without waiting."""
        args = list(command)
        if argv is not None:
            args += ["--dsn", dsn or self.dsn, "--namespace", self.namespace, *self.argv, *argv]
        index = len(self.nodes)
        log = self.workdir / f"node-{index}.log"
        base = self.env or dict(os.environ)
        with open(log, "ab") as stderr:  # noqa: ASYNC230  # a local log file, opened once
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env={**base, "PYTHONUNBUFFERED": "1"},
                limit=2**22,  # a line of a thousand groups
            )
        _running.add(proc.pid)
        node = NodeProcess(index, proc, log, self.namespace if argv is not None else None)
        node.reader = asyncio.create_task(self._read(node))
        self.nodes.append(node)
        return node

    async def spawn(
        self, count: int = 1, argv: Sequence[str] | None = (), **start: Any
    ) -> list[NodeProcess]:
        """Start ``count`` node processes; return once each has joined (``argv`` given)
        or is ready for a join command (``argv`` None)."""
        started = [await self.start(argv, **start) for _ in range(count)]
        await self.ready(started, joined=argv is not None)
        return started

    async def ready(
        self, nodes: Sequence[NodeProcess], *, joined: bool = True, timeout: float | None = None
    ) -> None:
        """Wait until each of ``nodes`` has joined (or, ``joined`` False, started)."""
        await self.until(
            lambda: all(n.member if joined else n.started for n in nodes),
            timeout=30 + 2 * len(nodes) if timeout is None else timeout,
            what=f"{len(nodes)} node(s) {'joined' if joined else 'started'}",
        )

    async def join(
        self,
        node: NodeProcess,
        argv: Sequence[str] = (),
        *,
        namespace: str | None = None,
        dsn: str | None = None,
        at: float | None = None,
    ) -> None:
        """Tell a waiting node to join (at the monotonic instant ``at``, if given)."""
        node.namespace = namespace or self.namespace
        node.since, node.node, node.sees, node.leading = len(node.events), None, None, {}
        argv = ["--dsn", dsn or self.dsn, "--namespace", node.namespace, *self.argv, *argv]
        await self.send(node, op="join", argv=argv, at=at)

    async def send(self, node: NodeProcess, **cmd: Any) -> None:
        """One command line to ``node``'s stdin (``op``: join, leave or exit)."""
        stdin = node.proc.stdin
        assert stdin is not None
        stdin.write((json.dumps(cmd) + "\n").encode())
        with contextlib.suppress(ConnectionError):
            await stdin.drain()

    async def _read(self, node: NodeProcess) -> None:
        assert node.proc.stdout is not None
        while line := await node.proc.stdout.readline():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            node.apply(event)
            self.events.append(event)
            if self.on_event is not None:
                self.on_event(node, event)
            self._wake()
        await node.proc.wait()
        _running.discard(node.pid)
        node.exited = True
        if node.dead_at is None:
            node.dead_at, node.dead_m = time.time(), time.monotonic()
        if self.on_event is not None:
            self.on_event(node, {"ev": "gone", "t": node.dead_at, "m": node.dead_m})
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------ waiting

    async def until(
        self, predicate: Callable[[], T], *, timeout: float, what: str, every: float = 0.0
    ) -> T:
        """Wait until ``predicate()`` is truthy; re-checked on every report (at most once
        every ``every`` seconds: thousands of reports a second must not make the caller,
        which shares the CPUs with the nodes, the busiest process) and every 0.1 s."""

        async def probe() -> T:
            return predicate()

        return await self.until_async(probe, timeout=timeout, what=what, every=every)

    async def until_async(
        self,
        predicate: Callable[[], Awaitable[T]],
        *,
        timeout: float,
        what: str,
        poll: float = 0.1,
        every: float = 0.0,
    ) -> T:
        """Like :meth:`until` for a coroutine predicate (conditions on the database),
        re-checked every ``poll`` seconds too."""
        deadline = time.monotonic() + timeout
        while True:
            changed = self._changed
            checked = time.monotonic()
            value = await predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{what}: not reached within {timeout}s\n" + self.describe())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, poll))
            if every:
                await asyncio.sleep(max(0.0, checked + every - time.monotonic()))  # throttle

    async def first(
        self, predicate: Callable[[Event], bool], timeout: float, start: int = 0
    ) -> Event | None:
        """The first report from index ``start`` of :attr:`events` that matches, or None
        after ``timeout`` seconds."""

        def found() -> Event | None:
            nonlocal start
            for start in range(start, len(self.events)):  # noqa: B020  # resumes where it stopped
                if predicate(self.events[start]):
                    return self.events[start]
            start = len(self.events)
            return None

        with contextlib.suppress(TimeoutError):
            return await self.until(found, timeout=timeout, what="a report")
        return None

    def describe(self) -> str:
        return "\n".join(n.describe() for n in self.nodes)

    # ------------------------------------------------------------ faults and exits

    def signal(self, node: NodeProcess, sig: signal.Signals) -> float:
        """Send ``sig`` to ``node``; when (wall clock). After SIGKILL it waits until the
        process is proven dead, and takes the instant the kill was sent as its death: a
        process that cannot catch the signal runs none of its own code after it, while
        the sighting of its zombie comes later than its sockets' end (the kernel closes a
        dying process's files first), after which a standby may rightly have taken over."""
        at = time.time()
        os.kill(node.pid, sig)
        sent = time.time(), time.monotonic()
        if sig is signal.SIGKILL:
            node.killed = True
            if proven_dead(node.pid) is not None:
                node.dead_at, node.dead_m = sent
        elif sig in (signal.SIGSTOP, signal.SIGCONT):
            node.paused = sig is signal.SIGSTOP
        return at

    async def stop_node(self, node: NodeProcess, *, timeout: float = 15.0) -> None:
        """Clean exit: SIGTERM, then wait for the process to leave."""
        os.kill(node.pid, signal.SIGTERM)
        await self.until(lambda: node.exited, timeout=timeout, what=f"node {node.node} exited")
        assert node.proc.returncode == 0, node.describe()

    async def close(self, timeout: float = 15.0) -> None:
        """SIGTERM every node (resumed first if paused), wait up to ``timeout`` for them
        to leave, kill what remains, reap everything. Safe to repeat."""
        for node in self.nodes:
            if node.exited:
                continue
            with contextlib.suppress(ProcessLookupError):
                if node.paused:
                    os.kill(node.pid, signal.SIGCONT)
                    node.paused = False
                if not node.killed:
                    os.kill(node.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await self.until(
                lambda: all(n.exited for n in self.nodes), timeout=timeout, what="all exited"
            )
        for node in self.nodes:
            if not node.exited:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(node.pid, signal.SIGCONT)
                    os.kill(node.pid, signal.SIGKILL)
        readers = [n.reader for n in self.nodes if n.reader is not None]
        if readers:
            await asyncio.wait(readers, timeout=10)

    # ------------------------------------------------------------ leadership

    def agreed(self, nodes: Iterable[NodeProcess], *, beliefs: bool = True) -> NodeProcess | None:
        """The one node of ``nodes`` that acts as leader, if no other node that has not
        exited acts (a paused one may) and, with ``beliefs`` (programs that report
        ``sees``), every member that runs believes it leads."""
        nodes = list(nodes)
        leaders = [n for n in nodes if n.leading_term is not None and not (n.exited or n.killed)]
        if len(leaders) != 1 or not (leaders[0].live and leaders[0].member):
            return None
        leader = leaders[0]
        want = (leader.node, leader.leading_term)
        if beliefs and any(n.live and n.member and n.sees != want for n in nodes):
            return None
        return leader

    # ------------------------------------------------------------ the records

    def spans(
        self, nodes: Iterable[NodeProcess] | None = None, namespace: str | None = None,
        clock: str = "t",
    ) -> dict[int, checker.Span]:  # fmt: skip
        """Each leadership of ``namespace`` as its own process recorded it, on ``clock``
        (``t``: wall, ``m``: monotonic): from its ``elected`` to its last action (``act``,
        or a ``led`` line naming it), open if the process never reported the end of every
        activity of it (its ``on_elected`` work or a long call)."""
        group = namespace or self.namespace
        found = self.every_span(nodes, clock)
        return {term: span for (ns, term), span in found.items() if ns == group}

    def every_span(
        self, nodes: Iterable[NodeProcess] | None = None, clock: str = "t"
    ) -> dict[tuple[str, int], checker.Span]:
        """:meth:`spans` of every group at once, by (group, term)."""
        spans: dict[tuple[str, int], checker.Span] = {}
        stamp = "at" if clock == "t" else "m"  # when an action happened, on ``clock``
        for n in self.nodes if nodes is None else nodes:
            last: dict[tuple[str, int], float] = {}
            led: dict[str, int] = {}
            ended: set[tuple[str, int]] = set()
            calls: Counter[int] = Counter()  # leader-only calls running, by term
            events = n.events[n.since :]
            default = n.namespace or self.namespace
            for e in events:
                ev = e["ev"]
                if ev == "act":
                    last[e.get("ns", default), e["term"]] = e[stamp]
                elif ev == "led":
                    led = e.get("led", led)
                    last.update(dict.fromkeys(led.items(), float(e[stamp])))
                elif ev == "span_end":
                    ended.add((e.get("ns", default), e["term"]))
                elif ev in ("call_start", "call_end"):
                    calls[e["term"]] += 1 if ev == "call_start" else -1
            dead = n.dead_at if clock == "t" else n.dead_m
            for e in events:
                if e["ev"] == "elected":
                    key = (e.get("ns", default), e["term"])
                    spans[key] = checker.Span(
                        e["node"],
                        e["term"],
                        e[clock],
                        last_act=last.get(key),
                        open_at_end=key not in ended or calls[e["term"]] > 0,
                        dead_at=dead,
                    )
        return spans

    def overlaps(self) -> list[str]:
        """Leaderships of any group that began before an earlier one could have stopped
        acting (:func:`checker.span_overlaps` of every group)."""
        by_group: dict[str, list[checker.Span]] = {}
        for (ns, _), span in self.every_span().items():
            by_group.setdefault(ns, []).append(span)
        return [
            f"{ns}: {o}" for ns, spans in by_group.items() for o in checker.span_overlaps(spans)
        ]


# ---------------------------------------------------------------- many groups per process


async def transactions(conn: asyncpg.Connection[Any]) -> int:
    """Commits and rollbacks of the current database so far (the server's statistics)."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
    )


async def wait_quiet(conn: asyncpg.Connection[Any], per_second: float, timeout: float) -> bool:
    """Wait until a two-second window of the database runs at most ``per_second``
    transactions a second (the server's counters lag: a cold start shows up for a while).
    False if that never happened within ``timeout``."""
    deadline = time.monotonic() + timeout
    last = await transactions(conn)
    while time.monotonic() < deadline:
        await asyncio.sleep(2)  # a sampling window, not a synchronisation
        now_count = await transactions(conn)
        if now_count - last <= 2 * per_second:
            return True
        last = now_count
    return False


def settled(nodes: Iterable[NodeProcess], groups: int) -> bool:
    """Every one of ``groups`` groups is acted for by exactly one live process (from the
    last ``led`` line of each)."""
    seen: dict[str, int] = {}
    for n in nodes:
        if n.live:
            for ns in n.led:
                seen[ns] = seen.get(ns, 0) + 1
    return len(seen) == groups and all(v == 1 for v in seen.values())


async def kill_busiest(cluster: Cluster, timeout: float) -> list[float]:
    """SIGKILL the process leading the most groups; wait until each of its groups has a
    new leader among the others; how long each took, sorted (seconds)."""
    victim = max((n for n in cluster.nodes if n.live), key=lambda n: len(n.led))
    lost = set(victim.led)
    killed_at = cluster.signal(victim, signal.SIGKILL)
    survivors = [n for n in cluster.nodes if n is not victim]

    def new_leaders() -> dict[str, float] | None:
        first: dict[str, float] = {}
        for n in survivors:
            for e in n.of("elected"):
                if e["ns"] in lost and e["t"] >= killed_at:
                    first[e["ns"]] = min(first.get(e["ns"], e["t"]), e["t"])
        return first if set(first) == lost else None

    first = await cluster.until(
        new_leaders, timeout=timeout, what="every lost group led again", every=0.05
    )
    assert first is not None
    return sorted(t - killed_at for t in first.values())
