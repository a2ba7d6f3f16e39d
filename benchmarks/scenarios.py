"""The measured scenarios: election chains (cold start, hand-over, crash, pause), steady
state, and the physical floors of PostgreSQL itself.

Times are differences of ``time.monotonic()`` stamps taken by the processes involved: the
harness stamps what it does to a node (SIGKILL, SIGSTOP), a node stamps what it does
itself (joined, leaving, elected). CLOCK_MONOTONIC is one clock for the whole host.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from notifelect.schema import Names

from .procs import Cluster, Event, Log, Node, cpu_seconds, rss_mib

CHANNEL = "ch_notifelect"  # the seed's channel (ours has one per group: channel_for)


def channel_for(system: str, namespace: str) -> str:
    """The channel that carries a group's messages: ours has one per group."""
    return Names().group_channel(namespace) if system == "ours" else CHANNEL


GO_DELAY = 0.3  # the join command reaches every node before the shared start instant
SETTLE = 0.5  # steady time after a leader is known to all, before the next fault


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

    def join_command(self, dsn: str, namespace: str, at: float) -> dict[str, Any]:
        cmd: dict[str, Any] = {
            "op": "join",
            "dsn": dsn,
            "namespace": namespace,
            "interval": self.interval,
            "timeout": self.timeout,
            "at": at,
        }
        if self.strict_takeover is not None:
            cmd["strict_takeover"] = self.strict_takeover
        return cmd


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


_namespaces = itertools.count(1)


def _fresh_namespace() -> str:
    return f"bench{next(_namespaces)}"


class Membership:
    """The nodes of one group during one trial, and what their events say."""

    def __init__(
        self,
        cluster: Cluster,
        cfg: Config,
        nodes: Sequence[Node],
        start: int,
        bus: Bus | None = None,
    ) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.bus = bus
        self.namespace = _fresh_namespace()
        self.log: Log = cluster.log
        self.nodes = list(nodes)
        self.start = start
        self.gone: set[int] = set()  # pids that left or were killed
        self.stable_since: float | None = None  # when the last settle() saw agreement

    @property
    def pids(self) -> set[int]:
        return {n.pid for n in self.nodes}

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.alive and not n.stopped and n.pid not in self.gone]

    def view(self) -> tuple[dict[int, bool], dict[int, Any], dict[int, int]]:
        """(acting, believed leader node, node id) per pid, from this trial's events."""
        acting: dict[int, bool] = {}
        believes: dict[int, Any] = {}
        node_of: dict[int, int] = {}
        pids = self.pids
        for e in self.log.events[self.start :]:
            pid = e["pid"]
            if pid not in pids:
                continue
            ev = e["ev"]
            if ev == "joined":
                node_of[pid] = e["node"]
            elif ev == "elected":
                acting[pid] = True
            elif ev in ("deposed", "left"):
                acting[pid] = False
            elif ev == "leader":
                believes[pid] = e["leader"]
        return acting, believes, node_of

    def stable_leader(self) -> Node | None:
        """The one acting node, if every live node agrees on it (ours) or it is alone (seed)."""
        acting, believes, node_of = self.view()
        live = self.live()
        leaders = [n for n in live if acting.get(n.pid)]
        if len(leaders) != 1:
            return None
        leader = leaders[0]
        if any(acting.get(n.pid) for n in self.nodes if n.pid in self.gone and n.alive):
            return None
        if self.cfg.system == "ours":
            want = node_of.get(leader.pid)
            if want is None or any(believes.get(n.pid) != want for n in live):
                return None
        return leader

    async def settle(self, timeout: float) -> Node | None:
        """Wait until one leader is stable for SETTLE seconds; None after ``timeout``."""
        deadline = time.monotonic() + timeout
        self.stable_since = None
        while time.monotonic() < deadline:
            leader = self.stable_leader()
            if leader is None:
                await self.log.changed(deadline - time.monotonic())
                continue
            since = self.log.events[-1]["t"] if self.log.events else time.monotonic()
            await asyncio.sleep(SETTLE)
            if self.stable_leader() is leader:
                self.stable_since = since
                return leader
        return None

    async def next_leader(self, old: Node, after: float, mark: int) -> Event | None:
        """The first ``elected`` of another node stamped after ``after``."""
        others = self.pids - {old.pid}
        return await self.log.first(
            lambda e: e["ev"] == "elected" and e["pid"] in others and e["t"] > after,
            self.cfg.limit,
            mark,
        )

    async def event_of(self, node: Node, ev: str, mark: int, timeout: float) -> Event | None:
        return await self.log.first(lambda e: e["ev"] == ev and e["pid"] == node.pid, timeout, mark)

    async def teardown(self) -> None:
        """Ours: leave cleanly and return the processes to the pool. Seed: kill them (its
        clean exit waits for the end of the current round, up to interval + timeout)."""
        live = [n for n in self.nodes if n.alive and n.pid not in self.gone]
        if self.cfg.system == "ours":
            for n in live:
                if n.stopped:
                    n.signal(signal.SIGCONT)
            mark = self.log.mark()
            await asyncio.gather(*(n.send(op="leave") for n in live))
            left = set()
            deadline = time.monotonic() + 15.0
            for n in live:
                remaining = deadline - time.monotonic()
                if await self.event_of(n, "left", mark, remaining) is not None:
                    left.add(n.pid)
            for n in live:
                if n.pid in left:
                    self.cluster.give_back(n)
                else:
                    await n.kill()
        else:
            await asyncio.gather(*(n.kill() for n in live))


async def chain(
    cluster: Cluster,
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
    nodes = await cluster.take(n)
    start = cluster.log.mark()
    group = Membership(cluster, cfg, nodes, start, bus)
    if bus is not None:
        await bus.follow(channel_for(cfg.system, group.namespace))
    try:
        await _chain_steps(group, cfg, dsn, n, trial, rec, steps)
    finally:
        await group.teardown()


async def _chain_steps(
    group: Membership,
    cfg: Config,
    dsn: str,
    n: int,
    trial: int,
    rec: Recorder,
    steps: Sequence[str],
) -> None:
    log = group.log
    at = time.monotonic() + GO_DELAY
    await asyncio.gather(
        *(node.send(**cfg.join_command(dsn, group.namespace, at)) for node in group.nodes)
    )
    first = await log.first(
        lambda e: e["ev"] == "elected" and e["pid"] in group.pids, cfg.limit, group.start
    )
    cold = "cold" in steps
    if cold:
        rec.add(cfg, n, "cold start", trial, None if first is None else first["t"] - at, cfg.limit)
    # Many nodes joining at once on few cores take a while to all get connected.
    limit = cfg.limit + 0.1 * n
    agreed = None if first is None else await group.settle(limit)
    # Settled: one leader, known to every node (ours; the seed reports no beliefs), held
    # for SETTLE seconds. The seed's "all agree" would only repeat its cold start.
    rec.add(cfg, n, "settled", trial, float(agreed is not None), unit="count")
    if cold:  # every node has joined by now, or never will
        for e in log.events[group.start :]:
            if e["ev"] == "joined" and e["pid"] in group.pids:
                rec.add(cfg, n, "join (enter returns)", trial, e["t"] - at)
    if cold and cfg.system == "ours":
        value = None if group.stable_since is None else group.stable_since - at
        rec.add(cfg, n, "all agree on the leader", trial, value, limit)
        if group.bus is not None and group.stable_since is not None:
            counts = await group.bus.count(group.namespace, at, group.stable_since)
            rec.add(
                cfg,
                n,
                "messages: cold start",
                trial,
                counts.total(),
                unit="count",
                note=_kinds(counts),
            )
    if first is None:
        rec.problem(f"{cfg.system}/{cfg.settings} N={n} trial {trial}: no first leader")
        return
    if agreed is None:
        rec.problem(f"{cfg.system}/{cfg.settings} N={n} trial {trial}: no stable leader")
        return
    leader: Node | None = agreed
    for step in steps:
        if step == "cold" or len(group.live()) < 2:
            continue
        leader = leader or await group.settle(cfg.limit)
        if leader is None:
            rec.problem(f"{cfg.system}/{cfg.settings} N={n} trial {trial}: no stable leader")
            return
        if step == "handover":
            leader = await _handover(group, cfg, n, trial, rec, leader)
        elif step == "crash":
            await _crash(group, cfg, n, trial, rec, leader)
            leader = None
        elif step == "pause":
            await _pause(group, cfg, n, trial, rec, leader)
            leader = None


async def _handover(
    group: Membership, cfg: Config, n: int, trial: int, rec: Recorder, leader: Node
) -> Node | None:
    """The leader leaves; returns the next leader once every node knows it (ours)."""
    mark = group.log.mark()
    group.gone.add(leader.pid)
    await leader.send(op="leave")
    leaving = await group.event_of(leader, "leaving", mark, 10.0)
    if leaving is None:
        rec.problem(f"{cfg.system} N={n} trial {trial}: leader did not start leaving")
        return None
    new = await group.next_leader(leader, leaving["t"], mark)
    rec.add(cfg, n, "hand-over", trial, None if new is None else new["t"] - leaving["t"], cfg.limit)
    # When did the old leader's leader-only work stop? Ours: its on_elected task ended
    # (cancelled during the exit). Seed: the user's block ended when the exit began.
    stopped = leaving if cfg.system == "seed" else await group.event_of(leader, "deposed", mark, 1)
    if new is not None and stopped is not None and stopped["t"] > new["t"]:
        rec.add(cfg, n, "overlap", trial, stopped["t"] - new["t"], note="hand-over")
    if cfg.system == "ours":
        left = await group.event_of(leader, "left", mark, 15.0)
        if left is not None:
            group.cluster.give_back(leader)
        else:
            await leader.kill()
    else:
        await leader.kill()
        return None
    if new is None:
        return None
    settled = await group.settle(cfg.limit)
    if settled is not None and group.bus is not None and group.stable_since is not None:
        counts = await group.bus.count(group.namespace, leaving["t"], group.stable_since)
        rec.add(
            cfg, n, "messages: hand-over", trial, counts.total(), unit="count",
            note=_kinds(counts),
        )  # fmt: skip
    return settled


async def _crash(
    group: Membership, cfg: Config, n: int, trial: int, rec: Recorder, leader: Node
) -> None:
    mark = group.log.mark()
    group.gone.add(leader.pid)
    t0 = time.monotonic()
    leader.signal(signal.SIGKILL)
    new = await group.next_leader(leader, t0, mark)
    rec.add(cfg, n, "crash (SIGKILL)", trial, None if new is None else new["t"] - t0, cfg.limit)
    await leader.kill()


async def _pause(
    group: Membership, cfg: Config, n: int, trial: int, rec: Recorder, leader: Node
) -> None:
    mark = group.log.mark()
    group.gone.add(leader.pid)
    t0 = time.monotonic()
    leader.signal(signal.SIGSTOP)
    new = await group.next_leader(leader, t0, mark)
    rec.add(cfg, n, "pause (SIGSTOP)", trial, None if new is None else new["t"] - t0, cfg.limit)
    if new is not None:
        await asyncio.sleep(0.2)  # the new leader has been acting for a while on resume
    leader.signal(signal.SIGCONT)
    resumed = await group.event_of(leader, "resumed", mark, 10.0)
    if resumed is None:
        rec.problem(f"{cfg.system} N={n} trial {trial}: paused node did not resume")
        await leader.kill()
        return
    # When did the paused leader stop acting? Ours: when its lease ran out (it cannot act
    # after that, paused or not). Seed: the winner flag stays set while paused, and its
    # work resumes with the process until a later round clears the flag.
    if cfg.system == "ours":
        lease_end = resumed.get("lease_end")
        if lease_end is not None:
            rec.add(cfg, n, "paused leader stops acting", trial, lease_end - t0)
            if new is not None and lease_end > new["t"]:
                rec.add(cfg, n, "overlap", trial, lease_end - new["t"], note="pause")
        if resumed.get("is_leader"):
            rec.add(cfg, n, "overlap", trial, 0.0, note="pause: leader flag still set on resume")
    elif new is not None and resumed.get("is_leader"):
        # The seed's flag stays set through the pause, so the resumed node acts at once,
        # beside the new leader, until a later round deposes one of them.
        limit = 2 * (cfg.interval + cfg.timeout) + 5.0
        pair = {leader.pid, new["pid"]}
        end = await group.log.first(
            lambda e: e["ev"] == "deposed" and e["pid"] in pair and e["t"] >= resumed["t"],
            limit,
            mark,
        )
        still, _, _ = group.view()
        if end is not None or still.get(new["pid"]):
            stop = end["t"] if end is not None else time.monotonic()
            rec.add(cfg, n, "overlap", trial, stop - resumed["t"], note="pause: acts on resume")
    # The resumed node rejoins as a follower (ours) or is discarded (seed).
    group.gone.discard(leader.pid)
    if cfg.system == "seed":
        group.gone.add(leader.pid)
        await leader.kill()


async def _transactions(conn: asyncpg.Connection[Any]) -> int:
    """Commits and rollbacks of the current database so far (the server's statistics)."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    value = await conn.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database"
        " WHERE datname = current_database()"
    )
    return int(value)


async def steady_state(
    cluster: Cluster, cfg: Config, dsn: str, n: int, duration: float, rec: Recorder
) -> None:
    """N idle nodes for ``duration`` seconds: notifications/s, CPU and RSS per node,
    connections used (every session on the group's database but the listener's)."""
    listener = await asyncpg.connect(dsn)
    received: list[float] = []

    def count(*_: object) -> None:
        received.append(time.monotonic())

    nodes = await cluster.take(n)
    group = Membership(cluster, cfg, nodes, cluster.log.mark())
    await listener.add_listener(channel_for(cfg.system, group.namespace), count)
    try:
        at = time.monotonic() + GO_DELAY
        join = cfg.join_command(dsn, group.namespace, at)
        await asyncio.gather(*(node.send(**join) for node in nodes))
        # The seed's first round ends after interval + timeout; many nodes take a while
        # to all connect.
        leader = await group.settle(cfg.limit + 0.1 * n + (30 if cfg.system == "seed" else 0))
        if leader is None:
            rec.problem(f"{cfg.system}/{cfg.settings} N={n} steady state: no stable leader")
            return
        cpu0 = {node.pid: cpu_seconds(node.pid) for node in nodes}
        xacts0 = await _transactions(listener)
        t0 = time.monotonic()
        await asyncio.sleep(duration)
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


def _acting_time(
    events: Sequence[Event], pids: set[int], exits: dict[int, float], t0: float, t1: float
) -> tuple[float, float]:
    """(time with no acting node, time with two or more) within [t0, t1].

    A node acts from its ``elected`` to its ``deposed`` or ``left``; a process that ended
    while acting stops at its exit (as the harness saw it).
    """
    edges: list[tuple[float, int]] = []
    opened: dict[int, float] = {}
    for e in events:
        if e["pid"] not in pids:
            continue
        if e["ev"] == "elected" and e["pid"] not in opened:
            opened[e["pid"]] = e["t"]
        elif e["ev"] in ("deposed", "left") and e["pid"] in opened:
            edges += [(opened.pop(e["pid"]), 1), (e["t"], -1)]
    for pid, since in opened.items():
        edges += [(since, 1), (min(exits.get(pid, t1), t1), -1)]
    edges.sort()
    acting = 0
    none = many = 0.0
    last = t0
    for t, step in edges:
        t = min(max(t, t0), t1)
        if acting == 0:
            none += t - last
        elif acting >= 2:
            many += t - last
        acting += step
        last = t
    if acting == 0:
        none += t1 - last
    elif acting >= 2:
        many += t1 - last
    return none, many


async def rolling_restart(
    cluster: Cluster,
    cfg: Config,
    dsn: str,
    replicas: int,
    trial: int,
    rec: Recorder,
    bus: Bus | None = None,
) -> None:
    """A rolling deploy of ``replicas`` processes: for each old replica in turn, start a
    replacement, wait until it has joined, then SIGTERM the old one and wait for its exit.

    Records the leadership changes (new terms) and the leader-less time during the roll,
    and every overlap of two acting nodes.
    """
    await cluster.reserve(2 * replicas)
    olds = await cluster.take(replicas)
    log = cluster.log
    group = Membership(cluster, cfg, olds, log.mark(), bus)
    if bus is not None:
        await bus.follow(channel_for(cfg.system, group.namespace))
    name = f"{cfg.system}/{cfg.settings} rolling R={replicas} trial {trial}"
    exits: dict[int, float] = {}
    try:
        at = time.monotonic() + GO_DELAY
        join = cfg.join_command(dsn, group.namespace, at)
        await asyncio.gather(*(node.send(**join) for node in olds))
        if await group.settle(cfg.limit + 0.1 * replicas) is None:
            rec.add(cfg, replicas, "rolling: settled", trial, 0.0, unit="count")
            rec.problem(f"{name}: no stable leader before the roll")
            return
        roll = log.mark()
        t0 = time.monotonic()
        for old in olds:
            [new] = await cluster.take(1)
            group.nodes.append(new)
            mark = log.mark()
            await new.send(**cfg.join_command(dsn, group.namespace, time.monotonic()))
            if await group.event_of(new, "joined", mark, cfg.limit) is None:
                rec.problem(f"{name}: a replacement did not join")
                return
            group.gone.add(old.pid)
            old.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(old.proc.wait(), cfg.limit)
            except TimeoutError:
                rec.problem(f"{name}: an old replica did not exit after SIGTERM")
                await old.kill()
            exits[old.pid] = time.monotonic()
            if old.reader is not None:
                await old.reader
        settled = await group.settle(cfg.limit)
        rec.add(cfg, replicas, "rolling: settled", trial, float(settled is not None), unit="count")
        if settled is None or group.stable_since is None:
            rec.problem(f"{name}: no stable leader after the roll")
            return
        t1 = group.stable_since
        events = log.events[roll:]
        terms = {e.get("term") for e in events if e["ev"] == "elected" and e["pid"] in group.pids}
        none, many = _acting_time(log.events[group.start :], group.pids, exits, t0, t1)
        rec.add(cfg, replicas, "rolling: leadership changes", trial, len(terms), unit="count")
        rec.add(cfg, replicas, "rolling: leader-less time", trial, none)
        rec.add(cfg, replicas, "rolling: duration", trial, t1 - t0)
        if many > 0:
            rec.add(cfg, replicas, "overlap", trial, many, note="rolling restart")
        if bus is not None:
            counts = await bus.count(group.namespace, t0, t1)
            heartbeats = counts.pop("heartbeat", 0)
            rec.add(
                cfg,
                replicas,
                "rolling: messages",
                trial,
                counts.total(),
                unit="count",
                note=f"{_kinds(counts)}; and {heartbeats} heartbeats",
            )
    finally:
        await group.teardown()


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
