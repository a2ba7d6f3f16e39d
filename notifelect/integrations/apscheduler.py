"""APScheduler 3 whose jobs run on the group's leader only (the ``apscheduler`` extra).

::

    scheduler = AsyncIOScheduler()
    scheduler.add_job(send_report, "interval", minutes=5, id="send_report")
    leading = LeaderScheduler(group, scheduler)      # before entering the group

    async with group, leading:
        ...

Every replica configures the same scheduler; :class:`LeaderScheduler` starts it *paused*
and resumes it only while this node leads (an ``on_elected`` callback), so a follower's
scheduler neither wakes, runs nor logs anything per tick. APScheduler's own extension
points do the rest:

* each run is recorded in the group's job tables (``notifelect_job_run``, job name
  ``apscheduler:<job id>``) from the scheduler's events: submitted, executed, failed or
  missed;
* a new leader first moves each job's next run time to the trigger's next time after the
  last *recorded* scheduled run (its own scheduler kept a stale one while paused), then
  resumes: a time the hand-over or failover made it miss is handled by the job's
  ``misfire_grace_time`` and ``coalesce`` as for any misfire, and a hand-over adds no run;
* when the leadership ends the scheduler is paused again, and the leadership's end waits
  (within ``Settings.callback_timeout``) for the runs already submitted to finish, so the
  next leader starts after them; it also waits for a run that the previous leader left
  without an end while that leader's session lives.

Jobs that must run on every replica belong to a second scheduler that is not bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from .._clock import now
from ..errors import ConfigurationError, NotLeaderError, StaleLeaderError
from ..job_store import FOREIGN_PREFIXES

try:
    from apscheduler.events import (  # type: ignore[import-untyped]
        EVENT_JOB_ERROR,
        EVENT_JOB_EXECUTED,
        EVENT_JOB_MISSED,
        EVENT_JOB_SUBMITTED,
    )
    from apscheduler.schedulers.base import (  # type: ignore[import-untyped]
        STATE_STOPPED,
        BaseScheduler,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "notifelect.integrations.apscheduler needs APScheduler 3: pip install "
        "'notifelect[apscheduler]'"
    ) from exc

if TYPE_CHECKING:
    from ..group import ElectionGroup
    from ..job_store import JobStore, RunRecord
    from ..leadership import Leadership

__all__ = ["JOB_PREFIX", "LeaderScheduler"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The prefix of an APScheduler job's name in the job tables.
JOB_PREFIX = FOREIGN_PREFIXES[0]
_EVENTS = EVENT_JOB_SUBMITTED | EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED
_KEEP = 1000


class LeaderScheduler:
    """Run an APScheduler 3 scheduler only while ``group``'s node leads.

    Create it before entering the group (it registers the group's ``on_elected``
    callback). ``async with leading:`` (after ``async with group``) starts the scheduler
    paused and returns at once. Leaving it pauses the scheduler (no new run starts),
    waits for the runs in flight to finish, for at most ``Settings.finish_timeout``, so
    that the last runs finish under the leadership they started in, then shuts the
    scheduler down: when the bound passed, coroutine jobs (``AsyncIOExecutor``) are
    cancelled, while jobs in a thread or process pool cannot be interrupted and run on,
    outside any leadership. Works with any APScheduler 3 scheduler; for a thread-based one
    (``BackgroundScheduler``) enter it from the event loop that runs the group. ``group``
    is the asyncio :class:`~notifelect.ElectionGroup`: a ``SyncElectionGroup`` is refused
    with a ConfigurationError (gate the jobs with ``@group.leader_only`` there).
    """

    def __init__(self, group: ElectionGroup, scheduler: BaseScheduler) -> None:
        from ..sync import SyncElectionGroup

        given: object = group  # a caller without a type checker may hand a sync group
        if isinstance(given, SyncElectionGroup):
            raise ConfigurationError(
                f"LeaderScheduler binds a scheduler to an asyncio ElectionGroup (entered with "
                f"'async with'), got the SyncElectionGroup {given.name!r}; in threaded code "
                "gate the scheduler's jobs with @group.leader_only (as "
                "examples/flask_gunicorn does), or schedule them with @group.every or "
                "@group.cron, which keep their schedule in the database"
            )
        if not isinstance(scheduler, BaseScheduler):
            raise ConfigurationError(
                f"LeaderScheduler needs an APScheduler 3 scheduler, got {scheduler!r}"
            )
        self.group = group
        self.scheduler = scheduler
        self._started = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._leadership: Leadership | None = None
        #: Runs submitted and not ended yet: (job id, scheduled time) -> its claim (None
        #: when no leadership could record it).
        self._in_flight: dict[tuple[str, datetime], asyncio.Future[RunRecord | None] | None] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._recording: set[asyncio.Task[Any]] = set()
        group.on_elected(self._lead, resign_on_error=False)

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> LeaderScheduler:
        self._loop = asyncio.get_running_loop()
        if self.scheduler.state == STATE_STOPPED:
            self.scheduler.add_listener(self._on_event, _EVENTS)
            self.scheduler.start(paused=True)
        self._started.set()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._started.clear()
        if self.scheduler.state != STATE_STOPPED:
            # Let the last runs finish under this leadership: nothing new is submitted,
            # the runs in flight may end within finish_timeout; only then is the scheduler
            # shut down (an asyncio executor cancels what is still running then).
            self.scheduler.pause()
            bound = self.group.settings.finish_timeout
            if not self._idle.is_set():
                try:
                    await asyncio.wait_for(self._idle.wait(), bound)
                except TimeoutError:
                    log.warning(
                        "APScheduler jobs %s of group %r still running %.1fs after the "
                        "scheduler was closed (finish_timeout): shutting it down; coroutine "
                        "jobs are cancelled, jobs in threads or processes cannot be "
                        "interrupted and run on",
                        ", ".join(sorted({job for job, _ in self._in_flight})),
                        self.group.name,
                        bound,
                        extra={
                            "notifelect_event": "job_waiting",
                            "notifelect_namespace": self.group.name,
                            "notifelect_node": self.group.node,
                        },
                    )
            self.scheduler.shutdown(wait=False)
            if not self._idle.is_set():
                # A cancelled coroutine job ends within a few loop turns: record its end.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), self.group.settings.io_timeout)
        if self._recording:
            await asyncio.wait(list(self._recording), timeout=self.group.settings.io_timeout)

    # ------------------------------------------------------------ leading

    def _store(self) -> JobStore:
        return self.group._job_store()

    async def _lead(self, ls: Leadership) -> None:
        """While ``ls`` leads: realign the jobs on the recorded schedule, resume; on the
        end, pause and wait for the runs in flight."""
        await self._started.wait()
        try:
            while True:
                try:
                    await self._realign(ls)
                    break
                except Exception as exc:
                    # The jobs stay paused until their schedule is read: a database that
                    # refuses now (a lock, a timeout) is asked again, as the group's own
                    # jobs do, never given up on for the whole term.
                    log.warning(
                        "could not read the recorded schedule of the APScheduler jobs of"
                        " group %r: %r; retrying",
                        ls.namespace,
                        exc,
                        extra=_extra("job_store_failed", ls),
                    )
                    await asyncio.sleep(self.group.settings.election_interval)
            self._leadership = ls
            self.scheduler.resume()
            await asyncio.Future()  # until the leadership ends (cancelled)
        finally:
            self._leadership = None
            if self.scheduler.state != STATE_STOPPED:
                self.scheduler.pause()
            if not self._idle.is_set():
                # Bounded below the group's own wait, so that it never has to give up.
                bound = 0.9 * self.group.settings.callback_timeout
                try:
                    await asyncio.wait_for(self._idle.wait(), bound)
                except TimeoutError:
                    log.warning(
                        "APScheduler jobs of group %r still running %.1fs after the "
                        "leadership ended; the next leader may start before they finish",
                        ls.namespace,
                        bound,
                        extra=_extra("job_waiting", ls),
                    )

    async def _realign(self, ls: Leadership) -> None:
        """Move each job's next run time to the trigger's next time after its last
        recorded scheduled run (waiting for a run the previous leader left unfinished)."""
        store = self._store()
        settings = self.group.settings
        for job in list(self.scheduler.get_jobs()):
            name = JOB_PREFIX + job.id
            since = now()
            while True:
                state = await store.state(ls.namespace, name, str(job.trigger), lambda t: t)
                last = state.last
                unfinished = last is not None and last.ended_at is None and last.term != ls.term
                if not unfinished or last is None:
                    break
                bound = settings.finish_timeout + settings.callback_timeout
                if now() - since < bound and await store.holder_alive(last):
                    await asyncio.sleep(settings.election_interval)
                    continue
                await store.abandon(ls, last)
                break
            if last is None or job.next_run_time is None:
                continue  # never ran in this group, or paused by its owner
            after = last.scheduled_at.astimezone(job.next_run_time.tzinfo or UTC)
            following = job.trigger.get_next_fire_time(after, datetime.now(UTC))
            if following is None:
                # Its trigger has no time after the last recorded run (a date job that
                # already ran on another leader): it is done for the group.
                job.remove()
            else:
                job.modify(next_run_time=following)

    # ------------------------------------------------------------ recording the runs

    def _on_event(self, event: Any) -> None:
        """A scheduler event, in whatever thread the scheduler dispatches it."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:  # AsyncIOScheduler: record a submission before anything else runs
            self._record(event)
        else:
            loop.call_soon_threadsafe(self._record, event)

    def _record(self, event: Any) -> None:
        ls = self._leadership
        if event.code == EVENT_JOB_SUBMITTED:
            for scheduled in event.scheduled_run_times:
                claim: asyncio.Future[RunRecord | None] | None = None
                if ls is not None:
                    claim = self._spawn(self._claim(ls, event.job_id, scheduled))
                self._in_flight[event.job_id, scheduled] = claim
            self._idle.clear()
            return
        key = (event.job_id, event.scheduled_run_time)
        ended = self._in_flight.pop(key, None)
        if not self._in_flight:
            self._idle.set()
        if ended is None:
            return
        if event.code == EVENT_JOB_EXECUTED:
            outcome, error = "succeeded", None
        elif event.code == EVENT_JOB_MISSED:
            outcome, error = "missed", None
        else:
            outcome, error = "failed", repr(event.exception)[:1000]
        self._spawn(self._finish(ended, outcome, error))

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)
        return task

    async def _claim(self, ls: Leadership, job_id: str, scheduled: datetime) -> RunRecord | None:
        job = self.scheduler.get_job(job_id)
        following = None
        if job is not None:
            following = job.trigger.get_next_fire_time(scheduled, datetime.now(UTC))
        try:
            return await self._store().claim(
                ls, JOB_PREFIX + job_id, scheduled, following or scheduled
            )
        except (NotLeaderError, StaleLeaderError):
            return None
        except Exception as exc:
            _failed(ls, job_id, exc)
            return None

    async def _finish(
        self, claim: asyncio.Future[RunRecord | None], outcome: str, error: str | None
    ) -> None:
        run = await claim
        if run is None:
            return
        try:
            await self._store().finish(run, outcome, error, _KEEP)
        except Exception as exc:
            log.warning(
                "could not record the end of APScheduler job %s: %r",
                run.job,
                exc,
                extra={"notifelect_event": "job_store_failed", "notifelect_job": run.job},
            )


def _extra(event: str, ls: Leadership) -> dict[str, object]:
    return {
        "notifelect_event": event,
        "notifelect_namespace": ls.namespace,
        "notifelect_node": ls.node,
        "notifelect_term": ls.term,
    }


def _failed(ls: Leadership, job_id: str, exc: BaseException) -> None:
    log.warning(
        "could not record a run of APScheduler job %s of group %r: %r",
        job_id,
        ls.namespace,
        exc,
        extra={**_extra("job_store_failed", ls), "notifelect_job": JOB_PREFIX + job_id},
    )
