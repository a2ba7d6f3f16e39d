"""Prometheus metrics of election groups (the ``metrics`` extra: ``prometheus-client``).

::

    from prometheus_client import start_http_server
    from notifelect.metrics import register

    register(group)             # on the default registry; several groups may share it
    start_http_server(9108)

``group`` is an :class:`~notifelect.ElectionGroup` or a thread-backed
:class:`~notifelect.sync.SyncElectionGroup`; both report the same metrics.

The collector reads each group's state and counters when it is scraped; the election pays
nothing between scrapes (the vacancy histogram is counted by the group as it happens).
Every metric has the labels ``group`` (the namespace) and ``node`` (the group's
:attr:`~notifelect.ElectionGroup.instance`, ``host:pid``: the same for the life of the
process, across reconnects); the node id, which a reconnect renews, is a label of the info
metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from .errors import ConfigurationError
from .group import ElectionGroup
from .sync import SyncElectionGroup

try:
    from prometheus_client import REGISTRY
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        SummaryMetricFamily,
    )
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "notifelect.metrics needs prometheus-client: install the metrics extra"
        " (pip install -e '.[metrics]' from a checkout of notifelect, or"
        " pip install prometheus-client)"
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
    "notifelect_reconnect_failures": (
        "reconnect_failures",
        "Attempts to reconnect after a lost connection that failed.",
    ),
    "notifelect_messages_received": ("received", "Notifications read on the channel."),
    "notifelect_messages_dropped": ("dropped", "Messages dropped (junk, forged, unverified)."),
}


class GroupCollector(Collector):
    """Exposes the state and counters of election groups to a Prometheus registry
    (:class:`~notifelect.ElectionGroup` or :class:`~notifelect.sync.SyncElectionGroup`)."""

    def __init__(self, *groups: ElectionGroup | SyncElectionGroup) -> None:
        self._groups: list[ElectionGroup] = [_underlying(g) for g in groups]

    def add(self, group: ElectionGroup | SyncElectionGroup) -> None:
        self._groups.append(_underlying(group))

    def collect(self) -> Iterator[Any]:
        labels = ["group", "node"]

        def gauge(name: str, text: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=[*labels, *extra])

        is_leader = gauge("notifelect_is_leader", "1 while this node is the valid leader.")
        ready = gauge(
            "notifelect_ready",
            "1 while this node is connected and a member of the group (also during an"
            " election): readiness.",
        )
        present = gauge(
            "notifelect_leader_present", "1 while this node knows of a leader of the group."
        )
        leader_info = gauge(
            "notifelect_leader_info",
            "1 for the leader this node knows of: its node id, host and term (exact).",
            ("node_id", "leader_node", "leader_host", "term"),
        )
        node_info = gauge(
            "notifelect_node_info",
            "1 for this member: its node id (renewed by a reconnect), host, pid, priority.",
            ("node_id", "host", "pid", "priority"),
        )
        term = gauge(
            "notifelect_term",
            "The term of the leadership this node knows of (0 if none); exact as a float,"
            " and as the term label of notifelect_leader_info.",
        )
        margin = gauge(
            "notifelect_lease_remaining_seconds",
            "Seconds until this leader's lease runs out unless renewed (0 when not leading).",
        )
        renewal_age = gauge(
            "notifelect_leader_renewal_age_seconds",
            "Seconds since the known leader last renewed its lease, as this node read it,"
            " on this node's clock (absent while no leader is known).",
        )
        vacancy = HistogramMetricFamily(
            "notifelect_leader_vacancy_seconds",
            "How long the group was without a leader, from when this node saw it lose its"
            " leader to when it saw the next one, on this node's clock.",
            labels=labels,
        )
        counters = {
            name: CounterMetricFamily(name, text, labels=labels)
            for name, (_, text) in COUNTERS.items()
        }
        lapses = CounterMetricFamily(
            "notifelect_lease_lapses",
            "Leaderships of this node whose lease ran out before a renewal reached it"
            " (renewals missed; each ended that leadership).",
            labels=labels,
        )
        late = CounterMetricFamily(
            "notifelect_late_renewals",
            "Renewals of this node's leases made with less than half the lease left.",
            labels=labels,
        )
        for group in list(self._groups):
            values = [group.name, group.instance]
            node_id = "" if group.node is None else str(group.node)
            health = group.health
            leader = health.leader
            is_leader.add_metric(values, 1.0 if group.is_leader else 0.0)
            ready.add_metric(values, 1.0 if health.ready else 0.0)
            present.add_metric(values, 1.0 if leader is not None else 0.0)
            member = group._member
            node_info.add_metric(
                [*values, node_id, member.host, str(member.pid), str(group.settings.priority)],
                1.0,
            )
            if leader is not None:
                leader_info.add_metric(
                    [*values, node_id, str(leader.node), leader.host or "", str(leader.term)], 1.0
                )
            term.add_metric(values, float(leader.term) if leader is not None else 0.0)
            ls = group.leadership
            margin.add_metric(values, ls.lease_remaining if ls is not None else 0.0)
            if health.leader_renewal_age is not None:
                renewal_age.add_metric(values, health.leader_renewal_age)
            seen = group.vacancies
            vacancy.add_metric(
                values,
                buckets=[(_bound(bound), n) for bound, n in seen.cumulative()],
                sum_value=seen.total,
            )
            for name, (key, _) in COUNTERS.items():
                counters[name].add_metric(values, float(group.stats[key]))
            lapses.add_metric(values, float(health.lease_lapses))
            late.add_metric(values, float(health.late_renewals))
        yield from (
            is_leader,
            ready,
            present,
            leader_info,
            node_info,
            term,
            margin,
            renewal_age,
            vacancy,
            *counters.values(),
            lapses,
            late,
        )
        yield from _job_metrics(self._groups)


def _job_metrics(groups: list[ElectionGroup]) -> Iterator[Any]:
    """The scheduled jobs' runs on this node, labelled ``group``, ``node`` and ``job``."""
    labels = ["group", "node", "job"]
    runs = CounterMetricFamily(
        "notifelect_job_runs",
        "Scheduled runs this node ran that succeeded (as recorded).",
        labels=labels,
    )
    failures = CounterMetricFamily(
        "notifelect_job_failures",
        "Scheduled runs this node ran that failed (raised before their transaction committed).",
        labels=labels,
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
            values = [group.name, group.instance, job.name]
            runs.add_metric(values, float(job.runs))
            failures.add_metric(values, float(job.failures))
            duration.add_metric(values, job.ended, job.duration_total)
            lateness.add_metric(values, job.ended, job.lateness_total)
    yield from (runs, failures, duration, lateness)


def register(
    *groups: ElectionGroup | SyncElectionGroup, registry: CollectorRegistry = REGISTRY
) -> GroupCollector:
    """Register a collector of ``groups`` (``ElectionGroup`` or ``SyncElectionGroup``)
    on ``registry`` (the default one); return it."""
    collector = GroupCollector(*groups)
    registry.register(collector)
    return collector


def _underlying(group: object) -> ElectionGroup:
    """The group whose state is read: a SyncElectionGroup's runs on its own thread, and
    every value the collector reads is a plain attribute read (no I/O, no lock)."""
    if isinstance(group, SyncElectionGroup):
        return group._group
    if isinstance(group, ElectionGroup):
        return group
    raise ConfigurationError(
        "notifelect.metrics.register takes ElectionGroup or SyncElectionGroup objects, "
        f"got {type(group).__name__}: {group!r}"
    )


def _bound(seconds: float) -> str:
    """A histogram bucket's ``le`` label."""
    return "+Inf" if math.isinf(seconds) else repr(seconds)
