"""The event log: revisions, placements, agents lost and back, leader changes, and every change
a user made; listed, streamed over a websocket as they happen, and read as the audit log.

A caller sees the events of the flows it may read, and the network's own (agents, the
leader) if it may see the agents; the audit log (``audit.read``) shows all, with filters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from ..privileges import Caller
from .context import Server, Srv, needs, websocket_user, while_credential_holds

router = APIRouter(tags=["server"])
#: Subscribers one server takes; more are refused until some leave.
MAX_SUBSCRIBERS = 1000
#: What each websocket of this router needs (it checks that itself).
WEBSOCKETS = {"/stream": "user"}


def visible(caller: Caller) -> Callable[[str | None], bool]:
    """Which events (by their flow; None: the network's own) ``caller`` may see."""

    def allowed(flow: str | None) -> bool:
        return caller.may("agent.read") if flow is None else caller.may("flow.read", flow)

    return allowed


@router.get("/events")
async def list_events(
    srv: Srv,
    caller: Annotated[Caller, needs("user")],
    after: int = Query(0, ge=0, le=2**31 - 1),
    limit: int = Query(500, ge=1, le=5000),
) -> list[dict[str, Any]]:
    return await run_in_threadpool(lambda: srv.cluster.events(after, limit, flows=visible(caller)))


@router.get("/audit", dependencies=[needs("audit.read")])
async def audit(
    srv: Srv,
    after: int = Query(0, ge=0, le=2**31 - 1),
    limit: int = Query(500, ge=1, le=5000),
    flow: str | None = Query(None, max_length=200),
    actor: str | None = Query(None, max_length=200),
    kind: str | None = Query(None, max_length=40),
    since: float | None = Query(None, ge=0, le=2**40, description="seconds since the epoch"),
) -> list[dict[str, Any]]:
    """Every change: who (a user, ``agent:NAME``, ``leader``), from where, what, when."""
    only = None if flow is None else (lambda f: f == flow)
    return await run_in_threadpool(
        lambda: srv.cluster.events(after, limit, flows=only, actor=actor, kind=kind, since=since)
    )


@router.websocket("/stream")
async def event_stream(ws: WebSocket) -> None:
    """Events as they happen, one JSON object per message, those the caller may see. The
    credential goes in ``Authorization: Bearer TOKEN``; from a browser, in the subprotocols
    ``elasticcode`` and ``bearer.TOKEN`` (or ``?token=``)."""
    srv: Server = ws.app.state.server
    caller = await websocket_user(ws)
    if caller is None:
        return
    if len(srv.subscribers) >= MAX_SUBSCRIBERS:
        await ws.close(code=4429, reason="too many subscribers; try again later")
        return
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
    srv.subscribers.add(queue)
    allowed = visible(caller)

    async def serve() -> None:
        try:
            await ws.send_json({"type": "hello", "server": srv.settings.server_id})
            while True:
                event = await queue.get()
                if allowed(event.get("flow")):
                    await ws.send_json(event)
        except WebSocketDisconnect:
            pass

    try:
        await while_credential_holds(ws, serve())
    finally:
        srv.subscribers.discard(queue)
