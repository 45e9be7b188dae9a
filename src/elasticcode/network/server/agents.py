"""Agents: enrol (or register again), heartbeat, long-poll for their assignment; list and
forget them; make enrolment tokens.

An agent enrols once with an enrolment token and gets a credential of its own, which serves
only its own heartbeat and assignment. An assignment carries what the agent's workers need
and nothing more: the flows' documents, each flow's own state-store URL (see ``workerdb``),
and the values of the secrets those flows reference.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ...units import Duration
from .. import workerdb
from ..assignments import Assignments
from ..privileges import Caller
from .context import Server, Srv, bearer, needs, who
from .schemas import HeartbeatBody, RegisterBody

router = APIRouter(tags=["agents"])


class EnrolBody(BaseModel):
    expires: Duration = Field(3600.0, gt=0, le=366 * 86400, description="e.g. 1h, 30m")
    uses: int | None = Field(1, ge=1, le=100_000, description="agents it enrols (null: any)")
    name: str = Field("enrolment", max_length=200, pattern=r"^[^\x00]*$")


@router.get("/agents")
async def list_agents(
    srv: Srv, caller: Annotated[Caller, needs("agent.read")]
) -> list[dict[str, Any]]:
    out = []
    for a in await run_in_threadpool(srv.cluster.agents):
        row = asdict(a)
        row["workers"] = [w for w in a.workers if caller.may("flow.read", w.get("flow"))]
        out.append(row)
    return out


@router.post("/agents")
async def register(
    srv: Srv, request: Request, body: RegisterBody, caller: Annotated[Caller, needs("enrol")]
) -> dict[str, Any]:
    """An agent enrols (with an enrolment token: the answer holds its own credential, shown
    this once) or registers again (with that credential, under the id it had)."""
    if caller.kind == "agent":
        if body.id != caller.agent_id:
            raise HTTPException(403, "an agent registers again under its own id only")
        agent_id = body.id
        token = None
    else:
        await run_in_threadpool(srv.identities.enrol, bearer(request))
        agent_id = None
    agent_id = await run_in_threadpool(
        srv.cluster.register,
        body.name,
        body.host,
        body.cores,
        body.memory,
        body.capacity,
        body.labels,
        agent_id,
        who(request),
    )
    if caller.kind != "agent":
        minted = await run_in_threadpool(
            lambda: srv.identities.mint("agent", f"agent {body.name}", agent_id=agent_id)
        )
        token = minted.token
    settings = srv.settings
    return {
        "id": agent_id,
        "token": token,
        "heartbeat": settings.heartbeat,
        "agent_timeout": settings.agent_timeout,
    }


@router.post("/agents/enrolment-tokens", status_code=201)
async def enrolment_token(
    srv: Srv, request: Request, body: EnrolBody, caller: Annotated[Caller, needs("agent.manage")]
) -> dict[str, Any]:
    """A token that enrols agents (``uses`` of them, until it expires); shown this once."""
    minted = await run_in_threadpool(
        lambda: srv.identities.mint(
            "enrol", body.name, user_id=caller.user_id, expires=body.expires, uses=body.uses
        )
    )
    return {"id": minted.id, "token": minted.token, "expires": minted.expires, "uses": body.uses}


@router.delete("/agents/{agent_id}", dependencies=[needs("agent.manage")])
async def forget_agent(srv: Srv, request: Request, agent_id: str) -> dict[str, Any]:
    """Forget an agent and revoke its credential; its instances are placed elsewhere."""
    await run_in_threadpool(srv.cluster.forget_agent, agent_id, who(request))
    await run_in_threadpool(srv.identities.revoke_agent, agent_id)
    return {"forgotten": agent_id}


@router.post("/agents/{agent_id}/heartbeat", dependencies=[needs("agent.self")])
async def heartbeat(srv: Srv, agent_id: str, body: HeartbeatBody) -> Response:
    """An agent is alive; the answer holds its assignment when that changed."""
    generation = await run_in_threadpool(
        srv.cluster.heartbeat, agent_id, body.applied, body.workers, body.busy
    )
    if generation == body.applied:
        return JSONResponse({"generation": generation})
    return await _assignment(srv, agent_id, body.known, generation)


@router.get("/agents/{agent_id}/assignment", dependencies=[needs("agent.self")])
async def assignment(
    srv: Srv,
    agent_id: str,
    have: int = Query(-1, ge=-1, le=2**62, description="the generation the agent runs"),
    wait: float = Query(0.0, ge=0, le=60, description="seconds to wait for a change"),
    known: str = Query("", description="flow documents it has, as NAME@REVISION,..."),
) -> Response:
    """What the agent should run (its instances and the flow documents they come from);
    with ``have`` and ``wait``, answers once that changes (or after ``wait`` seconds with
    just the generation)."""
    if wait and have >= 0:
        await srv.changes.wait(agent_id, have, wait)
        if srv.changes.generations.get(agent_id) == have:
            return JSONResponse({"generation": have})
    return await _assignment(srv, agent_id, [k for k in known.split(",") if k])


async def _assignment(srv: Server, agent_id: str, known: list[str], least: int = -1) -> Response:
    read = await srv.changes.assignments(agent_id, least)
    found = await run_in_threadpool(_with_credentials, srv, read, agent_id)
    flows = found.pop("flows")
    for name in known:  # documents the agent has already
        flows.pop(name, None)
    # large: straight to JSON, no response model; each document as encoded once per read
    head = json.dumps(found, ensure_ascii=False, separators=(",", ":"))
    docs = ",".join(f"{json.dumps(name)}:{read.encoded(name)}" for name in flows)
    body = f'{head[:-1]},"flows":{{{docs}}}}}'
    return Response(body.encode(), media_type="application/json")


def _with_credentials(srv: Server, read: Assignments, agent_id: str) -> dict[str, Any]:
    """The agent's assignment, with each of its flows' state-store URL and secrets."""
    found = read.of(agent_id)
    template = srv.settings.worker_db or srv.settings.db
    needed: set[str] = set()
    state: dict[str, str] = {}
    for item in found["instances"]:
        flow = item["flow"]
        if flow not in state:
            state[flow] = workerdb.worker_url(srv.cluster.engine, template, flow)
            doc = found["flows"][f"{flow}@{item['revision']}"]
            needed |= srv.cluster.secret_names(flow, item["revision"], doc)
    found["state"] = state
    key = frozenset(needed)
    if key not in read.secrets:  # agents of the same flows need the same: read once per read
        read.secrets[key] = srv.vault.values(needed)
    found["secrets"] = dict(read.secrets[key])
    return found
