"""Every placed instance: its agent and host, its state, its counts and last error."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from .context import AUTH, Srv

router = APIRouter(tags=["workers"], dependencies=AUTH)


@router.get("/workers")
async def workers(srv: Srv, flow: str | None = None) -> list[dict[str, Any]]:
    """Every instance: where it runs and its state."""
    return await run_in_threadpool(srv.cluster.instances, flow)
