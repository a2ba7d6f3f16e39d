"""One election session per process and database, shared by every group on it.

A :class:`Session` owns what used to be every group's own:

* the *election connection*: it listens on the channel of each group, holds the claim
  (a session advisory lock) of each group it leads, and runs one statement per interval
  that renews the session's lease for all of them and reads what changed in every group's
  leadership (the followers' heartbeat);
* the *anchor*: an idle session holding a lock named after the session's node id, ended
  only with the process (or after every group has stopped its leader work), which a
  standby watches to notice a crashed leader within milliseconds;
* *watchers*: one connection per leader session that this process stands by for, however
  many of its groups that leader leads.

Groups join and leave a session independently (:class:`~..postgres.PostgresTransport` is a
group's handle on it). When the election connection or the anchor is lost, every group is
told at once; the connection is dropped once every group has let go of it (their leader
work stopped), and the anchor once every group's work has stopped. The groups then open a
new session, with a new node id.

The parts, each with a job: :mod:`.lifecycle` (opening, joining, losing, closing),
:mod:`.probe` (the environment the election connection finds), :mod:`.tick` (the
periodic statement and the batched reads), :mod:`.claims` (claim locks and terms),
:mod:`.liveness` (the anchor and the watchers) and :mod:`.registry` (which groups ride
which session).
"""

from __future__ import annotations

from .common import Claimed, Connect, SessionGroup, Tick, Timing
from .lifecycle import REGISTRY, Session, open_sessions

__all__ = [
    "REGISTRY",
    "Claimed",
    "Connect",
    "Session",
    "SessionGroup",
    "Tick",
    "Timing",
    "open_sessions",
]
