"""The event log: revisions, placements, agents lost and back, leader changes; listed, and
streamed over a websocket as they happen."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from .context import AUTH, Server, Srv

router = APIRouter(tags=["server"])


@router.get("/events", dependencies=AUTH)
async def list_events(
    srv: Srv,
    after: int = Query(0, ge=0, le=2**31 - 1),
    limit: int = Query(500, ge=1, le=5000),
) -> list[dict[str, Any]]:
    return await run_in_threadpool(srv.cluster.events, after, limit)


@router.websocket("/stream")
async def event_stream(ws: WebSocket) -> None:
    """Events as they happen (revisions, placements, agents, the leader), one JSON
    object per message. With a token, pass it as ``?token=``."""
    srv: Server = ws.app.state.server
    token = srv.settings.token
    if token is not None and not secrets.compare_digest(ws.query_params.get("token", ""), token):
        await ws.close(code=4401, reason="missing or wrong API token")
        return
    await ws.accept()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
    srv.subscribers.add(queue)
    try:
        await ws.send_json({"type": "hello", "server": srv.settings.server_id})
        while True:
            await ws.send_json(await queue.get())
    except WebSocketDisconnect:
        pass
    finally:
        srv.subscribers.discard(queue)
