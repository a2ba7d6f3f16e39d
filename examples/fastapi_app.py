"""A FastAPI service whose replicas elect a leader; ask any replica who leads.

    pip install -e '.[examples]'                      # from a checkout of notifelect
    python -m notifelect install                      # once per database
    export DATABASE_URL=postgresql+asyncpg://user@localhost/app
    python examples/fastapi_app.py --port 8000 &      # replica 1
    python examples/fastapi_app.py --port 8001 &      # replica 2
    curl localhost:8000/leader; curl localhost:8001/leader
    curl -L -X POST localhost:8001/rebuild            # answered by the leader

(or ``ADVERTISE_URL=http://host:port uvicorn examples.fastapi_app:app`` from the
repository root). The lifespan (``group_lifespan``) joins the group; on shutdown the group
resigns, so the other replica takes over at once. ``refresh_cache`` runs every second on
the group's schedule, on the leader only. ``POST /rebuild`` is leader-only
(``require_leader``): a follower redirects it (307) to the URL the leader advertises.
``/healthz`` is the readiness probe (every connected member is ready, also while an
election runs); ``/healthz/leader`` answers 200 on the leader only, for a check that
routes leader-only traffic. ``--run-for SECONDS`` stops the server by itself.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations, and
# ``rebuild``'s names a dependency made inside create_app.

import argparse
import asyncio
import contextlib
import logging
import os
from datetime import timedelta
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Response
from sqlalchemy.ext.asyncio import create_async_engine

from notifelect import ElectionGroup, Leadership
from notifelect.integrations.fastapi import group_lifespan, require_leader

log = logging.getLogger("fastapi_app")


def database_url() -> str:
    """$DATABASE_URL for SQLAlchemy's asyncpg driver (a plain postgresql:// URL works too)."""
    url = os.environ.get("DATABASE_URL", "postgresql+asyncpg://localhost/postgres")
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain) :]
    return url


def create_app(advertise_url: str | None) -> FastAPI:
    """The service: one engine, one group (advertising ``advertise_url``), one app."""
    engine = create_async_engine(database_url(), pool_size=5)
    group = ElectionGroup(engine, name="fastapi-example", advertise_url=advertise_url)

    @group.every(timedelta(seconds=1))
    async def refresh_cache() -> None:
        """Leader-only job on the group's schedule: the next leader continues it."""
        log.info("node %s refreshed the shared cache", group.node)

    # Enters the group at startup; on shutdown, hands over and disposes of the engine.
    app = FastAPI(title="notifelect example", lifespan=group_lifespan(group, dispose=engine))
    leading = Depends(require_leader(group))

    @app.get("/leader")
    async def leader() -> dict[str, Any]:
        """Who leads, as this replica knows it."""
        info = group.leader
        url = await group.leader_url()
        return {
            "node": group.node,
            "is_leader": group.is_leader,
            "term": info.term if info else None,
            "leader": None
            if info is None
            else {
                "node": info.node,
                "host": info.host,
                "pid": info.pid,
                "term": info.term,
                "since": info.since.isoformat() if info.since else None,
                "url": url,
            },
            "cache_refreshes": refresh_cache.runs,
        }

    @app.post("/rebuild")
    async def rebuild(leadership: Annotated[Leadership, leading]) -> dict[str, Any]:
        """Leader-only: elsewhere 307 to the leader's URL (or 503 while none is known)."""
        return {"rebuilt_by": leadership.node, "term": leadership.term}

    @app.get("/healthz")
    async def healthz(response: Response) -> dict[str, Any]:
        """Readiness: 200 while this replica is connected and a member of the group, also
        while an election runs (a failover takes no replica out of service)."""
        health = group.health
        response.status_code = 200 if health.ready else 503
        return health.as_dict()

    @app.get("/healthz/leader")
    async def healthz_leader(response: Response) -> dict[str, Any]:
        """200 on the leader only: for routing leader-only traffic, never for readiness."""
        health = group.health
        response.status_code = 200 if health.is_leader else 503
        return health.as_dict()

    return app


app = create_app(os.environ.get("ADVERTISE_URL"))


async def serve(host: str, port: int, run_for: float | None) -> None:
    service = create_app(f"http://{host}:{port}")
    server = uvicorn.Server(uvicorn.Config(service, host=host, port=port, log_level="info"))
    if run_for is not None:
        asyncio.get_running_loop().call_later(run_for, setattr, server, "should_exit", True)
    await server.serve()  # Ctrl-C or SIGTERM: graceful shutdown, the lifespan resigns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--run-for", type=float, help="stop after SECONDS")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # uvicorn shuts down gracefully on Ctrl-C, then re-raises it: that is a normal exit here.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.run_for))


if __name__ == "__main__":
    main()
