"""notifelect schema 4

Revision ID: app_0002
Revises: app_0001
Create Date: 2026-12-04 09:30:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from notifelect.migrations import downgrade_schema, upgrade_schema

# revision identifiers, used by Alembic.
revision: str = 'app_0002'
down_revision: Union[str, Sequence[str], None] = 'app_0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    upgrade_schema(4)


def downgrade() -> None:
    """Downgrade schema."""
    downgrade_schema(4, to=1)
