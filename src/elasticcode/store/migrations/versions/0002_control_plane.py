"""Distributed mode: flows and their revisions, processor controls, agents, placements, the
leader lease and the event log.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flows",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("running", sa.Boolean, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
    )
    op.create_table(
        "flow_revisions",
        sa.Column("flow", sa.String(200), primary_key=True),
        sa.Column("revision", sa.Integer, primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
    )
    op.create_table(
        "processor_controls",
        sa.Column("flow", sa.String(200), primary_key=True),
        sa.Column("processor", sa.String(200), primary_key=True),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("restarts", sa.Integer, nullable=False),
    )
    op.create_table(
        "agents",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("cores", sa.Integer, nullable=False),
        sa.Column("memory", sa.BigInteger, nullable=False),
        sa.Column("capacity", sa.Integer, nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("registered", sa.Float, nullable=False),
        sa.Column("heartbeat", sa.Float, nullable=False),
        sa.Column("assigned", sa.BigInteger, nullable=False),
        sa.Column("applied", sa.BigInteger, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("workers", sa.Text, nullable=False),
    )
    op.create_table(
        "placements",
        sa.Column("flow", sa.String(200), primary_key=True),
        sa.Column("processor", sa.String(200), primary_key=True),
        sa.Column("instance", sa.Integer, primary_key=True),
        sa.Column("agent_id", sa.String(64), index=True),
        sa.Column("placed", sa.Float, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("term", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("flow", sa.String(200)),
        sa.Column("text", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "events",
        "leases",
        "placements",
        "agents",
        "processor_controls",
        "flow_revisions",
        "flows",
    ):
        op.drop_table(table)
