"""PostgreSQL's own failover: the primary is killed and its streaming replica promoted.

This is what Patroni or a managed service does when a primary fails: ``pg_ctl stop -m
immediate`` on the primary, ``pg_ctl promote`` on the standby. How the nodes find the new
primary is the variant:

* ``multi_host``: a URL listing both servers (``?host=a:p&host=b:p``); the election skips
  the one that is down or still a standby (``target_session_attrs=read-write``).
* ``moving_address``: one address, a TCP proxy standing for a DNS name or a floating IP,
  repointed at the new primary once it is promoted.
* ``silent``: both servers behind proxies that the URL lists; the old primary's proxy is
  black-holed before it is killed, so its address drops everything instead of refusing
  (a failed machine): every connection to it costs the per-host budget.

Replication is asynchronous (the last term bumps can be lost) or synchronous
(``synchronous_standby_names``). Besides :meth:`Cluster.verify`, each failover checks that
every group is led again within a generous bound after the promotion, that no term was
handed out twice and terms grow in time order (also the terms the old primary granted and
the replica may have lost), that no node id was drawn by two processes, and that a node
told to stop while it is reconnecting (primary dead, standby not promoted yet) leaves at
once. Figures (``-s``): lines starting with ``FIGURES``.

CI (the harness's short settings): ``python -m pytest tests/faults -k failover -s``; soak
(every variant with both kinds of replication, three failovers each, at the library's
default settings, the database without a primary for 10 s each time):
``python -m pytest -m soak tests/faults -k failover -s``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import pytest

from tests.faults.harness import Cluster, NodeProcess, Timing
from tests.faults.test_faults import figures
from tests.support.proxy import FaultProxy, Mode
from tests.support.servers import ThrowawayPostgres, multi_host_dsn

pytestmark = pytest.mark.faults

NODES = 3
#: The library's default settings (and RetryPolicy's longest backoff), extra groups as in
#: the harness.
DEFAULTS = Timing(interval=0.5, lease=1.5, leader_timeout=2.0, retry_maximum=5.0)


@dataclass(frozen=True)
class Size:
    rounds: int
    #: The nodes' settings (None: the harness's short ones).
    timing: Timing | None = None
    #: How long the database stays without a primary before the standby is promoted (at
    #: least until the nodes have said they cannot reconnect). An HA tool takes seconds
    #: to decide; meanwhile the nodes' backoff grows towards its longest.
    outage: float = 0.0


CI = Size(rounds=1)
SOAK = Size(rounds=3, timing=DEFAULTS, outage=10.0)
#: (variant, replication): CI runs each way of finding the new primary once; the soak runs
#: every combination, several failovers in a row.
CASES = [
    pytest.param("multi_host", "async", CI, id="multi_host-async-ci"),
    pytest.param("moving_address", "sync", CI, id="moving_address-sync-ci"),
    pytest.param("silent", "async", CI, id="silent-async-ci"),
    *(
        pytest.param(
            variant,
            replication,
            SOAK,
            id=f"{variant}-{replication}-soak",
            marks=[pytest.mark.soak, pytest.mark.timeout(900)],
        )
        for variant in ("multi_host", "moving_address", "silent")
        for replication in ("async", "sync")
    ),
]


@dataclass
class Pair:
    """A primary and its streaming standby, and the addresses the nodes know them by.

    The nodes' URL never changes: with ``multi_host`` it lists two ports, and a new
    standby takes the port of the primary that was killed; otherwise it lists proxies
    (``silent``: one per server, ``moving_address``: one for the primary) that are
    repointed as the servers change roles.
    """

    variant: str
    synchronous: bool
    primary: ThrowawayPostgres
    made: list[ThrowawayPostgres]
    standby: ThrowawayPostgres | None = None
    proxies: dict[str, FaultProxy] = field(default_factory=dict)  # role -> proxy

    async def start_standby(self, port: int | None = None) -> None:
        """A new standby of the primary, streaming (synchronously if asked) when this
        returns."""
        standby = await asyncio.to_thread(self.primary.replicate, port)
        self.made.append(standby)
        self.standby = standby
        if self.synchronous:
            await asyncio.to_thread(self.primary.synchronous)
        want = "sync" if self.synchronous else "async"
        await _until_sql(
            self.primary,
            "SELECT count(*) = 1 AS ok FROM pg_stat_replication"
            " WHERE state = 'streaming' AND sync_state = $1",
            want,
            what=f"a standby streaming ({want})",
        )

    async def open(self) -> str:
        """Start the standby and the proxies; the URL the nodes connect with."""
        await self.start_standby()
        assert self.standby is not None
        if self.variant == "multi_host":
            ports = [self.primary.port, self.standby.port]
            return multi_host_dsn("postgres", "postgres", ports, target_session_attrs="read-write")
        self.proxies["primary"] = await FaultProxy("127.0.0.1", self.primary.port).start()
        if self.variant == "moving_address":
            return f"postgresql://postgres@127.0.0.1:{self.proxies['primary'].port}/postgres"
        self.proxies["standby"] = await FaultProxy("127.0.0.1", self.standby.port).start()
        ports = [self.proxies["primary"].port, self.proxies["standby"].port]
        return multi_host_dsn("postgres", "postgres", ports, target_session_attrs="read-write")

    async def kill_primary(self) -> float:
        """The primary dies (black-holed first in ``silent``); when it was stopped."""
        if self.variant == "silent":
            self.proxies["primary"].set_mode(Mode.BLACKHOLE)
        await asyncio.to_thread(self.primary.stop, "immediate")
        return time.time()

    async def promote(self) -> float:
        """Promote the standby and point the moving address at it; when it accepted
        writes. The standby is the primary from then on."""
        standby = self.standby
        assert standby is not None
        await asyncio.to_thread(standby.promote)
        promoted = time.time()
        if self.variant == "moving_address":
            self.proxies["primary"].repoint("127.0.0.1", standby.port)
        self.primary, self.standby = standby, None
        return promoted

    async def rearm(self, killed: ThrowawayPostgres) -> None:
        """A new standby of the new primary, where the nodes look for one."""
        if self.variant == "multi_host":
            await self.start_standby(port=killed.port)  # the address the URL lists
            return
        await self.start_standby()
        assert self.standby is not None
        if self.variant == "silent":
            # The black-holed proxy now leads to the new standby; the other to the primary.
            dead, live = self.proxies["primary"], self.proxies["standby"]
            dead.repoint("127.0.0.1", self.standby.port)
            dead.set_mode(Mode.PASS)
            self.proxies = {"primary": live, "standby": dead}


async def _until_sql(
    server: ThrowawayPostgres, query: str, *args: object, what: str, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        conn = await asyncpg.connect(server.dsn, timeout=10)
        try:
            if await conn.fetchval(query, *args):
                return
        finally:
            await conn.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout}s")
        await asyncio.sleep(0.05)  # polling the server's view


@pytest.fixture
async def servers() -> AsyncIterator[list[ThrowawayPostgres]]:
    """Servers a test makes besides its primary; destroyed after it."""
    made: list[ThrowawayPostgres] = []
    yield made
    for server in made:
        await asyncio.to_thread(server.destroy)


def _reconnect_warnings(node: NodeProcess) -> int:
    """How many times the node said (WARNING) that reconnecting fails."""
    try:
        return node.log.read_text().count("cannot reconnect")
    except OSError:
        return 0


async def _led_again(cluster: Cluster, namespaces: list[str], after: float) -> dict[str, float]:
    """When each group's first term after ``after`` began (database clock, this machine)."""

    async def led() -> dict[str, float] | None:
        try:
            rows = await cluster.sql(
                "SELECT namespace, extract(epoch FROM min(started_at))::float8 AS at"
                " FROM notifelect_history WHERE namespace = ANY($1::text[])"
                " AND started_at > to_timestamp($2) GROUP BY namespace",
                namespaces,
                after,
            )
        except OSError:
            return None
        found = {r["namespace"]: float(r["at"]) for r in rows}
        return found if len(found) == len(namespaces) else None

    found = await cluster.until_async(led, timeout=60, what="every group led again", poll=0.05)
    assert found is not None
    return found


def _check_terms_and_ids(cluster: Cluster) -> None:
    """Every term the nodes were elected with is unique and they grow in time order (the
    replica may have lost the last ones the old primary granted); no node id is drawn by
    two processes."""
    elections = sorted((e["t"], e["term"], n.index) for n in cluster.nodes for e in n.of("elected"))
    terms = [term for _, term, _ in elections]
    assert len(set(terms)) == len(terms), elections
    assert terms == sorted(terms), elections
    owner: dict[int, int] = {}
    for n in cluster.nodes:
        for e in n.events:
            node = e.get("node")
            if node is not None and e["ev"] in ("ready", "elected"):
                assert owner.setdefault(node, n.index) == n.index, (node, owner[node], n.index)


async def _history_terms_grow(cluster: Cluster, namespaces: list[str]) -> None:
    rows = await cluster.sql(
        "SELECT namespace, array_agg(term ORDER BY started_at, term) AS terms"
        " FROM notifelect_history WHERE namespace = ANY($1::text[]) GROUP BY namespace",
        namespaces,
    )
    for row in rows:
        terms = list(row["terms"])
        assert terms == sorted(set(terms)), (row["namespace"], terms)


async def _stop_while_reconnecting(
    cluster: Cluster, victim: NodeProcess, variant: str, warned: int
) -> tuple[float, float]:
    """Once every group of ``victim`` has said that it cannot reconnect (``warned``: the
    warnings it wrote before), SIGTERM it; the seconds until its groups were closed and
    until it exited."""
    groups = 1 + cluster.timing.extra_groups
    await cluster.until(
        lambda: _reconnect_warnings(victim) >= warned + groups,
        timeout=30,
        what="every group of the node warned that it cannot reconnect",
    )
    if variant != "moving_address":
        # The standby was tried, and skipped as what it is (not read-write).
        assert "not read-write" in victim.log.read_text()
    asked = time.time()
    os.kill(victim.pid, signal.SIGTERM)
    await cluster.until(lambda: victim.exited, timeout=30, what="the node exited")
    assert victim.proc.returncode == 0, victim.describe()
    assert victim.dead_at is not None
    left, exited = victim.of("left")[0]["t"] - asked, victim.dead_at - asked
    assert left < 5, f"leaving while reconnecting took {left:.2f}s"
    assert exited < 10, f"exiting while reconnecting took {exited:.2f}s"
    return left, exited


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("variant", "replication", "size"), CASES)
async def test_database_failover(
    servers: list[ThrowawayPostgres],
    cluster: Cluster,
    variant: str,
    replication: str,
    size: Size,
) -> None:
    if size.timing is not None:
        cluster.timing = size.timing
    pair = Pair(variant, replication == "sync", cluster.server, servers)
    dsn = await pair.open()
    cluster.proxies.extend(pair.proxies.values())  # closed with the cluster
    await cluster.spawn(NODES, dsn=dsn)
    namespaces = [cluster.namespace, *cluster.extra_namespaces()]
    timing = cluster.timing
    io_timeout = max(timing.lease, timing.leader_timeout)
    host_timeout = io_timeout / 2  # Settings.host_timeout, the nodes' per-host budget
    # Detecting a silent primary (io_timeout), one backoff, a silent host and the other
    # tried, the lease waited out, the claim: all of it four times over.
    bound = 4 * (io_timeout + timing.retry_maximum + 2 * host_timeout + timing.lease)
    from_kill, from_promotion, left, exited = [], [], [], []
    for round_ in range(size.rounds):
        old = await cluster.leader(timeout=40)
        await cluster.more_executions(5, timeout=30, what="the leader works")
        killed_server = pair.primary
        warned = _reconnect_warnings(old)
        killed = await pair.kill_primary()
        # While the primary is dead and the standby not promoted, every group of a node
        # keeps failing to reconnect, and says so; told to stop, the node leaves at once.
        leave, exit_ = await _stop_while_reconnecting(cluster, old, variant, warned)
        left.append(leave)
        exited.append(exit_)
        await asyncio.sleep(max(0.0, killed + size.outage - time.time()))  # the outage
        promoted = await pair.promote()
        cluster.server = pair.primary  # the checks read the new primary
        led = await _led_again(cluster, namespaces, killed)
        last = max(led.values())
        from_kill.append(last - killed)
        from_promotion.append(last - promoted)
        assert last - promoted < bound, (led, promoted, bound)
        await cluster.spawn(1, dsn=dsn)  # the node that left comes back
        await cluster.leader(timeout=40)
        _check_terms_and_ids(cluster)
        await _history_terms_grow(cluster, namespaces)
        if round_ + 1 < size.rounds:
            await pair.rearm(killed_server)
    name = f"failover {variant} ({replication} replication)"
    figures(f"{name}: primary killed -> every group led again", from_kill)
    figures(f"{name}: standby promoted -> every group led again", from_promotion)
    figures(f"{name}: SIGTERM while reconnecting -> every group closed", left)
    figures(f"{name}: SIGTERM while reconnecting -> process exited", exited)
    await cluster.verify()
