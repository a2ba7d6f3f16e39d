"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""

from __future__ import annotations

from notifelect.migrations import downgrade_schema, upgrade_schema

revision = "${up_revision}"
down_revision: str | tuple[str, ...] | None = ${repr(down_revision).replace("'", '"')}
branch_labels: tuple[str, ...] | None = ${repr(branch_labels).replace("'", '"')}
depends_on: str | tuple[str, ...] | None = ${repr(depends_on).replace("'", '"')}

#: The schema version this revision creates: add it to notifelect.schema
#: (statements_for_version, downgrade_statements) and set SCHEMA_VERSION to it.
schema_version = ${int(up_revision.rsplit("_", 1)[-1]) if up_revision.rsplit("_", 1)[-1].isdigit() else 0}


def upgrade() -> None:
    upgrade_schema(schema_version)


def downgrade() -> None:
    downgrade_schema(schema_version)
