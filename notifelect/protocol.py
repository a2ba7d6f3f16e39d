"""The election protocol as a pure state machine.

(Longer than most modules on purpose: a state machine reads best whole, each transition
next to the ones it hands over to; the events, effects and state it speaks of are small
dataclasses at the top.)

``step(state, event, now)`` returns the next state and the effects the caller must carry
out, in order. Nothing here does I/O or reads a clock: time arrives as ``now`` (seconds on
a monotonic clock) and timers are effects that the caller turns back into events.

The protocol is an event-driven Bully algorithm over a broadcast channel, made to cost
O(N) by asking the database first:

* A node that needs a leader (on joining, when the leader falls silent, when an awaited
  announcement does not come) first *surveys* the database: is the claim held, and who is
  the highest-ranked live member? A node that learns the claim is held follows; one that
  sees a higher-ranked live member waits for it; the best candidate claims at once (under
  classic Bully it broadcasts ``ELECTION`` first). Timers that start these steps are
  jittered and back off. One search round ends with one claim, whatever N is.
* A candidate that sees an election from a lower rank answers ``ALIVE`` (once per
  election window); one that sees a higher rank stands down. Followers stay quiet.
* A candidate that hears no higher rank within ``election_timeout`` asks to *claim*
  leadership. The claim is decided outside the protocol (a database lock); only a granted
  claim makes a leader, so messages alone can never create a second leader.
* The leader sends nothing while it leads: its session renews its lease in the database
  once per interval, and every follower's session reads the leader row as often. That
  reading is the leader's heartbeat (``LeaderSeen``): it names the leadership, its
  standby (the member that watches the leader's process, so that a crash is noticed in
  milliseconds) and when the lease was last seen renewed. A follower that sees no renewal
  for ``leader_timeout`` looks for a new leader (``rules.leader_silent``).
* A running leader is displaced only as ``Config.preempt`` says: by default only by a live
  member of strictly higher *priority* that has been a member for ``join_holdoff``; the
  sequence number breaks ties in open elections and picks successors, but never moves a
  healthy leader (classic Bully, ``Preempt.RANK``, lets every higher rank preempt).
* A leader that leaves or is preempted first finishes its leader-only work (``Deposed``),
  then releases the claim and sends ``RESIGN`` to a successor it names, which claims at
  once; the others see the leader row released, and then the next leader's.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from . import rules
from .messages import Kind, Message, Rank
from .rules import Freed as Freed  # how the standby saw the claim end (one enum)

__all__ = [
    "Abdicate",
    "Freed",
    "LeaderSeen",
    "Preempt",
    "Survey",
    "Surveyed",
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
    LEADER = "leader"  # follower: time to look whether the leader fell silent
    PREEMPT = "preempt"  # newcomer of higher priority: its join hold-off is over


class Preempt(enum.Enum):
    """Who may displace a running leader."""

    PRIORITY = "priority"  # a live member of strictly higher priority (the default)
    RANK = "rank"  # classic Bully: any higher (priority, sequence)
    NEVER = "never"  # nobody: the incumbent keeps leading until it leaves


@dataclass(frozen=True)
class Config:
    election_timeout: float
    leader_timeout: float
    coordinator_wait: float
    preempt: Preempt = Preempt.PRIORITY
    #: How long a newcomer must have been a member before it may preempt a leader.
    join_holdoff: float = 0.0
    #: Backed-off timers grow up to this many times their base delay.
    max_backoff: int = 8


@dataclass(frozen=True)
class State:
    namespace: str
    rank: Rank
    config: Config
    role: Role = Role.STOPPED
    term: int | None = None  # own term while leading
    leader: Rank | None = None  # who we believe leads
    leader_term: int | None = None  # highest term heard of
    leader_seen_at: float = 0.0  # when the leader's lease was last seen renewed
    fencing: bool = False  # current election follows a silent leader
    watching: int | None = None  # as the standby: the leader whose process we watch
    #: As the standby: the leadership (node, term) whose watch ended without seeing its
    #: process alive (no anchor held: gone already, or a leader on a borrowed connection).
    #: It is not watched again: another watch would tell nothing more, and end at once.
    unwatched: tuple[int, int | None] | None = None
    alive_sent_at: float | None = None
    started: bool = False
    joined_at: float = 0.0
    abstain_until: float = 0.0  # after abdicating: stay out of elections until then
    misses: int = 0  # consecutive timer-driven searches without hearing a leader
    surveying: bool = False  # a Survey is in flight
    successor_named: bool = False  # a RESIGN named us while our claim was in flight

    def abstaining(self, now: float) -> bool:
        return rules.abstaining(now, self.abstain_until)

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
    """The standby watcher saw the leadership of node ``leader`` end, as ``how`` says.

    RELEASED: the leader is naming its successor in a RESIGN, so the standby leaves the
    claim to that successor. DIED: the leader's process is gone, the standby claims at
    once with that evidence. UNOBSERVED: nothing is known; an ordinary search follows.
    """

    how: Freed
    leader: int


@dataclass(frozen=True)
class Surveyed:
    """What the database said: whether the claim is held, and the best live candidate.

    ``best`` is the highest-ranked live member, not counting the recorded leader while
    the claim is held (that is, the node that should take over from it).
    """

    held: bool
    best: Rank | None
    #: The leadership the database records while the claim is held (rank and term), so
    #: that a newcomer follows it at once instead of waiting for its next reading.
    leader: Rank | None = None
    term: int | None = None
    #: The standby that leadership records: a node that follows it from this answer and
    #: is named watches the leader's process from now on, not from its next reading (a
    #: crash an interval after a cold start is then a crash like any other).
    standby: int | None = None


@dataclass(frozen=True)
class LeaderSeen:
    """The group's leader row, as this node's session read it (about once per interval):
    ``leader`` holds ``term``, names ``standby`` as the member that watches its process,
    and its lease was last seen renewed at ``renewed_at`` (this node's clock; see
    :func:`notifelect.rules.sight`). ``released``: the term was given back (a hand-over:
    its RESIGN went to the successor alone)."""

    leader: Rank
    term: int
    standby: int | None
    renewed_at: float
    released: bool = False


@dataclass(frozen=True)
class Stop:
    """Leave the group: a leader resigns (its RESIGN's successor is named from the
    database's members when it is sent, see ``Send``)."""


@dataclass(frozen=True)
class Abdicate:
    """The leader gives up (its leader work failed) and stays out until ``until``."""

    reason: str
    until: float


@dataclass(frozen=True)
class Lost:
    """The connection (and with it the claim) is gone, or the lease could not be renewed."""

    reason: str


Event = (
    Start
    | Receive
    | TimerFired
    | ClaimGranted
    | ClaimRefused
    | ClaimFreed
    | Surveyed
    | LeaderSeen
    | Stop
    | Abdicate
    | Lost
)


# ---------------------------------------------------------------- effects


@dataclass(frozen=True)
class Send:
    """Send ``message``: to the group, or to its one addressee (``rules.addressee``). A
    RESIGN without a successor gets one when it is sent: the best other live member the
    database knows of (``rules.successor``), also those whose messages this node has not
    seen yet; it then goes to that member alone."""

    message: Message


@dataclass(frozen=True)
class SetTimer:
    """Fire ``timer`` at a time drawn uniformly from ``[at, at + spread]``."""

    timer: Timer
    at: float
    spread: float = 0.0


@dataclass(frozen=True)
class CancelTimer:
    timer: Timer


@dataclass(frozen=True)
class Claim:
    """Try to take the claim; with ``fence`` a silent holder may be fenced out first.

    ``evidence``: the node whose process the standby saw end; without it a successor of
    an unclean leadership waits the old lease out.
    """

    fence: bool
    evidence: int | None = None


@dataclass(frozen=True)
class Survey:
    """Ask the database whether the claim is held and who should lead; answer: Surveyed."""


@dataclass(frozen=True)
class Elected:
    term: int


@dataclass(frozen=True)
class Deposed:
    """Stop all leader-only work and wait for it before any following effect.

    ``voluntary``: the node still holds its claim (it resigns); work that may finish can
    finish while the lease is kept renewed. Otherwise the claim is already lost and
    everything is cancelled at once.
    """

    reason: str
    voluntary: bool = True


@dataclass(frozen=True)
class Release:
    """Give the claim back (after Deposed work finished)."""

    term: int


@dataclass(frozen=True)
class Watch:
    """Watch the process of leader ``leader`` as the standby (None: stop watching)."""

    leader: int | None


Effect = Send | SetTimer | CancelTimer | Claim | Survey | Elected | Deposed | Release | Watch


def preempts(config: Config, challenger: Rank, leader: Rank) -> bool:
    """Whether ``challenger`` may displace a running ``leader`` under ``config``."""
    if config.preempt is Preempt.PRIORITY:
        return challenger.priority > leader.priority
    if config.preempt is Preempt.RANK:
        return challenger > leader
    return False


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

    def timer(self, timer: Timer, at: float, spread: float = 0.0) -> None:
        self.effects.append(SetTimer(timer, at, spread))

    def backed_off(self, timer: Timer, now: float, base: float) -> None:
        """Set a timer that starts a search: jittered, and longer after each miss."""
        delay = base * min(2**self.state.misses, self.state.config.max_backoff)
        self.effects.append(SetTimer(timer, now + delay, delay / 2))

    def cancel(self, *timers: Timer) -> None:
        self.effects.extend(CancelTimer(t) for t in timers)

    def watch(self, leader: int | None) -> None:
        if self.state.watching != leader:
            self.set(watching=leader)
            self.effects.append(Watch(leader))


def step(state: State, event: Event, now: float) -> tuple[State, list[Effect]]:
    """Apply ``event`` at time ``now``; return the new state and the effects to perform."""
    st = _Step(state)
    match event:
        case Start():
            if state.role is Role.STOPPED and not state.started:
                st.set(started=True, joined_at=now)
                _search(st, now)
        case Receive(message):
            _receive(st, message, now)
        case TimerFired(timer):
            _timer(st, timer, now)
        case Surveyed(held, best, leader, term, standby):
            _surveyed(st, held, best, now, leader, term, standby)
        case ClaimGranted(term):
            _granted(st, term, now)
        case ClaimRefused():
            _refused(st, now)
        case ClaimFreed(how, leader):
            _freed(st, how, leader, now)
        case LeaderSeen(leader, term, standby, renewed_at, released):
            if released:
                _released_seen(st, leader, term, now)
            else:
                _leader_seen(st, leader, term, standby, renewed_at, now)
        case Abdicate(reason, until):
            if state.role is Role.LEADER:
                _resign(st, reason, None)
                st.set(abstain_until=until)
                _stand_down(st, now)
        case Stop():
            _halt(st, "resigned", release=True)
        case Lost(reason):
            _halt(st, reason, release=False)
    return st.state, st.effects


def _search(st: _Step, now: float, *, fence: bool = False) -> None:
    """Look for a leader: ask the database before broadcasting anything."""
    st.set(role=Role.FOLLOWER, leader=None, fencing=st.state.fencing or fence)
    st.cancel(Timer.ELECTION, Timer.COORDINATOR, Timer.LEADER)
    st.set(surveying=True)
    st.effects.append(Survey())


def _surveyed(
    st: _Step,
    held: bool,
    best: Rank | None,
    now: float,
    leader: Rank | None = None,
    term: int | None = None,
    standby: int | None = None,
) -> None:
    s = st.state
    if not s.surveying or s.role is not Role.FOLLOWER:
        return  # the answer came too late: something else happened meanwhile
    st.set(surveying=False)
    if s.leader is not None:
        return  # a leader was heard while we asked
    newer = term is not None and (s.leader_term is None or term >= s.leader_term)
    recorded = held and leader is not None and leader.node != s.rank.node
    if recorded and newer and not s.fencing:
        # The database names the leader: follow it now; its renewals keep it so. The
        # standby it names watches its process from now on.
        assert leader is not None
        st.set(leader=leader, leader_term=term, misses=0, leader_seen_at=now)
        st.timer(Timer.LEADER, now + s.config.leader_timeout)
        st.watch(_to_watch(s, leader.node, term, standby))
        _challenge(st, now)
        return
    if s.abstaining(now):
        st.timer(Timer.COORDINATOR, s.abstain_until)
        return
    first_choice = best is None or best <= s.rank
    insist = s.misses >= 2  # the better candidate did not act: do not wait on it forever
    if held:
        # Somebody holds the claim. Wait for its announcement; a silent holder is fenced
        # (by the best candidate first, by anyone once it failed to).
        if s.fencing and (first_choice or insist):
            _claim(st, fence=True)
        else:
            st.backed_off(Timer.LEADER, now, s.config.leader_timeout)
    elif first_choice or insist:
        # Nobody holds the claim and no live member outranks us (or the one that does has
        # not acted): claim now. Only the claim decides, and waiting for answers to an
        # ELECTION would let a stream of newcomers hold the election open forever.
        if s.config.preempt is Preempt.RANK:
            _elect(st, now)  # classic Bully: a higher rank may still answer
        else:
            _claim(st, fence=False)
    else:
        st.backed_off(Timer.COORDINATOR, now, s.config.coordinator_wait)


def _elect(st: _Step, now: float, *, fence: bool = False) -> None:
    cfg = st.state.config
    st.set(role=Role.ELECTING, fencing=st.state.fencing or fence, surveying=False)
    st.cancel(Timer.COORDINATOR, Timer.LEADER)
    st.send(Kind.ELECTION)
    st.timer(Timer.ELECTION, now + cfg.election_timeout)


def _claim(st: _Step, *, fence: bool, evidence: int | None = None) -> None:
    st.set(role=Role.CLAIMING, leader=None, surveying=False)
    st.cancel(Timer.ELECTION, Timer.COORDINATOR, Timer.LEADER)
    st.effects.append(Claim(fence=fence, evidence=evidence))


def _stand_down(st: _Step, now: float) -> None:
    st.set(role=Role.FOLLOWER, surveying=False)
    st.cancel(Timer.ELECTION)
    st.backed_off(Timer.COORDINATOR, now, st.state.config.coordinator_wait)


def _resign(st: _Step, reason: str, successor: int | None) -> None:
    """Leader steps down: work first, then the claim, then the announcement."""
    term = st.state.term
    assert term is not None
    st.effects.append(Deposed(reason, voluntary=True))
    st.effects.append(Release(term))
    st.send(Kind.RESIGN, term=term, successor=successor)
    st.set(term=None, leader=None)


def _halt(st: _Step, reason: str, *, release: bool) -> None:
    s = st.state
    if s.role is Role.STOPPED:
        return
    if s.role is Role.LEADER:
        if release:
            _resign(st, reason, None)
        else:
            st.effects.append(Deposed(reason, voluntary=False))
            st.set(term=None, leader=None)
    st.cancel(Timer.ELECTION, Timer.COORDINATOR, Timer.LEADER, Timer.PREEMPT)
    st.watch(None)
    st.set(role=Role.STOPPED, surveying=False)


def _receive(st: _Step, m: Message, now: float) -> None:
    s = st.state
    if s.role is Role.STOPPED or m.namespace != s.namespace or m.rank.node == s.rank.node:
        return
    if m.kind is Kind.ELECTION:
        _election_heard(st, m, now)
    elif m.kind is Kind.ALIVE:
        if m.rank > s.rank and s.role is Role.ELECTING:
            _stand_down(st, now)
    elif m.kind is Kind.RESIGN:
        _resigned(st, m, now)


def _election_heard(st: _Step, m: Message, now: float) -> None:
    s = st.state
    cfg = s.config
    if s.role is Role.LEADER:
        if preempts(cfg, m.rank, s.rank):
            _resign(st, f"preempted by node {m.rank.node}", successor=m.rank.node)
            _stand_down(st, now)
        # Otherwise nothing: the candidates learn who leads from the database (their
        # claim is refused, and the leader row names the leader at their next reading).
        return
    if m.rank > s.rank:
        if s.role is Role.ELECTING:
            _stand_down(st, now)
        return
    # A lower-ranked candidate. Only candidates answer: an electing or claiming node, or
    # a follower that knows no leader and would itself be preferred (classic Bully: any
    # higher rank; otherwise only a strictly higher priority).
    if s.abstaining(now):
        return
    if s.role is Role.FOLLOWER:
        rival = (
            m.rank < s.rank if cfg.preempt is Preempt.RANK else m.rank.priority < s.rank.priority
        )
        if s.leader is not None or not rival:
            return
    if s.alive_sent_at is None or now - s.alive_sent_at >= cfg.election_timeout:
        st.send(Kind.ALIVE)
        st.set(alive_sent_at=now)
    if s.role is Role.FOLLOWER:
        _elect(st, now)


def _leader_seen(
    st: _Step, leader: Rank, term: int, standby: int | None, renewed_at: float, now: float
) -> None:
    """The database shows ``leader`` holding ``term``, its lease renewed at ``renewed_at``."""
    s = st.state
    timeout = s.config.leader_timeout
    if s.role is Role.LEADER or leader.node == s.rank.node:
        return  # our own lease renewals are the truth while we lead
    if s.leader_term is not None and term < s.leader_term:
        return  # an older leadership
    silent_at = rules.silent_from(renewed_at, timeout)
    if now >= silent_at:
        return  # the row of a leader that stopped renewing: no sign of life
    known = (s.leader, s.leader_term) == (leader, term)
    watch = _to_watch(s, leader.node, term, standby)
    if known and s.role is Role.FOLLOWER and s.watching == watch:
        # The steady state, once per interval: only the sighting moves on (the leader
        # timer, when it fires, looks at it and waits on).
        st.set(leader_seen_at=max(s.leader_seen_at, renewed_at))
        return
    st.set(
        leader=leader,
        leader_term=term,
        leader_seen_at=renewed_at,
        fencing=False,
        misses=0,
        surveying=False,
    )
    if s.role is Role.ELECTING:
        st.set(role=Role.FOLLOWER)
    st.cancel(Timer.ELECTION, Timer.COORDINATOR)
    if st.state.role is Role.FOLLOWER:
        st.timer(Timer.LEADER, silent_at)
    st.watch(watch)
    if not known and st.state.role is Role.FOLLOWER:
        _challenge(st, now)


def _released_seen(st: _Step, leader: Rank, term: int, now: float) -> None:
    """The database shows the term of the leader this node follows given back: a
    hand-over, whose RESIGN went to the successor alone (:func:`rules.addressee`). A
    follower lets that leader go and waits for the next one, as a RESIGN naming another
    node would tell it."""
    s = st.state
    if s.role is not Role.FOLLOWER or (s.leader, s.leader_term) != (leader, term):
        return
    st.set(leader=None, surveying=False)
    st.cancel(Timer.LEADER)
    st.backed_off(Timer.COORDINATOR, now, s.config.coordinator_wait)


def _to_watch(s: State, leader: int, term: int | None, standby: int | None) -> int | None:
    """The leader this node watches, as the standby of ``leader``'s ``term`` that the
    database names (None: it is not the standby, or that leadership is unwatched)."""
    if standby != s.rank.node or (leader, term) == s.unwatched:
        return None
    return leader


def _challenge(st: _Step, now: float) -> None:
    """Preempt a leader we outrank, once our join hold-off is over."""
    s = st.state
    if s.leader is None or s.abstaining(now) or not preempts(s.config, s.rank, s.leader):
        return
    ready_at = s.joined_at + s.config.join_holdoff
    if now >= ready_at:
        st.send(Kind.ELECTION)  # the leader will step down for us
    else:
        st.timer(Timer.PREEMPT, ready_at)


def _resigned(st: _Step, m: Message, now: float) -> None:
    s = st.state
    if s.role is Role.LEADER:
        return
    if s.leader == m.rank:
        st.set(leader=None)
        st.cancel(Timer.LEADER)
    if s.role is Role.CLAIMING:
        if m.successor == s.rank.node:
            st.set(successor_named=True)  # if our claim is refused, claim again at once
        return
    if m.successor == s.rank.node and not s.abstaining(now):
        _claim(st, fence=False)
    elif m.successor is None and not s.abstaining(now):
        _search(st, now)
    else:
        st.set(role=Role.FOLLOWER, surveying=False)
        st.backed_off(Timer.COORDINATOR, now, s.config.coordinator_wait)


def _timer(st: _Step, timer: Timer, now: float) -> None:
    s = st.state
    if timer in (Timer.COORDINATOR, Timer.LEADER) and s.abstaining(now):
        if s.role is Role.FOLLOWER:
            st.timer(timer, s.abstain_until)
        return
    if timer is Timer.ELECTION and s.role is Role.ELECTING:
        _claim(st, fence=s.fencing)
    elif timer is Timer.COORDINATOR and s.role is Role.FOLLOWER and s.leader is None:
        st.set(misses=s.misses + 1)
        _search(st, now)
    elif timer is Timer.LEADER and s.role is Role.FOLLOWER:
        silent_at = rules.silent_from(s.leader_seen_at, s.config.leader_timeout)
        if s.leader is not None and now < silent_at:
            # Seen renewed since the timer was set: look again when it would be silent.
            st.timer(Timer.LEADER, silent_at)
            return
        st.set(leader=None, misses=s.misses + 1)
        _search(st, now, fence=True)
    elif timer is Timer.PREEMPT and s.role is Role.FOLLOWER:
        _challenge(st, now)


def _refused(st: _Step, now: float) -> None:
    s = st.state
    if s.role is not Role.CLAIMING:
        return
    if s.successor_named:
        # The leader that named us released its claim after our attempt began: try again.
        st.set(successor_named=False)
        _claim(st, fence=False)
        return
    # Someone holds the claim: follow it and wait for its announcement. If none comes,
    # the next search may fence it (the transport does so only if its lease is stale).
    st.set(role=Role.FOLLOWER, fencing=s.leader is None)
    if s.fencing:
        # A fencing claim found the holder alive after all (a renewal came late): look
        # again soon, without backing off, or a paused leader would be left for long.
        half = s.config.leader_timeout / 2
        st.timer(Timer.LEADER, now + half, half / 5)
    else:
        st.backed_off(Timer.LEADER, now, s.config.leader_timeout)
    if s.leader is not None:
        _challenge(st, now)


def _freed(st: _Step, how: Freed, leader: int, now: float) -> None:
    s = st.state
    if s.watching is not None:
        st.set(watching=None)
    if how is Freed.UNOBSERVED:
        st.set(unwatched=(leader, s.leader_term))
    if s.role not in (Role.FOLLOWER, Role.ELECTING):
        return
    if s.abstaining(now):
        st.timer(Timer.COORDINATOR, s.abstain_until)
    elif how is Freed.RELEASED:
        st.backed_off(Timer.COORDINATOR, now, s.config.coordinator_wait)  # the RESIGN follows
    elif how is Freed.DIED:
        _claim(st, fence=False, evidence=leader)
    else:
        _search(st, now)


def _granted(st: _Step, term: int, now: float) -> None:
    s = st.state
    if s.role is not Role.CLAIMING:
        st.effects.append(Release(term))  # stopped while the claim was in flight
        return
    st.watch(None)
    st.set(
        role=Role.LEADER,
        term=term,
        leader=s.rank,
        leader_term=term,
        fencing=False,
        misses=0,
        successor_named=False,
    )
    st.cancel(Timer.ELECTION, Timer.COORDINATOR, Timer.LEADER, Timer.PREEMPT)
    st.effects.append(Elected(term))
