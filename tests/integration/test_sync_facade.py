"""The thread-backed facade in plain sync code: elect, hand over, run def jobs; three
real processes with a def job under @every; a fork after the start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import text

from notifelect import GroupStateError, Leadership, Settings, current_leadership, current_run
from notifelect._cluster.checker import Execution, overlaps, regressions
from notifelect.errors import ConfigurationError
from notifelect.jobs import JobRun
from notifelect.sync import ElectionGroup, SyncElectionGroup

FAST = Settings(election_interval=0.2, lease=2.0, leader_timeout=1.0)
ROOT = Path(__file__).resolve().parents[2]


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
        granted = started.wait_for_leadership(10)
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
                os.write(write, f"{said}\n{info.node}\n{granted.is_valid}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as pipe:
            said, leader, valid_in_child = pipe.read().split("\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert f"started in process {os.getpid()}" in said
        assert "post_fork" in said
        assert int(leader) == started.node
        assert valid_in_child == "False"  # the parent's leadership is never the child's
        assert granted.is_valid
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


def cut_election_connections(dsn: str) -> int:
    """Terminate the election's connections to the test database; return how many."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name LIKE 'notifelect%'"
        ).fetchall()
    return len(rows)


@pytest.mark.timeout(90)
def test_jobs_run_and_the_group_reconnects_after_the_main_thread_returned(
    dsn: str, namespace: str, tmp_path: Path
) -> None:
    """The main thread returns while a worker thread keeps the process alive: Python then
    shuts concurrent.futures' executors down. The def job goes on running, and a lost
    connection is reopened through the sync engine's connect path."""
    records = tmp_path / "records"
    records.touch()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.sync_detached_node",
            dsn,
            namespace,
            str(records),
        ],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def runs_after(marker: str) -> list[int]:
        lines = records.read_text().splitlines()
        if marker not in lines:
            return []
        return [int(line.split()[2]) for line in lines[lines.index(marker) :] if line[:4] == "run "]

    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "joined"
        wait_for(lambda: "main-returned" in records.read_text(), 30, "the main thread returned")
        assert "executors-still-open" not in records.read_text()
        wait_for(lambda: len(runs_after("main-returned")) >= 3, 20, "runs after main returned")
        term = max(runs_after("main-returned"))
        with records.open("a") as out:
            out.write("cut\n")
        assert cut_election_connections(dsn) >= 1
        wait_for(lambda: any(t > term for t in runs_after("cut")), 30, "a run after the reconnect")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0


@pytest.mark.timeout(30)
def test_close_from_inside_a_def_callback_does_not_wait_for_itself(
    sync_engine: sa.Engine, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    # callback_timeout longer than the test's timeout: waiting for itself would time out.
    settings = FAST.replace(callback_timeout=60.0)
    group = ElectionGroup(sync_engine, namespace, settings)
    follower = ElectionGroup(sync_engine, namespace, settings)
    closed = threading.Event()
    returned = threading.Event()

    @group.on_elected
    def leading(ls: Leadership) -> None:
        group.close()  # starts the close and returns: the hand-over waits for this thread
        closed.set()
        assert ls.wait_until_over(20)  # the hand-over has begun
        assert not group.is_leader
        returned.set()

    group.start()
    try:
        with follower:
            assert closed.wait(10)
            assert returned.wait(10)
            assert follower.wait_for_leadership(10).term > 0
            assert group._thread is not None
            group._thread.join(10)
            assert not group._thread.is_alive()
            assert not group.is_open
    finally:
        group.close()
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []


@pytest.mark.timeout(30)
def test_a_failing_def_on_elected_is_logged_once_and_its_exception_retrieved(
    sync_engine: sa.Engine, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    import gc

    group = ElectionGroup(sync_engine, namespace, FAST.replace(callback_timeout=5.0))
    started = threading.Event()

    @group.on_elected
    def leading(ls: Leadership) -> None:
        started.set()
        ls.wait_until_over()  # raises once the hand-over told it to stop
        raise ValueError("failed while stopping")

    with group:
        assert started.wait(10)
    gc.collect()  # a future whose exception nobody retrieved is reported when collected
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "never retrieved" in m]
    failures = [
        r for r in caplog.records if r.exc_info and "failed while stopping" in str(r.exc_info[1])
    ]
    assert len(failures) == 1
    assert "on_elected callback" in failures[0].getMessage()


@pytest.mark.timeout(30)
def test_metrics_register_takes_a_sync_group(sync_engine: sa.Engine, namespace: str) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from notifelect.metrics import register
    from tests.support.exposition import samples

    registry = CollectorRegistry()
    with ElectionGroup(sync_engine, namespace, FAST) as group:
        ls = group.wait_for_leadership(10)
        register(group, registry=registry)
        lines = samples(generate_latest(registry))
    labels = frozenset({("group", namespace), ("node", group.instance)})
    assert lines["notifelect_is_leader", labels] == 1.0
    assert lines["notifelect_ready", labels] == 1.0
    assert lines["notifelect_term", labels] == float(ls.term)
    assert lines["notifelect_elected_total", labels] == 1.0
    with pytest.raises(ConfigurationError, match="ElectionGroup or SyncElectionGroup"):
        register(object(), registry=CollectorRegistry())  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_a_stalled_election_loop_shows_as_a_lease_lapse_in_health_and_metrics(
    sync_engine: sa.Engine, namespace: str
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from notifelect import HealthState
    from notifelect.metrics import register
    from tests.support.exposition import samples

    settings = Settings(election_interval=0.2, lease=1.0, leader_timeout=0.5)
    registry = CollectorRegistry()
    with ElectionGroup(sync_engine, namespace, settings) as group:
        register(group, registry=registry)
        ls = group.wait_for_leadership(10)
        assert group.health.lease_lapses == 0
        release = threading.Event()
        loop = group._loop
        assert loop is not None
        try:
            # The election's loop stalls (as when other threads starve it of the GIL):
            # nothing renews the lease. is_leader and health need no loop to answer, and
            # the lease runs out on the clock alone.
            loop.call_soon_threadsafe(release.wait, 30)
            wait_for(lambda: not group.is_leader, 20, "the lease ran out")
            assert ls.lease_remaining == 0.0
            assert not ls.is_valid
            assert group.health.state is not HealthState.LEADING
        finally:
            release.set()
        wait_for(lambda: group.health.lease_lapses == 1, 20, "the lapse counted")
        assert ls.ended_reason is not None
        # Counted once, and kept across the next leadership of this node.
        assert group.wait_for_leadership(20).term > ls.term
        assert group.health.lease_lapses == 1
        assert group.health.as_dict()["lease_lapses"] == 1
        lines = samples(generate_latest(registry))
    labels = frozenset({("group", namespace), ("node", group.instance)})
    assert lines["notifelect_lease_lapses_total", labels] == 1.0
    assert "notifelect_late_renewals_total" in {name for name, _ in lines}


@pytest.mark.timeout(30)
def test_facade_schedules_take_every_argument_of_the_async_ones(
    sync_engine: sa.Engine, namespace: str
) -> None:
    """A def job's schedule takes what an async one does: ``name`` (what the
    ``job_renamed`` warning tells a user to pass), the policies, and ``cron``."""
    group = ElectionGroup(sync_engine, namespace, FAST)
    ran = threading.Event()
    seen: list[JobRun | None] = []

    @group.every(3600, name="reports.refresh-totals", catch_up="each", jitter=0.0, keep=5)
    def refresh_totals() -> None:
        seen.append(current_run())
        ran.set()

    @group.cron("0 7 * * MON-FRI", tz="Europe/Oslo", name="reports.digest")
    def digest() -> None:
        raise AssertionError("not due during the test")

    with pytest.raises(ConfigurationError, match="jitter"):
        group.every(1, jitter=2)(lambda: None)
    with pytest.raises(ConfigurationError, match="cron expression"):
        group.cron("not cron")(lambda: None)

    async def coro() -> None: ...

    with pytest.raises(ConfigurationError, match="plain def"):
        group.cron("* * * * *")(coro)

    with group:
        group.wait_for_leadership(10)
        assert ran.wait(10), "the every job did not run"
    with sync_engine.connect() as conn:
        jobs: dict[str, str] = dict(
            conn.execute(
                text("SELECT job, schedule FROM notifelect_job WHERE namespace = :ns"),
                {"ns": namespace},
            ).all()
        )
        runs = conn.execute(
            text("SELECT job FROM notifelect_job_run WHERE namespace = :ns"), {"ns": namespace}
        ).scalars()
        assert list(runs) == ["reports.refresh-totals"]
    assert len(seen) == 1
    assert seen[0] is not None
    assert seen[0].job == "reports.refresh-totals"
    assert jobs == {
        "reports.refresh-totals": "every 3600s",
        "reports.digest": "cron 0 7 * * MON-FRI (Europe/Oslo)",
    }
