"""The election protocol as a pure state machine.

``step(state, event, now)`` returns the next state and the effects the caller must carry
out, in order. Nothing here does I/O or reads a clock: time arrives as ``now`` (seconds on
a monotonic clock) and timers are effects that the caller turns back into events.

The protocol is an event-driven Bully algorithm over a broadcast channel:

* A node starts an election when it joins, when the leader resigns without naming it as
  successor, and when the leader falls silent. It broadcasts ``ELECTION`` with its rank.
* A node that sees an election from a lower rank answers ``ALIVE`` (once per election
  window); a candidate that sees a higher rank stands down and waits for an announcement.
* A candidate that hears no higher rank within ``election_timeout`` asks to *claim*
  leadership. The claim is decided outside the protocol (a database lock); only a granted
  claim makes a leader, so messages alone can never create a second leader.
* The leader announces itself (``COORDINATOR``) and sends ``HEARTBEAT`` every interval,
  naming a standby that watches the claim so that a crash is noticed in milliseconds.
* A leader that leaves or is preempted first finishes its leader-only work (``Deposed``),
  then releases the claim and broadcasts ``RESIGN`` naming a successor, which claims at
  once.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from .messages import Kind, Message, Rank

__all__ = [
    "Abdicate",
    "Announce",
    "Claim",
    "ClaimFreed",
    "ClaimGranted",
    "ClaimRefused",
    "Config",
    "Deposed",
    "Effect",
    "Elected",
    "Event",
    "Lost",
    "Receive",
    "Release",
    "Role",
    "Send",
    "SetTimer",
    "CancelTimer",
    "Start",
    "State",
    "Stop",
    "Timer",
    "TimerFired",
    "Watch",
    "initial_state",
    "step",
]


class Role(enum.Enum):
    FOLLOWER = "follower"
    ELECTING = "electing"
    CLAIMING = "claiming"
    LEADER = "leader"
    STOPPED = "stopped"


class Timer(enum.Enum):
    ELECTION = "election"  # candidate: no higher rank answered in time
    COORDINATOR = "coordinator"  # stood down: the winner did not announce in time
    LEADER = "leader"  # follower: the leader fell silent
    HEARTBEAT = "heartbeat"  # leader: time to heartbeat


@dataclass(frozen=True)
class Config:
    election_timeout: float
    leader_timeout: float
    coordinator_wait: float
    heartbeat_interval: float
    preempt: bool = True


@dataclass(frozen=True)
class State:
    namespace: str
    rank: Rank
    config: Config
    role: Role = Role.STOPPED
    term: int | None = None  # own term while leading
    leader: Rank | None = None  # who we believe leads
    leader_term: int | None = None  # highest term heard of
    fencing: bool = False  # current election follows a silent leader
    watching: bool = False  # we are the standby watching the claim
    alive_sent_at: float | None = None
    started: bool = False
    abstain_until: float = 0.0  # after abdicating: stay out of elections until then

    def abstaining(self, now: float) -> bool:
        return now < self.abstain_until

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Start:
    """The node is connected and listening."""


@dataclass(frozen=True)
class Receive:
    message: Message


@dataclass(frozen=True)
class TimerFired:
    timer: Timer


@dataclass(frozen=True)
class ClaimGranted:
    term: int


@dataclass(frozen=True)
class ClaimRefused:
    """Another session holds the claim (or a fenced leader is still within its lease)."""


@dataclass(frozen=True)
class ClaimFreed:
    """The standby watcher saw the claim become free.

    ``clean``: the leader released it on purpose and is naming its successor in a RESIGN,
    so the standby leaves the claim to that successor; otherwise the leader's session
    ended (a crash) and the standby claims at once.
    """

    clean: bool = False


@dataclass(frozen=True)
class Stop:
    successor: int | None = None


@dataclass(frozen=True)
class Abdicate:
    """The leader gives up (its leader work failed) and stays out until ``until``."""

    reason: str
    successor: int | None
    until: float


@dataclass(frozen=True)
class Lost:
    """The connection (and with it the claim) is gone, or the lease could not be renewed."""

    reason: str


Event = (
    Start | Receive | TimerFired | ClaimGranted | ClaimRefused | ClaimFreed | Stop | Abdicate | Lost
)


# ---------------------------------------------------------------- effects


@dataclass(frozen=True)
class Send:
    message: Message


@dataclass(frozen=True)
class Announce:
    """Renew the lease in the database and broadcast COORDINATOR/HEARTBEAT with the standby."""

    kind: Kind
    term: int


@dataclass(frozen=True)
class SetTimer:
    timer: Timer
    at: float


@dataclass(frozen=True)
class CancelTimer:
    timer: Timer


@dataclass(frozen=True)
class Claim:
    """Try to take the claim; with ``fence`` a silent holder may be fenced out first."""

    fence: bool


@dataclass(frozen=True)
class Elected:
    term: int


@dataclass(frozen=True)
class Deposed:
    """Stop all leader-only work and wait for it before any following effect."""

    reason: str


@dataclass(frozen=True)
class Release:
    """Give the claim back (after Deposed work finished)."""

    term: int


@dataclass(frozen=True)
class Watch:
    active: bool


Effect = Send | Announce | SetTimer | CancelTimer | Claim | Elected | Deposed | Release | Watch


def initial_state(namespace: str, rank: Rank, config: Config) -> State:
    return State(namespace=namespace, rank=rank, config=config)


# ---------------------------------------------------------------- transitions


@dataclass
class _Step:
    state: State
    effects: list[Effect] = field(default_factory=list)

    def set(self, **changes: object) -> None:
        self.state = dataclasses.replace(self.state, **changes)  # type: ignore[arg-type]

    def send(self, kind: Kind, **fields: int | None) -> None:
        s = self.state
        self.effects.append(Send(Message(kind, s.namespace, s.rank, **fields)))

    def timer(self, timer: Timer, at: float) -> None:
        self.effects.append(SetTimer(timer, at))

    def cancel(self, *timers: Timer) -> None:
        self.effects.extend(CancelTimer(t) for t in timers)

    def watch(self, active: bool) -> None:
        if self.state.watching != active:
            self.set(watching=active)
            self.effects.append(Watch(active))


def step(state: State, event: Event, now: float) -> tuple[State, list[Effect]]:
    """Apply ``event`` at time ``now``; return the new state and the effects to perform."""
    st = _Step(state)
    match event:
        case Start():
            if state.role is Role.STOPPED and not state.started:
                st.set(started=True)
                _elect(st, now)
        case Receive(message):
            _receive(st, message, now)
        case TimerFired(timer):
            _timer(st, timer, now)
        case ClaimGranted(term):
            _granted(st, term, now)
        case ClaimRefused():
            if state.role is Role.CLAIMING:
                # Someone holds the claim. If no leader is heard, the next election of this
                # node may fence it: the transport only does so if its lease has gone stale.
                st.set(role=Role.FOLLOWER, fencing=state.leader is None)
                st.timer(Timer.LEADER, now + state.config.leader_timeout)
                if state.config.preempt and state.leader is not None and state.leader < state.rank:
                    st.send(Kind.ELECTION)  # bully the lower-ranked incumbent
        case ClaimFreed(clean):
            if state.watching:
                st.set(watching=False)
            if state.abstaining(now):
                st.timer(Timer.COORDINATOR, state.abstain_until)
            elif clean and state.role is Role.FOLLOWER:
                st.timer(Timer.COORDINATOR, now + state.config.coordinator_wait)
            elif state.role in (Role.FOLLOWER, Role.ELECTING):
                _claim(st, fence=False)
        case Abdicate(reason, successor, until):
            if state.role is Role.LEADER:
                _resign(st, reason, successor)
                st.set(abstain_until=until)
                _stand_down(st, now)
        case Stop(successor):
            _halt(st, "resigned", release=True, successor=successor)
        case Lost(reason):
            _halt(st, reason, release=False, successor=None)
    return st.state, st.effects


def _elect(st: _Step, now: float, *, fence: bool = False) -> None:
    cfg = st.state.config
    st.set(role=Role.ELECTING, fencing=st.state.fencing or fence)
    st.cancel(Timer.COORDINATOR, Timer.LEADER)
    st.send(Kind.ELECTION)
    st.timer(Timer.ELECTION, now + cfg.election_timeout)


def _claim(st: _Step, *, fence: bool) -> None:
    st.set(role=Role.CLAIMING, leader=None)
    st.cancel(Timer.ELECTION, Timer.COORDINATOR, Timer.LEADER)
    st.effects.append(Claim(fence=fence))


def _stand_down(st: _Step, now: float) -> None:
    st.set(role=Role.FOLLOWER)
    st.cancel(Timer.ELECTION)
    st.timer(Timer.COORDINATOR, now + st.state.config.coordinator_wait)


def _resign(st: _Step, reason: str, successor: int | None) -> None:
    """Leader steps down: work first, then the claim, then the announcement."""
    term = st.state.term
    assert term is not None
    st.cancel(Timer.HEARTBEAT)
    st.effects.append(Deposed(reason))
    st.effects.append(Release(term))
    st.send(Kind.RESIGN, term=term, successor=successor)
    st.set(term=None, leader=None)


def _halt(st: _Step, reason: str, *, release: bool, successor: int | None) -> None:
    s = st.state
    if s.role is Role.STOPPED:
        return
    if s.role is Role.LEADER:
        if release:
            _resign(st, reason, successor)
        else:
            st.cancel(Timer.HEARTBEAT)
            st.effects.append(Deposed(reason))
            st.set(term=None, leader=None)
    st.cancel(Timer.ELECTION, Timer.COORDINATOR, Timer.LEADER)
    st.watch(False)
    st.set(role=Role.STOPPED)


def _receive(st: _Step, m: Message, now: float) -> None:
    s = st.state
    if s.role is Role.STOPPED or m.namespace != s.namespace or m.rank.node == s.rank.node:
        return
    cfg = s.config
    if m.kind is Kind.ELECTION:
        if s.role is Role.LEADER:
            if m.rank > s.rank and cfg.preempt:
                _resign(st, f"preempted by node {m.rank.node}", successor=m.rank.node)
                _stand_down(st, now)
            else:
                assert s.term is not None
                st.effects.append(Announce(Kind.COORDINATOR, s.term))
        elif m.rank < s.rank:
            if (s.role is Role.FOLLOWER and s.leader is not None) or s.abstaining(now):
                return  # the leader answers newcomers; an abstaining node lets them run
            if s.alive_sent_at is None or now - s.alive_sent_at >= cfg.election_timeout:
                st.send(Kind.ALIVE)
                st.set(alive_sent_at=now)
            if s.role is Role.FOLLOWER:
                _elect(st, now)
        elif s.role is Role.ELECTING:
            _stand_down(st, now)
    elif m.kind is Kind.ALIVE:
        if m.rank > s.rank and s.role is Role.ELECTING:
            _stand_down(st, now)
    elif m.kind in (Kind.COORDINATOR, Kind.HEARTBEAT):
        _leader_heard(st, m, now)
    elif m.kind is Kind.RESIGN:
        _resigned(st, m, now)


def _leader_heard(st: _Step, m: Message, now: float) -> None:
    s = st.state
    assert m.term is not None
    if s.role is Role.LEADER:
        return  # our own lease renewals in the database are the truth while we lead
    if s.leader_term is not None and m.term < s.leader_term:
        return  # an older leadership
    is_new = (s.leader, s.leader_term) != (m.rank, m.term)
    st.set(leader=m.rank, leader_term=m.term, fencing=False)
    if s.role is Role.ELECTING:
        st.set(role=Role.FOLLOWER)
    st.cancel(Timer.ELECTION, Timer.COORDINATOR)
    if st.state.role is Role.FOLLOWER:
        st.timer(Timer.LEADER, now + s.config.leader_timeout)
    st.watch(m.standby == s.rank.node)
    challenge = is_new and s.config.preempt and m.rank < s.rank and not s.abstaining(now)
    if challenge and st.state.role is Role.FOLLOWER:
        st.send(Kind.ELECTION)  # we outrank the new leader: it will step down for us


def _resigned(st: _Step, m: Message, now: float) -> None:
    s = st.state
    if s.role is Role.LEADER:
        return
    if s.leader == m.rank:
        st.set(leader=None)
        st.cancel(Timer.LEADER)
    if s.role is Role.CLAIMING:
        return
    if m.successor == s.rank.node and not s.abstaining(now):
        _claim(st, fence=False)
    elif m.successor is None and not s.abstaining(now):
        _elect(st, now)
    else:
        st.set(role=Role.FOLLOWER)
        st.timer(Timer.COORDINATOR, now + s.config.coordinator_wait)


def _timer(st: _Step, timer: Timer, now: float) -> None:
    s = st.state
    if timer in (Timer.COORDINATOR, Timer.LEADER) and s.abstaining(now):
        if s.role is Role.FOLLOWER:
            st.timer(timer, s.abstain_until)
        return
    if timer is Timer.ELECTION and s.role is Role.ELECTING:
        _claim(st, fence=s.fencing)
    elif timer is Timer.COORDINATOR and s.role is Role.FOLLOWER and s.leader is None:
        _elect(st, now)
    elif timer is Timer.LEADER and s.role is Role.FOLLOWER:
        st.set(leader=None)
        _elect(st, now, fence=True)
    elif timer is Timer.HEARTBEAT and s.role is Role.LEADER:
        assert s.term is not None
        st.effects.append(Announce(Kind.HEARTBEAT, s.term))
        st.timer(Timer.HEARTBEAT, now + s.config.heartbeat_interval)


def _granted(st: _Step, term: int, now: float) -> None:
    s = st.state
    if s.role is not Role.CLAIMING:
        st.effects.append(Release(term))  # stopped while the claim was in flight
        return
    st.watch(False)
    st.set(role=Role.LEADER, term=term, leader=s.rank, leader_term=term, fencing=False)
    st.cancel(Timer.ELECTION, Timer.COORDINATOR, Timer.LEADER)
    st.effects.append(Elected(term))
    st.effects.append(Announce(Kind.COORDINATOR, term))
    st.timer(Timer.HEARTBEAT, now + s.config.heartbeat_interval)
