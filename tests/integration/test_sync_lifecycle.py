"""The thread-backed group's life cycle as threaded services drive it: closed from another
thread while it is still joining, interrupted by Ctrl-C while joining, closed from two
threads at once, used in a process forked after its start, bound to APScheduler, and
given a libpq-style DSN."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import event

from notifelect import GroupStateError, Leadership
from notifelect.errors import ConfigurationError
from notifelect.sync import ElectionGroup
from tests.integration.test_sync_facade import FAST, ROOT


def election_sessions(dsn: str) -> list[str]:
    """application_name of the election's sessions on the test's database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND application_name LIKE 'notifelect%'"
        ).fetchall()
    return [str(name) for (name,) in rows]


@pytest.mark.timeout(30)
def test_close_while_the_group_is_joining_stops_it(
    dsn: str, sync_engine: sa.Engine, namespace: str
) -> None:
    """close() from another thread while start() is still joining (a do_connect listener
    fetching a token): the close must not wait close_bound (67 s) for a thread nobody told
    to stop, and the group must not go on leading afterwards."""
    connecting = threading.Event()
    release = threading.Event()

    @event.listens_for(sync_engine, "do_connect")
    def fetch_token(*_: Any) -> None:
        connecting.set()
        assert release.wait(10)

    group = ElectionGroup(sync_engine, namespace, FAST)
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            group.start()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    starter = threading.Thread(target=start)
    starter.start()
    assert connecting.wait(10)
    closer = threading.Thread(target=group.close)
    closer.start()
    release.set()
    closer.join(10)
    assert not closer.is_alive(), "close() blocked while the group was joining"
    starter.join(10)
    assert not starter.is_alive()
    assert isinstance(outcome[0], GroupStateError)
    assert "closed while it was starting" in str(outcome[0])
    assert group._thread is not None
    group._thread.join(10)
    assert not group._thread.is_alive()
    assert not group.is_open
    assert election_sessions(dsn) == []


_INTERRUPTED_CHILD = """
import sys
import sqlalchemy as sa
from sqlalchemy import event
from notifelect import Settings
from notifelect.sync import ElectionGroup

engine = sa.create_engine(sys.argv[1].replace("postgresql://", "postgresql+psycopg://", 1))

@event.listens_for(engine, "do_connect")
def fetch_token(*_):
    print("connecting", flush=True)
    sys.stdin.readline()  # until the parent has interrupted the main thread

group = ElectionGroup(engine, sys.argv[2], Settings(election_interval=0.2, lease=2.0))
try:
    group.start()
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.timeout(30)
def test_ctrl_c_while_the_group_is_joining_exits_promptly(dsn: str, namespace: str) -> None:
    """Ctrl-C in the main thread during start(): the process exits at once, as it would
    for any other blocking call, instead of waiting close_bound (67 s) for the election
    thread that goes on joining."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_CHILD, dsn, namespace],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert "connecting" in proc.stdout.readline()  # (the connections open side by side)
        proc.send_signal(signal.SIGINT)
        proc.stdin.write("go\ngo\n")
        proc.stdin.flush()
        began = time.monotonic()
        out, _ = proc.communicate(timeout=20)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.split()[-1:] == ["interrupted"]  # after one "connecting" per connection
    assert proc.returncode == 0
    assert took < 10, f"the interrupted start took {took:.1f}s to give up"


@pytest.mark.timeout(30)
def test_a_second_close_from_another_thread_waits_for_the_close(
    sync_engine: sa.Engine, namespace: str
) -> None:
    """close() blocks until the group is closed, also when another thread's close() is
    already under way (a signal handler and a worker_exit hook, say)."""
    group = ElectionGroup(sync_engine, namespace, FAST)
    winding_down = threading.Event()
    release = threading.Event()
    calling = threading.Event()
    alive_after_second_close: list[bool] = []

    @group.on_elected
    def leading(ls: Leadership) -> None:
        assert ls.wait_until_over(20)
        winding_down.set()
        assert release.wait(10)

    group.start()
    group.wait_for_leadership(10)
    first = threading.Thread(target=group.close)
    first.start()
    assert winding_down.wait(10)

    def second_close() -> None:
        calling.set()
        group.close()
        assert group._thread is not None
        alive_after_second_close.append(group._thread.is_alive())

    second = threading.Thread(target=second_close)
    second.start()
    assert calling.wait(10)
    release.set()
    second.join(20)
    first.join(20)
    assert alive_after_second_close == [False], "the second close() returned before the close"


@pytest.mark.timeout(30)
def test_a_leader_only_call_in_a_forked_child_says_why(
    sync_engine: sa.Engine, namespace: str
) -> None:
    """gunicorn --preload with the group started at import: a @group.leader_only call in
    the worker must raise the fork's GroupStateError (as every other use does), not return
    None as if another node led, nor say this node is not the leader."""
    group = ElectionGroup(sync_engine, namespace, FAST)

    @group.leader_only
    def report() -> str:
        return "ran"

    @group.leader_only(raise_if_not_leader=True)
    def strict() -> str:
        return "ran"

    @group.every(3600, run_on_start=False)
    def hourly() -> str:
        return "ran"

    with group:
        group.wait_for_leadership(10)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, never return into pytest
            code = 1
            try:
                said = []
                for call in (report, strict, hourly):
                    try:
                        said.append(f"returned {call()!r}")
                    except Exception as exc:
                        said.append(f"{type(exc).__name__}: {exc}")
                os.write(write, "\n".join(said).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as pipe:
            said = pipe.read().split("\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert report() == "ran"  # the parent still leads
    for line in said:
        assert line.startswith("GroupStateError: "), line
        assert f"started in process {os.getpid()}" in line
        assert "post_fork" in line


def test_leader_scheduler_refuses_a_sync_group_with_the_fix(sync_engine: sa.Engine) -> None:
    """LeaderScheduler(sync_group, BackgroundScheduler()) must say what to do, not blame a
    coroutine function the user never wrote."""
    from apscheduler.schedulers.background import (  # type: ignore[import-untyped]
        BackgroundScheduler,
    )

    from notifelect.integrations.apscheduler import LeaderScheduler

    group = ElectionGroup(sync_engine, "g", FAST)
    with pytest.raises(ConfigurationError) as refused:
        LeaderScheduler(group, BackgroundScheduler())  # type: ignore[arg-type]
    said = str(refused.value)
    assert "SyncElectionGroup" in said
    assert "leader_only" in said
    assert "_lead" not in said


@pytest.mark.timeout(30)
def test_a_dsn_with_libpq_client_parameters_joins(dsn: str, namespace: str) -> None:
    """A DATABASE_URL written for psycopg (connect_timeout, keepalives, ...) given as the
    group's DSN: those are libpq's client-side knobs, not server settings, and must not
    make the server refuse the election's connection."""
    knobs = "connect_timeout=5&keepalives=1&keepalives_idle=30&gssencmode=disable"
    url = f"{dsn}{'&' if '?' in dsn else '?'}{knobs}"  # the embedded server's has ?host=
    with ElectionGroup(url, namespace, FAST) as group:
        assert group.wait_for_leadership(10).term > 0
