"""``notifelect demo``: runs its script on an embedded PostgreSQL and leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.running import ROOT, clean_env


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, already dead but not reaped, counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


class DemoRun:
    """The demo as a user starts it: its own session, like a terminal's foreground job."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "notifelect", "demo", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),  # no PG* variables: the embedded PostgreSQL
            cwd=ROOT,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.root: Path | None = None
        self.postmaster: int | None = None
        self.nodes: list[int] = []

    def read_until(self, marker: str) -> None:
        """Read output lines until one contains ``marker`` (or the end of the output)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if found := re.search(r"embedded PostgreSQL in (\S+)", line):
                self.root = Path(found.group(1))
            if found := re.search(r"node processes \(pids ([\d, ]+)\)", line):
                self.nodes = [int(p) for p in found.group(1).split(", ")]
                assert self.root is not None
                pidfile = self.root / "postmaster.pid"
                self.postmaster = int(pidfile.read_text().split()[0])
            if marker in line:
                return

    def finish(self, timeout: float) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        self.lines.append(out)
        return self.proc.returncode, "".join(self.lines), err

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in self.nodes:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)

    def assert_nothing_left(self) -> None:
        assert self.root is not None
        assert self.nodes
        assert self.postmaster is not None
        assert not self.root.exists(), f"{self.root} was not removed"
        assert [pid for pid in self.nodes if alive(pid)] == []
        assert not alive(self.postmaster), "the embedded PostgreSQL still runs"
        assert processes_mentioning(str(self.root)) == []


@pytest.mark.timeout(180)
def test_demo_completes_its_script_and_leaves_nothing_behind() -> None:
    # Five nodes, as the README's command runs it: the paused leader then has several
    # followers, and whichever takes the freed claim must still wait out its lease.
    demo = DemoRun("--nodes", "5")
    try:
        demo.read_until("started 5 node processes")
        rc, out, err = demo.finish(timeout=150)
    finally:
        demo.kill()
    assert rc == 0, out + err
    for step in ("step 1/3", "step 2/3", "step 3/3"):
        assert step in out
    figures = re.findall(r"failover: ([\d.]+) ms", out)
    assert len(figures) == 3, out
    assert all(float(f) > 0 for f in figures)
    assert re.search(r"leader killed \(SIGKILL\)\s+[\d.]+ ms", out)
    assert re.search(r"leader paused \(SIGSTOP\)\s+[\d.]+ ms", out)
    assert re.search(r"leader exited cleanly\s+[\d.]+ ms", out)
    assert "lease 1s" in out  # the demo says its settings are the quick ones
    assert out.count("no overlap:") == 2, out
    assert "OVERLAP" not in out
    assert "exited unexpectedly" not in out
    assert "what 'python -m notifelect status' shows now" in out
    assert "removed the embedded PostgreSQL" in out
    demo.assert_nothing_left()


@pytest.mark.timeout(120)
def test_demo_interrupted_by_ctrl_c_leaves_nothing_behind() -> None:
    demo = DemoRun("--nodes", "3")
    try:
        demo.read_until("step 1/3")
        assert demo.proc.poll() is None
        os.killpg(demo.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        rc, out, err = demo.finish(timeout=60)
    finally:
        demo.kill()
    assert rc == 130, out + err
    assert "interrupted" in out
    assert "Traceback" not in err
    demo.assert_nothing_left()


@pytest.mark.timeout(120)
def test_demo_terminated_leaves_nothing_behind() -> None:
    demo = DemoRun("--nodes", "3")
    try:
        demo.read_until("all 3 nodes joined")
        os.kill(demo.proc.pid, signal.SIGTERM)
        rc, out, err = demo.finish(timeout=60)
    finally:
        demo.kill()
    assert rc == 130, out + err
    assert "Traceback" not in err
    demo.assert_nothing_left()


@pytest.mark.timeout(30)
def test_demo_needs_three_nodes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "notifelect", "demo", "--nodes", "2"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )
    assert result.returncode == 2
    assert "--nodes 3 or more" in result.stderr
