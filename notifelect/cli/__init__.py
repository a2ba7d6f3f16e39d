"""Command line: ``notifelect COMMAND`` (or ``python -m notifelect COMMAND``).

One module per command, each with a ``configure_<command>_parser(subparsers)`` that adds
the command's parser and names the function that runs it (``set_defaults(func=...)``).
The options every command shares are in :mod:`._common`, which imports no command.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
from collections.abc import Callable, Sequence

import asyncpg

from ..errors import NotifelectError
from ._common import Command, Subparsers
from .demo import configure_demo_parser
from .listen import configure_listen_parser
from .revision import configure_alembic_parser
from .schema import configure_install_parser, configure_uninstall_parser
from .status import configure_status_parser

#: Every command, in the order ``--help`` lists them.
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    configure_install_parser,
    configure_uninstall_parser,
    configure_status_parser,
    configure_listen_parser,
    configure_demo_parser,
    configure_alembic_parser,
)

#: The name ``--help`` shows by default: the console script's.
PROG = "notifelect"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Leader election on PostgreSQL LISTEN/NOTIFY.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for configure in COMMANDS:
        configure(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    ``prog`` is how the usage and help name the program: ``python -m notifelect`` passes
    its own spelling.
    """
    args = build_parser(prog).parse_args(argv)
    try:
        command: Command = args.func
        return command(args)
    except NotifelectError as exc:
        print(f"notifelect: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError as exc:
        if _stdout_gone():  # its reader stopped reading (``... --dry-run | head``)
            return 0
        print(f"notifelect: error: cannot use the database: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"notifelect: error: cannot use the database: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _stdout_gone() -> bool:
    """Whether standard output can no longer be written (its reader has closed the pipe);
    if so, it is pointed at the null device, so that the interpreter's own flush at exit
    fails no more."""
    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no such descriptor (a replaced stdout)
        return False
    if gone:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    return gone
