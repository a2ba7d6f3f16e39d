"""The share of the server's lock table a session may fill with claim locks."""

from __future__ import annotations

from notifelect.transport.session.claims import CLAIM_SHARE, claim_budget


def test_a_session_claims_at_most_a_quarter_of_the_lock_table() -> None:
    assert CLAIM_SHARE == 4
    # PostgreSQL's defaults: 64 locks for each of 122 process slots.
    assert claim_budget(64 * 122) == 1952
    # max_locks_per_transaction = 10 and 10 process slots.
    assert claim_budget(100) == 25
    assert claim_budget(103) == 25


def test_a_session_may_always_claim_one_group() -> None:
    assert claim_budget(3) == 1
    assert claim_budget(0) == 1
