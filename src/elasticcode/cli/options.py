"""The options the network's commands share, and how they print."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..network.client import Api

F = TypeVar("F", bound=Callable[..., Any])

SERVER_HELP = "Server URL [default: $ELASTICCODE_SERVER, else http://127.0.0.1:8750]."
CA_HELP = (
    "The certificate authority (PEM) that signed an HTTPS server's certificate "
    "[default: $ELASTICCODE_CA, else what login saved, else the system's]."
)


def server_option(f: Any) -> Any:
    """``--server URL`` and ``--ca FILE``, handed to the command as ``api``: a client of that
    server with the caller's credential."""

    @click.option("--server", default=None, metavar="URL", help=SERVER_HELP)
    @click.option("--ca", default=None, metavar="FILE", help=CA_HELP)
    @functools.wraps(f)
    def command(*args: Any, server: str | None, ca: str | None, **kw: Any) -> Any:
        return f(*args, api=Api(server, ca), **kw)

    return command


def json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


def _echo(data: Any, as_json: bool, lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for line in lines:
            click.echo(line)


def where(server_help: str) -> Callable[[F], F]:
    """``--state-dir`` (one host), ``--server`` and ``--ca`` (a network)."""

    def wrap(f: F) -> F:
        options = [
            click.option(
                "--state-dir",
                type=click.Path(file_okay=False),
                default=None,
                help="One host: where the flow keeps its state [default: ./.elasticcode/FLOW-NAME].",
            ),
            click.option("--server", default=None, metavar="URL", help=server_help),
            click.option("--ca", default=None, metavar="FILE", help=CA_HELP),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


def in_network(server: str | None) -> bool:
    """Whether a command that works on one host and in a network is asked about a network."""
    return bool(server or os.environ.get("ELASTICCODE_SERVER"))
