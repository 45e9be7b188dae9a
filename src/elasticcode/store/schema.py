"""The state store's schema, kept by Alembic migrations (``migrations`` beside this module).

``elasticcode db upgrade`` brings a database to the newest schema. The embedded SQLite state
of a one-host run is upgraded on open; a shared database (PostgreSQL) only by that command, so
that a newer agent never changes a schema that older servers still use.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from ..errors import StateError, StateUnreachable

#: The newest migration; a database at this revision needs nothing done.
HEAD = "0007"
#: Tables the first migration creates: a database that has them but no version predates
#: migrations and is stamped as at that revision.
FIRST = ("runs", "sources", "workers", "attempts", "kv", "code_pins")


def current(engine: sa.Engine) -> str | None:
    """The database's schema revision; None for an empty database."""
    with engine.connect() as db:
        names = set(sa.inspect(db).get_table_names())
        if "alembic_version" in names:
            row = db.execute(sa.text("SELECT version_num FROM alembic_version")).first()
            return str(row[0]) if row else None
        return "0001" if set(FIRST) <= names else None


def upgrade(engine: sa.Engine, say: Callable[[str], None] | None = None) -> tuple[str | None, str]:
    """Apply every migration the database lacks; return (revision before, revision after)."""
    from alembic import command
    from alembic.config import Config

    before = current(engine)
    if before == HEAD:
        return before, HEAD
    config = Config()
    config.set_main_option("script_location", "elasticcode.store:migrations")
    with engine.begin() as db:
        config.attributes["connection"] = db
        names = set(sa.inspect(db).get_table_names())
        if "alembic_version" not in names and before == "0001":
            command.stamp(config, "0001")
        if say is not None:
            say(f"upgrading the schema from {before or 'an empty database'} to {HEAD}")
        command.upgrade(config, "head")
    return before, HEAD


def ensure(engine: sa.Engine, shown_url: str) -> None:
    """Make sure the schema is the newest: upgrade SQLite, refuse an old shared database."""
    try:
        now = current(engine)
    except sa.exc.OperationalError as exc:
        raise StateUnreachable(
            f"the state store {shown_url} does not answer: {str(exc.orig).strip()}"
        ) from None
    if now == HEAD:
        return
    if engine.dialect.name == "sqlite":
        upgrade(engine)
        return
    raise StateError(
        f"the state store {shown_url} is at schema revision {now or '(empty)'}, and this "
        f"version of ElasticCode needs {HEAD}: run `elasticcode db upgrade --db {shown_url}`"
    )


def engine_url(url: str) -> str:
    """A state store URL with the driver SQLAlchemy should use (psycopg 3 for PostgreSQL)."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url
