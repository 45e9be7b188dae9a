"""The network's commands that deploy and change flows through the server's API: ``apply``,
``flow``, ``processor``, ``connection``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ..code import check_code
from ..code.git import resolve
from ..code.pinning import pin
from ..errors import ElasticCodeError, FlowError
from ..flow import Flow, Processor
from ..network.client import Api
from .flowref import load_flow
from .options import _echo, json_option, server_option


def register(main: click.Group) -> None:
    """Add the deploying commands to the ``elasticcode`` command."""
    for command in (apply, flow, processor, connection):
        main.add_command(command)


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
def apply(flow_ref: str, api: Api, note: str, no_check: bool) -> None:
    """Deploy FLOW (a file, as for `run`) to the network as its next revision. Only what
    changed is applied: processors whose code and settings are unchanged keep running."""
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
def flow_list(api: Api, as_json: bool) -> None:
    """The flows you may see: revision, running or stopped, processors."""
    rows = api("GET", "/flows")
    lines = [
        f"{f['name']:<20} revision {f['revision']:<4} "
        f"{'running' if f['running'] else 'stopped':<8} {f['processors']} processor(s)"
        for f in rows
    ]
    _echo(rows, as_json, lines or ["no flows; deploy one with `elasticcode apply FILE`"])


@flow.command("revisions")
@click.argument("name")
@server_option
def flow_revisions(name: str, api: Api) -> None:
    """Every revision of flow NAME, oldest first."""
    for r in api("GET", f"/flows/{name}/revisions"):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"]))
        click.echo(f"{r['revision']:>4}  {when}  {r['note']}")


@flow.command("rollback")
@click.argument("name")
@click.argument("revision", type=click.IntRange(1))
@server_option
def flow_rollback(name: str, revision: int, api: Api) -> None:
    """Deploy revision REVISION of flow NAME again (as a new revision)."""
    reply = api("POST", f"/flows/{name}/rollback", json={"revision": revision})
    click.echo(f"flow {name}: revision {reply['revision']} applied (as revision {revision})")


for _action, _help in (
    ("start", "Start every processor of flow NAME again."),
    ("stop", "Stop every worker of flow NAME; its queues keep what they hold."),
):

    def _make(action: str) -> Any:
        @server_option
        def cmd(name: str, api: Api) -> None:
            api("POST", f"/flows/{name}/{action}")
            click.echo(f"flow {name}: {action} requested")

        return cmd

    flow.command(_action, help=_help)(click.argument("name")(_make(_action)))


@flow.command("remove")
@click.argument("name")
@server_option
def flow_remove(name: str, api: Api) -> None:
    """Remove flow NAME from the network: its workers stop; its queues stay on the broker."""
    api("DELETE", f"/flows/{name}")
    click.echo(f"flow {name}: removed")


# -- processors and connections -----------------------------------------------------------------
@click.group()
def processor() -> None:
    """One processor of a deployed flow: scale, pause, resume, restart, update, add, remove."""


@processor.command("list")
@click.argument("flow_name", metavar="FLOW")
@server_option
@json_option
def processor_list(flow_name: str, api: Api, as_json: bool) -> None:
    """FLOW's processors, their code, and where their instances run."""
    rows = api("GET", f"/flows/{flow_name}/processors")
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
def processor_scale(flow_name: str, name: str, instances: str, api: Api) -> None:
    """Run INSTANCES instances (a number, or auto: one on every agent that may run it).

    A processor that scales (scale: in the flow) is held at the number until `release`
    lets the autoscaler decide again."""
    if instances not in ("auto", "release") and not instances.isdigit():
        raise click.BadParameter(f"{instances!r}: give a number, auto or release")
    value: int | str = instances if instances in ("auto", "release") else int(instances)
    reply = api("POST", f"/flows/{flow_name}/processors/{name}/scale", json={"instances": value})
    if "pinned" in reply:
        held = reply["pinned"]
        what = "scales again" if held is None else f"held at {held} instance(s) until released"
        click.echo(f"flow {flow_name}: {name} {what}")
        return
    click.echo(f"flow {flow_name}: revision {reply['revision']}, {name} at {instances} instance(s)")


for _action, _help in (
    ("pause", "Stop the processor's workers; its input queue keeps filling and waits."),
    ("resume", "Start a paused processor's workers again."),
    ("restart", "Replace every instance of the processor, new ones first."),
):

    def _make_p(action: str) -> Any:
        @server_option
        def cmd(flow_name: str, name: str, api: Api) -> None:
            api("POST", f"/flows/{flow_name}/processors/{name}/{action}")
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
    flow_name: str, name: str, sets: tuple[str, ...], ref: str | None, api: Api
) -> None:
    """Change a processor (a new revision); its instances are replaced, new ones first."""
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
def processor_add(flow_name: str, spec_file: str, api: Api) -> None:
    """Add the processor described in SPEC_FILE (YAML or JSON, as under `processors:`)."""
    import yaml

    spec = yaml.safe_load(Path(spec_file).read_text())
    if not isinstance(spec, dict) or "name" not in spec:
        raise FlowError(f"{spec_file} must hold one processor: a mapping with a name")
    reply = api("POST", f"/flows/{flow_name}/processors", json=spec)
    click.echo(f"flow {flow_name}: revision {reply['revision']}, processor {spec['name']} added")


@processor.command("remove")
@click.argument("flow_name", metavar="FLOW")
@click.argument("name")
@server_option
def processor_remove(flow_name: str, name: str, api: Api) -> None:
    """Remove a processor and its connections; its input queue stays on the broker."""
    reply = api("DELETE", f"/flows/{flow_name}/processors/{name}")
    click.echo(f"flow {flow_name}: revision {reply['revision']}, processor {name} removed")


@click.group()
def connection() -> None:
    """The connections of a deployed flow."""


@connection.command("list")
@click.argument("flow_name", metavar="FLOW")
@server_option
@json_option
def connection_list(flow_name: str, api: Api, as_json: bool) -> None:
    rows = api("GET", f"/flows/{flow_name}/connections")
    _echo(rows, as_json, [f"{c['from']} -> {c['to']}" for c in rows])


@connection.command("add")
@click.argument("flow_name", metavar="FLOW")
@click.argument("source", metavar="FROM")
@click.argument("target", metavar="TO")
@server_option
def connection_add(flow_name: str, source: str, target: str, api: Api) -> None:
    """Wire FROM (processor or processor.port) to TO (a new revision)."""
    reply = api("POST", f"/flows/{flow_name}/connections", json={"from": source, "to": target})
    click.echo(f"flow {flow_name}: revision {reply['revision']}")


@connection.command("remove")
@click.argument("flow_name", metavar="FLOW")
@click.argument("source", metavar="FROM")
@click.argument("target", metavar="TO")
@server_option
def connection_remove(flow_name: str, source: str, target: str, api: Api) -> None:
    reply = api("DELETE", f"/flows/{flow_name}/connections", params={"from": source, "to": target})
    click.echo(f"flow {flow_name}: revision {reply['revision']}")
