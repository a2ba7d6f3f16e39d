"""The report of a run: percentiles, the CSV, the Markdown tables, the targets and the chart."""

from __future__ import annotations

import csv
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notifelect import Settings

from .scenarios import JOIN_CPU, SETTLE, STEPS, Sample

FAILOVER = ["cold start", *STEPS.values()]
#: Every timed scenario of a chain, in the order of the tables.
TIMED = [FAILOVER[0], "join (enter returns)", "all agree on the leader", *FAILOVER[1:]]
SYSTEM_NAMES = {"ours": "notifelect (this)", "seed": "notifelect 0.0.3"}
SETTINGS = ("default", "fast", "strict", "fastcrash")
CSV_COLUMNS = "system,settings,n,scenario,trial,value,unit,censored,limit_s,note"
#: The settings labels of ours with strict_takeover=True and False.
STRICT, FASTCRASH = (
    ("default", "fastcrash") if Settings().strict_takeover else ("strict", "default")
)


@dataclass(frozen=True)
class Summary:
    """Nearest-rank percentiles; a censored sample ("nothing within limit") ranks last."""

    n: int
    p50: float | None  # None: the percentile falls on a censored sample
    p99: float | None
    max: float | None
    limit: float | None

    @classmethod
    def of(cls, samples: Iterable[Sample], **match: object) -> Summary | None:
        """Of the samples whose fields have the values ``match`` gives (all without)."""
        if not (chosen := select(samples, **match)):
            return None
        values = sorted(s.value for s in chosen if s.value is not None)
        ranked: list[float | None] = [*values, *[None] * (len(chosen) - len(values))]
        limits = [s.limit for s in chosen if s.limit is not None]

        def rank(p: float) -> float | None:
            return ranked[max(0, math.ceil(p * len(ranked)) - 1)]

        return cls(len(ranked), rank(0.5), rank(0.99), ranked[-1], max(limits, default=None))

    @classmethod
    def of_values(cls, values: Sequence[float]) -> Summary | None:
        return cls.of([Sample("", "", 0, "", 0, v) for v in values])

    def cells(self) -> str:
        """n, p50, p99 and max: table cells."""
        values = (fmt_seconds(v, self.limit) for v in (self.p50, self.p99, self.max))
        return " | ".join([str(self.n), *values])


#: Nothing measured: every percentile n/a.
NONE = Summary(0, None, None, None, None)


def select(samples: Iterable[Sample], **match: object) -> list[Sample]:
    return [s for s in samples if all(getattr(s, k) == v for k, v in match.items())]


def ours(samples: Iterable[Sample], **match: object) -> Summary | None:
    """The summary of this package's samples at its defaults (unless ``match`` says)."""
    return Summary.of(samples, **({"system": "ours", "settings": "default"} | match))


def fmt_seconds(value: float | None, limit: float | None = None) -> str:
    if value is None:
        return f"> {limit:g} s (none)" if limit is not None else "n/a"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def ratio(seed: Summary | None, ours: Summary | None) -> str:
    """How many times longer the seed package took than ours, at the median."""
    if seed is None or ours is None or ours.p50 is None or ours.p50 <= 0:
        return "n/a"
    if seed.p50 is None:
        assert seed.limit is not None
        return f"> {seed.limit / ours.p50:,.0f}x"
    times = seed.p50 / ours.p50
    if times >= 10:
        return f"{times:,.0f}x"
    return f"{times:.1f}x" if times >= 0.1 else f"{times:.2g}x"


def write_csv(path: Path, samples: Sequence[Sample]) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(CSV_COLUMNS.split(","))
        for s in samples:
            value = "" if s.value is None else f"{s.value:.6f}"
            limit = "" if s.limit is None else s.limit
            row = (s.system, s.settings, s.n, s.scenario, s.trial, value, s.unit)
            out.writerow([*row, int(s.value is None), limit, s.note])


def table(header: str, rows: Iterable[str]) -> str:
    """A Markdown table; ``header`` and each row are cells joined with " | "."""
    rule = "|---" * (header.count(" | ") + 1) + "|"
    return "\n".join([f"| {header} |", rule, *(f"| {row} |" for row in rows)])


def failover_rows(samples: Sequence[Sample], n: int) -> list[str]:
    """One row per scenario, settings and system, with seed ÷ ours at the median."""
    rows = []
    for scenario, settings in itertools.product(TIMED, SETTINGS):
        where: dict[str, object] = {"settings": settings, "n": n, "scenario": scenario}
        mine = Summary.of(samples, system="ours", **where)
        for system in ("ours", "seed"):
            if (s := Summary.of(samples, system=system, **where)) is not None:
                vs = ratio(s, mine) if system == "seed" and scenario in FAILOVER else ""
                rows.append(
                    f"{scenario} | {settings} | {SYSTEM_NAMES[system]} | {s.cells()} | {vs}"
                )
    return rows


def scale_rows(samples: Sequence[Sample], ns: Sequence[int]) -> list[str]:
    """Each timed scenario at each N (ours, default settings)."""
    found = [(sc, n, ours(samples, n=n, scenario=sc)) for sc in TIMED for n in ns]
    return [f"{sc} | {n} | {s.cells()}" for sc, n, s in found if s is not None]


def join_cost_rows(samples: Sequence[Sample], cores: int) -> list[str]:
    """Per system, settings and N: the machine's CPU time per joining node, and what that
    makes of a join of N nodes at once on these cores. Phases that ran beside others (the
    seed at its defaults, ours at the other take-over) are left out: their CPU is shared."""
    rows = []
    for system, settings in (("ours", "default"), ("ours", "fast"), ("seed", "fast")):
        for n in sorted({s.n for s in select(samples, system=system, settings=settings)}):
            where = {"system": system, "settings": settings, "n": n}
            cpu = Summary.of(samples, scenario=JOIN_CPU, **where)
            join = Summary.of(samples, scenario="join (enter returns)", **where)
            if cpu is None or cpu.p50 is None or join is None:
                continue
            rows.append(
                f"{SYSTEM_NAMES[system]} | {settings} | {n} | {cpu.n} | {fmt_seconds(cpu.p50)}"
                f" | {fmt_seconds(cpu.max)} | {fmt_seconds(cpu.p50 * n / cores)}"
                f" | {fmt_seconds(join.p50)} | {fmt_seconds(join.max)}"
            )
    return rows


JOIN_COST = (
    "CPU time of the whole machine (every core, every process: the nodes, their server "
    "sessions, the server's forks) from the join instant until every node has joined, per "
    "node, p50 and max over trials (`/proc/stat`, 10 ms ticks over the whole window). "
    "N x p50 ÷ cores is how long the cores were busy: where it is about as long as the "
    "joins themselves, the cores were busy throughout and N joins at once cannot end "
    "sooner than that CPU time allows (no ordering of the work helps, only a join that "
    "costs less)."
)


def _messages(found: Sequence[Sample]) -> str:
    """p50 / max of message counts, and the mean count of each kind."""
    s = Summary.of(found)
    if s is None or s.p50 is None or s.max is None:
        return "n/a"
    total: Counter[str] = Counter()
    for sample in found:
        for part in sample.note.split():
            kind, _, count = part.partition("=")
            total[kind] += int(count or 0)
    kinds = ", ".join(f"{k} {v / len(found):.1f}" for k, v in sorted(total.items()))
    return f"{s.p50:g} / {s.max:g} ({kinds or 'none'})"


def _settled(samples: Sequence[Sample]) -> str:
    return f"{sum(1 for s in samples if s.value)} of {len(samples)}"


def _one(samples: Sequence[Sample], scenario: str, fmt: str) -> str:
    """The first sample of ``scenario``, formatted, or n/a."""
    value = next((s.value for s in samples if s.scenario == scenario), None)
    return "n/a" if value is None else fmt.format(value)


def election_rows(samples: Sequence[Sample], ns: Sequence[int]) -> list[str]:
    """Per N (ours, default settings): trials settled, notifications per election."""
    rows = []
    for n in ns:
        found = select(samples, system="ours", settings="default", n=n)
        if settled := select(found, scenario="settled"):
            rows.append(
                f"{n} | {_settled(settled)} | "
                f"{_messages(select(found, scenario='messages: cold start'))} | "
                f"{_messages(select(found, scenario='messages: hand-over'))} | "
                + _one(found, "messages per interval", "{:.2f}")
            )
    return rows


def _keys(samples: Iterable[Sample], scenario: str) -> list[tuple[str, str, int]]:
    """(system, settings, N) of every sample of ``scenario``, sorted."""
    return sorted({(s.system, s.settings, s.n) for s in samples if s.scenario == scenario})


def steady_rows(samples: Sequence[Sample]) -> list[str]:
    rows = []
    for system, settings, n in _keys(samples, "notifications"):
        found = select(samples, system=system, settings=settings, n=n)
        cpu = select(found, scenario="idle CPU")
        follower = Summary.of(cpu, note="follower") or NONE
        rss = Summary.of(found, scenario="RSS")
        rows.append(
            f"{SYSTEM_NAMES[system]} | {settings} | {n} | "
            f"{_one(found, 'notifications', '{:.2f}/s')} | "
            f"{_one(found, 'messages per interval', '{:.2f}')} | "
            f"{_percent(follower.p50)} | {_percent(follower.max)} | "
            f"{_one(select(cpu, note='leader'), 'idle CPU', '{:.2f} %')} | "
            f"{'n/a' if rss is None else f'{rss.p50:.0f} MiB'} | "
            + _one(found, "connections", "{:g}")
        )
    return rows


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} %"


def rolling_rows(samples: Sequence[Sample]) -> list[str]:
    """Rolling restarts per R: leadership changes, leader-less time, overlaps."""
    rows = []
    for system, settings, r in _keys(samples, "rolling: settled"):
        found = select(samples, system=system, settings=settings, n=r)
        changes = [s.value or 0 for s in select(found, scenario="rolling: leadership changes")]
        gaps = Summary.of(found, scenario="rolling: leader-less time") or NONE
        took = Summary.of(found, scenario="rolling: duration") or NONE
        rows.append(
            f"{SYSTEM_NAMES[system]} | {settings} | {r} | "
            f"{_settled(select(found, scenario='rolling: settled'))} | "
            f"{', '.join(f'{v:g}' for v in changes) or 'n/a'} | {max(changes, default=0):g} | "
            f"{fmt_seconds(gaps.p50)} | {fmt_seconds(gaps.max)} | {fmt_seconds(took.p50)} | "
            + str(len(select(found, scenario="overlap", note="rolling restart")))
        )
    return rows


def overlap_rows(samples: Sequence[Sample]) -> list[str]:
    """Overlaps per system, settings, kind of trial (chains or rolling restarts) and N."""
    rows = []
    for kind, scenario in [("failover chain", "settled"), ("rolling restart", "rolling: settled")]:
        rolling = kind == "rolling restart"
        for system, settings, n in _keys(samples, scenario):
            of = select(samples, system=system, settings=settings, n=n)
            overlaps = select(of, scenario="overlap")
            found = [s for s in overlaps if (s.note == "rolling restart") == rolling]
            worst = max((s.value for s in found if s.value is not None), default=None)
            rows.append(
                f"{SYSTEM_NAMES[system]} | {settings} | {kind} | {n} | "
                f"{len(select(of, scenario=scenario))} | {len(found)} | "
                f"{fmt_seconds(worst) if found else '—'} | "
                + (", ".join(sorted({s.note for s in found})) or "—")
            )
    rows.sort(key=lambda row: row.split(" | ")[:2])  # by system and settings: stable
    return rows


def targets(samples: Sequence[Sample], n: int, big: int) -> list[str]:
    """The goals of this package, each with what this run measured (N=n unless said)."""

    def at(scenario: str, size: int = n, **match: object) -> Summary | None:
        return ours(samples, n=size, scenario=scenario, **match)

    def show(s: Summary | None, attr: str = "p50") -> str:
        return "not measured" if s is None else fmt_seconds(getattr(s, attr), s.limit)

    def met(s: Summary | None, bound: float | None, attr: str = "p50") -> str:
        value = None if s is None else getattr(s, attr)
        return "n/a" if value is None or bound is None else "yes" if value <= bound else "**no**"

    lease, crash, join = Settings().lease, STEPS["crash"], "join (enter returns)"
    rows = [
        f"{label} | {show(s)} | {met(s, bound)}"
        for label, s, bound in [
            ("cold start p50 ≤ 100 ms", at("cold start"), 0.1),
            ("clean hand-over p50 ≤ 10 ms", at("hand-over"), 0.01),
            ("SIGKILL, strict_takeover=False: p50 ≤ 10 ms", at(crash, settings=FASTCRASH), 0.01),
            (
                f"SIGKILL at the default: p50 within 5 % of one lease ({lease:g} s)",
                at(crash, settings=STRICT),
                1.05 * lease,
            ),
        ]
    ]
    mine, seed = at(join), at(join, system="seed", settings="fast")
    rows.append(
        "join p50 no slower than notifelect 0.0.3's at its fast settings | "
        f"{show(mine)} vs {show(seed)} | {met(mine, None if seed is None else seed.p50)}"
    )
    joins = at(join, big)
    measured = f"p50 {show(joins)}, p99 {show(joins, 'p99')}" if joins else "not measured"
    rows.append(f"N={big} join p99 ≤ 0.5 s | {measured} | {met(joins, 0.5, 'p99')}")
    small, large = at("hand-over"), at("hand-over", big)
    times, bound = "", None
    if small and large and small.p50 and large.p50:
        times, bound = f" ({large.p50 / small.p50:.2f}x)", 1.5 * small.p50
    rows.append(
        f"N={big} hand-over p50 within 1.5x of N={n} | "
        f"{show(large)} vs {show(small)}{times} | {met(large, bound)}"
    )
    settled = select(samples, system="ours", scenario="settled")
    overlaps = len(select(samples, system="ours", scenario="overlap"))
    every = all(s.value for s in settled)
    rows += [
        "every trial settles (one leader known to all), any N and settings | "
        f"{_settled(settled)} | {'yes' if every else '**no**'}",
        "never two acting leaders (the checker, on every trial) | "
        f"{overlaps} overlaps | {'**no**' if overlaps else 'yes'}",
    ]
    return rows


def render(
    samples: Sequence[Sample],
    floors: dict[str, list[float]],
    meta: dict[str, Any],
    ns: Sequence[int],
) -> str:
    """The Markdown of ``results.md``: the failover at the plan's N, every N of ``ns``."""
    n, m, pg = meta["plan"]["n"], meta["machine"], meta["postgresql"]
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
    if seed := meta["seed"]:
        parts.append(
            f"Seed package: notifelect {seed['version']} from PyPI, defaults "
            f"election_interval={seed['election_interval']:g} s, "
            f"election_timeout={seed['election_timeout']:g} s. "
            "Fast settings: election_interval=0.1 s, election_timeout=0.05 s (both systems)."
        )
    floor_rows = [f"{k} | {s.cells()}" for k, v in floors.items() if (s := Summary.of_values(v))]
    sections = [
        ("Physical floors (same server and cores)", "", "what | n | p50 | p99 | max",
         floor_rows),
        (f"Failover, N={n} (p50 / p99 / max, nearest rank)", "",
         "scenario | settings | system | n | p50 | p99 | max | seed ÷ ours (p50)",
         failover_rows(samples, n)),
        ("What a join costs", JOIN_COST,
         "system | settings | N | trials | CPU per node p50 | max | N x p50 ÷ cores | "
         "join p50 | join max", join_cost_rows(samples, int(m["cores"]))),
        ("Steady state (idle group, leader elected)", "",
         "system | settings | N | notifications | per interval | CPU/follower p50 | "
         "CPU/follower max | CPU leader | RSS/node p50 | DB connections", steady_rows(samples)),
        ("Scale (this package, default settings)", "", "scenario | N | n | p50 | p99 | max",
         scale_rows(samples, ns)),
        ("Elections per N (this package, default settings)", ELECTIONS,
         "N | trials settled of trials run | messages per cold start | messages per hand-over | "
         "steady messages per interval", election_rows(samples, ns)),
        ("Rolling restart (this package, default settings)", ROLLING,
         "system | settings | R | settled | leadership changes per trial | max | "
         "leader-less p50 | leader-less max | roll p50 | overlaps", rolling_rows(samples)),
        ("Overlap: two nodes acting as leader at once", "",
         "system | settings | trial kind | N | trials | overlaps | longest | in",
         overlap_rows(samples)),
        ("Targets (this package, default settings)", "", "target | measured | met",
         targets(samples, n, max(ns))),
    ]  # fmt: skip
    for title, text, header, rows in sections:
        if rows:
            parts += [f"### {title}", *([text] if text else []), table(header, rows)]
    if meta["problems"]:
        parts += ["### Problems during the run", "\n".join(f"- {p}" for p in meta["problems"])]
    return "\n\n".join(parts) + "\n"


ELECTIONS = (
    f"Settled: one leader known to every node and held for {SETTLE:g} s. Messages: "
    "notifications on the channel (a listener counts them) from the join instant until "
    "settled (cold start), and from the leader's exit until the next leader is known to all "
    "(hand-over); p50 / max over trials, and the mean count of each kind. Per interval: "
    "steady-state notifications per election_interval."
)
ROLLING = (
    "R replicas; for each old replica in turn a replacement starts and joins, then the old "
    "one gets SIGTERM and the next step waits for its exit. Leadership changes: new terms "
    "during the roll. Leader-less: total time no node acted as leader, from the first "
    "replacement until a leader is known to all."
)


def draw_chart(path: Path, samples: Sequence[Sample], n: int, title: str) -> None:
    """Log-scale seconds per scenario: a bar per system and settings (median), a whisker
    to p99, hatched bars where no leader came within the wait limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        ("ours", "default"): "#1f6feb",
        ("ours", "fast"): "#79b8ff",
        ("seed", "default"): "#d1242f",
        ("seed", "fast"): "#ff8182",
    }
    series = [k for k in colors if select(samples, system=k[0], settings=k[1], n=n)]
    fig, ax = plt.subplots(figsize=(10, 5.2), dpi=110)
    width = 0.8 / max(1, len(series))
    for j, (system, settings) in enumerate(series):
        for i, scenario in enumerate(FAILOVER):
            s = Summary.of(samples, system=system, settings=settings, n=n, scenario=scenario)
            if s is None or (height := s.p50 or s.limit) is None:
                continue
            x = i + (j - (len(series) - 1) / 2) * width
            ax.bar(
                x,
                height,
                width * 0.92,
                color=colors[system, settings],
                edgecolor="black",
                label=f"{SYSTEM_NAMES[system]}, {settings} settings" if i == 0 else None,
                hatch="//" if s.p50 is None else None,
                alpha=0.55 if s.p50 is None else 1.0,
                linewidth=0.4,
            )
            if s.p50 is None or s.p99 is None:
                note = "none" if s.p50 is None else "p99 > limit"
                ax.annotate(note, (x, height), ha="center", va="bottom", fontsize=7)
            elif s.p99 > height:
                ax.plot([x, x], [height, s.p99], color="black", linewidth=0.9)
                ax.plot([x - width / 4, x + width / 4], [s.p99] * 2, color="black", linewidth=0.9)
    ax.set_yscale("log")
    after = ("clean hand-over", "SIGKILL of leader", "SIGSTOP of leader")
    labels = ["cold start\n→ first leader", *(f"{a}\n→ next leader" for a in after)]
    ax.set_xticks(range(len(FAILOVER)), labels)
    ax.set_ylabel("seconds (log scale); bar = p50, whisker = p99")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
