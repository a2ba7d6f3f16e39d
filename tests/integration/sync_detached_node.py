"""A threaded service whose main thread returns while a worker thread keeps the process
alive, for the test of the sync facade after the main thread is gone: a SyncElectionGroup
on a sync psycopg engine with a plain ``def`` job under ``@every``.

The main thread starts the group and a (non-daemon) worker thread, then returns. The
worker waits until ``concurrent.futures`` has shut its executors down (what the end of
the main thread does), writes ``main-returned`` to the records file and then reads stdin
to its end; the process exits once the test closes stdin. Each run of the job appends
``run <node> <term>`` to the records file.

    python -m tests.integration.sync_detached_node DSN NAMESPACE RECORDS
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
import time

import sqlalchemy as sa

from notifelect import Settings, current_leadership
from notifelect.sync import ElectionGroup


def main(dsn: str, namespace: str, records: str) -> None:
    engine = sa.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    settings = Settings(election_interval=0.2, lease=1.0, leader_timeout=0.5)
    group = ElectionGroup(engine, namespace, settings)
    out = open(records, "a", buffering=1)  # noqa: SIM115 - open for the life of the node
    lock = threading.Lock()

    def record(line: str) -> None:
        with lock:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())

    @group.every(0.1)
    def tick() -> None:
        ls = current_leadership()
        assert ls is not None
        record(f"run {ls.node} {ls.term}")

    def worker() -> None:
        threading.main_thread().join()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the exit hooks of threading run just after
            try:
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    pool.submit(int).result()
            except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
                break
            time.sleep(0.01)  # polling a condition with a deadline
        else:
            record("executors-still-open")
        record("main-returned")
        sys.stdin.read()

    group.start()
    threading.Thread(target=worker, name="worker").start()
    print("joined", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
