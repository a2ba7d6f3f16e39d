"""The benchmark harness runs end to end (``python -m benchmarks --quick``).

Only this package's nodes, a few trials, on the session's PostgreSQL: the point is that
the harness, the node wrapper and the report work, not the figures.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(240)
def test_quick_benchmark_writes_samples_table_and_chart(server_dsn: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFELECT_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--no-seed",
            "--dsn",
            server_dsn,
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with (tmp_path / "samples.csv").open() as f:
        rows = list(csv.DictReader(f))
    scenarios = {r["scenario"] for r in rows if r["system"] == "ours"}
    assert {"cold start", "hand-over", "crash (SIGKILL)", "pause (SIGSTOP)"} <= scenarios
    assert {"notifications", "idle CPU", "RSS", "connections"} <= scenarios
    elections = [r for r in rows if r["scenario"] in ("cold start", "hand-over")]
    assert elections
    assert all(r["censored"] == "0" and float(r["value"]) > 0 for r in elections)
    assert not [r for r in rows if r["scenario"] == "overlap"], "two leaders acted at once"
    settled = [r for r in rows if r["scenario"] in ("settled", "rolling: settled")]
    assert settled
    assert all(r["value"] == "1.000000" for r in settled), "a trial never settled"
    other = [
        r
        for r in rows
        if r["settings"] in ("strict", "fastcrash") and r["scenario"] == "crash (SIGKILL)"
    ]
    assert other, "no SIGKILL failover at the take-over that is not the default"
    changes = [r for r in rows if r["scenario"] == "rolling: leadership changes"]
    assert changes
    assert all(1 <= float(r["value"]) <= 2 for r in changes)
    messages = [r for r in rows if r["scenario"].startswith("messages")]
    assert {"messages: cold start", "messages: hand-over", "messages per interval"} <= {
        r["scenario"] for r in messages
    }
    # A cold start needs no message at all (claims are decided in the database and the
    # followers read the leader from it); a hand-over is the leader's RESIGN at least (sent
    # to the successor alone, and heard where it is copied for observers).
    handovers = [r for r in messages if r["scenario"] == "messages: hand-over"]
    assert all(float(r["value"]) >= 1 for r in handovers)

    results = (tmp_path / "results.md").read_text()
    assert results.count("| cold start | default | notifelect (this) |") == 1
    assert "### Rolling restart" in results
    assert "trials settled of trials run" in results
    assert "PostgreSQL" in results
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")
