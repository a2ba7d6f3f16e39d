"""The health state for readiness probes, and the Prometheus metrics extra."""

from __future__ import annotations

from contextlib import AsyncExitStack

from prometheus_client import CollectorRegistry, generate_latest

from notifelect import ElectionGroup, HealthState, MemoryBus, RetryPolicy, Settings
from notifelect.metrics import COUNTERS, register
from notifelect.transport.memory import MemoryTransport
from tests.support.waiting import until

FAST = Settings(election_interval=0.05, election_timeout=0.01, lease=0.5, leader_timeout=0.2)


def state(group: ElectionGroup) -> HealthState:
    return group.health.state


def ready(group: ElectionGroup) -> bool:
    return group.health.ready


async def test_health_follows_the_life_of_a_group() -> None:
    bus = MemoryBus()
    async with AsyncExitStack() as stack:
        leader = ElectionGroup.in_memory(bus, "g", FAST)
        assert state(leader) is HealthState.NEW
        assert not ready(leader)
        await stack.enter_async_context(leader)
        await leader.wait_for_leadership(timeout=5)
        assert state(leader) is HealthState.LEADING
        assert ready(leader)
        follower = await stack.enter_async_context(ElectionGroup.in_memory(bus, "g", FAST))
        await follower.wait_for_leader(timeout=5)
        health = follower.health
        assert health.state is HealthState.FOLLOWING
        assert health.leader is not None
        assert health.leader.node == leader.node
        await follower.close()
        assert state(follower) is HealthState.CLOSED


async def test_a_group_that_gave_up_reconnecting_is_failed_and_not_open() -> None:
    bus = MemoryBus()
    settings = FAST.replace(retry=RetryPolicy(initial=0.01, maximum=0.01, jitter=0, attempts=2))
    async with ElectionGroup.in_memory(bus, "g", settings) as group:
        await group.wait_for_leadership(timeout=5)
        assert group.node is not None
        transport = group._transport
        assert isinstance(transport, MemoryTransport)
        transport.dead = True  # every reconnect fails from now on
        bus.disconnect(group.node)
        await until([group], lambda: group.health.state is HealthState.FAILED, timeout=5)
        health = group.health
        assert health.error is not None
        assert not health.ready
        assert not group.is_open


async def test_the_metrics_describe_leader_and_follower() -> None:
    bus = MemoryBus()
    registry = CollectorRegistry()
    async with AsyncExitStack() as stack:
        leader = await stack.enter_async_context(ElectionGroup.in_memory(bus, "g", FAST))
        await leader.wait_for_leadership(timeout=5)
        follower = await stack.enter_async_context(ElectionGroup.in_memory(bus, "g", FAST))
        await follower.wait_for_leader(timeout=5)
        await until([follower], lambda: follower.stats["received"] >= 1)  # a heartbeat
        register(leader, follower, registry=registry)
        text = generate_latest(registry).decode()
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
             if line and not line.startswith("#")}  # fmt: skip

    def value(name: str, group: ElectionGroup) -> float:
        return lines[f'{name}{{group="g",node="{group.node}"}}']

    assert value("notifelect_is_leader", leader) == 1.0
    assert value("notifelect_is_leader", follower) == 0.0
    assert value("notifelect_ready", follower) == 1.0
    assert value("notifelect_term", follower) == value("notifelect_term", leader) >= 1
    assert 0 < value("notifelect_lease_remaining_seconds", leader) <= FAST.lease
    assert value("notifelect_elected_total", leader) == 1.0
    assert value("notifelect_messages_received_total", follower) >= 1
    for name in COUNTERS:
        assert f"{name}_total" in text
