"""The node program: one process in one election group (and optionally more), reporting
everything that happens to it, for the demo, the fault suite and the benchmarks.

``python -m notifelect._cluster.node --dsn DSN --namespace NS [options]`` joins at once;
without ``--dsn`` the process imports everything, reports ``started`` and waits for a
command. Commands are JSON lines on stdin::

    {"op": "join", "argv": [...options...], "at": monotonic}   join (at that instant)
    {"op": "leave"}   leave the group cleanly, stay running (a new join may follow)
    {"op": "exit"}    leave the group cleanly and exit 0 (so do SIGTERM, SIGINT, EOF)

Reports are JSON lines on stdout, each with ``ev``, ``pid`` and two stamps: ``t``
(``time.time()``, comparable with the database's clock) and ``m`` (``time.monotonic()``,
one clock for every process of the host). Of the group under test (``--namespace``):

``started`` (imported, no group yet), ``ready`` (joined: ``node``), ``sees`` (who this
node believes leads: ``leader``, ``term``), ``elected`` / ``span_end`` (start and end of
its ``on_elected`` work: ``node``, ``term``, ``ns``), ``act`` (a leader-only action: every
``--act-period`` while it leads and throughout the long calls below, at ``at``, taken just
before it checked that its leadership is valid), ``deposed`` (``reason``), ``leaving``,
``left`` (out of every group) and ``exit``.

With ``--job-period`` each group runs a fenced job: each execution opens a transaction,
passes the fencing guard, records its (start, end) on the wall clock and inserts them into
the audit table (``exec``; ``refused`` when the guard said no: ``lease`` = the local check,
``stale`` = the database's term moved on; ``error``). After losing a leadership other than
by its own exit, the node keeps writing with its old term through the database half of the
guard alone (as a leader whose local lease check was wrong would), until the database
refuses (``probe``): any such write that commits is in the audit table (kind ``probe``),
so the checker proves it never overlapped another term.

``--every S`` adds a job on the group's schedule (``@group.every(S)``, named ``ticks``):
each run writes an audit row of kind ``tick`` in its own fenced transaction and reports
``tick``. ``--finish-call S`` keeps a ``leader_only(finish_on_loss=True)`` call running
for S seconds whenever the node leads (``call_start`` / ``call_end``); ``--thread-call S``
does the same with a plain ``def`` in a worker thread. ``--suspend-file F`` simulates a
suspended host: on SIGCONT the node reads a number of seconds from F and from then on
``time.monotonic()`` lags by that much. ``--unguarded`` adds a naive writer that checks
leadership once and never again (the checker must catch it).

``--extra-groups K`` joins K more groups (``NS+0`` ...) on the same engine, so on the same
election session; they report nothing unless ``--report-every-group``, which also reports
every ``--led-period`` seconds the groups this process may act for by term (``led``, only
when it changed) and every second its sessions' backends (``sessions``).

Longer than most modules: it is one program that every caller runs, and what it does
while it leads is what the fault suite's checks need, kept beside the protocol.
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
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.connect_utils import SessionAttribute

from .. import (
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
from ..fencing import check_term
from ..transport.hosts import Address, Budgets, HostOrder, split_dsn, target_of
from ..transport.session import open_sessions

# A group imports its transport when it is made (on the join command): imported here, before
# ``started``, as everything else, so that no join of a fresh process compiles it on the clock.
from ..transport import postgres as _postgres  # noqa: F401  # isort: skip

if TYPE_CHECKING:  # SQLAlchemy is imported only by nodes that use an engine: a node on a
    # DSN weighs what an application's election does (the benchmarks measure its memory)
    from sqlalchemy.ext.asyncio import AsyncEngine

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
_INSERT = (
    f"INSERT INTO {AUDIT_TABLE} (namespace, node, pid, term, kind, started, ended)"
    " VALUES (:namespace, :node, :pid, :term, :kind, :started, :ended)"
)
#: How long the work engine may take to connect (asyncpg's timeout: for all the hosts of
#: its URL together), and the server's limit on an idle open transaction (it frees a
#: paused leader's locks).
CONNECT_TIMEOUT, IDLE_IN_TRANSACTION_MS = 5.0, 1000

_emitting = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """One report line; leader-only calls in threads report too."""
    fields.update(ev=event, t=time.time(), m=time.monotonic(), pid=os.getpid())
    line = json.dumps(fields) + "\n"
    with _emitting:
        sys.stdout.write(line)
        sys.stdout.flush()


def extra_namespace(namespace: str, index: int) -> str:
    """The name of a group a node joins besides ``namespace`` (see ``--extra-groups``)."""
    return f"{namespace}+{index}"


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
    p = argparse.ArgumentParser(prog="python -m notifelect._cluster.node", description=__doc__)
    p.add_argument("--dsn", help="join at once (without it: wait for a join command)")
    p.add_argument("--namespace", default="default")
    p.add_argument("--prefix")
    p.add_argument(
        "--engine", action="store_true", help="join through a SQLAlchemy AsyncEngine, not the DSN"
    )
    p.add_argument("--extra-groups", type=int, default=0)
    p.add_argument("--report-every-group", action="store_true")
    p.add_argument("--led-period", type=float, default=0.1)
    # Settings: the library's defaults unless given.
    p.add_argument("--interval", type=float, dest="election_interval")
    p.add_argument("--election-timeout", type=float)
    p.add_argument("--lease", type=float)
    p.add_argument("--leader-timeout", type=float)
    p.add_argument("--priority", type=int)
    p.add_argument("--fast-crash", action="store_true", help="strict_takeover=False")
    p.add_argument("--strict", action="store_true", help="strict_takeover=True")
    p.add_argument("--retry-maximum", type=float, help="a short RetryPolicy up to this")
    # What the node does while it leads.
    p.add_argument("--act-period", type=float, default=0.0, help="0: no act reports")
    p.add_argument("--job-period", type=float, default=0.0, help="0: no fenced job")
    p.add_argument("--work", type=float, default=0.01)
    p.add_argument("--every", type=float, default=0.0)
    p.add_argument("--finish-call", type=float, default=0.0)
    p.add_argument("--thread-call", type=float, default=0.0)
    p.add_argument("--unguarded", action="store_true")
    p.add_argument("--suspend-file", type=Path)
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def settings_of(args: argparse.Namespace) -> Settings:
    names = ("election_interval", "election_timeout", "lease", "leader_timeout", "priority")
    given: dict[str, Any] = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.fast_crash or args.strict:
        given["strict_takeover"] = bool(args.strict)
    if args.retry_maximum is not None:
        given["retry"] = RetryPolicy(initial=0.05, maximum=args.retry_maximum, jitter=0.05)
    return Settings(namespace=args.namespace, prefix=args.prefix, **given)


def engines(args: argparse.Namespace) -> tuple[AsyncEngine, AsyncEngine]:
    """The engine the groups join on (made from the URL, as an application's is), and the
    engine of the node's own work (the job, the probes): the same one, unless the URL
    lists several hosts.

    With several hosts the work's connections go to one host at a time, each within
    ``CONNECT_TIMEOUT``, as the election's own do: asyncpg's timeout covers all of
    them together, so a silent first host would leave the job without a connection.
    """
    from sqlalchemy.ext.asyncio import create_async_engine

    connect_args: dict[str, Any] = {
        "ssl": False,
        "timeout": CONNECT_TIMEOUT,
        "command_timeout": 5,
        "server_settings": {"idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS)},
    }
    parts = urlsplit(args.dsn)  # as SQLAlchemy reads it: asyncpg, several hosts as host=h:p
    url = urlunsplit(
        parts._replace(scheme="postgresql+asyncpg", query=urlencode(parse_qsl(parts.query)))
    )
    election = create_async_engine(
        url, pool_size=2, max_overflow=2, pool_pre_ping=False, connect_args=connect_args
    )
    split = split_dsn(args.dsn)
    if len(split.hosts) < 2:
        return election, election
    order = HostOrder(Budgets(CONNECT_TIMEOUT), target_of(split.target))

    async def each_host() -> Any:
        async def attempt(address: Address | None, budget: float) -> Any:
            assert address is not None
            target = SessionAttribute(order.target)
            return await asyncpg.connect(
                split.rest, host=address.host, port=address.port,
                target_session_attrs=target, **connect_args,
            )  # fmt: skip

        return await order.connect(split.hosts, attempt)

    work = create_async_engine(
        url,
        pool_size=2,
        max_overflow=2,
        pool_pre_ping=True,  # a pooled connection may lead to the old primary
        async_creator=each_host,
    )
    return election, work


def act(ls: Leadership | None) -> bool:
    """Record one leader-only action, if the leadership is still valid."""
    at = time.time()  # taken before the check: the action happened under a valid lease
    if ls is None or not ls.is_valid:
        return False
    emit("act", term=ls.term, ns=ls.namespace, at=at)
    return True


class Member:
    """One membership of this process: the group under test and its extra groups."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        settings = settings_of(args)
        self.audit = args.job_period > 0 or args.every > 0 or args.unguarded
        self.engines: tuple[AsyncEngine, AsyncEngine] | None = None
        target: str | AsyncEngine = args.dsn
        if args.engine or self.audit or args.extra_groups:
            self.engines = engines(args)
            target = self.engines[0]
        namespaces = [
            args.namespace,
            *(extra_namespace(args.namespace, i) for i in range(args.extra_groups)),
        ]
        self.groups = [
            ElectionGroup(target, settings=settings.replace(namespace=ns)) for ns in namespaces
        ]
        self.group = self.groups[0]
        self.leave = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()  # probes, naive writers, long calls
        #: The node id that held each (group, term).
        self.term_nodes: dict[tuple[str, int], int] = {}
        self.stopping = False
        for group in self.groups:
            group.on_elected(self.span, resign_on_error=False)
            group.on_deposed(self.deposed)
            if args.job_period > 0:
                group.every(args.job_period)(self.job)
        if args.every:
            self.group.every(args.every, name=TICKS)(self.tick)
        self.finishing = self.group.leader_only(finish_on_loss=True)(self.long_call)
        self.threaded = self.group.leader_only(self.long_sync_call)

    @property
    def engine(self) -> AsyncEngine:
        """The engine of the node's own writes (the job, the probes)."""
        assert self.engines is not None
        return self.engines[1]

    def reports(self, ls: Leadership) -> bool:
        return bool(self.args.report_every_group or ls.namespace == self.args.namespace)

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------ leader-only work

    async def span(self, ls: Leadership) -> None:
        self.term_nodes[ls.namespace, ls.term] = ls.node
        if not self.reports(ls):
            return
        emit("elected", node=ls.node, term=ls.term, ns=ls.namespace)
        if self.args.unguarded and ls.namespace == self.args.namespace:
            self.spawn(self.naive(ls.term))
        try:
            # It acts while its leadership is valid; cancelled when it ends.
            while self.args.act_period > 0 and act(ls):  # noqa: ASYNC110  # the action cadence
                await asyncio.sleep(self.args.act_period)
            await asyncio.Future()
        finally:
            emit("span_end", node=ls.node, term=ls.term, ns=ls.namespace)

    async def deposed(self, ls: Leadership) -> None:
        if self.reports(ls):
            emit("deposed", node=ls.node, term=ls.term, ns=ls.namespace, reason=ls.ended_reason)
        if self.audit and not self.stopping and ls.namespace == self.args.namespace:
            self.spawn(self.probe(ls.term))

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

    # ------------------------------------------------------------ audited writes

    async def write(
        self, conn: Any, term: int, kind: str, namespace: str | None = None
    ) -> tuple[float, float]:
        """``--work`` seconds of work under ``term``, then its audit row on ``conn``; when
        the work started and ended (wall clock)."""
        from sqlalchemy import text

        namespace = namespace or self.args.namespace
        started = time.time()
        await asyncio.sleep(self.args.work)
        ended = time.time()
        # The node that held the term: after a lost session the group has a new id.
        node = self.term_nodes.get((namespace, term), self.group.node)
        row = {"namespace": namespace, "node": node, "pid": os.getpid(), "term": term, "kind": kind}
        await conn.execute(text(_INSERT), {**row, "started": started, "ended": ended})
        return started, ended

    async def tick(self) -> None:
        """A run of the group's schedule: its audit row commits with its run record."""
        ls, run = current_leadership(), current_run()
        assert ls is not None
        assert run is not None
        async with run.transaction() as conn:
            started, _ = await self.write(conn, ls.term, "tick")
        emit("tick", term=ls.term, scheduled=run.scheduled_at.timestamp(), started=started)

    async def job(self) -> None:
        ls = current_leadership()
        assert ls is not None
        try:
            async with self.engine.begin() as conn:
                await ls.fence(conn)
                started, ended = await self.write(conn, ls.term, "exec", ls.namespace)
        except NotLeaderError:
            emit("refused", term=ls.term, why="lease")
        except StaleLeaderError:
            emit("refused", term=ls.term, why="stale")
        except Exception as exc:
            emit("error", term=ls.term, error=repr(exc)[:200])
        else:
            emit("exec", term=ls.term, started=started, ended=ended, ns=ls.namespace)

    async def naive(self, term: int) -> None:
        """The mistake the guard exists for: work that outlives its leadership."""
        while True:
            try:
                async with self.engine.begin() as conn:
                    await self.write(conn, term, "naive")
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
                    started, ended = await self.write(conn, term, "probe")
            except StaleLeaderError as exc:
                emit("probe", term=term, result="rejected", current=exc.current)
                return
            except Exception as exc:
                emit("probe", term=term, result="error", error=repr(exc)[:200])
            else:
                emit("probe", term=term, result="accepted", started=started, ended=ended)
            await asyncio.sleep(0.02)  # retry pacing of the probe writer
        emit("probe", term=term, result="gave up")

    # ------------------------------------------------------------ what it sees

    async def sees(self) -> None:
        """Who this node believes leads the group under test, each time that changes."""
        seen: tuple[int, int] | None = (-1, -1)
        while True:
            info = self.group.leader
            now = None if info is None else (info.node, info.term)
            if now != seen:
                seen = now
                emit(
                    "sees", node=self.group.node, leader=info and info.node, term=info and info.term
                )
            await self.group.wait_for_change()

    async def led(self) -> None:
        """Every ``--led-period``: the groups this process may act for right now, by term
        (what a ``@leader_only`` job would see; a killed process's leaderships end, at the
        latest, with its last line); every second, its sessions' backends."""
        last: dict[str, int] | None = None
        report_at = 0.0
        while True:
            at = time.time()
            led = {
                g.settings.namespace: g.leadership.term
                for g in self.groups
                if g.leadership is not None and g.leadership.is_valid
            }
            # The whole set only when it changed: a line of a thousand groups several
            # times a second would fill the pipe and stall this very loop.
            emit("led", at=at, **({"led": led} if led != last else {}))
            last = led
            if time.monotonic() >= report_at:
                pids = sorted(p for s in open_sessions() for p in s.backend_pids())
                received = sum(g.stats["received"] for g in self.groups)
                emit("sessions", sessions=len(open_sessions()), pids=pids, received=received)
                report_at = time.monotonic() + 1.0
            await asyncio.sleep(self.args.led_period)  # the report cadence

    # ------------------------------------------------------------ the membership

    async def run(self, at: float | None = None) -> None:
        if at is not None:
            await asyncio.sleep(max(0.0, at - time.monotonic()))  # the shared start instant
        helpers: list[asyncio.Task[None]] = []
        try:
            async with contextlib.AsyncExitStack() as stack:
                entered = time.monotonic()
                await asyncio.gather(*(stack.enter_async_context(g) for g in self.groups))
                emit("ready", node=self.group.node, took=time.monotonic() - entered)
                helpers.append(asyncio.create_task(self.sees()))
                helpers.append(asyncio.create_task(self.calls()))
                if self.args.report_every_group:
                    helpers.append(asyncio.create_task(self.led()))
                await self.leave.wait()
                self.stopping = True
                emit("leaving", node=self.group.node, leader=self.group.is_leader)
                for task in [*helpers, *self.tasks]:
                    task.cancel()
            emit("left", node=self.group.node)
        finally:
            for task in [*helpers, *self.tasks]:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            # Closing a pooled connection waits for the server's goodbye, which never comes
            # over a black-holed path: bounded, then the process ends anyway.
            if self.engines is not None:
                for engine in set(self.engines):
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(engine.dispose(), 2)


async def serve(args: argparse.Namespace) -> None:
    """Run memberships as the commands on stdin say, until told to exit."""
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, commands.put_nowait, {"op": "exit"})
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def read() -> None:
        while (line := await reader.readline()).strip():
            commands.put_nowait(json.loads(line))
        commands.put_nowait({"op": "exit"})  # the end of stdin: whoever started it is gone

    member: Member | None = None
    running: asyncio.Task[None] | None = None

    def start(member_args: argparse.Namespace, at: float | None) -> None:
        nonlocal member, running
        member = Member(member_args)
        running = asyncio.create_task(_guarded(member.run(at)))

    async def stop() -> None:
        if member is not None and running is not None:
            member.leave.set()
            await asyncio.wait([running])

    if args.dsn:
        start(args, None)
    emit("started", module=str(Path(__file__).parents[1]))
    reading = asyncio.create_task(read())
    try:
        while (cmd := await commands.get())["op"] in ("join", "leave"):  # else exit
            if cmd["op"] == "leave":
                await stop()
                member = running = None
            elif running is not None and not running.done():
                emit("error", error="join while still a member")
            else:
                start(parse_args(cmd["argv"]), cmd.get("at"))
    finally:
        reading.cancel()
        await stop()
    emit("exit", node=None if member is None else member.group.node)


async def _guarded(membership: Any) -> None:
    try:
        await membership
    except Exception as exc:
        emit("error", error=repr(exc)[:300])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.suspend_file is not None:
        simulate_suspend(args.suspend_file)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
