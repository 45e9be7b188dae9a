"""The flows' metrics: the newest view of a flow, its history, the Prometheus scrape, and a
websocket that pushes a view every interval with the events it shows (``docs/metrics.md``)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, WebSocket
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ...metrics import lineage
from ...metrics.hub import Subscription, feed
from ...metrics.prometheus import CONTENT_TYPE, exposition
from ..privileges import Caller
from .context import Server, Srv, needs, websocket_user, while_credential_holds

router = APIRouter(tags=["metrics"])
#: Metrics subscribers one server takes; more are refused until some leave.
MAX_SUBSCRIBERS = 1000
#: What each websocket of this router needs (it checks that itself).
WEBSOCKETS = {"/metrics/stream": "user"}
RESOLUTIONS = {"1s": 1, "1m": 60, "1h": 3600}


@router.get("/metrics", response_class=Response)
async def prometheus(srv: Srv, caller: Annotated[Caller, needs("user")]) -> Response:
    """Prometheus' text format, for the flows the caller may see (scrape with a bearer
    token: ``authorization: {credentials: TOKEN}`` in the scrape config)."""
    hub = srv.metrics
    reports = {f: r for f, r in hub.reports.items() if caller.may("flow.read", f)}
    views = [v for f, v in hub.views.items() if caller.may("flow.read", f)]
    body = await run_in_threadpool(exposition, reports, views)
    return Response(body, media_type=CONTENT_TYPE)


@router.get("/flows/{name}/metrics", dependencies=[needs("flow.read")])
async def flow_metrics(srv: Srv, name: str) -> dict[str, Any]:
    """The flow's newest view: per processor and connection, the last interval's rates and
    percentiles, the totals, depths and back pressure."""
    view = srv.metrics.views.get(name)
    if view is None:
        await run_in_threadpool(srv.cluster.flow, name)  # 404 if there is no such flow
        raise HTTPException(409, f"no metrics of flow {name!r} yet; try again in a second")
    return view


@router.get("/flows/{name}/stats", dependencies=[needs("flow.read")])
async def flow_stats(
    srv: Srv,
    name: str,
    since: float = Query(3600, ge=0, le=2**40, description="seconds ago, or an epoch time"),
    until: float | None = Query(None, ge=0, le=2**40, description="epoch time; default: now"),
    by: Literal["processor", "connection"] = "processor",
    resolution: Literal["1s", "1m", "1h"] | None = None,
) -> list[dict[str, Any]]:
    """The flow's history from ``since`` to ``until``, per processor or connection, at the
    finest resolution kept that long (or the one asked for)."""
    await run_in_threadpool(srv.cluster.flow, name)
    start = since if since > 10**9 else time.time() - since
    history = srv.metrics.history
    assert history is not None
    return await run_in_threadpool(
        lambda: history.points(
            name, start, until, RESOLUTIONS[resolution] if resolution else None, kind=by
        )
    )


@router.websocket("/metrics/stream")
async def metrics_stream(ws: WebSocket) -> None:
    """A view every interval and the events as they come, of the flows the caller may see;
    narrowed by ``?flow=``, ``&processor=``, ``&connection=``, ``&agent=`` (that agent's
    workers only). The credential goes in
    ``Authorization: Bearer TOKEN``; from a browser, the subprotocols ``elasticcode`` and
    ``bearer.TOKEN`` (or ``?token=``)."""
    srv: Server = ws.app.state.server
    caller = await websocket_user(ws)
    if caller is None:
        return
    q = ws.query_params
    flow = q.get("flow")
    if flow is not None and not caller.may("flow.read", flow):
        await ws.close(code=4403, reason=f"{caller.who} may not flow.read on flow {flow!r}")
        return
    hub = srv.metrics
    if len(hub.subscribers) >= MAX_SUBSCRIBERS:
        await ws.close(code=4429, reason="too many subscribers; try again later")
        return
    host = None
    if q.get("agent") is not None:
        if not caller.may("agent.read"):
            await ws.close(code=4403, reason=f"{caller.who} may not agent.read")
            return
        agents = await run_in_threadpool(srv.cluster.agents)
        host = next((a.host for a in agents if a.name == q["agent"]), None)
        if host is None:
            await ws.close(code=4404, reason=f"no agent named {q['agent'][:60]!r}")
            return
    sub = Subscription(
        flow,
        q.get("processor"),
        q.get("connection"),
        host,
        allowed=lambda f: caller.may("flow.read", f),
    )
    hello = {"type": "hello", "v": 1, "server": srv.settings.server_id}
    now = list(hub.views.values()) if host is None else []  # a host's come with the next
    await while_credential_holds(ws, feed(ws, sub, hub.subscribers, hello, now))


@router.get("/flows/{name}/trace/{message_id}", dependencies=[needs("flow.read")])
async def flow_trace(srv: Srv, name: str, message_id: str) -> dict[str, Any]:
    """The lineage tree the message belongs to: from the message that entered the flow to
    every descendant, each with its events (``docs/metrics.md``)."""
    await run_in_threadpool(srv.cluster.flow, name)
    found = await run_in_threadpool(lineage.trace, srv.cluster.engine, name, message_id[:64])
    if found is None:
        raise HTTPException(
            404,
            f"no lineage of message {message_id[:64]!r} in flow {name!r}: is its lineage "
            "recorded (settings.lineage: full, or sampled) and not yet expired?",
        )
    return found.as_dict()
