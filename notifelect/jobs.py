"""Scheduled jobs that belong to the group: ``@group.every(interval)`` and ``@group.cron(...)``.

(Longer than most modules: one job's loop, the checks of its arguments, its warnings and
the record of each run read best next to each other; the pure planning is in
:mod:`notifelect.schedule` and the I/O in :mod:`notifelect.job_store`.)

The schedule lives in the database (:mod:`notifelect.job_store`), not in whichever node
leads. While a node leads, its loop for each job reads the job's last run, plans the next
one with the pure rules of :mod:`notifelect.schedule` on the database's clock, waits for
it, claims it (a run record written in a transaction fenced by the leadership's term) and
runs the job. A new leader continues where the schedule stands: the next run is due at the
previous run's scheduled time plus the interval, never earlier, so a hand-over or a
failover neither adds a run nor shifts the cadence.

A run never starts while the previous run of the same job is still in progress anywhere:

* on this node, runs follow each other;
* a run in progress when its node hands over (``async with group`` left, a deploy) may
  finish, for at most ``Settings.finish_timeout``, while the node keeps its lease, and the
  successor is elected only after it (``leader_only(finish_on_loss=True)``'s rule); when
  the leadership is *lost* (connection, lease) the run is cancelled like all leader work;
  a run counts from its claim: a claim still on its way when either begins ends the same;
* a new leader that finds the last run without an end waits while the process that runs
  it still has a session (for at most ``finish_timeout + callback_timeout``), then records
  the run as ``abandoned`` and goes on. A process whose session was lost while its run goes
  on (a ``def`` job's thread) names its next session on the run's record, and the new
  leader gives a holder that vanished a lease to do so.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ._clock import now
from ._gate import GateHost, admit, require_host, run_tracked, seconds
from .errors import ConfigurationError, GroupStateError, NotLeaderError, StaleLeaderError
from .job_store import FOREIGN_PREFIXES
from .leadership import LeaderInfo, Leadership, _current
from .schedule import (
    Anchor,
    CatchUp,
    Cron,
    Interval,
    Schedule,
    Trigger,
    catch_up_policy,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from .job_store import JobStore, RunRecord
    from .settings import Settings

__all__ = ["JobRun", "Periodic", "cron", "current_run", "every", "scheduled_jobs"]

log = logging.getLogger(__name__)

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

#: How many runs of each job the database keeps by default (older ones are deleted).
KEEP_RUNS = 1000

_SECOND = timedelta(seconds=1)
#: The longest duration an argument may give, in seconds (about a thousand years: within
#: what a timedelta added to a date can hold).
_LONGEST = 1000 * 365 * 86_400.0

#: Ends of runs being recorded in the background (retried until the database takes them).
_SETTLING: set[asyncio.Task[None]] = set()

_current_run: contextvars.ContextVar[JobRun | None] = contextvars.ContextVar(
    "notifelect_job_run", default=None
)


def current_run() -> JobRun | None:
    """The scheduled run the calling code belongs to (inside a job started by its
    schedule), else None."""
    return _current_run.get()


class JobHost(GateHost, Protocol):
    """What scheduled jobs need from an election group besides the gates."""

    @property
    def settings(self) -> Settings: ...

    @property
    def leader(self) -> LeaderInfo | None: ...

    def _job_store(self) -> JobStore: ...


@dataclass(frozen=True)
class JobRun:
    """One run of a scheduled job, as the job sees it through :func:`current_run`.

    ``scheduled_at`` is the time of the schedule it stands for (aware, UTC); ``started_at``
    when it started, on the database's clock.
    """

    job: str
    leadership: Leadership
    record: RunRecord
    _store: JobStore
    _committed: list[bool] = field(default_factory=list, repr=False, compare=False)

    @property
    def committed(self) -> bool:
        """Whether :meth:`transaction` committed: the run is then recorded as succeeded,
        whatever the job does afterwards."""
        return bool(self._committed)

    @property
    def scheduled_at(self) -> datetime:
        return self.record.scheduled_at

    @property
    def started_at(self) -> datetime:
        return self.record.started_at

    @property
    def term(self) -> int:
        return self.record.term

    @property
    def lateness(self) -> float:
        """Seconds between the scheduled time and the start."""
        return self.record.lateness

    def transaction(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """The job's fenced transaction, which also records this run as succeeded.

        ``async with run.transaction() as conn:`` is ``leadership.transaction(engine)``
        (fenced by the term, bounded by the lease) on a connection made as the election's
        are (from the group's engine or DSN, without a pool), and its commit
        records the run's end with the outcome ``succeeded``: the job's writes and the
        record that the run happened commit together or not at all. Once it committed, the
        run *is* succeeded: should the job raise afterwards, the exception is logged
        (``job_raised_after_commit``) but the run stays succeeded, in the records, the
        counters and the metrics alike. Raises ConfigurationError for a group without a
        database (a MemoryBus).
        """
        return self._committing(self._store.transaction(self.leadership, self.record))

    @contextlib.asynccontextmanager
    async def _committing(
        self, transaction: contextlib.AbstractAsyncContextManager[AsyncConnection]
    ) -> AsyncIterator[AsyncConnection]:
        async with transaction as conn:
            yield conn
        self._committed.append(True)


_registered: weakref.WeakKeyDictionary[object, list[Periodic[Any]]] = weakref.WeakKeyDictionary()


def scheduled_jobs(group: object) -> list[Periodic[Any]]:
    """The scheduled jobs registered on ``group``, in the order they were."""
    return list(_registered.get(group, ()))


class Periodic(Generic[R_co]):
    """A job that runs on the leader on the group's schedule (``every`` or ``cron``).

    Calling it runs the job once, outside the schedule (nothing is recorded), gated and
    tracked exactly like a ``leader_only`` call: it returns None on a node that does not
    lead, sees :func:`current_leadership`, and is cancelled when the leadership ends.
    :meth:`history` reads the group's recorded runs.

    What this node ran of the schedule: ``runs`` (succeeded) and ``failures`` (raised),
    ``ended`` (every run whose end it recorded, cancelled ones included),
    ``duration_total`` and ``lateness_total`` (seconds, summed over ``ended``), and
    ``last`` (its last run's record).
    """

    def __init__(
        self,
        group: JobHost,
        job: Callable[[], Awaitable[R_co]],
        schedule: Schedule,
        name: str,
        keep: int,
    ) -> None:
        self.group = group
        self.job = job
        self.schedule = schedule
        self.name = name
        self.keep = keep
        trigger = schedule.trigger
        self.interval = trigger.seconds if isinstance(trigger, Interval) else None
        self.initial_delay = schedule.initial_delay.total_seconds()
        self.runs = 0
        self.failures = 0
        self.ended = 0
        self.duration_total = 0.0
        self.lateness_total = 0.0
        self.last: RunRecord | None = None
        #: The latest scheduled time this node claimed (or found claimed), and when it was,
        #: on the node's monotonic clock.
        self._own: tuple[datetime, float] | None = None
        self._behind_warned = False
        #: (scheduled time, term) of the runs whose end is being recorded in the background.
        self._unrecorded: set[tuple[datetime, int]] = set()
        self._rename_checked = False
        self._qualname = getattr(job, "__qualname__", repr(job))
        functools.update_wrapper(self, job)

    def __repr__(self) -> str:
        return f"<Periodic {self.name!r} {self.schedule.describe()} of group {self.group.name!r}>"

    async def __call__(self) -> R_co | None:
        ls = admit(self.group, self._qualname, False)
        if ls is None:
            return None
        return await run_tracked(self.group, ls, self._qualname, self.job(), False)

    async def history(self) -> list[RunRecord]:
        """The group's recorded runs of this job, oldest first (at most ``keep``)."""
        return await self.group._job_store().runs(self.group.name, self.name)

    def _extra(self, event: str, ls: Leadership, **fields: object) -> dict[str, object]:
        extra: dict[str, object] = {
            "notifelect_event": event,
            "notifelect_namespace": ls.namespace,
            "notifelect_node": ls.node,
            "notifelect_term": ls.term,
            "notifelect_job": self.name,
        }
        extra.update({f"notifelect_{k}": v for k, v in fields.items()})
        return extra

    # ------------------------------------------------------------ the leader's loop

    async def _loop(self, ls: Leadership) -> None:
        """Run the schedule while ``ls`` admits work (an ``on_elected`` task)."""
        settings = self.group.settings
        waiting: tuple[int, datetime] | None = None
        waiting_since = 0.0
        gone_since: float | None = None
        while ls.admits:
            try:
                store = self.group._job_store()
                state = await store.state(
                    ls.namespace, self.name, self.schedule.describe(), self.schedule.first_due
                )
                read_at = now()
                last = state.last
                if last is not None and last.ended_at is None and last.term != ls.term:
                    if waiting != (last.term, last.scheduled_at):
                        waiting, waiting_since = (last.term, last.scheduled_at), now()
                        gone_since = None
                        log.info(
                            "job %s of group %r: the run scheduled at %s (node %s, term %s) "
                            "has not ended; waiting for it",
                            self.name,
                            ls.namespace,
                            last.scheduled_at.isoformat(),
                            last.node,
                            last.term,
                            extra=self._extra("job_waiting", ls, other_term=last.term),
                        )
                    bound = settings.finish_timeout + settings.callback_timeout
                    if now() - waiting_since < bound:
                        if await store.holder_alive(last):
                            gone_since = None
                            await asyncio.sleep(settings.election_interval)
                            continue
                        # A process whose session was just lost names its next one on
                        # the run within an interval of having it: give it a lease.
                        gone_since = now() if gone_since is None else gone_since
                        if now() - gone_since < settings.lease:
                            await asyncio.sleep(settings.election_interval)
                            continue
                    await store.abandon(ls, last)
                    log.warning(
                        "job %s of group %r: recorded the run scheduled at %s (node %s, term "
                        "%s) as abandoned: %s",
                        self.name,
                        ls.namespace,
                        last.scheduled_at.isoformat(),
                        last.node,
                        last.term,
                        "its node's session is gone"
                        if now() - waiting_since < bound
                        else f"still unfinished after {bound:.1f}s",
                        extra=self._extra("job_abandoned", ls, other_term=last.term),
                    )
                    continue
                if (
                    last is not None
                    and last.ended_at is None
                    and last.term == ls.term
                    and (last.scheduled_at, last.term) not in self._unrecorded
                ):
                    # A run of this leadership, and none is in progress (runs follow each
                    # other): its claim committed but the answer was lost (the claim
                    # raised). Recorded now, or a next leader would wait for it.
                    await store.finish(last, "cancelled", "the claim's answer was lost", self.keep)
                    continue
                if last is None and not self._rename_checked:
                    self._rename_checked = True
                    await self._warn_if_renamed(ls, store)
                knew = self._own is not None
                anchor = self._anchor(last, state.now, read_at)
                if anchor.ahead is not None:
                    self._warn_clock_behind(ls, anchor, knew)
                else:
                    self._behind_warned = False
                plan = self.schedule.plan(anchor.scheduled_at, state.first_due, state.now)
                if plan.scheduled_at != state.next_due:
                    await store.set_next_due(ls.namespace, self.name, plan.scheduled_at)
                start = self.schedule.start_at(f"{ls.namespace}\0{self.name}", plan.scheduled_at)
                wait = (start - state.now).total_seconds()
                if wait > 0:
                    # Then read again: the plan is made on the database's clock.
                    await asyncio.sleep(wait)
                    continue
                if not _admits(ls):  # it may have changed while this task waited
                    return
                if plan.skipped:
                    log.info(
                        "job %s of group %r: skipping %d scheduled time(s) that passed without "
                        "a run (catch_up=%s); running the one of %s",
                        self.name,
                        ls.namespace,
                        plan.skipped,
                        _describe_catch_up(self.schedule),
                        plan.scheduled_at.isoformat(),
                        extra=self._extra("job_skipped", ls, skipped=plan.skipped),
                    )
                # This node goes on from that time, claimed by it or, already recorded,
                # by another: on a clock stepped back it is not the store's latest.
                own = (plan.scheduled_at, read_at - (state.now - plan.scheduled_at) / _SECOND)
                await self._execute(ls, plan.scheduled_at, own, store)
            except (NotLeaderError, StaleLeaderError):
                return  # the leadership ended: the next leader continues the schedule
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "job %s of group %r: could not read or record its schedule: %r; retrying",
                    self.name,
                    ls.namespace,
                    exc,
                    extra=self._extra("job_store_failed", ls, error=repr(exc)),
                )
                await asyncio.sleep(settings.election_interval)

    def _anchor(self, last: RunRecord | None, clock: datetime, read_at: float) -> Anchor:
        """Where to plan the next run from: the store's latest scheduled time, or this
        node's own when later (see :meth:`Schedule.anchor`). ``clock`` is the store's
        clock, read at ``read_at`` on the monotonic clock."""
        own, since = None, None
        if self._own is not None:
            own, at = self._own
            since = read_at - at
        anchor = self.schedule.anchor(
            None if last is None else last.scheduled_at, own, since, clock
        )
        if anchor.reanchored and anchor.scheduled_at is not None:
            # Followed from now on, until the store's clock passes its latest record.
            self._own = (anchor.scheduled_at, read_at - (clock - anchor.scheduled_at) / _SECOND)
        return anchor

    def _warn_clock_behind(self, ls: Leadership, anchor: Anchor, knew: bool) -> None:
        """Say once per step back that the store's clock reads before the schedule
        (``knew``: this node knew when its own last run was, by its monotonic clock)."""
        assert anchor.ahead is not None
        if self._behind_warned:
            return
        self._behind_warned = True
        ahead = anchor.ahead.total_seconds()
        if self.schedule.trigger.period() is None:
            done = (
                "a cron job's times are calendar times and each of them already ran: its "
                "next run is the expression's next time after the last recorded one"
            )
        elif anchor.reanchored and anchor.scheduled_at is not None:
            due = self.schedule.trigger.after(anchor.scheduled_at)
            done = (
                f"re-anchored its schedule on the clock's new reading: the next run is due "
                f"at {due.isoformat()}, "
                + (
                    "one interval after this node's last run by its monotonic clock"
                    if knew
                    else "one interval from now (this node did not run the last run)"
                )
                + ", or at once if that passed, per catch_up"
            )
        else:
            done = "going on from the schedule this node re-anchored on it"
        log.warning(
            "job %s of group %r: the database clock reads %.1fs before the last recorded "
            "scheduled time (the clock was stepped back); %s",
            self.name,
            ls.namespace,
            ahead,
            done,
            extra=self._extra("job_clock_behind", ls, ahead=ahead),
        )

    async def _warn_if_renamed(self, ls: Leadership, store: JobStore) -> None:
        """A job with no recorded run, beside recorded jobs no code here registers: say
        that a renamed job starts a new schedule (its ``name`` is its identity)."""
        try:
            recorded = await store.job_names(ls.namespace)
        except Exception:  # only a hint: never in the way of the schedule
            return
        known = {p.name for p in scheduled_jobs(self.group)}
        gone = [j for j in recorded if j not in known and not j.startswith(FOREIGN_PREFIXES)]
        if not gone:
            return
        log.warning(
            "job %s of group %r has no recorded run and starts a new schedule, while the "
            "group's records hold job(s) that no code of this node registers: %s. If you "
            "renamed a job (its default name is its module and qualified name), pass "
            "name=%r to keep its schedule",
            self.name,
            ls.namespace,
            ", ".join(repr(j) for j in gone),
            gone[0],
            extra=self._extra("job_renamed", ls, recorded=gone),
        )

    async def _execute(
        self, ls: Leadership, scheduled_at: datetime, own: tuple[datetime, float], store: JobStore
    ) -> None:
        """Claim the run of ``scheduled_at`` and run the job, as leader work that may finish
        during a hand-over: the loop waits for it, and if the loop is cancelled (the
        hand-over began) the claim and the run go on as tracked work."""
        task = asyncio.ensure_future(self._claim_and_run(ls, scheduled_at, own, store))
        self.group._track_call(task, False)
        await asyncio.shield(task)

    async def _claim_and_run(
        self, ls: Leadership, scheduled_at: datetime, own: tuple[datetime, float], store: JobStore
    ) -> None:
        """A claim commits before its answer arrives: when this task is stopped while the
        claim is in flight (the leadership was lost), the claim is waited for and a run it
        recorded gets its end, or the next leader would wait for a run nothing runs."""
        after = self.schedule.trigger.after(scheduled_at)
        claiming = asyncio.ensure_future(store.claim(ls, self.name, scheduled_at, after))
        why = "the leadership ended as it was claimed"
        try:
            run = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            try:
                claimed = await claiming
            except Exception:
                # The claim's connection was dropped as the leadership ended, perhaps with
                # its COMMIT on the server: whether it committed is not known.
                self._settle(ls, self._unsure(ls, scheduled_at), store, "cancelled", why, True)
            else:
                if claimed is not None:
                    await self._record_end(ls, claimed, store, "cancelled", why)
            raise
        except (NotLeaderError, StaleLeaderError):
            # The leadership ended during the claim (a lease-bounded transaction drops its
            # connection then, its COMMIT perhaps on the server): the loop ends, and a
            # claim that committed is recorded cancelled here, not left to the next leader.
            self._settle(ls, self._unsure(ls, scheduled_at), store, "cancelled", why, True)
            raise
        self._own = own
        if run is not None:
            await self._run(ls, run, store)

    async def _record_end(
        self, ls: Leadership, run: RunRecord, store: JobStore, outcome: str, error: str | None
    ) -> None:
        try:
            await store.finish(run, outcome, error, self.keep)
        except Exception as exc:
            log.warning(
                "job %s of group %r: could not record the end of the run scheduled at %s (%s): "
                "%r; retrying",
                self.name,
                ls.namespace,
                run.scheduled_at.isoformat(),
                outcome,
                exc,
                extra=self._extra("job_store_failed", ls, error=repr(exc)),
            )
            # Left without an end, the run would hold up the next leader (this process is
            # still a member) for finish_timeout + callback_timeout.
            self._settle(ls, run, store, outcome, error, False)

    def _unsure(self, ls: Leadership, scheduled_at: datetime) -> RunRecord:
        """The record a claim of ``scheduled_at`` under ``ls`` wrote if it committed (its
        end is recorded by the key and the term alone)."""
        from .job_store import RunRecord

        return RunRecord(ls.namespace, self.name, scheduled_at, scheduled_at, ls.node or 0, ls.term)

    def _settle(
        self,
        ls: Leadership,
        run: RunRecord,
        store: JobStore,
        outcome: str,
        error: str | None,
        unsure: bool,
    ) -> None:
        """Record the end of ``run`` in the background, retried every interval for at most
        ``finish_timeout + callback_timeout`` (how long a next leader waits for it) and
        while the group is open (once its session has ended, a next leader waits a lease
        at most). ``unsure``: a claim whose outcome is not known; it settles once a newer
        term is known, whose take-over ended every transaction of the old term."""
        self._unrecorded.add((run.scheduled_at, run.term))
        task = asyncio.ensure_future(self._settling(ls, run, store, outcome, error, unsure))
        _SETTLING.add(task)
        task.add_done_callback(_SETTLING.discard)

    async def _settling(
        self,
        ls: Leadership,
        run: RunRecord,
        store: JobStore,
        outcome: str,
        error: str | None,
        unsure: bool,
    ) -> None:
        settings = self.group.settings
        deadline = now() + settings.finish_timeout + settings.callback_timeout
        try:
            while True:
                await asyncio.sleep(settings.election_interval)
                try:
                    self.group._require_open("recording the end of a run")
                except GroupStateError:
                    return
                fenced = _newer_term(self.group, ls)
                try:
                    if await store.finish(run, outcome, error, self.keep) or not unsure or fenced:
                        return
                except Exception as exc:
                    log.debug("job %s: could not record the end of a run: %r", self.name, exc)
                if now() >= deadline:
                    if not unsure:
                        log.warning(
                            "job %s of group %r: gave up recording the end of the run "
                            "scheduled at %s (%s)",
                            self.name,
                            ls.namespace,
                            run.scheduled_at.isoformat(),
                            outcome,
                            extra=self._extra("job_store_failed", ls, error="gave up"),
                        )
                    return
        finally:
            self._unrecorded.discard((run.scheduled_at, run.term))

    async def _hold(self, run: RunRecord, store: JobStore) -> None:
        """While the run goes on, keep its record naming this process's current session:
        after a lost session the group comes back under a new node id while the run (a
        ``def`` job's thread cannot be stopped) may still be running, and the next leader
        must wait for it rather than find its node gone and start the next run beside
        it."""
        node = run.node
        while True:
            await asyncio.sleep(self.group.settings.election_interval)
            current = self.group.node
            if current is None or current == node:
                continue
            try:
                if not await store.relink(run, current):
                    return  # ended, or abandoned by a later leader
            except Exception as exc:  # only a hint to the next leader: retried
                log.debug("job %s: could not name its new session on its run: %r", self.name, exc)
                continue
            node = current

    async def _run(self, ls: Leadership, run: RunRecord, store: JobStore) -> None:
        _current.set(ls)
        job_run = JobRun(self.name, ls, run, store)
        _current_run.set(job_run)
        outcome, error = "succeeded", None
        began = now()
        holder = asyncio.ensure_future(self._hold(run, store))
        try:
            await self.job()
            self.runs += 1
        except asyncio.CancelledError:
            # A run whose transaction committed is recorded as succeeded with its writes:
            # the record wins, and the counters say the same.
            if job_run.committed:
                self.runs += 1
            else:
                outcome = "cancelled"
            raise
        except Exception as exc:
            if job_run.committed:
                self.runs += 1
                log.warning(
                    "job %s of group %r raised after its run.transaction() committed (run "
                    "scheduled at %s, term %s): the run stays recorded as succeeded, as its "
                    "writes committed with that record: %r",
                    self.name,
                    ls.namespace,
                    run.scheduled_at.isoformat(),
                    ls.term,
                    exc,
                    exc_info=True,
                    extra=self._extra("job_raised_after_commit", ls, error=repr(exc)[:1000]),
                )
            else:
                self.failures += 1
                outcome, error = "failed", repr(exc)[:1000]
                log.exception(
                    "job %s of group %r failed (run scheduled at %s, term %s)",
                    self.name,
                    ls.namespace,
                    run.scheduled_at.isoformat(),
                    ls.term,
                    extra=self._extra("job_failed", ls, error=error),
                )
        finally:
            holder.cancel()
            duration = now() - began
            self.ended += 1
            self.duration_total += duration
            self.lateness_total += max(0.0, run.lateness)
            await self._record_end(ls, run, store, outcome, error)
            self.last = run
            log.debug(
                "job %s of group %r: run scheduled at %s %s in %.3fs, started %.3fs late",
                self.name,
                ls.namespace,
                run.scheduled_at.isoformat(),
                outcome,
                duration,
                run.lateness,
                extra=self._extra("job_ran", ls, outcome=outcome, duration=duration),
            )


def _duration(what: str, argument: str, value: timedelta | float) -> timedelta:
    """``value`` (a timedelta or seconds) as a timedelta; ConfigurationError if it is not
    a finite duration a timedelta can hold."""
    try:
        found = seconds(value, argument)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{what}() {exc}") from None
    if not math.isfinite(found) or abs(found) >= _LONGEST:
        raise ConfigurationError(
            f"{what}() {argument} must be a finite duration (under {_LONGEST:g}s), got {value!r}"
        )
    return value if isinstance(value, timedelta) else timedelta(seconds=found)


def _admits(ls: Leadership) -> bool:
    return ls.admits


def _newer_term(group: JobHost, ls: Leadership) -> bool:
    """Whether this node knows of a term newer than ``ls``'s (its take-over ended the
    transactions that held the old term's guard)."""
    leader = group.leader
    return leader is not None and leader.term > ls.term


def _describe_catch_up(schedule: Schedule) -> str:
    policy = schedule.catch_up
    return policy.value if isinstance(policy, CatchUp) else f"{policy.total_seconds():g}s"


def _register(
    group: GateHost,
    what: str,
    trigger: Trigger,
    *,
    initial_delay: timedelta | float,
    run_on_start: bool,
    catch_up: CatchUp | str | timedelta | float,
    jitter: timedelta | float,
    name: str | None,
    keep: int,
) -> Callable[[Callable[[], Awaitable[R]]], Periodic[R]]:
    delay = _duration(what, "initial_delay", initial_delay)
    if delay < timedelta(0):
        raise ConfigurationError(f"{what}() initial_delay must be >= 0, got {initial_delay!r}")
    spread = _duration(what, "jitter", jitter)
    if spread < timedelta(0):
        raise ConfigurationError(f"{what}() jitter must be >= 0, got {jitter!r}")
    if spread:
        # A start delayed by a whole gap or more would pass the next scheduled time: the
        # plan would then skip to that one, delay it again, and never run.
        gap = trigger.shortest_gap(datetime.now(UTC))
        if spread >= gap:
            shape = (
                "the interval"
                if trigger.period() is not None
                else ("the shortest gap between two times of the cron expression")
            )
            raise ConfigurationError(
                f"{what}() jitter must be less than {shape} ({gap.total_seconds():g}s), got "
                f"{spread.total_seconds():g}s: each start is delayed by up to the jitter, "
                "and a start must come before the next scheduled time"
            )
    if not isinstance(run_on_start, bool):
        raise ConfigurationError(
            f"{what}() run_on_start must be True or False, got {run_on_start!r}"
        )
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigurationError(f"{what}() keep must be an int >= 1, got {keep!r}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigurationError(f"{what}() name must be a non-empty string, got {name!r}")
    try:
        policy = catch_up_policy(catch_up)
        if isinstance(policy, timedelta):
            policy = _duration(what, "catch_up", policy)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{what}() {exc}") from None
    schedule = Schedule(trigger, policy, spread, delay, run_on_start)
    host: JobHost = group  # type: ignore[assignment]
    host._job_store()  # a group that cannot keep a schedule says so now

    def decorate(job: Callable[[], Awaitable[R]]) -> Periodic[R]:
        if not callable(job):
            raise ConfigurationError(f"{what}() job is not callable: {job!r}")
        job_name = name or f"{job.__module__}.{getattr(job, '__qualname__', repr(job))}"
        taken = _registered.setdefault(group, [])
        if any(p.name == job_name for p in taken):
            raise ConfigurationError(
                f"group {group.name!r} already has a scheduled job named {job_name!r}: the "
                "name identifies the job's schedule in the database; give one of them "
                f"{what}(..., name='...')"
            )
        periodic = Periodic(host, job, schedule, job_name, keep)
        taken.append(periodic)

        async def loop(ls: Leadership) -> None:
            _current.set(ls)
            await periodic._loop(ls)

        group._add_elected(loop, False)
        return periodic

    return decorate


def every(
    group: GateHost,
    interval: timedelta | float,
    *,
    initial_delay: timedelta | float = 0.0,
    run_on_start: bool = True,
    catch_up: CatchUp | str | timedelta | float = CatchUp.LATEST,
    jitter: timedelta | float = 0.0,
    name: str | None = None,
    keep: int = KEEP_RUNS,
) -> Callable[[Callable[[], Awaitable[R]]], Periodic[R]]:
    """Run ``async def job()`` on the leader every ``interval``, on the group's schedule.

    The schedule is kept in the database: each run is recorded (scheduled time, start,
    end, node, term, outcome), and whichever node leads runs the next one at the previous
    run's *scheduled* time plus ``interval``, never earlier; a hand-over or failover
    neither adds a run nor shifts the cadence, and runs never overlap (see
    :mod:`notifelect.jobs`). A job the group never ran first runs ``initial_delay`` after
    a leader first sees it (``run_on_start=False``: one interval later still).

    ``catch_up`` says what happens to scheduled times that passed without a run:
    ``"latest"`` runs once for the latest of them, ``"each"`` runs each, a window
    (``timedelta``) runs those no older than it. ``jitter`` delays each start by up to that
    much (the same on every node for a given run). ``name`` identifies the job in the
    database (default: the function's module and qualified name); ``keep`` is how many runs
    the database keeps. Exceptions are logged and recorded; the schedule goes on.
    """
    require_host(group, "every")
    step = _duration("every", "interval", interval)
    if step <= timedelta(0):
        raise ConfigurationError(f"every() interval must be > 0, got {interval!r}")
    return _register(
        group,
        "every",
        Interval(step.total_seconds()),
        initial_delay=initial_delay,
        run_on_start=run_on_start,
        catch_up=catch_up,
        jitter=jitter,
        name=name,
        keep=keep,
    )


def cron(
    group: GateHost,
    expression: str,
    *,
    tz: str = "UTC",
    initial_delay: timedelta | float = 0.0,
    run_on_start: bool = False,
    catch_up: CatchUp | str | timedelta | float = CatchUp.LATEST,
    jitter: timedelta | float = 0.0,
    name: str | None = None,
    keep: int = KEEP_RUNS,
) -> Callable[[Callable[[], Awaitable[R]]], Periodic[R]]:
    """Run ``async def job()`` on the leader at the times of a cron ``expression``
    (``"*/5 * * * *"``: minute, hour, day of month, month, day of week) in the time zone
    ``tz`` (an IANA name), on the group's schedule.

    Needs the ``cron`` extra (``pip install 'notifelect[cron]'``). Everything else is as
    for :func:`every`; by default a job the group never ran first runs at the expression's
    first time (``run_on_start=True``: at once).
    """
    require_host(group, "cron")
    if not isinstance(expression, str):
        raise ConfigurationError(f"cron() expression must be a string, got {expression!r}")
    if not isinstance(tz, str) or not tz:
        raise ConfigurationError(
            f"cron() tz must be an IANA time zone name such as 'Europe/Oslo', got {tz!r}"
        )
    return _register(
        group,
        "cron",
        Cron(expression, tz),
        initial_delay=initial_delay,
        run_on_start=run_on_start,
        catch_up=catch_up,
        jitter=jitter,
        name=name,
        keep=keep,
    )


def job_store_for(engine: Any, transport: Any, settings: Settings) -> JobStore:
    """The store of a group's jobs: in its database, or on its MemoryBus."""
    from .job_store import MemoryJobStore, PostgresJobStore, memory_store
    from .transport.memory import MemoryTransport

    if isinstance(transport, MemoryTransport):
        return memory_store(transport.bus)
    if engine is None:
        return MemoryJobStore()
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from .transport.connect import connector_for

    # The records go through connections made as the election's are: one host of a
    # multi-host URL at a time, each within its own budget, to a server that takes writes,
    # so a database failover with a silent old primary reaches the jobs too (an engine's
    # own pool would spend its whole connect timeout on the silent host). No pool: each
    # short transaction connects to the host that accepted last.
    connect, borrowed = connector_for(
        engine,
        host_timeout=settings.host_timeout,
        lone_host_timeout=settings.lone_host_timeout,
    )
    if connect is None or borrowed is not None:
        raise ConfigurationError(
            f"scheduled jobs of group {settings.namespace!r} keep their schedule in the "
            f"database and need connections of their own; the group was given a "
            f"{type(engine).__name__}: create it with an engine or a DSN"
        )
    engine = create_async_engine("postgresql+asyncpg://", async_creator=connect, poolclass=NullPool)
    return PostgresJobStore(engine, settings.names, settings.io_timeout)
