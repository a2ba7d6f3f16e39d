"""Message hygiene: parse never raises, rejects junk with a bounded set of reasons, signs."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifelect import messages
from notifelect.messages import Kind, Message, Rank, Rejected

NS = "reports"
SECRET = b"0123456789abcdef0123456789abcdef"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=8,
)
known_keys = st.sampled_from(["v", "ns", "k", "n", "p", "t", "s", "u", "sig"])
bodies = st.dictionaries(known_keys | st.text(max_size=4), json_values, max_size=10)
kinds = st.sampled_from(list(Kind))
big = st.integers(min_value=-(2**70), max_value=2**70)
messages_st = st.builds(
    Message,
    kind=kinds,
    namespace=st.just(NS),
    rank=st.builds(Rank, st.integers(-(2**31), 2**31 - 1), st.integers(0, 2**63 - 1)),
    term=st.integers(0, 2**63 - 1),
    standby=st.none() | st.integers(0, 2**63 - 1),
    successor=st.none() | st.integers(0, 2**63 - 1),
)


def _reason_is_bounded(reason: str) -> bool:
    return reason in {
        "not text",
        "oversized",
        "not json",
        "not an object",
        "unknown version",
        "other namespace",
        "bad signature",
        "malformed: unknown kind",
    } or (reason.startswith("malformed: ") and len(reason) < 40)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_parse_never_raises_on_arbitrary_text(payload: str) -> None:
    for secret in (None, SECRET):
        result = messages.parse(payload, NS, secret)
        assert isinstance(result, Message | Rejected)
        if isinstance(result, Rejected):
            assert _reason_is_bounded(result.reason), result.reason


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies, st.booleans())
def test_parse_never_raises_on_arbitrary_json_objects(body: dict[str, object], fix: bool) -> None:
    if fix:  # get past the version and namespace checks to exercise the field checks
        body = {**body, "v": 1, "ns": NS}
    payload = json.dumps(body)
    for secret in (None, SECRET):
        result = messages.parse(payload, NS, secret)
        if isinstance(result, Rejected):
            assert _reason_is_bounded(result.reason), result.reason
        else:
            assert result.namespace == NS
            assert 0 <= result.rank.node < 2**63
            assert -(2**31) <= result.rank.priority < 2**31
            if result.kind in (Kind.COORDINATOR, Kind.HEARTBEAT, Kind.RESIGN):
                assert result.term is not None


@settings(max_examples=200, deadline=None)
@given(messages_st)
def test_signed_messages_round_trip_and_tampering_is_caught(message: Message) -> None:
    payload = messages.encode(message, SECRET)
    assert messages.parse(payload, NS, SECRET) == message
    assert messages.parse(payload, NS) == message  # a node without a secret ignores the sig
    assert messages.parse(payload, NS, b"another secret of 32 bytes......") == Rejected(
        "bad signature"
    )
    unsigned = messages.encode(message)
    assert messages.parse(unsigned, NS, SECRET) == Rejected("bad signature")
    body = json.loads(payload)
    body["n"] = body["n"] + 1 if body["n"] < 2**63 - 1 else 0
    assert messages.parse(json.dumps(body), NS, SECRET) == Rejected("bad signature")


@settings(max_examples=100, deadline=None)
@given(kinds, big, big, big)
def test_huge_and_negative_numbers_are_rejected_not_wrapped(
    kind: Kind, node: int, priority: int, term: int
) -> None:
    body = {"v": 1, "ns": NS, "k": kind.value, "n": node, "p": priority, "t": term}
    result = messages.parse(json.dumps(body), NS)
    in_range = 0 <= node < 2**63 and -(2**31) <= priority < 2**31 and 0 <= term < 2**63
    assert isinstance(result, Message) == in_range


def _msg(**fields: object) -> str:
    return json.dumps({"v": 1, "ns": NS, "k": "election", "n": 1, "p": 0, **fields})


NOT_INT = "malformed: n is not an integer"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("\x00\xff\xfe garbage", "not json"),
        ("{not json", "not json"),
        ("[" * 100_000, "oversized"),
        ("[" * 7_000 + "]" * 7_000, "oversized"),
        ("[" * 3_999 + "]" * 3_999, "not json"),  # deeper than the decoder recurses
        ('"a string"', "not an object"),
        ("[1, 2]", "not an object"),
        ("1" * 5_000, "not json"),  # beyond Python's int digit limit
        ("{}", "unknown version"),
        (_msg(v=2), "unknown version"),
        (_msg(v=True), "unknown version"),
        (_msg(v=1.0), "unknown version"),
        (_msg(v="1"), "unknown version"),
        (_msg(ns="other"), "other namespace"),
        (_msg(ns=[NS]), "other namespace"),
        (_msg(k="x" * 7000), "malformed: unknown kind"),
        (_msg(k=["election"]), "malformed: unknown kind"),
        (_msg(k=None), "malformed: unknown kind"),
        (_msg(n="1"), NOT_INT),
        (_msg(n=True), NOT_INT),
        (_msg(n=1.5), NOT_INT),
        (_msg(n=float("inf")), NOT_INT),
        (_msg(n=-1), "malformed: n out of range"),
        (_msg(n=2**63), "malformed: n out of range"),
        (_msg(p=2**32), "malformed: p out of range"),
        (_msg(k="heartbeat"), "malformed: missing t"),
        (_msg(k="resign", t=-5), "malformed: t out of range"),
        (_msg(p=None), "malformed: missing p"),
    ],
)
def test_each_kind_of_junk_has_its_reason(payload: str, reason: str) -> None:
    assert messages.parse(payload, NS) == Rejected(reason)


def test_non_text_payloads_are_rejected() -> None:
    assert messages.parse(b"{}", NS) == Rejected("not text")  # type: ignore[arg-type]
    assert messages.parse(None, NS) == Rejected("not text")  # type: ignore[arg-type]


def test_a_7999_byte_message_with_padding_is_still_a_message() -> None:
    body = {"v": 1, "ns": NS, "k": "election", "n": 5, "p": 0, "pad": ""}
    body["pad"] = "x" * (7999 - len(json.dumps(body)))
    payload = json.dumps(body)
    assert len(payload.encode()) == 7999
    assert messages.parse(payload, NS) == Message(Kind.ELECTION, NS, Rank(0, 5))


def test_signature_junk_never_raises() -> None:
    base = {"v": 1, "ns": NS, "k": "election", "n": 5, "p": 0}
    for sig in (None, 1, "", "\ud800", "é" * 64, ["x"], "0" * 64):
        payload = json.dumps({**base, "sig": sig})
        assert messages.parse(payload, NS, SECRET) == Rejected("bad signature")
    nested: object = 1
    for _ in range(500):
        nested = [nested]
    deep = json.dumps({**base, "x": nested, "sig": "0"})
    assert messages.parse(deep, NS, SECRET) == Rejected("bad signature")
