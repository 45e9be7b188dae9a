"""Autoscaling: the instance count the autoscaler decided for a processor that scales, and a
count set by hand that holds it until released.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("processor_controls") as t:
        t.add_column(sa.Column("scaled", sa.Integer))
        t.add_column(sa.Column("pinned", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("processor_controls") as t:
        t.drop_column("pinned")
        t.drop_column("scaled")
