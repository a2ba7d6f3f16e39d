"""Leader election for Python services on PostgreSQL LISTEN/NOTIFY and the Bully algorithm."""

from . import election_manager
from ._version import __version__ as __version__  # stated once, in pyproject.toml
from .decorators import (
    Gate,
    Periodic,
    cron,
    every,
    leader_only,
    on_deposed,
    on_elected,
)
from .errors import (
    ConfigurationError,
    ConnectionLimitError,
    GroupStateError,
    LeadershipLost,
    NotifelectError,
    NotLeaderError,
    SchemaError,
    StaleLeaderError,
)
from .group import ElectionGroup
from .health import Health, HealthState, Vacancies
from .job_store import RunRecord
from .jobs import JobRun, current_run
from .leadership import LeaderInfo, Leadership, current_leadership
from .schedule import CatchUp
from .schema import Names
from .settings import RetryPolicy, Settings
from .sync import SyncElectionGroup
from .transport import MemoryBus

__all__ = [
    "CatchUp",
    "ConfigurationError",
    "ConnectionLimitError",
    "ElectionGroup",
    "Gate",
    "GroupStateError",
    "Health",
    "HealthState",
    "JobRun",
    "LeaderInfo",
    "Leadership",
    "LeadershipLost",
    "MemoryBus",
    "Names",
    "NotLeaderError",
    "NotifelectError",
    "Periodic",
    "RetryPolicy",
    "RunRecord",
    "SchemaError",
    "Settings",
    "StaleLeaderError",
    "SyncElectionGroup",
    "Vacancies",
    "cron",
    "current_leadership",
    "current_run",
    "election_manager",
    "every",
    "leader_only",
    "on_deposed",
    "on_elected",
]
