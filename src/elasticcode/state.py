"""The state store: runs, source progress, worker reports and processor key-value state.

Built on SQLAlchemy Core so that the embedded SQLite file and a shared PostgreSQL database
take the same code. Nothing here is on the per-message hot path except processor state
(``ctx.state``), which processors such as ``join`` use on purpose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import sqlalchemy as sa

from . import schema
from .errors import StateError

metadata = sa.MetaData()

#: The states of a run that the next ``elasticcode run`` of its flow resumes.
RESUMABLE = ("running", "interrupted", "incomplete", "disk-full")

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow", sa.String(200), nullable=False, index=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("ended", sa.Float),
)

sources = sa.Table(
    "sources",
    metadata,
    sa.Column("run_id", sa.Integer, primary_key=True),
    sa.Column("processor", sa.String(200), primary_key=True),
    sa.Column("offset", sa.BigInteger, nullable=False, default=0),
    sa.Column("calls", sa.BigInteger, nullable=False, default=0),
    sa.Column("done", sa.Boolean, nullable=False, default=False),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.Integer, nullable=False, index=True),
    sa.Column("processor", sa.String(200), nullable=False),
    sa.Column("instance", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("received", sa.BigInteger, nullable=False, default=0),
    sa.Column("emitted", sa.BigInteger, nullable=False, default=0),
    sa.Column("errors", sa.BigInteger, nullable=False, default=0),
    sa.Column("retried", sa.BigInteger, nullable=False, default=0),
    sa.Column("dead", sa.BigInteger, nullable=False, default=0),
    sa.Column("busy", sa.Float, nullable=False, default=0.0),
    sa.Column("holding", sa.Integer, nullable=False, default=0),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("last_error", sa.Text),
)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("processor", sa.String(200), primary_key=True),
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
)

kv = sa.Table(
    "kv",
    metadata,
    sa.Column("namespace", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(500), primary_key=True),
    sa.Column("field", sa.String(200), primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
)


code_pins = sa.Table(
    "code_pins",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow", sa.String(200), nullable=False),
    sa.Column("processor", sa.String(200), nullable=False),
    sa.Column("repo", sa.Text, nullable=False),
    sa.Column("ref", sa.String(500), nullable=False),
    sa.Column("commit", sa.String(64), nullable=False),
    sa.Column("resolved", sa.Float, nullable=False),
    sa.Index("code_pins_by_processor", "flow", "processor"),
)


# -- distributed mode: the control plane's desired and observed state ----------------------
flows = sa.Table(
    "flows",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("revision", sa.Integer, nullable=False),
    #: The run the flow's workers report under and its sources keep their progress in.
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("running", sa.Boolean, nullable=False, default=True),
    sa.Column("updated", sa.Float, nullable=False),
)

flow_revisions = sa.Table(
    "flow_revisions",
    metadata,
    sa.Column("flow", sa.String(200), primary_key=True),
    sa.Column("revision", sa.Integer, primary_key=True),
    #: The flow as deployed (JSON), code references resolved.
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("note", sa.Text, nullable=False, default=""),
)

processor_controls = sa.Table(
    "processor_controls",
    metadata,
    sa.Column("flow", sa.String(200), primary_key=True),
    sa.Column("processor", sa.String(200), primary_key=True),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    #: Bumped by a restart: every instance is replaced, new ones first.
    sa.Column("restarts", sa.Integer, nullable=False, default=0),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("cores", sa.Integer, nullable=False),
    sa.Column("memory", sa.BigInteger, nullable=False),
    sa.Column("capacity", sa.Integer, nullable=False),
    sa.Column("labels", sa.Text, nullable=False, default="{}"),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("registered", sa.Float, nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),
    #: The generation of the agent's assignment: bumped whenever what it should run changes.
    sa.Column("assigned", sa.BigInteger, nullable=False, default=0),
    #: The generation the agent last said it runs.
    sa.Column("applied", sa.BigInteger, nullable=False, default=0),
    #: A digest of the assignment, to tell when it changed.
    sa.Column("digest", sa.String(64), nullable=False, default=""),
    #: Its workers as it last reported them (JSON).
    sa.Column("workers", sa.Text, nullable=False, default="[]"),
)

placements = sa.Table(
    "placements",
    metadata,
    sa.Column("flow", sa.String(200), primary_key=True),
    sa.Column("processor", sa.String(200), primary_key=True),
    sa.Column("instance", sa.Integer, primary_key=True),
    sa.Column("agent_id", sa.String(64), index=True),
    sa.Column("placed", sa.Float, nullable=False),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
    #: Bumped whenever the lease changes hands.
    sa.Column("term", sa.BigInteger, nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("flow", sa.String(200)),
    sa.Column("text", sa.Text, nullable=False),
)


@dataclass(slots=True)
class CodePin:
    """One resolution of a processor's git ref to a commit."""

    processor: str
    repo: str
    ref: str
    commit: str
    resolved: float


@dataclass(slots=True)
class WorkerReport:
    id: str
    run_id: int
    processor: str
    instance: int
    pid: int
    status: str = "starting"
    received: int = 0
    emitted: int = 0
    errors: int = 0
    retried: int = 0
    dead: int = 0
    busy: float = 0.0
    #: Messages fetched and not yet settled.
    holding: int = 0
    last_error: str | None = None


class StateStore:
    """One state database, opened by URL (``sqlite:///…`` or ``postgresql://…``)."""

    def __init__(self, url: str, connections: int = 5) -> None:
        """``connections``: how many database connections to keep (a server answering many
        agents at once wants more)."""
        self.url = url
        try:
            if url.startswith("sqlite:"):
                path = url.split(":///", 1)[1] if ":///" in url else ""
                if path:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                self.engine = sa.create_engine(url, connect_args={"timeout": 60})
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = sa.create_engine(
                    schema.engine_url(url),
                    pool_pre_ping=True,
                    pool_size=connections,
                    max_overflow=2 * connections,
                )
            try:
                schema.ensure(self.engine, _safe(url))
            except Exception:
                self.engine.dispose()  # no connection left open behind the error
                raise
        except sa.exc.SQLAlchemyError as exc:
            raise StateError(
                f"cannot open the state store {_safe(url)}: {exc.__class__.__name__}: "
                f"{getattr(exc, 'orig', exc)}"
            ) from None

    def close(self) -> None:
        self.engine.dispose()

    # -- runs ------------------------------------------------------------------------------
    def last_run(self, flow: str) -> tuple[int, str] | None:
        with self.engine.connect() as db:
            row = db.execute(
                sa.select(runs.c.id, runs.c.status)
                .where(runs.c.flow == flow)
                .order_by(runs.c.id.desc())
                .limit(1)
            ).first()
        return (row.id, row.status) if row else None

    def start_run(self, flow: str, fresh: bool = False) -> tuple[int, bool]:
        """Resume the flow's unfinished run, or begin a new one; return (run id, resumed)."""
        last = self.last_run(flow)
        with self.engine.begin() as db:
            if last and last[1] in RESUMABLE and not fresh:
                db.execute(
                    runs.update().where(runs.c.id == last[0]).values(status="running", ended=None)
                )
                return last[0], True
            if last and last[1] in RESUMABLE:
                db.execute(
                    runs.update()
                    .where(runs.c.id == last[0])
                    .values(status="abandoned", ended=time.time())
                )
            run_id = db.execute(
                runs.insert().values(flow=flow, status="running", started=time.time())
            ).inserted_primary_key[0]  # type: ignore[index]
        return int(run_id), False

    def end_run(self, run_id: int, status: str) -> None:
        with self.engine.begin() as db:
            db.execute(
                runs.update().where(runs.c.id == run_id).values(status=status, ended=time.time())
            )

    # -- code pins -------------------------------------------------------------------------
    def code_pin(self, flow: str, processor: str, repo: str, ref: str) -> str | None:
        """The commit last recorded for a processor's repository and ref, if any."""
        with self.engine.connect() as db:
            row = db.execute(
                sa.select(code_pins.c.commit)
                .where(
                    code_pins.c.flow == flow,
                    code_pins.c.processor == processor,
                    code_pins.c.repo == repo,
                    code_pins.c.ref == ref,
                )
                .order_by(code_pins.c.id.desc())
                .limit(1)
            ).first()
        return str(row.commit) if row else None

    def record_pin(self, flow: str, processor: str, repo: str, ref: str, commit: str) -> None:
        with self.engine.begin() as db:
            db.execute(
                code_pins.insert().values(
                    flow=flow,
                    processor=processor,
                    repo=repo,
                    ref=ref,
                    commit=commit,
                    resolved=time.time(),
                )
            )

    def code_history(self, flow: str) -> list[CodePin]:
        """Every recorded resolution of the flow's processors' code, oldest first."""
        with self.engine.connect() as db:
            rows = db.execute(
                sa.select(code_pins).where(code_pins.c.flow == flow).order_by(code_pins.c.id)
            ).all()
        return [CodePin(r.processor, r.repo, r.ref, r.commit, r.resolved) for r in rows]

    # -- sources ---------------------------------------------------------------------------
    def source_progress(self, run_id: int, processor: str) -> tuple[int, int, bool]:
        with self.engine.connect() as db:
            row = db.execute(
                sa.select(sources.c.offset, sources.c.calls, sources.c.done).where(
                    sources.c.run_id == run_id, sources.c.processor == processor
                )
            ).first()
        return (int(row.offset), int(row.calls), bool(row.done)) if row else (0, 0, False)

    def save_source(self, run_id: int, processor: str, offset: int, calls: int, done: bool) -> None:
        values = {
            "run_id": run_id,
            "processor": processor,
            "offset": offset,
            "calls": calls,
            "done": done,
        }
        with self.engine.begin() as db:
            db.execute(self._upsert(sources, values, ["run_id", "processor"]))

    def sources_done(self, run_id: int, names: list[str]) -> bool:
        if not names:
            return True
        with self.engine.connect() as db:
            n = db.execute(
                sa.select(sa.func.count())
                .select_from(sources)
                .where(
                    sources.c.run_id == run_id,
                    sources.c.processor.in_(names),
                    sources.c.done.is_(True),
                )
            ).scalar_one()
        return int(n) == len(names)

    # -- workers ---------------------------------------------------------------------------
    def report(self, r: WorkerReport) -> None:
        values = {
            "id": r.id,
            "run_id": r.run_id,
            "processor": r.processor,
            "instance": r.instance,
            "pid": r.pid,
            "status": r.status,
            "received": r.received,
            "emitted": r.emitted,
            "errors": r.errors,
            "retried": r.retried,
            "dead": r.dead,
            "busy": r.busy,
            "holding": r.holding,
            "updated": time.time(),
            "last_error": r.last_error,
        }
        with self.engine.begin() as db:
            db.execute(self._upsert(workers, values, ["id"]))

    def worker_reports(self, run_id: int) -> list[WorkerReport]:
        with self.engine.connect() as db:
            rows = db.execute(sa.select(workers).where(workers.c.run_id == run_id)).mappings().all()
        return [WorkerReport(**{k: v for k, v in row.items() if k != "updated"}) for row in rows]

    # -- attempts at redelivered messages ----------------------------------------------------
    def bump_attempt(self, processor: str, message_id: str) -> int:
        """Record that a redelivered message is about to be tried again; return its count."""
        values = {"processor": processor, "message_id": message_id, "count": 1}
        stmt = self._insert(attempts).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["processor", "message_id"], set_={"count": attempts.c.count + 1}
        ).returning(attempts.c.count)
        with self.engine.begin() as db:
            return int(db.execute(stmt).scalar_one())

    def clear_attempts(self, processor: str, message_id: str) -> None:
        with self.engine.begin() as db:
            db.execute(
                attempts.delete().where(
                    attempts.c.processor == processor, attempts.c.message_id == message_id
                )
            )

    # -- processor state -------------------------------------------------------------------
    def kv(self, namespace: str) -> KeyValue:
        return KeyValue(self, namespace)

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which knows ON CONFLICT."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table)
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)

    def _upsert(self, table: sa.Table, values: dict[str, Any], keys: list[str]) -> Any:
        stmt = self._insert(table).values(**values)
        return stmt.on_conflict_do_update(
            index_elements=keys, set_={k: v for k, v in values.items() if k not in keys}
        )


class KeyValue:
    """Durable key → {field: value} state for one processor, shared by all its instances."""

    def __init__(self, store: StateStore, namespace: str) -> None:
        self.store = store
        self.namespace = namespace

    def merge(self, key: str, field: str, value: Any) -> dict[str, Any]:
        """Set one field of a key and return all its fields, atomically."""
        row = {
            "namespace": self.namespace,
            "key": key,
            "field": field,
            "value": msgpack.packb(value, use_bin_type=True),
        }
        with self.store.engine.begin() as db:
            db.execute(self.store._upsert(kv, row, ["namespace", "key", "field"]))
            rows = db.execute(
                sa.select(kv.c.field, kv.c.value).where(
                    kv.c.namespace == self.namespace, kv.c.key == key
                )
            ).all()
        return {f: msgpack.unpackb(v, raw=False, strict_map_key=False) for f, v in rows}

    def get(self, key: str) -> dict[str, Any]:
        with self.store.engine.connect() as db:
            rows = db.execute(
                sa.select(kv.c.field, kv.c.value).where(
                    kv.c.namespace == self.namespace, kv.c.key == key
                )
            ).all()
        return {f: msgpack.unpackb(v, raw=False, strict_map_key=False) for f, v in rows}

    def delete(self, key: str) -> None:
        with self.store.engine.begin() as db:
            db.execute(kv.delete().where(kv.c.namespace == self.namespace, kv.c.key == key))

    def count(self) -> int:
        with self.store.engine.connect() as db:
            return int(
                db.execute(
                    sa.select(sa.func.count(sa.distinct(kv.c.key))).where(
                        kv.c.namespace == self.namespace
                    )
                ).scalar_one()
            )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _safe(url: str) -> str:
    """A URL with any password masked."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<state store URL>"
