"""Many groups per process: what G groups on each of P processes cost one PostgreSQL.

``python -m benchmarks.groups [--dsn DSN] [--groups 1,10,100,1000] [--processes 10]``

For each G, in a database of its own: P processes (the node program with
``--extra-groups``, one engine each) start one after another (each once the database is
quiet again), each joining the same G groups; once every group has one leader and the
server's counters are quiet, a window of ``--window`` seconds measures the
sessions (every notifelect backend), transactions per second in the database,
notifications delivered per second (summed over the processes), and CPU per process.
Then the process leading the most groups is killed (SIGKILL) and the time until each of
its groups has a new leader is taken from the survivors' own events: the first group
(``one group``) and the last (``all groups``), with the default settings and with
``strict_takeover=False`` (``--modes``). Writes ``groups.md`` and ``groups.json`` to
``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from notifelect._cluster.harness import Cluster, kill_busiest, settled, transactions, wait_quiet
from notifelect._cluster.node import extra_namespace
from notifelect.schema import Names
from notifelect.sql import ElectionQueries

from . import report
from .run import Server
from .scenarios import cpu_seconds

OUT = Path(__file__).with_name("results") / "groups"


async def run_one(
    server: Server, groups: int, processes: int, mode: str, window: float
) -> dict[str, Any]:
    name = f"nb_groups_{os.getpid()}_{groups}_{mode.replace('-', '_')}"
    dsn = await server.database(name, "ours")
    argv = ["--engine", "--extra-groups", str(groups - 1), "--report-every-group"]
    argv += ["--led-period", "0.25", *(["--fast-crash"] if mode == "fast-crash" else [])]
    row: dict[str, Any] = {"groups": groups, "processes": processes, "mode": mode}
    admin = await asyncpg.connect(dsn)
    cluster = Cluster(dsn, OUT / "raw" / "logs", "g", argv=argv)  # logs: the nodes' stderr
    try:
        started = time.monotonic()
        for _ in range(processes):
            # One after another, each once the previous has joined and the database is
            # quiet again, as a deployment starts replicas. (Ten processes joining a
            # thousand groups each within a second or two overload a 2-CPU machine that
            # also runs the server: leases lapse and elections repeat for a while.)
            await cluster.ready([await cluster.start([])], timeout=600)
            await wait_quiet(admin, 20 * processes, timeout=60)
        procs = cluster.nodes
        joins = [p.last("ready")["took"] for p in procs]  # type: ignore[index]
        await cluster.until(
            lambda: settled(procs, groups), timeout=600, what="one leader per group", every=0.05
        )
        row["join_p50_s"] = statistics.median(joins)
        row["join_max_s"] = max(joins)
        row["all_started_and_settled_s"] = time.monotonic() - started
        row["quiet"] = await wait_quiet(admin, 20 * processes, timeout=120)
        await cluster.until(
            lambda: all(p.last("sessions") for p in procs), timeout=10, what="reports"
        )

        cpu0 = {p.pid: cpu_seconds(p.pid) for p in procs}
        received0 = sum(p.last("sessions")["received"] for p in procs)  # type: ignore[index]
        before, t0 = await transactions(admin), time.monotonic()
        await asyncio.sleep(window)  # the measurement window
        after, t1 = await transactions(admin), time.monotonic()
        await cluster.until(
            lambda: all(p.last("sessions")["t"] > time.time() - 1.5 for p in procs),  # type: ignore[index]
            timeout=10,
            what="fresh reports",
        )
        received1 = sum(p.last("sessions")["received"] for p in procs)  # type: ignore[index]
        elapsed = t1 - t0
        cpu = []
        for p in procs:
            end = cpu_seconds(p.pid)
            if end is not None and cpu0[p.pid] is not None:
                cpu.append(100 * (end - cpu0[p.pid]) / elapsed)  # type: ignore[operator]
        backends = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name LIKE 'notifelect%'"
        )
        row["sessions"] = int(backends)
        row["sessions_per_process_max"] = max(len(p.last("sessions")["pids"]) for p in procs)  # type: ignore[index]
        row["transactions_per_s"] = max(0.0, (after - before - 1) / elapsed)
        row["notifications_per_s"] = (received1 - received0) / elapsed
        row["cpu_per_process_pct_p50"] = statistics.median(cpu)
        row["cpu_per_process_pct_max"] = max(cpu)

        names = ["g", *(extra_namespace("g", i) for i in range(groups - 1))]
        row["renewal_ms"] = await renewal_ms(admin, names)

        took = await kill_busiest(cluster, 120)
        row["killed_led"] = len(took)
        row["failover_one_s"] = took[0]
        row["failover_p50_s"] = statistics.median(took)
        row["failover_all_s"] = took[-1]
        await cluster.until(
            lambda: settled(procs, groups), timeout=120, what="led again", every=0.05
        )
        row["overlaps"] = len(cluster.overlaps())
    finally:
        await cluster.close(timeout=30)
        await admin.close()
    return row


async def renewal_ms(conn: asyncpg.Connection[Any], namespaces: list[str]) -> float:
    """Time of a session's periodic statement in steady state, as a session in every one
    of ``namespaces`` sends it (median of 30 runs, milliseconds, round trip included): it
    reads the rows changed since its previous run and the leaders' sessions. For a
    session id that renews no row."""
    query = ElectionQueries(Names()).tick
    first = await conn.fetchrow(query, -1, None, namespaces, [])
    assert first is not None
    horizon = first["horizon"]
    leaders = sorted({row[1] for row in first["leaders"]})
    took = []
    for _ in range(30):
        started = time.perf_counter()
        row = await conn.fetchrow(query, -1, horizon, [], leaders)
        took.append(1000 * (time.perf_counter() - started))
        assert row is not None
        horizon = row["horizon"]
    return statistics.median(took)


def estimate(rows: list[dict[str, Any]], groups: int, processes: int) -> str:
    """What ``groups`` groups on ``processes`` processes would cost, from the measured
    rows with the default settings: a fixed part (the smallest G) and a part per group
    (the slope up to the largest G)."""
    measured = sorted((r for r in rows if r["mode"] == "default"), key=lambda r: r["groups"])
    low, high = measured[0], measured[-1]
    p = high["processes"]
    span = max(1, high["groups"] - low["groups"])

    def fit(key: str) -> tuple[float, float]:
        per_group = max(0.0, (high[key] - low[key]) / span)
        return low[key] - per_group * low["groups"], per_group

    renewal_fixed, renewal_per_group = fit("renewal_ms")
    cpu_fixed, cpu_per_group = fit("cpu_per_process_pct_p50")
    renewal = renewal_fixed + renewal_per_group * groups
    ticks = processes / 0.5  # one renewal per process per default interval
    cpu = cpu_fixed + cpu_per_group * groups
    per_process = high["transactions_per_s"] / p
    sessions = processes * high["sessions_per_process_max"]
    g_low, g_high = low["groups"], high["groups"]
    return (
        f"From the rows G = {g_low} and G = {g_high} (x {p} processes, default settings): "
        "a fixed part and a part per group.\n\n"
        f"| quantity | measured | {groups:,} groups x {processes} processes |\n"
        "|---|---|---|\n"
        f"| sessions | {high['sessions_per_process_max']} per process (at most) | "
        f"{sessions:,} (plus the applications' own pools) |\n"
        f"| transactions/s | {per_process:.1f} per process | "
        f"about {per_process * processes:,.0f} |\n"
        "| notifications/s in steady state | 0 | 0 |\n"
        f"| one renewal statement (round trip) | {renewal_fixed:.2f} ms + "
        f"{1000 * renewal_per_group:.1f} µs per group | about {renewal:.0f} ms, {ticks:.0f} "
        f"a second: about {renewal * ticks / 1000:.1f} CPU-seconds per second |\n"
        f"| client CPU (p50) | {cpu_fixed:.1f} % + {cpu_per_group * 1000:.1f} % per 1,000 "
        f"groups of a core per process | about {cpu:.0f} % of a core per process |\n\n"
        "The renewal statement reads only the leader rows changed since the session's "
        "previous one and the renewals of the sessions that lead its groups, so in steady "
        "state its time does not depend on the number of groups (the CPU-seconds above "
        "count its whole round trip, an upper bound of the server's share). The client's "
        "CPU grows with the groups a process runs (one election driver each).\n"
    )


COLUMNS = [
    ("groups", "G", "{}"),
    ("mode", "settings", "{}"),
    ("sessions", "sessions (all)", "{}"),
    ("sessions_per_process_max", "per process (max)", "{}"),
    ("transactions_per_s", "transactions/s", "{:.1f}"),
    ("notifications_per_s", "notifications/s", "{:.1f}"),
    ("cpu_per_process_pct_p50", "CPU/process p50", "{:.1f} %"),
    ("cpu_per_process_pct_max", "CPU/process max", "{:.1f} %"),
    ("join_p50_s", "join p50", "{:.2f} s"),
    ("join_max_s", "join max", "{:.2f} s"),
    ("killed_led", "groups of the killed", "{}"),
    ("failover_one_s", "failover: one group", "{:.3f} s"),
    ("failover_all_s", "failover: all groups", "{:.3f} s"),
    ("overlaps", "overlaps", "{}"),
    ("renewal_ms", "renewal statement", "{:.2f} ms"),
]


def table(rows: list[dict[str, Any]]) -> str:
    header = " | ".join(title for _, title, _ in COLUMNS)
    cells = (" | ".join(fmt.format(row[key]) for key, _, fmt in COLUMNS) for row in rows)
    return report.table(header, cells) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    # Every process holds up to three sessions; the server needs room for them all.
    server = Server(args.dsn, max(100, 4 * args.processes + 20))
    await server.start()
    rows = []
    try:
        for groups, mode in itertools.product(args.groups, args.modes):
            print(f"G={groups} x {args.processes} processes, {mode} ...", file=sys.stderr)
            rows.append(await run_one(server, groups, args.processes, mode, args.window))
            print("  " + json.dumps(rows[-1]), file=sys.stderr, flush=True)
        pg = await server.facts()
    finally:
        await server.close()
    facts = {**pg, "cpus": os.cpu_count(), "processes": args.processes, "window_s": args.window}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "groups.json").write_text(json.dumps({"facts": facts, "rows": rows}, indent=2))
    text = (
        f"# Many groups per process\n\nGenerated by `python -m benchmarks.groups` "
        f"(PostgreSQL {pg['server_version']}, {os.cpu_count()} CPUs shared by the server and "
        f"every process, {args.processes} processes started one after another, a "
        f"{args.window:g} s window per row).\n\n"
        "<!-- --8<-- [start:table] -->\n" + table(rows) + "<!-- --8<-- [end:table] -->\n"
    )
    (args.out / "groups.md").write_text(text)
    (args.out / "estimate.md").write_text(estimate(rows, 10_000, 100))
    print(text + "\n" + estimate(rows, 10_000, 100))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="a PostgreSQL server to create databases on")
    parser.add_argument(
        "--groups", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 100, 1000]
    )
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["default", "fast-crash"])
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=OUT)
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
