"""The thread-backed facade in plain sync code: elect, hand over, run def jobs; three
real processes with a def job under @every; a fork after the start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import text

from notifelect import GroupStateError, Leadership, Settings, current_leadership
from notifelect._cluster.checker import Execution, overlaps, regressions
from notifelect.errors import ConfigurationError
from notifelect.sync import ElectionGroup, SyncElectionGroup

FAST = Settings(election_interval=0.2, lease=2.0, leader_timeout=1.0)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sync_engine(dsn: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    yield engine
    engine.dispose()


def wait_for(predicate: object, timeout: float, what: str) -> None:
    """Wait on a condition variable's predicate (the tests' events), with a deadline."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(0.01)  # polling a condition with a deadline, not a synchronisation sleep


@pytest.mark.timeout(30)
def test_facade_elects_hands_over_and_runs_def_jobs(sync_engine: sa.Engine, namespace: str) -> None:
    runs: list[tuple[str, int]] = []
    lock = threading.Lock()
    elected_over = threading.Event()
    deposed: list[tuple[str, int]] = []

    def make(name: str) -> SyncElectionGroup:
        group = ElectionGroup(sync_engine, namespace, FAST)

        @group.every(0.05)
        def job() -> None:
            ls = current_leadership()
            assert ls is not None
            with lock:
                runs.append((name, ls.term))

        @group.on_elected
        def leading(ls: Leadership) -> None:
            ls.wait_until_over()  # returns when the leadership ends: the hand-over waits
            if name == "a":
                elected_over.set()

        @group.on_deposed
        def gone(ls: Leadership) -> None:
            with lock:
                deposed.append((name, ls.term))

        @group.leader_only
        def write(value: int) -> int:
            ls = current_leadership()
            assert ls is not None
            with ls.transaction(sync_engine) as conn:
                return int(conn.execute(text("SELECT :v"), {"v": value}).scalar_one())

        group.write = write  # type: ignore[attr-defined]
        return group

    a, b = make("a"), make("b")
    try:
        a.start()
        first = a.wait_for_leadership(10)
        b.start()
        b.wait_for_leader(10)
        assert a.is_leader
        assert not b.is_leader
        assert a.write(7) == 7  # type: ignore[attr-defined]
        assert b.write(7) is None  # type: ignore[attr-defined]
        wait_for(lambda: any(n == "a" for n, _ in runs), 10, "a's job ran")
        assert b.leader is not None
        assert b.leader.node == a.node
        a.close()  # resigns: the on_elected thread returned before b takes over
        assert elected_over.is_set()
        assert deposed == [("a", first.term)]
        second = b.wait_for_leadership(10)
        assert second.term > first.term
        wait_for(lambda: any(n == "b" for n, _ in runs), 10, "b's job ran")
    finally:
        a.close()
        b.close()
    terms = {n: {t for m, t in runs if m == n} for n in ("a", "b")}
    assert terms == {"a": {first.term}, "b": {second.term}}
    with pytest.raises(GroupStateError, match="after it was closed"):
        b.wait_for_leadership(0.1)


def test_coroutine_functions_are_refused_with_the_fix(sync_engine: sa.Engine) -> None:
    group = ElectionGroup(sync_engine, "g", FAST)

    async def job() -> None:
        pass

    with pytest.raises(ConfigurationError, match="plain def function"):
        group.every(1)(job)
    with pytest.raises(GroupStateError, match="before it was started"):
        group.wait_for_leadership(0.1)


@pytest.mark.timeout(30)
def test_a_group_started_before_a_fork_refuses_use_in_the_child(
    sync_engine: sa.Engine, namespace: str
) -> None:
    started = ElectionGroup(sync_engine, namespace, FAST)
    later = ElectionGroup(sync_engine, namespace, FAST)  # created, not started
    with started:
        started.wait_for_leadership(10)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, never return into pytest
            code = 1
            try:
                try:
                    _ = started.is_leader
                    said = "no error"
                except GroupStateError as exc:
                    said = str(exc)
                started.close()  # a no-op here: the connections are the parent's
                sync_engine.dispose(close=False)
                with later:  # a group entered after the fork is the child's own
                    info = later.wait_for_leader(10)
                os.write(write, f"{said}\n{info.node}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as pipe:
            said, leader = pipe.read().split("\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert f"started in process {os.getpid()}" in said
        assert "post_fork" in said
        assert int(leader) == started.node
        # The parent's election never noticed: still the leader, on the same session.
        assert started.is_leader


def read_runs(path: Path) -> dict[tuple[int, int, int], list[float]]:
    """(pid, term, n-th run of that pid) -> [start, end?] from a records file."""
    runs: dict[tuple[int, int, int], list[float]] = {}
    count: dict[int, int] = {}
    for line in path.read_text().splitlines():
        kind, pid, term, t = line.split()
        p = int(pid)
        if kind == "start":
            count[p] = count.get(p, 0) + 1
            runs[(p, int(term), count[p])] = [float(t)]
        else:
            runs[(p, int(term), count[p])].append(float(t))
    return runs


@pytest.mark.timeout(60)
def test_three_processes_run_a_def_job_one_at_a_time_and_fail_over_after_sigkill(
    dsn: str, namespace: str, tmp_path: Path
) -> None:
    records = tmp_path / "records"
    records.touch()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.sync_node", dsn, namespace, str(records)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "joined"

        def pids() -> set[int]:
            return {pid for pid, _, _ in read_runs(records)}

        wait_for(lambda: len(read_runs(records)) >= 5, 20, "five runs")
        (leader,) = pids()
        victim = next(p for p in procs if p.pid == leader)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed_at = time.monotonic()
        wait_for(lambda: len(pids()) == 2, 20, "a run on another process")
        (successor,) = pids() - {leader}
        wait_for(
            lambda: sum(1 for p, _, _ in read_runs(records) if p == successor) >= 3,
            20,
            "three runs on the successor",
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(20)
    assert all(p.returncode == 0 for p in procs if p.pid != leader)
    runs = read_runs(records)
    # The fault suite's overlap checker, on the processes' own records: a run the SIGKILL
    # cut short lasted, at most, until the process was seen dead.
    executions = [
        Execution(pid, term, span[0], span[1] if len(span) > 1 else killed_at)
        for (pid, term, _), span in runs.items()
    ]
    assert overlaps(executions) == []
    assert regressions(executions) == []
    terms = {pid: {t for p, t, _ in runs if p == pid} for pid in (leader, successor)}
    assert max(terms[leader]) < min(terms[successor])
