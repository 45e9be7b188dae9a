"""Host load: the cores busy on an agent's host (by anything, not only its workers), as the
agent last measured, so that CPU-bound processors grow only onto cores that are idle.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as t:
        t.add_column(sa.Column("busy", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("agents") as t:
        t.drop_column("busy")
