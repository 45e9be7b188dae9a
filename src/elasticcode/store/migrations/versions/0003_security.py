"""Security: users, roles, grants, API tokens, encrypted secrets, the flows' worker roles, and
who made each change (the events' actor and origin). On PostgreSQL, the data-plane tables get
row-level security, so that a flow's workers, logged in as the flow's own role, see and change
only that flow's rows.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: table -> the condition a worker role's rows must meet (``{flow}``: the role's flow)
ROW_POLICIES = {
    "runs": "flow = {flow}",
    "sources": "run_id IN (SELECT id FROM runs WHERE flow = {flow})",
    "workers": "run_id IN (SELECT id FROM runs WHERE flow = {flow})",
    "attempts": "split_part(processor, '.', 1) = {flow}",
    "kv": "split_part(namespace, '.', 1) = {flow}",
}
FLOW_OF_WORKER = "elasticcode_worker_flow()"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("password", sa.Text),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
    )
    op.create_table(
        "roles",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("privileges", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_table(
        "grants",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.Integer, nullable=False, index=True),
        sa.Column("role", sa.String(100), nullable=False),
        sa.Column("flows", sa.String(200), nullable=False),
        sa.UniqueConstraint("user_id", "role", "flows", name="grants_once"),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("user_id", sa.Integer, index=True),
        sa.Column("agent_id", sa.String(64), index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("scopes", sa.Text),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float),
        sa.Column("last_used", sa.Float),
        sa.Column("uses_left", sa.Integer),
        sa.Column("revoked", sa.Boolean, nullable=False),
    )
    op.create_table(
        "secrets",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
    )
    op.create_table(
        "worker_roles",
        sa.Column("flow", sa.String(200), primary_key=True),
        sa.Column("role", sa.String(63), nullable=False, unique=True),
        sa.Column("password", sa.String(64), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("actor", sa.String(200)))
        batch.add_column(sa.Column("origin", sa.String(200)))
    if op.get_context().dialect.name == "postgresql":
        _row_security()


def _row_security() -> None:
    op.execute(
        f"CREATE OR REPLACE FUNCTION {FLOW_OF_WORKER} RETURNS text LANGUAGE sql STABLE "
        "SECURITY DEFINER SET search_path FROM CURRENT AS "
        "$$ SELECT flow FROM worker_roles WHERE role = session_user $$"
    )
    op.execute(f"REVOKE ALL ON FUNCTION {FLOW_OF_WORKER} FROM PUBLIC")
    for table, condition in ROW_POLICIES.items():
        rule = condition.format(flow=FLOW_OF_WORKER)
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY worker_flow ON {table} USING ({rule}) WITH CHECK ({rule})")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for table in ROW_POLICIES:
            op.execute(f"DROP POLICY IF EXISTS worker_flow ON {table}")
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
        op.execute(f"DROP FUNCTION IF EXISTS {FLOW_OF_WORKER}")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("origin")
        batch.drop_column("actor")
    for table in ("worker_roles", "secrets", "tokens", "grants", "roles", "users"):
        op.drop_table(table)
