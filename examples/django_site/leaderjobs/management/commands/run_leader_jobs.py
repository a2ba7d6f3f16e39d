"""``python manage.py run_leader_jobs``: run on every replica; the leader runs the jobs.

    python manage.py run_leader_jobs --every 60 [--records FILE]

Blocks until SIGTERM or Ctrl-C, then resigns: another replica takes over at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from leaderjobs.election import group
from notifelect import current_leadership


class Command(BaseCommand):
    help = "Take part in the election; run the periodic jobs while this replica leads."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--every", type=float, default=60.0, help="seconds between runs")
        parser.add_argument("--records", help="a file each run appends a line to")

    def handle(self, *args: Any, every: float, records: str | None, **options: Any) -> None:
        @group.every(every)
        def send_digest() -> None:
            leadership = current_leadership()
            assert leadership is not None
            line = f"{os.getpid()} {leadership.term} {time.time():.3f}"
            self.stdout.write(f"digest sent: {line}")
            if records:
                with open(records, "a") as out:
                    out.write(line + "\n")

        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        with group:
            self.stdout.write(f"joined as node {group.node}")
            self.stdout.flush()
            stop.wait()
