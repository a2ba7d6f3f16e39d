"""Operational commands: status, listen, demo (registered into the CLI)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def register(sub: Any, commands: dict[str, Callable[[argparse.Namespace], int]]) -> None:
    """Add this module's subcommands to the CLI's subparsers."""
