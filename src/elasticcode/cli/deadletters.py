"""``elasticcode dead-letters``: list a flow's dead letters and replay them, on one host (from
its broker, as a run sees it) or in a network (through a server, with ``--server``)."""

from __future__ import annotations

from typing import Any

import click

from .. import deadletters
from ..local import queues as local_queues
from .flowref import FLOW_HELP, load_flow
from .options import in_network, json_option, where

EPILOG = (
    "On one host FLOW is the flow (" + FLOW_HELP.split(" is ", 1)[1] + "). With --server (or "
    "$ELASTICCODE_SERVER), FLOW is the name of a deployed flow, and the server reads its broker."
)
SERVER_HELP = "A network's server [default: $ELASTICCODE_SERVER]; without it, one host's run."
broker_option = click.option(
    "--broker",
    default=None,
    metavar="URL",
    help="One host: the run's broker [default: $ELASTICCODE_BROKER, else the flow's "
    "settings.broker, else embedded SQLite queues in the state dir].",
)


def register(main: click.Group) -> None:
    main.add_command(dead_letters)


@click.group("dead-letters")
def dead_letters() -> None:
    """Inspect and replay messages that failed for good."""


@dead_letters.command("list", epilog=EPILOG)
@click.argument("flow")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--traceback", "full", is_flag=True, help="Show the whole error with its traceback.")
@where(SERVER_HELP)
@broker_option
@json_option
def dead_list(
    flow: str,
    limit: int,
    full: bool,
    state_dir: str | None,
    server: str | None,
    ca: str | None,
    broker: str | None,
    as_json: bool,
) -> None:
    """List FLOW's dead letters with the error that ended each (oldest first)."""
    if in_network(server):
        from ..network.client import Api

        params = {"limit": limit, "traceback": str(full).lower()}
        found: list[dict[str, Any]] = Api(server, ca)(
            "GET", f"/flows/{flow}/dead-letters", params=params
        )
    else:
        model = load_flow(flow)
        letters = local_queues.dead_letters(model, state_dir, broker, limit)
        found = [deadletters.describe(model, d, full) for d in letters]
    if as_json:
        import json

        click.echo(json.dumps(found, indent=2))
        return
    for d in found:
        click.echo(
            f"#{d['id']}  {d['queue']}  deliveries={d['deliveries']}  message={d['message_id']}\n"
            f"    payload: {d['payload']}\n    error:   {d['error']}"
        )
    click.echo(f"{len(found)} dead letter(s)", err=True)


@dead_letters.command("replay", epilog=EPILOG)
@click.argument("flow")
@click.option("--id", "ids", multiple=True, help="Replay only this dead letter (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter of FLOW.")
@where(SERVER_HELP)
@broker_option
def dead_replay(
    flow: str,
    ids: tuple[str, ...],
    everything: bool,
    state_dir: str | None,
    server: str | None,
    ca: str | None,
    broker: str | None,
) -> None:
    """Put dead letters back on their queues; FLOW's workers (on one host: its next run)
    process them again."""
    if not ids and not everything:
        raise click.UsageError("name dead letters with --id N, or pass --all")
    wanted = list(ids) if ids else None
    if in_network(server):
        from ..network.client import Api

        body = {"ids": wanted, "all": wanted is None}
        n = Api(server, ca)("POST", f"/flows/{flow}/dead-letters/replay", json=body)["replayed"]
    else:
        n = local_queues.replay(load_flow(flow), wanted, state_dir, broker)
    click.echo(f"replayed {n} message(s)")
