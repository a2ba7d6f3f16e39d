"""Schema version 2: the session table (one lease per process and engine) and standbys.

Revision ID: notifelect_0002
Revises: notifelect_0001
"""

from __future__ import annotations

from notifelect.migrations import downgrade_schema, upgrade_schema

revision = "notifelect_0002"
down_revision: str | None = "notifelect_0001"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

#: The schema version this revision creates (``notifelect.schema.SCHEMA_VERSION`` at head).
schema_version = 2


def upgrade() -> None:
    upgrade_schema(schema_version)


def downgrade() -> None:
    downgrade_schema(schema_version)
