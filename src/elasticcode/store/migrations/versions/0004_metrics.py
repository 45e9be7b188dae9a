"""Metrics: what each worker measures besides its counts (host, bytes, histograms, depths
read) and the metrics history (rollups at 1 s, 1 min and 1 h).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as t:
        t.add_column(sa.Column("host", sa.String(200)))
        t.add_column(sa.Column("bytes_in", sa.BigInteger, nullable=False, server_default="0"))
        t.add_column(sa.Column("bytes_out", sa.BigInteger, nullable=False, server_default="0"))
        t.add_column(sa.Column("metrics", sa.Text))
    op.create_table(
        "metric_points",
        sa.Column("flow", sa.String(200), primary_key=True),
        sa.Column("resolution", sa.Integer, primary_key=True),
        sa.Column("at", sa.BigInteger, primary_key=True),
        sa.Column("kind", sa.String(20), primary_key=True),
        sa.Column("name", sa.String(400), primary_key=True),
        sa.Column("received", sa.BigInteger, nullable=False),
        sa.Column("emitted", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("retried", sa.BigInteger, nullable=False),
        sa.Column("dead", sa.BigInteger, nullable=False),
        sa.Column("bytes_in", sa.BigInteger, nullable=False),
        sa.Column("bytes_out", sa.BigInteger, nullable=False),
        sa.Column("busy", sa.Float, nullable=False),
        sa.Column("instances", sa.Integer, nullable=False),
        sa.Column("depth", sa.BigInteger, nullable=False),
        sa.Column("hists", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("metric_points")
    with op.batch_alter_table("workers") as t:
        for name in ("metrics", "bytes_out", "bytes_in", "host"):
            t.drop_column(name)
