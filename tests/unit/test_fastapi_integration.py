"""The FastAPI integration with a real app, through httpx's ASGI transport.

(No ``from __future__ import annotations``: FastAPI reads the route's annotations, which
name a dependency made inside the function.)
"""

from contextlib import AsyncExitStack
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from notifelect import ConfigurationError, ElectionGroup, Leadership, MemoryBus, Settings
from notifelect.integrations.fastapi import group_lifespan, require_leader
from tests.support.waiting import until

FAST = Settings(election_interval=0.05, election_timeout=0.01, lease=0.5, leader_timeout=0.2)


class Recorder:
    """A context entered after the group (a scheduler, say): records what it saw."""

    def __init__(self, group: ElectionGroup, log: list[str]) -> None:
        self.group, self.log = group, log

    async def __aenter__(self) -> "Recorder":
        self.log.append(f"enter, group open: {self.group.is_open}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.log.append(f"exit, group open: {self.group.is_open}")


def service(group: ElectionGroup, log: list[str], *, redirect: bool = True) -> FastAPI:
    app = FastAPI(lifespan=group_lifespan(group, Recorder(group, log)))

    leading = Depends(require_leader(group, redirect=redirect))

    @app.post("/rebuild")
    async def rebuild(ls: Annotated[Leadership, leading]) -> Any:
        return {"node": ls.node, "term": ls.term}

    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_the_leader_answers_followers_redirect_or_refuse() -> None:
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    log: list[str] = []
    a = ElectionGroup.in_memory(bus, "api", FAST, advertise_url="http://a.internal:8000")
    b = ElectionGroup.in_memory(bus, "api", FAST, advertise_url="http://b.internal:8000/")
    apps = {"a": service(a, log), "b": service(b, []), "b-503": service(b, [], redirect=False)}
    a_running = apps["a"].router.lifespan_context(apps["a"])
    async with AsyncExitStack() as stack:
        await a_running.__aenter__()
        stack.push_async_exit(a_running)  # left below already; a second exit is a no-op
        await a.wait_for_leadership(timeout=5)
        b_running = apps["b"].router.lifespan_context(apps["b"])
        await stack.enter_async_context(b_running)
        await until([a, b], lambda: b.leader is not None)
        assert log == ["enter, group open: True"]
        # b learns the leader's URL by itself: nothing called leader_url().
        await until([a, b], lambda: b.leader is not None and b.leader.url is not None)
        assert b.leader is not None
        assert b.leader.url == "http://a.internal:8000"
        assert b.health.leader is not None
        assert b.health.leader.url == "http://a.internal:8000"

        async with client(apps["a"]) as http:
            answer = await http.post("/rebuild")
        assert answer.status_code == 200
        assert answer.json() == {"node": a.node, "term": a.leadership.term if a.leadership else 0}

        async with client(apps["b"]) as http:
            answer = await http.post("/rebuild?full=1", content=b"{}")
        assert answer.status_code == 307
        assert answer.headers["location"] == "http://a.internal:8000/rebuild?full=1"
        assert b.leader is not None
        assert b.leader.url == "http://a.internal:8000"

        async with client(apps["b-503"]) as http:
            answer = await http.post("/rebuild")
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "2"
        assert f"node {a.node} leads" in answer.json()["detail"]

        # a's service shuts down: its scheduler first, then the group hands over.
        await a_running.__aexit__(None, None, None)
        assert log == ["enter, group open: True", "exit, group open: True"]
        assert not a.is_open
        await b.wait_for_leadership(timeout=5)
        async with client(apps["b"]) as http:
            answer = await http.post("/rebuild")
        assert answer.status_code == 200


async def test_without_a_leader_the_answer_is_503() -> None:
    group = ElectionGroup.in_memory(MemoryBus(), "api", FAST)
    app = service(group, [])
    async with client(app) as http:
        # Not entered: the group leads nothing and knows no leader.
        answer = await http.post("/rebuild")
    assert answer.status_code == 503
    assert "no leader is known" in answer.json()["detail"]


def test_an_advertised_url_must_be_absolute_http() -> None:
    with pytest.raises(ConfigurationError, match="advertise_url must be an absolute http"):
        ElectionGroup("postgresql://app@db/app", "api", advertise_url="10.0.0.5:8000")


async def test_a_follower_that_advertises_nothing_still_redirects() -> None:
    bus = MemoryBus(lease=FAST.lease, leader_timeout=FAST.leader_timeout)
    a = ElectionGroup.in_memory(bus, "api", FAST, advertise_url="http://a.internal:8000")
    b = ElectionGroup.in_memory(bus, "api", FAST)  # a follower that advertises nothing
    app = service(b, [])
    async with a:
        await a.wait_for_leadership(timeout=5)
        async with app.router.lifespan_context(app):
            await until([a, b], lambda: b.leader is not None)
            assert url_of(b) is None  # b advertises nothing: it reads no URL unasked
            async with client(app) as http:
                answer = await http.post("/rebuild?x=%2F")
            assert answer.status_code == 307
            assert answer.headers["location"] == "http://a.internal:8000/rebuild?x=%2F"
            # The request read the URL: it is remembered for the leader.
            assert url_of(b) == "http://a.internal:8000"
        assert url_of(a) == "http://a.internal:8000"  # its own


def url_of(group: ElectionGroup) -> str | None:
    leader = group.leader
    return None if leader is None else leader.url
