"""Failover and scale benchmarks of notifelect beside the seed's package, notifelect 0.0.3.

``python -m benchmarks`` starts its own PostgreSQL (or uses ``--dsn``), runs node
processes of both systems, prints the tables and writes ``samples.csv``, ``results.md``
and ``chart.png`` to ``benchmarks/results/``. ``--quick`` is a smoke run (well under a
minute) of this repository's package, and of the seed's if it is installed already.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from notifelect import Settings
from notifelect._cluster.harness import NODE_PROGRAM, Cluster
from notifelect.schema import Names, install_statements

from . import report
from .scenarios import (
    Bus,
    Config,
    Pool,
    Recorder,
    Setup,
    chain,
    floor_connect,
    floor_lock,
    floor_notify,
    rolling_restart,
    steady_state,
)

HERE = Path(__file__).parent
RESULTS, ROOT = HERE / "results", HERE.parent  # ROOT: the checkout whose package is measured
SEED_REQUIREMENT, SEED_VENV = "notifelect==0.0.3", HERE / ".venv-seed"
SEED_NODE = HERE / "seed_node.py"  # run as a script: never imports this checkout's package
Key = tuple[str, str]  # a system and its settings, as in ``configs``
#: The settings label of ours at the take-over that is not the default.
OTHER = "fastcrash" if Settings().strict_takeover else "strict"


@dataclasses.dataclass
class Plan:
    """How much to run; the defaults are what the README's figures come from."""

    n: int = 10
    repeats: int = 10  # trials of ours at each settings (the seed's fast: 8)
    seed_repeats: int = 8
    seed_default_trials: int = 4  # in parallel (its rounds take 25 s)
    steady_seconds: float = 60.0
    scale: list[tuple[int, int]] = dataclasses.field(default_factory=lambda: [(2, 6), (100, 5)])
    scale_steady_seconds: float = 15.0
    takeover: tuple[int, int] = (4, 3)  # ours at the other take-over: trials, SIGKILLs each
    rolling: list[tuple[int, int]] = dataclasses.field(default_factory=lambda: [(5, 3), (10, 3)])
    floor_samples: int = 200
    max_connections: int = 400

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            n=4,
            repeats=1,
            seed_repeats=1,
            seed_default_trials=0,
            steady_seconds=2.0,
            scale=[(2, 1)],
            scale_steady_seconds=2.0,
            takeover=(1, 1),
            rolling=[(3, 1)],
            floor_samples=20,
            max_connections=100,
        )


def configs(seed: dict[str, Any] | None) -> dict[Key, Config]:
    """Each system at its defaults and at the seed's fast settings; ours also at the
    take-over that is not its default."""
    s = Settings()

    def of(label: str, s: Settings, strict: bool | None = None) -> Config:
        timing = (s.election_interval, s.election_timeout, s.lease, s.leader_timeout)
        return Config("ours", label, *timing, strict)

    out = {
        ("ours", "default"): of("default", s),
        ("ours", "fast"): of("fast", s.replace(election_interval=0.1, election_timeout=0.05)),
        ("ours", OTHER): of(OTHER, s, not s.strict_takeover),
    }
    if seed is not None:
        out["seed", "default"] = Config(
            "seed", "default", seed["election_interval"], seed["election_timeout"]
        )
        out["seed", "fast"] = Config("seed", "fast", 0.1, 0.05)
    return out


# ------------------------------------------------------------------ the seed's package


def seed_package(*, install: bool) -> tuple[list[str], dict[str, Any]] | None:
    """The command of a seed node, on the Python of a virtual environment with the seed's
    package (created on first use if ``install``), and the package's version, module path
    and Coordinator defaults.

    Its import name is ``notifelect`` as well, so it never shares an interpreter with
    this checkout: its nodes run ``seed_node.py`` on the environment's own Python."""
    python = SEED_VENV / "bin" / "python"
    if not python.exists():
        if not install:
            return None
        print(f"creating {SEED_VENV} with {SEED_REQUIREMENT} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(SEED_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", SEED_REQUIREMENT]
        subprocess.run(pip, check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the seed's own
    command = [str(python), str(SEED_NODE)]
    # A node with nothing on its stdin reports how it started, and exits.
    out = subprocess.run(command, input="", check=True, capture_output=True, text=True, env=env)
    started = json.loads(out.stdout.splitlines()[0])
    names = ("module", "version", "election_interval", "election_timeout")
    facts = {name: started[name] for name in names}
    if "site-packages" not in str(facts["module"]):
        raise RuntimeError(f"the seed environment imports notifelect from {facts['module']}")
    return command, facts


# ------------------------------------------------------------------ the database server


class Server:
    """The PostgreSQL the run uses: its own throwaway one, or ``--dsn``."""

    def __init__(self, dsn: str | None, max_connections: int) -> None:
        self._own: Any = None
        self._max = max_connections
        self.dsn = dsn or ""
        self.databases: list[str] = []

    async def _run(self, dsn: str, *statements: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def start(self) -> None:
        if self.dsn:
            return
        from tests.support.servers import ThrowawayPostgres

        # The test servers trade durability for speed; these figures are meant with
        # PostgreSQL's defaults (fsync, synchronous commit), as in production.
        self._own = server = ThrowawayPostgres().start()
        settings = {
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "max_connections": str(self._max),
        }
        await self._run(server.dsn, *(f"ALTER SYSTEM SET {k} = '{v}'" for k, v in settings.items()))
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
        await self._run(
            self.dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
        )
        self.databases.append(name)
        dsn = urlsplit(self.dsn)._replace(path="/" + name).geturl()
        # The seed's schema: what `python -m notifelect install` of 0.0.3 runs.
        seed = ["CREATE SEQUENCE seq_notifelect START 1"]
        await self._run(dsn, *(install_statements(Names("")) if system == "ours" else seed))
        return dsn

    async def close(self) -> None:
        if self._own is not None:
            self._own.destroy()
        else:
            drop = (f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in self.databases)
            await self._run(self.dsn, *drop)


def machine() -> dict[str, Any]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "?")
    mem = Path("/proc/meminfo").read_text().split()[1]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------ the run


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Run:
    """The databases, node pools and buses of one run, and its phases."""

    def __init__(
        self, plan: Plan, server: Server, cfgs: dict[Key, Config], pools: dict[str, Pool]
    ) -> None:
        self.plan, self.server, self.cfgs, self.pools = plan, server, cfgs, pools
        self.rec = Recorder()
        #: Each system and settings (a key of ``cfgs``) on its database, and (True) on the
        #: one where it is measured in steady state.
        self.setups: dict[tuple[Key, bool], Setup] = {}

    async def databases(self) -> None:
        """One database per system and settings, one more per system and settings
        measured in steady state; a bus on each of ours and on each steady one."""
        for key, cfg in self.cfgs.items():
            for steady in (False, True) if cfg.settings != OTHER else (False,):
                name = f"nb{os.getpid()}_{'ss_' if steady else ''}{cfg.system}_{cfg.settings}"
                dsn = await self.server.database(name, cfg.system)
                bus = await Bus.open(dsn) if steady or cfg.system == "ours" else None
                self.setups[key, steady] = Setup(cfg, self.pools[cfg.system], dsn, self.rec, bus)

    async def close(self) -> None:
        for setup in self.setups.values():
            if setup.bus is not None:
                await setup.bus.close()

    async def chains(self, key: Key, n: int, trials: Iterable[int], steps: Sequence[str]) -> None:
        for trial in trials:
            await chain(self.setups[key, False], n, trial, steps)

    async def measure(self, scale: list[tuple[int, int]]) -> dict[str, list[float]]:
        """Every phase; the physical floors."""
        plan, dsn, ours = self.plan, self.server.dsn, ("ours", "default")
        _progress("physical floors")
        floors = {
            "NOTIFY to a listening session": await floor_notify(dsn, plan.floor_samples),
            "advisory lock: unlock → waiter": await floor_lock(
                dsn, max(10, plan.floor_samples // 4), kill=False
            ),
            "advisory lock: SIGKILL of holder → waiter": await floor_lock(
                dsn, max(2, plan.floor_samples // 10), kill=True
            ),
        }
        trials = max(1, plan.floor_samples // 40)
        bigger = [(n, 2) for n, _ in scale if n > plan.n]
        for processes, each in [(plan.n, 1), (plan.n, 2), *bigger]:
            what = f"{processes} processes open {each} connection{'s' * (each > 1)} at once"
            many = trials if processes == plan.n else min(trials, 2)
            floors[what] = await floor_connect(dsn, processes, each, many)
        _progress(f"spawning node processes (N={plan.n})")
        await self.pools["ours"].reserve(plan.n * 2)

        async def steady_then_takeover() -> None:
            """The steady state of every system, then ours at the other take-over (strict
            failovers wait a whole lease, so they share the time of the seed's 25 s rounds)."""
            steady = [setup for (_, is_steady), setup in self.setups.items() if is_steady]
            await asyncio.gather(*(steady_state(s, plan.n, plan.steady_seconds) for s in steady))
            trials, kills = plan.takeover
            _progress(f"ours at {OTHER}: {trials} trials, N={plan.n}, {kills} SIGKILLs each")
            await self.chains(("ours", OTHER), plan.n, range(trials), ["crash"] * kills)

        phase = [steady_then_takeover()]
        seed_trials = plan.seed_default_trials if ("seed", "default") in self.cfgs else 0
        if seed_trials:
            await self.pools["seed"].reserve(plan.n * (seed_trials + 2))
            steps = ("hand-over", "crash", "pause")
            phase += [
                self.chains(("seed", "default"), plan.n, [g], steps) for g in range(seed_trials)
            ]
        also = (
            f"; the seed at its defaults: {seed_trials} trials in parallel" if seed_trials else ""
        )
        _progress(f"steady state for {plan.steady_seconds:g} s (all systems){also}")
        await asyncio.gather(*phase)

        for key in [ours, ("ours", "fast"), ("seed", "fast")]:
            if key in self.cfgs:
                repeats = plan.repeats if key[0] == "ours" else plan.seed_repeats
                _progress(f"{key[0]} at {key[1]} settings: {repeats} trials, N={plan.n}")
                await self.chains(key, plan.n, range(repeats), ("hand-over", "crash", "pause"))
        for replicas, repeats in plan.rolling:
            _progress(f"rolling restart at default settings, R={replicas}: {repeats} trials")
            for trial in range(repeats):
                await rolling_restart(self.setups[ours, False], replicas, trial)
        for n, repeats in scale:
            _progress(f"scale: ours at default settings, N={n}: {repeats} trials")
            await self.chains(ours, n, range(repeats), ("hand-over", "crash"))
            await steady_state(self.setups[ours, True], n, plan.scale_steady_seconds)
        return floors


async def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    plan = Plan.quick() if args.quick else Plan()
    for name in ("n", "repeats", "steady_seconds", "scale", "rolling"):
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    if args.repeats is not None:
        plan.seed_repeats = args.repeats
    started, load_start, when = time.monotonic(), os.getloadavg(), dt.datetime.now(dt.UTC)
    seed = None if args.no_seed else seed_package(install=not args.quick)
    cfgs = configs(None if seed is None else seed[1])
    if args.quick:  # the seed's default rounds take 25 s: too long for a smoke run
        cfgs.pop(("seed", "default"), None)

    server = Server(args.dsn, plan.max_connections)
    _progress("starting PostgreSQL" if not args.dsn else "using the given PostgreSQL")
    await server.start()
    # The nodes see neither PG* nor NOTIFELECT_* variables; ours import this checkout.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "NOTIFELECT_"))}
    env.pop("PYTHONPATH", None)
    logs = args.out / "raw" / "logs"  # the nodes' stderr
    ours = Cluster(server.dsn, logs / "ours", env={**env, "PYTHONPATH": str(ROOT)})
    pools = {"ours": Pool(ours, NODE_PROGRAM)}
    if seed is not None:
        pools["seed"] = Pool(Cluster(server.dsn, logs / "seed", env=env), seed[0])
    clusters = [pool.cluster for pool in pools.values()]
    bench = Run(plan, server, cfgs, pools)
    try:
        pg = await server.facts()
        await bench.databases()
        # Each node of ours holds two sessions (its election session and its anchor).
        budget = int(pg["max_connections"]) - 10 - len(cfgs) * 4
        scale = [(n, r) for n, r in plan.scale if 2 * n + 2 <= budget]
        for n, _ in sorted(set(plan.scale) - set(scale)):
            bench.rec.problem(
                f"N={n} skipped: the server allows {pg['max_connections']} connections"
            )
        floors = await bench.measure(scale)
    finally:
        for cluster in clusters:
            await cluster.close(timeout=5)
        await bench.close()
        await server.close()

    rec, out = bench.rec, args.out
    events = [e for cluster in clusters for e in cluster.events]
    modules = sorted({str(e["module"]) for e in events if e["ev"] == "started"})
    for module in modules:
        if "site-packages" not in module and not module.startswith(str(ROOT)):
            rec.problem(f"a node imported notifelect from {module}, not from {ROOT}")
    meta: dict[str, Any] = {
        "date": when.strftime("%Y-%m-%d %H:%M UTC"),
        "load": {"start": load_start, "end": os.getloadavg()},
        "wall_seconds": round(time.monotonic() - started, 1),
        "machine": machine(),
        "postgresql": pg,
        "seed": None if seed is None else seed[1],
        "plan": dataclasses.asdict(plan),
        "settings": {f"{c.system}/{c.settings}": c.__dict__ for c in cfgs.values()},
        "command": " ".join(["python -m benchmarks", *argv]),
        "problems": rec.problems,
        "node_modules": modules,
    }
    report.write_csv(out / "samples.csv", rec.samples)
    (out / "raw" / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (out / "run.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    title = (
        f"Time to the next acting leader, N={plan.n} nodes, "
        f"{meta['machine']['cores']} cores, PostgreSQL {pg['server_version']}"
    )
    report.draw_chart(out / "chart.png", rec.samples, plan.n, title)
    text = report.render(rec.samples, floors, meta, sorted({plan.n, *(n for n, _ in scale)}))
    (out / "results.md").write_text(text)
    print(text)
    print(f"wrote {out / 'samples.csv'}, {out / 'results.md'}, {out / 'chart.png'}")
    return 0


def _sizes(text: str) -> list[tuple[int, int]]:
    """``N:trials,...`` (trials 3 if left out; N=0 entries are dropped)."""
    items = [item.partition(":") for item in text.split(",") if item]
    return [(int(n), int(r or 3)) for n, _, r in items if int(n)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: N=4, a few trials, no seed install"
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
    tune = parser.add_argument_group("tuning (defaults: the full plan, or --quick)")
    tune.add_argument("--n", type=int, help="group size of the failover runs (10)")
    tune.add_argument("--repeats", type=int, help="trials per system and settings (10 / 8)")
    tune.add_argument("--steady-seconds", type=float, help="steady-state window (60)")
    tune.add_argument("--scale", type=_sizes, help="extra group sizes as N:trials,... (2:6,100:5)")
    tune.add_argument(
        "--rolling",
        type=_sizes,
        help="rolling restarts as replicas:trials,... (5:3,10:3; 0 to skip)",
    )
    args = parser.parse_args(argv)
    args.out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    args.out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(run(args, sys.argv[1:] if argv is None else argv))
