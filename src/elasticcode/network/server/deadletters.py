"""A deployed flow's dead letters: list them (error, deliveries, the start of the payload) and
put them back on their queues. The server reads them from the flow's broker itself, with the
flow's secrets from its vault; a replay is in the audit log and, for a traced message, in its
lineage."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from ... import deadletters
from ...brokers import Broker, open_broker
from ...claimcheck import with_claim_check
from ...errors import ElasticCodeError
from ...flow import Flow
from ...metrics import lineage
from ...secret import names_in, resolve
from .context import Server, Srv, needs, record
from .schemas import ReplayBody

router = APIRouter(tags=["dead letters"])


@router.get("/flows/{name}/dead-letters", dependencies=[needs("flow.operate")])
async def dead_letters(
    srv: Srv,
    name: str,
    limit: int = Query(100, ge=1, le=10_000),
    traceback: bool = Query(False, description="the whole error, with its traceback"),
) -> list[dict[str, Any]]:
    """The flow's oldest dead letters, over all its queues. Message data is shown, so this
    needs ``flow.operate``, not only ``flow.read``."""
    flow = await _flow(srv, name)
    broker = await flow_broker(srv, flow)
    try:
        found = await deadletters.listing(broker, flow, limit)
    finally:
        await broker.close()
    return [deadletters.describe(flow, d, traceback) for d in found]


@router.post("/flows/{name}/dead-letters/replay", dependencies=[needs("flow.operate")])
async def replay(srv: Srv, request: Request, name: str, body: ReplayBody) -> dict[str, Any]:
    """Put dead letters back on their queues: those named by ``ids``, or every one with
    ``all``. Their processors take them again as new deliveries."""
    if body.ids is None and not body.all:
        raise ElasticCodeError("name the dead letters to replay in ids, or set all: true")
    flow = await _flow(srv, name)
    broker = await flow_broker(srv, flow)
    try:
        n, rows = await deadletters.replay(broker, flow, body.ids, srv.settings.server_id)
    finally:
        await broker.close()
    await run_in_threadpool(lineage.write, srv.cluster.engine, rows)
    which = "all" if body.ids is None else f"{len(body.ids)} named"
    await record(request, "dead-letters", f"replayed {n} dead letter(s) ({which})", name)
    return {"flow": name, "replayed": n}


async def _flow(srv: Srv, name: str) -> Flow:
    info = await run_in_threadpool(srv.cluster.flow, name)
    return srv.cluster.parsed(info.name, info.revision, info.document)


async def flow_broker(srv: Server, flow: Flow) -> Broker:
    """The flow's broker (with its claim check when it names a blob store), connected, with
    its queues declared; its secrets from the vault."""
    if not flow.settings.broker:
        raise ElasticCodeError(f"flow {flow.name!r} names no broker")
    routes = flow.broker_routes()
    wanted = names_in([flow.settings.broker, routes, flow.settings.blobs or ""])
    values = await run_in_threadpool(srv.vault.values, wanted)
    inner = open_broker(
        resolve(flow.settings.broker, values, "the flow's broker"),
        resolve(routes, values, "a connection's broker"),
        max_message_bytes=flow.settings.max_message_bytes,
    )
    blobs = resolve(flow.settings.blobs, values, "the flow's blob store")
    broker = with_claim_check(inner, flow, blobs)
    await broker.connect()
    try:
        await broker.declare(flow.queues())
    except BaseException:
        await broker.close()
        raise
    return broker
