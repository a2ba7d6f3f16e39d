"""The measured scenarios: election chains (cold start, hand-over, crash, pause), steady
state, rolling restarts, and the physical floors of PostgreSQL itself.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from notifelect._cluster import checker
from notifelect._cluster.harness import Cluster, Event, NodeProcess
from notifelect.schema import Names

CHANNEL = "ch_notifelect"  # the seed's channel (ours has one per group: channel_for)


def channel_for(system: str, namespace: str) -> str:
    """The channel that carries a group's messages: ours has one per group."""
    return Names().group_channel(namespace) if system == "ours" else CHANNEL


GO_DELAY = 0.3  # the join command reaches every node before the shared start instant
SETTLE = 0.5  # steady time after a leader is known to all, before the next fault
ACT_PERIOD = 0.02  # a leader's leader-only action (and report) every this many seconds
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Config:
    """One system at one group of settings."""

    system: str  # "ours" or "seed"
    settings: str  # "default", "fast", or the other take-over than the default ("strict"
    # for strict_takeover=True, "fastcrash" for strict_takeover=False)
    interval: float
    timeout: float
    lease: float = 0.0  # ours only: lease and leader_timeout (0 for the seed)
    leader_timeout: float = 0.0
    strict_takeover: bool | None = None  # ours only; None: the library's default

    @property
    def limit(self) -> float:
        """How long to wait for a new leader before recording "no leader" (censored)."""
        if self.system == "ours":
            return self.lease + self.leader_timeout + 5.0
        return 2 * (self.interval + self.timeout) + 5.0

    def argv(self) -> list[str]:
        """The node program's options for these settings (the library's lease and
        leader_timeout: its defaults)."""
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

    def add(
        self,
        cfg: Config,
        n: int,
        scenario: str,
        trial: int,
        value: float | None,
        limit: float | None = None,
        unit: str = "s",
        note: str = "",
    ) -> None:
        self.samples.append(
            Sample(cfg.system, cfg.settings, n, scenario, trial, value, limit, unit, note)
        )

    def problem(self, text: str) -> None:
        self.problems.append(text)
        print(f"  ! {text}", file=sys.stderr, flush=True)


class Bus:
    """Every notification on the channel of one database, stamped on arrival, with the
    namespace and kind its payload names (ours; the seed's payloads name neither)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str, str]] = []
        self._conn: asyncpg.Connection[Any] | None = None
        self._marker = 0
        self._waiting: dict[str, asyncio.Event] = {}

    async def start(self, dsn: str) -> None:
        self._conn = await asyncpg.connect(dsn)
        await self._conn.add_listener(CHANNEL, self._got)

    async def follow(self, channel: str) -> None:
        """Hear ``channel`` too (a group's own channel)."""
        assert self._conn is not None
        if channel != CHANNEL:
            await self._conn.add_listener(channel, self._got)

    def _got(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        t = time.monotonic()
        marker = self._waiting.get(str(payload))
        if marker is not None:
            marker.set()
            return
        try:
            body = json.loads(str(payload))
            ns, kind = str(body.get("ns", "")), str(body.get("k", "?"))
        except (ValueError, AttributeError):
            ns, kind = "", "?"
        self.seen.append((t, ns, kind))

    async def count(self, namespace: str, t0: float, t1: float) -> Counter[str]:
        """Notifications of ``namespace`` sent in [t0, t1], by kind.

        Arrival stamps lag the sending under load, sometimes by more than a whole
        hand-over, so the end is taken from a marker: every election message sent before
        ``t1`` has arrived once a marker sent now comes back (a listener gets
        notifications in commit order). Periodic heartbeats are counted up to ``t1``
        only, as they keep coming after the election has settled.
        """
        await self._barrier()
        return Counter(
            k
            for t, ns, k in self.seen
            if ns == namespace and t0 <= t and (t <= t1 or k != "heartbeat")
        )

    async def _barrier(self) -> None:
        assert self._conn is not None
        self._marker += 1
        marker = f"bench-barrier-{self._marker}"
        arrived = asyncio.Event()
        self._waiting[marker] = arrived
        try:
            await self._conn.execute("SELECT pg_notify($1, $2)", CHANNEL, marker)
            await asyncio.wait_for(arrived.wait(), 30)
        finally:
            del self._waiting[marker]

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


def _kinds(counts: Counter[str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))


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


class Pool:
    """Node processes of one system on the shared harness, started and imported before
    anything is timed, and reused across trials."""

    def __init__(self, system: str, cluster: Cluster, command: Sequence[str]) -> None:
        self.system = system
        self.cluster = cluster
        self.command = command
        self.idle: list[NodeProcess] = []

    async def reserve(self, count: int) -> None:
        """Have at least ``count`` idle processes ready (started in one batch)."""
        self.idle = [n for n in self.idle if n.live]
        new = [
            await self.cluster.start(None, command=self.command)
            for _ in range(count - len(self.idle))
        ]
        await self.cluster.ready(new, joined=False)
        self.idle += new

    async def take(self, count: int) -> list[NodeProcess]:
        await self.reserve(count)
        taken, self.idle = self.idle[:count], self.idle[count:]
        return taken

    def give_back(self, node: NodeProcess) -> None:
        if node.live and not node.member:
            self.idle.append(node)


_namespaces = itertools.count(1)


def _overlaps(spans: Sequence[checker.Span]) -> list[tuple[float, float]]:
    """Each overlap the checker finds: when the later leadership began, and for how long
    the earlier one could still act then (seconds; inf: it never stopped)."""
    found = checker.span_overlaps(spans)
    ordered = sorted(spans, key=lambda s: s.term)
    pairs = [
        (after.started, before.end - after.started)
        for i, after in enumerate(ordered)
        for before in ordered[:i]
        if before.end > after.started
    ]
    assert len(pairs) == len(found)
    return pairs


class Membership:
    """The nodes of one group during one trial, and what their reports say."""

    def __init__(
        self, pool: Pool, cfg: Config, nodes: Sequence[NodeProcess], bus: Bus | None = None
    ) -> None:
        self.pool = pool
        self.cluster = pool.cluster
        self.cfg = cfg
        self.bus = bus
        self.namespace = f"bench{next(_namespaces)}"
        self.nodes = list(nodes)
        self.start = self.cluster.events.__len__()
        self.stable_since: float | None = None  # when the last settle() saw agreement
        self.steps: list[tuple[float, str]] = []  # (monotonic time, fault) of each step

    @property
    def pids(self) -> set[int]:
        return {n.pid for n in self.nodes}

    def live(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.live and n.member]

    async def join(self, nodes: Sequence[NodeProcess], dsn: str, at: float) -> None:
        await asyncio.gather(
            *(
                self.cluster.join(n, self.cfg.argv(), namespace=self.namespace, dsn=dsn, at=at)
                for n in nodes
            )
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

    async def next_leader(self, old: NodeProcess, after: float, mark: int) -> Event | None:
        """The first ``elected`` of another node stamped after ``after``."""
        others = self.pids - {old.pid}
        return await self.cluster.first(
            lambda e: e["ev"] == "elected" and e["pid"] in others and e["m"] > after,
            self.cfg.limit,
            mark,
        )

    async def event_of(self, node: NodeProcess, ev: str, mark: int, timeout: float) -> Event | None:
        return await self.cluster.first(
            lambda e: e["ev"] == ev and e["pid"] == node.pid, timeout, mark
        )

    def overlaps(self) -> list[tuple[float, str]]:
        """Overlaps of two acting nodes in this group, from what the nodes recorded: how
        long, and in which step the later leadership began."""
        spans = self.cluster.spans(self.nodes, self.namespace, clock="m")
        return [
            (seconds, next((s for t, s in reversed(self.steps) if t <= began), "cold start"))
            for began, seconds in _overlaps(list(spans.values()))
        ]

    async def teardown(self) -> None:
        """Ours: leave cleanly and return the processes to the pool. Seed: kill them (its
        clean exit waits for the end of the current round, up to interval + timeout)."""
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
            else:
                self.pool.give_back(n)


def _left(node: NodeProcess) -> Callable[[], bool]:
    return lambda: not node.member


def _joined(node: NodeProcess) -> Callable[[], bool]:
    return lambda: node.member


def _stood_down(node: NodeProcess, term: int | None) -> Callable[[], bool]:
    return lambda: node.leading_term != term


async def chain(
    pool: Pool,
    cfg: Config,
    dsn: str,
    n: int,
    trial: int,
    rec: Recorder,
    steps: Sequence[str] = ("cold", "handover", "crash", "pause"),
    bus: Bus | None = None,
) -> None:
    """One trial: n nodes start together, then the leader leaves, is killed, is paused.

    Each step waits for a stable leader first; a step runs only while two nodes are live.
    ``bus`` (ours): count the notifications of each election on the channel.
    """
    group = Membership(pool, cfg, await pool.take(n), bus)
    if bus is not None:
        await bus.follow(channel_for(cfg.system, group.namespace))
    try:
        await _chain_steps(group, cfg, dsn, n, trial, rec, steps)
    finally:
        await group.teardown()
        for value, step in group.overlaps():
            rec.add(cfg, n, "overlap", trial, value, note=step)


async def _chain_steps(
    group: Membership,
    cfg: Config,
    dsn: str,
    n: int,
    trial: int,
    rec: Recorder,
    steps: Sequence[str],
) -> None:
    cluster = group.cluster
    at = time.monotonic() + GO_DELAY
    await group.join(group.nodes, dsn, at)
    first = await cluster.first(
        lambda e: e["ev"] == "elected" and e["pid"] in group.pids, cfg.limit, group.start
    )
    cold = "cold" in steps
    if cold:
        rec.add(cfg, n, "cold start", trial, None if first is None else first["m"] - at, cfg.limit)
    # Many nodes joining at once on few cores take a while to all get connected.
    limit = cfg.limit + 0.1 * n
    agreed = None if first is None else await group.settle(limit)
    # Settled: one leader, known to every node (ours; the seed reports no beliefs), held
    # for SETTLE seconds. The seed's "all agree" would only repeat its cold start.
    rec.add(cfg, n, "settled", trial, float(agreed is not None), unit="count")
    if cold:  # every node has joined by now, or never will
        for node in group.nodes:
            for e in node.of("ready"):
                rec.add(cfg, n, "join (enter returns)", trial, e["m"] - at)
    if cold and cfg.system == "ours":
        value = None if group.stable_since is None else group.stable_since - at
        rec.add(cfg, n, "all agree on the leader", trial, value, limit)
        if group.bus is not None and group.stable_since is not None:
            counts = await group.bus.count(group.namespace, at, group.stable_since)
            rec.add(
                cfg, n, "messages: cold start", trial, counts.total(), unit="count",
                note=_kinds(counts),
            )  # fmt: skip
    name = f"{cfg.system}/{cfg.settings} N={n} trial {trial}"
    if first is None or agreed is None:
        rec.problem(f"{name}: no {'first' if first is None else 'stable'} leader")
        return
    leader: NodeProcess | None = agreed
    for step in steps:
        if step == "cold" or len(group.live()) < 2:
            continue
        leader = leader or await group.settle(cfg.limit)
        if leader is None:
            rec.problem(f"{name}: no stable leader")
            return
        mark = len(cluster.events)
        group.steps.append((time.monotonic(), {"handover": "hand-over"}.get(step, step)))
        if step == "handover":
            await cluster.send(leader, op="leave")
            leaving = await group.event_of(leader, "leaving", mark, 10.0)
            if leaving is None:
                rec.problem(f"{name}: leader did not start leaving")
                return
            new = await group.next_leader(leader, leaving["m"], mark)
            took = None if new is None else new["m"] - leaving["m"]
            rec.add(cfg, n, "hand-over", trial, took, cfg.limit)
            if cfg.system == "seed":
                cluster.signal(leader, signal.SIGKILL)
                leader = None
                continue
            await cluster.until(_left(leader), timeout=15, what="left")
            leader = None if new is None else await group.settle(cfg.limit)
            if leader is not None and group.bus is not None and group.stable_since is not None:
                counts = await group.bus.count(group.namespace, leaving["m"], group.stable_since)
                rec.add(
                    cfg, n, "messages: hand-over", trial, counts.total(), unit="count",
                    note=_kinds(counts),
                )  # fmt: skip
            continue
        t0 = time.monotonic()
        if step == "crash":
            cluster.signal(leader, signal.SIGKILL)
            new = await group.next_leader(leader, t0, mark)
            rec.add(
                cfg, n, "crash (SIGKILL)", trial, None if new is None else new["m"] - t0, cfg.limit
            )
        elif step == "pause":
            cluster.signal(leader, signal.SIGSTOP)
            new = await group.next_leader(leader, t0, mark)
            rec.add(
                cfg, n, "pause (SIGSTOP)", trial, None if new is None else new["m"] - t0, cfg.limit
            )
            if new is not None:
                await asyncio.sleep(0.2)  # the new leader has been acting for a while on resume
            cluster.signal(leader, signal.SIGCONT)
            # It stands down (ours), or acts on beside the new leader until a later round
            # of the seed deposes one of them: the checker sees it in the spans.
            term = leader.leading_term
            with contextlib.suppress(TimeoutError):
                await cluster.until(
                    _stood_down(leader, term),
                    timeout=2 * (cfg.interval + cfg.timeout) + 5.0,
                    what="the resumed leader stood down",
                )
            if cfg.system == "seed":
                cluster.signal(leader, signal.SIGKILL)
        leader = None


async def _transactions(conn: asyncpg.Connection[Any]) -> int:
    """Commits and rollbacks of the current database so far (the server's statistics)."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    value = await conn.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database"
        " WHERE datname = current_database()"
    )
    return int(value)


async def steady_state(
    pool: Pool, cfg: Config, dsn: str, n: int, duration: float, rec: Recorder
) -> None:
    """N idle nodes for ``duration`` seconds: notifications/s, CPU and RSS per node,
    connections used (every session on the group's database but the listener's)."""
    listener = await asyncpg.connect(dsn)
    received: list[float] = []

    def count(*_: object) -> None:
        received.append(time.monotonic())

    nodes = await pool.take(n)
    group = Membership(pool, cfg, nodes)
    await listener.add_listener(channel_for(cfg.system, group.namespace), count)
    try:
        await group.join(nodes, dsn, time.monotonic() + GO_DELAY)
        # The seed's first round ends after interval + timeout; many nodes take a while
        # to all connect.
        leader = await group.settle(cfg.limit + 0.1 * n + (30 if cfg.system == "seed" else 0))
        if leader is None:
            rec.problem(f"{cfg.system}/{cfg.settings} N={n} steady state: no stable leader")
            return
        cpu0 = {node.pid: cpu_seconds(node.pid) for node in nodes}
        xacts0 = await _transactions(listener)
        t0 = time.monotonic()
        await asyncio.sleep(duration)  # the measurement window
        cpu1 = {node.pid: cpu_seconds(node.pid) for node in nodes}
        t1 = time.monotonic()
        xacts1 = await _transactions(listener)
        elapsed = t1 - t0
        window = [t for t in received if t0 <= t < t1]
        connections = await listener.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        # Between the first and the last arrival: a count over the whole window would be
        # off by one notification depending on the phase of the heartbeat.
        if len(window) >= 2:
            rate = (len(window) - 1) / (window[-1] - window[0])
        else:
            rate = len(window) / elapsed
        rec.add(
            cfg, n, "notifications", 0, rate, unit="1/s", note=f"{len(window)} in {elapsed:.1f} s"
        )
        if cfg.system == "ours":
            rec.add(cfg, n, "messages per interval", 0, rate * cfg.interval, unit="count")
        rec.add(cfg, n, "connections", 0, float(connections), unit="count")
        # Each of the two reads of the counters is a transaction of its own, and the
        # statistics lag by up to PGSTAT_MIN_INTERVAL: a rate over a window of seconds.
        rec.add(cfg, n, "transactions", 0, max(0.0, (xacts1 - xacts0 - 1) / elapsed), unit="1/s")
        for i, node in enumerate(nodes):
            a, b, rss = cpu0[node.pid], cpu1[node.pid], rss_mib(node.pid)
            role = "leader" if node is leader else "follower"
            if a is not None and b is not None:
                rec.add(cfg, n, "idle CPU", i, 100 * (b - a) / elapsed, unit="%", note=role)
            if rss is not None:
                rec.add(cfg, n, "RSS", i, rss, unit="MiB", note=role)
        if group.stable_leader() is not leader:
            rec.problem(f"{cfg.system}/{cfg.settings} N={n}: leader changed in steady state")
    finally:
        await group.teardown()
        await listener.close()


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


async def rolling_restart(
    pool: Pool, cfg: Config, dsn: str, replicas: int, trial: int, rec: Recorder,
    bus: Bus | None = None,
) -> None:  # fmt: skip
    """A rolling deploy of ``replicas`` processes: for each old replica in turn, start a
    replacement, wait until it has joined, then SIGTERM the old one and wait for its exit.

    Records the leadership changes (new terms) and the leader-less time during the roll,
    and every overlap of two acting nodes (the checker's, from the nodes' records).
    """
    await pool.reserve(2 * replicas)
    olds = await pool.take(replicas)
    cluster = pool.cluster
    group = Membership(pool, cfg, olds, bus)
    if bus is not None:
        await bus.follow(channel_for(cfg.system, group.namespace))
    name = f"{cfg.system}/{cfg.settings} rolling R={replicas} trial {trial}"
    try:
        await group.join(olds, dsn, time.monotonic() + GO_DELAY)
        if await group.settle(cfg.limit + 0.1 * replicas) is None:
            rec.add(cfg, replicas, "rolling: settled", trial, 0.0, unit="count")
            rec.problem(f"{name}: no stable leader before the roll")
            return
        roll = len(cluster.events)
        t0 = time.monotonic()
        for old in olds:
            [new] = await pool.take(1)
            group.nodes.append(new)
            await group.join([new], dsn, time.monotonic())
            try:
                await cluster.until(_joined(new), timeout=cfg.limit, what="joined")
                await cluster.stop_node(old, timeout=cfg.limit)
            except (TimeoutError, AssertionError):
                rec.problem(f"{name}: a replacement did not join, or an old one did not exit")
                return
        settled = await group.settle(cfg.limit)
        rec.add(cfg, replicas, "rolling: settled", trial, float(settled is not None), unit="count")
        if settled is None or group.stable_since is None:
            rec.problem(f"{name}: no stable leader after the roll")
            return
        t1 = group.stable_since
        pids = group.pids
        terms = {
            e["term"] for e in cluster.events[roll:] if e["ev"] == "elected" and e["pid"] in pids
        }
        rec.add(cfg, replicas, "rolling: leadership changes", trial, len(terms), unit="count")
        rec.add(cfg, replicas, "rolling: leader-less time", trial, _leaderless(group.nodes, t0, t1))
        rec.add(cfg, replicas, "rolling: duration", trial, t1 - t0)
        if bus is not None:
            counts = await bus.count(group.namespace, t0, t1)
            heartbeats = counts.pop("heartbeat", 0)
            rec.add(
                cfg, replicas, "rolling: messages", trial, counts.total(), unit="count",
                note=f"{_kinds(counts)}; and {heartbeats} heartbeats",
            )  # fmt: skip
    finally:
        await group.teardown()
        for value, _ in group.overlaps():
            rec.add(cfg, replicas, "overlap", trial, value, note="rolling restart")


# --------------------------------------------------------------------- physical floors


async def floor_notify(dsn: str, samples: int) -> list[float]:
    """Latency of one NOTIFY from one session to a listening one."""
    sender, listener = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        loop = asyncio.get_running_loop()
        arrived: asyncio.Future[float] = loop.create_future()

        def got(*_: object) -> None:
            if not arrived.done():
                arrived.set_result(time.monotonic())

        await listener.add_listener("bench_floor", got)
        out = []
        for _ in range(samples):
            arrived = loop.create_future()
            t0 = time.monotonic()
            await sender.execute("NOTIFY bench_floor")
            out.append(await asyncio.wait_for(arrived, 5) - t0)
        return out
    finally:
        await sender.close()
        await listener.close()


async def _waiting_for_lock(probe: asyncpg.Connection[Any], key: int) -> None:
    """Poll until some session waits for the advisory lock ``key``."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        waiting = await probe.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND objid = $1::bigint",
            key,
        )
        if waiting:
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("the waiter never queued for the advisory lock")


async def floor_lock_release(dsn: str, samples: int) -> list[float]:
    """An advisory lock released by its holder (pg_advisory_unlock) reaches a waiter."""
    holder, waiter, probe = [await asyncpg.connect(dsn) for _ in range(3)]
    key = 7_000_001
    out = []
    try:
        for _ in range(samples):
            await holder.execute("SELECT pg_advisory_lock($1)", key)
            wait = asyncio.create_task(waiter.execute("SELECT pg_advisory_lock($1)", key))
            await _waiting_for_lock(probe, key)
            t0 = time.monotonic()
            await holder.execute("SELECT pg_advisory_unlock($1)", key)
            await wait
            out.append(time.monotonic() - t0)
            await waiter.execute("SELECT pg_advisory_unlock($1)", key)
        return out
    finally:
        for conn in (holder, waiter, probe):
            await conn.close()


_HOLDER = """
import asyncio, sys, asyncpg
async def main():
    conn = await asyncpg.connect(sys.argv[1])
    await conn.execute("SELECT pg_advisory_lock(7000002)")
    print("locked", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def floor_lock_kill(dsn: str, samples: int) -> list[float]:
    """An advisory lock held by a process killed with SIGKILL reaches a waiter."""
    waiter, probe = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    key = 7_000_002
    out = []
    try:
        for _ in range(samples):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _HOLDER, dsn, stdout=asyncio.subprocess.PIPE
            )
            try:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                if line.strip() != b"locked":
                    raise RuntimeError("lock holder failed to start")
                wait = asyncio.create_task(waiter.execute("SELECT pg_advisory_lock($1)", key))
                await _waiting_for_lock(probe, key)
                t0 = time.monotonic()
                proc.kill()
                await wait
                out.append(time.monotonic() - t0)
                await waiter.execute("SELECT pg_advisory_unlock($1)", key)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return out
    finally:
        await waiter.close()
        await probe.close()
