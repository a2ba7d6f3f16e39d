"""Schema version 3: leader rows stamped with the transaction that last wrote them.

Revision ID: notifelect_0003
Revises: notifelect_0002
"""

from __future__ import annotations

from notifelect.migrations import downgrade_schema, upgrade_schema

revision = "notifelect_0003"
down_revision: str | None = "notifelect_0002"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

#: The schema version this revision creates (``notifelect.schema.SCHEMA_VERSION`` at head).
schema_version = 3


def upgrade() -> None:
    upgrade_schema(schema_version)


def downgrade() -> None:
    downgrade_schema(schema_version)
