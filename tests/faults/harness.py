"""Runs node processes against a throwaway PostgreSQL, injects faults, checks the outcome.

A :class:`Cluster` owns the node processes of one test (and their proxies). Tests wait on
what the nodes report (JSON lines on stdout) or poll the database with a deadline; they
never sleep to synchronise. :meth:`Cluster.verify` runs every check of ``checker.py`` on
the audit table and the reports, and asserts exactly one leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.faults import checker
from tests.faults.node import AUDIT_DDL, AUDIT_TABLE, extra_namespace
from tests.support.proxy import FaultProxy
from tests.support.servers import ThrowawayPostgres

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def _proven_dead(pid: int, within: float = 5.0) -> float | None:
    """After SIGKILL: the first time ``pid`` is seen gone or a zombie (it can no longer
    run), looked at in a tight loop so the time is close to the real death."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return time.time()  # reaped already
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return time.time()
    return None


@dataclass(frozen=True)
class Timing:
    """Settings of the node processes (short, to keep the suite fast)."""

    interval: float = 0.1
    election_timeout: float = 0.05
    lease: float = 0.5
    leader_timeout: float = 0.5
    job_period: float = 0.05
    work: float = 0.01
    idle_in_transaction_ms: int = 1000
    #: Groups each node joins besides the one under test, on the same engine (so on the
    #: same election session): their fenced writes are checked as well.
    extra_groups: int = 2
    #: The longest wait between reconnect attempts (RetryPolicy.maximum).
    retry_maximum: float = 0.5

    def argv(self) -> list[str]:
        return [
            "--extra-groups", str(self.extra_groups),
            "--retry-maximum", str(self.retry_maximum),
            "--interval", str(self.interval),
            "--election-timeout", str(self.election_timeout),
            "--lease", str(self.lease),
            "--leader-timeout", str(self.leader_timeout),
            "--job-period", str(self.job_period),
            "--work", str(self.work),
            "--idle-in-transaction-ms", str(self.idle_in_transaction_ms),
        ]  # fmt: skip


@dataclass
class NodeProcess:
    """One node program and what it reported."""

    index: int
    proc: asyncio.subprocess.Process
    log: Path
    proxy: FaultProxy | None
    events: list[dict[str, Any]] = field(default_factory=list)
    node: int | None = None
    faults: list[tuple[str, float]] = field(default_factory=list)
    paused: bool = False
    killed: bool = False
    exited: bool = False
    #: When the process was proven dead: seen gone (or a zombie) after SIGKILL, or its exit.
    dead_at: float | None = None
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def live(self) -> bool:
        """Running and not paused (a node that can act)."""
        return not (self.exited or self.killed or self.paused)

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["ev"] == kind and all(e.get(k) == v for k, v in match.items())
        ]

    @property
    def leading_term(self) -> int | None:
        """The term this node reports leading in (its on_elected work is running), or None."""
        term = None
        for e in self.events:
            if e["ev"] == "elected":
                term = e["term"]
            elif e["ev"] in ("span_end", "deposed") and e["term"] == term:
                term = None
        return term

    def executions(self, term: int) -> int:
        return len(self.of("exec", term=term))

    def describe(self) -> str:
        state = (
            "exited" if self.exited else "killed" if self.killed
            else "paused" if self.paused else "live"
        )  # fmt: skip
        tail = [
            {k: v for k, v in e.items() if k not in ("t", "started", "ended")}
            for e in self.events
            if e["ev"] not in ("exec",)
        ][-4:]
        return f"#{self.index} node={self.node} pid={self.pid} {state} last={tail}"


class Cluster:
    """The node processes of one test on ``server`` (a throwaway PostgreSQL)."""

    def __init__(
        self, server: ThrowawayPostgres, workdir: Path, namespace: str, timing: Timing | None = None
    ) -> None:
        self.server = server
        self.workdir = workdir
        self.namespace = namespace
        self.timing = timing or Timing()
        self.nodes: list[NodeProcess] = []
        self.proxies: list[FaultProxy] = []
        self.cluster_faults: list[tuple[str, float]] = []
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Cluster:
        await self.sql(AUDIT_DDL)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------ database

    async def connect(self) -> asyncpg.Connection[Any]:
        return await asyncpg.connect(self.server.dsn, timeout=10)

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await self.connect()
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

    # ------------------------------------------------------------ processes

    def _proxied_dsn(self, port: int) -> str:
        parts = urlsplit(self.server.dsn)
        netloc = f"{parts.username}@127.0.0.1:{port}"
        return urlunsplit(parts._replace(netloc=netloc))

    async def spawn(
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
        given = dsn
        for _ in range(count):
            proxy = None
            dsn = given or self.server.dsn
            if proxied and given is None:
                proxy = await FaultProxy("127.0.0.1", self.server.port).start()
                self.proxies.append(proxy)
                dsn = self._proxied_dsn(proxy.port)
            index = len(self.nodes)
            log = self.workdir / f"node-{index}.log"
            with open(log, "ab") as stderr:  # noqa: ASYNC230  # a local log file, opened once
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tests.faults.node",
                    "--dsn", dsn, "--namespace", self.namespace, *self.timing.argv(), *extra,
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=stderr,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )  # fmt: skip
            node = NodeProcess(index, proc, log, proxy)
            node.reader = asyncio.create_task(self._read(node))
            self.nodes.append(node)
            started.append(node)
        await self.until(
            lambda: all(n.node is not None for n in started),
            timeout=30 + 2 * count,
            what=f"{count} node(s) joined",
        )
        return started

    async def _read(self, node: NodeProcess) -> None:
        assert node.proc.stdout is not None
        while line := await node.proc.stdout.readline():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            node.events.append(event)
            if event["ev"] in ("ready", "elected"):
                # A node's id is its election session's: a new session after a lost one
                # brings a new id, which the process reports when it is next elected.
                node.node = event["node"]
            self._wake()
        await node.proc.wait()
        node.exited = True
        if node.dead_at is None:
            node.dead_at = time.time()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def until(
        self, predicate: Callable[[], T], *, timeout: float, what: str, poll: float = 0.1
    ) -> T:
        """Wait until ``predicate()`` is truthy; re-checked on every report and every
        ``poll`` seconds."""

        async def probe() -> T:
            return predicate()

        return await self.until_async(probe, timeout=timeout, what=what, poll=poll)

    async def until_async(
        self,
        predicate: Callable[[], Awaitable[T]],
        *,
        timeout: float,
        what: str,
        poll: float = 0.1,
    ) -> T:
        """Like :meth:`until` for a coroutine predicate (conditions on the database)."""
        deadline = time.monotonic() + timeout
        while True:
            changed = self._changed
            value = await predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{what}: not reached within {timeout}s\n" + self.describe())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, poll))

    async def reported(
        self, node: NodeProcess, kind: str, *, timeout: float, what: str, **match: Any
    ) -> dict[str, Any]:
        """Wait until ``node`` reported an event ``kind`` with fields ``match``; return it."""
        found = await self.until(lambda: node.of(kind, **match), timeout=timeout, what=what)
        return found[0]

    async def more_executions(self, count: int, *, timeout: float, what: str) -> None:
        """Wait until the cluster has committed ``count`` more executions than now."""
        target = self.count("exec") + count
        await self.until(lambda: self.count("exec") >= target, timeout=timeout, what=what)

    def describe(self) -> str:
        return "\n".join(n.describe() for n in self.nodes)

    # ------------------------------------------------------------ leadership

    def reported_leaders(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.live and n.leading_term is not None]

    async def leader(
        self, *, timeout: float = 20.0, expect: NodeProcess | None = None
    ) -> NodeProcess:
        """Wait until exactly one live node (``expect`` if given) reports leading, the
        database agrees, and it has committed an execution under its term; return it."""

        async def settled() -> NodeProcess | None:
            leaders = self.reported_leaders()
            if len(leaders) != 1 or (expect is not None and leaders[0] is not expect):
                return None
            node = leaders[0]
            term = node.leading_term
            if term is None or not node.executions(term):
                return None
            try:
                row = await self.db_leader()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return None
            if row is None or row["released"] or row["node"] != node.node:
                return None
            if not (row["term"] == row["current"] == term and row["status_leaders"] == 1):
                return None
            # Reports may have arrived while the database answered.
            if self.reported_leaders() != [node] or node.leading_term != term:
                return None
            return node

        found = await self.until_async(settled, timeout=timeout, what="exactly one acting leader")
        assert found is not None
        return found

    # ------------------------------------------------------------ faults

    def signal(self, node: NodeProcess, sig: signal.Signals) -> float:
        at = time.time()
        os.kill(node.pid, sig)
        if sig is signal.SIGKILL:
            node.killed = True
            node.faults.append(("kill", at))
            node.dead_at = _proven_dead(node.pid)
        elif sig is signal.SIGSTOP:
            node.paused = True
            node.faults.append(("stop", at))
        elif sig is signal.SIGCONT:
            node.paused = False
        return at

    def note_fault(self, node: NodeProcess, kind: str, at: float | None = None) -> float:
        at = time.time() if at is None else at
        node.faults.append((kind, at))
        return at

    async def stop_node(self, node: NodeProcess, *, timeout: float = 15.0) -> None:
        """Clean exit: SIGTERM, then wait for the process to leave."""
        os.kill(node.pid, signal.SIGTERM)
        await self.until(lambda: node.exited, timeout=timeout, what=f"node {node.node} exited")
        assert node.proc.returncode == 0, node.describe()

    async def close(self) -> None:
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
                lambda: all(n.exited for n in self.nodes), timeout=15, what="all nodes exited"
            )
        for node in self.nodes:
            if not node.exited:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.kill()
        readers = [n.reader for n in self.nodes if n.reader is not None]
        if readers:
            await asyncio.wait(readers, timeout=10)
        for proxy in self.proxies:
            await proxy.close()

    # ------------------------------------------------------------ checks

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

    def extra_namespaces(self) -> list[str]:
        return [extra_namespace(self.namespace, i) for i in range(self.timing.extra_groups)]

    def spans(self) -> dict[int, checker.Span]:
        """Each term's activity as its own process recorded it (see checker.Span)."""
        spans: dict[int, checker.Span] = {}
        for n in self.nodes:
            assert n.node is not None
            for e in n.of("elected"):
                term = e["term"]
                acts = [a["at"] for a in n.of("act", term=term)]
                calls_open = len(n.of("call_start", term=term)) > len(n.of("call_end", term=term))
                spans[term] = checker.Span(
                    n.node,
                    term,
                    e["t"],
                    last_act=max(acts) if acts else None,
                    open_at_end=not n.of("span_end", term=term) or calls_open,
                    dead_at=n.dead_at,
                )
        return spans

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

    def acts_after(self, node: NodeProcess, term: int, at: float) -> list[float]:
        """Times ``node`` recorded acting under ``term`` at or after ``at``."""
        return [a["at"] for a in node.of("act", term=term) if a["at"] >= at]

    def count(self, kind: str, **match: Any) -> int:
        return sum(len(n.of(kind, **match)) for n in self.nodes)
