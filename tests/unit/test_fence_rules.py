"""The rules the PostgreSQL transport calls to fence a claim holder and to record
standbys, from its point of view (more rows for :func:`notifelect.rules.may_fence`)."""

from __future__ import annotations

import pytest

from notifelect.rules import may_fence, standbys_due

#: (what happens, silent for, leader_timeout, lease, may be fenced)
LEADERS = [
    ("renewing: silent for less than an interval", 0.3, 2.0, 1.5, False),
    ("late but within the followers' patience", 1.9, 2.0, 1.5, False),
    ("silent past the followers' patience and the lease", 2.0, 2.0, 1.5, True),
    ("patience shorter than the lease: the lease decides", 1.2, 1.0, 1.5, False),
    ("patience shorter than the lease, silent past the lease", 1.5, 1.0, 1.5, True),
]


@pytest.mark.parametrize(("case", "silent", "patience", "lease", "fenced"), LEADERS)
def test_leader_fenceable(
    case: str, silent: float, patience: float, lease: float, fenced: bool
) -> None:
    found = may_fence(
        recorded=True, quiet_for=silent, leader_timeout=patience, lease=lease, io_timeout=2.0
    )
    assert found is fenced, case


#: (what happens, idle for, lease, io_timeout, stuck)
TAKERS = [
    ("waiting out the old lease", 1.5, 1.5, 2.0, False),
    ("a lease and a call's bound are not over yet", 3.4, 1.5, 2.0, False),
    ("idle past a lease and a call's bound: paused", 3.5, 1.5, 2.0, True),
]


@pytest.mark.parametrize(("case", "idle", "lease", "io_timeout", "stuck"), TAKERS)
def test_taker_stuck(case: str, idle: float, lease: float, io_timeout: float, stuck: bool) -> None:
    found = may_fence(
        recorded=False, quiet_for=idle, leader_timeout=2.0, lease=lease, io_timeout=io_timeout
    )
    assert found is stuck, case


@pytest.mark.parametrize(("since", "due"), [(0.0, False), (1.99, False), (2.0, True), (60.0, True)])
def test_standbys_due(since: float, due: bool) -> None:
    assert standbys_due(since, leader_timeout=2.0) is due
