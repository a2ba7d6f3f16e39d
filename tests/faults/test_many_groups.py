"""Many groups, one session: three processes join the same 200 groups, each on one engine.

Real processes (``python -m benchmarks.many_node``) on the shared PostgreSQL, in a database
of this test's own: how many sessions each process holds (every notifelect backend of the
database is claimed by exactly one process), how many transactions the database runs per
second in steady state, and what happens when the process leading the most groups is
killed: every one of its groups gets a new leader, and no group ever has two.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 3
GROUPS = 200


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    def of(self, ev: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["ev"] == ev]

    def last(self, ev: str) -> dict[str, Any] | None:
        found = self.of(ev)
        return found[-1] if found else None

    def pids(self) -> list[int]:
        """The backends of this process's sessions, as it last reported them."""
        report = self.last("sessions")
        return [] if report is None else list(report["pids"])

    def leads(self) -> dict[str, int]:
        act = self.last("act")
        return {} if act is None else dict(act["led"])


class Procs:
    def __init__(self, dsn: str, tag: str) -> None:
        self.dsn = dsn
        self.tag = tag
        self.procs: list[Proc] = []
        self._changed = asyncio.Event()

    async def spawn(self, count: int, groups: int, *extra: str) -> None:
        for _ in range(count):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.many_node",
                "--dsn",
                self.dsn,
                "--groups",
                str(groups),
                "--tag",
                self.tag,
                *extra,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                limit=2**22,
            )
            p = Proc(proc)
            p.reader = asyncio.create_task(self._read(p))
            self.procs.append(p)

    async def _read(self, p: Proc) -> None:
        assert p.proc.stdout is not None
        while line := await p.proc.stdout.readline():
            with contextlib.suppress(ValueError):
                p.events.append(json.loads(line))
                self._changed.set()

    async def until(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{what}: not reached within {timeout}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def settled(self, groups: int) -> bool:
        """Every group is acted for by exactly one live process."""
        seen: dict[str, int] = {}
        for p in self.procs:
            if p.proc.returncode is not None:
                continue
            for ns in p.leads():
                seen[ns] = seen.get(ns, 0) + 1
        return len(seen) == groups and all(v == 1 for v in seen.values())

    async def close(self) -> None:
        for p in self.procs:
            if p.proc.returncode is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                await asyncio.wait_for(p.proc.wait(), 30)
            except TimeoutError:
                p.proc.kill()
                await p.proc.wait()
            if p.reader is not None:
                await p.reader


@contextlib.asynccontextmanager
async def running(dsn: str, tag: str) -> AsyncIterator[Procs]:
    procs = Procs(dsn, tag)
    try:
        yield procs
    finally:
        await procs.close()


async def transactions(conn: asyncpg.Connection[Any]) -> int:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
    )


def overlaps(procs: list[Proc]) -> list[str]:
    """Leaderships of one group that overlap, from what each process recorded.

    A leadership of group g under term T begins at its ``elected`` event and ends at its
    ``deposed`` event, or, for a process that never recorded one (killed), at its last
    ``act`` line listing g under T. A newer term must begin after every older one ended.
    """
    spans: dict[str, list[tuple[int, float, float]]] = {}
    for p in procs:
        ends: dict[tuple[str, int], float] = {}
        for e in p.of("act"):
            for ns, term in e["led"].items():
                ends[ns, term] = e["t"]
        for e in p.of("deposed"):
            ends[e["ns"], e["term"]] = max(ends.get((e["ns"], e["term"]), 0.0), e["t"])
        for e in p.of("elected"):
            end = ends.get((e["ns"], e["term"]), e["t"])
            spans.setdefault(e["ns"], []).append((e["term"], e["t"], end))
    found = []
    for ns, terms in spans.items():
        terms.sort()
        for (t1, _b1, e1), (t2, b2, _e2) in itertools.pairwise(terms):
            if b2 < e1:
                found.append(f"{ns}: term {t2} began {e1 - b2:.3f}s before term {t1} ended")
    return found


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["default", "fast-crash"])
async def test_three_processes_two_hundred_groups(dsn: str, namespace: str, mode: str) -> None:
    extra = ("--fast-crash",) if mode == "fast-crash" else ()
    admin = await asyncpg.connect(dsn)
    try:
        async with running(dsn, namespace) as procs:
            await procs.spawn(PROCESSES, GROUPS, *extra)
            await procs.until(
                lambda: all(p.last("ready") for p in procs.procs), 120, "every process joined"
            )
            await procs.until(lambda: procs.settled(GROUPS), 120, "one leader per group")
            await procs.until(
                lambda: all(p.last("sessions") for p in procs.procs), 10, "sessions reported"
            )

            # Sessions: every notifelect backend of the database belongs to one process,
            # and no process holds more than three (election session, anchor, watcher).
            await procs.until(
                lambda: procs.settled(GROUPS) and all(len(p.pids()) <= 3 for p in procs.procs),
                20,
                "at most three sessions per process",
            )
            deadline = time.monotonic() + 20
            while True:  # the reports are up to a second old: compare until they agree
                reported = {pid for p in procs.procs for pid in p.pids()}
                rows = await admin.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name LIKE 'notifelect%'"
                )
                backends = {r["pid"] for r in rows}
                if backends <= reported or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)  # polling the server's view
            assert backends <= reported, f"unclaimed backends: {backends - reported}"
            assert len(backends) <= 3 * PROCESSES

            # Steady state: transactions per second in the whole database. The server's
            # counters lag (backends flush them every second or more), so the cold start
            # shows up for a while: wait until a window of two seconds is quiet first.
            quiet_by = time.monotonic() + 60
            last = await transactions(admin)
            while time.monotonic() < quiet_by:
                await asyncio.sleep(2)  # a sampling window, not a synchronisation
                now_count = await transactions(admin)
                if now_count - last <= 2 * 20:
                    break
                last = now_count
            before, t0 = await transactions(admin), time.monotonic()
            await asyncio.sleep(10)  # the measurement window
            after, t1 = await transactions(admin), time.monotonic()
            rate = (after - before - 1) / (t1 - t0)
            print(f"\n{mode}: {rate:.1f} transactions/s in steady state", file=sys.stderr)
            assert rate <= 20

            # Kill the process leading the most groups.
            victim = max(procs.procs, key=lambda p: len(p.leads()))
            lost = set(victim.leads())
            victim.proc.send_signal(signal.SIGKILL)
            killed_at = time.time()
            await victim.proc.wait()
            survivors = [p for p in procs.procs if p is not victim]

            def new_leaders() -> dict[str, float] | None:
                first: dict[str, float] = {}
                for p in survivors:
                    for e in p.of("elected"):
                        if e["ns"] in lost and e["t"] >= killed_at:
                            first[e["ns"]] = min(first.get(e["ns"], e["t"]), e["t"])
                return first if set(first) == lost else None

            first = await procs.until(new_leaders, 60, "a new leader for every lost group")
            took = sorted(t - killed_at for t in first.values())
            print(
                f"{mode}: SIGKILL of the leader of {len(lost)} groups -> every one led again:"
                f" median {statistics.median(took):.3f}s, max {took[-1]:.3f}s",
                file=sys.stderr,
            )
            await procs.until(lambda: procs.settled(GROUPS), 60, "one leader per group again")
        assert overlaps(procs.procs) == []
    finally:
        await admin.close()
