"""Two Celery beats with the leader-gated scheduler of examples/celery_beat.py: only the
leader's beat sends, both advance their schedules, and a hand-over moves the sending."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from typing import Any

import pytest

from notifelect import Settings
from notifelect.sync import SyncElectionGroup
from tests.cli.running import ROOT

celery = pytest.importorskip("celery")

FAST = Settings(election_interval=0.2, lease=2.0, leader_timeout=1.0)


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location(
        "celery_beat", ROOT / "examples" / "celery_beat.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["celery_beat"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(40)
def test_only_the_leaders_beat_sends_and_a_hand_over_moves_it(
    dsn: str, namespace: str, tmp_path: Any
) -> None:
    example = load_example()
    app = celery.Celery("t", broker="memory://")
    app.conf.beat_schedule = {"tick": {"task": "unregistered.tick", "schedule": 0.1}}
    sent: list[str] = []
    due: list[str] = []
    lock = threading.Lock()

    def beat(name: str) -> tuple[SyncElectionGroup, Any]:
        group = SyncElectionGroup(dsn, namespace, FAST)
        base = example.leader_scheduler(group)

        class Recording(base):  # type: ignore[misc,valid-type]
            def apply_entry(self, entry: Any, producer: Any = None) -> None:
                with lock:
                    due.append(name)
                super().apply_entry(entry, producer)

            def send_task(self, *args: Any, **kwargs: Any) -> None:  # no broker needed
                with lock:
                    sent.append(name)

        scheduler = Recording(app=app, schedule_filename=str(tmp_path / name))
        return group, scheduler

    (a, sa), (b, sb) = beat("a"), beat("b")
    a.wait_for_leadership(10)
    stops = [threading.Event(), threading.Event()]

    def run(scheduler: Any, stop: threading.Event) -> None:
        while not stop.is_set():
            stop.wait(min(scheduler.tick(), 0.05))  # beat's loop, with a stop
        scheduler.close()  # as beat does when it stops: a's group resigns

    threads = [threading.Thread(target=run, args=x) for x in zip((sa, sb), stops, strict=True)]
    for t in threads:
        t.start()
    stop = stops[1]
    try:
        deadline = time.monotonic() + 20
        while len(sent) < 5 and time.monotonic() < deadline:
            stop.wait(0.05)  # polling a list with a deadline
        with lock:
            before = list(sent)
            due_before = list(due)
        stops[0].set()  # beat a stops: its group resigns, b's beat sends from now on
        threads[0].join(10)
        b.wait_for_leadership(10)
        with lock:
            mark = len(sent)
        while len(sent) < mark + 5 and time.monotonic() < deadline:
            stop.wait(0.05)
    finally:
        for event in stops:
            event.set()
        for t in threads:
            t.join(10)
    assert len(before) >= 5
    assert set(before) == {"a"}
    assert set(sent[mark:]) == {"b"}
    assert "b" in due_before  # b's beat kept its schedule going while it did not send
