"""Every placed instance: its agent and host, its state, its counts and last error."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ..privileges import Caller
from .context import Srv, needs

router = APIRouter(tags=["workers"])


@router.get("/workers")
async def workers(
    srv: Srv, caller: Annotated[Caller, needs("user")], flow: str | None = None
) -> list[dict[str, Any]]:
    """Every instance of the flows the caller may see: where it runs and its state."""
    rows = await run_in_threadpool(srv.cluster.instances, flow)
    return [r for r in rows if caller.may("flow.read", r["flow"])]
