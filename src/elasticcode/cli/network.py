"""The ``elasticcode`` commands of distributed mode: the state store's schema, the server,
agents, and the commands that deploy and change flows in a network through the server's API
(``apply``, ``flow``, ``processor``, ``connection``, ``agent``, ``worker``)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from ..code import check_code
from ..code.git import resolve
from ..code.pinning import pin
from ..errors import ElasticCodeError, FlowError
from ..flow import Flow, Processor
from ..network.client import DEFAULT_SERVER, Api
from ..redact import redact_url
from .flowref import load_flow

SERVER_HELP = "Server URL [default: $ELASTICCODE_SERVER, else http://127.0.0.1:8750]."


def server_option(f: Any) -> Any:
    return click.option("--server", default=None, metavar="URL", help=SERVER_HELP)(f)


def json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


def _echo(data: Any, as_json: bool, lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for line in lines:
            click.echo(line)


def register(main: click.Group) -> None:
    """Add the distributed-mode commands to the ``elasticcode`` command."""
    main.add_command(db)
    main.add_command(server)
    main.add_command(agent)
    main.add_command(apply)
    main.add_command(flow)
    main.add_command(processor)
    main.add_command(connection)
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
@click.option("--broker", default=None, metavar="URL", help="The broker of flows that name none.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8750, show_default=True, type=click.IntRange(1, 65535))
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
    help="The state store URL as agents' workers reach it [default: --db].",
)
def server_start(
    url: str | None,
    broker: str | None,
    host: str,
    port: int,
    agent_timeout: float,
    lease: float,
    worker_db: str | None,
) -> None:
    """Run a server until interrupted. Several may run on one database; one leads.

    With $ELASTICCODE_TOKEN set, every API call (and every agent) must send that token."""
    from ..network.server import ServerSettings, serve

    url = url or os.environ.get("ELASTICCODE_DB")
    if not url:
        raise click.UsageError("give the state store: --db postgresql://USER@HOST/DBNAME")
    settings = ServerSettings(
        db=url,
        broker=broker or os.environ.get("ELASTICCODE_BROKER"),
        worker_db=worker_db,
        token=os.environ.get("ELASTICCODE_TOKEN"),
        agent_timeout=agent_timeout,
        lease=lease,
        heartbeat=min(2.0, agent_timeout / 4),
    )
    serve(settings, host, port)


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
    "--db",
    default=None,
    metavar="URL",
    help="The state store as this host reaches it [default: what the server says].",
)
def agent_start(
    servers: tuple[str, ...],
    name: str | None,
    host_name: str | None,
    labels: tuple[str, ...],
    max_workers: int | None,
    state_dir: str | None,
    db: str | None,
) -> None:
    """Run this host's agent until interrupted: it registers, heartbeats and runs the
    workers placed on it. With every server away it keeps running its last assignment."""
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
            token=os.environ.get("ELASTICCODE_TOKEN"),
            db=db,
        )
    )


@agent.command("list")
@server_option
@json_option
def agent_list(server: str | None, as_json: bool) -> None:
    """The agents, their state, slots and workers."""
    agents = Api(server)("GET", "/agents")
    now = time.time()
    lines = [
        f"{a['name']:<16} {a['status']:<6} host {a['host']:<16} "
        f"{len([w for w in a['workers'] if not w.get('retiring')])}/{a['capacity']} workers  "
        f"labels {','.join(f'{k}={v}' for k, v in a['labels'].items()) or '-'}  "
        f"heartbeat {now - a['heartbeat']:.1f}s ago  id {a['id']}"
        for a in agents
    ]
    _echo(agents, as_json, lines or ["no agents; start one with `elasticcode agent start`"])


@agent.command("forget")
@click.argument("agent_id")
@server_option
def agent_forget(agent_id: str, server: str | None) -> None:
    """Forget an agent (e.g. a host gone for good); its instances go elsewhere."""
    Api(server)("DELETE", f"/agents/{agent_id}")
    click.echo(f"forgot agent {agent_id}")


@click.group()
def worker() -> None:
    """Where every instance runs, and its state."""


@worker.command("list")
@click.argument("flow", required=False)
@server_option
@json_option
def worker_list(flow: str | None, server: str | None, as_json: bool) -> None:
    """Every placed instance (of FLOW, or of every flow)."""
    rows = Api(server)("GET", "/workers", params={"flow": flow} if flow else None)
    lines = [
        f"{r['flow']}/{r['processor']}[{r['instance']}]  {r['state']:<10} "
        f"agent {r['agent'] or '-'} on {r['host'] or '-'}  pid {r['pid'] or '-'}  "
        f"restarts {r['restarts']}  in {r['received']} out {r['emitted']}"
        + (f"\n    error: {r['error']}" if r.get("error") else "")
        for r in rows
    ]
    _echo(rows, as_json, lines or ["no instances placed"])


# -- flows ------------------------------------------------------------------------------------
def deployable(model: Flow, current: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """A flow as a document to deploy: paths absolute, every git ref pinned to a commit (the
    one the deployed revision has for the same repository and ref, else resolved now)."""
    deployed = {
        p["name"]: p["git"]
        for p in (current or {}).get("processors", [])
        if p.get("git") and p["git"].get("commit")
    }

    def recorded(p: Processor) -> str | None:
        before, git = deployed.get(p.name), p.git
        assert git is not None
        if before and (before.get("repo"), before.get("ref")) == (git.repo, git.ref):
            return str(before["commit"])
        return None

    pinned, pins = pin(model, recorded, checkout=False)
    notes = [
        x.note(f"`elasticcode processor update {model.name} {x.processor} --ref {x.ref}` moves it")
        for x in pins
    ]
    return pinned.frozen().to_dict(), notes


@click.command()
@click.argument("flow_ref", metavar="FLOW")
@server_option
@click.option("--note", default="", help="A note kept with the revision.")
@click.option(
    "--no-check", is_flag=True, help="Do not load the processors' code here before deploying."
)
def apply(flow_ref: str, server: str | None, note: str, no_check: bool) -> None:
    """Deploy FLOW (a file, as for `run`) to the network as its next revision. Only what
    changed is applied: processors whose code and settings are unchanged keep running."""
    api = Api(server)
    model = load_flow(flow_ref)
    try:
        current = api("GET", f"/flows/{model.name}")["document"]
    except ElasticCodeError as exc:
        if "no flow named" not in str(exc):
            raise
        current = None
    doc, notes = deployable(model, current)
    for line in notes:
        click.echo(line, err=True)
    if not no_check:
        check_code(Flow.from_dict(doc, base_dir=model.base_dir))
    reply = api("POST", "/flows", json={"document": doc, "note": note})
    if reply["changed"]:
        click.echo(f"flow {reply['name']}: revision {reply['revision']} applied")
    else:
        click.echo(f"flow {reply['name']}: unchanged, still revision {reply['revision']}")


@click.group()
def flow() -> None:
    """The flows deployed in the network."""


@flow.command("list")
@server_option
@json_option
def flow_list(server: str | None, as_json: bool) -> None:
    rows = Api(server)("GET", "/flows")
    lines = [
        f"{f['name']:<20} revision {f['revision']:<4} "
        f"{'running' if f['running'] else 'stopped':<8} {f['processors']} processor(s)"
        for f in rows
    ]
    _echo(rows, as_json, lines or ["no flows; deploy one with `elasticcode apply FILE`"])


@flow.command("revisions")
@click.argument("name")
@server_option
def flow_revisions(name: str, server: str | None) -> None:
    """Every revision of flow NAME, oldest first."""
    for r in Api(server)("GET", f"/flows/{name}/revisions"):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"]))
        click.echo(f"{r['revision']:>4}  {when}  {r['note']}")


@flow.command("rollback")
@click.argument("name")
@click.argument("revision", type=click.IntRange(1))
@server_option
def flow_rollback(name: str, revision: int, server: str | None) -> None:
    """Deploy revision REVISION of flow NAME again (as a new revision)."""
    reply = Api(server)("POST", f"/flows/{name}/rollback", json={"revision": revision})
    click.echo(f"flow {name}: revision {reply['revision']} applied (as revision {revision})")


for _action, _help in (
    ("start", "Start every processor of flow NAME again."),
    ("stop", "Stop every worker of flow NAME; its queues keep what they hold."),
):

    def _make(action: str) -> Any:
        @server_option
        def cmd(name: str, server: str | None) -> None:
            Api(server)("POST", f"/flows/{name}/{action}")
            click.echo(f"flow {name}: {action} requested")

        return cmd

    flow.command(_action, help=_help)(click.argument("name")(_make(_action)))


@flow.command("remove")
@click.argument("name")
@server_option
def flow_remove(name: str, server: str | None) -> None:
    """Remove flow NAME from the network: its workers stop; its queues stay on the broker."""
    Api(server)("DELETE", f"/flows/{name}")
    click.echo(f"flow {name}: removed")


# -- processors and connections -----------------------------------------------------------------
@click.group()
def processor() -> None:
    """One processor of a deployed flow: scale, pause, resume, restart, update, add, remove."""


@processor.command("list")
@click.argument("flow_name", metavar="FLOW")
@server_option
@json_option
def processor_list(flow_name: str, server: str | None, as_json: bool) -> None:
    """FLOW's processors, their code, and where their instances run."""
    rows = Api(server)("GET", f"/flows/{flow_name}/processors")
    lines = []
    for p in rows:
        code = p["code"]
        what = code.get("code") or code.get("command") or ("inline" if code.get("inline") else "")
        if "git" in code:
            git = code["git"]
            what += f" from {git['repo']} at {git.get('commit', '?')[:12]} ({git['ref']})"
        placed = ", ".join(f"{w['agent'] or 'pending'}:{w['state']}" for w in p["placed"])
        flag = " paused" if p["paused"] else ""
        lines.append(
            f"{p['name']:<16} instances {p['instances']}{flag}  {what}  [{placed or 'none'}]"
        )
    _echo(rows, as_json, lines)


@processor.command("scale")
@click.argument("flow_name", metavar="FLOW")
@click.argument("name")
@click.argument("instances")
@server_option
def processor_scale(flow_name: str, name: str, instances: str, server: str | None) -> None:
    """Run INSTANCES instances (a number, or auto: one on every agent that may run it)."""
    value: int | str = instances if instances == "auto" else int(instances)
    reply = Api(server)(
        "POST", f"/flows/{flow_name}/processors/{name}/scale", json={"instances": value}
    )
    click.echo(f"flow {flow_name}: revision {reply['revision']}, {name} at {instances} instance(s)")


for _action, _help in (
    ("pause", "Stop the processor's workers; its input queue keeps filling and waits."),
    ("resume", "Start a paused processor's workers again."),
    ("restart", "Replace every instance of the processor, new ones first."),
):

    def _make_p(action: str) -> Any:
        @server_option
        def cmd(flow_name: str, name: str, server: str | None) -> None:
            Api(server)("POST", f"/flows/{flow_name}/processors/{name}/{action}")
            click.echo(f"flow {flow_name}: {action} of {name} requested")

        return cmd

    processor.command(_action, help=_help)(
        click.argument("flow_name", metavar="FLOW")(click.argument("name")(_make_p(_action)))
    )


@processor.command("update")
@click.argument("flow_name", metavar="FLOW")
@click.argument("name")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="A processor setting (VALUE as JSON, else a string), e.g. --set prefetch=50 or "
    "config='{\"min\": 3}'.",
)
@click.option(
    "--ref", default=None, help="Move its git code to this ref (resolved to a commit now)."
)
@server_option
def processor_update(
    flow_name: str, name: str, sets: tuple[str, ...], ref: str | None, server: str | None
) -> None:
    """Change a processor (a new revision); its instances are replaced, new ones first."""
    api = Api(server)
    changes: dict[str, Any] = {}
    for pair in sets:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--set")
        try:
            changes[key] = json.loads(value)
        except ValueError:
            changes[key] = value
    if ref is not None:
        doc = api("GET", f"/flows/{flow_name}/export")
        spec = next((p for p in doc.get("processors", []) if p.get("name") == name), None)
        if spec is None or not spec.get("git"):
            raise FlowError(f"processor {name!r} of {flow_name!r} does not take its code from git")
        git = spec["git"]
        commit = resolve(git["repo"], ref, git.get("credential"))
        changes["git"] = {**git, "ref": ref, "commit": commit}
        click.echo(f"processor {name}: {ref} resolved to commit {commit[:12]}", err=True)
    if not changes:
        raise click.UsageError("say what to change: --set KEY=VALUE or --ref REF")
    reply = api("PATCH", f"/flows/{flow_name}/processors/{name}", json=changes)
    click.echo(f"flow {flow_name}: revision {reply['revision']} applied")


@processor.command("add")
@click.argument("flow_name", metavar="FLOW")
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False))
@server_option
def processor_add(flow_name: str, spec_file: str, server: str | None) -> None:
    """Add the processor described in SPEC_FILE (YAML or JSON, as under `processors:`)."""
    import yaml

    spec = yaml.safe_load(Path(spec_file).read_text())
    if not isinstance(spec, dict) or "name" not in spec:
        raise FlowError(f"{spec_file} must hold one processor: a mapping with a name")
    reply = Api(server)("POST", f"/flows/{flow_name}/processors", json=spec)
    click.echo(f"flow {flow_name}: revision {reply['revision']}, processor {spec['name']} added")


@processor.command("remove")
@click.argument("flow_name", metavar="FLOW")
@click.argument("name")
@server_option
def processor_remove(flow_name: str, name: str, server: str | None) -> None:
    """Remove a processor and its connections; its input queue stays on the broker."""
    reply = Api(server)("DELETE", f"/flows/{flow_name}/processors/{name}")
    click.echo(f"flow {flow_name}: revision {reply['revision']}, processor {name} removed")


@click.group()
def connection() -> None:
    """The connections of a deployed flow."""


@connection.command("list")
@click.argument("flow_name", metavar="FLOW")
@server_option
@json_option
def connection_list(flow_name: str, server: str | None, as_json: bool) -> None:
    rows = Api(server)("GET", f"/flows/{flow_name}/connections")
    _echo(rows, as_json, [f"{c['from']} -> {c['to']}" for c in rows])


@connection.command("add")
@click.argument("flow_name", metavar="FLOW")
@click.argument("source", metavar="FROM")
@click.argument("target", metavar="TO")
@server_option
def connection_add(flow_name: str, source: str, target: str, server: str | None) -> None:
    """Wire FROM (processor or processor.port) to TO (a new revision)."""
    reply = Api(server)(
        "POST", f"/flows/{flow_name}/connections", json={"from": source, "to": target}
    )
    click.echo(f"flow {flow_name}: revision {reply['revision']}")


@connection.command("remove")
@click.argument("flow_name", metavar="FLOW")
@click.argument("source", metavar="FROM")
@click.argument("target", metavar="TO")
@server_option
def connection_remove(flow_name: str, source: str, target: str, server: str | None) -> None:
    reply = Api(server)(
        "DELETE", f"/flows/{flow_name}/connections", params={"from": source, "to": target}
    )
    click.echo(f"flow {flow_name}: revision {reply['revision']}")
