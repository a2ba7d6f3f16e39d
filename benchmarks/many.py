"""Processes that each join many groups on one engine (``benchmarks.many_node``), the
events they report, and what the database shows: used by the many-groups benchmark
(:mod:`benchmarks.groups`) and the many-groups test (``tests/faults``).
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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    led: dict[str, int] = field(default_factory=dict)  # the last ``led`` it reported
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
        """The groups the process last said it acts for, by term (do not change it)."""
        return self.led


class Procs:
    def __init__(self, dsn: str, tag: str, *extra: str) -> None:
        self.dsn = dsn
        self.tag = tag
        self.extra = extra
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
                *self.extra,
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
                event = json.loads(line)
                p.events.append(event)
                if event["ev"] == "act" and "led" in event:
                    p.led = event["led"]
                self._changed.set()

    async def until(
        self, predicate: Callable[[], Any], timeout: float, what: str, *, every: float = 0.05
    ) -> Any:
        """Wait until ``predicate()`` is true, checking when a process reports something,
        at most once every ``every`` seconds: thousands of lines a second must not make
        this process, which shares the CPUs with the nodes, the busiest on the machine."""
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            checked = time.monotonic()
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{what}: not reached within {timeout}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
            await asyncio.sleep(max(0.0, checked + every - time.monotonic()))  # throttle

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
async def running(dsn: str, tag: str, *extra: str) -> AsyncIterator[Procs]:
    procs = Procs(dsn, tag, *extra)
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
        current: dict[str, int] = {}
        for e in p.of("act"):
            current = e.get("led", current)  # a line without ``led``: the same groups
            for ns, term in current.items():
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


async def kill_busiest(procs: Procs, timeout: float) -> list[float]:
    """SIGKILL the process leading the most groups; wait until each of its groups has a
    new leader among the others; return how long each took, sorted (seconds)."""
    victim = max(procs.procs, key=lambda p: len(p.leads()))
    lost = set(victim.leads())
    victim.proc.send_signal(signal.SIGKILL)
    killed_at = time.time()
    await victim.proc.wait()
    survivors = [p for p in procs.procs if p is not victim]
    first = await procs.until(
        lambda: new_leaders(survivors, lost, killed_at), timeout, "every lost group led again"
    )
    return sorted(t - killed_at for t in first.values())


def new_leaders(survivors: list[Proc], lost: set[str], after: float) -> dict[str, float] | None:
    """When each group of ``lost`` first had a new leader among ``survivors`` (wall clock,
    from their ``elected`` events after ``after``); None until every one has."""
    first: dict[str, float] = {}
    for p in survivors:
        for e in p.of("elected"):
            if e["ns"] in lost and e["t"] >= after:
                first[e["ns"]] = min(first.get(e["ns"], e["t"]), e["t"])
    return first if set(first) == lost else None
