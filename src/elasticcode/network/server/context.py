"""What every route of one server shares, and the dependencies that hand it to them: the
server itself, and the caller, authenticated and checked against the route's privilege."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from ...autoscale import Autoscaler
from ...errors import AuthError
from ...metrics.hub import MetricsHub
from ..cluster import Cluster, Who
from ..identity import Identities
from ..leader import Leader
from ..privileges import FLOW_PRIVILEGES, PRIVILEGES, Caller
from ..vault import Vault
from .changes import Changes
from .settings import ServerSettings

log = logging.getLogger("elasticcode.server")


@dataclass
class Server:
    settings: ServerSettings
    cluster: Cluster
    leader: Leader
    identities: Identities
    vault: Vault
    #: agents waiting for a change of their assignment
    changes: Changes
    #: one queue per websocket subscriber to the event stream
    subscribers: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    #: whether this server held the lease at its last round
    leading: bool = False
    #: set by a change made through this server: the leader's next round starts at once
    nudged: asyncio.Event = field(default_factory=asyncio.Event)
    #: the flows' metrics: newest views, subscribers, the history (written by the leader)
    metrics: MetricsHub = field(default_factory=MetricsHub)
    #: the instance counts of the processors that scale (decided while this server leads)
    scaler: Autoscaler = field(default_factory=Autoscaler)


def server_of(conn: HTTPConnection) -> Server:
    server: Server = conn.app.state.server
    return server


#: A route's parameter that receives the server: ``srv: Srv``.
Srv = Annotated[Server, Depends(server_of)]


#: The websocket subprotocol a browser asks for; beside it, ``bearer.TOKEN`` carries its
#: credential (browsers cannot set a websocket's headers, and a URL gets logged).
SUBPROTOCOL = "elasticcode"


def bearer(conn: HTTPConnection) -> str:
    """The token a request brings: ``Authorization: Bearer TOKEN``; a websocket may pass it
    as the subprotocol ``bearer.TOKEN`` (beside ``elasticcode``), or as ``?token=``."""
    given = conn.headers.get("authorization", "")
    if given.lower().startswith("bearer "):
        return given[7:].strip()
    if conn.scope["type"] == "websocket":
        for protocol in conn.scope.get("subprotocols", ()):
            if protocol.startswith("bearer."):
                return str(protocol.removeprefix("bearer."))
        return conn.query_params.get("token", "")
    return ""


async def authenticate(conn: HTTPConnection) -> Caller:
    token = bearer(conn)
    if not token:
        raise AuthError(
            "this server needs a credential: log in with `elasticcode login`, or send "
            "Authorization: Bearer TOKEN"
        )
    return await run_in_threadpool(server_of(conn).identities.caller, token)


async def websocket_user(ws: WebSocket) -> Caller | None:
    """Accept a websocket and authenticate its user; None (it is closed, with the reason
    a browser sees: 4401 no valid credential, 4403 an agent's) if there is none."""
    # accepted, then refused with a reason, which a browser sees (an HTTP status it does
    # not); a browser's subprotocol answered (never the one that holds its token)
    asked = ws.scope.get("subprotocols", ())
    await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in asked else None)
    try:
        caller = await authenticate(ws)
    except AuthError as exc:
        await ws.close(code=4401, reason=str(exc)[:120])
        return None
    if caller.kind != "user":
        await ws.close(code=4403, reason="an agent's credential serves its heartbeat only")
        return None
    return caller


#: How often an open websocket's credential is checked again (a revoked or expired token,
#: a disabled user: the socket is closed within this, and the token cache's 5 s).
RECHECK_EVERY = 5.0


async def while_credential_holds(
    ws: WebSocket, serve: Coroutine[Any, Any, None], every: float = RECHECK_EVERY
) -> None:
    """Run ``serve`` (one websocket's feed) until it ends, or until the credential the
    socket was opened with is no longer valid: then close it (4401, with why)."""
    feed = asyncio.ensure_future(serve)

    async def watch() -> str:
        """Why the credential no longer holds (returns only then)."""
        while True:
            await asyncio.sleep(every)
            try:
                await authenticate(ws)
            except AuthError as exc:
                return str(exc)
            except Exception:  # the state store away for a moment: the socket stays open
                log.debug("could not check a websocket's credential again", exc_info=True)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({feed, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (feed, watcher):
            task.cancel()
        await asyncio.gather(feed, watcher, return_exceptions=True)
    if not watcher.cancelled():  # it returned: the credential no longer holds
        with contextlib.suppress(Exception):  # the socket may have gone meanwhile
            reason = f"credential no longer valid: {watcher.result()}"
            await ws.close(code=4401, reason=reason[:120])
    elif not feed.cancelled() and (exc := feed.exception()) is not None:
        raise exc


#: What a route may need besides a privilege: any user's credential (``user``), an agent's
#: own on its own paths (``agent.self``), an enrolment token or an agent's (``enrol``).
CREDENTIALS = {
    "user": "any user's credential",
    "agent.self": "the agent's own credential",
    "enrol": "an enrolment token, or the agent's own credential",
}


class Require:
    """A route's privilege, as a dependency: the caller must hold it (on the flow the path
    names, for a flow privilege) or the request answers 401 (no valid credential) or 403."""

    def __init__(self, privilege: str) -> None:
        if privilege not in PRIVILEGES and privilege not in CREDENTIALS:
            raise ValueError(f"no privilege {privilege!r}")
        self.privilege = privilege

    async def __call__(self, request: Request) -> Caller:
        try:
            caller = await self._caller(request)
        except AuthError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        request.state.caller = caller
        return caller

    async def _caller(self, request: Request) -> Caller:
        ids = server_of(request).identities
        if self.privilege == "enrol":
            return await run_in_threadpool(ids.enrolling, bearer(request))
        caller = await authenticate(request)
        if self.privilege == "agent.self":
            if caller.kind != "agent" or caller.agent_id != request.path_params.get("agent_id"):
                raise HTTPException(403, "only the agent itself may do this, with its own token")
        elif caller.kind != "user":
            raise HTTPException(403, "an agent's credential serves its own heartbeat only")
        elif self.privilege != "user":
            flow = request.path_params.get("name") if self.privilege in FLOW_PRIVILEGES else None
            if not caller.may(self.privilege, flow):
                on = f" on flow {flow!r}" if flow else ""
                raise HTTPException(403, f"{caller.who} may not {self.privilege}{on}")
        return caller


def allow(caller: Caller, privilege: str, flow: str | None = None) -> None:
    """Inside a route: 403 unless ``caller`` may do ``privilege`` (on ``flow``)."""
    if not caller.may(privilege, flow):
        on = f" on flow {flow!r}" if flow else ""
        raise HTTPException(403, f"{caller.who} may not {privilege}{on}")


def needs(privilege: str) -> Any:
    """``Depends`` on :class:`Require`, for a route's ``dependencies`` or a parameter:
    ``caller: Caller = needs("flow.read")``."""
    return Depends(Require(privilege))


def privilege_of(dependant: Any) -> str | None:
    """The privilege a route requires (through :class:`Require`), if any."""
    for dep in dependant.dependencies:
        if isinstance(dep.call, Require):
            return dep.call.privilege
        found = privilege_of(dep)
        if found is not None:
            return found
    return None


async def record(request: Request, kind: str, text: str, flow: str | None = None) -> None:
    """Put a change in the audit log, as made by the request's caller."""
    cluster = server_of(request).cluster
    await run_in_threadpool(cluster.note, kind, flow, text, who(request))


def who(request: Request) -> Who:
    """The caller and where the request came from, for the audit log."""
    caller: Caller | None = getattr(request.state, "caller", None)
    origin = request.client.host if request.client else ""
    return Who(caller.who if caller else "anonymous", origin)
