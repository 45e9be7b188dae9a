"""Whether a server answers, and who leads."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from .context import Srv, needs

router = APIRouter(tags=["server"])


@router.get("/health")
async def health(srv: Srv) -> dict[str, Any]:
    """Whether this server answers, and whether it leads (no credential needed)."""
    return {"status": "ok", "server": srv.settings.server_id, "leader": srv.leading}


@router.get("/status", dependencies=[needs("agent.read")])
async def status(srv: Srv) -> dict[str, Any]:
    leader = await run_in_threadpool(srv.cluster.leader)
    return {"server": srv.settings.server_id, "leading": srv.leading, "leader": leader}
