"""The state of one-host runs: runs, source progress, worker reports, attempts, processor
state and code pins.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("flow", sa.String(200), nullable=False, index=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("ended", sa.Float),
    )
    op.create_table(
        "sources",
        sa.Column("run_id", sa.Integer, primary_key=True),
        sa.Column("processor", sa.String(200), primary_key=True),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("calls", sa.BigInteger, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("run_id", sa.Integer, nullable=False, index=True),
        sa.Column("processor", sa.String(200), nullable=False),
        sa.Column("instance", sa.Integer, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("received", sa.BigInteger, nullable=False),
        sa.Column("emitted", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("retried", sa.BigInteger, nullable=False),
        sa.Column("dead", sa.BigInteger, nullable=False),
        sa.Column("busy", sa.Float, nullable=False),
        sa.Column("holding", sa.Integer, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
        sa.Column("last_error", sa.Text),
    )
    op.create_table(
        "attempts",
        sa.Column("processor", sa.String(200), primary_key=True),
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_table(
        "kv",
        sa.Column("namespace", sa.String(200), primary_key=True),
        sa.Column("key", sa.String(500), primary_key=True),
        sa.Column("field", sa.String(200), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "code_pins",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("flow", sa.String(200), nullable=False),
        sa.Column("processor", sa.String(200), nullable=False),
        sa.Column("repo", sa.Text, nullable=False),
        sa.Column("ref", sa.String(500), nullable=False),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("resolved", sa.Float, nullable=False),
    )
    op.create_index("code_pins_by_processor", "code_pins", ["flow", "processor"])


def downgrade() -> None:
    for table in ("code_pins", "kv", "attempts", "workers", "sources", "runs"):
        op.drop_table(table)
