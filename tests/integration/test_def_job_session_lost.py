"""A plain ``def`` job's run outlives its node's session (the connection is cut, not the
process): the process comes back on a new session, under a new node id, while the run's
thread goes on. The next leader must find the run still held and wait for it, not see its
node gone and start the next run beside it (``docs/guides/jobs.md``: runs never overlap
within ``finish_timeout + callback_timeout``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import text

from notifelect import Settings
from notifelect.sync import ElectionGroup, SyncElectionGroup

# Bounds long enough that the documented exception (a def job outliving
# finish_timeout + callback_timeout) cannot explain an overlap within WATCH seconds.
SETTINGS = Settings(
    election_interval=0.2, lease=1.0, leader_timeout=0.5, finish_timeout=20.0, callback_timeout=5.0
)
WATCH = 12.0


@pytest.fixture
def sync_engine(dsn: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    yield engine
    engine.dispose()


@pytest.mark.timeout(60)
def test_a_def_job_cut_off_from_its_session_is_waited_for_by_the_next_leader(
    sync_engine: sa.Engine, namespace: str
) -> None:
    lock = threading.Lock()
    active: list[str] = []
    starts: list[str] = []
    overlaps: list[tuple[str, list[str]]] = []
    first_started = threading.Event()
    release = threading.Event()

    def make(tag: str) -> SyncElectionGroup:
        group = ElectionGroup(sync_engine, namespace, SETTINGS)

        @group.every(0.5, name="review.overlap")
        def job() -> None:
            with lock:
                if active:
                    overlaps.append((tag, list(active)))
                active.append(tag)
                starts.append(tag)
                first = len(starts) == 1
            try:
                if first:
                    first_started.set()
                    release.wait(40)  # the long run the cut interrupts
            finally:
                with lock:
                    active.remove(tag)

        return group

    a, b = make("a"), make("b")
    try:
        a.start()
        a.wait_for_leadership(10)
        assert first_started.wait(10), "the first run did not start"
        b.start()
        b.wait_for_leader(10)
        with sync_engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(backend_pid) FROM notifelect_session "
                    "WHERE node = :node"
                ),
                {"node": a.node},
            )
        # Polling with a deadline: a second start while the first run goes on is the defect.
        deadline = time.monotonic() + WATCH
        while time.monotonic() < deadline and len(starts) < 2:
            time.sleep(0.05)
    finally:
        release.set()
        a.close()
        b.close()
    assert overlaps == [], f"runs overlapped: {overlaps} (starts {starts})"
