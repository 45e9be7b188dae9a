"""The ``elasticcode`` command: the one-host commands (``local``) and the network's
(``network``), each a thin layer over the library; errors a user can cause print as one line
saying what to fix, with exit code 2."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console

from ..errors import ElasticCodeError
from . import access, deadletters, deploy, local, metrics, network, results


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ElasticCodeError as exc:
            Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False, markup=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="elasticcode")
def main() -> None:
    """ElasticCode: run flows of Python processors on durable queues."""


for commands in (local, deadletters, results, metrics, network, deploy, access):
    commands.register(main)
