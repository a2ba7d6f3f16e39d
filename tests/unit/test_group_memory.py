"""ElectionGroup and its decorators on the in-memory transport (no database)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import Any

import pytest

from notifelect import (
    ConfigurationError,
    ElectionGroup,
    GroupStateError,
    Leadership,
    LeadershipLost,
    MemoryBus,
    NotLeaderError,
    Settings,
    current_leadership,
    leader_only,
    on_deposed,
    on_elected,
)
from notifelect.testing import solo_leader
from tests.support.waiting import settled, until

FAST = Settings(election_interval=0.05, election_timeout=0.01, lease=0.5, leader_timeout=0.2)


async def join(
    stack: AsyncExitStack, bus: MemoryBus, n: int, name: str = "g"
) -> list[ElectionGroup]:
    groups = [ElectionGroup.in_memory(bus, name, FAST) for _ in range(n)]
    for g in groups:
        await stack.enter_async_context(g)
    await until(groups, lambda: sum(g.is_leader for g in groups) == 1)
    return groups


async def test_solo_leader_runs_leader_only_code() -> None:
    async with solo_leader("reports") as group:

        @group.leader_only
        async def report(x: int) -> int:
            leadership = current_leadership()
            assert leadership is not None
            return x * 2 + leadership.term * 0

        assert await report(21) == 42
        assert group.leader is not None
        assert group.leader.node == group.node


async def test_leader_only_skips_or_raises_on_followers() -> None:
    bus = MemoryBus()
    async with AsyncExitStack() as stack:
        groups = await join(stack, bus, 3)
        calls: list[int | None] = []
        for g in groups:

            @leader_only(g)
            async def job(g: ElectionGroup = g) -> int | None:
                return g.node

            calls.append(await job())
        leader = next(g for g in groups if g.is_leader)
        assert [c for c in calls if c is not None] == [leader.node]
        follower = next(g for g in groups if not g.is_leader)
        strict = follower.leader_only(raise_if_not_leader=True)(job)
        with pytest.raises(NotLeaderError, match="runs on the leader only"):
            await strict()


async def test_sync_functions_are_gated_too() -> None:
    async with solo_leader() as group:

        @group.leader_only
        def sync_job(a: int, b: int) -> int:
            return a + b

        assert sync_job(1, 2) == 3
        group.leadership._end("test")  # type: ignore[union-attr]
        assert sync_job(1, 2) is None


async def test_lifecycle_errors_are_exact() -> None:
    group = ElectionGroup.in_memory(MemoryBus(), "g", FAST)

    @group.leader_only
    async def job() -> int:
        return 1

    with pytest.raises(GroupStateError, match="before it was entered"):
        await job()
    async with group:
        with pytest.raises(GroupStateError, match="cannot be entered twice"):
            await group.__aenter__()
    with pytest.raises(GroupStateError, match="after it was closed"):
        await job()
    with pytest.raises(GroupStateError, match="cannot be entered twice or reopened"):
        await group.__aenter__()


async def test_decorators_check_arguments_when_applied() -> None:
    group = ElectionGroup.in_memory(MemoryBus(), "g", FAST)
    with pytest.raises(ConfigurationError, match="not callable"):
        group.leader_only(42)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="needs an ElectionGroup"):
        leader_only("group")  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="interval must be > 0"):
        group.every(0)
    with pytest.raises(ConfigurationError, match="not callable"):
        group.on_elected(3)  # type: ignore[call-overload]


async def test_on_elected_of_new_leader_starts_after_old_was_cancelled() -> None:
    bus = MemoryBus()
    log: list[tuple[str, int | None, int]] = []
    async with AsyncExitStack() as stack:
        groups = [ElectionGroup.in_memory(bus, "g", FAST) for _ in range(3)]
        for g in groups:

            @on_elected(g)
            async def leading(ls: Leadership, g: ElectionGroup = g) -> None:
                log.append(("start", g.node, ls.term))
                try:
                    await asyncio.Event().wait()
                finally:
                    log.append(("cancelled", g.node, ls.term))

            @on_deposed(g)
            async def deposed(ls: Leadership, g: ElectionGroup = g) -> None:
                log.append(("deposed", g.node, ls.term))

            await stack.enter_async_context(g)
        await until(groups, lambda: sum(g.is_leader for g in groups) == 1)
        await until(groups, lambda: log)
        first = next(g for g in groups if g.is_leader)
        rest = [g for g in groups if g is not first]
        await first.close()
        await until(rest, lambda: len([e for e in log if e[0] == "start"]) == 2)
        kinds = [(kind, node) for kind, node, _ in log]
        assert kinds.index(("cancelled", first.node)) < kinds.index(("deposed", first.node))
        second_start = [i for i, (k, _) in enumerate(kinds) if k == "start"][1]
        assert kinds.index(("deposed", first.node)) < second_start
        terms = [term for kind, _, term in log if kind == "start"]
        assert terms == sorted(terms)
        assert len(set(terms)) == 2


async def test_running_call_is_cancelled_with_leadership_lost() -> None:
    bus = MemoryBus()
    async with AsyncExitStack() as stack:
        groups = await join(stack, bus, 2)
        leader = next(g for g in groups if g.is_leader)
        started = asyncio.Event()

        @leader.leader_only
        async def long_job() -> None:
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(long_job())
        await asyncio.wait_for(started.wait(), 5)
        assert leader.node is not None
        bus.disconnect(leader.node)
        with pytest.raises(LeadershipLost, match="stopped leading"):
            await asyncio.wait_for(task, 5)


async def test_finish_on_loss_lets_the_call_finish_before_the_claim_is_released() -> None:
    bus = MemoryBus()
    async with AsyncExitStack() as stack:
        groups = await join(stack, bus, 2)
        leader = next(g for g in groups if g.is_leader)
        other = next(g for g in groups if g is not leader)
        release = asyncio.Event()
        started = asyncio.Event()
        order: list[str] = []

        @leader.leader_only(finish_on_loss=True)
        async def careful() -> str:
            started.set()
            await release.wait()
            order.append("finished")
            return "done"

        @other.on_elected
        async def took_over(ls: Leadership) -> None:
            order.append("next leader")

        task = asyncio.create_task(careful())
        await asyncio.wait_for(started.wait(), 5)
        closing = asyncio.create_task(leader.close())
        await until(groups, lambda: not leader.is_leader)
        assert not other.is_leader  # the claim is still held while the call runs
        release.set()
        assert await asyncio.wait_for(task, 5) == "done"
        await asyncio.wait_for(closing, 5)
        await until([other], lambda: other.is_leader)
        await until([other], lambda: order == ["finished", "next leader"])


async def test_failing_on_elected_makes_the_node_resign() -> None:
    bus = MemoryBus()
    async with AsyncExitStack() as stack:
        low = ElectionGroup.in_memory(bus, "g", FAST)
        high = ElectionGroup.in_memory(bus, "g", FAST, priority=5)

        @high.on_elected
        async def broken(ls: Leadership) -> None:
            raise RuntimeError("cannot lead")

        await stack.enter_async_context(low)
        await stack.enter_async_context(high)
        await until([low, high], lambda: low.is_leader, timeout=5)
        assert not high.is_leader


async def test_periodic_job_runs_only_on_the_leader_and_moves_on() -> None:
    bus = MemoryBus()
    runs: list[int | None] = []
    async with AsyncExitStack() as stack:
        groups = [ElectionGroup.in_memory(bus, "g", FAST) for _ in range(3)]
        for g in groups:

            @g.every(0.01)
            async def tick(g: ElectionGroup = g) -> None:
                assert g.is_leader
                runs.append(g.node)

            await stack.enter_async_context(g)
        await until(groups, lambda: len(runs) >= 3)
        first = next(g for g in groups if g.is_leader)
        assert set(runs) == {first.node}
        await first.close()
        rest = [g for g in groups if g is not first]
        await until(rest, lambda: len(set(runs)) == 2)
        second = next(g for g in rest if g.is_leader)
        assert set(runs) == {first.node, second.node}


async def test_lost_connection_closes_gates_at_once_and_rejoins() -> None:
    bus = MemoryBus()
    elected: list[tuple[int | None, int]] = []
    async with AsyncExitStack() as stack:
        groups = [ElectionGroup.in_memory(bus, "g", FAST) for _ in range(3)]
        for g in groups:

            @g.on_elected
            async def record(ls: Leadership, g: ElectionGroup = g) -> None:
                elected.append((g.node, ls.term))

            await stack.enter_async_context(g)
        await until(groups, lambda: settled(groups))
        leader = next(g for g in groups if g.is_leader)
        assert leader.node is not None
        node = leader.node
        await until(groups, lambda: bus.watchers[node] > 0)  # the standby is in place
        bus.disconnect(node)
        assert not leader.is_leader  # synchronously, before any event is processed
        # Another node takes over at once: the old leader closed its gates and let its
        # anchor go only after its work stopped, which is evidence enough...
        await until(groups, lambda: any(n != node for n, _ in bus.terms["g"]), timeout=5)
        # ...and the node reconnects with the same id and follows: equal priority never
        # takes leadership back from a healthy leader.
        await until(groups, lambda: leader.leader is not None, timeout=5)
        assert leader.node == node
        assert not leader.is_leader
        assert sum(g.is_leader for g in groups) == 1
        assert [t for _, t in bus.terms["g"]] == list(range(1, len(bus.terms["g"]) + 1))
        granted = set(bus.terms["g"])
        assert all(entry in granted for entry in elected)


async def test_paused_leader_lease_runs_out_and_is_fenced() -> None:
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    async with AsyncExitStack() as stack:
        groups = await join(stack, bus, 3)
        leader = next(g for g in groups if g.is_leader)
        assert leader.node is not None
        bus.pause(leader.node)
        await until(groups, lambda: not leader.is_leader, timeout=5)
        rest = [g for g in groups if g is not leader]
        await until(rest, lambda: sum(g.is_leader for g in rest) == 1, timeout=5)
        new = next(g for g in rest if g.is_leader)
        assert new.leadership is not None
        assert new.leadership.term > 1


async def test_retry_policy_retries_errors_but_never_swallows_cancellation() -> None:
    from notifelect import RetryPolicy
    from notifelect._retry import retrying

    policy = RetryPolicy(initial=0.001, maximum=0.001, jitter=0.0, attempts=3)
    calls: list[type[BaseException]] = []

    async def run(error: type[BaseException]) -> None:
        async for attempt in retrying(policy):
            with attempt:
                calls.append(error)
                raise error("boom")

    with pytest.raises(OSError, match="boom"):
        await run(OSError)
    assert calls == [OSError] * 3
    calls.clear()
    with pytest.raises(asyncio.CancelledError):
        await run(asyncio.CancelledError)
    assert calls == [asyncio.CancelledError]


@pytest.mark.timeout(20)
async def test_a_hand_over_to_a_successor_that_stalls_still_ends_with_one_leader() -> None:
    """The RESIGN goes to the named successor alone: if it is frozen just then, the other
    members see the term released, look for a leader, and once the better candidate has
    not acted, claim; the successor, resumed, finds the claim taken."""
    bus = MemoryBus(interval=FAST.election_interval)
    async with AsyncExitStack() as stack:
        groups = await join(stack, bus, 3)
        await until(groups, lambda: settled(groups), timeout=10)
        leader = next(g for g in groups if g.is_leader)
        rest = [g for g in groups if g is not leader]
        heir = max(rest, key=lambda g: (g.settings.priority, g.node or 0))  # rules.successor
        other = next(g for g in rest if g is not heir)
        assert heir.node is not None
        bus.pause(heir.node)
        await leader.close()
        await until([other], lambda: other.is_leader, timeout=10)
        assert not heir.is_leader
        bus.pause(heir.node, False)
        await until(rest, lambda: settled(rest), timeout=10)
        assert other.is_leader


@pytest.mark.timeout(30)
async def test_followers_let_a_leader_go_once_its_row_shows_the_term_released() -> None:
    """A hand-over's RESIGN goes to the successor alone; the other members learn of it
    from the leader row, which shows the term released. If the named successor does not
    claim (here: frozen), they must let the departed leader go at their next reading and
    look for a leader, not keep following it until their ``leader_timeout`` runs out."""
    settings = Settings(election_interval=0.05, election_timeout=0.01, lease=0.5, leader_timeout=5)
    bus = MemoryBus(lease=settings.lease, leader_timeout=settings.leader_timeout)
    async with AsyncExitStack() as stack:
        leader, heir, *rest = [
            ElectionGroup.in_memory(bus, "g", settings, priority=priority)
            for priority in (2, 1, 0, 0)
        ]
        for g in (leader, heir, *rest):
            await stack.enter_async_context(g)
        everyone = [leader, heir, *rest]
        await until(everyone, lambda: settled(everyone), timeout=10)
        assert heir.node is not None
        bus.pause(heir.node)  # the successor the leader names, frozen like a stopped process
        stack.callback(bus.pause, heir.node, False)
        old = leader.node
        await leader.close()
        # One reading of the released row, not a leader_timeout, later.
        await until(
            rest,
            lambda: all(g.leader is None or g.leader.node != old for g in rest),
            timeout=1.0,
            what="the followers let the departed leader go",
        )
        # Someone leads well within the followers' patience.
        await until(rest, lambda: any(g.is_leader for g in rest), timeout=4.0)


class _Refused(Exception):
    """What a database driver raises for an error the server reported: it carries an
    SQLSTATE (53200: out of shared memory, a lock table another client filled)."""

    sqlstate = "53200"


@pytest.mark.timeout(30)
async def test_an_error_the_database_reported_is_said_without_a_traceback(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="notifelect")
    group = ElectionGroup.in_memory(MemoryBus(), "g", FAST)
    transport = group._transport
    survey = transport.survey
    refused = asyncio.Event()

    async def survey_refused_once() -> Any:
        if not refused.is_set():
            refused.set()
            raise _Refused("out of shared memory")
        return await survey()

    monkeypatch.setattr(transport, "survey", survey_refused_once)
    async with group:
        await asyncio.wait_for(refused.wait(), timeout=10)
        await until([group], lambda: group.is_leader, what="a leader after the refusal")
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []  # no traceback
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("out of shared memory" in m for m in said), said
