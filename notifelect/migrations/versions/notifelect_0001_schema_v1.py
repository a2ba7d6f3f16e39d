"""Schema version 1: sequence, version/term/leader/member/history tables, status view.

Every statement is idempotent, so this revision also adopts a database prepared by
``python -m notifelect install`` and upgrades one that has only the 0.0.3 sequence
(keeping its value). Downgrading removes every notifelect object and nothing else.

Revision ID: notifelect_0001
Revises:
"""

from __future__ import annotations

from notifelect.migrations import downgrade_schema, upgrade_schema

revision = "notifelect_0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = ("notifelect",)
depends_on: str | None = None

#: The schema version this revision creates (``notifelect.schema.SCHEMA_VERSION`` at head).
schema_version = 1


def upgrade() -> None:
    upgrade_schema(schema_version)


def downgrade() -> None:
    downgrade_schema(schema_version)
