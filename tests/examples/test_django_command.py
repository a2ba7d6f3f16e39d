"""The Django example's management command on two replicas: the leader runs the job; on
SIGTERM it resigns and the other replica carries on at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.running import ROOT, clean_env

pytest.importorskip("django")
SITE = ROOT / "examples" / "django_site"


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def wait_until(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)  # polling a file with a deadline: nothing to wait on


@pytest.mark.timeout(60)
def test_two_replicas_of_the_command_hand_over_on_sigterm(dsn: str, tmp_path: Path) -> None:
    records = tmp_path / "runs"
    env = clean_env(DATABASE_URL=dsn, PYTHONPATH=f"{SITE}:{ROOT}")
    command = [sys.executable, "manage.py", "run_leader_jobs", "--every", "0.1"]
    replicas = [
        subprocess.Popen(
            [*command, "--records", str(records)],
            cwd=SITE,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for replica in replicas:
            assert replica.stdout is not None
            assert replica.stdout.readline().startswith("joined as node ")
        wait_until(lambda: len(lines(records)) >= 3, 20, "three runs")
        leader = int(lines(records)[0][0])
        first = next(r for r in replicas if r.pid == leader)
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0
        wait_until(
            lambda: sum(1 for pid, _, _ in lines(records) if int(pid) != leader) >= 3,
            20,
            "three runs on the other replica",
        )
    finally:
        for replica in replicas:
            if replica.poll() is None:
                replica.send_signal(signal.SIGTERM)
        for replica in replicas:
            replica.wait(20)
    runs = lines(records)
    pids = [int(pid) for pid, _, _ in runs]
    switch = pids.index(next(p for p in pids if p != leader))
    assert set(pids[:switch]) == {leader}
    assert leader not in pids[switch:]  # it stopped before the other one started
    assert len({term for pid, term, _ in runs if int(pid) == leader}) == 1
    assert all(r.returncode == 0 for r in replicas)
