"""When the harness takes a killed process for dead: at its end, whichever way it looks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from notifelect._cluster import harness


@pytest.mark.timeout(30)
@pytest.mark.parametrize("descriptors", [True, False])
def test_a_killed_process_is_proven_dead_at_its_end(
    descriptors: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not descriptors:
        monkeypatch.delattr(os, "pidfd_open", raising=False)  # the looking loop instead
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        dead = harness.proven_dead(proc.pid, within=10)
        assert dead is not None
        assert killed_at <= dead[1] < killed_at + 10
        # A zombie now: it can no longer run, and says so.
        with open(f"/proc/{proc.pid}/stat") as stat:
            assert stat.read().rpartition(")")[2].split()[0] in ("Z", "X")
    finally:
        proc.kill()
        proc.wait()
    # Reaped: proven dead at once.
    dead = harness.proven_dead(proc.pid, within=10)
    assert dead is not None


@pytest.mark.timeout(30)
def test_a_process_that_lives_on_is_not_proven_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert harness.proven_dead(proc.pid, within=0.2) is None
    finally:
        proc.kill()
        proc.wait()
