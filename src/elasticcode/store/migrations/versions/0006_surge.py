"""Rolling moves: an instance that rebalancing moves keeps running on the agent it leaves
until it runs where it went.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("placements") as t:
        t.add_column(sa.Column("leaving", sa.String(64)))
        t.create_index("ix_placements_leaving", ["leaving"])


def downgrade() -> None:
    with op.batch_alter_table("placements") as t:
        t.drop_index("ix_placements_leaving")
        t.drop_column("leaving")
