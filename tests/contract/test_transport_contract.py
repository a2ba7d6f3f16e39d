"""The transport contract, run against the memory transport and PostgreSQL alike.

What the election relies on from a transport (``notifelect.transport.base``): one claim
holder per group, terms that only grow, successors that wait out an unclean end, a
standby's view of how a leadership ended, surveys, renewals that fail once the term is
gone, and delivery of messages to the other members.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from notifelect import _clock
from notifelect.schema import Names
from notifelect.transport.base import Freed, Granted, LeaseLostError, Member, Transport
from notifelect.transport.connect import connector_for
from notifelect.transport.memory import MemoryBus
from notifelect.transport.postgres import PostgresTransport

LEASE = 0.4
LEADER_TIMEOUT = 0.4

Factory = Callable[..., Transport]


@pytest.fixture(params=["memory", "postgres"])
async def make(request: pytest.FixtureRequest, namespace: str, dsn: str) -> AsyncIterator[Factory]:
    """A factory of transports of one group, on the kind the test is parametrized with."""
    made: list[Transport] = []
    if request.param == "memory":
        bus = MemoryBus(lease=LEASE, leader_timeout=LEADER_TIMEOUT)

        def factory(priority: int = 0, *, strict: bool = True) -> Transport:
            transport = bus.transport(namespace, Member(priority), strict_takeover=strict)
            made.append(transport)
            return transport

    else:
        connect, _ = connector_for(dsn)

        def factory(priority: int = 0, *, strict: bool = True) -> Transport:
            transport = PostgresTransport(
                namespace=namespace,
                names=Names(),
                member=Member(priority),
                lease=LEASE,
                leader_timeout=LEADER_TIMEOUT,
                strict_takeover=strict,
                connect=connect,
            )
            made.append(transport)
            return transport

    yield factory
    for transport in made:
        await transport.close()


class Node:
    """A transport opened with handlers that record what it hears."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.heard: list[str] = []
        self.lost = asyncio.Event()
        self.node = 0

    async def open(self) -> Node:
        self.node = await self.transport.open(self.heard.append, lambda _: self.lost.set())
        return self


async def opened(make: Factory, *args: object, **kwargs: object) -> Node:
    return await Node(make(*args, **kwargs)).open()


async def test_one_holder_and_growing_terms(make: Factory) -> None:
    a, b = await opened(make), await opened(make)
    assert a.node != b.node
    granted = await a.transport.claim(fence=False)
    assert granted is not None
    assert await b.transport.claim(fence=False) is None  # held
    await a.transport.release(granted.term, "test")
    started = _clock.now()
    again = await b.transport.claim(fence=False)
    assert again is not None
    assert again.term > granted.term
    assert _clock.now() - started < LEASE  # a clean release: no wait


async def claim_once_free(transport: Transport, timeout: float = 10.0) -> tuple[Granted, float]:
    """Claim as soon as the claim is free (an aborted node gives it back shortly, on a
    shared session); return the grant and how long the granted claim took."""
    deadline = _clock.now() + timeout
    while True:
        started = _clock.now()
        granted = await transport.claim(fence=False)
        if granted is not None:
            return granted, _clock.now() - started
        assert _clock.now() < deadline, "the claim was never free"
        await asyncio.sleep(0.01)  # polling the claim, which only the database knows


async def test_an_unclean_end_is_waited_out(make: Factory) -> None:
    a, b = await opened(make), await opened(make)
    granted = await a.transport.claim(fence=False)
    assert granted is not None
    a.transport.abort()  # the session is gone; nothing says the process stopped
    await asyncio.wait_for(a.lost.wait(), 5)
    again, took = await claim_once_free(b.transport)
    assert took >= LEASE
    assert again.term > granted.term


async def test_a_standby_sees_how_a_leadership_ended(make: Factory) -> None:
    # Clean: released. Process gone after its work stopped: died, and with the fast path
    # the evidence spares the wait. A leader already gone when the watch began: unobserved.
    a, b = await opened(make), await opened(make, strict=False)
    granted = await a.transport.claim(fence=False)
    assert granted is not None
    watching = asyncio.ensure_future(b.transport.watch(a.node))
    await asyncio.sleep(0.2)  # let the watch begin (its first look must see the anchor)
    a.transport.abort()
    a.transport.release_anchor()
    assert await asyncio.wait_for(watching, 5) is Freed.DIED
    started = _clock.now()
    again = await b.transport.claim(fence=False, evidence=a.node)
    assert again is not None
    assert _clock.now() - started < LEASE
    assert await b.transport.watch(a.node) is Freed.UNOBSERVED  # gone before it looked

    c = await opened(make)
    watching = asyncio.ensure_future(c.transport.watch(b.node))
    await asyncio.sleep(0.2)
    await b.transport.release(again.term, "test")
    await b.transport.close()
    assert await asyncio.wait_for(watching, 5) is Freed.RELEASED


async def test_survey_says_whether_held_and_who_should_lead(make: Factory) -> None:
    low, high = await opened(make, 0), await opened(make, 5)
    held, best, leader = await low.transport.survey()
    assert not held
    assert best == (5, high.node)
    assert leader is None
    granted = await low.transport.claim(fence=False)
    assert granted is not None
    held, best, leader = await high.transport.survey()
    assert held
    assert best == (5, high.node)  # the recorded leader itself does not count
    # A newcomer follows it at once; the standby it names (the only other member)
    # watches it from then on.
    assert leader == (0, low.node, granted.term, high.node)
    await low.transport.release(granted.term, "test")
    held, best, leader = await high.transport.survey()
    assert not held
    assert leader is None


async def test_renewal_fails_once_the_term_is_gone(make: Factory) -> None:
    a, b = await opened(make), await opened(make)
    granted = await a.transport.claim(fence=False)
    assert granted is not None
    assert (await a.transport.renew(granted.term)).standby == b.node
    record = await b.transport.leader()
    assert record is not None
    assert (record.node, record.term, record.released) == (a.node, granted.term, False)
    assert record.renewed_age is not None
    assert 0 <= record.renewed_age < LEASE
    await a.transport.release(granted.term, "test")
    with pytest.raises(LeaseLostError):
        await a.transport.renew(granted.term)


async def test_membership_and_messages(make: Factory) -> None:
    a, b = await opened(make, 3), await opened(make)
    assert await b.transport.is_member(a.node, 3)
    assert not await b.transport.is_member(a.node, 4)
    assert not await b.transport.is_member(a.node + 1000, 3)
    assert await a.transport.successor() == b.node
    await a.transport.publish("hello")
    for _ in range(100):
        if "hello" in b.heard:
            break
        await asyncio.sleep(0.02)
    assert "hello" in b.heard
    await a.transport.close()
    assert not await b.transport.is_member(a.node, 3)
