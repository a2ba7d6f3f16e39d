"""Transports: where election traffic meets PostgreSQL (or memory, for tests)."""

from .base import Granted, LeaderRecord, LeaseLostError, Member, Renewal, Transport
from .memory import MemoryBus, MemoryTransport

__all__ = [
    "Granted",
    "LeaderRecord",
    "LeaseLostError",
    "Member",
    "MemoryBus",
    "MemoryTransport",
    "Renewal",
    "Transport",
]
