"""Every example runs as written (the seed's simulation is run by tests/integration)."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections import defaultdict
from contextlib import AsyncExitStack
from itertools import pairwise
from typing import Any

import asyncpg
import httpx
import pytest

from tests.cli.running import ROOT, Process, clean_env, spawn
from tests.support.servers import free_port

EXAMPLES = ROOT / "examples"


async def get_leader(client: httpx.AsyncClient, port: int) -> dict[str, Any] | None:
    try:
        response = await client.get(f"http://127.0.0.1:{port}/leader", timeout=2)
    except httpx.TransportError:
        return None  # not listening yet, or shutting down
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def poll(probe: Any, *, timeout: float, what: str) -> Any:
    """Poll an async probe until it returns a truthy value (HTTP has no change events)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {value!r})")
        await asyncio.sleep(0.1)


@pytest.mark.timeout(240)
async def test_fastapi_replicas_agree_on_one_leader_and_hand_over(dsn: str) -> None:
    ports = [free_port(), free_port()]
    env = clean_env(DATABASE_URL=dsn)
    script = str(EXAMPLES / "fastapi_app.py")
    async with AsyncExitStack() as stack:
        replicas: list[Process] = [
            await stack.enter_async_context(
                spawn(sys.executable, script, "--port", str(port), "--run-for", "90", env=env)
            )
            for port in ports
        ]
        client = await stack.enter_async_context(httpx.AsyncClient())

        async def views() -> list[dict[str, Any]] | None:
            answers = [await get_leader(client, port) for port in ports]
            if any(a is None for a in answers):
                return None
            views = [a for a in answers if a is not None]
            leaders = [v for v in views if v["is_leader"]]
            agreed = {(v["leader"] or {}).get("node") for v in views}
            if len(leaders) != 1 or agreed != {leaders[0]["node"]}:
                return None
            return views if leaders[0]["cache_refreshes"] >= 1 else None

        settled = await poll(views, timeout=60, what="one leader both replicas agree on")
        index = next(i for i, v in enumerate(settled) if v["is_leader"])
        leader, follower = settled[index], settled[1 - index]
        assert leader["term"] == follower["term"]
        assert leader["leader"]["pid"] == replicas[index].proc.pid
        assert not follower["is_leader"]
        # Both replicas are ready; only the leader passes the leader-routing check.
        for i, port in enumerate(ports):
            ready = await client.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            assert ready.status_code == 200
            assert ready.json()["ready"]
            routed = await client.get(f"http://127.0.0.1:{port}/healthz/leader", timeout=2)
            assert routed.status_code == (200 if i == index else 503)
            assert routed.json()["leader"]["term"] == leader["term"]

        # A leader-only request to the follower is redirected to the leader's URL.
        answer = await client.post(f"http://127.0.0.1:{ports[1 - index]}/rebuild")
        assert answer.status_code == 307
        assert answer.headers["location"] == f"http://127.0.0.1:{ports[index]}/rebuild"
        assert follower["leader"]["url"] == f"http://127.0.0.1:{ports[index]}"
        followed = await client.post(
            f"http://127.0.0.1:{ports[1 - index]}/rebuild", follow_redirects=True
        )
        assert followed.json() == {"rebuilt_by": leader["node"], "term": leader["term"]}

        # A graceful shutdown of the leader (SIGINT, as uvicorn gets on a deploy) hands over.
        assert await replicas[index].stop(timeout=60) == 0, replicas[index].output
        assert "resigned" in replicas[index].output  # the lifespan left the group
        other_port = ports[1 - index]

        async def took_over() -> bool:
            view = await get_leader(client, other_port)
            return (
                view is not None
                and view["is_leader"]
                and view["term"] > leader["term"]
                # the leader-only job moved over with the leadership
                and view["cache_refreshes"] > follower["cache_refreshes"]
            )

        await poll(took_over, timeout=60, what="the other replica leading")
        assert await replicas[1 - index].stop(timeout=60) == 0, replicas[1 - index].output


def reports_by_term(replicas: list[Process]) -> dict[int, set[int]]:
    """Term -> the nodes that printed a report in it."""
    found: dict[int, set[int]] = defaultdict(set)
    for replica in replicas:
        for line in replica.stdout:
            if match := re.match(r"node (\d+): report sent \(term (\d+)\)", line):
                found[int(match.group(2))].add(int(match.group(1)))
    return found


def ran_send_report(replica: Process) -> list[str]:
    """APScheduler's log lines about ``send_report`` running (or missing a run)."""
    return [
        line
        for line in replica.stderr
        if line.startswith("apscheduler.")
        and ('Running job "send_report' in line or 'Run time of job "send_report' in line)
    ]


@pytest.mark.timeout(180)
async def test_apscheduler_runs_on_the_leader_only_and_continues_after_a_kill(dsn: str) -> None:
    env = clean_env(DATABASE_URL=dsn)
    argv = (sys.executable, str(EXAMPLES / "apscheduler_jobs.py"), "--every", "1")
    async with AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(spawn(*argv, "--run-for", "60", env=env))
            for _ in range(3)
        ]

        def reporting() -> list[Process]:
            return [r for r in replicas if any("report sent" in line for line in r.stdout)]

        await poll(
            _async(
                lambda: (
                    len(reports_by_term(replicas)) == 1
                    and any(len(ran_send_report(r)) >= 3 for r in replicas)
                )
            ),
            timeout=60,
            what="three runs",
        )
        (leader,) = reporting()
        followers = [r for r in replicas if r is not leader]
        # The followers' schedulers are paused: no run, no line per tick (their local,
        # unbound scheduler runs meanwhile, every second).
        for follower in followers:
            assert ran_send_report(follower) == [], follower.output
            assert any("local cache refreshed" in line for line in follower.stdout)
        leader.proc.send_signal(signal.SIGKILL)
        await leader.wait(timeout=20)
        await poll(
            _async(lambda: len(reports_by_term(replicas)) >= 2
                   and sum(len(ran_send_report(f)) for f in followers) >= 3),
            timeout=60,
            what="another replica continuing the reports",
        )  # fmt: skip
        for follower in followers:
            assert await follower.stop(timeout=60) == 0, follower.output
    reports = reports_by_term(replicas)
    assert all(len(nodes) == 1 for nodes in reports.values()), reports  # one node per term
    took_over = [f for f in followers if ran_send_report(f)]
    assert len(took_over) == 1

    conn = await asyncpg.connect(dsn)
    try:
        runs = await conn.fetch(
            "SELECT scheduled_at, started_at, ended_at, term, outcome FROM notifelect_job_run"
            " WHERE namespace = 'apscheduler-example' AND job = 'apscheduler:send_report'"
            " ORDER BY scheduled_at"
        )
    finally:
        await conn.close()
    assert len({r["term"] for r in runs}) == 2
    steps = [(b["scheduled_at"] - a["scheduled_at"]).total_seconds() for a, b in pairwise(runs)]
    # The new leader continued the recorded schedule: never an extra run, never earlier.
    assert all(step >= 1.0 and abs(step - round(step)) < 1e-3 for step in steps), steps
    assert all(
        b["started_at"] >= a["ended_at"]
        for a, b in pairwise(runs)
        if a["ended_at"] is not None and b["outcome"] != "missed"
    )


def _async(predicate: Any) -> Any:
    async def probe() -> Any:
        return predicate()

    return probe


@pytest.mark.timeout(120)
async def test_plain_asyncpg_replicas_write_fenced_ticks(dsn: str) -> None:
    env = clean_env(DATABASE_URL=dsn)
    argv = (sys.executable, str(EXAMPLES / "plain_asyncpg.py"), "--every", "0.1")
    async with AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(spawn(*argv, "--run-for", "5", env=env))
            for _ in range(2)
        ]
        codes = [await r.wait(timeout=90) for r in replicas]
    assert codes == [0, 0], [r.output for r in replicas]
    for replica in replicas:
        assert any("joined group 'asyncpg-example'" in line for line in replica.stdout)
        assert any(line.endswith(": left") for line in replica.stdout), replica.output
    assert any("elected, term" in line for r in replicas for line in r.stdout)
    assert any("no longer leads term" in line for r in replicas for line in r.stdout)

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT term, array_agg(DISTINCT node) AS nodes, count(*) AS ticks"
            " FROM example_ticks GROUP BY term"
        )
    finally:
        await conn.close()
    assert rows
    assert all(len(row["nodes"]) == 1 for row in rows)  # one writer per term
