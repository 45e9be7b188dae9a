"""The server: the control plane's REST and websocket API, and the leader's loop.

``elasticcode server start --db URL`` runs one. Servers keep nothing of their own: the state
store holds the desired state (flows and their revisions), the agents and the placements, so
several servers can answer at once. One of them leads, through a lease row in the database:
the leader marks silent agents lost and places instances; the others take over when its lease
runs out. No message passes through a server.

The API is described by OpenAPI at ``/openapi.json`` (browsable at ``/docs``); each resource
has a router of its own in this package.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ...errors import ElasticCodeError, StateUnreachable
from ..cluster import Cluster, NotFound
from ..leader import Leader
from . import agents, connections, events, flows, processors, status, workers
from .changes import Changes
from .context import Server
from .loops import lead, pump_events
from .settings import ServerSettings

log = logging.getLogger("elasticcode.server")

API = "/api/v1"
ROUTERS = (status, flows, processors, connections, agents, workers, events)


def create_app(settings: ServerSettings, cluster: Cluster | None = None) -> FastAPI:
    """The API app; with its lifespan, the leader loop and the event stream run too."""
    settings.server_id = settings.server_id or f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
    cl = cluster or Cluster(settings.db, settings.agent_timeout)
    srv = Server(settings, cl, Leader(cl, settings.server_id, settings.lease), Changes(cl))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loops = (lead(srv), srv.changes.watch(), pump_events(srv))
        tasks = [asyncio.create_task(t) for t in loops]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await run_in_threadpool(srv.leader.release)

    app = FastAPI(
        title="ElasticCode",
        version="1",
        description="The control plane of an ElasticCode network: flows, processors, "
        "agents and workers.",
        lifespan=lifespan,
    )
    app.state.server = srv
    for module in ROUTERS:
        app.include_router(module.router, prefix=API)
    _answer_errors(app)
    return app


def _answer_errors(app: FastAPI) -> None:
    """Errors a caller can cause answer 4xx with what to do; a database away answers 503."""

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(sa.exc.DataError)
    async def bad_value(_: Request, exc: sa.exc.DataError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"a value the state store cannot hold: {str(exc.orig).splitlines()[0]}"},
            status_code=422,
        )

    @app.exception_handler(sa.exc.OperationalError)
    async def no_database(_: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        return JSONResponse(
            {"detail": "the state store does not answer; the server retries, try again soon"},
            status_code=503,
        )

    @app.exception_handler(ElasticCodeError)
    async def bad(_: Request, exc: ElasticCodeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)


def serve(settings: ServerSettings, host: str = "127.0.0.1", port: int = 8750) -> None:
    """Run a server until interrupted."""
    import uvicorn

    logging.basicConfig(
        level=os.environ.get("ELASTICCODE_LOG", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    delay = 0.5
    while True:  # a database that is not up yet is waited for, not a crash
        try:
            cluster = Cluster(settings.db, settings.agent_timeout)
            break
        except StateUnreachable as exc:
            log.warning("waiting for the state store: %s; retrying in %.0fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
    app = create_app(settings, cluster)
    log.info("server %s on http://%s:%d (API docs at /docs)", settings.server_id, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning", ws="websockets-sansio")
