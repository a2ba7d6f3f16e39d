"""Failover and scale benchmarks of notifelect beside the seed's package, notifelect 0.0.3.

``python -m benchmarks`` starts its own PostgreSQL (or uses ``--dsn``), runs node
processes of both systems, prints the tables and writes ``samples.csv``, ``results.md``
and ``chart.png`` to ``benchmarks/results/``. ``--quick`` is a smoke run of this
repository's package only (well under a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from notifelect import Settings
from notifelect._cluster.harness import NODE_PROGRAM, Cluster
from notifelect.schema import Names, install_statements

from . import report
from .report import Summary, fmt_seconds, select, table
from .scenarios import (
    SETTLE,
    Bus,
    Config,
    Pool,
    Recorder,
    chain,
    floor_lock_kill,
    floor_lock_release,
    floor_notify,
    rolling_restart,
    steady_state,
)
from .seed import ensure_seed, seed_facts

RESULTS = Path(__file__).with_name("results")
ROOT = RESULTS.parent.parent  # the checkout whose package the run measures
SEED_NODE = Path(__file__).with_name("seed_node.py")


@dataclass
class Plan:
    """How much to run; ``full()`` is what the README's figures come from."""

    n: int = 10
    repeats_ours: int = 10
    repeats_seed_fast: int = 8
    seed_default_groups: int = 4  # parallel trials (its rounds take 25 s)
    steady_seconds: float = 60.0
    scale: list[tuple[int, int]] = field(
        default_factory=lambda: [(2, 6), (100, 3)]
    )  # (N, repeats) besides n
    scale_steady_seconds: float = 15.0
    takeover_repeats: int = 4  # ours at the other strict_takeover: trials of N=n ...
    takeover_crashes: int = 3  # ... each killing this many leaders in turn
    rolling: list[tuple[int, int]] = field(
        default_factory=lambda: [(5, 3), (10, 3)]
    )  # rolling restarts at default settings: (replicas, repeats)
    floor_samples: int = 200
    kill_floor_samples: int = 20
    seed: bool = True
    max_connections: int = 400

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            n=4,
            repeats_ours=1,
            repeats_seed_fast=1,
            seed_default_groups=0,
            steady_seconds=2.0,
            scale=[(2, 1)],
            scale_steady_seconds=2.0,
            takeover_repeats=1,
            takeover_crashes=1,
            rolling=[(3, 1)],
            floor_samples=20,
            kill_floor_samples=2,
            seed=False,
            max_connections=100,
        )


def other_takeover(settings: Settings) -> str:
    """The settings label of ours at the take-over that is not the default."""
    return "fastcrash" if settings.strict_takeover else "strict"


def configs(seed_defaults: tuple[float, float] | None) -> dict[tuple[str, str], Config]:
    ours = Settings()
    fast = ours.replace(election_interval=0.1, election_timeout=0.05)
    out = {
        ("ours", "default"): Config(
            "ours",
            "default",
            ours.election_interval,
            ours.election_timeout,
            ours.lease,
            ours.leader_timeout,
        ),
        ("ours", "fast"): Config(
            "ours",
            "fast",
            fast.election_interval,
            fast.election_timeout,
            fast.lease,
            fast.leader_timeout,
        ),
        ("ours", other_takeover(ours)): Config(
            "ours",
            other_takeover(ours),
            ours.election_interval,
            ours.election_timeout,
            ours.lease,
            ours.leader_timeout,
            strict_takeover=not ours.strict_takeover,
        ),
    }
    if seed_defaults is not None:
        out["seed", "default"] = Config("seed", "default", *seed_defaults)
        out["seed", "fast"] = Config("seed", "fast", 0.1, 0.05)
    return out


# ------------------------------------------------------------------ the database server


def _with_database(dsn: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


class Server:
    """The PostgreSQL the run uses: its own throwaway one, or ``--dsn``."""

    def __init__(self, dsn: str | None, max_connections: int) -> None:
        self._own: Any = None
        self._max = max_connections
        self.dsn = dsn or ""
        self.databases: list[str] = []

    async def start(self) -> None:
        if self.dsn:
            return
        from tests.support.servers import ThrowawayPostgres

        # The test servers trade durability for speed; these figures are meant with
        # PostgreSQL's defaults (fsync, synchronous commit), as in production.
        server = ThrowawayPostgres().start()
        self._own = server
        conn = await asyncpg.connect(server.dsn)
        try:
            for setting, value in [
                ("fsync", "on"),
                ("synchronous_commit", "on"),
                ("full_page_writes", "on"),
                ("max_connections", str(self._max)),
            ]:
                await conn.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
        finally:
            await conn.close()
        server.restart()
        self.dsn = server.dsn

    async def facts(self) -> dict[str, Any]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
                ["server_version", "max_connections", "fsync", "synchronous_commit"],
            )
            return {r["name"]: r["setting"] for r in rows} | {"own_server": self._own is not None}
        finally:
            await conn.close()

    async def database(self, name: str, system: str) -> str:
        """A fresh database with ``system``'s schema; its DSN."""
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.databases.append(name)
        dsn = _with_database(self.dsn, name)
        conn = await asyncpg.connect(dsn)
        try:
            if system == "ours":
                for statement in install_statements(Names("")):
                    await conn.execute(statement)
            else:  # what `python -m notifelect install` of 0.0.3 runs
                await conn.execute("CREATE SEQUENCE seq_notifelect START 1")
        finally:
            await conn.close()
        return dsn

    async def close(self) -> None:
        if self._own is not None:
            self._own.destroy()
            return
        conn = await asyncpg.connect(self.dsn)
        try:
            for name in self.databases:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split()[1]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------ phases


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


async def _chains(
    cluster: Pool,
    cfg: Config,
    dsn: str,
    n: int,
    repeats: int,
    rec: Recorder,
    steps: Sequence[str],
    bus: Bus | None = None,
) -> None:
    for trial in range(repeats):
        await chain(cluster, cfg, dsn, n, trial, rec, steps, bus)


async def _gather(*aws: Awaitable[None]) -> None:
    await asyncio.gather(*aws)


async def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    plan = Plan.quick() if args.quick else Plan()
    if args.n is not None:
        plan.n = args.n
    if args.repeats is not None:
        plan.repeats_ours = plan.repeats_seed_fast = args.repeats
    if args.steady_seconds is not None:
        plan.steady_seconds = args.steady_seconds
    if args.seed_default_groups is not None:
        plan.seed_default_groups = args.seed_default_groups
    if args.scale is not None:
        plan.scale = [_scale_item(item) for item in args.scale.split(",") if item]
    if args.rolling is not None:
        plan.rolling = [
            item for item in map(_scale_item, filter(None, args.rolling.split(","))) if item[0]
        ]
    if args.no_seed:
        plan.seed = False
    if args.seed:
        plan.seed = True
    out: Path = args.out
    started = time.monotonic()
    load_start = os.getloadavg()
    when = dt.datetime.now(dt.UTC)

    seed_meta: dict[str, object] | None = None
    seed_python = None
    if plan.seed:
        seed_python = ensure_seed(install=not args.quick or args.seed)
        if seed_python is None:
            plan.seed = False
        else:
            seed_meta = seed_facts(seed_python)
    seed_defaults = (
        (float(seed_meta["election_interval"]), float(seed_meta["election_timeout"]))  # type: ignore[arg-type]
        if seed_meta
        else None
    )
    cfgs = configs(seed_defaults)
    if args.quick:  # the seed's default rounds take 25 s: too long for a smoke run
        cfgs.pop(("seed", "default"), None)

    server = Server(args.dsn, plan.max_connections)
    _progress("starting PostgreSQL" if not args.dsn else "using the given PostgreSQL")
    await server.start()
    rec = Recorder()
    buses: dict[str, Bus] = {}
    # The nodes see neither PG* nor NOTIFELECT_* variables; ours import this checkout.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "NOTIFELECT_"))}
    env.pop("PYTHONPATH", None)
    logs = out / "raw" / "logs"  # the nodes' stderr
    logs.mkdir(parents=True, exist_ok=True)
    harnesses = [
        Cluster(server.dsn, logs / "ours", env={**env, "PYTHONPATH": str(ROOT)}),
        Cluster(server.dsn, logs / "seed", env=env),
    ]
    for harness in harnesses:
        harness.workdir.mkdir(exist_ok=True)
    clusters = {"ours": Pool("ours", harnesses[0], NODE_PROGRAM)}
    if seed_python is not None:
        clusters["seed"] = Pool("seed", harnesses[1], (str(seed_python), str(SEED_NODE)))
    try:
        pg = await server.facts()
        dbs: dict[tuple[str, ...], str] = {}
        for (system, settings), _cfg in cfgs.items():
            dbs[system, settings] = await server.database(
                f"nb{os.getpid()}_{system}_{settings}", system
            )
            if settings not in ("strict", "fastcrash"):
                dbs["steady", system, settings] = await server.database(
                    f"nb{os.getpid()}_ss_{system}_{settings}", system
                )
            if system == "ours":  # every notification of ours, for messages per election
                buses[settings] = Bus()
                await buses[settings].start(dbs[system, settings])
        # Each node of ours holds two sessions (its election session and its anchor).
        budget = int(pg["max_connections"]) - 10 - len(cfgs) * 4
        scale = [(n, r) for n, r in plan.scale if 2 * n + 2 <= budget]
        for n, _ in plan.scale:
            if 2 * n + 2 > budget:
                rec.problem(f"N={n} skipped: the server allows {pg['max_connections']} connections")

        _progress("physical floors")
        floors = {
            "NOTIFY to a listening session": await floor_notify(server.dsn, plan.floor_samples),
            "advisory lock: unlock → waiter": await floor_lock_release(
                server.dsn, max(10, plan.floor_samples // 4)
            ),
            "advisory lock: SIGKILL of holder → waiter": await floor_lock_kill(
                server.dsn, plan.kill_floor_samples
            ),
        }

        _progress(f"spawning node processes (N={plan.n})")
        await clusters["ours"].reserve(plan.n * 2)
        steady = []
        for key, cfg in cfgs.items():
            if cfg.settings in ("strict", "fastcrash"):
                continue
            steady.append(
                steady_state(
                    clusters[cfg.system],
                    cfg,
                    dbs["steady", *key],
                    plan.n,
                    plan.steady_seconds,
                    rec,
                )
            )

        async def steady_then_takeover() -> None:
            """The steady state of every system, then ours at the other strict_takeover
            (strict failovers wait a whole lease, so they share the time of the seed's
            25 s rounds)."""
            await _gather(*steady)
            cfg = cfgs["ours", other_takeover(Settings())]
            _progress(
                f"ours with strict_takeover={cfg.strict_takeover}: {plan.takeover_repeats} "
                f"trials, N={plan.n}, {plan.takeover_crashes} SIGKILLs each"
            )
            await _chains(
                clusters["ours"],
                cfg,
                dbs["ours", cfg.settings],
                plan.n,
                plan.takeover_repeats,
                rec,
                ("cold", *["crash"] * plan.takeover_crashes),
            )

        phase_a = [steady_then_takeover()]
        if plan.seed and plan.seed_default_groups:
            cfg = cfgs["seed", "default"]
            await clusters["seed"].reserve(plan.n * (plan.seed_default_groups + 2))
            for g in range(plan.seed_default_groups):
                phase_a.append(chain(clusters["seed"], cfg, dbs["seed", "default"], plan.n, g, rec))
        _progress(
            f"steady state for {plan.steady_seconds:g} s (all systems)"
            + (
                f"; seed package at its defaults: {plan.seed_default_groups} trials "
                "in parallel (25 s rounds)"
                if plan.seed and plan.seed_default_groups
                else ""
            )
        )
        await _gather(*phase_a)

        for key in [("ours", "default"), ("ours", "fast"), ("seed", "fast")]:
            if key not in cfgs:
                continue
            cfg = cfgs[key]
            repeats = plan.repeats_ours if cfg.system == "ours" else plan.repeats_seed_fast
            _progress(f"{cfg.system} at {cfg.settings} settings: {repeats} trials, N={plan.n}")
            await _chains(
                clusters[cfg.system],
                cfg,
                dbs[key],
                plan.n,
                repeats,
                rec,
                ("cold", "handover", "crash", "pause"),
                buses.get(cfg.settings) if cfg.system == "ours" else None,
            )

        cfg = cfgs["ours", "default"]
        for replicas, repeats in plan.rolling:
            _progress(f"rolling restart at default settings, R={replicas}: {repeats} trials")
            for trial in range(repeats):
                await rolling_restart(
                    clusters["ours"],
                    cfg,
                    dbs["ours", "default"],
                    replicas,
                    trial,
                    rec,
                    buses["default"],
                )

        cfg = cfgs["ours", "default"]
        for n, repeats in scale:
            _progress(f"scale: ours at default settings, N={n}: {repeats} trials")
            await _chains(
                clusters["ours"],
                cfg,
                dbs["ours", "default"],
                n,
                repeats,
                rec,
                ("cold", "handover", "crash"),
                buses["default"],
            )
            await steady_state(
                clusters["ours"],
                cfg,
                dbs["steady", "ours", "default"],
                n,
                plan.scale_steady_seconds,
                rec,
            )
    finally:
        for harness in harnesses:
            await harness.close(timeout=5)
        for bus in buses.values():
            await bus.close()
        await server.close()

    wall = time.monotonic() - started
    events = [e for harness in harnesses for e in harness.events]
    modules = sorted({str(e["module"]) for e in events if e["ev"] == "started"})
    for module in modules:
        if "site-packages" not in module and not module.startswith(str(ROOT)):
            rec.problem(f"a node imported notifelect from {module}, not from {ROOT}")
    meta: dict[str, Any] = {
        "date": when.strftime("%Y-%m-%d %H:%M UTC"),
        "load": {"start": load_start, "end": os.getloadavg()},
        "wall_seconds": round(wall, 1),
        "machine": machine(),
        "postgresql": pg,
        "seed": seed_meta,
        "plan": plan.__dict__,
        "settings": {f"{c.system}/{c.settings}": c.__dict__ for c in cfgs.values()},
        "command": " ".join(["python -m benchmarks", *(argv or [])]),
        "problems": rec.problems,
        "node_modules": modules,
    }
    report.write_csv(out / "samples.csv", rec.samples)
    raw = out / "raw"
    raw.mkdir(exist_ok=True)
    with (raw / "events.jsonl").open("w") as f:
        for event in events:
            f.write(json.dumps(event) + "\n")
    (out / "run.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    title = (
        f"Time to the next acting leader, N={plan.n} nodes, "
        f"{meta['machine']['cores']} cores, PostgreSQL {pg['server_version']}"
    )
    report.draw_chart(out / "chart.png", rec.samples, plan.n, title)
    text = render(rec, floors, meta, plan, scale)
    (out / "results.md").write_text(text)
    print(text)
    print(f"wrote {out / 'samples.csv'}, {out / 'results.md'}, {out / 'chart.png'}")
    return 0


def render(
    rec: Recorder,
    floors: dict[str, list[float]],
    meta: dict[str, Any],
    plan: Plan,
    scale: Sequence[tuple[int, int]],
) -> str:
    m, pg = meta["machine"], meta["postgresql"]
    parts = [
        "<!-- generated by `python -m benchmarks`; do not edit by hand -->",
        f"Run of {meta['date']} on {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB), "
        f"Linux {m['kernel']}, Python {m['python']}, PostgreSQL {pg['server_version']} "
        f"({'its own server' if pg['own_server'] else 'given server'}, fsync={pg['fsync']}, "
        f"synchronous_commit={pg['synchronous_commit']}, max_connections="
        f"{pg['max_connections']}); wall time {meta['wall_seconds']:.0f} s; load average "
        f"{meta['load']['start'][0]:.1f} at the start, {meta['load']['end'][0]:.1f} at the end "
        f"(the cores are shared). Command: `{meta['command']}`.",
    ]
    if meta["seed"]:
        seed = meta["seed"]
        parts.append(
            f"Seed package: notifelect {seed['version']} from PyPI, defaults "
            f"election_interval={seed['election_interval']:g} s, "
            f"election_timeout={seed['election_timeout']:g} s. "
            "Fast settings: election_interval=0.1 s, election_timeout=0.05 s (both systems)."
        )
    floor_rows = []
    for name, values in floors.items():
        values = sorted(values)
        s = Summary(
            len(values),
            0,
            values[len(values) // 2],
            values[max(0, -(-99 * len(values) // 100) - 1)],
            values[-1],
            None,
        )
        floor_rows.append(
            [name, str(s.n), fmt_seconds(s.p50), fmt_seconds(s.p99), fmt_seconds(s.max)]
        )
    parts += [
        "### Physical floors (PostgreSQL alone, same run)",
        table(["what", "n", "p50", "p99", "max"], floor_rows),
    ]
    parts += [
        f"### Failover, N={plan.n} (p50 / p99 / max, nearest rank)",
        table(
            ["scenario", "settings", "system", "n", "p50", "p99", "max", "seed ÷ ours (p50)"],
            report.failover_rows(rec.samples, plan.n),
        ),
    ]
    takeover = report.takeover_rows(rec.samples, plan.n, Settings().strict_takeover)
    if takeover:
        parts += [
            f"### Unclean failover of this package, N={plan.n}: strict and fast take-over",
            table(["fault, settings", "n", "p50", "p99", "max"], takeover),
        ]
    parts += [
        "### Steady state (idle group, leader elected)",
        table(
            [
                "system",
                "settings",
                "N",
                "notifications",
                "per interval",
                "CPU/follower p50",
                "CPU/follower max",
                "CPU leader",
                "RSS/node p50",
                "DB connections",
            ],
            report.steady_rows(rec.samples),
        ),
    ]
    ns = [plan.n, *[n for n, _ in scale]]
    parts += [
        "### Scale (this package, default settings)",
        table(
            ["scenario", "N", "system", "settings", "n", "p50", "p99", "max"],
            report.scale_rows(rec.samples, sorted(set(ns))),
        ),
    ]
    parts += [
        "### Elections per N (this package, default settings)",
        "Settled: one leader known to every node and held for "
        f"{SETTLE:g} s. Messages: notifications on the channel (a listener counts them) from "
        "the join instant until settled (cold start), and from the leader's exit until the "
        "next leader is known to all (hand-over); p50 / max over trials. Per interval: "
        "steady-state notifications per election_interval.",
        table(
            [
                "N",
                "trials settled of trials run",
                "all agree p50",
                "messages per cold start",
                "messages per hand-over",
                "steady messages per interval",
            ],
            report.election_rows(rec.samples, sorted(set(ns))),
        ),
        table(
            ["election", "N", "trials", "mean notifications by kind"],
            report.kind_rows(rec.samples, sorted(set(ns))),
        ),
    ]
    big = max(ns)
    sizes = report.size_rows(rec.samples, plan.n, big) if big != plan.n else []
    if sizes:
        parts += [
            f"### N={big} next to N={plan.n} (p50, trials in brackets, same run)",
            table(["scenario", f"N={plan.n}", f"N={big}", "ratio"], sizes),
        ]
    rolling = report.rolling_rows(rec.samples)
    if rolling:
        parts += [
            "### Rolling restart (this package, default settings)",
            "R replicas; for each old replica in turn a replacement starts and joins, then "
            "the old one gets SIGTERM and the next step waits for its exit. Leadership "
            "changes: new terms during the roll. Leader-less: total time no node acted as "
            "leader, from the first replacement until a leader is known to all.",
            table(
                [
                    "system",
                    "settings",
                    "R",
                    "settled",
                    "leadership changes per trial",
                    "max",
                    "leader-less p50",
                    "leader-less max",
                    "roll p50",
                    "overlaps",
                ],
                rolling,
            ),
        ]
    parts += [
        "### Overlap: two nodes acting as leader at once",
        table(
            ["system", "settings", "trial kind", "N", "trials", "overlaps", "longest", "in"],
            report.overlap_rows(rec.samples),
        ),
    ]
    parts += [
        "### Targets (this package, default settings)",
        table(["target", "measured", "met"], targets(rec, plan)),
    ]
    if meta["problems"]:
        parts += ["### Problems during the run", "\n".join(f"- {p}" for p in meta["problems"])]
    return "\n\n".join(parts) + "\n"


def targets(rec: Recorder, plan: Plan) -> list[list[str]]:
    """The goals of this package, each with what this run measured (N=n unless said)."""
    samples = rec.samples
    ours = Settings()
    fast_crash = "fastcrash" if ours.strict_takeover else "default"
    strict = "default" if ours.strict_takeover else "strict"

    def summary(scenario: str, n: int = plan.n, settings: str = "default", system: str = "ours"):  # type: ignore[no-untyped-def]
        return Summary.of(select(samples, system=system, settings=settings, n=n, scenario=scenario))

    def p50(s: Summary | None) -> str:
        return "not measured" if s is None else fmt_seconds(s.p50, s.limit)

    def le(s: Summary | None, bound: float, attr: str = "p50") -> str:
        value = None if s is None else getattr(s, attr)
        return "n/a" if value is None else ("yes" if value <= bound else "**no**")

    rows = []
    for label, found, bound in [
        ("cold start p50 ≤ 100 ms", summary("cold start"), 0.1),
        ("clean hand-over p50 ≤ 10 ms", summary("hand-over"), 0.01),
        (
            "SIGKILL, strict_takeover=False: p50 ≤ 10 ms",
            summary("crash (SIGKILL)", settings=fast_crash),
            0.01,
        ),
        (
            f"SIGKILL at the default: p50 within 5 % of one lease ({ours.lease:g} s)",
            summary("crash (SIGKILL)", settings=strict),
            1.05 * ours.lease,
        ),
    ]:
        rows.append([label, p50(found), le(found, bound)])
    join, seed = (
        summary("join (enter returns)"),
        summary("join (enter returns)", settings="fast", system="seed"),
    )
    rows.append(
        [
            "join p50 no slower than notifelect 0.0.3's at its fast settings",
            f"{p50(join)} vs {p50(seed)}",
            le(join, seed.p50) if seed is not None and seed.p50 is not None else "n/a",
        ]
    )
    big = max((n for n, _ in plan.scale), default=plan.n)
    joins = summary("join (enter returns)", big)
    rows.append(
        [
            f"N={big} join p99 ≤ 0.5 s",
            "not measured" if joins is None
            else f"p50 {fmt_seconds(joins.p50)}, p99 {fmt_seconds(joins.p99, joins.limit)}",
            le(joins, 0.5, "p99"),
        ]
    )  # fmt: skip
    small, large = summary("hand-over"), summary("hand-over", big)
    both = small is not None and large is not None and small.p50 and large.p50
    rows.append(
        [
            f"N={big} hand-over p50 within 1.5x of N={plan.n}",
            f"{p50(large)} vs {p50(small)}" + (f" ({large.p50 / small.p50:.2f}x)" if both else ""),
            ("yes" if large.p50 <= 1.5 * small.p50 else "**no**") if both else "n/a",
        ]
    )
    settled = select(samples, system="ours", scenario="settled")
    rows.append(
        [
            "every trial settles (one leader known to all), any N and settings",
            f"{sum(1 for s in settled if s.value)} of {len(settled)}",
            "yes" if all(s.value for s in settled) else "**no**",
        ]
    )
    overlaps = select(samples, system="ours", scenario="overlap")
    rows.append(
        [
            "never two acting leaders (the checker, on every trial)",
            f"{len(overlaps)} overlaps",
            "yes" if not overlaps else "**no**",
        ]
    )
    return rows


def _scale_item(text: str) -> tuple[int, int]:
    n, _, repeats = text.partition(":")
    return int(n), int(repeats or 3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: this package only, N=3, a few trials"
    )
    parser.add_argument(
        "--dsn",
        help="use this PostgreSQL server (it must allow CREATE DATABASE) instead of starting one",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for samples.csv, results.md, chart.png (default "
        "benchmarks/results, or benchmarks/results/quick with --quick)",
    )
    parser.add_argument("--no-seed", action="store_true", help="skip the seed's package")
    parser.add_argument(
        "--seed", action="store_true", help="include the seed's package in --quick (installs it)"
    )
    tune = parser.add_argument_group("tuning (defaults: the full plan, or --quick)")
    tune.add_argument("--n", type=int, help="group size of the failover runs (10)")
    tune.add_argument("--repeats", type=int, help="trials per system and settings (10 / 8)")
    tune.add_argument("--steady-seconds", type=float, help="steady-state window (60)")
    tune.add_argument(
        "--seed-default-groups",
        type=int,
        help="parallel trials of the seed package at its defaults (4)",
    )
    tune.add_argument("--scale", help="extra group sizes as N:trials,... (2:6,100:3)")
    tune.add_argument(
        "--rolling", help="rolling restarts as replicas:trials,... (5:3,10:3; 0 to skip)"
    )
    args = parser.parse_args(argv)
    args.out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    args.out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(run(args, sys.argv[1:] if argv is None else argv))
