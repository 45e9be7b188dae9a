"""Metrics: what each worker measures besides its counts (host, bytes, histograms, depths
read), the metrics history (rollups at 1 s, 1 min and 1 h) and the lineage of traced
messages, which a flow's workers write (on PostgreSQL: their own flow's rows only).

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
    op.create_table(
        "lineage",
        sa.Column("flow", sa.String(200), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(20), nullable=False),
        sa.Column("parent", sa.String(64)),
        sa.Column("processor", sa.String(200), nullable=False),
        sa.Column("instance", sa.Integer, nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("port", sa.String(200)),
        sa.Column("wait", sa.Float),
        sa.Column("duration", sa.Float),
        sa.Column("size", sa.Integer),
        sa.Column("attempt", sa.Integer),
        sa.Column("outputs", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("attributes", sa.Text),
        sa.Column("code", sa.String(64)),
        sa.Column("revision", sa.Integer),
    )
    op.create_index("lineage_message", "lineage", ["flow", "message_id"])
    op.create_index("lineage_parent", "lineage", ["flow", "parent"])
    op.create_index("lineage_at", "lineage", ["flow", "at"])
    if op.get_context().dialect.name == "postgresql":
        rule = "flow = elasticcode_worker_flow()"
        op.execute("ALTER TABLE lineage ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY worker_flow ON lineage USING ({rule}) WITH CHECK ({rule})")
        # the roles of flows deployed before: what new roles get (``workerdb.PRIVILEGES``)
        for (role,) in op.get_bind().execute(sa.text("SELECT role FROM worker_roles")):
            op.execute(f"GRANT SELECT, INSERT ON lineage TO {role}")


def downgrade() -> None:
    op.drop_table("lineage")
    op.drop_table("metric_points")
    with op.batch_alter_table("workers") as t:
        for name in ("metrics", "bytes_out", "bytes_in", "host"):
            t.drop_column(name)
