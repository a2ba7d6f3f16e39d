"""The measured scenarios: election chains (cold start, hand-over, crash, pause), steady
state, rolling restarts, and the physical floors of PostgreSQL itself (and of the cores:
many processes connecting at once).

The nodes are processes of the shared node program (or the seed's adapter, which speaks
its protocol), started, signalled and stopped by the shared harness; overlaps are the
checker's verdict on what the processes recorded. Times are differences of
``time.monotonic()`` stamps taken by the processes involved: the benchmark stamps what it
does to a node (SIGKILL, SIGSTOP), a node stamps what it does itself (joined, leaving,
elected). CLOCK_MONOTONIC is one clock for the whole host.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from notifelect._cluster import checker
from notifelect._cluster.harness import Cluster, Event, NodeProcess, transactions
from notifelect.schema import Names

CHANNEL = "ch_notifelect"  # the seed's channel (ours has one per group)
GO_DELAY = 0.3  # the join command reaches every node before the shared start instant
SETTLE = 0.5  # steady time after a leader is known to all, before the next fault
ACT_PERIOD = 0.02  # a leader's leader-only action (and report) every this many seconds
#: The steps of a failover chain after its cold start, and the scenario each records.
STEPS = {"hand-over": "hand-over", "crash": "crash (SIGKILL)", "pause": "pause (SIGSTOP)"}


@dataclass(frozen=True)
class Config:
    """One system at one group of settings: ``settings`` is "default", "fast", or the
    take-over of ours that is not the default ("strict" or "fastcrash")."""

    system: str  # "ours" or "seed"
    settings: str
    interval: float
    timeout: float
    lease: float = 0.0  # ours only: lease and leader_timeout (the library's defaults)
    leader_timeout: float = 0.0
    strict_takeover: bool | None = None  # ours only; None: the library's default

    @property
    def limit(self) -> float:
        """How long to wait for a new leader before recording "no leader" (censored)."""
        if self.system == "ours":
            return self.lease + self.leader_timeout + 5.0
        return 2 * (self.interval + self.timeout) + 5.0

    def argv(self) -> list[str]:
        """The node program's options for these settings."""
        argv = ["--interval", str(self.interval), "--election-timeout", str(self.timeout)]
        if self.strict_takeover is not None:
            argv.append("--strict" if self.strict_takeover else "--fast-crash")
        return [*argv, "--act-period", str(ACT_PERIOD)]


@dataclass
class Sample:
    """One measurement; ``value`` None means nothing happened within ``limit`` seconds."""

    system: str
    settings: str
    n: int
    scenario: str
    trial: int
    value: float | None
    limit: float | None = None
    unit: str = "s"
    note: str = ""


@dataclass
class Recorder:
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)
        print(f"  ! {text}", file=sys.stderr, flush=True)


class TrialFailed(Exception):
    """A trial cannot go on (a problem of the run, listed in its report)."""


class Bus:
    """Every notification on the channels of one database, stamped on arrival, with the
    namespace and kind its payload names (ours; the seed's payloads name neither).
    ``conn``, the listening session, also reads the database's counters."""

    def __init__(self, conn: asyncpg.Connection[Any]) -> None:
        self.conn = conn
        self.seen: list[tuple[float, str, str]] = []
        self._channels: set[str] = set()
        self._waiting: dict[str, asyncio.Event] = {}

    @classmethod
    async def open(cls, dsn: str) -> Bus:
        """A bus on ``dsn``, hearing the seed's channel (and the barrier markers) and
        ours where the messages sent to one node alone are copied (a hand-over's RESIGN)."""
        bus = cls(await asyncpg.connect(dsn))
        await bus.follow(CHANNEL)
        await bus.follow(Names().changes_channel)
        return bus

    async def follow(self, channel: str) -> None:
        """Hear ``channel`` too (a group's own channel)."""
        if channel not in self._channels:
            self._channels.add(channel)
            await self.conn.add_listener(channel, self._got)

    def _got(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        t = time.monotonic()
        if (marker := self._waiting.get(str(payload))) is not None:
            marker.set()
            return
        try:
            body = json.loads(str(payload))
            self.seen.append((t, str(body.get("ns", "")), str(body.get("k", "?"))))
        except (ValueError, AttributeError):
            self.seen.append((t, "", "?"))

    async def count(self, namespace: str, t0: float) -> Counter[str]:
        """Notifications of ``namespace`` sent from ``t0`` until now, by kind.

        Arrival stamps lag the sending under load, sometimes by more than a whole
        hand-over, so the end is taken from a marker: every message sent before now has
        arrived once a marker sent now comes back (a listener gets notifications in
        commit order).
        """
        marker = f"bench-barrier-{time.monotonic_ns()}"
        self._waiting[marker] = arrived = asyncio.Event()
        try:
            await self.conn.execute("SELECT pg_notify($1, $2)", CHANNEL, marker)
            await asyncio.wait_for(arrived.wait(), 30)
        finally:
            del self._waiting[marker]
        return Counter(k for t, ns, k in self.seen if ns == namespace and t >= t0)

    async def close(self) -> None:
        await self.conn.close()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (from /proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process in MiB (from /proc/<pid>/status)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


class Pool:
    """Node processes of one system on the shared harness, started and imported before
    anything is timed, and reused across trials."""

    def __init__(self, cluster: Cluster, command: Sequence[str]) -> None:
        self.cluster, self.command = cluster, command
        self.idle: list[NodeProcess] = []

    async def reserve(self, count: int) -> None:
        """Have at least ``count`` idle processes ready (started in one batch)."""
        self.idle = [n for n in self.idle if n.live]
        self.idle += await self.cluster.spawn(count - len(self.idle), None, command=self.command)

    async def take(self, count: int) -> list[NodeProcess]:
        await self.reserve(count)
        taken, self.idle = self.idle[:count], self.idle[count:]
        return taken


@dataclass
class Setup:
    """One system at one group of settings on its database: where its trials run and
    where their samples go. ``bus``: counts the notifications of each election (ours) or
    of a steady state."""

    cfg: Config
    pool: Pool
    dsn: str
    rec: Recorder
    bus: Bus | None = None

    @contextlib.asynccontextmanager
    async def group(self, n: int, trial: int, kind: str = "") -> AsyncIterator[Membership]:
        """``n`` nodes of the pool as one group for one trial. Afterwards they leave, and
        each overlap the checker finds is recorded (with ``kind``, or the step it began
        in); a failed trial is a problem of the run."""
        group = Membership(self, await self.pool.take(n), n, trial)
        try:
            yield group
        except TrialFailed as e:
            what = f"{self.cfg.system}/{self.cfg.settings} {kind or 'chain'} N={n} trial {trial}"
            self.rec.problem(f"{what}: {e}")
        finally:
            await group.teardown(kind)


_namespaces = itertools.count(1)


class Membership:
    """The nodes of one group during one trial, and what their reports say."""

    def __init__(self, setup: Setup, nodes: Sequence[NodeProcess], n: int, trial: int) -> None:
        self.setup, self.cfg, self.cluster = setup, setup.cfg, setup.pool.cluster
        self.n, self.trial = n, trial
        self.namespace = f"bench{next(_namespaces)}"
        self.nodes = list(nodes)
        self.start = len(self.cluster.events)
        self.stable_since: float | None = None  # when the last settle() saw agreement
        self.steps: list[tuple[float, str]] = []  # (monotonic time, step) of each fault

    def add(
        self,
        scenario: str,
        value: float | None,
        limit: float | None = None,
        *,
        unit: str = "s",
        note: str = "",
        trial: int | None = None,
    ) -> None:
        """Record a sample of this trial (or of ``trial``: one per node)."""
        cfg, trial = self.cfg, self.trial if trial is None else trial
        self.setup.rec.samples.append(
            Sample(cfg.system, cfg.settings, self.n, scenario, trial, value, limit, unit, note)
        )

    @property
    def pids(self) -> set[int]:
        return {n.pid for n in self.nodes}

    def live(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.live and n.member]

    async def join(self, nodes: Sequence[NodeProcess], at: float) -> None:
        """The nodes join this group at the monotonic instant ``at``."""
        if self.setup.bus is not None and self.cfg.system == "ours":  # a channel per group
            await self.setup.bus.follow(Names().group_channel(self.namespace))
        argv, ns, dsn = self.cfg.argv(), self.namespace, self.setup.dsn
        await asyncio.gather(
            *(self.cluster.join(n, argv, namespace=ns, dsn=dsn, at=at) for n in nodes)
        )

    def stable_leader(self) -> NodeProcess | None:
        return self.cluster.agreed(self.nodes, beliefs=self.cfg.system == "ours")

    async def settle(self, timeout: float) -> NodeProcess | None:
        """Wait until one leader is stable for SETTLE seconds; None after ``timeout``."""
        deadline = time.monotonic() + timeout
        self.stable_since = None
        while time.monotonic() < deadline:
            try:
                leader = await self.cluster.until(
                    self.stable_leader, timeout=deadline - time.monotonic(), what="a leader"
                )
            except TimeoutError:
                return None
            since = self.cluster.events[-1]["m"]
            await asyncio.sleep(SETTLE)  # held for SETTLE seconds: part of the measure
            if self.stable_leader() is leader:
                self.stable_since = since
                return leader
        return None

    async def first(self, ev: str, after: float, mark: int, pids: set[int]) -> Event | None:
        """The first report ``ev`` of one of ``pids`` stamped after ``after``."""
        return await self.cluster.first(
            lambda e: e["ev"] == ev and e["pid"] in pids and e["m"] > after, self.cfg.limit, mark
        )

    async def messages(self, scenario: str, t0: float) -> None:
        """The notifications of this group from ``t0`` until now (it has just settled),
        by kind."""
        if self.setup.bus is not None and self.stable_since is not None:
            counts = await self.setup.bus.count(self.namespace, t0)
            kinds = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            self.add(scenario, counts.total(), unit="count", note=kinds)

    async def teardown(self, kind: str) -> None:
        """Record the overlaps; ours: leave cleanly and return the processes to the pool.
        Seed: kill them (its clean exit waits for the end of the current round)."""
        live = [n for n in self.nodes if not (n.exited or n.killed)]
        for n in live:
            if n.paused:
                self.cluster.signal(n, signal.SIGCONT)
        if self.cfg.system == "ours":
            members = [n for n in live if n.member]
            await asyncio.gather(*(self.cluster.send(n, op="leave") for n in members))
            with contextlib.suppress(TimeoutError):
                await self.cluster.until(
                    lambda: not any(n.member for n in members), timeout=15, what="left"
                )
        for n in live:
            if n.member or self.cfg.system == "seed":
                self.cluster.signal(n, signal.SIGKILL)
            elif n.live:
                self.setup.pool.idle.append(n)
        # Each overlap: how long the earlier leadership could still act, and the step the
        # later one began in.
        spans = self.cluster.spans(self.nodes, self.namespace, clock="m").values()
        for old, new in checker.overlapping(list(spans)):
            began = next((s for t, s in reversed(self.steps) if t <= new.started), "cold start")
            self.add("overlap", old.end - new.started, note=kind or began)


async def chain(setup: Setup, n: int, trial: int, steps: Sequence[str]) -> None:
    """One trial: n nodes start together (cold start), then the leader leaves, is
    killed, is paused (``steps``). Each step waits for a stable leader first and runs only
    while two nodes are live."""
    async with setup.group(n, trial) as group:
        leader: NodeProcess | None = await _cold_start(group)
        for step in steps:
            if len(group.live()) < 2:
                break
            leader = leader or await group.settle(group.cfg.limit)
            if leader is None:
                raise TrialFailed(f"no stable leader before the {step}")
            leader = await _step(group, step, leader)


JOIN_CPU = "join CPU per node"


def busy_cpu_seconds() -> float:
    """CPU time the machine's cores have spent busy so far, all processes (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields)
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


async def _join_cpu(group: Membership, at: float, limit: float) -> float | None:
    """The machine's CPU time from the join instant until every node has joined, per
    node: the nodes' processes, their server sessions and the server's forks (and
    whatever else ran meanwhile: the first elections, this process)."""

    def joined() -> bool:
        return all((e := n.last("ready")) is not None and e["m"] >= at for n in group.nodes)

    await asyncio.sleep(max(0.0, at - time.monotonic()))
    before = busy_cpu_seconds()
    try:
        await group.cluster.until(joined, timeout=limit, what="every node joined")
    except TimeoutError:
        return None
    return (busy_cpu_seconds() - before) / len(group.nodes)


async def _cold_start(group: Membership) -> NodeProcess:
    cfg, n = group.cfg, len(group.nodes)
    at = time.monotonic() + GO_DELAY
    # Many nodes joining at once on few cores take a while to all get connected.
    limit = cfg.limit + 0.1 * n
    cpu = asyncio.create_task(_join_cpu(group, at, limit + GO_DELAY))
    try:
        return await _started(group, at, limit, cpu)
    finally:
        cpu.cancel()  # (done by then, unless the trial failed first)


async def _started(
    group: Membership, at: float, limit: float, cpu: asyncio.Task[float | None]
) -> NodeProcess:
    cfg = group.cfg
    await group.join(group.nodes, at)
    first = await group.first("elected", 0.0, group.start, group.pids)
    group.add("cold start", None if first is None else first["m"] - at, cfg.limit)
    agreed = None if first is None else await group.settle(limit)
    # Settled: one leader, known to every node (ours; the seed reports no beliefs), held
    # for SETTLE seconds. The seed's "all agree" would only repeat its cold start.
    group.add("settled", float(agreed is not None), unit="count")
    for node in group.nodes:  # every node has joined by now, or never will
        for e in node.of("ready"):
            group.add("join (enter returns)", e["m"] - at)
    group.add(JOIN_CPU, await cpu)
    if cfg.system == "ours":
        since = group.stable_since
        group.add("all agree on the leader", None if since is None else since - at, limit)
        await group.messages("messages: cold start", at)
    if agreed is None:
        raise TrialFailed(f"no {'first' if first is None else 'stable'} leader")
    return agreed


async def _step(group: Membership, step: str, leader: NodeProcess) -> NodeProcess | None:
    """One fault to the group's stable leader; the next one if it is settled already
    (after a hand-over of ours)."""
    cfg, cluster = group.cfg, group.cluster
    mark, others = len(cluster.events), group.pids - {leader.pid}
    group.steps.append((time.monotonic(), step))
    if step == "hand-over":
        await cluster.send(leader, op="leave")
        leaving = await group.first("leaving", 0.0, mark, {leader.pid})
        if leaving is None:
            raise TrialFailed("the leader did not start leaving")
        t0 = leaving["m"]
    else:
        t0 = time.monotonic()
        cluster.signal(leader, signal.SIGKILL if step == "crash" else signal.SIGSTOP)
    new = await group.first("elected", t0, mark, others)
    group.add(STEPS[step], None if new is None else new["m"] - t0, cfg.limit)
    if step == "hand-over" and cfg.system == "ours":
        await cluster.until(lambda: not leader.member, timeout=15, what="left")
        settled = None if new is None else await group.settle(cfg.limit)
        if settled is not None:
            await group.messages("messages: hand-over", t0)
        return settled
    if step == "pause":
        if new is not None:
            await asyncio.sleep(0.2)  # the new leader has been acting for a while on resume
        cluster.signal(leader, signal.SIGCONT)
        # It stands down (ours), or acts on beside the new leader until a later round
        # of the seed deposes one of them: the checker sees it in the spans.
        term = leader.leading_term
        with contextlib.suppress(TimeoutError):
            await cluster.until(
                lambda: leader.leading_term != term,
                timeout=2 * (cfg.interval + cfg.timeout) + 5.0,
                what="the resumed leader stood down",
            )
    if cfg.system == "seed" and step != "crash":
        cluster.signal(leader, signal.SIGKILL)
    return None


async def steady_state(setup: Setup, n: int, duration: float) -> None:
    """N idle nodes for ``duration`` seconds: notifications/s, CPU and RSS per node,
    connections used (every session on the group's database but the bus's)."""
    cfg, bus = setup.cfg, setup.bus
    assert bus is not None
    async with setup.group(n, 0, "steady state") as group:
        await group.join(group.nodes, time.monotonic() + GO_DELAY)
        # The seed's first round ends after interval + timeout; many nodes take a while to
        # all connect.
        seed_round = 30 if cfg.system == "seed" else 0
        if (leader := await group.settle(cfg.limit + 0.1 * n + seed_round)) is None:
            raise TrialFailed("no stable leader")
        cpu0 = {node.pid: cpu_seconds(node.pid) for node in group.nodes}
        xacts0, t0 = await transactions(bus.conn), time.monotonic()
        await asyncio.sleep(duration)  # the measurement window
        cpu1 = {node.pid: cpu_seconds(node.pid) for node in group.nodes}
        t1, xacts1 = time.monotonic(), await transactions(bus.conn)
        elapsed, window = t1 - t0, [t for t, _, _ in bus.seen if t0 <= t < t1]
        connections = await bus.conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        # Between the first and the last arrival: a count over the whole window would be off
        # by one notification depending on the phase of the heartbeat.
        if len(window) >= 2:
            rate = (len(window) - 1) / (window[-1] - window[0])
        else:
            rate = len(window) / elapsed
        group.add("notifications", rate, unit="1/s", note=f"{len(window)} in {elapsed:.1f} s")
        if cfg.system == "ours":
            group.add("messages per interval", rate * cfg.interval, unit="count")
        group.add("connections", float(connections), unit="count")
        # Each of the two reads of the counters is a transaction of its own, and the
        # statistics lag by up to PGSTAT_MIN_INTERVAL: a rate over a window of seconds.
        group.add("transactions", max(0.0, (xacts1 - xacts0 - 1) / elapsed), unit="1/s")
        for i, node in enumerate(group.nodes):
            a, b, rss = cpu0[node.pid], cpu1[node.pid], rss_mib(node.pid)
            role = "leader" if node is leader else "follower"
            if a is not None and b is not None:
                group.add("idle CPU", 100 * (b - a) / elapsed, unit="%", note=role, trial=i)
            if rss is not None:
                group.add("RSS", rss, unit="MiB", note=role, trial=i)
        if group.stable_leader() is not leader:
            raise TrialFailed("the leader changed in steady state")


def _leaderless(nodes: Sequence[NodeProcess], t0: float, t1: float) -> float:
    """Time within [t0, t1] when no node acted: from its ``elected`` to the end of its
    ``on_elected`` work (``span_end``), or its exit for a process that ended acting."""
    edges: list[tuple[float, int]] = []
    for node in nodes:
        opened: float | None = None
        for e in node.events[node.since :]:
            if e["ev"] == "elected" and opened is None:
                opened = e["m"]
            elif e["ev"] == "span_end" and opened is not None:
                edges += [(opened, 1), (e["m"], -1)]
                opened = None
        if opened is not None:
            edges += [(opened, 1), (min(node.dead_m or t1, t1), -1)]
    acting, none, last = 0, 0.0, t0
    for t, step in sorted(edges):
        t = min(max(t, t0), t1)
        if acting == 0:
            none += t - last
        acting += step
        last = t
    return none + (t1 - last if acting == 0 else 0.0)


async def rolling_restart(setup: Setup, replicas: int, trial: int) -> None:
    """A rolling deploy of ``replicas`` processes: for each old replica in turn, start a
    replacement, wait until it has joined, then SIGTERM the old one and wait for its exit.

    Records the leadership changes (new terms) and the leader-less time during the roll,
    and every overlap of two acting nodes (the checker's, from the nodes' records).
    """
    cfg, cluster = setup.cfg, setup.pool.cluster
    await setup.pool.reserve(2 * replicas)
    async with setup.group(replicas, trial, "rolling restart") as group:
        olds = list(group.nodes)
        await group.join(olds, time.monotonic() + GO_DELAY)
        if await group.settle(cfg.limit + 0.1 * replicas) is None:
            group.add("rolling: settled", 0.0, unit="count")
            raise TrialFailed("no stable leader before the roll")
        roll, t0 = len(cluster.events), time.monotonic()
        for old in olds:
            [new] = await setup.pool.take(1)
            group.nodes.append(new)
            await group.join([new], time.monotonic())
            try:
                await cluster.ready([new], timeout=cfg.limit)
                await cluster.stop_node(old, timeout=cfg.limit)
            except (TimeoutError, AssertionError) as e:
                raise TrialFailed("a replacement did not join, or an old one did not exit") from e
        settled = await group.settle(cfg.limit)
        group.add("rolling: settled", float(settled is not None), unit="count")
        if settled is None or group.stable_since is None:
            raise TrialFailed("no stable leader after the roll")
        t1, pids = group.stable_since, group.pids
        elected = [e for e in cluster.events[roll:] if e["ev"] == "elected" and e["pid"] in pids]
        group.add("rolling: leadership changes", len({e["term"] for e in elected}), unit="count")
        group.add("rolling: leader-less time", _leaderless(group.nodes, t0, t1))
        group.add("rolling: duration", t1 - t0)
        await group.messages("rolling: messages", t0)


# --------------------------------------------------------------------- physical floors


async def floor_notify(dsn: str, samples: int) -> list[float]:
    """Latency of one NOTIFY from one session to a listening one."""
    sender, listener = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    arrived: asyncio.Queue[float] = asyncio.Queue()
    await listener.add_listener("bench_floor", lambda *_: arrived.put_nowait(time.monotonic()))
    out = []
    try:
        for _ in range(samples):
            t0 = time.monotonic()
            await sender.execute("NOTIFY bench_floor")
            out.append(await asyncio.wait_for(arrived.get(), 5) - t0)
        return out
    finally:
        await sender.close()
        await listener.close()


_CONNECTER = """
import asyncio, sys, time, asyncpg
async def main():
    print("ready", flush=True)
    at = float(sys.stdin.readline())
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    conns = await asyncio.gather(*(asyncpg.connect(sys.argv[1]) for _ in range(int(sys.argv[2]))))
    print(time.monotonic() - at, flush=True)
    sys.stdin.readline()
    await asyncio.gather(*(c.close() for c in conns))
asyncio.run(main())
"""


async def floor_connect(dsn: str, processes: int, each: int, trials: int) -> list[float]:
    """``processes`` processes open ``each`` connections at one instant: how long until
    each process has them all (a join needs no less: ours opens two, 0.0.3's one)."""
    out: list[float] = []
    for _ in range(trials):
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", _CONNECTER, dsn, str(each),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(processes)
        ]  # fmt: skip
        try:
            for proc in procs:
                assert proc.stdout is not None
                await asyncio.wait_for(proc.stdout.readline(), 60)  # imported: ready
            at = f"{time.monotonic() + GO_DELAY}\n".encode()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(at)
            for proc in procs:
                assert proc.stdout is not None
                out.append(float(await asyncio.wait_for(proc.stdout.readline(), 60)))
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
    return out


LOCK_KEY = 7_000_001
_HOLDER = f"""
import asyncio, sys, asyncpg
async def main():
    conn = await asyncpg.connect(sys.argv[1])
    await conn.execute("SELECT pg_advisory_lock({LOCK_KEY})")
    print("locked", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def _holder(dsn: str, kill: bool) -> AsyncIterator[Callable[[], Awaitable[object] | None]]:
    """A session holding the advisory lock; yields how to free it: unlock (in this
    process: awaited), or ``kill``: SIGKILL of the process the session belongs to."""
    if not kill:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
            yield lambda: conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        finally:
            await conn.close()
        return
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, dsn, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        if (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() != b"locked":
            raise RuntimeError("lock holder failed to start")
        yield proc.kill
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def floor_lock(dsn: str, samples: int, *, kill: bool) -> list[float]:
    """An advisory lock reaches a waiting session once its holder unlocks it, or
    (``kill``) once the holder's process is killed with SIGKILL."""
    waiter, probe = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    queued = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND objid = $1::bigint"
    )
    out = []
    try:
        for _ in range(samples):
            async with _holder(dsn, kill) as free:
                wait = asyncio.create_task(waiter.execute("SELECT pg_advisory_lock($1)", LOCK_KEY))
                deadline = time.monotonic() + 10
                while not await probe.fetchval(queued, LOCK_KEY):  # polls the server's view
                    if time.monotonic() > deadline:
                        raise TimeoutError("the waiter never queued for the advisory lock")
                    await asyncio.sleep(0.005)
                t0 = time.monotonic()
                if (unlocking := free()) is not None:
                    await unlocking
                await wait
                out.append(time.monotonic() - t0)
                await waiter.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        return out
    finally:
        await waiter.close()
        await probe.close()
