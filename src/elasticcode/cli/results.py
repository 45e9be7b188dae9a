"""``elasticcode result get``: what a processor that keeps its results emitted for an input,
on one host (from the run's blob store) or in a network (through a server, with
``--server``)."""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import ElasticCodeError
from ..local import queues as local_queues
from ..storage import ResultTimeout
from ..storage.results import jsonable
from ..units import parse_duration
from .flowref import FLOW_HELP, load_flow
from .options import in_network, json_option, where

EPILOG = (
    "On one host FLOW is the flow (" + FLOW_HELP.split(" is ", 1)[1] + "). With --server (or "
    "$ELASTICCODE_SERVER), FLOW is the name of a deployed flow. KEY is the input's key "
    "attribute (`send --attr key=K`), else its message id (what `send` prints)."
)


def register(main: click.Group) -> None:
    main.add_command(result_group)


@click.group("result")
def result_group() -> None:
    """Results kept by processors that keep them (``results:`` in the flow)."""


@result_group.command("get", epilog=EPILOG)
@click.argument("flow")
@click.argument("key")
@click.option(
    "--wait",
    default=None,
    metavar="DURATION",
    help="Wait this long for it (e.g. 30s; at most 60s with --server).",
)
@where("A network's server [default: $ELASTICCODE_SERVER]; without it, one host's run.")
@json_option
def result_get(
    flow: str,
    key: str,
    wait: str | None,
    state_dir: str | None,
    server: str | None,
    ca: str | None,
    as_json: bool,
) -> None:
    """Print the outputs kept for KEY, one per line (JSON); exit 1 if there is none."""
    seconds = None if wait is None else parse_duration(wait)
    outputs: list[Any] | None
    if in_network(server):
        from ..network.client import Api

        params = {"wait": min(seconds or 0.0, 60.0)}
        api = Api(server, ca)
        try:
            outputs = api("GET", f"/flows/{flow}/results/{key}", params=params)["outputs"]
        except ElasticCodeError as exc:  # the server's 404: no result
            if "no result" not in str(exc):
                raise
            outputs = None
    else:
        try:
            outputs = local_queues.result(load_flow(flow), key, seconds, state_dir)
        except ResultTimeout:
            outputs = None
        outputs = None if outputs is None else jsonable(outputs)
    if outputs is None:
        click.echo(f"no result {key!r} of {flow} (not yet, expired, or never kept)", err=True)
        raise SystemExit(1)
    if as_json:
        click.echo(json.dumps(outputs, indent=2))
    else:
        for out in outputs:
            click.echo(json.dumps(out))
