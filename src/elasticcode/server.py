"""The server: the control plane's REST and websocket API, and the leader's loop.

``elasticcode server start --db URL`` runs one. Servers keep nothing of their own: the state
store holds the desired state (flows and their revisions), the agents and the placements, so
several servers can answer at once. One of them leads, through a lease row in the database:
the leader marks silent agents lost and places instances; the others take over when its lease
runs out. No message passes through a server.

The API is described by OpenAPI at ``/openapi.json`` (browsable at ``/docs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from .cluster import Cluster, NotFound
from .errors import ElasticCodeError, StateUnreachable

log = logging.getLogger("elasticcode.server")

API = "/api/v1"


@dataclass
class ServerSettings:
    db: str
    #: The broker of flows that name none.
    broker: str | None = None
    #: The state store URL given to agents (and their workers); default: ``db``.
    worker_db: str | None = None
    token: str | None = None
    agent_timeout: float = 10.0
    lease: float = 5.0
    tick: float = 0.5
    heartbeat: float = 2.0
    server_id: str = ""


#: A name or id: text without NUL characters (which no database stores).
Text = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
Revision = Annotated[int | None, Query(ge=1, le=2**31 - 1)]


# -- request bodies ------------------------------------------------------------------------
class ApplyBody(BaseModel):
    document: dict[str, Any] = Field(description="the flow, as in a flow file")
    note: str = ""


class RegisterBody(BaseModel):
    id: Text | None = Field(None, description="the id the agent had, to register again")
    name: Text
    host: Text
    cores: int = Field(ge=1, le=1_000_000)
    memory: int = Field(ge=0, le=2**62)
    capacity: int = Field(ge=0, le=1_000_000, description="how many workers it may run")
    labels: dict[str, str] = {}


class HeartbeatBody(BaseModel):
    applied: int = Field(0, ge=-1, le=2**62, description="the assignment generation it runs")
    workers: list[dict[str, Any]] = []
    known: list[str] = Field([], description="flow documents it has, as NAME@REVISION")


class ScaleBody(BaseModel):
    instances: Annotated[int, Field(ge=1, le=100_000)] | Literal["auto"]


class RollbackBody(BaseModel):
    revision: int = Field(ge=1, le=2**31 - 1)


class ConnectionBody(BaseModel):
    model_config = {"populate_by_name": True, "extra": "allow"}
    source: str = Field(alias="from")
    target: str = Field(alias="to")


class _Changes:
    """Waiters for a change of some agent's assignment, woken by one poll of the database."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.generations: dict[str, int] = {}
        self.changed = asyncio.Event()

    async def watch(self, every: float = 0.1) -> None:
        while True:
            try:
                now = await run_in_threadpool(self.cluster.generations)
                if now != self.generations:
                    self.generations = now
                    self.changed.set()
                    self.changed = asyncio.Event()
            except Exception as exc:  # the database may be away; say so and go on
                log.warning("cannot read assignments: %s", exc)
                await asyncio.sleep(1.0)
            await asyncio.sleep(every)

    async def wait(self, agent_id: str, have: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.generations.get(agent_id) == have:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


def create_app(settings: ServerSettings, cluster: Cluster | None = None) -> FastAPI:
    """The API app; with its lifespan, the leader loop and the event stream run too."""
    settings.server_id = settings.server_id or f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
    cl = cluster or Cluster(settings.db, settings.agent_timeout)
    changes = _Changes(cl)
    subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
    leading = {"now": False}
    said: set[str] = set()

    async def lead() -> None:
        backoff = 1.0
        while True:
            try:
                notes = await run_in_threadpool(cl.lead, settings.server_id, settings.lease)
                if (notes is not None) != leading["now"]:
                    leading["now"] = notes is not None
                    log.info("%s", "leading" if notes is not None else "following the leader")
                for n in notes or []:
                    if n not in said:  # a standing condition is said once, not every round
                        log.info("%s", n)
                said.clear()
                said.update(notes or [])
                backoff = 1.0
            except Exception as exc:
                leading["now"] = False
                log.warning("cannot reach the state store (%s); retrying in %.0fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            await asyncio.sleep(settings.tick)

    async def stream() -> None:
        after = await run_in_threadpool(_last_event_id, cl)
        while True:
            try:
                for e in await run_in_threadpool(cl.events, after):
                    after = e["id"]
                    for q in list(subscribers):
                        with contextlib.suppress(asyncio.QueueFull):
                            q.put_nowait({"type": "event", **e})
            except Exception as exc:
                log.warning("cannot read events: %s", exc)
                await asyncio.sleep(1.0)
            await asyncio.sleep(0.25)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(t) for t in (lead(), changes.watch(), stream())]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await run_in_threadpool(cl.release_lease, settings.server_id)

    app = FastAPI(
        title="ElasticCode",
        version="1",
        description="The control plane of an ElasticCode network: flows, processors, "
        "agents and workers.",
        lifespan=lifespan,
    )

    def authorized(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given, f"Bearer {settings.token}"):
            raise HTTPException(401, "missing or wrong API token: send Authorization: Bearer TOKEN")

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(sa.exc.DataError)
    async def bad_value(_: Request, exc: sa.exc.DataError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"a value the state store cannot hold: {str(exc.orig).splitlines()[0]}"},
            status_code=422,
        )

    @app.exception_handler(sa.exc.OperationalError)
    async def no_database(_: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        return JSONResponse(
            {"detail": "the state store does not answer; the server retries, try again soon"},
            status_code=503,
        )

    @app.exception_handler(ElasticCodeError)
    async def bad(_: Request, exc: ElasticCodeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    auth = [Depends(authorized)]

    @app.get(f"{API}/health", tags=["server"])
    async def health() -> dict[str, Any]:
        """Whether this server answers, and whether it leads."""
        return {"status": "ok", "server": settings.server_id, "leader": leading["now"]}

    @app.get(f"{API}/status", tags=["server"], dependencies=auth)
    async def status() -> dict[str, Any]:
        leader = await run_in_threadpool(cl.leader)
        return {"server": settings.server_id, "leading": leading["now"], "leader": leader}

    # -- flows -------------------------------------------------------------------------------
    @app.get(f"{API}/flows", tags=["flows"], dependencies=auth)
    async def list_flows() -> list[dict[str, Any]]:
        infos = await run_in_threadpool(cl.flows)
        return [
            {
                "name": f.name,
                "revision": f.revision,
                "running": f.running,
                "updated": f.updated,
                "processors": len(f.document.get("processors", [])),
            }
            for f in infos
        ]

    @app.post(f"{API}/flows", tags=["flows"], dependencies=auth, status_code=201)
    async def apply_flow(body: ApplyBody) -> dict[str, Any]:
        """Deploy a flow as its next revision (none if nothing changed)."""
        document = dict(body.document)
        if settings.broker and not (document.get("settings") or {}).get("broker"):
            document["settings"] = {**(document.get("settings") or {}), "broker": settings.broker}
        revision, changed = await run_in_threadpool(cl.apply, document, body.note)
        return {"name": document.get("name"), "revision": revision, "changed": changed}

    @app.get(f"{API}/flows/{{name}}", tags=["flows"], dependencies=auth)
    async def get_flow(name: str, revision: Revision = None) -> dict[str, Any]:
        f = await run_in_threadpool(cl.flow, name, revision)
        return {
            "name": f.name,
            "revision": f.revision,
            "running": f.running,
            "run": f.run_id,
            "document": _masked(f.document),
        }

    @app.get(f"{API}/flows/{{name}}/export", tags=["flows"], dependencies=auth)
    async def export_flow(name: str, revision: Revision = None) -> dict[str, Any]:
        """The flow document of a revision (the current one by default)."""
        f = await run_in_threadpool(cl.flow, name, revision)
        return _masked(f.document)

    @app.delete(f"{API}/flows/{{name}}", tags=["flows"], dependencies=auth)
    async def remove_flow(name: str) -> dict[str, Any]:
        await run_in_threadpool(cl.remove_flow, name)
        return {"removed": name}

    @app.post(f"{API}/flows/{{name}}/start", tags=["flows"], dependencies=auth)
    async def start_flow(name: str) -> dict[str, Any]:
        """Start every processor of a stopped flow again."""
        await run_in_threadpool(cl.set_running, name, True)
        return {"flow": name, "running": True}

    @app.post(f"{API}/flows/{{name}}/stop", tags=["flows"], dependencies=auth)
    async def stop_flow(name: str) -> dict[str, Any]:
        """Stop every worker of a flow; its queues keep what they hold."""
        await run_in_threadpool(cl.set_running, name, False)
        return {"flow": name, "running": False}

    @app.get(f"{API}/flows/{{name}}/revisions", tags=["flows"], dependencies=auth)
    async def revisions(name: str) -> list[dict[str, Any]]:
        return await run_in_threadpool(cl.revisions, name)

    @app.post(f"{API}/flows/{{name}}/rollback", tags=["flows"], dependencies=auth)
    async def rollback(name: str, body: RollbackBody) -> dict[str, Any]:
        """Deploy an earlier revision again, as a new revision."""
        revision = await run_in_threadpool(cl.rollback, name, body.revision)
        return {"name": name, "revision": revision}

    # -- processors and connections -----------------------------------------------------------
    @app.get(f"{API}/flows/{{name}}/processors", tags=["processors"], dependencies=auth)
    async def processors(name: str) -> list[dict[str, Any]]:
        return await run_in_threadpool(_processors, cl, name)

    @app.post(f"{API}/flows/{{name}}/processors", tags=["processors"], dependencies=auth)
    async def add_processor(name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Add a processor (a new revision); wire it with connections."""
        doc = (await run_in_threadpool(cl.flow, name)).document
        doc["processors"] = [*doc.get("processors", []), body]
        revision, _ = await run_in_threadpool(cl.apply, doc, f"processor {body.get('name')} added")
        return {"name": name, "revision": revision}

    @app.patch(
        f"{API}/flows/{{name}}/processors/{{processor}}", tags=["processors"], dependencies=auth
    )
    async def update_processor(name: str, processor: str, body: dict[str, Any]) -> dict[str, Any]:
        """Change some of a processor's settings (a new revision; its workers are replaced,
        new ones first, when what they run changed)."""
        revision = await run_in_threadpool(cl.update_processor, name, processor, body)
        return {"name": name, "revision": revision}

    @app.delete(
        f"{API}/flows/{{name}}/processors/{{processor}}", tags=["processors"], dependencies=auth
    )
    async def remove_processor(name: str, processor: str) -> dict[str, Any]:
        """Remove a processor and its connections (a new revision)."""
        revision = await run_in_threadpool(_remove_processor, cl, name, processor)
        return {"name": name, "revision": revision}

    @app.post(
        f"{API}/flows/{{name}}/processors/{{processor}}/scale",
        tags=["processors"],
        dependencies=auth,
    )
    async def scale(name: str, processor: str, body: ScaleBody) -> dict[str, Any]:
        revision = await run_in_threadpool(
            cl.update_processor, name, processor, {"instances": body.instances}
        )
        return {"name": name, "revision": revision}

    @app.post(
        f"{API}/flows/{{name}}/processors/{{processor}}/{{action}}",
        tags=["processors"],
        dependencies=auth,
    )
    async def processor_action(
        name: str, processor: str, action: Literal["pause", "resume", "restart"]
    ) -> dict[str, Any]:
        """Pause (its workers stop; its queue keeps filling), resume, or restart (every
        instance replaced, new ones first)."""
        await run_in_threadpool(cl.control, name, processor, action)
        return {"flow": name, "processor": processor, "done": action}

    @app.get(f"{API}/flows/{{name}}/connections", tags=["connections"], dependencies=auth)
    async def connections(name: str) -> list[dict[str, Any]]:
        return list((await run_in_threadpool(cl.flow, name)).document.get("connections", []))

    @app.post(f"{API}/flows/{{name}}/connections", tags=["connections"], dependencies=auth)
    async def add_connection(name: str, body: ConnectionBody) -> dict[str, Any]:
        doc = (await run_in_threadpool(cl.flow, name)).document
        conn = body.model_dump(by_alias=True)
        doc["connections"] = [*doc.get("connections", []), conn]
        revision, _ = await run_in_threadpool(
            cl.apply, doc, f"connection {body.source} -> {body.target} added"
        )
        return {"name": name, "revision": revision}

    @app.delete(f"{API}/flows/{{name}}/connections", tags=["connections"], dependencies=auth)
    async def remove_connection(
        name: str, source: str = Query(alias="from"), target: str = Query(alias="to")
    ) -> dict[str, Any]:
        doc = (await run_in_threadpool(cl.flow, name)).document
        kept = [
            c
            for c in doc.get("connections", [])
            if (c.get("from"), c.get("to")) != (source, target)
        ]
        if len(kept) == len(doc.get("connections", [])):
            raise NotFound(f"flow {name!r} has no connection from {source} to {target}")
        doc["connections"] = kept
        revision, _ = await run_in_threadpool(
            cl.apply, doc, f"connection {source} -> {target} removed"
        )
        return {"name": name, "revision": revision}

    # -- agents and workers ----------------------------------------------------------------------
    @app.get(f"{API}/agents", tags=["agents"], dependencies=auth)
    async def list_agents() -> list[dict[str, Any]]:
        return [asdict(a) for a in await run_in_threadpool(cl.agents)]

    @app.post(f"{API}/agents", tags=["agents"], dependencies=auth)
    async def register(body: RegisterBody) -> dict[str, Any]:
        """An agent registers (again); the answer says what it needs to run workers."""
        agent_id = await run_in_threadpool(
            cl.register,
            body.name,
            body.host,
            body.cores,
            body.memory,
            body.capacity,
            body.labels,
            body.id,
        )
        return {
            "id": agent_id,
            "state": settings.worker_db or settings.db,
            "heartbeat": settings.heartbeat,
            "agent_timeout": settings.agent_timeout,
        }

    @app.delete(f"{API}/agents/{{agent_id}}", tags=["agents"], dependencies=auth)
    async def forget_agent(agent_id: str) -> dict[str, Any]:
        """Forget an agent; its instances are placed elsewhere."""
        await run_in_threadpool(cl.forget_agent, agent_id)
        return {"forgotten": agent_id}

    @app.post(f"{API}/agents/{{agent_id}}/heartbeat", tags=["agents"], dependencies=auth)
    async def heartbeat(agent_id: str, body: HeartbeatBody) -> Response:
        """An agent is alive; the answer holds its assignment when that changed."""
        generation = await run_in_threadpool(cl.heartbeat, agent_id, body.applied, body.workers)
        if generation == body.applied:
            return JSONResponse({"generation": generation})
        return await _assignment(agent_id, body.known)

    async def _assignment(agent_id: str, known: list[str]) -> Response:
        found = await run_in_threadpool(cl.assignment, agent_id)
        for name in known:  # documents the agent has already
            found["flows"].pop(name, None)
        return JSONResponse(found)  # large: straight to JSON, no response model

    @app.get(f"{API}/agents/{{agent_id}}/assignment", tags=["agents"], dependencies=auth)
    async def assignment(
        agent_id: str,
        have: int = Query(-1, ge=-1, le=2**62, description="the generation the agent runs"),
        wait: float = Query(0.0, ge=0, le=60, description="seconds to wait for a change"),
        known: str = Query("", description="flow documents it has, as NAME@REVISION,..."),
    ) -> Response:
        """What the agent should run (its instances and the flow documents they come from);
        with ``have`` and ``wait``, answers once that changes (or after ``wait`` seconds with
        just the generation)."""
        if wait and have >= 0:
            await changes.wait(agent_id, have, wait)
            if changes.generations.get(agent_id) == have:
                return JSONResponse({"generation": have})
        return await _assignment(agent_id, [k for k in known.split(",") if k])

    @app.get(f"{API}/workers", tags=["workers"], dependencies=auth)
    async def workers(flow: str | None = None) -> list[dict[str, Any]]:
        """Every instance: where it runs and its state."""
        return await run_in_threadpool(cl.instances, flow)

    @app.get(f"{API}/events", tags=["server"], dependencies=auth)
    async def list_events(
        after: int = Query(0, ge=0, le=2**31 - 1), limit: int = Query(500, ge=1, le=5000)
    ) -> list[dict[str, Any]]:
        return await run_in_threadpool(cl.events, after, limit)

    @app.websocket(f"{API}/stream")
    async def event_stream(ws: WebSocket) -> None:
        """Events as they happen (revisions, placements, agents, the leader), one JSON
        object per message. With a token, pass it as ``?token=``."""
        if settings.token is not None and not secrets.compare_digest(
            ws.query_params.get("token", ""), settings.token
        ):
            await ws.close(code=4401, reason="missing or wrong API token")
            return
        await ws.accept()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        subscribers.add(queue)
        try:
            await ws.send_json({"type": "hello", "server": settings.server_id})
            while True:
                await ws.send_json(await queue.get())
        except WebSocketDisconnect:
            pass
        finally:
            subscribers.discard(queue)

    return app


def _last_event_id(cl: Cluster) -> int:
    last = 0
    while batch := cl.events(last, 5000):
        last = batch[-1]["id"]
    return last


def _processors(cl: Cluster, name: str) -> list[dict[str, Any]]:
    info = cl.flow(name)
    flow = cl.parsed(info.name, info.revision, info.document)
    controls = cl.controls()
    placed = cl.instances(name)
    out = []
    for p in flow.processors:
        paused, restarts = controls.get((name, p.name), (False, 0))
        mine = [w for w in placed if w["processor"] == p.name]
        out.append(
            {
                "name": p.name,
                "instances": p.instances,
                "labels": p.labels,
                "paused": paused,
                "restarts": restarts,
                "code": _code_of(p.model_dump(mode="json", exclude_none=True)),
                "placed": mine,
            }
        )
    return out


def _code_of(p: dict[str, Any]) -> dict[str, Any]:
    code: dict[str, Any] = {k: p[k] for k in ("code", "command") if k in p}
    if "inline" in p:
        code["inline"] = True
    if "git" in p:
        from .gitcode import shown

        git = dict(p["git"])
        git["repo"] = shown(git["repo"])
        code["git"] = git
    return code


def _remove_processor(cl: Cluster, name: str, processor: str) -> int:
    doc = cl.flow(name).document
    procs = doc.get("processors", [])
    if not any(p.get("name") == processor for p in procs):
        raise NotFound(f"flow {name!r} has no processor {processor!r}")
    doc["processors"] = [p for p in procs if p.get("name") != processor]
    doc["connections"] = [
        c
        for c in doc.get("connections", [])
        if processor not in (c["from"].split(".")[0], c["to"].split(".")[0])
    ]
    revision, _ = cl.apply(doc, f"processor {processor} removed")
    return revision


def _masked(document: dict[str, Any]) -> dict[str, Any]:
    """A flow document with passwords in URLs masked."""
    from .gitcode import shown as safe_url

    doc: dict[str, Any] = json.loads(json.dumps(document))
    settings = doc.get("settings") or {}
    if settings.get("broker"):
        settings["broker"] = safe_url(settings["broker"])
    for c in doc.get("connections", []):
        if c.get("broker"):
            c["broker"] = safe_url(c["broker"])
    return doc


def serve(settings: ServerSettings, host: str = "127.0.0.1", port: int = 8750) -> None:
    """Run a server until interrupted."""
    import uvicorn

    logging.basicConfig(
        level=os.environ.get("ELASTICCODE_LOG", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    delay = 0.5
    while True:  # a database that is not up yet is waited for, not a crash
        try:
            cluster = Cluster(settings.db, settings.agent_timeout)
            break
        except StateUnreachable as exc:
            log.warning("waiting for the state store: %s; retrying in %.0fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
    app = create_app(settings, cluster)
    log.info("server %s on http://%s:%d (API docs at /docs)", settings.server_id, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning", ws="websockets-sansio")
