"""Running the command line and the examples as subprocesses, from async tests.

The election groups of a test live on its event loop, so a subprocess is awaited, never
waited for synchronously (that would stall their heartbeats).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_PG_ENV = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSERVICE")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without PG* variables (so only what a test passes is used)."""
    env = {k: v for k, v in os.environ.items() if k not in _PG_ENV and k != "DATABASE_URL"}
    env.update(extra)
    return env


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str


async def run_cli(*args: str, timeout: float = 30, env: dict[str, str] | None = None) -> Result:
    """``python -m notifelect ARGS`` to completion."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "notifelect",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or clean_env(),
        cwd=ROOT,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


class Process:
    """A running subprocess whose output lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = asyncio.Event()
        self._readers = [
            asyncio.create_task(self._read(proc.stdout, self.stdout)),
            asyncio.create_task(self._read(proc.stderr, self.stderr)),
        ]

    async def _read(self, stream: asyncio.StreamReader | None, into: list[str]) -> None:
        assert stream is not None
        async for raw in stream:
            into.append(raw.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self._changed.set()

    @property
    def output(self) -> str:
        return "\n".join(self.stdout) + "\n--- stderr:\n" + "\n".join(self.stderr)

    async def wait_for(self, predicate: Callable[[], object], *, timeout: float, what: str) -> None:
        """Wait until ``predicate()`` holds, re-checking whenever a line arrives."""
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()  # before the check: a line arriving after it wakes us
            if predicate():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._pending():
                raise AssertionError(f"{what}: not seen within {timeout}s\n{self.output}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self._changed.wait()

    def _pending(self) -> bool:
        return not all(r.done() for r in self._readers)

    async def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 20) -> int:
        """Send ``sig`` (if still running) and wait for the exit; returns the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
        return await self.wait(timeout)

    async def wait(self, timeout: float = 20) -> int:
        try:
            async with asyncio.timeout(timeout):
                rc = await self.proc.wait()
                await asyncio.gather(*self._readers)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"process did not exit within {timeout}s\n{self.output}") from None
        return rc


@contextlib.asynccontextmanager
async def spawn(*argv: str, env: dict[str, str] | None = None) -> AsyncIterator[Process]:
    """Start ``argv`` (killed on exit from the block if still running)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or clean_env(),
        cwd=ROOT,
    )
    process = Process(proc)
    try:
        yield process
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for reader in process._readers:
            reader.cancel()
        await asyncio.gather(*process._readers, return_exceptions=True)


def cli_argv(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "notifelect", *args)
