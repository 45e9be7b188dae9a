"""Flows: deploy a revision, read it (secrets masked), list revisions, roll back, start, stop,
remove. Each route checks the caller's privilege on the flow it names."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from ...errors import NotFound
from ...redact import redact_url
from ..policy import code_changes, no_secrets_in_clear
from ..privileges import Caller
from .context import Server, Srv, allow, needs, who
from .schemas import ApplyBody, Revision, RollbackBody

router = APIRouter(tags=["flows"])


@router.get("/flows")
async def list_flows(srv: Srv, caller: Annotated[Caller, needs("user")]) -> list[dict[str, Any]]:
    """The flows the caller may see."""
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
        if caller.may("flow.read", f.name)
    ]


@router.post("/flows", status_code=201)
async def apply_flow(
    srv: Srv, request: Request, body: ApplyBody, caller: Annotated[Caller, needs("user")]
) -> dict[str, Any]:
    """Deploy a flow as its next revision (none if nothing changed). Needs ``flow.deploy``
    on the flow, and ``code.deploy`` where the revision brings processors' code."""
    document = dict(body.document)
    broker = srv.settings.broker
    if broker and not (document.get("settings") or {}).get("broker"):
        document["settings"] = {**(document.get("settings") or {}), "broker": broker}
    revision, changed = await deploy(srv, request, caller, document, body.note)
    return {"name": document.get("name"), "revision": revision, "changed": changed}


async def deploy(
    srv: Server, request: Request, caller: Caller, document: dict[str, Any], note: str
) -> tuple[int, bool]:
    """Apply ``document`` as the caller: privileges checked, no secret in the clear."""
    name = document.get("name")
    allow(caller, "flow.deploy", name if isinstance(name, str) else None)
    no_secrets_in_clear(document)
    try:
        current = (await run_in_threadpool(srv.cluster.flow, str(name))).document
    except NotFound:
        current = None
    code = code_changes(current, document)
    if code and not caller.may("code.deploy", str(name)):
        raise_code(caller, str(name), code)
    return await run_in_threadpool(srv.cluster.apply, document, note, who(request))


def raise_code(caller: Caller, flow: str, processors: list[str]) -> None:
    raise HTTPException(
        403,
        f"{caller.who} may not code.deploy on flow {flow!r}: the revision brings code "
        f"for {', '.join(processors)}",
    )


@router.get("/flows/{name}", dependencies=[needs("flow.read")])
async def get_flow(srv: Srv, name: str, revision: Revision = None) -> dict[str, Any]:
    f = await run_in_threadpool(srv.cluster.flow, name, revision)
    return {
        "name": f.name,
        "revision": f.revision,
        "running": f.running,
        "run": f.run_id,
        "document": masked(f.document),
    }


@router.get("/flows/{name}/export", dependencies=[needs("flow.read")])
async def export_flow(srv: Srv, name: str, revision: Revision = None) -> dict[str, Any]:
    """The flow document of a revision (the current one by default)."""
    f = await run_in_threadpool(srv.cluster.flow, name, revision)
    return masked(f.document)


@router.delete("/flows/{name}", dependencies=[needs("flow.remove")])
async def remove_flow(srv: Srv, request: Request, name: str) -> dict[str, Any]:
    await run_in_threadpool(srv.cluster.remove_flow, name, who(request))
    return {"removed": name}


@router.post("/flows/{name}/start", dependencies=[needs("flow.operate")])
async def start_flow(srv: Srv, request: Request, name: str) -> dict[str, Any]:
    """Start every processor of a stopped flow again."""
    await run_in_threadpool(srv.cluster.set_running, name, True, who(request))
    return {"flow": name, "running": True}


@router.post("/flows/{name}/stop", dependencies=[needs("flow.operate")])
async def stop_flow(srv: Srv, request: Request, name: str) -> dict[str, Any]:
    """Stop every worker of a flow; its queues keep what they hold."""
    await run_in_threadpool(srv.cluster.set_running, name, False, who(request))
    return {"flow": name, "running": False}


@router.get("/flows/{name}/revisions", dependencies=[needs("flow.read")])
async def revisions(srv: Srv, name: str) -> list[dict[str, Any]]:
    return await run_in_threadpool(srv.cluster.revisions, name)


@router.post("/flows/{name}/rollback")
async def rollback(
    srv: Srv,
    request: Request,
    name: str,
    body: RollbackBody,
    caller: Annotated[Caller, needs("flow.deploy")],
) -> dict[str, Any]:
    """Deploy an earlier revision again, as a new revision."""
    old = await run_in_threadpool(srv.cluster.flow, name, body.revision)
    note = f"rollback to revision {body.revision}"
    revision, _ = await deploy(srv, request, caller, old.document, note)
    return {"name": name, "revision": revision}


def masked(document: dict[str, Any]) -> dict[str, Any]:
    """A flow document with any credential in a URL masked (deployed documents hold none,
    but those of earlier versions may)."""
    doc: dict[str, Any] = json.loads(json.dumps(document))
    settings = doc.get("settings") or {}
    if settings.get("broker"):
        settings["broker"] = redact_url(settings["broker"])
    for c in doc.get("connections", []):
        if c.get("broker"):
            c["broker"] = redact_url(c["broker"])
    for p in doc.get("processors", []):
        if isinstance(p.get("git"), dict) and p["git"].get("repo"):
            p["git"]["repo"] = redact_url(p["git"]["repo"])
    return doc
