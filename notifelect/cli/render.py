"""How ``notifelect status`` shows a snapshot: text for a person, or one JSON document."""

from __future__ import annotations

import json
from datetime import datetime

from .job_records import JobStatus
from .records import Snapshot


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.2f}s"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _when(value: datetime, now: datetime) -> str:
    local = value.astimezone()
    return f"{local:%Y-%m-%d %H:%M:%S} ({_ago((now - value).total_seconds())} ago)"


def render_text(snap: Snapshot) -> str:
    """The human-readable status: one block per group."""
    out: list[str] = []
    prefix = f" (prefix {snap.prefix!r})" if snap.prefix else ""
    if not snap.groups:
        return f"no election group is running in this database{prefix}\n"
    for g in snap.groups:
        out.append(f"group {g.namespace!r}{prefix}")
        ld = g.leader
        if ld is None:
            why = f": {g.vacancy}" if g.vacancy else ""
            out.append(f"  leader     none{why}")
        else:
            out.append(
                f"  leader     node {ld.node} (host {ld.host}, pid {ld.pid}), term {ld.term}"
            )
            out.append(f"  since      {_when(ld.since, snap.at)}")
            url = next((m.url for m in g.members if m.node == ld.node and m.url), None)
            if url:
                out.append(f"  url        {url}")
            out.append(f"  lease      renewed {_ago(ld.renewed_age)} ago")
        if g.members:
            out.append("  members    rank  node      priority  role      host/pid")
            for m in g.members:
                out.append(
                    f"             {m.rank:<5} {m.node:<9} {m.priority:<9} {m.role:<9}"
                    f" {m.host}/{m.pid}" + (f"  {m.url}" if m.url else "")
                )
        else:
            out.append("  members    none running")
        if g.transitions:
            width = max(5, *(len(str(t.term)) for t in g.transitions))
            out.append(
                f"  terms      {'term':<{width}} node      started              ended / reason"
            )
            for t in g.transitions:
                started = f"{t.started_at.astimezone():%Y-%m-%d %H:%M:%S}"
                if t.ended_at is None:
                    end = "current" if ld and ld.term == t.term else "open"
                else:
                    length = (t.ended_at - t.started_at).total_seconds()
                    end = f"after {_ago(length)}, {t.reason or 'ended'}"
                out.append(f"             {t.term:<{width}} {t.node:<9} {started}  {end}")
        out.extend(_jobs(g.jobs, snap.at))
        out.append("")
    return "\n".join(out)


def _jobs(jobs: list[JobStatus], now: datetime) -> list[str]:
    """The block of a group's scheduled jobs: last run, outcome, lateness, next due."""
    out = []
    for j in jobs:
        out.append(f"  job        {j.job} ({j.schedule})")
        if j.last_started_at is None:
            out.append("             last run   none yet")
        else:
            how = j.last_outcome or "?"
            if j.duration is not None:
                how += f" in {_ago(j.duration)}"
            if j.last_error:
                how += f": {j.last_error}"
            out.append(f"             last run   {_when(j.last_started_at, now)}: {how}")
            out.append(
                f"                        {_ago(j.lateness or 0.0)} late, node {j.node},"
                f" term {j.term}"
            )
        if j.next_due is not None:
            late = f", overdue by {_ago(j.overdue)}" if j.overdue > 0 else ""
            ahead = (j.next_due - now).total_seconds()
            when = f"in {_ago(ahead)}" if ahead > 0 else "now"
            out.append(
                f"             next due   {j.next_due.astimezone():%Y-%m-%d %H:%M:%S}"
                f" ({when}{late})"
            )
    return out


def render_json(snap: Snapshot) -> str:
    return json.dumps(snap.to_json(), separators=(",", ":"))
