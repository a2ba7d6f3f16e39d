"""``notifelect alembic revision``: write the application's revision of notifelect's schema.

For an application whose own Alembic history calls ``upgrade_schema`` (the way the
documentation recommends), it writes into that history the revision that brings the
schema from the version the history already applies to the version this release needs
(see :mod:`notifelect.migrations.history`). It connects to no database.

Exit status: 0 written (or printed with ``--dry-run``), 3 nothing to write (the history is
already there), 1 refused for another reason (the message says which), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys

from ..migrations.history import Refused, load_config, plan_upgrade, render_revision
from ..migrations.history import write_revision as write
from ..schema import SCHEMA_VERSION
from ._common import Subparsers

_ALEMBIC = "the application's Alembic history"
_REVISION = (
    "write the revision that brings notifelect's schema, in the application's own Alembic "
    f"history, from the version its revisions apply to version {SCHEMA_VERSION}"
)

#: Exit status when the history already applies the version this release needs.
UP_TO_DATE = 3


def configure_alembic_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("alembic", help=_ALEMBIC, description=_ALEMBIC)
    commands = parser.add_subparsers(dest="alembic_command", required=True, metavar="COMMAND")
    revision = commands.add_parser("revision", help=_REVISION, description=_REVISION)
    revision.add_argument(
        "-c",
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="the application's alembic.ini and/or pyproject.toml, as for 'alembic -c' "
        "(default: $ALEMBIC_CONFIG, else alembic.ini and pyproject.toml here)",
    )
    revision.add_argument(
        "-n",
        "--name",
        default="alembic",
        help="section of the ini file (default: alembic)",
    )
    revision.add_argument(
        "-m",
        "--message",
        default=f"notifelect schema {SCHEMA_VERSION}",
        help=f"the revision's message (default: 'notifelect schema {SCHEMA_VERSION}')",
    )
    revision.add_argument("--rev-id", help="the revision id (default: a random one, as Alembic's)")
    revision.add_argument(
        "--version-path",
        help="the folder to write into, when the configuration names several",
    )
    revision.add_argument(
        "--dry-run", action="store_true", help="print the revision, write nothing"
    )
    revision.set_defaults(func=write_revision)


def write_revision(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.name)
        plan = plan_upgrade(config, version_path=args.version_path)
        if args.dry_run:
            path, text = render_revision(plan, args.message, rev=args.rev_id)
            sys.stdout.write(text)
            print(
                f"notifelect: dry run, nothing written; would write {path}\n  {plan.describe()}",
                file=sys.stderr,
            )
            return 0
        path = write(plan, args.message, rev=args.rev_id)
    except Refused as refused:
        print(f"notifelect: nothing written: {refused}", file=sys.stderr)
        return UP_TO_DATE if refused.up_to_date else 1
    print(
        f"notifelect: wrote {path}\n"
        f"  {plan.describe()}\n"
        f"  upgrade: {plan.upgrade}; downgrade: {plan.downgrade}\n"
        "next: alembic upgrade head"
    )
    return 0
