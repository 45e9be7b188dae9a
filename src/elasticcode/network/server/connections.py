"""The connections of a deployed flow: list, add, remove (each change a new revision)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from ..cluster import NotFound
from .context import AUTH, Srv
from .schemas import ConnectionBody

router = APIRouter(tags=["connections"], dependencies=AUTH)


@router.get("/flows/{name}/connections")
async def connections(srv: Srv, name: str) -> list[dict[str, Any]]:
    return list((await run_in_threadpool(srv.cluster.flow, name)).document.get("connections", []))


@router.post("/flows/{name}/connections")
async def add_connection(srv: Srv, name: str, body: ConnectionBody) -> dict[str, Any]:
    doc = (await run_in_threadpool(srv.cluster.flow, name)).document
    doc["connections"] = [*doc.get("connections", []), body.model_dump(by_alias=True)]
    note = f"connection {body.source} -> {body.target} added"
    revision, _ = await run_in_threadpool(srv.cluster.apply, doc, note)
    return {"name": name, "revision": revision}


@router.delete("/flows/{name}/connections")
async def remove_connection(
    srv: Srv, name: str, source: str = Query(alias="from"), target: str = Query(alias="to")
) -> dict[str, Any]:
    doc = (await run_in_threadpool(srv.cluster.flow, name)).document
    kept = [
        c for c in doc.get("connections", []) if (c.get("from"), c.get("to")) != (source, target)
    ]
    if len(kept) == len(doc.get("connections", [])):
        raise NotFound(f"flow {name!r} has no connection from {source} to {target}")
    doc["connections"] = kept
    note = f"connection {source} -> {target} removed"
    revision, _ = await run_in_threadpool(srv.cluster.apply, doc, note)
    return {"name": name, "revision": revision}
