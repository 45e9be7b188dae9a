"""Each flow's workers log in to the state store as a role of their own.

Workers write their reports, their sources' progress, their attempts at redelivered
messages and their processors' state (``ctx.state``) to the state store. In a network, giving
them the server's own database user would give every processor, third-party code from git
included, the run of the control plane: users, tokens, secrets, every flow. So on PostgreSQL
the server makes a login role per flow (``ec_w_...``) that may touch only the data-plane
tables, and the database's row-level security (see migration 0003) limits it to that flow's
rows. An agent receives the role's URL with the assignment of the flow's instances.

The server's database user needs CREATEROLE (``ALTER ROLE name CREATEROLE``). The role's
password is kept in ``worker_roles``: whoever can read that table holds more than the role
would give. On SQLite (one host, one user) there are no roles: workers get the file.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from ..errors import ElasticCodeError
from ..store.tables import worker_roles

#: What a worker role may do on each table it may touch (row-level security does the rest).
PRIVILEGES = {
    "runs": "SELECT",
    "sources": "SELECT, INSERT, UPDATE",
    "workers": "SELECT, INSERT, UPDATE",
    "attempts": "SELECT, INSERT, UPDATE, DELETE",
    "kv": "SELECT, INSERT, UPDATE, DELETE",
    "lineage": "SELECT, INSERT",
    "alembic_version": "SELECT",
}


class NoCreateRole(ElasticCodeError):
    """The server's database user may not create roles."""


def can_create_roles(engine: sa.Engine) -> bool:
    """Whether the server may make worker roles (PostgreSQL: CREATEROLE or superuser)."""
    if engine.dialect.name != "postgresql":
        return True
    with engine.connect() as db:
        row = db.execute(
            sa.text("SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user")
        ).scalar()
    return bool(row)


def role_name(engine: sa.Engine, flow: str) -> str:
    """A role name for ``flow`` that no other database of the cluster uses (roles are
    cluster-wide)."""
    database = engine.url.database or ""
    return "ec_w_" + hashlib.sha256(f"{database}/{flow}".encode()).hexdigest()[:24]


def worker_url(engine: sa.Engine, template: str, flow: str) -> str:
    """The state store URL a flow's workers use: ``template`` (the server's database as the
    agents' hosts reach it) with the flow's own role; the role is made on first use."""
    if engine.dialect.name != "postgresql":
        return template
    role, password = _ensure(engine, flow)
    url = make_url(template).set(username=role, password=password)
    rendered = url.render_as_string(hide_password=False)
    return rendered.replace("postgresql+psycopg://", "postgresql://", 1)


#: Worker roles this process has read: (database, flow) -> (role, password, until when). An
#: assignment names the role of each of its flows, and a change reaches hundreds of agents
#: at once: one read per flow every ``ROLE_CACHE`` seconds, not one per agent. (A flow
#: removed and made again on another server within that time would hand out the old role's
#: password here until it runs out.)
_roles: dict[tuple[str, str], tuple[str, str, float]] = {}
ROLE_CACHE = 10.0


def _ensure(engine: sa.Engine, flow: str) -> tuple[str, str]:
    key = (engine.url.render_as_string(hide_password=True), flow)
    known = _roles.get(key)
    if known is not None and known[2] > time.monotonic():
        return known[0], known[1]
    role, password = _read_or_make(engine, flow)
    _roles[key] = (role, password, time.monotonic() + ROLE_CACHE)
    return role, password


def _read_or_make(engine: sa.Engine, flow: str) -> tuple[str, str]:
    with engine.connect() as db:
        row = db.execute(
            sa.select(worker_roles.c.role, worker_roles.c.password).where(
                worker_roles.c.flow == flow
            )
        ).first()
    if row is not None:
        return str(row.role), str(row.password)
    role, password = role_name(engine, flow), secrets.token_hex(24)
    try:
        with engine.begin() as db:
            db.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:r))"), {"r": role})
            again = db.execute(
                sa.select(worker_roles.c.password).where(worker_roles.c.flow == flow)
            ).scalar()
            if again is not None:
                return role, str(again)
            exists = db.execute(
                sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
            ).first()
            verb = "ALTER" if exists else "CREATE"
            # a role name and a hex password: nothing in them needs quoting beyond this
            db.execute(sa.text(f"{verb} ROLE {role} LOGIN PASSWORD '{password}'"))
            for table, rights in PRIVILEGES.items():
                db.execute(sa.text(f"GRANT {rights} ON {table} TO {role}"))
            db.execute(sa.text(f"GRANT EXECUTE ON FUNCTION elasticcode_worker_flow() TO {role}"))
            db.execute(
                worker_roles.insert().values(
                    flow=flow, role=role, password=password, created=time.time()
                )
            )
    except sa.exc.ProgrammingError as exc:
        if "permission denied" in str(exc.orig) or "must have CREATEROLE" in str(exc.orig):
            raise NoCreateRole(
                f"the server's database user may not create the role of flow {flow!r}'s "
                f"workers: grant it CREATEROLE (ALTER ROLE {quote(engine.url.username or '')} "
                "CREATEROLE)"
            ) from None
        raise
    return role, password


def drop(engine: sa.Engine, flow: str) -> None:
    """Drop a removed flow's worker role."""
    if engine.dialect.name != "postgresql":
        return
    _roles.pop((engine.url.render_as_string(hide_password=True), flow), None)
    with engine.begin() as db:
        role = db.execute(
            sa.select(worker_roles.c.role).where(worker_roles.c.flow == flow)
        ).scalar()
        if role is None:
            return
        for table in PRIVILEGES:
            db.execute(sa.text(f"REVOKE ALL ON {table} FROM {role}"))
        db.execute(sa.text(f"REVOKE ALL ON FUNCTION elasticcode_worker_flow() FROM {role}"))
        db.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        db.execute(worker_roles.delete().where(worker_roles.c.flow == flow))
