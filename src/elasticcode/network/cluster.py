"""The control plane's state: flows and their revisions, agents, placements, the leader lease.

Everything the servers know lives here, in the state store (PostgreSQL in a network), so a
server holds nothing of its own: any server answers the API and the agents, and the leader
alone (``Cluster.lead``) turns the desired state into placements. Agents fetch what concerns
them (``Cluster.assignments``) and reconcile to it.

An instance's *spec* is a digest of what its worker runs: the processor's settings and code
reference, the connections it reads and writes, the flow's settings and a restart counter.
A new revision that leaves a processor's spec alone leaves its workers running; one that
changes it has them replaced, new ones first.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..errors import FlowError, NotFound
from ..flow import Flow
from ..secret import names_of_flow
from ..store import WorkerReport, as_report
from ..store.db import open_engine, upsert
from ..store.tables import (
    agents,
    events,
    flow_revisions,
    flows,
    leases,
    placements,
    processor_controls,
    runs,
    workers,
)
from .assignments import Assignments

#: The name of the leader lease's row.
LEADER = "leader"


@dataclass(frozen=True, slots=True)
class Who:
    """Who makes a change, and from where: what the audit log records with it."""

    actor: str = "system"
    origin: str = ""


SYSTEM = Who()


@dataclass(slots=True)
class AgentInfo:
    id: str
    name: str
    host: str
    cores: int
    memory: int
    capacity: int
    labels: dict[str, str]
    status: str
    registered: float
    heartbeat: float
    assigned: int
    applied: int
    workers: list[dict[str, Any]] = field(default_factory=list)
    #: cores busy on its host (by anything), as it last measured; None: not known
    busy: float | None = None


@dataclass(slots=True)
class FlowInfo:
    name: str
    revision: int
    run_id: int
    running: bool
    updated: float
    document: dict[str, Any]


def connections_by_processor(flow: Flow) -> dict[str, list[dict[str, Any]]]:
    """Each processor's connections (in and out), as data."""
    touching: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in flow.connections:
        src, _, dst, _ = c.ends()
        data = c.model_dump(mode="json", by_alias=True)
        touching[src].append(data)
        if dst != src:
            touching[dst].append(data)
    return touching


def spec_of(
    flow: Flow,
    processor: str,
    restarts: int = 0,
    touching: dict[str, list[dict[str, Any]]] | None = None,
) -> str:
    """The digest of what an instance of ``processor`` runs (see the module docstring)."""
    p = flow.get(processor)
    what = {
        "processor": p.model_dump(mode="json", by_alias=True, exclude={"labels", "instances"}),
        "connections": (touching or connections_by_processor(flow)).get(processor, []),
        "settings": flow.settings.model_dump(mode="json"),
        "path": flow.path,
        "restarts": restarts,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


class Cluster:
    """The control plane's operations on the state store."""

    def __init__(self, url: str, agent_timeout: float = 10.0) -> None:
        self.engine = open_engine(url, connections=20)
        self.agent_timeout = agent_timeout
        self._parsed: dict[tuple[str, int], Flow] = {}
        self._secret_names: dict[tuple[str, int], set[str]] = {}
        self._specs: dict[tuple[str, int, str, int], str] = {}
        self._documents: dict[tuple[str, int], dict[str, Any]] = {}
        self._touching: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}

    def close(self) -> None:
        self.engine.dispose()

    # -- flows ----------------------------------------------------------------------------
    def apply(
        self, document: dict[str, Any], note: str = "", who: Who = SYSTEM
    ) -> tuple[int, bool]:
        """Deploy a flow document as its next revision; return (revision, changed). A document
        equal to the current revision makes none."""
        flow = Flow.from_document(document)  # validated before anything is written
        fed = {flow.resolved(c)[2] for c in flow.connections}
        for p in flow.processors:
            if p.scale is not None and p.scale.min == 0 and p.name not in fed:
                # asleep, it is woken by what its upstream workers see in its queues; what is
                # sent to it directly nobody reads
                raise FlowError(
                    f"processor {p.name!r}: in a network, scale min 0 (asleep until a message "
                    "waits) needs a connection into it; give it one, or min: 1"
                )
            if p.results is not None and not flow.settings.blobs:
                raise FlowError(
                    f"processor {p.name!r} keeps its results: in a network the flow needs a "
                    "blob store that its workers share (settings.blobs: s3://, redis://, "
                    "postgresql://)"
                )
        text = json.dumps(flow.to_dict(), sort_keys=True)
        now = time.time()
        with self.engine.begin() as db:
            row = db.execute(sa.select(flows).where(flows.c.name == flow.name)).first()
            if row is not None:
                latest = db.execute(
                    sa.select(flow_revisions.c.document).where(
                        flow_revisions.c.flow == flow.name,
                        flow_revisions.c.revision == row.revision,
                    )
                ).scalar_one()
                if latest == text:
                    return int(row.revision), False
                revision = (
                    int(
                        db.execute(
                            sa.select(sa.func.max(flow_revisions.c.revision)).where(
                                flow_revisions.c.flow == flow.name
                            )
                        ).scalar_one()
                    )
                    + 1
                )
                db.execute(
                    flows.update()
                    .where(flows.c.name == flow.name)
                    .values(revision=revision, updated=now)
                )
            else:
                revision = 1
                run_id = db.execute(
                    runs.insert().values(flow=flow.name, status="running", started=now)
                ).inserted_primary_key[0]  # type: ignore[index]
                db.execute(
                    flows.insert().values(
                        name=flow.name, revision=1, run_id=run_id, running=True, updated=now
                    )
                )
            db.execute(
                flow_revisions.insert().values(
                    flow=flow.name, revision=revision, document=text, created=now, note=note
                )
            )
            text = f"revision {revision} applied. {note}".strip()
            record_event(db, "revision", flow.name, text, who)
        return revision, True

    def flow(self, name: str, revision: int | None = None) -> FlowInfo:
        with self.engine.connect() as db:
            row = db.execute(sa.select(flows).where(flows.c.name == name)).first()
            if row is None:
                raise NotFound(f"no flow named {name!r}; `elasticcode apply FILE` deploys one")
            rev = revision or row.revision
            doc = db.execute(
                sa.select(flow_revisions.c.document).where(
                    flow_revisions.c.flow == name, flow_revisions.c.revision == rev
                )
            ).scalar()
        if doc is None:
            raise NotFound(f"flow {name!r} has no revision {rev}; see its revisions")
        return FlowInfo(name, rev, row.run_id, row.running, row.updated, json.loads(doc))

    def flows(self) -> list[FlowInfo]:
        with self.engine.connect() as db:
            names = db.execute(sa.select(flows.c.name).order_by(flows.c.name)).scalars().all()
        return [self.flow(n) for n in names]

    def revisions(self, name: str) -> list[dict[str, Any]]:
        self.flow(name)
        with self.engine.connect() as db:
            rows = db.execute(
                sa.select(
                    flow_revisions.c.revision, flow_revisions.c.created, flow_revisions.c.note
                )
                .where(flow_revisions.c.flow == name)
                .order_by(flow_revisions.c.revision)
            ).all()
        return [{"revision": r.revision, "created": r.created, "note": r.note} for r in rows]

    def rollback(self, name: str, revision: int, who: Who = SYSTEM) -> int:
        """Deploy an earlier revision's document again, as a new revision."""
        old = self.flow(name, revision)
        rev, _ = self.apply(old.document, f"rollback to revision {revision}", who)
        return rev

    def remove_flow(self, name: str, who: Who = SYSTEM) -> None:
        self.flow(name)
        with self.engine.begin() as db:
            for table in (flows, processor_controls):
                key = table.c.name if table is flows else table.c.flow
                db.execute(table.delete().where(key == name))
            record_event(db, "flow", name, "removed; its workers stop, its queues stay", who)

    def set_running(self, name: str, running: bool, who: Who = SYSTEM) -> None:
        self.flow(name)
        with self.engine.begin() as db:
            db.execute(flows.update().where(flows.c.name == name).values(running=running))
            record_event(db, "flow", name, "started" if running else "stopped", who)

    def parsed(self, name: str, revision: int, document: dict[str, Any] | None = None) -> Flow:
        key = (name, revision)
        if key not in self._parsed:
            doc = document if document is not None else self.flow(name, revision).document
            self._parsed[key] = Flow.from_document(doc)
        return self._parsed[key]

    def secret_names(self, name: str, revision: int, document: dict[str, Any]) -> set[str]:
        """The secrets a revision of a flow references (a revision never changes)."""
        key = (name, revision)
        if key not in self._secret_names:
            self._secret_names[key] = names_of_flow(self.parsed(name, revision, document))
        return self._secret_names[key]

    def spec(self, flow: Flow, revision: int, processor: str, restarts: int) -> str:
        key = (flow.name, revision, processor, restarts)
        if key not in self._specs:
            if (flow.name, revision) not in self._touching:
                self._touching[(flow.name, revision)] = connections_by_processor(flow)
            touching = self._touching[(flow.name, revision)]
            self._specs[key] = spec_of(flow, processor, restarts, touching)
        return self._specs[key]

    # -- processors -------------------------------------------------------------------------
    def control(self, flow: str, processor: str, action: str, who: Who = SYSTEM) -> None:
        """``pause``, ``resume`` or ``restart`` one processor."""
        info = self.flow(flow)
        self.parsed(flow, info.revision, info.document).get(processor)
        with self.engine.begin() as db:
            row = db.execute(
                sa.select(processor_controls).where(
                    processor_controls.c.flow == flow, processor_controls.c.processor == processor
                )
            ).first()
            paused, restarts = (row.paused, row.restarts) if row else (False, 0)
            if action == "pause":
                paused = True
            elif action == "resume":
                paused = False
            elif action == "restart":
                restarts += 1
            else:
                raise FlowError(f"unknown action {action!r}; use pause, resume or restart")
            values = {"flow": flow, "processor": processor, "paused": paused, "restarts": restarts}
            upsert(db, processor_controls, values, ["flow", "processor"])
            record_event(db, "processor", flow, f"processor {processor}: {action}", who)

    def scaled(self, flow: str) -> dict[str, tuple[int | None, int | None]]:
        """Each processor of ``flow`` with a recorded count: (decided by the autoscaler, set
        by hand)."""
        with self.engine.connect() as db:
            rows = db.execute(
                sa.select(
                    processor_controls.c.processor,
                    processor_controls.c.scaled,
                    processor_controls.c.pinned,
                ).where(processor_controls.c.flow == flow)
            ).all()
        return {r.processor: (r.scaled, r.pinned) for r in rows}

    def record_scale(self, flow: str, processor: str, count: int, text: str, who: Who) -> None:
        """The autoscaler's decision: the processor's count, and the event that says why."""
        with self.engine.begin() as db:
            values = {"flow": flow, "processor": processor, "scaled": count}
            upsert(db, processor_controls, values, ["flow", "processor"])
            record_event(db, "scale", flow, text, who)

    def pin(self, flow: str, processor: str, count: int | None, who: Who = SYSTEM) -> None:
        """Hold a processor that scales at ``count`` instances (None: let it scale again)."""
        info = self.flow(flow)
        spec = self.parsed(flow, info.revision, info.document).get(processor)
        if spec.scale is None:
            raise FlowError(f"processor {processor!r} does not scale: give it a number")
        with self.engine.begin() as db:
            values = {"flow": flow, "processor": processor, "pinned": count}
            upsert(db, processor_controls, values, ["flow", "processor"])
            what = "released: it scales again" if count is None else f"held at {count} instance(s)"
            record_event(db, "scale", flow, f"processor {processor}: {what}", who)

    def controls(self) -> dict[tuple[str, str], tuple[bool, int]]:
        with self.engine.connect() as db:
            rows = db.execute(sa.select(processor_controls)).all()
        return {(r.flow, r.processor): (r.paused, r.restarts) for r in rows}

    def update_processor(
        self, flow: str, processor: str, changes: dict[str, Any], who: Who = SYSTEM
    ) -> int:
        """A new revision with some of a processor's settings changed (e.g. instances)."""
        doc = self.flow(flow).document
        procs = doc.get("processors", [])
        for p in procs:
            if p.get("name") == processor:
                p.update(changes)
                break
        else:
            raise NotFound(f"flow {flow!r} has no processor {processor!r}")
        what = ", ".join(f"{k}={v}" for k, v in changes.items())
        rev, _ = self.apply(doc, f"processor {processor}: {what}", who)
        return rev

    # -- agents ------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        host: str,
        cores: int,
        memory: int,
        capacity: int,
        labels: dict[str, str],
        agent_id: str | None = None,
        who: Who = SYSTEM,
    ) -> str:
        """Record an agent (again, when it gives the id it had); return its id."""
        agent_id = agent_id or uuid.uuid4().hex
        now = time.time()
        values = {
            "id": agent_id,
            "name": name,
            "host": host,
            "cores": cores,
            "memory": memory,
            "capacity": capacity,
            "labels": json.dumps(labels, sort_keys=True),
            "status": "up",
            "registered": now,
            "heartbeat": now,
        }
        with self.engine.begin() as db:
            known = db.execute(sa.select(agents.c.id).where(agents.c.id == agent_id)).first()
            if known is None:
                db.execute(agents.insert().values(**values, assigned=0, applied=0, workers="[]"))
            else:
                db.execute(agents.update().where(agents.c.id == agent_id).values(**values))
            text = f"agent {name} on {host} registered ({capacity} slots)"
            record_event(db, "agent", None, text, who)
        return agent_id

    def heartbeat(
        self,
        agent_id: str,
        applied: int,
        workers: list[dict[str, Any]],
        busy: float | None = None,
    ) -> int:
        """Note an agent as alive (with what it runs and how busy its host is); return the
        generation of its assignment."""
        values = {
            "heartbeat": time.time(),
            "status": "up",
            "applied": applied,
            "workers": json.dumps(workers),
            "busy": busy,
        }
        with self.engine.begin() as db:
            # an agent that is up: one statement (the usual case, every agent every 2 s)
            assigned = db.execute(
                agents.update()
                .where(agents.c.id == agent_id, agents.c.status == "up")
                .values(**values)
                .returning(agents.c.assigned)
            ).scalar()
            if assigned is not None:
                return int(assigned)
            row = db.execute(
                sa.select(agents.c.assigned, agents.c.name).where(agents.c.id == agent_id)
            ).first()
            if row is None:
                raise NotFound(f"no agent {agent_id}; it registers again")
            db.execute(agents.update().where(agents.c.id == agent_id).values(**values))
            record_event(db, "agent", None, f"agent {row.name} is back")
        return int(row.assigned)

    def agents(self) -> list[AgentInfo]:
        with self.engine.connect() as db:
            rows = db.execute(sa.select(agents).order_by(agents.c.name, agents.c.id)).all()
        return [
            AgentInfo(
                r.id,
                r.name,
                r.host,
                r.cores,
                r.memory,
                r.capacity,
                json.loads(r.labels),
                r.status,
                r.registered,
                r.heartbeat,
                r.assigned,
                r.applied,
                json.loads(r.workers),
                r.busy,
            )
            for r in rows
        ]

    def generations(self) -> dict[str, int]:
        """Every agent's assignment generation (what agents waiting for a change watch)."""
        with self.engine.connect() as db:
            rows = db.execute(sa.select(agents.c.id, agents.c.assigned)).all()
        return {r.id: int(r.assigned) for r in rows}

    def forget_agent(self, agent_id: str, who: Who = SYSTEM) -> None:
        with self.engine.begin() as db:
            name = db.execute(sa.select(agents.c.name).where(agents.c.id == agent_id)).scalar()
            if name is None:
                raise NotFound(f"no agent {agent_id}")
            db.execute(agents.delete().where(agents.c.id == agent_id))
            record_event(db, "agent", None, f"agent {name} forgotten; its credential revoked", who)
            db.execute(
                placements.update().where(placements.c.agent_id == agent_id).values(agent_id=None)
            )

    def assignments(self) -> Assignments:
        """Every agent's assignment, from one consistent read (see ``network.assignments``)."""
        with self.engine.connect() as db:
            if db.dialect.name == "postgresql":
                db.execution_options(isolation_level="REPEATABLE READ")
            with db.begin():
                generations = {
                    r.id: int(r.assigned)
                    for r in db.execute(sa.select(agents.c.id, agents.c.assigned))
                }
                placed = db.execute(sa.select(placements)).all()
                current = {f.name: f for f in db.execute(sa.select(flows))}
                docs = {n: self.document(db, n, f.revision) for n, f in current.items()}
                restarts = {
                    (c.flow, c.processor): c.restarts
                    for c in db.execute(
                        sa.select(
                            processor_controls.c.flow,
                            processor_controls.c.processor,
                            processor_controls.c.restarts,
                        )
                    )
                }
                gone = db.execute(sa.select(agents.c.workers).where(agents.c.status != "up"))
                gone_workers = [w for (w,) in gone]

        def spec(name: str, revision: int, processor: str, restarts: int) -> str:
            flow = self.parsed(name, revision, docs[name])
            return self.spec(flow, revision, processor, restarts)

        return Assignments(generations, placed, current, docs, restarts, gone_workers, spec)

    def document(self, db: sa.Connection, name: str, revision: int) -> dict[str, Any]:
        """A revision's document (revisions never change, so each is read once)."""
        key = (name, revision)
        if key not in self._documents:
            text = db.execute(
                sa.select(flow_revisions.c.document).where(
                    flow_revisions.c.flow == name, flow_revisions.c.revision == revision
                )
            ).scalar_one()
            self._documents[key] = json.loads(text)
        return self._documents[key]

    def runs(self) -> list[tuple[str, int, int]]:
        """(name, revision, run id) of every flow, in one query (no documents)."""
        with self.engine.connect() as db:
            rows = db.execute(sa.select(flows.c.name, flows.c.revision, flows.c.run_id)).all()
        return [(r.name, r.revision, r.run_id) for r in rows]

    def reports(self, run_id: int) -> list[WorkerReport]:
        """The reports of every worker a flow's run has had (those stopped included)."""
        with self.engine.connect() as db:
            rows = db.execute(sa.select(workers).where(workers.c.run_id == run_id)).mappings()
            return [as_report(r) for r in rows]

    def instances(self, flow: str | None = None) -> list[dict[str, Any]]:
        """Every placed instance (of ``flow``, or of all): its agent, the state its agent
        last reported, and its worker's own report (counts, last error)."""
        by_agent = {a.id: a for a in self.agents()}
        # by agent: while an instance moves, the agent it leaves runs it too
        reported: dict[tuple[str, str, int, str], dict[str, Any]] = {}
        for a in by_agent.values():
            for w in a.workers:
                if not w.get("retiring"):
                    reported[(w["flow"], w["processor"], w["instance"], a.id)] = w
        query = sa.select(placements).order_by(
            placements.c.flow, placements.c.processor, placements.c.instance
        )
        if flow is not None:
            query = query.where(placements.c.flow == flow)
        with self.engine.connect() as db:
            rows = db.execute(query).all()
            consumers = [
                seen["consumer"]
                for r in rows
                if (seen := reported.get((r.flow, r.processor, r.instance, r.agent_id), {})).get(
                    "consumer"
                )
            ]
            own = {
                row.id: row
                for row in db.execute(sa.select(workers).where(workers.c.id.in_(consumers)))
            }
        out = []
        for r in rows:
            agent = by_agent.get(r.agent_id) if r.agent_id else None
            seen = reported.get((r.flow, r.processor, r.instance, r.agent_id), {}) if agent else {}
            report = own.get(seen.get("consumer", ""))
            error = seen.get("error") or (
                report.last_error if report is not None and report.status == "error" else None
            )
            state = seen.get("state", "pending" if agent is None else "starting")
            out.append(
                {
                    "flow": r.flow,
                    "processor": r.processor,
                    "instance": r.instance,
                    "agent": agent.name if agent else None,
                    "agent_id": r.agent_id,
                    "host": agent.host if agent else None,
                    "leaving": by_agent[r.leaving].name if r.leaving in by_agent else None,
                    "state": "error" if error and state != "running" else state,
                    "pid": seen.get("pid"),
                    "restarts": seen.get("restarts", 0),
                    "spec": seen.get("spec"),
                    "received": report.received if report is not None else 0,
                    "emitted": report.emitted if report is not None else 0,
                    "errors": report.errors if report is not None else 0,
                    "error": error,
                }
            )
        return out

    # -- the leader (who leads; the leader's work is in ``leader``) ---------------------------
    def leader(self) -> dict[str, Any] | None:
        with self.engine.connect() as db:
            row = db.execute(sa.select(leases).where(leases.c.name == LEADER)).first()
        if row is None or row.expires < time.time():
            return None
        return {"holder": row.holder, "term": row.term, "expires": row.expires}

    # -- events ------------------------------------------------------------------------------
    def note(self, kind: str, flow: str | None, text: str, who: Who) -> None:
        """Record a change made elsewhere (users, roles, tokens, secrets) in the event log."""
        with self.engine.begin() as db:
            record_event(db, kind, flow, text, who)

    def events(
        self,
        after: int = 0,
        limit: int = 500,
        *,
        flows: Callable[[str | None], bool] | None = None,
        actor: str | None = None,
        kind: str | None = None,
        since: float | None = None,
    ) -> list[dict[str, Any]]:
        """Events after id ``after``, oldest first: those of the flows ``flows`` lets through
        (None stands for the network's own events), by ``actor``, of ``kind``, ``since``."""
        query = sa.select(events).where(events.c.id > after).order_by(events.c.id)
        if actor is not None:
            query = query.where(events.c.actor == actor)
        if kind is not None:
            query = query.where(events.c.kind == kind)
        if since is not None:
            query = query.where(events.c.time >= since)
        out: list[dict[str, Any]] = []
        with self.engine.connect() as db:
            while len(out) < limit:
                rows = db.execute(query.limit(limit)).all()
                for r in rows:
                    if flows is None or flows(r.flow):
                        out.append(_event(r))
                if len(rows) < limit:
                    break
                query = query.where(events.c.id > rows[-1].id)
        return out[:limit]


def _event(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "time": r.time,
        "kind": r.kind,
        "flow": r.flow,
        "text": r.text,
        "actor": r.actor or "system",
        "origin": r.origin or "",
    }


def record_event(
    db: sa.Connection, kind: str, flow: str | None, text: str, who: Who = SYSTEM
) -> None:
    """Add an event to the log, inside ``db``'s transaction."""
    db.execute(
        events.insert().values(
            time=time.time(),
            kind=kind,
            flow=flow,
            text=text,
            actor=who.actor,
            origin=who.origin,
        )
    )
