"""Fault injection with real processes, signals and a throwaway PostgreSQL.

Every scenario ends with :meth:`Cluster.verify`: no two recorded leader-only executions of
different leaderships overlap, terms never go backwards, no write was accepted under a
term after a newer one began, ``on_elected`` work of a new leader never started before
the previous leader's had finished or its claim was gone, and exactly one node leads.

Each scenario runs in a CI size and, marked ``soak``, repeated many times:
``python -m pytest -m soak tests/faults``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from dataclasses import dataclass

import pytest

from notifelect._cluster import checker
from notifelect.transport.connect import ANCHOR_NAME, APPLICATION_NAME
from tests.faults.harness import Cluster, NodeProcess, Timing
from tests.support.proxy import Mode

pytestmark = pytest.mark.faults


@dataclass(frozen=True)
class Size:
    rounds: int
    nodes: int = 3


CI = Size(rounds=2)
SOAK = Size(rounds=20)
SIZES = [
    pytest.param(CI, id="ci", marks=pytest.mark.timeout(150)),
    pytest.param(SOAK, id="soak", marks=[pytest.mark.soak, pytest.mark.timeout(1200)]),
]


#: One-scenario tests: once in CI, five times (each on a fresh cluster) in the soak.
TRIALS = [
    pytest.param(0, id="ci"),
    *(pytest.param(i, id=f"soak-{i}", marks=pytest.mark.soak) for i in range(1, 6)),
]


def figures(name: str, seconds: list[float]) -> None:
    """Print timing figures (visible with ``-s``); never asserted: bounds only."""
    if seconds:
        ms = sorted(1000 * s for s in seconds)
        print(f"\nFIGURES {name}: n={len(ms)} p50={statistics.median(ms):.1f}ms max={ms[-1]:.1f}ms")


def elected_at(node: NodeProcess, after: float) -> float:
    """When ``node`` reported its first election after ``after``."""
    return float(min(e["t"] for e in node.of("elected") if e["t"] >= after))


def first_elected(cluster: Cluster, after: float) -> float:
    """Seconds from ``after`` until any node reported being elected."""
    first = min(e["t"] for n in cluster.nodes for e in n.of("elected") if e["t"] >= after)
    return float(first) - after


async def cut_off_leader(cluster: Cluster) -> tuple[NodeProcess, int, float]:
    """Black-hole the current leader's path (half-open); return it, its term and when."""
    old = await cluster.leader()
    term = old.leading_term
    assert old.proxy is not None
    assert term is not None
    at = time.time()
    old.proxy.set_mode(Mode.BLACKHOLE)
    old.paused = True  # cut off: for the harness's leader count only
    return old, term, at


async def heal(cluster: Cluster, old: NodeProcess, term: int) -> None:
    """Let the cut-off leader's traffic through again; it must step down and follow."""
    assert old.proxy is not None
    old.proxy.set_mode(Mode.PASS)
    old.paused = False
    await cluster.reported(old, "deposed", term=term, timeout=30, what="old leader left")
    await cluster.leader(timeout=30)


async def replace(cluster: Cluster, gone: NodeProcess) -> None:
    """Keep the cluster's size: start a node like the one that left; the leader stays."""
    leader = await cluster.leader()
    await cluster.spawn(1, proxied=gone.proxy is not None)
    assert await cluster.leader() is leader  # a newcomer of equal priority never preempts


@pytest.mark.parametrize("size", SIZES)
async def test_clean_exit_hands_over(cluster: Cluster, size: Size) -> None:
    await cluster.spawn(size.nodes)
    took = []
    for _ in range(size.rounds):
        old = await cluster.leader()
        term = old.leading_term
        asked = time.time()
        await cluster.stop_node(old)
        new = await cluster.leader(timeout=20)
        took.append(elected_at(new, asked) - asked)
        # Hand-over: the new leader's on_elected starts after the old one's finished.
        ends = old.of("span_end", term=term)
        assert len(ends) == 1, f"term {term}: {old.events[-8:]}\n{cluster.describe()}"
        assert elected_at(new, asked) >= ends[0]["t"]
        await replace(cluster, old)
    figures("clean exit -> new leader elected", took)
    await cluster.verify()


@pytest.mark.parametrize("size", SIZES)
async def test_sigkill_of_the_leader(cluster: Cluster, size: Size) -> None:
    await cluster.spawn(size.nodes)
    took = []
    for _ in range(size.rounds):
        old = await cluster.leader()
        killed = cluster.signal(old, signal.SIGKILL)
        await cluster.leader(timeout=20)
        took.append(first_elected(cluster, killed))
        await replace(cluster, old)
    figures("SIGKILL -> new leader elected", took)
    await cluster.verify()


@pytest.mark.parametrize("size", [pytest.param(Size(1), id="ci"), *SIZES[1:]])
async def test_sigstop_for_three_leases(cluster: Cluster, size: Size) -> None:
    await cluster.spawn(size.nodes)
    lease = cluster.timing.lease
    took = []
    for _ in range(size.rounds):
        old = await cluster.leader()
        term = old.leading_term
        assert term is not None
        stopped = cluster.signal(old, signal.SIGSTOP)
        new = await cluster.leader(timeout=30)
        took.append(first_elected(cluster, stopped))
        # The pause itself is the fault: it lasts at least three leases.
        await asyncio.sleep(max(0.0, stopped + 3 * lease - time.time()))
        resumed = cluster.signal(old, signal.SIGCONT)
        # The resumed node notices its lapsed lease and steps down ...
        await cluster.reported(
            old, "deposed", term=term, timeout=20, what="resumed leader stepped down"
        )
        # ... and its late write with the old term is refused by the database.
        await cluster.reported(
            old, "probe", term=term, result="rejected", timeout=20, what="stale write refused"
        )
        # It ran no leader-only work with its old term after resuming.
        late = [e for e in old.of("exec", term=term) if e["ended"] >= resumed]
        assert late == [], late
        rows = await cluster.sql(
            "SELECT count(*) AS n FROM fault_audit WHERE namespace = $1 AND term = $2"
            " AND kind = 'exec' AND ended >= $3",
            cluster.namespace,
            term,
            resumed,
        )
        assert rows[0]["n"] == 0
        # The node that took over keeps leading: the resumed one follows it.
        assert await cluster.leader(timeout=20) is new
    figures("SIGSTOP -> new leader elected", took)
    await cluster.verify()


@pytest.mark.parametrize("size", SIZES)
async def test_leader_backend_terminated(cluster: Cluster, size: Size) -> None:
    await cluster.spawn(size.nodes)
    took = []
    for _ in range(size.rounds):
        old = await cluster.leader()
        term = old.leading_term
        row = await cluster.db_leader()
        assert row is not None
        assert row["node"] == old.node
        at = time.time()
        (ok,) = await cluster.sql("SELECT pg_terminate_backend($1) AS ok", row["backend_pid"])
        assert ok["ok"]
        await cluster.reported(
            old, "span_end", term=term, timeout=20, what="leader noticed its loss"
        )
        new = await cluster.leader(timeout=30)
        took.append(first_elected(cluster, at))
        assert new.leading_term is not None
        assert term is not None
        assert new.leading_term > term
    figures("pg_terminate_backend -> new leader elected", took)
    await cluster.verify()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
@pytest.mark.parametrize(
    "size", [pytest.param(Size(1), id="ci"), pytest.param(Size(5), id="soak", marks=SIZES[1].marks)]
)
async def test_postgres_restart(cluster: Cluster, size: Size, mode: str) -> None:
    await cluster.spawn(size.nodes)
    took = []
    for _ in range(size.rounds):
        old = await cluster.leader()
        term = old.leading_term
        await asyncio.to_thread(cluster.server.stop, mode)
        stopped = time.time()
        await cluster.reported(
            old, "span_end", term=term, timeout=20, what="leader stopped while database down"
        )
        await asyncio.to_thread(cluster.server.start)
        up = time.time()
        # Nobody acted as leader while the database was down.
        during = [e for n in cluster.nodes for e in n.of("elected") if stopped <= e["t"] < up]
        assert during == [], during
        assert old.of("span_end", term=term)[0]["t"] < up
        await cluster.leader(timeout=40)
        took.append(first_elected(cluster, up))
    figures(f"restart {mode}: database up -> new leader elected", took)
    await cluster.verify()


@pytest.mark.parametrize("size", [pytest.param(Size(1), id="ci"), *SIZES[1:]])
async def test_leader_path_blackholed(cluster: Cluster, size: Size) -> None:
    await cluster.spawn(size.nodes, proxied=True)
    took = []
    for _ in range(size.rounds):
        old = await cluster.leader()
        term = old.leading_term
        assert old.proxy is not None
        cut = time.time()
        old.proxy.set_mode(Mode.BLACKHOLE)
        old.paused = True  # cut off: cannot act, for the harness's leader count
        new = await cluster.leader(timeout=30)
        took.append(first_elected(cluster, cut))
        assert new is not old
        old.proxy.set_mode(Mode.PASS)
        old.paused = False
        await cluster.reported(
            old, "deposed", term=term, timeout=30, what="cut-off leader stepped down"
        )
        await cluster.leader(timeout=30)
    figures("black-holed leader -> new leader elected", took)
    await cluster.verify()


@pytest.mark.parametrize("size", [pytest.param(Size(1), id="ci"), *SIZES[1:]])
@pytest.mark.parametrize("mode", [Mode.DELAY_NOTIFICATIONS, Mode.DROP_NOTIFICATIONS])
async def test_notifications_delayed_or_dropped(cluster: Cluster, size: Size, mode: Mode) -> None:
    nodes = await cluster.spawn(size.nodes, proxied=True)
    for _ in range(size.rounds):
        leader = await cluster.leader()
        for node in cluster.nodes:
            if node.proxy is not None:
                # Longer than leader_timeout: followers see the leader as silent.
                node.proxy.set_mode(mode, delay=2 * cluster.timing.leader_timeout)
        # Run disturbed for a while: 20 more executions by the leader (or whoever leads).
        await cluster.more_executions(20, timeout=30, what="work goes on")
        assert len(cluster.reported_leaders()) <= 1
        # A clean exit while the channel misbehaves: its RESIGN is late or lost. (Leaders
        # and heartbeats are read from the database; what is left on the channel is the
        # election's own messages.)
        leaving = cluster.reported_leaders()[0] if cluster.reported_leaders() else leader
        await cluster.stop_node(leaving, timeout=30)
        await cluster.more_executions(5, timeout=30, what="the successor works")
        await replace(cluster, leaving)
        # A crash while the channel misbehaves.
        victim = cluster.reported_leaders()[0] if cluster.reported_leaders() else leader
        cluster.signal(victim, signal.SIGKILL)
        await cluster.more_executions(5, timeout=30, what="a new leader works")
        for node in cluster.nodes:
            if node.proxy is not None:
                node.proxy.set_mode(Mode.PASS)
        await replace(cluster, victim)
    stats = [n.proxy.stats for n in nodes if n.proxy is not None]
    if mode is Mode.DROP_NOTIFICATIONS:
        assert sum(s.notifications_dropped for s in stats) > 0
    else:
        assert sum(s.notifications_delayed for s in stats) > 0
    await cluster.verify()


@pytest.mark.parametrize(
    ("nodes", "kills", "period"),
    [
        pytest.param(10, 8, 0.0, id="ci", marks=pytest.mark.timeout(240)),
        pytest.param(50, 60, 1.0, id="soak", marks=[pytest.mark.soak, pytest.mark.timeout(1200)]),
    ],
)
async def test_churn_leader_killed_repeatedly(
    cluster: Cluster, nodes: int, kills: int, period: float
) -> None:
    if nodes > 20:
        # Dozens of processes on a small machine starve each other of CPU: longer leases
        # keep leaders from lapsing for that reason alone. Crash take-over does not
        # depend on them (the standby is blocked on the lock).
        cluster.timing = Timing(interval=0.25, lease=1.5, leader_timeout=1.5, job_period=0.1)
    await cluster.spawn(nodes)
    took = []
    spawning: set[asyncio.Task[list[NodeProcess]]] = set()
    next_kill = time.monotonic()
    for _ in range(kills):
        old = await cluster.leader(timeout=60)
        # Pace the kills (soak: one per second); the wait is the fault schedule.
        await asyncio.sleep(max(0.0, next_kill - time.monotonic()))
        next_kill = time.monotonic() + period
        if not old.live or old.leading_term is None:
            continue
        killed = cluster.signal(old, signal.SIGKILL)
        task = asyncio.create_task(cluster.spawn(1))
        spawning.add(task)
        task.add_done_callback(spawning.discard)
        await cluster.leader(timeout=60)
        took.append(first_elected(cluster, killed))
    if spawning:
        await asyncio.gather(*spawning)
    figures(f"churn {nodes} nodes: SIGKILL -> new leader elected", took)
    assert len(took) >= kills // 2
    await cluster.verify()


@pytest.mark.timeout(120)
async def test_the_checks_catch_work_that_outlives_its_leadership(cluster: Cluster) -> None:
    # Nodes that also run a naive writer (leadership checked once, never again, no guard):
    # a leader paused and resumed then acts beside its successor, and the checks say so.
    await cluster.spawn(2, extra=("--unguarded",))
    old = await cluster.leader()
    term = old.leading_term
    stopped = cluster.signal(old, signal.SIGSTOP)
    await cluster.leader(timeout=30)
    await asyncio.sleep(max(0.0, stopped + 3 * cluster.timing.lease - time.time()))  # the pause
    resumed = cluster.signal(old, signal.SIGCONT)

    async def late_naive_writes() -> int:
        rows = await cluster.sql(
            "SELECT count(*) AS n FROM fault_audit WHERE namespace = $1 AND term = $2"
            " AND kind = 'naive' AND started > $3",
            cluster.namespace,
            term,
            resumed,
        )
        return int(rows[0]["n"])

    await cluster.until_async(late_naive_writes, timeout=20, what="the resumed node wrote")
    await cluster.more_executions(3, timeout=20, what="the new leader works beside it")

    async def overlapping() -> checker.Report | None:
        # Both write for about 10 ms every 50 ms: their writes overlap soon, not at once.
        found = await cluster.report()
        return found if found.overlaps else None

    report = await cluster.until_async(overlapping, timeout=30, what="an overlap seen")
    assert report is not None
    assert not report.ok
    assert report.overlaps
    assert report.stale_accepted
    assert report.regressions
    # The guarded job of the same node ran nothing after resuming.
    assert [e for e in old.of("exec", term=term) if e["ended"] >= resumed] == []


# ---------------------------------------------------------------- windows where a process
# lives on while its session is gone, or acts on while a successor could start


@pytest.mark.parametrize("size", [pytest.param(Size(1), id="ci"), *SIZES[1:]])
async def test_half_open_leader_then_its_backend_terminated(cluster: Cluster, size: Size) -> None:
    """The leader's path goes half-open and the server then ends its backend: the process
    lives on, trusting its lease, so nobody may act until that lease has run out."""
    await cluster.spawn(size.nodes, proxied=True)
    for _ in range(size.rounds):
        await cluster.leader()  # the spawned nodes may not have made their first claim yet
        row = await cluster.db_leader()
        old, term, cut = await cut_off_leader(cluster)
        assert row is not None
        assert row["node"] == old.node
        (ok,) = await cluster.sql("SELECT pg_terminate_backend($1) AS ok", row["backend_pid"])
        assert ok["ok"]
        new = await cluster.leader(timeout=30)
        assert new is not old
        # The old process acted on until its lease ran out, and never after the successor
        # began (the checker below proves it from the processes' own records).
        began = elected_at(new, cut)
        assert cluster.acts_after(old, term, began) == []
        await heal(cluster, old, term)
    await cluster.verify()


@pytest.mark.parametrize("size", [pytest.param(Size(1), id="ci"), *SIZES[1:]])
async def test_restart_while_the_leader_is_cut_off(cluster: Cluster, size: Size) -> None:
    """A restart ends every session; the cut-off leader does not notice and acts until its
    lease ends. The others must wait that lease out after the database is back."""
    await cluster.spawn(size.nodes, proxied=True)
    for _ in range(size.rounds):
        old, term, cut = await cut_off_leader(cluster)
        await asyncio.to_thread(cluster.server.restart, "fast")
        new = await cluster.leader(timeout=40)
        assert new is not old
        assert cluster.acts_after(old, term, elected_at(new, cut)) == []
        await heal(cluster, old, term)
    await cluster.verify()


@pytest.mark.parametrize("trial", TRIALS)
@pytest.mark.timeout(150)
async def test_preempted_during_a_call_that_may_finish(cluster: Cluster, trial: int) -> None:
    """finish_on_loss: the preempted leader keeps its claim (and renews its lease) until
    the call has finished; the preempting node starts only after that."""
    (old,) = await cluster.spawn(1, extra=("--finish-call", "1.5"))
    await cluster.leader(expect=old)
    term = old.leading_term
    assert term is not None
    await cluster.reported(old, "call_start", term=term, timeout=10, what="the long call runs")
    (new,) = await cluster.spawn(1, extra=("--priority", "1", "--finish-call", "1.5"))
    await cluster.leader(expect=new, timeout=30)  # a higher priority preempts
    ended = await cluster.reported(old, "call_end", term=term, timeout=10, what="call finished")
    assert elected_at(new, 0.0) >= ended["t"]
    assert cluster.acts_after(old, term, elected_at(new, 0.0)) == []
    # The old call kept acting after the preemption began (it was allowed to finish).
    deposed = await cluster.reported(old, "deposed", term=term, timeout=10, what="stepped down")
    assert old.of("act", term=term)
    assert deposed["t"] >= ended["t"]
    await cluster.verify()


@pytest.mark.parametrize("trial", TRIALS)
@pytest.mark.timeout(150)
async def test_clean_hand_over_waits_for_a_plain_def_call(cluster: Cluster, trial: int) -> None:
    """A plain def leader-only call in a thread cannot be cancelled: a clean hand-over
    waits for it before the successor is named."""
    await cluster.spawn(2, extra=("--thread-call", "1.0"))
    leader = await cluster.leader()
    term = leader.leading_term
    assert term is not None
    started = await cluster.reported(
        leader, "call_start", term=term, timeout=10, what="the thread call runs"
    )
    await cluster.stop_node(leader, timeout=30)
    new = await cluster.leader(timeout=30)
    ends = leader.of("call_end", term=term)
    assert ends, leader.describe()
    assert elected_at(new, started["t"]) >= max(e["t"] for e in ends)
    await cluster.verify()


@pytest.mark.parametrize("trial", TRIALS)
@pytest.mark.timeout(150)
async def test_suspended_leader_does_not_act_on_resume(cluster: Cluster, trial: int) -> None:
    """A host suspend stops CLOCK_MONOTONIC but not CLOCK_BOOTTIME: simulated by freezing
    the leader (SIGSTOP) and making its monotonic clock lag by the frozen time on resume."""
    suspend = cluster.workdir / "suspend"
    await cluster.spawn(2, extra=("--suspend-file", str(suspend)))
    old = await cluster.leader()
    term = old.leading_term
    assert term is not None
    stopped = cluster.signal(old, signal.SIGSTOP)
    new = await cluster.leader(timeout=30)
    await asyncio.sleep(max(0.0, stopped + 3 * cluster.timing.lease - time.time()))  # the pause
    suspend.write_text(str(time.time() - stopped))  # what a suspended monotonic clock misses
    resumed = cluster.signal(old, signal.SIGCONT)
    await cluster.reported(
        old, "deposed", term=term, timeout=20, what="resumed leader stepped down"
    )
    assert cluster.acts_after(old, term, resumed) == []
    assert await cluster.leader() is new
    await cluster.verify()


@pytest.mark.parametrize("trial", TRIALS)
@pytest.mark.timeout(150)
async def test_blackholed_follower_leaves_within_its_bound(cluster: Cluster, trial: int) -> None:
    """A follower cut off by the network hangs nothing: its calls time out, and leaving
    the group finishes within the documented bound whatever the network does."""
    nodes = await cluster.spawn(3, proxied=True)
    leader = await cluster.leader()
    follower = next(n for n in nodes if n is not leader)
    assert follower.proxy is not None
    follower.proxy.set_mode(Mode.BLACKHOLE)
    follower.paused = True
    await cluster.more_executions(10, timeout=20, what="the leader works on")
    asked = time.time()
    os.kill(follower.pid, signal.SIGTERM)
    await cluster.until(lambda: follower.exited, timeout=20, what="the cut-off follower left")
    left = time.time() - asked
    figures("black-holed follower: SIGTERM -> exited", [left])
    assert follower.proc.returncode == 0, follower.describe() + follower.log.read_text()[-3000:]
    # And the leader's clean exit still hands over, even if it names the cut-off node.
    await cluster.stop_node(leader, timeout=30)
    await cluster.leader(timeout=40)
    await cluster.verify()


@pytest.mark.parametrize("size", [pytest.param(Size(1), id="ci"), *SIZES[1:]])
async def test_half_open_leader_then_every_session_terminated(cluster: Cluster, size: Size) -> None:
    """An operator terminates every session of the group (the leader's anchor included)
    just as the leader's path has gone half-open. No evidence survives that: whoever takes
    over waits a whole lease, and the cut-off leader has stopped acting by then."""
    await cluster.spawn(size.nodes, proxied=True)
    sessions = (
        " FROM pg_stat_activity WHERE (application_name LIKE $1 OR application_name LIKE $2)"
        " AND datname = current_database()"
    )
    names = (f"{APPLICATION_NAME}:%", f"{ANCHOR_NAME}:%")

    async def every_node_connected() -> bool:
        # The previous round's cut-off node reconnects after it healed (with backoff):
        # every node has its election session and its anchor again before the next cut.
        rows = await cluster.sql("SELECT count(*) AS n" + sessions, *names)
        return bool(rows[0]["n"] >= 2 * size.nodes)

    for _ in range(size.rounds):
        await cluster.until_async(every_node_connected, timeout=30, what="every node connected")
        old, term, cut = await cut_off_leader(cluster)
        rows = await cluster.sql("SELECT count(pg_terminate_backend(pid)) AS n" + sessions, *names)
        assert rows[0]["n"] >= 2 * size.nodes
        new = await cluster.leader(timeout=40)
        assert new is not old
        assert cluster.acts_after(old, term, elected_at(new, cut)) == []
        await heal(cluster, old, term)
    await cluster.verify()
