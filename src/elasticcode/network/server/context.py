"""What every route of one server shares, and the dependencies that hand it to them."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from ..cluster import Cluster
from ..leader import Leader
from .changes import Changes
from .settings import ServerSettings


@dataclass
class Server:
    settings: ServerSettings
    cluster: Cluster
    leader: Leader
    #: agents waiting for a change of their assignment
    changes: Changes
    #: one queue per websocket subscriber to the event stream
    subscribers: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    #: whether this server held the lease at its last round
    leading: bool = False


def _server(request: Request) -> Server:
    server: Server = request.app.state.server
    return server


#: A route's parameter that receives the server: ``srv: Srv``.
Srv = Annotated[Server, Depends(_server)]


def authorized(request: Request) -> None:
    """With a token set, every call must bring it as ``Authorization: Bearer TOKEN``."""
    token = _server(request).settings.token
    if token is None:
        return
    given = request.headers.get("authorization", "")
    if not secrets.compare_digest(given, f"Bearer {token}"):
        raise HTTPException(401, "missing or wrong API token: send Authorization: Bearer TOKEN")


#: The dependencies of every route that needs a caller's credentials.
AUTH = [Depends(authorized)]
