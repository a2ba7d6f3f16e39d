"""Summaries of the samples: percentiles, the CSV, the Markdown tables and the chart."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .scenarios import Sample

FAILOVER = ["cold start", "hand-over", "crash (SIGKILL)", "pause (SIGSTOP)"]
EXTRA = ["join (enter returns)", "all agree on the leader", "paused leader stops acting"]
SYSTEM_NAMES = {"ours": "notifelect (this)", "seed": "notifelect 0.0.3"}
SETTINGS = ("default", "fast", "strict", "fastcrash")


@dataclass(frozen=True)
class Summary:
    """Nearest-rank percentiles; a censored sample ("nothing within limit") ranks last."""

    n: int
    censored: int
    p50: float | None  # None: the percentile falls on a censored sample
    p99: float | None
    max: float | None
    limit: float | None

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> Summary | None:
        if not samples:
            return None
        values = sorted(s.value for s in samples if s.value is not None)
        censored = len(samples) - len(values)
        limits = [s.limit for s in samples if s.limit is not None]
        ranked: list[float | None] = [*values, *([None] * censored)]

        def rank(p: float) -> float | None:
            return ranked[max(0, math.ceil(p * len(ranked)) - 1)]

        return cls(
            len(samples),
            censored,
            rank(0.5),
            rank(0.99),
            ranked[-1],
            max(limits) if limits else None,
        )


def select(samples: Iterable[Sample], **match: object) -> list[Sample]:
    return [s for s in samples if all(getattr(s, k) == v for k, v in match.items())]


def fmt_seconds(value: float | None, limit: float | None = None) -> str:
    if value is None:
        return f"> {limit:g} s (none)" if limit is not None else "n/a"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "s":
        return fmt_seconds(value)
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "MiB":
        return f"{value:.0f} MiB"
    if unit == "1/s":
        return f"{value:.2f}/s"
    return f"{value:g}"


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
        out.writerow(
            [
                "system",
                "settings",
                "n",
                "scenario",
                "trial",
                "value",
                "unit",
                "censored",
                "limit_s",
                "note",
            ]
        )
        for s in samples:
            out.writerow(
                [
                    s.system,
                    s.settings,
                    s.n,
                    s.scenario,
                    s.trial,
                    "" if s.value is None else f"{s.value:.6f}",
                    s.unit,
                    int(s.value is None),
                    "" if s.limit is None else s.limit,
                    s.note,
                ]
            )


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def failover_rows(samples: Sequence[Sample], n: int) -> list[list[str]]:
    """One row per scenario, settings and system: each scenario exactly once."""
    rows = []
    for scenario in [*FAILOVER[:1], *EXTRA[:2], *FAILOVER[1:], *EXTRA[2:]]:
        for settings in SETTINGS:
            ours = Summary.of(
                select(samples, system="ours", settings=settings, n=n, scenario=scenario)
            )
            seed = Summary.of(
                select(samples, system="seed", settings=settings, n=n, scenario=scenario)
            )
            for system, summary in (("ours", ours), ("seed", seed)):
                if summary is None:
                    continue
                rows.append(
                    [
                        scenario,
                        settings,
                        SYSTEM_NAMES[system],
                        str(summary.n),
                        fmt_seconds(summary.p50, summary.limit),
                        fmt_seconds(summary.p99, summary.limit),
                        fmt_seconds(summary.max, summary.limit),
                        ratio(seed, ours) if system == "seed" and scenario in FAILOVER else "",
                    ]
                )
    return rows


def takeover_rows(samples: Sequence[Sample], n: int, strict_default: bool) -> list[list[str]]:
    """Unclean failover of ours side by side: SIGKILL at the default take-over and at the
    other one, and SIGSTOP at defaults."""
    strict = "SIGKILL, strict_takeover=True (waits out the lease)"
    fast = "SIGKILL, strict_takeover=False (standby saw the process end)"
    rows = []
    for scenario, settings, what in [
        ("crash (SIGKILL)", "default", f"{strict if strict_default else fast}, the default"),
        (
            "crash (SIGKILL)",
            "fastcrash" if strict_default else "strict",
            fast if strict_default else strict,
        ),
        ("pause (SIGSTOP)", "default", "SIGSTOP, default (leader_timeout, then a lease)"),
    ]:
        summary = Summary.of(
            select(samples, system="ours", settings=settings, n=n, scenario=scenario)
        )
        if summary is None:
            continue
        rows.append(
            [
                what,
                str(summary.n),
                fmt_seconds(summary.p50, summary.limit),
                fmt_seconds(summary.p99, summary.limit),
                fmt_seconds(summary.max, summary.limit),
            ]
        )
    return rows


def _counts(samples: Sequence[Sample]) -> str:
    """p50 / max of count samples, or n/a."""
    summary = Summary.of(samples)
    if summary is None or summary.p50 is None or summary.max is None:
        return "n/a"
    return f"{summary.p50:g} / {summary.max:g}"


def election_rows(samples: Sequence[Sample], ns: Sequence[int]) -> list[list[str]]:
    """Per N (ours, default settings): trials settled of trials run, the time until all
    agree, notifications per cold start and per hand-over, and per steady interval."""
    rows = []
    for n in ns:
        found = select(samples, system="ours", settings="default", n=n)
        settled = select(found, scenario="settled")
        if not settled:
            continue
        ok = sum(1 for s in settled if s.value)
        agree = Summary.of(select(found, scenario="all agree on the leader"))
        steady = select(found, scenario="messages per interval")
        rows.append(
            [
                str(n),
                f"{ok} of {len(settled)}",
                fmt_seconds(agree.p50, agree.limit) if agree else "n/a",
                _counts(select(found, scenario="messages: cold start")),
                _counts(select(found, scenario="messages: hand-over")),
                f"{steady[0].value:.2f}" if steady and steady[0].value is not None else "n/a",
            ]
        )
    return rows


def kind_rows(samples: Sequence[Sample], ns: Sequence[int]) -> list[list[str]]:
    """Mean notifications per election by message kind (ours, default settings)."""
    rows = []
    for scenario in ("messages: cold start", "messages: hand-over"):
        for n in ns:
            found = select(samples, system="ours", settings="default", n=n, scenario=scenario)
            if not found:
                continue
            total: dict[str, int] = {}
            for s in found:
                for part in s.note.split():
                    kind, _, count = part.partition("=")
                    total[kind] = total.get(kind, 0) + int(count or 0)
            mean = ", ".join(f"{k} {v / len(found):.1f}" for k, v in sorted(total.items()))
            rows.append([scenario.split(": ")[1], str(n), str(len(found)), mean or "none"])
    return rows


def rolling_rows(samples: Sequence[Sample]) -> list[list[str]]:
    """Rolling restarts per R (ours): leadership changes, leader-less time, overlaps."""
    rows = []
    keys = sorted(
        {(s.system, s.settings, s.n) for s in samples if s.scenario == "rolling: settled"}
    )
    for system, settings, r in keys:
        found = select(samples, system=system, settings=settings, n=r)
        settled = select(found, scenario="rolling: settled")
        changes = [s.value for s in select(found, scenario="rolling: leadership changes")]
        gaps = Summary.of(select(found, scenario="rolling: leader-less time"))
        took = Summary.of(select(found, scenario="rolling: duration"))
        overlaps = [s for s in select(found, scenario="overlap") if s.note == "rolling restart"]
        rows.append(
            [
                SYSTEM_NAMES[system],
                settings,
                str(r),
                f"{sum(1 for s in settled if s.value)} of {len(settled)}",
                ", ".join(f"{v:g}" for v in changes if v is not None) or "n/a",
                f"{max((v for v in changes if v is not None), default=0):g}",
                fmt_seconds(gaps.p50) if gaps else "n/a",
                fmt_seconds(gaps.max) if gaps else "n/a",
                fmt_seconds(took.p50) if took else "n/a",
                str(len(overlaps)),
            ]
        )
    return rows


def size_rows(samples: Sequence[Sample], small: int, big: int) -> list[list[str]]:
    """p50 at N=big next to N=small (ours, default settings, same run) and their ratio."""
    rows = []
    for scenario in ("hand-over", "crash (SIGKILL)"):
        a = Summary.of(
            select(samples, system="ours", settings="default", n=small, scenario=scenario)
        )
        b = Summary.of(select(samples, system="ours", settings="default", n=big, scenario=scenario))
        if a is None or b is None:
            continue
        both = a.p50 is not None and b.p50 is not None and a.p50 > 0
        rows.append(
            [
                scenario,
                f"{fmt_seconds(a.p50, a.limit)} ({a.n})",
                f"{fmt_seconds(b.p50, b.limit)} ({b.n})",
                f"{b.p50 / a.p50:.1f}x" if both else "n/a",  # type: ignore[operator]
            ]
        )
    return rows


def scale_rows(samples: Sequence[Sample], ns: Sequence[int]) -> list[list[str]]:
    rows = []
    for scenario in [*FAILOVER[:1], *EXTRA[:2], *FAILOVER[1:]]:
        for n in ns:
            for system in ("ours",):  # the seed's rows are in the failover table
                for settings in ("default",):
                    summary = Summary.of(
                        select(samples, system=system, settings=settings, n=n, scenario=scenario)
                    )
                    if summary is None:
                        continue
                    rows.append(
                        [
                            scenario,
                            str(n),
                            SYSTEM_NAMES[system],
                            settings,
                            str(summary.n),
                            fmt_seconds(summary.p50, summary.limit),
                            fmt_seconds(summary.p99, summary.limit),
                            fmt_seconds(summary.max, summary.limit),
                        ]
                    )
    return rows


def steady_rows(samples: Sequence[Sample]) -> list[list[str]]:
    rows = []
    keys = sorted({(s.system, s.settings, s.n) for s in samples if s.scenario == "notifications"})
    for system, settings, n in keys:
        found = select(samples, system=system, settings=settings, n=n)
        rate = select(found, scenario="notifications")
        per = select(found, scenario="messages per interval")
        conns = select(found, scenario="connections")
        cpu = select(found, scenario="idle CPU")
        rss = select(found, scenario="RSS")
        follower_cpu = Summary.of([s for s in cpu if s.note == "follower"])
        leader_cpu = [s.value for s in cpu if s.note == "leader"]
        rss_all = Summary.of(rss)
        rows.append(
            [
                SYSTEM_NAMES[system],
                settings,
                str(n),
                fmt_value(rate[0].value, "1/s") if rate else "n/a",
                f"{per[0].value:.2f}" if per and per[0].value is not None else "n/a",
                fmt_value(follower_cpu.p50 if follower_cpu else None, "%"),
                fmt_value(follower_cpu.max if follower_cpu else None, "%"),
                fmt_value(leader_cpu[0] if leader_cpu else None, "%"),
                fmt_value(rss_all.p50 if rss_all else None, "MiB"),
                fmt_value(conns[0].value, "count") if conns else "n/a",
            ]
        )
    return rows


def overlap_rows(samples: Sequence[Sample]) -> list[list[str]]:
    """Overlaps per system, settings, kind of trial (chains or rolling restarts) and N."""
    rows = []
    kinds = {"settled": "failover chain", "rolling: settled": "rolling restart"}
    keys = sorted(
        {(s.system, s.settings, s.scenario, s.n) for s in samples if s.scenario in kinds},
        key=lambda k: (k[0], k[1], k[2] != "settled", k[3]),
    )
    for system, settings, scenario, n in keys:
        rolling = scenario == "rolling: settled"
        found = [
            s
            for s in select(samples, system=system, settings=settings, n=n, scenario="overlap")
            if (s.note == "rolling restart") == rolling
        ]
        trials = len(select(samples, system=system, settings=settings, n=n, scenario=scenario))
        worst = max((s.value for s in found if s.value is not None), default=None)
        notes = sorted({s.note.split(":")[0] for s in found})
        rows.append(
            [
                SYSTEM_NAMES[system],
                settings,
                kinds[scenario],
                str(n),
                str(trials),
                str(len(found)),
                fmt_seconds(worst) if found else "—",
                ", ".join(notes) or "—",
            ]
        )
    return rows


def draw_chart(path: Path, samples: Sequence[Sample], n: int, title: str) -> None:
    """Log-scale seconds per scenario: a bar group per system and settings (median), a
    whisker to p99, hatched bars where no leader came within the wait limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(sys_, st) for sys_ in ("ours", "seed") for st in ("default", "fast")]
    series = [k for k in series if select(samples, system=k[0], settings=k[1], n=n)]
    colors = {
        ("ours", "default"): "#1f6feb",
        ("ours", "fast"): "#79b8ff",
        ("seed", "default"): "#d1242f",
        ("seed", "fast"): "#ff8182",
    }
    fig, ax = plt.subplots(figsize=(10, 5.2), dpi=110)
    width = 0.8 / max(1, len(series))
    for j, (system, settings) in enumerate(series):
        for i, scenario in enumerate(FAILOVER):
            summary = Summary.of(
                select(samples, system=system, settings=settings, n=n, scenario=scenario)
            )
            if summary is None:
                continue
            x = i + (j - (len(series) - 1) / 2) * width
            label = f"{SYSTEM_NAMES[system]}, {settings} settings" if i == 0 else None
            censored = summary.p50 is None
            height = summary.limit if censored else summary.p50
            assert height is not None
            ax.bar(
                x,
                height,
                width * 0.92,
                color=colors[(system, settings)],
                label=label,
                hatch="//" if censored else None,
                alpha=0.55 if censored else 1.0,
                edgecolor="black",
                linewidth=0.4,
            )
            if censored:
                ax.annotate("none", (x, height), ha="center", va="bottom", fontsize=7)
            elif summary.p99 is not None and summary.p99 > height:
                ax.plot([x, x], [height, summary.p99], color="black", linewidth=0.9)
                ax.plot(
                    [x - width / 4, x + width / 4], [summary.p99] * 2, color="black", linewidth=0.9
                )
            else:
                text = "p99 > limit" if summary.p99 is None else ""
                if text:
                    ax.annotate(text, (x, height), ha="center", va="bottom", fontsize=6)
    ax.set_yscale("log")
    ax.set_xticks(range(len(FAILOVER)))
    ax.set_xticklabels(
        [
            "cold start\n→ first leader",
            "clean hand-over\n→ next leader",
            "SIGKILL of leader\n→ next leader",
            "SIGSTOP of leader\n→ next leader",
        ]
    )
    ax.set_ylabel("seconds (log scale); bar = p50, whisker = p99")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
