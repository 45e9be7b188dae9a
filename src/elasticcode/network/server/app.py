"""The server: the control plane's REST and websocket API, and the leader's loop.

``elasticcode server start --db URL`` runs one. Servers keep nothing of their own: the state
store holds the desired state (flows and their revisions), the agents and the placements, the
users and their tokens, so several servers can answer at once. One of them leads, through a
lease row in the database: the leader marks silent agents lost and places instances; the
others take over when its lease runs out. No message passes through a server.

Every route but ``/health`` and ``/auth/login`` needs a credential and checks the caller's
privilege (see ``network.privileges``). The API is described by OpenAPI at ``/openapi.json``
(browsable at ``/docs``); each resource has a router of its own in this package. The web UI
is served at ``/ui/`` (``ui``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIWebSocketRoute
from starlette.concurrency import run_in_threadpool

from ...errors import (
    AuthError,
    BrokerUnreachable,
    Conflict,
    ElasticCodeError,
    Forbidden,
    NotFound,
    StateUnreachable,
)
from ...metrics.history import History
from ...metrics.hub import MetricsHub
from .. import workerdb
from ..cluster import Cluster
from ..identity import Identities
from ..leader import Leader
from ..vault import Vault
from . import (
    agents,
    auth,
    connections,
    deadletters,
    events,
    flows,
    metrics,
    processors,
    results,
    secrets,
    status,
    tokens,
    ui,
    users,
    workers,
)
from .changes import Changes
from .context import Server, privilege_of
from .guard import Guard, local_names
from .loops import Nudge, lead, listen_for_nudges, pump_events, sweep_blobs, watch_metrics
from .settings import ServerSettings

log = logging.getLogger("elasticcode.server")

API = "/api/v1"
ROUTERS = (
    status,
    auth,
    flows,
    processors,
    connections,
    deadletters,
    agents,
    workers,
    events,
    metrics,
    results,
    users,
    tokens,
    secrets,
)
LOOPBACK = ("127.0.0.1", "::1", "localhost")
ADMIN_PASSWORD_ENV = "ELASTICCODE_ADMIN_PASSWORD"


def routes() -> Iterator[tuple[str, str, str | None]]:
    """Every route of the API: (method, path, the privilege it needs or None); websockets
    have the method WS. The table in the documentation is made from this."""
    for module in ROUTERS:
        for route in module.router.routes:
            if isinstance(route, APIWebSocketRoute):  # it checks its caller itself
                privilege = getattr(module, "WEBSOCKETS", {}).get(route.path)
            else:
                privilege = privilege_of(route.dependant)
            methods = sorted(getattr(route, "methods", None) or {"WS"})
            for method in methods:
                if method != "HEAD":
                    yield method, API + route.path, privilege


def privilege_table() -> str:
    """The documentation's table of every route and the privilege it needs (Markdown)."""
    lines = ["| route | needs |", "|---|---|"]
    for method, path, privilege in sorted(routes(), key=lambda r: (r[1], r[0])):
        lines.append(f"| `{method} {path}` | {privilege or 'no credential'} |")
    return "\n".join(lines) + "\n"


def openapi() -> dict[str, Any]:
    """The API's OpenAPI description, made without a database (the reference documentation
    is generated from it)."""
    app = FastAPI(title=TITLE, version="1", description=DESCRIPTION)
    for module in ROUTERS:
        app.include_router(module.router, prefix=API)
    return app.openapi()


TITLE = "ElasticCode"
DESCRIPTION = "The control plane of an ElasticCode network: flows, processors, agents and workers."


def create_app(settings: ServerSettings, cluster: Cluster | None = None) -> FastAPI:
    """The API app; with its lifespan, the leader loop and the event stream run too."""
    settings.server_id = settings.server_id or f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
    cl = cluster or Cluster(settings.db, settings.agent_timeout)
    srv = Server(
        settings,
        cl,
        Leader(cl, settings.server_id, settings.lease),
        Identities(cl.engine),
        Vault(cl.engine, settings.secret_key),
        Changes(cl),
        metrics=MetricsHub(History(cl.engine, settings.history_retention)),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loops = (
            lead(srv),
            listen_for_nudges(srv),
            srv.changes.watch(),
            pump_events(srv),
            watch_metrics(srv),
            sweep_blobs(srv),
        )
        tasks = [asyncio.create_task(t) for t in loops]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await run_in_threadpool(srv.leader.release)

    app = FastAPI(title=TITLE, version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.server = srv
    for module in ROUTERS:
        app.include_router(module.router, prefix=API)
    ui.mount(app)
    _answer_errors(app)
    app.add_middleware(Nudge, srv=srv)
    app.add_middleware(Guard, hosts=settings.hosts or ("*",))
    return app


def _answer_errors(app: FastAPI) -> None:
    """Errors a caller can cause answer 4xx with what to do; a database away answers 503."""
    statuses: dict[type[Exception], int] = {
        NotFound: 404,
        AuthError: 401,
        Forbidden: 403,
        Conflict: 409,
        BrokerUnreachable: 503,
        ElasticCodeError: 422,
    }
    for kind, code in statuses.items():

        async def answer(_: Request, exc: Exception, code: int = code) -> JSONResponse:
            headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
            return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)

        app.add_exception_handler(kind, answer)

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


@dataclass
class Listen:
    """Where and how a server listens."""

    host: str = "127.0.0.1"
    port: int = 8750
    tls_cert: str | None = None
    tls_key: str | None = None
    #: client certificates are asked for and checked against this CA (else not asked for)
    tls_client_ca: str | None = None
    #: listen beyond loopback over plain HTTP, tokens and all in the clear
    insecure_plain_http: bool = False

    def check(self) -> None:
        """Refuse to serve beyond loopback without TLS, unless told so in as many words."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ElasticCodeError("give both --tls-cert and --tls-key")
        if self.tls_cert or self.host in LOOPBACK or self.insecure_plain_http:
            return
        raise ElasticCodeError(
            f"refusing to listen on {self.host} over plain HTTP: logins, tokens and secrets "
            "would cross the network in the clear. Give --tls-cert and --tls-key (or listen on "
            "127.0.0.1 behind a TLS proxy); --insecure-plain-http serves plain HTTP anyway"
        )

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def serve(settings: ServerSettings, listen: Listen | None = None) -> None:
    """Run a server until interrupted."""
    import ssl

    import uvicorn

    listen = listen or Listen()
    listen.check()
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
    if not workerdb.can_create_roles(cluster.engine):
        raise ElasticCodeError(
            "the server's database user may not create roles, which it needs to give each "
            "flow's workers a role of their own: ALTER ROLE "
            f"{cluster.engine.url.username} CREATEROLE"
        )
    if cluster.engine.dialect.name != "postgresql":
        log.warning(
            "the state store is not PostgreSQL: every flow's workers get the whole database; "
            "use PostgreSQL to keep each flow's workers to their own rows"
        )
    if os.environ.get("ELASTICCODE_TOKEN"):
        log.warning(
            "ELASTICCODE_TOKEN is a client's credential; a server ignores it (users log in, "
            "agents enrol: see `elasticcode login` and `elasticcode agent enrol-token`)"
        )
    settings.hosts = tuple(local_names(listen.host, settings.hosts))
    made = Identities(cluster.engine).first_admin(os.environ.get(ADMIN_PASSWORD_ENV) or None)
    if made is not None:
        print(
            f"\ncreated the first user, admin, with the password\n\n    {made}\n\n"
            "It is shown this once. Log in with `elasticcode login --server "
            f"{listen.url} --user admin`, then choose your own with `elasticcode user "
            f"password admin` (or set {ADMIN_PASSWORD_ENV} before the first start).\n",
            file=sys.stderr,
            flush=True,
        )
    app = create_app(settings, cluster)
    log.info(
        "server %s on %s (web UI at %s/ui/, API docs at /docs)",
        settings.server_id,
        listen.url,
        listen.url,
    )
    if not ui.built():
        log.warning("the web UI is not built in this installation: %s", ui.HOW_TO_BUILD)
    options: dict[str, object] = {}
    if listen.tls_cert:
        options |= {"ssl_certfile": listen.tls_cert, "ssl_keyfile": listen.tls_key}
        if listen.tls_client_ca:
            options |= {"ssl_ca_certs": listen.tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    uvicorn.run(
        app,
        host=listen.host,
        port=listen.port,
        log_level="warning",
        ws="websockets-sansio",
        ws_max_size=2**20,
        **options,  # type: ignore[arg-type]
    )
