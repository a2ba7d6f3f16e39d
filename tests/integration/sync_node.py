"""A node of a threaded service for the real-process test of the sync facade: a
SyncElectionGroup on a sync psycopg engine with a plain ``def`` job under ``@every``.

Each run of the job appends ``start <pid> <term> <t>`` and ``end <pid> <term> <t>`` lines
(``time.monotonic()``, one clock for every process of the machine) to the records file.
SIGTERM leaves the ``with`` block (a clean hand-over); SIGKILL is the crash.

    python -m tests.integration.sync_node DSN NAMESPACE RECORDS
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import sqlalchemy as sa

from notifelect import Settings, current_leadership
from notifelect.sync import ElectionGroup

JOB_SECONDS = 0.05


def main(dsn: str, namespace: str, records: str) -> None:
    engine = sa.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    settings = Settings(election_interval=0.2, lease=1.0, leader_timeout=0.5)
    group = ElectionGroup(engine, namespace, settings)
    out = open(records, "a", buffering=1)  # noqa: SIM115 - open for the life of the node
    pid = os.getpid()

    def record(kind: str, term: int) -> None:
        out.write(f"{kind} {pid} {term} {time.monotonic():.6f}\n")
        out.flush()
        os.fsync(out.fileno())

    @group.every(0.1)
    def tick() -> None:
        ls = current_leadership()
        assert ls is not None
        record("start", ls.term)
        time.sleep(JOB_SECONDS)  # the job's work
        record("end", ls.term)

    stop = threading.Event()

    def on_term(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    with group:
        print("joined", flush=True)
        stop.wait()
    out.close()
    engine.dispose()


if __name__ == "__main__":
    main(*sys.argv[1:4])
