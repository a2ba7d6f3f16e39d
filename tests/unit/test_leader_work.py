"""What happens to leader-only work when a leadership ends (memory transport, no database).

A hand-over (preemption, close) may let work finish while the node keeps its claim and
renews its lease; a lost leadership (connection, lease) cancels everything at once;
nothing the library waits for can wedge a node for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from contextlib import AsyncExitStack

import pytest

from notifelect import (
    ElectionGroup,
    Leadership,
    LeadershipLost,
    MemoryBus,
    Settings,
    current_leadership,
)
from notifelect._inbox import Inbox
from notifelect.messages import Kind, Message, Rank
from notifelect.protocol import Receive, Timer, TimerFired
from tests.support.waiting import until

FAST = Settings(
    election_interval=0.05,
    election_timeout=0.01,
    lease=0.5,
    leader_timeout=0.2,
    join_holdoff=0.05,
    callback_timeout=0.3,
    finish_timeout=5.0,
)


async def leader_of(
    stack: AsyncExitStack, bus: MemoryBus, settings: Settings = FAST
) -> ElectionGroup:
    group = await stack.enter_async_context(ElectionGroup.in_memory(bus, "g", settings))
    await group.wait_for_leadership(timeout=5)
    return group


async def test_a_call_that_may_finish_keeps_the_claim_until_it_has() -> None:
    # Preempted mid-call: the successor starts only once the call is over, and the lease
    # stays valid (renewed) throughout, though no new call is admitted.
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    async with AsyncExitStack() as stack:
        old = await leader_of(stack, bus)
        seen: list[tuple[str, float]] = []
        release = asyncio.Event()

        @old.leader_only(finish_on_loss=True)
        async def report() -> str:
            ls = current_leadership()
            assert ls is not None
            await release.wait()
            seen.append(("valid" if ls.is_valid else "lapsed", time.monotonic()))
            return "done"

        call = asyncio.ensure_future(report())
        await asyncio.sleep(0)  # let it start
        new = ElectionGroup.in_memory(bus, "g", FAST, priority=1)
        await stack.enter_async_context(new)
        await until([old, new], lambda: not old.is_leader, timeout=5)  # draining: gates shut
        assert old.leadership is not None
        # Longer than a lease: the old leader keeps renewing while the call runs.
        await asyncio.sleep(2 * FAST.lease)  # the length of the call, not a synchronisation
        assert old.leadership is not None
        assert old.leadership.is_valid
        assert not new.is_leader
        release.set()
        assert await call == "done"
        ls = await new.wait_for_leadership(timeout=5)
        assert seen[0][0] == "valid"
        assert ls.term > 1


@pytest.mark.parametrize("how", ["disconnect", "pause"])
async def test_a_call_that_may_finish_is_cancelled_when_the_leadership_is_lost(how: str) -> None:
    # Nothing vouches for the leadership any more: the call is cancelled like any other.
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    async with AsyncExitStack() as stack:
        group = await leader_of(stack, bus)
        started = asyncio.Event()

        @group.leader_only(finish_on_loss=True)
        async def report() -> None:
            started.set()
            await asyncio.Event().wait()

        call = asyncio.ensure_future(report())
        await started.wait()
        assert group.node is not None
        if how == "disconnect":
            bus.disconnect(group.node)
        else:
            bus.pause(group.node)  # renewals hang: the lease runs out
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(call, timeout=5)
        if how == "pause":
            bus.pause(group.node, False)


async def test_a_clean_hand_over_waits_for_a_plain_def_call_in_a_thread() -> None:
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    async with AsyncExitStack() as stack:
        old = ElectionGroup.in_memory(bus, "g", FAST)
        await old.__aenter__()
        await old.wait_for_leadership(timeout=5)
        other = await stack.enter_async_context(ElectionGroup.in_memory(bus, "g", FAST))
        entered = threading.Event()
        leave = threading.Event()
        finished: list[float] = []

        @old.leader_only
        def export() -> None:
            entered.set()
            leave.wait(10)
            finished.append(time.monotonic())

        thread = asyncio.ensure_future(asyncio.to_thread(export))
        await asyncio.to_thread(entered.wait, 5)
        closing = asyncio.ensure_future(old.close())
        done, _ = await asyncio.wait([closing], timeout=3 * FAST.lease)  # observation window
        assert not done  # still waiting for the thread
        assert not other.is_leader
        leave.set()
        await closing
        await thread
        await other.wait_for_leadership(timeout=5)
        assert len(finished) == 1


async def test_a_periodic_job_called_directly_is_gated_and_tracked() -> None:
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    async with AsyncExitStack() as stack:
        group = await leader_of(stack, bus)
        seen: list[Leadership | None] = []
        running = asyncio.Event()

        @group.every(3600, initial_delay=3600)  # the schedule never fires in this test
        async def sync_accounts() -> int:
            seen.append(current_leadership())
            running.set()
            await asyncio.Event().wait()
            return 1

        call = asyncio.ensure_future(sync_accounts())
        await running.wait()
        assert seen == [group.leadership]  # the README's example needs this
        assert group.node is not None
        bus.disconnect(group.node)  # leadership lost: the direct call is cancelled too
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(call, timeout=5)


async def test_hung_callbacks_cannot_wedge_the_node(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="notifelect")
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    async with AsyncExitStack() as stack:
        group = ElectionGroup.in_memory(bus, "g", FAST)
        let_go = asyncio.Event()
        stubborn_tasks: list[asyncio.Task[object]] = []

        @group.on_elected
        async def stubborn(ls: Leadership) -> None:
            me = asyncio.current_task()
            assert me is not None
            stubborn_tasks.append(me)
            while not let_go.is_set():
                try:
                    await let_go.wait()
                except asyncio.CancelledError:
                    if let_go.is_set():
                        raise
                    me.uncancel()  # ignores cancellation: a bug in user code

        @group.on_deposed
        async def slow(ls: Leadership) -> None:
            await asyncio.sleep(3600)

        await stack.enter_async_context(group)
        await group.wait_for_leadership(timeout=5)
        other = await stack.enter_async_context(ElectionGroup.in_memory(bus, "g", FAST))
        started = time.monotonic()
        assert group.node is not None
        bus.disconnect(group.node)
        # Both waits are bounded by callback_timeout; the group moves on and reconnects.
        await until([group, other], lambda: group.leadership is None, timeout=5)
        assert time.monotonic() - started < 4 * FAST.callback_timeout
        await until([group, other], lambda: group.leader is not None, timeout=5)
        messages = [r.getMessage() for r in caplog.records]
        assert any("cancelled leader work still running" in m for m in messages), messages
        assert any("on_deposed callback" in m and "took over" in m for m in messages), messages
        let_go.set()  # the end of the test: the stubborn callback may finish now
        await asyncio.wait(stubborn_tasks, timeout=5)


def test_the_message_queue_is_bounded_and_timers_go_first() -> None:
    inbox = Inbox(limit=3)
    message = Receive(Message(Kind.ELECTION, "g", Rank(0, 1)))
    assert all(inbox.put(message) for _ in range(3))
    assert not inbox.put(message)  # full: dropped and counted by the driver
    assert inbox.put(TimerFired(Timer.LEADER))  # the driver's own events always fit

    async def first() -> object:
        return await inbox.get()

    assert asyncio.run(first()) == TimerFired(Timer.LEADER)


async def test_a_stale_term_is_dropped_without_asking_the_database() -> None:
    settings = FAST.replace(lease=3.0, leader_timeout=2.0)  # no re-check during the test
    bus = MemoryBus(lease=settings.lease, leader_timeout=settings.leader_timeout)
    async with AsyncExitStack() as stack:
        leader = await leader_of(stack, bus, settings)
        follower = await stack.enter_async_context(ElectionGroup.in_memory(bus, "g", settings))
        await follower.wait_for_leader(timeout=5)
        # Its first heartbeat is checked against the database once; then it is believed.
        await until([follower], lambda: follower._driver.view.verified is not None, timeout=5)
        asked: list[object] = []
        transport = follower._transport
        original = transport.leader

        async def counting() -> object:
            asked.append(1)
            return await original()

        transport.leader = counting  # type: ignore[method-assign,assignment]
        assert leader.leadership is not None
        old = Message(Kind.HEARTBEAT, "g", Rank(0, 99), term=leader.leadership.term - 1)
        for _ in range(100):
            follower._driver._inbox.put(Receive(old))
        await until([follower], lambda: follower.stats["dropped:stale term"] >= 100, timeout=5)
        assert asked == []


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("how", ["pause", "disconnect"])
async def test_no_successor_acts_while_cancelled_work_still_runs(how: str, strict: bool) -> None:
    # The leader's work takes 0.3 s to clean up after it is cancelled. Whatever ends the
    # leadership (a lapsed lease, a lost connection), and with or without the fast crash
    # path, the successor starts only once that clean-up is over: the anchor (the
    # standby's evidence) goes only after the work has stopped.
    settings = FAST.replace(strict_takeover=strict, callback_timeout=5.0)
    bus = MemoryBus(lease=settings.lease, leader_timeout=settings.leader_timeout)
    acts: list[tuple[float, int]] = []

    def member() -> ElectionGroup:
        group = ElectionGroup.in_memory(bus, "g", settings)

        @group.on_elected
        async def work(ls: Leadership) -> None:
            try:
                while True:
                    acts.append((time.monotonic(), ls.node))
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                end = time.monotonic() + 0.3
                while time.monotonic() < end:  # a slow clean-up that still acts
                    acts.append((time.monotonic(), ls.node))
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.sleep(0.01)
                raise

        return group

    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(member())
        await a.wait_for_leadership(timeout=5)
        b = await stack.enter_async_context(member())
        assert a.node is not None
        await until([a, b], lambda: bus.watchers[a.node or 0] > 0)  # b stands by
        if how == "pause":
            bus.pause(a.node)
        else:
            bus.disconnect(a.node)
        await b.wait_for_leadership(timeout=10)
        began = min(t for t, node in acts if node == b.node)
        assert [t for t, node in acts if node == a.node and t >= began] == []
        if how == "pause":
            bus.pause(a.node, False)


async def test_a_hand_over_keeps_the_lease_while_cancelled_work_winds_down() -> None:
    # The leader leaves; its on_elected work takes longer to clean up than a lease (it
    # does not ignore cancellation, it is just slow). The lease is kept renewed meanwhile,
    # so the hand-over stays clean: the successor starts after the clean-up, not after the
    # old leader was fenced out for a lapsed lease.
    settings = FAST.replace(callback_timeout=5.0)
    bus = MemoryBus(lease=settings.lease, leader_timeout=settings.leader_timeout)
    cleanup = 3 * settings.lease
    ended: list[float] = []
    started: list[float] = []
    async with AsyncExitStack() as stack:
        old = ElectionGroup.in_memory(bus, "g", settings)

        @old.on_elected
        async def slow(ls: Leadership) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await asyncio.sleep(cleanup)  # the clean-up, well within callback_timeout
                ended.append(time.monotonic())
                raise

        await old.__aenter__()
        await old.wait_for_leadership(timeout=5)
        new = ElectionGroup.in_memory(bus, "g", settings)

        @new.on_elected
        async def mark(ls: Leadership) -> None:
            started.append(time.monotonic())

        await stack.enter_async_context(new)
        await new.wait_for_leader(timeout=5)
        await old.close()
        await new.wait_for_leadership(timeout=5)
        await until([new], lambda: bool(started), timeout=5)
        assert started[0] >= ended[0]
        assert old.stats["handovers"] == 1
        assert new.stats["dropped:silent leader"] == 0  # no lapse, no fencing
