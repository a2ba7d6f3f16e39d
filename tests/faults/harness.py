"""The fault suite's cluster: the shared harness on a throwaway PostgreSQL, with proxies.

:class:`Cluster` is :class:`notifelect._cluster.harness.Cluster` with what only this suite
needs: the server it may stop and restart, a :class:`FaultProxy` per node if asked, and
the short settings of :class:`Timing`. Tests wait on what the nodes report or poll the
database with a deadline; they never sleep to synchronise. :meth:`Cluster.verify` runs
every check of :mod:`notifelect._cluster.checker` and asserts exactly one leader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from notifelect._cluster import harness
from notifelect._cluster.harness import NodeProcess
from notifelect._cluster.node import extra_namespace
from tests.support.proxy import FaultProxy
from tests.support.servers import ThrowawayPostgres

__all__ = ["Cluster", "NodeProcess", "Timing"]


@dataclass(frozen=True)
class Timing:
    """Settings of the node processes (short, to keep the suite fast)."""

    interval: float = 0.1
    election_timeout: float = 0.05
    lease: float = 0.5
    leader_timeout: float = 0.5
    job_period: float = 0.05
    work: float = 0.01
    act_period: float = 0.01
    #: Groups each node joins besides the one under test, on the same engine (so on the
    #: same election session): their fenced writes are checked as well.
    extra_groups: int = 2
    #: The longest wait between reconnect attempts (RetryPolicy.maximum).
    retry_maximum: float = 0.5

    def argv(self) -> list[str]:
        return [
            "--engine", "--log-level", "INFO",
            "--extra-groups", str(self.extra_groups),
            "--retry-maximum", str(self.retry_maximum),
            "--interval", str(self.interval),
            "--election-timeout", str(self.election_timeout),
            "--lease", str(self.lease),
            "--leader-timeout", str(self.leader_timeout),
            "--job-period", str(self.job_period),
            "--work", str(self.work),
            "--act-period", str(self.act_period),
        ]  # fmt: skip


class Cluster(harness.Cluster):
    """The node processes of one test on ``server`` (a throwaway PostgreSQL)."""

    def __init__(
        self, server: ThrowawayPostgres, workdir: Path, namespace: str, timing: Timing | None = None
    ) -> None:
        super().__init__(server.dsn, workdir, namespace)
        self.server = server
        self.timing = timing or Timing()
        self.proxies: list[FaultProxy] = []

    @property
    def dsn(self) -> str:
        return self.server.dsn  # a test may make another server the primary

    async def __aenter__(self) -> Cluster:
        await self.install_audit()
        return self

    def _proxied_dsn(self, port: int) -> str:
        parts = urlsplit(self.server.dsn)
        return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))

    async def spawn(  # type: ignore[override]
        self,
        count: int = 1,
        *,
        proxied: bool = False,
        extra: tuple[str, ...] = (),
        dsn: str | None = None,
    ) -> list[NodeProcess]:
        """Start ``count`` node processes; return once each has joined the group. They
        connect to ``dsn`` if given (several servers, a proxy of the test's own), else to
        the server, through a proxy of their own if ``proxied``."""
        started = []
        for _ in range(count):
            proxy: Any = None
            target = dsn
            if proxied and dsn is None:
                proxy = await FaultProxy("127.0.0.1", self.server.port).start()
                self.proxies.append(proxy)
                target = self._proxied_dsn(proxy.port)
            node = await self.start([*self.timing.argv(), *extra], dsn=target)
            node.proxy = proxy
            started.append(node)
        await self.ready(started)
        return started

    def extra_namespaces(self) -> list[str]:
        return [extra_namespace(self.namespace, i) for i in range(self.timing.extra_groups)]

    async def close(self, timeout: float = 15.0) -> None:
        await super().close(timeout)
        for proxy in self.proxies:
            await proxy.close()
