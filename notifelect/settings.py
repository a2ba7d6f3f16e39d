"""Settings of an election group, validated at construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import ConfigurationError
from .schema import Names, validate_namespace, validate_prefix


@dataclass(frozen=True)
class RetryPolicy:
    """How a node reconnects after losing its database connection.

    Waits grow exponentially from ``initial`` to ``maximum`` seconds with random jitter of up
    to ``jitter`` seconds; ``attempts`` = None retries forever (the default for a service).
    """

    initial: float = 0.05
    maximum: float = 5.0
    jitter: float = 0.1
    attempts: int | None = None

    def __post_init__(self) -> None:
        _positive("retry.initial", self.initial)
        _positive("retry.maximum", self.maximum)
        if self.jitter < 0 or not math.isfinite(self.jitter):
            raise ConfigurationError(f"retry.jitter must be >= 0 seconds, got {self.jitter!r}")
        if self.maximum < self.initial:
            raise ConfigurationError(
                f"retry.maximum ({self.maximum}) must be >= retry.initial ({self.initial})"
            )
        if self.attempts is not None and self.attempts < 1:
            raise ConfigurationError(f"retry.attempts must be >= 1 or None, got {self.attempts!r}")


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number of seconds, got {value!r}")
    if value <= 0:
        raise ConfigurationError(f"{name} must be > 0 seconds, got {value!r}")


_MIN_SECRET = 16
_PREEMPT = ("priority", "rank", "never")


def _check_secret(secret: object) -> None:
    if secret is None:
        return
    if not isinstance(secret, bytes | str):
        raise ConfigurationError(
            f"secret must be bytes or str, got {type(secret).__name__}; "
            "e.g. secret=secrets.token_hex(32), the same on every node"
        )
    size = len(secret.encode() if isinstance(secret, str) else secret)
    if size < _MIN_SECRET:
        raise ConfigurationError(
            f"secret must be at least {_MIN_SECRET} bytes, got {size}; "
            "e.g. secret=secrets.token_hex(32), the same on every node"
        )


@dataclass(frozen=True)
class Settings:
    """Tuning of one election group. All durations are in seconds.

    - ``namespace``: the election group's name; nodes elect one leader per namespace.
    - ``election_interval``: how often an election session renews its lease in the
      database, for every group it leads, and reads what changed in its groups'
      leaderships (the followers' heartbeat). No notification is sent per interval.
    - ``election_timeout``: how long a candidate waits for a higher-ranked node to answer
      before it claims leadership. Bounds cold-start and fallback election time.
    - ``lease``: how long a leader may act after its last confirmation by the database.
      A paused or cut-off leader stops acting when it ends; a new leader after a fenced or
      unclean loss never starts before the old lease has run out.
    - ``leader_timeout``: how long followers tolerate silence from the leader before they
      check the database and, if its lease is stale, fence it out.
    - ``priority``: higher priority wins before the sequence number is compared.
    - ``preempt``: who may displace a running leader. ``"priority"`` (default): only a
      live member of strictly higher ``priority`` (a newcomer's larger sequence number
      never moves leadership, so deploys do not hand over once per replica).
      ``"rank"``: classic Bully, any higher (priority, sequence). ``"never"``: the
      incumbent keeps leading until it leaves. ``True``/``False`` mean ``"rank"``/
      ``"never"``.
    - ``join_holdoff``: how long a newcomer must have been a member before it may preempt
      (default ``leader_timeout``): a crash-looping replica never takes over.
    - ``finish_timeout``: how long ``leader_only(finish_on_loss=True)`` calls and plain
      ``def`` calls may keep running during a hand-over (the claim and lease are held
      and renewed meanwhile); then they are cancelled (async) or abandoned (threads).
    - ``callback_timeout``: how long cancelled leader work and each ``on_deposed``
      callback may take before the node stops waiting for them (logged at ERROR).
    - ``fence``: terminate the backend of a leader that is paused or cut off
      (``pg_terminate_backend``); without permission, or when False, the group waits until
      the old leader resumes and notices its expired lease.
    - ``strict_takeover``: after any unclean end of a leadership wait out the old lease,
      even when the standby saw the old leader's process end (the default). ``False``
      turns on the fast crash path: the standby takes over from a crashed leader in
      milliseconds, assuming nobody terminates a leader's anchor session while its
      network path is half-open (see the failure semantics).
    - ``connect_timeout``: how long connecting to one host may take (TCP, TLS, login and
      the ``target_session_attrs`` check), per host of a multi-host URL, so that a host
      that does not answer at all costs at most this before the next one is tried.
      Default (None): half of :attr:`io_timeout` (1 s at the defaults) per host of a
      multi-host URL, and the whole :attr:`io_timeout` (2 s) for a URL with one host,
      which has no other host to leave time for. Raise it for a slow path to the
      database (TLS over a long distance); a host that cannot be reached within it is
      never used.
    - ``prefix``: prefix of every database object name (default ``$NOTIFELECT_PREFIX``).
    - ``retry``: reconnect policy.
    - ``secret``: optional shared secret (at least 16 bytes; str is encoded as UTF-8). When
      set, every message is signed with HMAC-SHA256 and unsigned or wrongly signed messages
      are dropped, so that only holders of the secret can talk to the group. Every node of
      a group needs the same secret. Never shown in ``repr``.

    Impossible combinations raise :class:`~notifelect.ConfigurationError` (a ``ValueError``)
    that names the setting and the rule.
    """

    namespace: str = "default"
    election_interval: float = 0.5
    election_timeout: float = 0.05
    lease: float = 1.5
    leader_timeout: float = 2.0
    priority: int = 0
    preempt: str | bool = "priority"
    join_holdoff: float | None = None
    finish_timeout: float = 30.0
    callback_timeout: float = 10.0
    fence: bool = True
    strict_takeover: bool = True
    connect_timeout: float | None = None
    prefix: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    secret: bytes | str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)
        if self.prefix is not None:
            validate_prefix(self.prefix)
        for name in ("election_interval", "election_timeout", "lease", "leader_timeout"):
            _positive(name, getattr(self, name))
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ConfigurationError(f"priority must be an int, got {self.priority!r}")
        if not -(2**31) <= self.priority < 2**31:
            raise ConfigurationError(f"priority must fit in 32 bits, got {self.priority}")
        if isinstance(self.preempt, bool):
            object.__setattr__(self, "preempt", "rank" if self.preempt else "never")
        if self.preempt not in _PREEMPT:
            raise ConfigurationError(
                f"preempt must be one of {', '.join(map(repr, _PREEMPT))}, got {self.preempt!r}"
            )
        for name in ("finish_timeout", "callback_timeout"):
            _positive(name, getattr(self, name))
        for name in ("join_holdoff", "connect_timeout"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        for name in ("fence", "strict_takeover"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(
                    f"{name} must be True or False, got {getattr(self, name)!r}"
                )
        if not isinstance(self.retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {self.retry!r}")
        _check_secret(self.secret)
        if self.lease <= self.election_interval:
            raise ConfigurationError(
                f"lease ({self.lease}) must be longer than election_interval "
                f"({self.election_interval}): the leader renews its lease once per interval"
            )
        if self.leader_timeout < 2 * self.election_interval:
            raise ConfigurationError(
                f"leader_timeout ({self.leader_timeout}) must be at least twice "
                f"election_interval ({self.election_interval}) so one late heartbeat is tolerated"
            )
        if self.election_timeout >= self.leader_timeout:
            raise ConfigurationError(
                f"election_timeout ({self.election_timeout}) must be shorter than "
                f"leader_timeout ({self.leader_timeout})"
            )
        if self.election_timeout >= self.lease:
            raise ConfigurationError(
                f"election_timeout ({self.election_timeout}) must be shorter than lease "
                f"({self.lease}): a leader's lease must outlast one election round"
            )

    @property
    def secret_key(self) -> bytes | None:
        """The message-signing key as bytes, or None when messages are not signed."""
        if isinstance(self.secret, str):
            return self.secret.encode()
        return self.secret

    @property
    def names(self) -> Names:
        """Database object names for this group's prefix."""
        return Names.from_env(self.prefix)

    @property
    def holdoff(self) -> float:
        """The join hold-off in force (``join_holdoff``, or ``leader_timeout``)."""
        return self.leader_timeout if self.join_holdoff is None else self.join_holdoff

    @property
    def io_timeout(self) -> float:
        """The bound of every database call of the election (the longer of lease and
        leader_timeout): a call that takes longer counts as a lost connection."""
        return max(self.lease, self.leader_timeout)

    @property
    def host_timeout(self) -> float:
        """How long connecting to one host may take (``connect_timeout``, or half of
        :attr:`io_timeout`: a server that needs longer only to let the election in could
        not answer its calls in time either, and two hosts fit in one ``io_timeout``)."""
        return self.io_timeout / 2 if self.connect_timeout is None else self.connect_timeout

    @property
    def lone_host_timeout(self) -> float:
        """How long connecting may take when the URL names one host (``connect_timeout``,
        or :attr:`io_timeout`: with nothing else to try, a server slow to let a new session
        in, as when many processes start at once, is waited for as long as any call)."""
        return self.io_timeout if self.connect_timeout is None else self.connect_timeout

    @property
    def coordinator_wait(self) -> float:
        """How long a node that stood down waits for the winner's announcement."""
        return max(4 * self.election_timeout, 0.5)

    def replace(self, **changes: object) -> Settings:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
