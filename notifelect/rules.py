"""The election's rules, as pure functions of what a node observed.

Nothing here reads a clock or does I/O: the session, the transports and the driver report
facts (a row as read, when this node read it on its own clock) and these decide. Each rule
has a table-driven test in ``tests/unit/test_rules.py`` whose rows read like the failure
table of the docs.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol

from .messages import Kind, Message

__all__ = [
    "Ask",
    "Belief",
    "Freed",
    "Record",
    "Sighting",
    "StayOut",
    "View",
    "abstaining",
    "believe",
    "best_candidate",
    "ended_cleanly",
    "how_it_ended",
    "lease_age",
    "lease_end",
    "lease_holds",
    "lease_left",
    "lease_recheck",
    "leader_silent",
    "may_fence",
    "may_fence_guard",
    "sight",
    "silent_from",
    "standby",
    "standbys_due",
    "stay_out",
    "successor",
    "takeover_wait",
    "unchanged_for",
]


class Freed(enum.Enum):
    """How a standby saw a leader's claim end (what its watch of the leader's process
    reports)."""

    #: The leader marked its term released before letting go: a clean hand-over; its
    #: RESIGN names the successor.
    RELEASED = "released"
    #: The leader's process was seen alive (its anchor held) and then gone, on a session
    #: that stayed connected throughout: positive evidence that it can no longer act.
    DIED = "died"
    #: Nothing was observed: the anchor was already free (or the watch was re-established
    #: after a disconnect). Not evidence of anything; a successor waits out the lease.
    UNOBSERVED = "unobserved"


@dataclass(frozen=True)
class Sighting:
    """What this node last saw of something that should keep changing while it lives (a
    leader's lease renewal, a claim holder's activity), on this node's clock.

    ``subject`` names what is watched (a leadership: node and term; a claim holder: its
    backend pid); ``mark`` is its state as last read, which changes whenever it shows a
    sign of life; ``changed_at`` is when this node saw the mark change.
    """

    subject: Hashable
    mark: Hashable
    changed_at: float


def sight(
    last: Sighting | None, subject: Hashable, mark: Hashable, age: float | None, at: float
) -> Sighting:
    """Fold one reading, taken at ``at`` on this node's clock, into what was seen before.

    A sign of life is a *change* of the mark between two readings of the same subject,
    whatever the database's clock says: a clock that steps back makes a renewal look
    younger than it is, one that steps forward makes it look older, and neither may stall
    or hasten a take-over. Only at the first reading of a subject does the database's own
    ``age`` of the mark (a difference of two readings of one clock, in one statement)
    date it; an unknown or negative age (a clock that stepped back) counts as now.
    """
    if last is not None and last.subject == subject:
        return last if last.mark == mark else Sighting(subject, mark, at)
    since = age if age is not None and age > 0 else 0.0
    return Sighting(subject, mark, at - since)


def unchanged_for(seen: Sighting, at: float) -> float:
    """Seconds, on this node's clock, that ``seen`` has shown no sign of life as of ``at``."""
    return max(0.0, at - seen.changed_at)


def may_fence_guard(ended_cleanly: bool, held_for: float, lease: float) -> bool:
    """Whether a node that holds a group's claim may terminate the transactions that
    still hold the old term (the fencing guard), ``held_for`` seconds after it first found
    them holding it.

    After an unclean end the claimant has waited out the old lease (or seen the old
    process end), so they belong to a leadership that is over: at once. After a clean
    release the old leader's work was done, but a guarded transaction may still be
    committing: it gets one ``lease``.
    """
    return not ended_cleanly or held_for >= lease


def ended_cleanly(previous: int | None, released: bool, me: int | None) -> bool:
    """Whether the previous leadership of a group, as a node that just took its claim
    found it recorded, ended so that nobody can still act on it: the group never had a
    leader, its leader released its term (a clean hand-over, after its work was done), or
    it was this very node's (whose gates closed when it lost the claim)."""
    return previous is None or released or previous == me


def takeover_wait(
    *,
    previous: int | None,
    released: bool,
    me: int | None,
    fenced: bool,
    strict: bool,
    evidence: int | None,
    lease: float,
    recorded_lease: float | None,
) -> tuple[float, str | None]:
    """How long a node that has just taken a group's claim waits, on its own clock,
    before it takes the next term; and why (None: no wait).

    It acts at once after a clean release (``released``), when the group never had a
    leader, or when the previous leader was this very node (whose gates closed when it
    lost the claim). After any other end the previous leader may still trust its lease
    (its session may have been ended by the server while its process lives on), so the
    node waits a whole lease, the longer of its own and the one recorded with the
    previous term: that lease was last renewed before the claim was taken, so it has run
    out by then. Only with ``strict=False`` and ``evidence`` that the previous leader's
    process ended (its anchor seen to end), and when that leader was not fenced by this
    node, does it act at once (the fast crash path).
    """
    if ended_cleanly(previous, released, me):
        return 0.0, None
    proven = evidence is not None and previous == evidence
    if proven and not strict and not fenced:
        return 0.0, None
    why = (
        "fenced"
        if fenced
        else "strict_takeover"
        if proven
        else "no evidence that its process is gone"
    )
    return max(lease, recorded_lease or 0.0), why


def standby(members: Iterable[tuple[int, int]], leader: int) -> int | None:
    """The member that watches ``leader``'s process to take over at once if it ends:
    among the other ``members`` (priority, node), the highest priority, and among equals
    the next node id after the leader's, wrapping around (so that, among equals, each
    session watches one other, whatever the number of groups). The SQL of the session
    follows the same order (``notifelect.sql.STANDBY_ORDER``, checked against this)."""
    others = [(priority, node) for priority, node in members if node != leader]
    if not others:
        return None
    return min(others, key=lambda m: (-m[0], m[1] <= leader, m[1]))[1]


def successor(members: Iterable[tuple[int, int]], leaving: int) -> int | None:
    """The member a leaving leader names to claim at once: the best other member by rank
    (priority, then node id; see :func:`best_candidate`)."""
    best = best_candidate(members, leaving)
    return None if best is None else best[1]


def addressee(message: Message) -> int | None:
    """The one node a message goes to; None: the whole group.

    A RESIGN that names its successor goes to the successor alone: only it acts on it
    (it claims at once), and the others learn of the hand-over from the leader row at
    their next reading, as they learn of every leader. So a hand-over wakes one process
    whatever the size of the group, and the successor does not share the server and the
    cores with every other member's wake-up. Every other message is for the group.
    """
    if message.kind is Kind.RESIGN:
        return message.successor
    return None


def best_candidate(
    members: Iterable[tuple[int, int]], excluding: int | None = None
) -> tuple[int, int] | None:
    """The highest-ranked member (priority, then node id) other than ``excluding``: who
    should lead when nobody does (a survey's answer), and whom a leaving leader names."""
    others = [(priority, node) for priority, node in members if node != excluding]
    return max(others) if others else None


def how_it_ended(watched: int, recorded: int | None, released: bool, observed: bool) -> Freed:
    """How a standby that watched leader ``watched``'s process saw its leadership end,
    from the group's leader row as read once the watch ended (its node ``recorded`` and
    whether it was ``released``) and whether the watch ``observed`` the process alive
    first (on one unbroken connection).

    A leadership that moved on to another node tells nothing about ``watched``; a released
    term is a clean hand-over (its RESIGN names the successor); a process seen alive and
    then gone is evidence that it can act no more; anything else is not evidence.
    """
    if recorded != watched:
        return Freed.UNOBSERVED
    if released:
        return Freed.RELEASED
    return Freed.DIED if observed else Freed.UNOBSERVED


def leader_silent(quiet_for: float | None, leader_timeout: float) -> bool:
    """Whether a leader whose lease renewal has not changed for ``quiet_for`` seconds
    (on this node's clock; None: unknown) has fallen silent: its followers look for a
    new leader, and a message that claims it leads is a replay. Unknown is not silent:
    a silence must be seen."""
    return quiet_for is not None and quiet_for >= leader_timeout


def silent_from(renewed_at: float, leader_timeout: float) -> float:
    """When a leader whose lease was last seen renewed at ``renewed_at`` (this node's
    clock) falls silent (:func:`leader_silent`), unless it is seen renewed again: a
    follower looks for a new leader from then on."""
    return renewed_at + leader_timeout


def may_fence(
    *, recorded: bool, quiet_for: float, leader_timeout: float, lease: float, io_timeout: float
) -> bool:
    """Whether a claimant may terminate the session that holds a group's claim, which has
    shown no sign of life for ``quiet_for`` seconds on the claimant's clock.

    The recorded leader (``recorded``) is fenced once it has been silent for longer than
    the followers' patience and than a lease: a leader that renews late but within its
    lease (a slow server) is never fenced. A holder that is not the recorded leader is
    still taking over (waiting out the old lease, idle meanwhile): only one idle for
    longer than that wait can take (a lease and a database call) is stuck.
    """
    if recorded:
        return quiet_for >= max(leader_timeout, lease)
    return quiet_for >= lease + io_timeout


def standbys_due(since: float, *, leader_timeout: float) -> bool:
    """Whether a session records its groups' standbys again, ``since`` seconds after it
    last did: once per ``leader_timeout``, so that a standby that left is replaced before
    the followers' patience runs out."""
    return since >= leader_timeout


# ---------------------------------------------------------------- this node's own lease


def lease_end(confirmed_at: float, lease: float) -> float:
    """When a lease confirmed by the database at ``confirmed_at`` (this node's clock: when
    the confirming statement was sent) runs out unless renewed."""
    return confirmed_at + lease


def lease_holds(end: float, at: float) -> bool:
    """Whether a lease that runs out at ``end`` still holds at ``at``."""
    return at < end


def lease_left(end: float, at: float) -> float:
    """Seconds a lease that runs out at ``end`` has left at ``at`` (never negative)."""
    return max(0.0, end - at)


def lease_age(end: float, lease: float, at: float) -> float:
    """Seconds, at ``at``, since the last renewal of a lease of ``lease`` seconds that runs
    out at ``end``."""
    return max(0.0, at - (end - lease))


def lease_recheck(end: float, at: float, interval: float) -> float:
    """How long the holder of a lease may wait before it looks at its lease again: when it
    runs out, and at least every half interval (the event loop's timers run on a clock
    that stops during a suspend, the lease's does not)."""
    return min(lease_left(end, at), interval / 2)


# ---------------------------------------------------------------- staying out


class StayOut(enum.Enum):
    """Why a node stays out of elections for a while."""

    #: Its leader work failed: it gives the leadership up and lets another member lead.
    ABDICATED = "abdicated"
    #: It is back after losing a leadership: the standby may be taking over right now.
    RETURNED = "returned"


def stay_out(why: StayOut, at: float, *, leader_timeout: float, coordinator_wait: float) -> float:
    """Until when a node stays out of elections, from ``at``: an abdicating leader for a
    ``leader_timeout`` (long enough for another member to notice and take over), a node
    back after losing its leadership for a ``coordinator_wait`` (so that it does not race
    the standby for the leadership it just left)."""
    return at + (leader_timeout if why is StayOut.ABDICATED else coordinator_wait)


def abstaining(at: float, until: float) -> bool:
    """Whether a node that stays out ``until`` still does at ``at``."""
    return at < until


# ---------------------------------------------------------------- which messages are believed


class Record(Protocol):
    """A group's leader row as this node read it (``transport.base.LeaderRecord``)."""

    @property
    def node(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def released(self) -> bool: ...
    @property
    def quiet_for(self) -> float | None: ...


class Ask(enum.Enum):
    """A fact :func:`believe` needs before it can decide: the caller reads it and asks
    again with it in the view."""

    #: The group's leader row (``View.record``).
    RECORD = "record"
    #: Whether the sender is a live member with the rank it claims (``View.member``).
    MEMBER = "member"


@dataclass(frozen=True)
class Belief:
    """What to make of a message: ``believed``, or not and why (``reason``). A message
    that is not believed is either dropped (a forgery, a replay, a stale one: counted as
    dropped) or ``ignored`` (true, perhaps, but nothing this node has to act on)."""

    believed: bool
    reason: str | None = None
    ignored: bool = False


BELIEVED = Belief(True)


@dataclass(frozen=True)
class View:
    """What a node knows when a message arrives, and what it read to check it."""

    #: This node's id.
    me: int | None
    #: Whether this node leads the group now.
    leading: bool
    #: The highest term of the group this node has heard of.
    leader_term: int | None
    #: The leadership (node, term) the database last confirmed to this node, and how many
    #: seconds ago (this node's clock).
    verified: tuple[int, int] | None
    verified_age: float
    #: How long followers tolerate a leader's silence (``Settings.leader_timeout``).
    leader_timeout: float
    #: Whether the sender's rank may displace this node's leadership (``Config.preempt``).
    preempts: bool = False
    #: The group's leader row, once read for this message (``Ask.RECORD``); None: there
    #: is none.
    record: Record | None = None
    record_read: bool = False
    #: Whether the sender is a live member of the group with the rank it claims, once
    #: asked (``Ask.MEMBER``).
    member: bool | None = None


def believe(message: Message, view: View) -> Belief | Ask:
    """Whether a node believes ``message`` (from another node), given what it knows; or
    which fact it must read first.

    Anyone who can NOTIFY on the channel can forge or replay a message, so a message
    that would change who leads is believed only once the database agrees:

    * a message of a term older than one already heard of is stale;
    * a leader's announcement (COORDINATOR or HEARTBEAT: no node of this release sends
      them, the leader row read every interval is what followers follow, but an older
      node may) is believed only if the leader row names that very leadership,
      unreleased and renewed within ``leader_timeout`` (a replay of a silent leader's
      announcement must not keep it in place); what is believed is then that row. A
      leadership the database confirmed less than ``leader_timeout`` ago is known
      already, and a leader needs nobody's announcement: nothing to act on;
    * a RESIGN is believed only by the successor it names, and only if the leader row
      shows that very term released (only the leader can release it); other nodes let
      the successor's claim speak for it;
    * an ELECTION that would make this node's leadership step down must come from a live
      member with that rank.
    """
    if message.kind in (Kind.COORDINATOR, Kind.HEARTBEAT, Kind.RESIGN):
        if message.term is None:
            return Belief(False, "no term")
        if view.leader_term is not None and message.term < view.leader_term:
            return Belief(False, "stale term")  # an older leadership: no query
    leadership = (message.rank.node, message.term)
    if message.kind in (Kind.COORDINATOR, Kind.HEARTBEAT):
        if view.leading:
            # Our own renewals in the database are the truth while we lead.
            return Belief(False, "announcement while leading", ignored=True)
        if view.verified == leadership and view.verified_age < view.leader_timeout:
            # Confirmed a moment ago, and the leader row is read every interval anyway.
            return Belief(False, "known leader", ignored=True)
        if not view.record_read:
            return Ask.RECORD
        r = view.record
        if r is None or r.released or (r.node, r.term) != leadership:
            return Belief(False, "unverified leader")
        if r.priority != message.rank.priority:
            return Belief(False, "unverified leader")
        if leader_silent(r.quiet_for, view.leader_timeout):
            return Belief(False, "silent leader")  # its renewals stopped: a replay
        return BELIEVED
    if message.kind is Kind.RESIGN:
        if message.successor is not None and message.successor != view.me:
            # Another node is named: it claims, and the database shows its leadership
            # within an interval. Nothing to do here, and no query for every follower.
            return Belief(False, "resign naming another", ignored=True)
        if not view.record_read:
            return Ask.RECORD
        r = view.record
        if r is None or (r.node, r.term) != leadership or not r.released:
            return Belief(False, "unverified resign")
        return BELIEVED
    if message.kind is Kind.ELECTION and view.leading and view.preempts:
        # Only a live member may make the leader step down.
        if view.member is None:
            return Ask.MEMBER
        return BELIEVED if view.member else Belief(False, "unknown member")
    return BELIEVED
