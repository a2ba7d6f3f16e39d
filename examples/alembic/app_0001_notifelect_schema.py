"""notifelect schema

Revision ID: app_0001
Revises: 
Create Date: 2026-11-28 12:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from notifelect.migrations import downgrade_schema, upgrade_schema

# revision identifiers, used by Alembic.
revision: str = 'app_0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    upgrade_schema(1)


def downgrade() -> None:
    """Downgrade schema."""
    downgrade_schema(1)
