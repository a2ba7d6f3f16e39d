"""Exceptions raised by notifelect.

::

    NotifelectError
    ├── ConfigurationError (also ValueError)   bad settings, names, engines or drivers
    ├── ConnectionLimitError (also ConnectionError)  all max_connections slots in use
    ├── SchemaError                            the schema is missing or at another version
    ├── GroupStateError                        a group used in the wrong lifecycle state
    ├── NotLeaderError                         leader-only code called on a node that does not lead
    ├── LeadershipLost                         leader-only work interrupted because leadership ended
    └── StaleLeaderError                       a fencing check found a newer term in the database
"""

from __future__ import annotations


class NotifelectError(Exception):
    """Base class of every error notifelect raises on purpose."""


class ConfigurationError(NotifelectError, ValueError):
    """A setting, a name, an engine or a driver cannot be used; the message says which rule."""


class ConnectionLimitError(NotifelectError, ConnectionError):
    """PostgreSQL refused a connection because all of its connection slots are in use.

    A node needs one dedicated connection, and the standby one more. At start-up this is
    raised from ``async with group``; after a connection loss the group keeps retrying.
    """


class SchemaError(NotifelectError):
    """The election schema is missing, incomplete, or at another version than this release
    needs; the message names the database, schema and prefix checked, both versions and the
    next step."""


class GroupStateError(NotifelectError, RuntimeError):
    """A group was used in a state that does not allow it (not entered, closed, entered twice)."""


class NotLeaderError(NotifelectError):
    """A leader-only call was made on a node that is not the valid leader right now."""


class LeadershipLost(NotifelectError):
    """Leader-only work was cancelled because this node stopped leading while it ran."""


class StaleLeaderError(NotifelectError):
    """A fencing check found that the term of this leadership is no longer the current one."""

    def __init__(self, namespace: str, term: int, current: int | None) -> None:
        super().__init__(
            f"leadership term {term} of group {namespace!r} is stale: the database holds "
            f"term {current}; the write was refused so that only the current leader acts"
        )
        self.namespace = namespace
        self.term = term
        self.current = current
