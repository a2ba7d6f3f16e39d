"""Schema version 4: scheduled jobs whose schedule and runs are kept in the database.

Revision ID: notifelect_0004
Revises: notifelect_0003
"""

from __future__ import annotations

from notifelect.migrations import downgrade_schema, upgrade_schema

revision = "notifelect_0004"
down_revision: str | None = "notifelect_0003"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

#: The schema version this revision creates (``notifelect.schema.SCHEMA_VERSION`` at head).
schema_version = 4


def upgrade() -> None:
    upgrade_schema(schema_version)


def downgrade() -> None:
    downgrade_schema(schema_version)
