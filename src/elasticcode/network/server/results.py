"""A deployed flow's results: what a processor that keeps them (``results:``) emitted for an
input, by the input's key (its ``key`` attribute, else its message id), read from the flow's
blob store with the flow's secrets; waited for up to a minute."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query
from starlette.concurrency import run_in_threadpool

from ...errors import ElasticCodeError
from ...secret import names_in, resolve
from ...storage import ResultStore, ResultTimeout, open_blob_store
from ...storage.results import decode_result, jsonable
from .context import Srv, needs

router = APIRouter(tags=["results"])


@router.get("/flows/{name}/results/{key}", dependencies=[needs("flow.operate")])
async def result(
    srv: Srv,
    name: str,
    key: str,
    wait: float = Query(0, ge=0, le=60, description="seconds to wait for it to arrive"),
) -> dict[str, Any]:
    """The outputs kept for one input (``bytes`` as ``{"base64": ...}``); 404 if there is none
    (after ``wait``). Results are message data: this needs ``flow.operate``."""
    info = await run_in_threadpool(srv.cluster.flow, name)
    flow = srv.cluster.parsed(info.name, info.revision, info.document)
    if not flow.settings.blobs:
        raise ElasticCodeError(f"flow {name!r} keeps no results: it names no blob store")
    values = await run_in_threadpool(srv.vault.values, names_in(flow.settings.blobs))
    url = resolve(flow.settings.blobs, values, "the flow's blob store")
    async with open_blob_store(url) as blobs:
        store = ResultStore(blobs)
        try:
            found = await (store.wait(name, key, wait) if wait else store.get(name, key))
        except ResultTimeout:
            found = None
    if found is None:
        raise HTTPException(404, f"no result {key!r} of flow {name!r} (yet, or expired)")
    return {"flow": name, "key": key, "outputs": jsonable(decode_result(found))}
