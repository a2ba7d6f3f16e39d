"""Celery beat on every replica; only the beat whose group leads sends the due tasks.

    pip install -e '.[examples]' celery                 # from a checkout of notifelect
    python -m notifelect install                        # once per database
    export DATABASE_URL=postgresql://user@localhost/app
    celery -A celery_beat beat -S celery_beat:LeaderScheduler   # on every replica

Celery's extension point for this is the scheduler class (``celery beat -S``). Every beat
keeps its schedule and advances it at each due time; the one whose group leads also sends.
So a beat that takes over sends what is due from then on, not what the old leader already
sent, and its own store is as current as the leader's was.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery  # type: ignore[import-untyped]
from celery.beat import PersistentScheduler, ScheduleEntry  # type: ignore[import-untyped]
from celery.schedules import crontab  # type: ignore[import-untyped]

from notifelect.sync import SyncElectionGroup

log = logging.getLogger(__name__)


def leader_scheduler(group: SyncElectionGroup) -> type[PersistentScheduler]:
    """A beat scheduler class that starts ``group`` with the beat and sends due tasks only
    while it leads. A send in progress counts as leader work: a hand-over waits for it."""

    class LeaderScheduler(PersistentScheduler):  # type: ignore[misc]
        def setup_schedule(self) -> None:
            super().setup_schedule()
            if not group.is_open:
                group.start()

        def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
            if send(self, entry, producer) is None:
                log.debug("beat: %s is due; another replica's beat sends it", entry.name)

        def close(self) -> None:
            super().close()
            group.close()

    @group.leader_only
    def send(scheduler: LeaderScheduler, entry: ScheduleEntry, producer: Any) -> bool:
        PersistentScheduler.apply_entry(scheduler, entry, producer)
        return True

    return LeaderScheduler


app = Celery("celery_beat", broker=os.environ.get("CELERY_BROKER_URL", "memory://"))
app.conf.beat_schedule = {
    "nightly-report": {"task": "reports.nightly", "schedule": crontab(hour="4", minute="0")},
}
group = SyncElectionGroup(os.environ.get("DATABASE_URL", "postgresql://"), name="celery-beat")
LeaderScheduler = leader_scheduler(group)
