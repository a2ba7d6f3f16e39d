"""Prometheus metrics of election groups: ``pip install 'notifelect[metrics]'``.

::

    from prometheus_client import start_http_server
    from notifelect.metrics import register

    register(group)             # on the default registry; several groups may share it
    start_http_server(9108)

The collector reads each group's state and counters when it is scraped; the election pays
nothing between scrapes. Every metric has the labels ``group`` (the namespace) and
``node`` (this node's id).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .group import ElectionGroup

try:
    from prometheus_client import REGISTRY
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        SummaryMetricFamily,
    )
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "notifelect.metrics needs prometheus-client: pip install 'notifelect[metrics]'"
    ) from exc

__all__ = ["COUNTERS", "GroupCollector", "register"]

#: Counters exported from ``group.stats``: metric name -> (stats key, help text).
COUNTERS = {
    "notifelect_elections": ("elections", "Claims of leadership this node attempted."),
    "notifelect_elected": ("elected", "Leaderships this node took (new terms)."),
    "notifelect_handovers": ("handovers", "Leaderships this node handed over cleanly."),
    "notifelect_failovers": (
        "failovers",
        "Leaderships this node lost without handing over (connection or lease lost).",
    ),
    "notifelect_fenced": (
        "fenced",
        "Backends of an ended leadership this node terminated before taking over"
        " (a silent claim holder, or a guarded transaction holding the old term).",
    ),
    "notifelect_reconnects": ("reconnects", "Reconnections after a lost connection."),
    "notifelect_messages_received": ("received", "Notifications read on the channel."),
    "notifelect_messages_dropped": ("dropped", "Messages dropped (junk, forged, unverified)."),
}


class GroupCollector(Collector):
    """Exposes the state and counters of election groups to a Prometheus registry."""

    def __init__(self, *groups: ElectionGroup) -> None:
        self._groups: list[ElectionGroup] = list(groups)

    def add(self, group: ElectionGroup) -> None:
        self._groups.append(group)

    def collect(self) -> Iterator[Any]:
        labels = ["group", "node"]
        is_leader = GaugeMetricFamily(
            "notifelect_is_leader", "1 while this node is the valid leader.", labels=labels
        )
        ready = GaugeMetricFamily(
            "notifelect_ready", "1 while the group follows or leads (readiness).", labels=labels
        )
        term = GaugeMetricFamily(
            "notifelect_term", "The term of the leadership this node knows of.", labels=labels
        )
        margin = GaugeMetricFamily(
            "notifelect_lease_remaining_seconds",
            "Seconds until this leader's lease runs out unless renewed (0 when not leading).",
            labels=labels,
        )
        counters = {
            name: CounterMetricFamily(name, text, labels=labels)
            for name, (_, text) in COUNTERS.items()
        }
        for group in list(self._groups):
            values = [group.name, str(group.node if group.node is not None else "")]
            health = group.health
            is_leader.add_metric(values, 1.0 if group.is_leader else 0.0)
            ready.add_metric(values, 1.0 if health.ready else 0.0)
            leader = group.leader
            term.add_metric(values, float(leader.term) if leader is not None else 0.0)
            ls = group.leadership
            margin.add_metric(values, ls.lease_remaining if ls is not None else 0.0)
            for name, (key, _) in COUNTERS.items():
                counters[name].add_metric(values, float(group.stats[key]))
        yield from (is_leader, ready, term, margin, *counters.values())
        yield from _job_metrics(self._groups)


def _job_metrics(groups: list[ElectionGroup]) -> Iterator[Any]:
    """The scheduled jobs' runs on this node, labelled ``group``, ``node`` and ``job``."""
    labels = ["group", "node", "job"]
    runs = CounterMetricFamily(
        "notifelect_job_runs", "Scheduled runs this node ran that succeeded.", labels=labels
    )
    failures = CounterMetricFamily(
        "notifelect_job_failures", "Scheduled runs this node ran that raised.", labels=labels
    )
    duration = SummaryMetricFamily(
        "notifelect_job_duration_seconds", "How long the scheduled runs took.", labels=labels
    )
    lateness = SummaryMetricFamily(
        "notifelect_job_lateness_seconds",
        "How late the scheduled runs started after their scheduled time.",
        labels=labels,
    )
    for group in list(groups):
        for job in group.jobs:
            values = [group.name, str(group.node if group.node is not None else ""), job.name]
            runs.add_metric(values, float(job.runs))
            failures.add_metric(values, float(job.failures))
            duration.add_metric(values, job.ended, job.duration_total)
            lateness.add_metric(values, job.ended, job.lateness_total)
    yield from (runs, failures, duration, lateness)


def register(*groups: ElectionGroup, registry: CollectorRegistry = REGISTRY) -> GroupCollector:
    """Register a collector of ``groups`` on ``registry`` (the default one); return it."""
    collector = GroupCollector(*groups)
    registry.register(collector)
    return collector
