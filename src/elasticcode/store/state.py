"""The state store: runs, source progress, worker reports and processor key-value state.

Built on SQLAlchemy Core so that the embedded SQLite file and a shared PostgreSQL database
take the same code. Nothing here is on the per-message hot path except processor state
(``ctx.state``), which processors such as ``join`` use on purpose.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import sqlalchemy as sa

from .db import insert, open_engine, upsert
from .tables import attempts, code_pins, kv, runs, sources, workers

#: The states of a run that the next ``elasticcode run`` of its flow resumes.
RESUMABLE = ("running", "interrupted", "incomplete", "disk-full")


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
    host: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    #: Histograms (``elasticcode.metrics.Histogram.to_wire``) ``process``, ``wait`` and
    #: ``latency``; ``queues``: messages received per input queue; ``depths``: per output
    #: queue, [messages, bytes, when] as last read for back pressure; ``cpu``: CPU seconds
    #: used while in the processor's code, ``cpu_wait``: seconds waited for a CPU meanwhile.
    metrics: dict[str, Any] = field(default_factory=dict)


class StateStore:
    """One state database, opened by URL (``sqlite:///…`` or ``postgresql://…``)."""

    def __init__(self, url: str, connections: int = 5) -> None:
        """``connections``: how many database connections to keep."""
        self.url = url
        self.engine = open_engine(url, connections)

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
            upsert(db, sources, values, ["run_id", "processor"])

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
            "host": r.host,
            "bytes_in": r.bytes_in,
            "bytes_out": r.bytes_out,
            "metrics": json.dumps(r.metrics, separators=(",", ":")) if r.metrics else None,
        }
        with self.engine.begin() as db:
            upsert(db, workers, values, ["id"])

    def reports_of(self, ids: list[str]) -> list[WorkerReport]:
        """The reports of the workers named (by consumer id)."""
        if not ids:
            return []
        with self.engine.connect() as db:
            rows = db.execute(sa.select(workers).where(workers.c.id.in_(ids))).mappings().all()
        return [as_report(row) for row in rows]

    def worker_reports(self, run_id: int) -> list[WorkerReport]:
        with self.engine.connect() as db:
            rows = db.execute(sa.select(workers).where(workers.c.run_id == run_id)).mappings().all()
        return [as_report(row) for row in rows]

    # -- attempts at redelivered messages ----------------------------------------------------
    def bump_attempt(self, processor: str, message_id: str) -> int:
        """Record that a redelivered message is about to be tried again; return its count."""
        values = {"processor": processor, "message_id": message_id, "count": 1}
        stmt = insert(self.engine, attempts).values(**values)
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
            upsert(db, kv, row, ["namespace", "key", "field"])
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


def as_report(row: Any) -> WorkerReport:
    """A ``workers`` row (a mapping) as a report."""
    values = {k: v for k, v in row.items() if k != "updated"}
    values["metrics"] = json.loads(values["metrics"]) if values.get("metrics") else {}
    values["host"] = values.get("host") or ""
    return WorkerReport(**values)
