"""The checker finds what it must find (on hand-made histories), and passes clean ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from notifelect._cluster import checker
from notifelect._cluster.checker import Execution, Span

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def clean_history() -> list[Execution]:
    return [
        Execution(1, 1, 0.0, 1.0, db_at=at(1.0)),
        Execution(1, 1, 1.5, 2.0, db_at=at(2.0)),
        Execution(2, 2, 2.5, 2.9, db_at=at(2.95)),
        Execution(3, 3, 3.0, 4.0, db_at=at(4.0)),
    ]


def test_a_clean_history_passes() -> None:
    report = checker.check(
        clean_history(),
        spans=[Span(1, 1, 0.0, 2.1), Span(2, 2, 2.2, 3.0), Span(3, 3, 3.0, None, open_at_end=True)],
        term_started={1: at(0.0), 2: at(2.2), 3: at(3.0)},
        owners={1: 1, 2: 2, 3: 3},
    )
    assert report.ok, report
    assert report.executions == 4
    assert report.terms == 3


def test_overlap_of_two_leaders_is_found() -> None:
    history = [*clean_history(), Execution(4, 4, 3.5, 3.6)]
    found = checker.overlaps(history)
    assert len(found) == 1
    assert "node 4 term 4" in found[0]
    assert "node 3 term 3" in found[0]


def test_overlap_hidden_behind_a_long_execution_is_found() -> None:
    # A long execution of term 1 spans a short one of term 2, then term 1 runs again.
    history = [Execution(1, 1, 0.0, 10.0), Execution(2, 2, 1.0, 2.0), Execution(1, 1, 1.5, 1.8)]
    assert len(checker.overlaps(history)) == 2


def test_executions_may_follow_each_other() -> None:
    assert checker.overlaps([Execution(1, 1, 0.0, 1.0), Execution(1, 1, 1.0, 2.0)]) == []
    # Touching is not overlapping, also across leaderships.
    assert checker.overlaps([Execution(1, 1, 0.0, 1.0), Execution(2, 2, 1.0, 2.0)]) == []


def test_term_regression_is_found() -> None:
    history = [*clean_history(), Execution(1, 1, 5.0, 6.0)]
    found = checker.regressions(history)
    assert len(found) == 1
    assert found[0].startswith("term 1 (node 1) at 5.000000 after term 3")


def test_stale_write_accepted_is_found() -> None:
    history = [*clean_history(), Execution(1, 1, 1.9, 2.0, kind="probe", db_at=at(2.3))]
    found = checker.stale_accepted(history, {1: at(0.0), 2: at(2.2), 3: at(3.0)})
    assert len(found) == 1
    assert "probe of node 1 under term 1" in found[0]
    assert "after term 2 began" in found[0]


def test_write_under_another_nodes_term_is_found() -> None:
    found = checker.term_owners([Execution(9, 2, 0.0, 1.0)], {2: 2})
    assert found == ["node 9 wrote under term 2 of node 2"]


def test_a_leadership_that_began_before_the_previous_stopped_acting_is_found() -> None:
    spans = [Span(1, 1, 0.0, 2.0), Span(2, 2, 1.5, 3.0)]
    found = checker.span_overlaps(spans)
    assert len(found) == 1
    assert "term 2 (node 2) started at 1.500000 before term 1 (node 1)" in found[0]


def test_the_end_comes_from_the_process_never_from_the_fault() -> None:
    # Node 1 was cut off at 1.0 (the fault), but recorded acting until 1.4: a successor
    # that began at 1.2 overlaps it, whatever the fault time says.
    assert len(checker.span_overlaps([Span(1, 1, 0.0, 1.4), Span(2, 2, 1.2, 2.0)])) == 1
    assert checker.span_overlaps([Span(1, 1, 0.0, 1.4), Span(2, 2, 1.5, 2.0)]) == []


def test_an_activity_that_never_ended_lasts_until_the_process_is_proven_dead() -> None:
    # Killed at 1.0, proven dead at 1.001, never reported an end: a start at 1.2 is fine,
    # a start at 1.0005 is not (the process may have acted until it was gone).
    killed = Span(1, 1, 0.0, 0.9, open_at_end=True, dead_at=1.001)
    assert checker.span_overlaps([killed, Span(2, 2, 1.2, 2.0)]) == []
    assert len(checker.span_overlaps([killed, Span(2, 2, 1.0005, 2.0)])) == 1
    # Alive and never ended: it may still be acting, so any later leadership overlaps.
    alive = Span(1, 1, 0.0, 0.9, open_at_end=True)
    assert len(checker.span_overlaps([alive, Span(2, 2, 50.0, 51.0)])) == 1


def test_every_earlier_leadership_counts_not_only_the_previous_term() -> None:
    spans = [Span(1, 1, 0.0, 5.0), Span(2, 2, 6.0, 6.5), Span(3, 3, 4.0, 7.0)]
    assert len(checker.span_overlaps(spans)) >= 1


def test_report_names_every_kind_of_violation() -> None:
    report = checker.check(
        [Execution(1, 2, 0.0, 2.0), Execution(2, 1, 1.0, 3.0)],
        spans=[Span(1, 1, 0.0, 5.0), Span(2, 2, 1.0, None, open_at_end=True)],
    )
    assert not report.ok
    text = str(report)
    for name in ("overlaps (1)", "regressions (1)", "span_overlaps (1)"):
        assert name in text
