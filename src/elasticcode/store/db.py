"""Opening a state database by URL, and the statements whose SQL differs by dialect.

One engine per store: the embedded SQLite file (WAL, a long busy timeout, so that the workers
of a run share it) or a shared PostgreSQL database (a pool sized for the process). Opening
checks the schema (see ``schema.ensure``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..errors import StateError
from ..redact import redact_url
from . import schema


def open_engine(url: str, connections: int = 5) -> sa.Engine:
    """An engine on ``url`` with the newest schema; ``StateError`` saying why if there is none.

    ``connections``: how many database connections to keep (a server answering many agents
    at once wants more)."""
    try:
        if url.startswith("sqlite:"):
            path = url.split(":///", 1)[1] if ":///" in url else ""
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(url, connect_args={"timeout": 60})
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = sa.create_engine(
                schema.engine_url(url),
                pool_pre_ping=True,
                pool_size=connections,
                max_overflow=2 * connections,
            )
        try:
            schema.ensure(engine, redact_url(url))
        except Exception:
            engine.dispose()  # no connection left open behind the error
            raise
    except sa.exc.SQLAlchemyError as exc:
        raise StateError(
            f"cannot open the state store {redact_url(url)}: {exc.__class__.__name__}: "
            f"{getattr(exc, 'orig', exc)}"
        ) from None
    return engine


def insert(engine: sa.Engine, table: sa.Table) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    return _insert(engine.dialect.name, table)


def _insert(dialect: str, table: sa.Table) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)


def upsert(db: sa.Connection, table: sa.Table, values: dict[str, Any], keys: list[str]) -> None:
    """INSERT ``values``, or UPDATE the row with the same ``keys``."""
    db.execute(_upsert(db.engine.dialect.name, table, tuple(values), tuple(keys)), values)


def upsert_many(
    db: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str]
) -> None:
    """INSERT ``rows`` (each with the same columns), or UPDATE the rows with the same
    ``keys``: one statement, its rows sent together."""
    if rows:
        db.execute(_upsert(db.engine.dialect.name, table, tuple(rows[0]), tuple(keys)), rows)


@functools.lru_cache(maxsize=256)
def _upsert(dialect: str, table: sa.Table, columns: tuple[str, ...], keys: tuple[str, ...]) -> Any:
    """The statement of :func:`upsert` and :func:`upsert_many`, made once per shape and
    kept: it is then compiled once (building one per call cost more than a small write)."""
    stmt = _insert(dialect, table)
    update = {c: stmt.excluded[c] for c in columns if c not in keys}
    return stmt.on_conflict_do_update(index_elements=list(keys), set_=update)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()
