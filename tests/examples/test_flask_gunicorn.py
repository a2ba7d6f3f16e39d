"""The Flask + APScheduler example under gunicorn with 4 workers and --preload: four
members of the group, one worker runs each tick's job."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.running import ROOT, clean_env
from tests.support.servers import free_port

pytest.importorskip("flask")
pytest.importorskip("apscheduler")
GUNICORN = shutil.which("gunicorn") or str(Path(sys.executable).with_name("gunicorn"))


def wait_for_lines(path: Path, n: int, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"{n} lines in {path} not within {timeout}s: {lines}")
        time.sleep(0.05)  # polling a file with a deadline: nothing to wait on


@pytest.mark.timeout(60)
def test_four_preloaded_workers_run_each_tick_once(dsn: str, tmp_path: Path) -> None:
    if not os.path.exists(GUNICORN):
        pytest.skip("gunicorn is not installed")
    records = tmp_path / "runs"
    out = tmp_path / "out"
    env = clean_env(
        DATABASE_URL=dsn,
        REPORT_EVERY="0.2",
        REPORT_RECORDS=str(records),
        PYTHONPATH=str(ROOT),
    )
    bind = f"127.0.0.1:{free_port()}"
    with out.open("w") as log:
        server = subprocess.Popen(
            [
                GUNICORN,
                "-c",
                "gunicorn_conf.py",
                "--preload",
                "-w",
                "4",
                "-b",
                bind,
                "flask_app:app",
            ],
            cwd=ROOT / "examples" / "flask_gunicorn",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_lines(records, 8, 30)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    text = out.read_text()
    joined = [line for line in text.splitlines() if " joined as node " in line]
    assert len({line.split()[1] for line in joined}) == 4, text
    runs = [line.split() for line in records.read_text().splitlines()]
    # Every tick's job ran on one worker only: the leader, one of the four, under one term.
    assert {pid for pid, _, _ in runs} <= {line.split()[1] for line in joined}
    assert len({pid for pid, _, _ in runs}) == 1, runs
    assert len({term for _, term, _ in runs}) == 1, runs
    assert server.returncode == 0, text
