"""The connections of a deployed flow: list, add, remove (each change a new revision)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from ...errors import NotFound
from ...redact import redact_url
from ..privileges import Caller
from .context import Srv, needs
from .flows import deploy
from .schemas import ConnectionBody

router = APIRouter(tags=["connections"])
Deployer = Annotated[Caller, needs("flow.deploy")]


@router.get("/flows/{name}/connections", dependencies=[needs("flow.read")])
async def connections(srv: Srv, name: str) -> list[dict[str, Any]]:
    found = (await run_in_threadpool(srv.cluster.flow, name)).document.get("connections", [])
    return [{**c, "broker": redact_url(c["broker"])} if c.get("broker") else c for c in found]


@router.post("/flows/{name}/connections")
async def add_connection(
    srv: Srv, request: Request, name: str, body: ConnectionBody, caller: Deployer
) -> dict[str, Any]:
    doc = (await run_in_threadpool(srv.cluster.flow, name)).document
    doc["connections"] = [*doc.get("connections", []), body.model_dump(by_alias=True)]
    note = f"connection {body.source} -> {body.target} added"
    revision, _ = await deploy(srv, request, caller, doc, note)
    return {"name": name, "revision": revision}


@router.delete("/flows/{name}/connections")
async def remove_connection(
    srv: Srv,
    request: Request,
    caller: Deployer,
    name: str,
    source: str = Query(alias="from"),
    target: str = Query(alias="to"),
) -> dict[str, Any]:
    doc = (await run_in_threadpool(srv.cluster.flow, name)).document
    kept = [
        c for c in doc.get("connections", []) if (c.get("from"), c.get("to")) != (source, target)
    ]
    if len(kept) == len(doc.get("connections", [])):
        raise NotFound(f"flow {name!r} has no connection from {source} to {target}")
    doc["connections"] = kept
    note = f"connection {source} -> {target} removed"
    revision, _ = await deploy(srv, request, caller, doc, note)
    return {"name": name, "revision": revision}
