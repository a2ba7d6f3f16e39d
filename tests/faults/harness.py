"""The fault suite's cluster: the shared harness on a throwaway PostgreSQL, with proxies.

:class:`Cluster` is :class:`notifelect._cluster.harness.Cluster` with what only this suite
needs: the server it may stop and restart, a :class:`FaultProxy` per node if asked, the
short settings of :class:`Timing`, and the checks on the database: the audit table of the
fenced job, the leader the database names. Tests wait on what the nodes report or poll
the database with a deadline; they never sleep to synchronise. :meth:`Cluster.verify`
runs every check of :mod:`notifelect._cluster.checker` and asserts exactly one leader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from notifelect._cluster import checker, harness
from notifelect._cluster.harness import Event, NodeProcess
from notifelect._cluster.node import AUDIT_DDL, AUDIT_TABLE, extra_namespace
from tests.support.proxy import FaultProxy
from tests.support.servers import ThrowawayPostgres

__all__ = ["Cluster", "NodeProcess", "Timing"]


@dataclass(frozen=True)
class Timing:
    """Settings of the node processes (short, to keep the suite fast)."""

    interval: float = 0.1
    election_timeout: float = 0.05
    lease: float = 0.5
    leader_timeout: float = 0.5
    job_period: float = 0.05
    work: float = 0.01
    act_period: float = 0.01
    #: Groups each node joins besides the one under test, on the same engine (so on the
    #: same election session): their fenced writes are checked as well.
    extra_groups: int = 2
    #: The longest wait between reconnect attempts (RetryPolicy.maximum).
    retry_maximum: float = 0.5

    def argv(self) -> list[str]:
        return [
            "--engine", "--log-level", "INFO",
            "--extra-groups", str(self.extra_groups),
            "--retry-maximum", str(self.retry_maximum),
            "--interval", str(self.interval),
            "--election-timeout", str(self.election_timeout),
            "--lease", str(self.lease),
            "--leader-timeout", str(self.leader_timeout),
            "--job-period", str(self.job_period),
            "--work", str(self.work),
            "--act-period", str(self.act_period),
        ]  # fmt: skip


class Cluster(harness.Cluster):
    """The node processes of one test on ``server`` (a throwaway PostgreSQL)."""

    def __init__(
        self, server: ThrowawayPostgres, workdir: Path, namespace: str, timing: Timing | None = None
    ) -> None:
        super().__init__(server.dsn, workdir, namespace)
        self.server = server
        self.timing = timing or Timing()
        self.proxies: list[FaultProxy] = []

    @property
    def dsn(self) -> str:
        return self.server.dsn  # a test may make another server the primary

    async def __aenter__(self) -> Cluster:
        await self.sql(AUDIT_DDL)  # the audit table of the fenced job (``--job-period``)
        return self

    def _proxied_dsn(self, port: int) -> str:
        parts = urlsplit(self.server.dsn)
        return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))

    async def spawn(  # type: ignore[override]
        self,
        count: int = 1,
        *,
        proxied: bool = False,
        extra: tuple[str, ...] = (),
        dsn: str | None = None,
    ) -> list[NodeProcess]:
        """Start ``count`` node processes; return once each has joined the group. They
        connect to ``dsn`` if given (several servers, a proxy of the test's own), else to
        the server, through a proxy of their own if ``proxied``."""
        started = []
        for _ in range(count):
            proxy: Any = None
            target = dsn
            if proxied and dsn is None:
                proxy = await FaultProxy("127.0.0.1", self.server.port).start()
                self.proxies.append(proxy)
                target = self._proxied_dsn(proxy.port)
            node = await self.start([*self.timing.argv(), *extra], dsn=target)
            node.proxy = proxy
            started.append(node)
        await self.ready(started)
        return started

    def extra_namespaces(self) -> list[str]:
        """The groups the nodes join besides the one under test (``--extra-groups``)."""
        return [extra_namespace(self.namespace, i) for i in range(self.timing.extra_groups)]

    # ------------------------------------------------------------ what the nodes report

    async def reported(
        self, node: NodeProcess, kind: str, *, timeout: float, what: str, **match: Any
    ) -> Event:
        """Wait until ``node`` reported an event ``kind`` with fields ``match``; return it."""
        found = await self.until(lambda: node.of(kind, **match), timeout=timeout, what=what)
        return found[0]

    def reported_leaders(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.live and n.leading_term is not None]

    # ------------------------------------------------------------ the database

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn, timeout=10)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    async def db_leader(self) -> asyncpg.Record | None:
        rows = await self.sql(
            "SELECT l.node, l.term, l.released, l.backend_pid, t.term AS current,"
            " (SELECT count(*) FROM notifelect_status s"
            "   WHERE s.namespace = l.namespace AND s.is_leader) AS status_leaders"
            " FROM notifelect_leader l JOIN notifelect_term t USING (namespace)"
            " WHERE l.namespace = $1",
            self.namespace,
        )
        return rows[0] if rows else None

    async def leader(
        self, *, timeout: float = 20.0, expect: NodeProcess | None = None
    ) -> NodeProcess:
        """Wait until exactly one live node (``expect`` if given) reports leading, the
        database agrees, and it has committed an execution under its term; return it."""

        why = "not checked yet"

        async def settled() -> NodeProcess | None:
            nonlocal why
            leaders = self.reported_leaders()
            if len(leaders) != 1 or (expect is not None and leaders[0] is not expect):
                why = f"nodes reporting leading: {[n.index for n in leaders]}"
                return None
            node = leaders[0]
            term = node.leading_term
            # Executions in its group: a group sharing its session numbers terms on its own.
            if term is None or not node.of("exec", term=term, ns=self.namespace):
                why = f"#{node.index} has no execution under term {term}"
                return None
            try:
                row = await self.db_leader()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                why = f"the database did not answer: {exc!r}"
                return None
            why = f"#{node.index} (node {node.node}, term {term}); the database says {row}"
            if row is None or row["released"] or row["node"] != node.node:
                return None
            if not (row["term"] == row["current"] == term and row["status_leaders"] == 1):
                return None
            # Reports may have arrived while the database answered.
            if self.reported_leaders() != [node] or node.leading_term != term:
                why = "the reports changed while the database answered"
                return None
            return node

        try:
            found = await self.until_async(
                settled, timeout=timeout, what="exactly one acting leader"
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\nlast check: {why}") from None
        assert found is not None
        return found

    async def more_executions(self, count: int, *, timeout: float, what: str) -> None:
        """Wait until the cluster has committed ``count`` more executions than now."""
        target = self.count("exec", ns=self.namespace) + count
        await self.until(
            lambda: self.count("exec", ns=self.namespace) >= target, timeout=timeout, what=what
        )

    def acts_after(self, node: NodeProcess, term: int, at: float) -> list[float]:
        """Times ``node`` recorded acting under ``term`` at or after ``at``."""
        return [a["at"] for a in node.of("act", term=term) if a["at"] >= at]

    def count(self, kind: str, **match: Any) -> int:
        return sum(len(n.of(kind, **match)) for n in self.nodes)

    async def report(self, namespace: str | None = None) -> checker.Report:
        """Run every check of ``checker`` on the audit table and the nodes' reports (the
        group under test), or on the audit table alone for ``namespace`` (a group the
        nodes share their sessions with)."""
        group = namespace or self.namespace
        rows = await self.sql(
            f"SELECT node, term, started, ended, kind, db_at FROM {AUDIT_TABLE}"
            " WHERE namespace = $1",
            group,
        )
        executions = [checker.Execution(**dict(r)) for r in rows]
        history = await self.sql(
            "SELECT term, node, started_at FROM notifelect_history WHERE namespace = $1",
            group,
        )
        return checker.check(
            executions,
            spans=list(self.spans().values()) if namespace is None else [],
            term_started={r["term"]: r["started_at"] for r in history},
            owners={r["term"]: r["node"] for r in history},
        )

    async def verify(self) -> checker.Report:
        """Check the run: no overlap, no term regression, no stale write accepted, on_elected
        hand-overs in order, exactly one acting leader. Returns the report."""
        leader = await self.leader()
        report = await self.report()
        spans = self.spans()
        history = await self.sql(
            "SELECT term FROM notifelect_history WHERE namespace = $1", self.namespace
        )
        assert report.ok, f"{report}\n{self.describe()}"
        assert report.executions > 0
        for namespace in self.extra_namespaces():  # the groups sharing the sessions

            async def ran(group: str = namespace) -> checker.Report | None:
                found = await self.report(group)
                return found if found.executions > 0 else None

            # A short run may end before a group sharing the sessions ran its job once:
            # it must get a leader and run it soon (its liveness), then be checked.
            shared = await self.until_async(ran, timeout=30, what=f"group {namespace} ran")
            assert shared is not None
            assert shared.ok, f"group {namespace}: {shared}\n{self.describe()}"
        # Terms in the database are unique per leadership and only grow.
        terms = sorted(r["term"] for r in history)
        assert terms == sorted(set(terms)), terms
        assert leader.live
        last_span = spans.get(max(spans)) if spans else None
        assert last_span is not None
        assert last_span.node == leader.node
        assert math.isfinite(last_span.started)
        return report

    async def close(self, timeout: float = 15.0) -> None:
        await super().close(timeout)
        for proxy in self.proxies:
            await proxy.close()
