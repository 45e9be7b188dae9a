"""A server's settings, as ``elasticcode server start`` gathers them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerSettings:
    db: str
    #: The broker of flows that name none.
    broker: str | None = None
    #: The state store URL given to agents (and their workers); default: ``db``.
    worker_db: str | None = None
    agent_timeout: float = 10.0
    lease: float = 5.0
    tick: float = 0.5
    heartbeat: float = 2.0
    server_id: str = ""
    #: the Fernet key of the network's secrets (``ELASTICCODE_SECRET_KEY``)
    secret_key: str | None = None
    #: host names the server answers to (and web pages it takes requests from); ``*``: any
    hosts: tuple[str, ...] = ()
    #: how long the metrics history keeps each resolution: {seconds: seconds}; None: defaults
    history_retention: dict[int, int] | None = None
    #: how long a login's token lasts, in seconds
    login_lifetime: float = 30 * 86400.0
