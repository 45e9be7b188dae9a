"""Agents: register, heartbeat, long-poll for their assignment; list and forget them."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .context import AUTH, Server, Srv
from .schemas import HeartbeatBody, RegisterBody

router = APIRouter(tags=["agents"], dependencies=AUTH)


@router.get("/agents")
async def list_agents(srv: Srv) -> list[dict[str, Any]]:
    return [asdict(a) for a in await run_in_threadpool(srv.cluster.agents)]


@router.post("/agents")
async def register(srv: Srv, body: RegisterBody) -> dict[str, Any]:
    """An agent registers (again); the answer says what it needs to run workers."""
    agent_id = await run_in_threadpool(
        srv.cluster.register,
        body.name,
        body.host,
        body.cores,
        body.memory,
        body.capacity,
        body.labels,
        body.id,
    )
    settings = srv.settings
    return {
        "id": agent_id,
        "state": settings.worker_db or settings.db,
        "heartbeat": settings.heartbeat,
        "agent_timeout": settings.agent_timeout,
    }


@router.delete("/agents/{agent_id}")
async def forget_agent(srv: Srv, agent_id: str) -> dict[str, Any]:
    """Forget an agent; its instances are placed elsewhere."""
    await run_in_threadpool(srv.cluster.forget_agent, agent_id)
    return {"forgotten": agent_id}


@router.post("/agents/{agent_id}/heartbeat")
async def heartbeat(srv: Srv, agent_id: str, body: HeartbeatBody) -> Response:
    """An agent is alive; the answer holds its assignment when that changed."""
    generation = await run_in_threadpool(
        srv.cluster.heartbeat, agent_id, body.applied, body.workers
    )
    if generation == body.applied:
        return JSONResponse({"generation": generation})
    return await _assignment(srv, agent_id, body.known)


@router.get("/agents/{agent_id}/assignment")
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


async def _assignment(srv: Server, agent_id: str, known: list[str]) -> Response:
    found = await run_in_threadpool(srv.cluster.assignment, agent_id)
    for name in known:  # documents the agent has already
        found["flows"].pop(name, None)
    return JSONResponse(found)  # large: straight to JSON, no response model
