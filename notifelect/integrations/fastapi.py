"""FastAPI: a lifespan that runs the election group, and a leader-only dependency.

The ``fastapi`` extra (``pip install 'notifelect[fastapi]'``)::

    group = ElectionGroup(engine, "reports", advertise_url="http://10.0.0.5:8000")
    scheduler = LeaderScheduler(group, AsyncIOScheduler())      # optional

    app = FastAPI(lifespan=group_lifespan(group, scheduler, dispose=engine))

    @app.post("/rebuild", dependencies=[Depends(require_leader(group))])
    async def rebuild() -> dict[str, str]: ...

:func:`group_lifespan` enters the group first (so that what follows can rely on it), then
each further context (a :class:`~notifelect.integrations.apscheduler.LeaderScheduler`, a
client...) in order, and leaves them in reverse: the scheduler stops before the group
hands over. :func:`require_leader` answers a request on a follower with 307 to the
leader's advertised URL (the same path and query), or 503 with ``Retry-After`` when no
leader with a URL is known.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

try:
    from fastapi import HTTPException, Request
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "notifelect.integrations.fastapi needs FastAPI: pip install 'notifelect[fastapi]'"
    ) from exc

if TYPE_CHECKING:
    from ..group import ElectionGroup
    from ..leadership import Leadership

__all__ = ["group_lifespan", "require_leader"]

#: ``Retry-After`` (seconds) of a 503 answered while no leader is known: about one
#: default lease, after which a failover has usually elected one.
RETRY_AFTER = 2


def group_lifespan(
    group: ElectionGroup,
    *contexts: AbstractAsyncContextManager[Any],
    dispose: Any = None,
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan`` that enters ``group``, then each of ``contexts``, and leaves
    them in reverse order; then awaits ``dispose.dispose()`` if given (an
    ``AsyncEngine``).

    Startup returns once the group has joined (its id drawn, listening) and every context
    was entered; shutdown hands leadership over (within ``group.close_bound``). The group
    is also put on ``app.state.notifelect_group``.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(group)
                for context in contexts:
                    await stack.enter_async_context(context)
                state = getattr(app, "state", None)
                if state is not None:
                    state.notifelect_group = group
                yield
        finally:
            if dispose is not None:
                await dispose.dispose()

    return lifespan


def require_leader(
    group: ElectionGroup, *, redirect: bool = True
) -> Callable[[Request], Awaitable[Leadership]]:
    """A FastAPI dependency that lets a request through on the leader only.

    On the valid leader it returns the :class:`~notifelect.Leadership` (use it to fence
    the request's writes). Elsewhere it raises ``HTTPException``: 307 with ``Location``
    set to the leader's advertised URL plus the request's path and query (with
    ``redirect``, when the leader advertises a URL; a 307 keeps the method and body), else
    503 with ``Retry-After``. The leader's URL is ``group.leader.url``, which the group
    reads once per leader in the background; a request that comes before that read
    returned reads it itself.
    """

    async def leader_only(request: Request) -> Leadership:
        ls = group.leadership
        if ls is not None and group.is_leader:
            return ls
        if redirect:
            known = group.leader
            url = known.url if known is not None else None
            if url is None:  # not read yet (a leader elected a moment ago): read it now
                url = await group.leader_url()
            if url is not None:
                # The path as the client sent it (still percent-encoded): a decoded one
                # would reach the leader as another path.
                raw = request.scope.get("raw_path")
                path = raw.decode("latin-1") if isinstance(raw, bytes) else request.url.path
                target = url.rstrip("/") + path
                if request.url.query:
                    target += "?" + request.url.query
                raise HTTPException(
                    status_code=307,
                    detail=f"node {group.node} does not lead group {group.name!r}",
                    headers={"Location": target},
                )
        leader = group.leader
        why = (
            "no leader is known"
            if leader is None
            else f"node {leader.node} leads and advertises no URL"
            if redirect
            else f"node {leader.node} leads"
        )
        raise HTTPException(
            status_code=503,
            detail=f"this request runs on the leader of group {group.name!r} only; {why}",
            headers={"Retry-After": str(RETRY_AFTER)},
        )

    return leader_only
