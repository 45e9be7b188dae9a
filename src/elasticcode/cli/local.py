"""The ``elasticcode`` commands of one host: ``run``, ``send``, ``validate``, ``export``,
``queues`` and ``code``, each a thin layer over a library call."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from ..code import check_code
from ..errors import FlowError
from ..flow import Flow
from ..local import queues as local_queues
from ..local.paths import state_paths
from ..local.progress import Progress
from ..local.result import summarize
from ..local.runner import pin_code, run
from .flowref import FLOW_HELP, load_flow


def register(main: click.Group) -> None:
    """Add the one-host commands to the ``elasticcode`` command."""
    for command in (run_cmd, send, validate, export, queues, code_group):
        main.add_command(command)


state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where queues, state and logs live [default: ./.elasticcode/FLOW-NAME].",
)
broker_option = click.option(
    "--broker",
    default=None,
    metavar="URL",
    help="Broker URL, e.g. amqp://…, redis://…, nats://…, sqs://… [default: $ELASTICCODE_BROKER, else "
    "the flow's settings.broker, else embedded SQLite queues in the state dir].",
)


@click.command("run", epilog=FLOW_HELP)
@click.argument("flow")
@state_dir_option
@broker_option
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="Instances of each processor whose instances are 'auto' [default: CPU cores].",
)
@click.option(
    "--forever", is_flag=True, help="Keep running when sources are exhausted and queues drained."
)
@click.option(
    "--fresh", is_flag=True, help="Drop an interrupted run's queued messages and start over."
)
@click.option("--quiet", "-q", is_flag=True, help="No live progress; print only the summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve the run's metrics on 127.0.0.1 at this port: /metrics (Prometheus) and "
    "/metrics/stream (websocket). Needs the server extra.",
)
def run_cmd(
    flow: str,
    state_dir: str | None,
    broker: str | None,
    workers: int | None,
    forever: bool,
    fresh: bool,
    quiet: bool,
    as_json: bool,
    metrics_port: int | None,
) -> None:
    """Run FLOW until its sources are exhausted and its queues drained.

    Ctrl-C stops it gracefully (twice: at once); running it again resumes.
    """
    result = run(
        load_flow(flow),
        state_dir=state_dir,
        broker=broker,
        workers=workers,
        forever=forever,
        fresh=fresh,
        progress=Progress(None if (quiet or as_json) else Console()),
        metrics_port=metrics_port,
    )
    if as_json:
        click.echo(json.dumps(summarize(result), indent=2))
    elif quiet:
        s = summarize(result)
        click.echo(
            f"{s['flow']}: run {s['run']} {s['status']} in {s['seconds']}s; "
            f"{s['queued']} queued, {s['dead_letters']} dead letter(s) stored"
        )
    sys.exit(0 if result.status == "finished" or forever else 1)


@click.command(epilog=FLOW_HELP)
@click.argument("flow")
@click.argument("target")
@click.argument("data", required=False)
@click.option("--text", is_flag=True, help="Send DATA as a string instead of parsing it as JSON.")
@click.option(
    "--attr",
    "attrs",
    multiple=True,
    metavar="KEY=VALUE",
    help="An attribute to attach (repeatable).",
)
@state_dir_option
@broker_option
def send(
    flow: str,
    target: str,
    data: str | None,
    text: bool,
    attrs: tuple[str, ...],
    state_dir: str | None,
    broker: str | None,
) -> None:
    """Queue DATA for TARGET (PROCESSOR or PROCESSOR.PORT) of FLOW.

    DATA is JSON unless --text; without DATA (or with -), each line of standard input is one
    message. Messages wait durably until a run consumes them.
    """
    lines = (
        [data] if data not in (None, "-") else [ln.rstrip("\n") for ln in sys.stdin if ln.strip()]
    )
    payloads = [line if text else _json(line) for line in lines]
    attributes = dict(_pair(a) for a in attrs)
    ids = local_queues.send(
        load_flow(flow), target, payloads, attributes=attributes, state_dir=state_dir, broker=broker
    )
    click.echo(f"queued {len(ids)} message(s) for {target}", err=True)
    for i in ids:
        click.echo(i)


def _json(line: str | None) -> Any:
    try:
        return json.loads(line or "")
    except json.JSONDecodeError as exc:
        raise FlowError(
            f"DATA is not valid JSON ({exc.msg} at column {exc.colno}); pass --text to send it as a string"
        ) from None


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise FlowError(f"--attr {text!r} is not KEY=VALUE")
    return key, value


@click.command(epilog=FLOW_HELP)
@click.argument("flow")
def validate(flow: str) -> None:
    """Check FLOW and load every processor's code, without running anything."""
    f = load_flow(flow)
    check_code(f)
    click.echo(
        f"{f.name}: {len(f.processors)} processor(s), {len(f.connections)} connection(s): OK"
    )


@click.command(epilog=FLOW_HELP)
@click.argument("flow")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write to this file [default: stdout]."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "json"]),
    default=None,
    help="Output format [default: from the file name, else yaml].",
)
@click.option(
    "--server",
    default=None,
    metavar="URL",
    help="Export the flow named FLOW as deployed in the network [default server: "
    "$ELASTICCODE_SERVER, else http://127.0.0.1:8750].",
)
@click.option("--revision", type=click.IntRange(1), default=None, help="A deployed revision.")
def export(
    flow: str, output: str | None, fmt: str | None, server: str | None, revision: int | None
) -> None:
    """Write FLOW (for example one built in Python, or one deployed in the network) as a
    YAML or JSON flow file.

    A FLOW that names no file or module is the name of a deployed flow."""
    local = (
        Path(flow).exists() or ":" in flow or Path(flow).suffix in (".yaml", ".yml", ".json", ".py")
    )
    if server or revision or not local:
        from ..network.client import Api

        params = {"revision": revision} if revision else None
        model = Flow.from_dict(Api(server)("GET", f"/flows/{flow}/export", params=params))
    else:
        model = load_flow(flow)
    text = model.dump(output, fmt)
    if output is None:
        click.echo(text, nl=False)


@click.command(epilog=FLOW_HELP)
@click.argument("flow")
@state_dir_option
@broker_option
def queues(flow: str, state_dir: str | None, broker: str | None) -> None:
    """Show the depth of every queue of FLOW."""
    for q, (n, size) in local_queues.queue_depths(load_flow(flow), state_dir, broker).items():
        click.echo(f"{n:>10,} msgs {size:>14,} bytes  {q}")


@click.group("code")
def code_group() -> None:
    """Processor code from git: the commits each processor's ref was pinned to."""


@code_group.command("update", epilog=FLOW_HELP)
@click.argument("flow")
@click.argument("processors", nargs=-1)
@state_dir_option
def code_update(flow: str, processors: tuple[str, ...], state_dir: str | None) -> None:
    """Resolve the git refs of FLOW's processors (or only those named) again and pin them to
    the commits they name now; the next run uses those."""
    model = load_flow(flow)
    for name in processors:
        if model.get(name).git is None:
            raise FlowError(f"processor {name!r} does not take its code from git")
    _, _, state_url = state_paths(model, state_dir)
    _, notes = pin_code(model, state_url, update=list(processors))
    for note in notes:
        click.echo(note)
    if not notes:
        click.echo(f"flow {model.name!r} has no processor with code from git", err=True)


@code_group.command("history", epilog=FLOW_HELP)
@click.argument("flow")
@state_dir_option
def code_history(flow: str, state_dir: str | None) -> None:
    """List every commit FLOW's processors were pinned to, oldest first."""
    import time

    from ..redact import redact_url
    from ..store import StateStore

    model = load_flow(flow)
    _, _, state_url = state_paths(model, state_dir)
    store = StateStore(state_url)
    try:
        pins = store.code_history(model.name)
    finally:
        store.close()
    for pin in pins:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(pin.resolved))
        click.echo(
            f"{when}  {pin.processor:<20} {pin.commit[:12]}  {pin.ref} of {redact_url(pin.repo)}"
        )
    click.echo(f"{len(pins)} pin(s)", err=True)
