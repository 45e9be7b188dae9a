"""Flows: deploy a revision, read it (secrets masked), list revisions, roll back, start, stop,
remove."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ...redact import redact_url
from .context import AUTH, Srv
from .schemas import ApplyBody, Revision, RollbackBody

router = APIRouter(tags=["flows"], dependencies=AUTH)


@router.get("/flows")
async def list_flows(srv: Srv) -> list[dict[str, Any]]:
    infos = await run_in_threadpool(srv.cluster.flows)
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


@router.post("/flows", status_code=201)
async def apply_flow(srv: Srv, body: ApplyBody) -> dict[str, Any]:
    """Deploy a flow as its next revision (none if nothing changed)."""
    document = dict(body.document)
    broker = srv.settings.broker
    if broker and not (document.get("settings") or {}).get("broker"):
        document["settings"] = {**(document.get("settings") or {}), "broker": broker}
    revision, changed = await run_in_threadpool(srv.cluster.apply, document, body.note)
    return {"name": document.get("name"), "revision": revision, "changed": changed}


@router.get("/flows/{name}")
async def get_flow(srv: Srv, name: str, revision: Revision = None) -> dict[str, Any]:
    f = await run_in_threadpool(srv.cluster.flow, name, revision)
    return {
        "name": f.name,
        "revision": f.revision,
        "running": f.running,
        "run": f.run_id,
        "document": masked(f.document),
    }


@router.get("/flows/{name}/export")
async def export_flow(srv: Srv, name: str, revision: Revision = None) -> dict[str, Any]:
    """The flow document of a revision (the current one by default)."""
    f = await run_in_threadpool(srv.cluster.flow, name, revision)
    return masked(f.document)


@router.delete("/flows/{name}")
async def remove_flow(srv: Srv, name: str) -> dict[str, Any]:
    await run_in_threadpool(srv.cluster.remove_flow, name)
    return {"removed": name}


@router.post("/flows/{name}/start")
async def start_flow(srv: Srv, name: str) -> dict[str, Any]:
    """Start every processor of a stopped flow again."""
    await run_in_threadpool(srv.cluster.set_running, name, True)
    return {"flow": name, "running": True}


@router.post("/flows/{name}/stop")
async def stop_flow(srv: Srv, name: str) -> dict[str, Any]:
    """Stop every worker of a flow; its queues keep what they hold."""
    await run_in_threadpool(srv.cluster.set_running, name, False)
    return {"flow": name, "running": False}


@router.get("/flows/{name}/revisions")
async def revisions(srv: Srv, name: str) -> list[dict[str, Any]]:
    return await run_in_threadpool(srv.cluster.revisions, name)


@router.post("/flows/{name}/rollback")
async def rollback(srv: Srv, name: str, body: RollbackBody) -> dict[str, Any]:
    """Deploy an earlier revision again, as a new revision."""
    revision = await run_in_threadpool(srv.cluster.rollback, name, body.revision)
    return {"name": name, "revision": revision}


def masked(document: dict[str, Any]) -> dict[str, Any]:
    """A flow document with passwords in URLs masked."""
    doc: dict[str, Any] = json.loads(json.dumps(document))
    settings = doc.get("settings") or {}
    if settings.get("broker"):
        settings["broker"] = redact_url(settings["broker"])
    for c in doc.get("connections", []):
        if c.get("broker"):
            c["broker"] = redact_url(c["broker"])
    return doc
