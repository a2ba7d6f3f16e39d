"""The health state for readiness probes, and the Prometheus metrics extra."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack

from prometheus_client import CollectorRegistry, generate_latest

from notifelect import (
    ElectionGroup,
    Health,
    HealthState,
    MemoryBus,
    RetryPolicy,
    Settings,
    messages,
)
from notifelect.health import VACANCY_BUCKETS, Vacancies
from notifelect.messages import Kind, Message
from notifelect.metrics import COUNTERS, register
from notifelect.transport.memory import MemoryTransport
from tests.support.exposition import sample, samples
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


def watch_health(group: ElectionGroup) -> list[Health]:
    """Every health snapshot of ``group`` at each change it reports, from now on."""
    seen: list[Health] = []
    notify = group._driver._notify

    def record() -> None:
        notify()
        seen.append(group.health)

    group._driver._notify = record
    return seen


async def test_a_follower_stays_ready_through_a_failover_and_times_the_vacancy() -> None:
    bus = MemoryBus()
    async with AsyncExitStack() as stack:
        leader = await stack.enter_async_context(ElectionGroup.in_memory(bus, "g", FAST))
        await leader.wait_for_leadership(timeout=5)
        follower = await stack.enter_async_context(ElectionGroup.in_memory(bus, "g", FAST))
        await follower.wait_for_leader(timeout=5)
        assert follower.vacancies.count == 0  # joining a group is no vacancy
        await until([follower], lambda: follower.health.leader_renewal_age is not None)
        age = follower.health.leader_renewal_age
        assert age is not None
        assert 0 <= age < FAST.leader_timeout
        seen = watch_health(follower)
        assert leader.node is not None
        bus.kill(leader.node)  # its process ends: no resignation
        await follower.wait_for_leadership(timeout=10)
    assert any(not h.has_leader for h in seen)  # the election was seen...
    assert all(h.ready for h in seen if h.state is not HealthState.CLOSED)  # ...and stayed ready
    assert seen[-1].state is HealthState.CLOSED or seen[-1].is_leader
    vacancies = follower.vacancies
    assert vacancies.count == 1
    assert vacancies.last is not None
    # The takeover waits out the dead leader's lease (no proof of its end here).
    assert FAST.lease - 0.05 <= vacancies.last < 10
    assert vacancies.total == vacancies.last


async def test_health_as_dict_is_json_safe_in_every_state() -> None:
    bus = MemoryBus()
    group = ElectionGroup.in_memory(bus, "g", FAST)
    documents = [group.health.as_dict()]
    async with group:
        await group.wait_for_leadership(timeout=5)
        documents.append(group.health.as_dict())
    documents.append(group.health.as_dict())
    failed = Health(HealthState.FAILED, error=OSError("refused"), group="g", node=1)
    documents.append(failed.as_dict())
    decoded = [json.loads(json.dumps(d)) for d in documents]
    assert [d["state"] for d in decoded] == ["new", "leading", "closed", "failed"]
    assert [d["ready"] for d in decoded] == [False, True, False, False]
    leading = decoded[1]
    assert leading["group"] == "g"
    assert leading["node"] == group.node
    assert leading["is_leader"]
    assert leading["has_leader"]
    assert leading["leader"]["node"] == group.node
    assert leading["leader"]["term"] >= 1
    assert isinstance(leading["leader"]["since"], str)  # ISO 8601
    assert 0 <= leading["leader_renewal_age"] <= FAST.lease
    assert decoded[3]["error"] == "OSError('refused')"


def test_vacancies_count_into_cumulative_buckets() -> None:
    vacancies = Vacancies()
    for seconds in (0.004, 1.2, 1.5, 100.0):
        vacancies.observe(seconds)
    buckets = dict(vacancies.cumulative())
    assert buckets[0.01] == 1
    assert buckets[1.0] == 1
    assert buckets[1.5] == 3  # bounds are inclusive
    assert buckets[VACANCY_BUCKETS[-1]] == 3
    assert buckets[float("inf")] == vacancies.count == 4
    assert vacancies.last == 100.0


async def test_the_metrics_describe_leader_and_follower() -> None:
    bus = MemoryBus()
    registry = CollectorRegistry()
    async with AsyncExitStack() as stack:
        leader = await stack.enter_async_context(ElectionGroup.in_memory(bus, "g", FAST))
        await leader.wait_for_leadership(timeout=5)
        follower = await stack.enter_async_context(ElectionGroup.in_memory(bus, "g", FAST))
        await follower.wait_for_leader(timeout=5)
        # The leader row, read by the follower's tick (host and pid).
        await until([follower], lambda: follower.leader is not None and follower.leader.host)
        # Nothing is sent on the channel while a group is settled: send one message.
        assert leader.rank is not None
        alive = messages.encode(Message(Kind.ALIVE, "g", leader.rank))
        await leader._transport.publish(alive)
        await until([follower], lambda: follower.stats["received"] >= 1)
        register(leader, follower, registry=registry)
        text = generate_latest(registry).decode()
        assert leader.leadership is not None
        term = leader.leadership.term
    lines = samples(text)
    assert leader.instance != follower.instance  # one process, two members of "g"

    def value(name: str, group: ElectionGroup, **labels: object) -> float:
        return sample(lines, name, group, **labels)

    assert value("notifelect_is_leader", leader) == 1.0
    assert value("notifelect_is_leader", follower) == 0.0
    assert value("notifelect_ready", follower) == 1.0
    assert value("notifelect_leader_present", follower) == 1.0
    assert value("notifelect_term", follower) == value("notifelect_term", leader) == term
    leader_labels = {"leader_node": leader.node, "leader_host": leader._member.host, "term": term}
    assert value("notifelect_leader_info", follower, node_id=follower.node, **leader_labels) == 1
    member = follower._member
    assert (
        value(
            "notifelect_node_info",
            follower,
            node_id=follower.node,
            host=member.host,
            pid=member.pid,
            priority=0,
        )
        == 1.0
    )
    assert 0 <= value("notifelect_leader_renewal_age_seconds", follower) < FAST.leader_timeout
    assert value("notifelect_leader_vacancy_seconds_count", follower) == 0.0
    assert value("notifelect_leader_vacancy_seconds_bucket", follower, le="+Inf") == 0.0
    assert 0 < value("notifelect_lease_remaining_seconds", leader) <= FAST.lease
    assert value("notifelect_elected_total", leader) == 1.0
    assert value("notifelect_messages_received_total", follower) >= 1
    for name in COUNTERS:
        assert f"{name}_total" in text


async def test_a_group_without_a_leader_exports_no_leader_info() -> None:
    registry = CollectorRegistry()
    group = ElectionGroup.in_memory(MemoryBus(), "lonely", FAST)
    register(group, registry=registry)
    lines = samples(generate_latest(registry).decode())
    assert sample(lines, "notifelect_leader_present", group) == 0.0
    assert sample(lines, "notifelect_ready", group) == 0.0
    names = {name for name, _ in lines}
    assert "notifelect_node_info" in names
    assert "notifelect_leader_info" not in names
    assert "notifelect_leader_renewal_age_seconds" not in names


def test_a_leadership_counts_late_renewals_and_a_lapse() -> None:
    from notifelect._clock import now
    from notifelect.leadership import Leadership

    names = Settings().names
    t = now() - 100.0  # a lease granted long ago, renewed now and then
    ls = Leadership("g", names, term=1, node=1, valid_until=t + 1.0)  # lease 1.0 from t
    ls._renewed(t + 0.4, 1.0)  # 0.6 of the lease left: on time
    ls._renewed(t + 0.9, 1.0)  # 0.5 left: on time
    ls._renewed(t + 1.6, 1.0)  # 0.3 left: late
    ls._renewed(t + 1.2, 1.0)  # older than the last one: not a renewal
    assert (ls._renewals, ls._late_renewals) == (3, 1)
    ls._end("stopped")  # its lease ran out (at t + 2.6) before it was ended
    assert ls._lapsed
    fresh = Leadership("g", names, term=2, node=1, valid_until=now() + 60)
    fresh._end("stopped")
    assert not fresh._lapsed
