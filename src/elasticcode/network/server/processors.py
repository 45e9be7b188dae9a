"""The processors of a deployed flow: list (code, commit, where each instance runs), add,
change, remove, scale, pause, resume, restart. Every change but pause, resume and restart is
a new revision; only the instances whose spec changed are replaced."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ...errors import FlowError, NotFound
from ...redact import redact_url
from ..cluster import Cluster
from ..privileges import Caller
from .context import Srv, needs, who
from .flows import deploy
from .schemas import ScaleBody

router = APIRouter(tags=["processors"])
Deployer = Annotated[Caller, needs("flow.deploy")]


@router.get("/flows/{name}/processors", dependencies=[needs("flow.read")])
async def processors(srv: Srv, name: str) -> list[dict[str, Any]]:
    return await run_in_threadpool(_processors, srv.cluster, name)


@router.post("/flows/{name}/processors")
async def add_processor(
    srv: Srv, request: Request, name: str, body: dict[str, Any], caller: Deployer
) -> dict[str, Any]:
    """Add a processor (a new revision); wire it with connections."""
    doc = (await run_in_threadpool(srv.cluster.flow, name)).document
    doc["processors"] = [*doc.get("processors", []), body]
    revision, _ = await deploy(srv, request, caller, doc, f"processor {body.get('name')} added")
    return {"name": name, "revision": revision}


@router.patch("/flows/{name}/processors/{processor}")
async def update_processor(
    srv: Srv, request: Request, name: str, processor: str, body: dict[str, Any], caller: Deployer
) -> dict[str, Any]:
    """Change some of a processor's settings (a new revision; its workers are replaced,
    new ones first, when what they run changed)."""
    doc = (await run_in_threadpool(srv.cluster.flow, name)).document
    for p in doc.get("processors", []):
        if p.get("name") == processor:
            p.update(body)
            break
    else:
        raise NotFound(f"flow {name!r} has no processor {processor!r}")
    what = ", ".join(f"{k}={v}" for k, v in body.items())
    revision, _ = await deploy(srv, request, caller, doc, f"processor {processor}: {what}")
    return {"name": name, "revision": revision}


@router.delete("/flows/{name}/processors/{processor}")
async def remove_processor(
    srv: Srv, request: Request, name: str, processor: str, caller: Deployer
) -> dict[str, Any]:
    """Remove a processor and its connections (a new revision)."""
    doc = (await run_in_threadpool(srv.cluster.flow, name)).document
    procs = doc.get("processors", [])
    if not any(p.get("name") == processor for p in procs):
        raise NotFound(f"flow {name!r} has no processor {processor!r}")
    doc["processors"] = [p for p in procs if p.get("name") != processor]
    doc["connections"] = [
        c
        for c in doc.get("connections", [])
        if processor not in (c["from"].split(".")[0], c["to"].split(".")[0])
    ]
    revision, _ = await deploy(srv, request, caller, doc, f"processor {processor} removed")
    return {"name": name, "revision": revision}


@router.post("/flows/{name}/processors/{processor}/scale", dependencies=[needs("flow.operate")])
async def scale(
    srv: Srv, request: Request, name: str, processor: str, body: ScaleBody
) -> dict[str, Any]:
    """Set a processor's instance count (a new revision). A processor that scales is held
    at the count instead, until released (``"release"``); no new revision."""
    info = await run_in_threadpool(srv.cluster.flow, name)
    spec = srv.cluster.parsed(name, info.revision, info.document).get(processor)
    if spec.scale is not None or body.instances == "release":
        count = body.instances if isinstance(body.instances, int) else None
        if body.instances == "auto":
            raise FlowError(f"processor {processor!r} scales: give a number, or release")
        await run_in_threadpool(srv.cluster.pin, name, processor, count, who(request))
        return {"name": name, "revision": info.revision, "pinned": count}
    changes = {"instances": body.instances}
    revision = await run_in_threadpool(
        srv.cluster.update_processor, name, processor, changes, who(request)
    )
    return {"name": name, "revision": revision}


@router.post("/flows/{name}/processors/{processor}/{action}", dependencies=[needs("flow.operate")])
async def processor_action(
    srv: Srv,
    request: Request,
    name: str,
    processor: str,
    action: Literal["pause", "resume", "restart"],
) -> dict[str, Any]:
    """Pause (its workers stop; its queue keeps filling), resume, or restart (every
    instance replaced, new ones first)."""
    await run_in_threadpool(srv.cluster.control, name, processor, action, who(request))
    return {"flow": name, "processor": processor, "done": action}


def _processors(cl: Cluster, name: str) -> list[dict[str, Any]]:
    info = cl.flow(name)
    flow = cl.parsed(info.name, info.revision, info.document)
    controls = cl.controls()
    placed = cl.instances(name)
    counts = cl.scaled(name)
    out = []
    for p in flow.processors:
        paused, restarts = controls.get((name, p.name), (False, 0))
        mine = [w for w in placed if w["processor"] == p.name]
        scaled, pinned = counts.get(p.name, (None, None))
        out.append(
            {
                "name": p.name,
                "instances": p.instances,
                "scale": None if p.scale is None else p.scale.model_dump(mode="json"),
                "scaled": scaled,
                "pinned": pinned,
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
        git = dict(p["git"])
        git["repo"] = redact_url(git["repo"])
        code["git"] = git
    return code
