"""Wire format of election messages: small, versioned JSON.

``parse`` never raises: anything that is not a well-formed message of this version for the
expected namespace comes back as a :class:`Rejected` with a short reason, so callers can
count and drop it. Reasons are a small fixed set (never text taken from the payload), so
counting them by reason stays bounded whatever arrives on the channel.

With a shared secret, ``encode`` adds an HMAC-SHA256 signature (``sig``) over the canonical
JSON of the other fields and ``parse`` rejects messages without a valid one. A signature
proves a message came from a holder of the secret, not that it is fresh: replayed messages
are still possible, which is why claims about leadership are checked against the database.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
from dataclasses import dataclass

VERSION = 1
#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD = 7999
_MAX_INT = 2**63 - 1


class Kind(enum.StrEnum):
    ELECTION = "election"  # "I am running": lower-ranked candidates stand down
    ALIVE = "alive"  # "I outrank an election I saw and am running"
    COORDINATOR = "coordinator"  # "I hold the claim with this term"
    HEARTBEAT = "heartbeat"  # periodic coordinator; names the standby
    RESIGN = "resign"  # "I released the claim; successor, take it"


_KINDS = frozenset(k.value for k in Kind)


@dataclass(frozen=True, order=True)
class Rank:
    """Election rank: higher priority wins, then the higher sequence number."""

    priority: int
    node: int

    def __str__(self) -> str:
        return f"{self.node}@{self.priority}"


@dataclass(frozen=True)
class Message:
    kind: Kind
    namespace: str
    rank: Rank
    term: int | None = None
    standby: int | None = None  # heartbeat/coordinator: node that watches the claim
    successor: int | None = None  # resign: node that should claim at once


@dataclass(frozen=True)
class Rejected:
    reason: str


def encode(message: Message, secret: bytes | None = None) -> str:
    body: dict[str, object] = {
        "v": VERSION,
        "ns": message.namespace,
        "k": message.kind.value,
        "n": message.rank.node,
        "p": message.rank.priority,
    }
    if message.term is not None:
        body["t"] = message.term
    if message.standby is not None:
        body["s"] = message.standby
    if message.successor is not None:
        body["u"] = message.successor
    if secret is not None:
        body["sig"] = _sign(body, secret)
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def _sign(body: dict[str, object], secret: bytes) -> str:
    unsigned = {k: v for k, v in body.items() if k != "sig"}
    canonical = json.dumps(unsigned, separators=(",", ":"), sort_keys=True).encode()
    return hmac.new(secret, canonical, hashlib.sha256).hexdigest()


def _signed(body: dict[str, object], secret: bytes) -> bool:
    sig = body.get("sig")
    if not isinstance(sig, str):
        return False
    try:
        expected = _sign(body, secret)
        return hmac.compare_digest(sig.encode(), expected.encode())
    except (ValueError, TypeError, RecursionError):  # junk that does not even re-encode
        return False


def _int(body: dict[str, object], key: str, *, required: bool, signed: bool = False) -> int | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ValueError(f"missing {key}")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} is not an integer")
    low = -(2**31) if signed else 0
    high = 2**31 - 1 if signed else _MAX_INT
    if not low <= value <= high:
        raise ValueError(f"{key} out of range")
    return value


def namespace_of(payload: str) -> str | None:
    """The group ``payload`` says it is for, without checking anything else (to route a
    message that arrived on a node's own channel to its group); None if it names none."""
    if len(payload) > MAX_PAYLOAD:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    ns = body.get("ns") if isinstance(body, dict) else None
    return ns if isinstance(ns, str) else None


def parse(payload: str, namespace: str | None, secret: bytes | None = None) -> Message | Rejected:
    """Decode ``payload`` for ``namespace`` (None: any namespace); never raises.

    With ``secret``, only messages signed with it are accepted.
    """
    text: object = payload  # callers' types are not a promise about what arrives
    if not isinstance(text, str):
        return Rejected("not text")
    if len(payload) > MAX_PAYLOAD:
        return Rejected("oversized")
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return Rejected("not json")
    if not isinstance(body, dict):
        return Rejected("not an object")
    version = body.get("v")
    if type(version) is not int or version != VERSION:  # not True, not 1.0
        return Rejected("unknown version")
    ns = body.get("ns")
    if namespace is not None and ns != namespace:
        return Rejected("other namespace")
    if not isinstance(ns, str):
        return Rejected("no namespace")
    if secret is not None and not _signed(body, secret):
        return Rejected("bad signature")
    k = body.get("k")
    if not isinstance(k, str) or k not in _KINDS:
        return Rejected("malformed: unknown kind")
    kind = Kind(k)
    try:
        node = _int(body, "n", required=True)
        priority = _int(body, "p", required=True, signed=True)
        term = _int(body, "t", required=kind in (Kind.COORDINATOR, Kind.HEARTBEAT, Kind.RESIGN))
        standby = _int(body, "s", required=False)
        successor = _int(body, "u", required=False)
    except (ValueError, TypeError) as exc:
        return Rejected(f"malformed: {exc}")
    assert node is not None
    assert priority is not None
    return Message(kind, ns, Rank(priority, node), term, standby, successor)
