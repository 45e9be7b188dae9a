"""The ``elasticcode`` commands of distributed mode: the state store's schema, the server,
agents, and the commands that deploy and change flows in a network through the server's API
(``apply``, ``flow``, ``processor``, ``connection``, ``agent``, ``worker``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from ..errors import ElasticCodeError
from ..network.client import CA_ENV, DEFAULT_SERVER, Api
from ..redact import redact_url
from .options import CA_HELP, _echo, json_option, server_option

ENROL_ENV = "ELASTICCODE_ENROL_TOKEN"


def register(main: click.Group) -> None:
    """Add the distributed-mode commands to the ``elasticcode`` command."""
    main.add_command(db)
    main.add_command(server)
    main.add_command(agent)
    main.add_command(worker)


# -- the state store ------------------------------------------------------------------------
@click.group()
def db() -> None:
    """The state store's schema."""


@db.command("upgrade")
@click.option(
    "--db", "url", default=None, metavar="URL", help="State store URL [default: $ELASTICCODE_DB]."
)
def db_upgrade(url: str | None) -> None:
    """Create or migrate the state store's schema to this version's (e.g. a PostgreSQL
    database: postgresql://user@host/dbname)."""
    import sqlalchemy as sa

    from ..store import schema

    url = url or os.environ.get("ELASTICCODE_DB")
    if not url:
        raise click.UsageError("give the database: --db postgresql://USER@HOST/DBNAME")
    engine = sa.create_engine(schema.engine_url(url))
    try:
        before, after = schema.upgrade(engine, say=lambda s: click.echo(s, err=True))
    except sa.exc.SQLAlchemyError as exc:
        raise ElasticCodeError(
            f"cannot upgrade {redact_url(url)}: {getattr(exc, 'orig', exc)}; check that the "
            "database exists and the user may create tables"
        ) from None
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"{redact_url(url)} is at schema revision {after}; nothing to do")
    else:
        click.echo(
            f"{redact_url(url)} upgraded from {before or 'empty'} to schema revision {after}"
        )


# -- the server -----------------------------------------------------------------------------
@click.group()
def server() -> None:
    """The control plane: REST and websocket API, scheduler, leader election."""


@server.command("start")
@click.option(
    "--db", "url", default=None, metavar="URL", help="State store [default: $ELASTICCODE_DB]."
)
@click.option(
    "--broker",
    default=None,
    metavar="URL",
    help="The broker of flows that name none (a password in it as ${secret:NAME}).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8750, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--tls-cert", type=click.Path(dir_okay=False, exists=True), help="HTTPS: its certificate (PEM)."
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False, exists=True), help="HTTPS: its private key (PEM)."
)
@click.option(
    "--tls-client-ca",
    type=click.Path(dir_okay=False, exists=True),
    help="Ask every client for a certificate signed by this CA (PEM), and refuse others.",
)
@click.option(
    "--insecure-plain-http",
    is_flag=True,
    help="Serve plain HTTP beyond loopback: credentials cross the network in the clear.",
)
@click.option(
    "--allowed-host",
    "allowed",
    multiple=True,
    metavar="NAME",
    help="A name clients reach this server by, besides its own (repeat; * for any).",
)
@click.option(
    "--secret-key-file",
    type=click.Path(dir_okay=False, exists=True),
    help="The key of the network's secrets [default: $ELASTICCODE_SECRET_KEY].",
)
@click.option(
    "--agent-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.5),
    help="Seconds without a heartbeat before an agent's instances go elsewhere.",
)
@click.option(
    "--lease",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.5),
    help="Seconds the leader lease lasts; another server leads when it runs out.",
)
@click.option(
    "--worker-db",
    default=None,
    metavar="URL",
    help="The state store as agents' hosts reach it; each flow's workers log in as a role "
    "of their own [default: --db].",
)
@click.option(
    "--history-retention",
    default="",
    metavar="SPEC",
    help="How long the metrics history and lineage are kept, e.g. 1s=6h,1m=14d,1h=400d,"
    "lineage=7d (those are the defaults; name only what you change).",
)
def server_start(
    url: str | None,
    broker: str | None,
    host: str,
    port: int,
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
    insecure_plain_http: bool,
    allowed: tuple[str, ...],
    secret_key_file: str | None,
    agent_timeout: float,
    lease: float,
    worker_db: str | None,
    history_retention: str,
) -> None:
    """Run a server until interrupted. Several may run on one database; one leads.

    Every call but a login needs a credential. On a database with no users the first start
    makes one, admin, and prints its password once (or takes $ELASTICCODE_ADMIN_PASSWORD).
    Beyond 127.0.0.1 the server wants --tls-cert and --tls-key."""
    from ..metrics.history import parse_retention
    from ..network.policy import no_secrets_in_clear
    from ..network.server import ServerSettings, serve
    from ..network.server.app import Listen
    from ..network.vault import read_key

    url = url or os.environ.get("ELASTICCODE_DB")
    if not url:
        raise click.UsageError("give the state store: --db postgresql://USER@HOST/DBNAME")
    broker = broker or os.environ.get("ELASTICCODE_BROKER")
    if broker:
        no_secrets_in_clear({"settings": {"broker": broker}})
    listen = Listen(host, port, tls_cert, tls_key, tls_client_ca, insecure_plain_http)
    listen.check()
    settings = ServerSettings(
        db=url,
        broker=broker,
        worker_db=worker_db,
        agent_timeout=agent_timeout,
        lease=lease,
        heartbeat=min(2.0, agent_timeout / 4),
        secret_key=read_key(secret_key_file),
        hosts=allowed,
        history_retention=parse_retention(history_retention),
    )
    serve(settings, listen)


# -- agents ---------------------------------------------------------------------------------
@click.group()
def agent() -> None:
    """The agents: one per host, running its workers."""


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--label")
        out[key] = value
    return out


@agent.command("start")
@click.option(
    "--server",
    "servers",
    multiple=True,
    metavar="URL",
    help="A server's URL (repeat for several) [default: $ELASTICCODE_SERVER].",
)
@click.option("--name", default=None, help="The agent's name [default: the hostname].")
@click.option(
    "--host-name",
    default=None,
    help="The host it counts as when instances are spread [default: the hostname].",
)
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label (repeat).")
@click.option(
    "--max-workers",
    type=click.IntRange(0),
    default=None,
    help="Most workers it runs [default: CPU cores].",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Its id, last assignment and worker logs [default: ~/.local/state/elasticcode/agent-NAME].",
)
@click.option(
    "--enrol-token",
    default=None,
    metavar="TOKEN",
    help="Enrol with this token (`elasticcode agent enrol-token`) [default: "
    "$ELASTICCODE_ENROL_TOKEN]; once enrolled, the agent keeps its own credential.",
)
@click.option("--ca", default=None, metavar="FILE", help=CA_HELP)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve this host's workers' metrics on 127.0.0.1 at this port: /metrics (Prometheus) "
    "and /metrics/stream (websocket).",
)
def agent_start(
    servers: tuple[str, ...],
    name: str | None,
    host_name: str | None,
    labels: tuple[str, ...],
    max_workers: int | None,
    state_dir: str | None,
    enrol_token: str | None,
    ca: str | None,
    metrics_port: int | None,
) -> None:
    """Run this host's agent until interrupted: it enrols (the first time), registers,
    heartbeats and runs the workers placed on it. With every server away it keeps running
    its last assignment."""
    import socket

    from ..network.agent import Agent, start

    urls = list(servers) or [os.environ.get("ELASTICCODE_SERVER", DEFAULT_SERVER)]
    name = name or socket.gethostname()
    folder = (
        Path(state_dir)
        if state_dir
        else Path.home() / ".local" / "state" / "elasticcode" / f"agent-{name}"
    )
    start(
        Agent(
            urls,
            folder,
            name=name,
            host=host_name,
            labels=_labels(labels),
            capacity=max_workers,
            enrol_token=enrol_token or os.environ.get(ENROL_ENV),
            ca=ca or os.environ.get(CA_ENV),
            metrics_port=metrics_port,
        )
    )


@agent.command("enrol-token")
@click.option(
    "--expires", default="1h", show_default=True, help="How long it is good for (30m, 1h, 7d)."
)
@click.option(
    "--uses",
    default=1,
    show_default=True,
    type=click.IntRange(0),
    help="Agents it enrols (0: any).",
)
@server_option
def agent_enrol_token(expires: str, uses: int, api: Api) -> None:
    """Make a token that enrols agents (start them with --enrol-token TOKEN); shown once."""
    body = {"expires": expires, "uses": uses or None}
    reply = api("POST", "/agents/enrolment-tokens", json=body)
    click.echo(reply["token"])
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(reply["expires"]))
    click.echo(f"enrols {uses or 'any number of'} agent(s) until {until}; shown once", err=True)


@agent.command("list")
@server_option
@json_option
def agent_list(api: Api, as_json: bool) -> None:
    """The agents, their state, slots, workers and how busy their hosts' cores are."""
    agents = api("GET", "/agents")
    now = time.time()
    lines = [
        f"{a['name']:<16} {a['status']:<6} host {a['host']:<16} "
        f"{len([w for w in a['workers'] if not w.get('retiring')])}/{a['capacity']} workers  "
        f"cores {_busy(a.get('busy'))}/{a['cores']} busy  "
        f"labels {','.join(f'{k}={v}' for k, v in a['labels'].items()) or '-'}  "
        f"heartbeat {now - a['heartbeat']:.1f}s ago  id {a['id']}"
        for a in agents
    ]
    _echo(agents, as_json, lines or ["no agents; start one with `elasticcode agent start`"])


def _busy(cores: float | None) -> str:
    return "?" if cores is None else f"{cores:.1f}"


@agent.command("forget")
@click.argument("agent_id")
@server_option
def agent_forget(agent_id: str, api: Api) -> None:
    """Forget an agent (e.g. a host gone for good); its instances go elsewhere."""
    api("DELETE", f"/agents/{agent_id}")
    click.echo(f"forgot agent {agent_id}")


@click.group()
def worker() -> None:
    """Where every instance runs, and its state."""


@worker.command("list")
@click.argument("flow", required=False)
@server_option
@json_option
def worker_list(flow: str | None, api: Api, as_json: bool) -> None:
    """Every placed instance (of FLOW, or of every flow)."""
    rows = api("GET", "/workers", params={"flow": flow} if flow else None)
    lines = [
        f"{r['flow']}/{r['processor']}[{r['instance']}]  {r['state']:<10} "
        f"agent {r['agent'] or '-'} on {r['host'] or '-'}  pid {r['pid'] or '-'}  "
        f"restarts {r['restarts']}  in {r['received']} out {r['emitted']}"
        + (f"\n    error: {r['error']}" if r.get("error") else "")
        for r in rows
    ]
    _echo(rows, as_json, lines or ["no instances placed"])
