"""One election node as a real process, for the fault-injection suite.

Run as ``python -m tests.faults.node --dsn ... --namespace ...`` from the repository root.
It joins the group through a SQLAlchemy AsyncEngine, and while it leads it runs a periodic
leader-only job: each execution opens a transaction, passes the fencing guard, records its
(start, end) on the wall clock and inserts them into the audit table, so an execution is
recorded only if it committed under a current term. It reports on stdout, one JSON object
per line, everything the tests wait on or check:

``ready`` (node id), ``elected`` / ``span_end`` (start and end of its ``on_elected`` work),
``act`` (a leader-only action: every ``--act-period`` while it leads, and throughout the
optional long calls below, the node records the time ``at`` it acted, taken just before it
checked that its leadership is valid), ``call_start`` / ``call_end`` (a long leader-only
call), ``deposed``, ``exec`` (a committed execution), ``refused`` (the guard said no: ``lease``
= the local lease check, ``stale`` = the database term moved on), ``error`` (the job's
database work failed), ``probe`` (a write attempted with a lost leadership's term, see
below), ``left`` (every group closed, after SIGTERM) and ``exit``.

After losing leadership other than by its own exit, the node keeps trying to write with
its old term through the database half of the guard alone (as a leader whose local lease
check was wrong would), until the database refuses. Any such write that commits is in the
audit table too (kind ``probe``), so the checker proves it never overlapped another term.

SIGTERM makes the node leave the group cleanly (resign and hand over) and exit 0.

``--every S`` adds a job on the group's schedule (``@group.every(S)``, default policies,
named ``ticks``): each run writes an audit row of kind ``tick`` in the run's own fenced
transaction (``current_run().transaction()``), which also records the run as succeeded,
and reports ``tick`` (term and scheduled time).

``--finish-call S`` keeps a ``leader_only(finish_on_loss=True)`` coroutine call running
for S seconds whenever the node leads; ``--thread-call S`` does the same with a plain
``def`` call in a worker thread. ``--suspend-file F`` simulates a suspended host: on
SIGCONT the node reads a number of seconds from F and from then on ``time.monotonic()``
lags by that much, as it does after a real suspend.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.connect_utils import SessionAttribute
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from notifelect import (
    ElectionGroup,
    GroupStateError,
    Leadership,
    NotLeaderError,
    RetryPolicy,
    Settings,
    StaleLeaderError,
    current_leadership,
    current_run,
)
from notifelect.fencing import check_term
from notifelect.transport.hosts import Address, HostOrder, split_dsn, target_of
from tests.support.servers import sqlalchemy_url

AUDIT_TABLE = "fault_audit"
AUDIT_DDL = (
    f"CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} ("
    " id bigserial PRIMARY KEY, namespace text NOT NULL, node bigint NOT NULL,"
    " pid integer NOT NULL, term bigint NOT NULL, kind text NOT NULL,"
    " started double precision NOT NULL, ended double precision NOT NULL,"
    " db_at timestamptz NOT NULL DEFAULT clock_timestamp())"
)
#: The name of the job that ``--every`` adds.
TICKS = "ticks"
_INSERT = text(
    f"INSERT INTO {AUDIT_TABLE} (namespace, node, pid, term, kind, started, ended)"
    " VALUES (:namespace, :node, :pid, :term, :kind, :started, :ended)"
)


_emitting = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    fields.update(ev=event, t=time.time())
    line = json.dumps(fields) + "\n"
    with _emitting:  # leader-only calls in threads report too
        sys.stdout.write(line)
        sys.stdout.flush()


def act(ls: Leadership | None) -> bool:
    """Record one leader-only action, if the leadership is still valid."""
    at = time.time()  # taken before the check: the action happened under a valid lease
    if ls is None or not ls.is_valid:
        return False
    emit("act", term=ls.term, at=at)
    return True


_monotonic = time.monotonic
_lag = 0.0


def simulate_suspend(path: Path) -> None:
    """From the next SIGCONT on, let ``time.monotonic()`` lag by the seconds in ``path``."""

    def on_continue(signum: int, frame: object) -> None:
        global _lag
        try:
            _lag += float(path.read_text() or 0)
        except (OSError, ValueError):
            return

    signal.signal(signal.SIGCONT, on_continue)
    time.monotonic = lambda: _monotonic() - _lag


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dsn", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--priority", type=int, default=0)
    p.add_argument(
        "--extra-groups",
        type=int,
        default=0,
        help="also join this many other groups on the same engine (the same election "
        "session); each runs the fenced job under its own namespace, and reports no events",
    )
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--election-timeout", type=float, default=0.05)
    p.add_argument("--lease", type=float, default=0.5)
    p.add_argument("--leader-timeout", type=float, default=0.5)
    p.add_argument("--job-period", type=float, default=0.05)
    p.add_argument("--retry-maximum", type=float, default=0.5)
    p.add_argument("--work", type=float, default=0.01)
    p.add_argument("--act-period", type=float, default=0.01)
    p.add_argument("--every", type=float, default=0.0)
    p.add_argument("--finish-call", type=float, default=0.0)
    p.add_argument("--thread-call", type=float, default=0.0)
    p.add_argument("--suspend-file", type=Path, default=None)
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        help="how long the job's engine may take to connect (asyncpg's timeout: for all the "
        "hosts of its URL together); the election's own connections use connect_timeout",
    )
    p.add_argument(
        "--election-connect-timeout",
        type=float,
        default=None,
        help="Settings.connect_timeout (default: half of io_timeout)",
    )
    p.add_argument(
        "--idle-in-transaction-ms",
        type=int,
        default=1000,
        help="server-side limit on an idle open transaction (frees a paused leader's locks)",
    )
    p.add_argument(
        "--unguarded",
        action="store_true",
        help="also run a naive writer that checks leadership once and never again (to show "
        "that the checker catches two leaders)",
    )
    return p.parse_args(argv)


def engines(args: argparse.Namespace) -> tuple[AsyncEngine, AsyncEngine]:
    """The engine the groups join on (made from the URL, as an application's is), and the
    engine of the node's own work (the job, the probes): the same one, unless the URL
    lists several hosts.

    With several hosts the work's connections go to one host at a time, each within
    ``--connect-timeout``, as the election's own do: asyncpg's timeout covers all of
    them together, so a silent first host would leave the job without a connection.
    """
    connect_args: dict[str, Any] = {
        "ssl": False,
        "timeout": args.connect_timeout,
        "command_timeout": 5,
        "server_settings": {
            "idle_in_transaction_session_timeout": str(args.idle_in_transaction_ms)
        },
    }
    election = create_async_engine(
        sqlalchemy_url(args.dsn),
        pool_size=2,
        max_overflow=2,
        pool_pre_ping=False,
        connect_args=connect_args,
    )
    split = split_dsn(args.dsn)
    if len(split.hosts) < 2:
        return election, election
    order = HostOrder(args.connect_timeout, target_of(split.target))

    async def each_host() -> Any:
        async def attempt(address: Address | None) -> Any:
            assert address is not None
            target = SessionAttribute(order.target)
            return await asyncpg.connect(
                split.rest, host=address.host, port=address.port,
                target_session_attrs=target, **connect_args,
            )  # fmt: skip

        return await order.connect(split.hosts, attempt)

    work = create_async_engine(
        sqlalchemy_url(args.dsn),
        pool_size=2,
        max_overflow=2,
        pool_pre_ping=True,  # a pooled connection may lead to the old primary
        async_creator=each_host,
    )
    return election, work


class Node:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.election_engine, self.engine = engines(args)
        settings = Settings(
            namespace=args.namespace,
            election_interval=args.interval,
            election_timeout=args.election_timeout,
            lease=args.lease,
            leader_timeout=args.leader_timeout,
            priority=args.priority,
            connect_timeout=args.election_connect_timeout,
            retry=RetryPolicy(initial=0.05, maximum=args.retry_maximum, jitter=0.05),
        )
        self.group = ElectionGroup(self.election_engine, settings=settings)
        self.extras = [
            ElectionGroup(
                self.election_engine,
                settings=settings.replace(namespace=extra_namespace(args.namespace, i)),
            )
            for i in range(args.extra_groups)
        ]
        for extra in self.extras:
            extra.on_elected(self.remember, resign_on_error=False)
            extra.every(args.job_period)(self.job)
        self.probes: set[asyncio.Task[None]] = set()  # also the naive writers
        #: The node id that held each (group, term).
        self.term_nodes: dict[tuple[str, int], int] = {}
        self.stopping = False
        self.group.on_elected(self.span, resign_on_error=False)
        self.group.every(args.job_period)(self.job)
        self.group.on_deposed(self.deposed)
        if args.every:
            self.group.every(args.every, name=TICKS)(self.tick)
        self.finishing = self.group.leader_only(finish_on_loss=True)(self.long_call)
        self.threaded = self.group.leader_only(self.long_sync_call)

    async def long_call(self) -> None:
        """A leader-only call that may finish during a hand-over."""
        ls = current_leadership()
        assert ls is not None
        emit("call_start", term=ls.term, kind="finish")
        deadline = time.monotonic() + self.args.finish_call
        while time.monotonic() < deadline and act(ls):  # noqa: ASYNC110  # the action cadence
            await asyncio.sleep(self.args.act_period)
        emit("call_end", term=ls.term, kind="finish")

    def long_sync_call(self) -> None:
        """A plain def leader-only call, run in a worker thread."""
        ls = current_leadership()
        assert ls is not None
        emit("call_start", term=ls.term, kind="thread")
        deadline = time.monotonic() + self.args.thread_call
        while time.monotonic() < deadline and act(ls):
            time.sleep(self.args.act_period)
        emit("call_end", term=ls.term, kind="thread")

    async def calls(self) -> None:
        """Whenever the node leads, keep the long calls running."""
        if not (self.args.finish_call or self.args.thread_call):
            return
        while True:
            try:
                await self.group.wait_for_leadership()
            except GroupStateError:
                return  # the group closed
            with contextlib.suppress(Exception):
                if self.args.finish_call:
                    await self.finishing()
                if self.args.thread_call:
                    await asyncio.to_thread(self.threaded)

    async def remember(self, ls: Leadership) -> None:
        self.term_nodes[ls.namespace, ls.term] = ls.node

    async def span(self, ls: Leadership) -> None:
        await self.remember(ls)
        emit("elected", node=ls.node, term=ls.term)
        if self.args.unguarded:
            task = asyncio.create_task(self.naive(ls.term))
            self.probes.add(task)
            task.add_done_callback(self.probes.discard)
        try:
            # It acts while its leadership is valid; cancelled when it ends.
            while act(ls):  # noqa: ASYNC110  # the action cadence, not a wait
                await asyncio.sleep(self.args.act_period)
            await asyncio.Future()
        finally:
            emit("span_end", node=ls.node, term=ls.term)

    async def tick(self) -> None:
        """A run of the group's schedule: its audit row commits with its run record."""
        ls, run = current_leadership(), current_run()
        assert ls is not None
        assert run is not None
        async with run.transaction() as conn:
            started = time.time()
            await asyncio.sleep(self.args.work)
            ended = time.time()
            await conn.execute(_INSERT, self._row(ls.term, "tick", started, ended))
        emit("tick", term=ls.term, scheduled=run.scheduled_at.timestamp(), started=started)

    async def job(self) -> None:
        ls = current_leadership()
        assert ls is not None
        try:
            async with self.engine.begin() as conn:
                await ls.fence(conn)
                started = time.time()
                await asyncio.sleep(self.args.work)
                ended = time.time()
                row = self._row(ls.term, "exec", started, ended, ls.namespace)
                await conn.execute(_INSERT, row)
        except NotLeaderError:
            emit("refused", term=ls.term, why="lease")
        except StaleLeaderError:
            emit("refused", term=ls.term, why="stale")
        except Exception as exc:
            emit("error", term=ls.term, error=repr(exc)[:200])
        else:
            emit("exec", term=ls.term, started=started, ended=ended)

    def _row(
        self, term: int, kind: str, started: float, ended: float, namespace: str | None = None
    ) -> dict[str, Any]:
        namespace = namespace or self.args.namespace
        return {
            "namespace": namespace,
            # The node that held the term: after a lost session the group has a new id.
            "node": self.term_nodes.get((namespace, term), self.group.node),
            "pid": os.getpid(),
            "term": term,
            "kind": kind,
            "started": started,
            "ended": ended,
        }

    async def deposed(self, ls: Leadership) -> None:
        emit("deposed", node=ls.node, term=ls.term, reason=ls.ended_reason)
        if not self.stopping:
            task = asyncio.create_task(self.probe(ls.term))
            self.probes.add(task)
            task.add_done_callback(self.probes.discard)

    async def naive(self, term: int) -> None:
        """The mistake the guard exists for: work that outlives its leadership."""
        while True:
            try:
                async with self.engine.begin() as conn:
                    started = time.time()
                    await asyncio.sleep(self.args.work)
                    ended = time.time()
                    await conn.execute(_INSERT, self._row(term, "naive", started, ended))
            except Exception as exc:
                emit("error", term=term, error=repr(exc)[:200])
            await asyncio.sleep(self.args.job_period)  # the naive job's own cadence

    async def probe(self, term: int) -> None:
        """Write with a lost term until the database refuses (bounded)."""
        names = self.group.settings.names
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                async with self.engine.begin() as conn:
                    await check_term(conn, names, self.args.namespace, term)
                    started = time.time()
                    await asyncio.sleep(self.args.work)
                    ended = time.time()
                    await conn.execute(_INSERT, self._row(term, "probe", started, ended))
            except StaleLeaderError as exc:
                emit("probe", term=term, result="rejected", current=exc.current)
                return
            except Exception as exc:
                emit("probe", term=term, result="error", error=repr(exc)[:200])
            else:
                emit("probe", term=term, result="accepted", started=started, ended=ended)
            await asyncio.sleep(0.02)  # retry pacing of the probe writer
        emit("probe", term=term, result="gave up")

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(self.group)
                for extra in self.extras:
                    await stack.enter_async_context(extra)
                emit("ready", node=self.group.node, pid=os.getpid())
                calls = asyncio.create_task(self.calls())
                self.probes.add(calls)
                await stop.wait()
                self.stopping = True
                for task in list(self.probes):
                    task.cancel()
            emit("left", node=self.group.node)
        finally:
            for task in list(self.probes):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            # Closing a pooled connection waits for the server's goodbye, which never comes
            # over a black-holed path: bounded, then the process ends anyway.
            for engine in {self.election_engine, self.engine}:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(engine.dispose(), 2)
        emit("exit", node=self.group.node)


def extra_namespace(namespace: str, index: int) -> str:
    """The name of a group a node joins besides ``namespace`` (see ``--extra-groups``)."""
    return f"{namespace}+{index}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.suspend_file is not None:
        simulate_suspend(args.suspend_file)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    asyncio.run(Node(args).run())


if __name__ == "__main__":
    main()
