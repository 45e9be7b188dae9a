"""``elasticcode top``, ``stats`` and ``trace``: a flow's metrics live and past, and a
message's lineage, on one host (read from its state directory) or in a network (from a
server, with ``--server``)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.tree import Tree

from ..brokers import flow_broker
from ..errors import ElasticCodeError
from ..flow import Flow
from ..local.paths import state_paths
from ..metrics import lineage
from ..metrics.history import History
from ..metrics.hub import INTERVAL
from ..metrics.view import FlowMetrics
from ..store import StateStore
from ..units import parse_duration
from .flowref import FLOW_HELP, load_flow
from .options import in_network, where

EPILOG = (
    "On one host FLOW is the flow (" + FLOW_HELP.split(" is ", 1)[1] + ") and its state is "
    "read from --state-dir. With --server (or $ELASTICCODE_SERVER), FLOW is the name of a "
    "deployed flow."
)


def register(main: click.Group) -> None:
    main.add_command(top)
    main.add_command(stats)
    main.add_command(trace)
    main.add_command(export_history)


@click.command(epilog=EPILOG)
@click.argument("flow", required=False)
@where("A network's server [default: $ELASTICCODE_SERVER]; without it, one host's run.")
@click.option(
    "--broker", default=None, metavar="URL", help="One host: the run's broker, if not the flow's."
)
@click.option("--once", is_flag=True, help="Print one view and exit (after one interval).")
@click.option("--json", "as_json", is_flag=True, help="Print each view as a line of JSON.")
def top(
    flow: str | None,
    state_dir: str | None,
    server: str | None,
    ca: str | None,
    broker: str | None,
    once: bool,
    as_json: bool,
) -> None:
    """Per processor and connection of FLOW: rates, percentiles, depths, errors, instances
    and hosts, refreshed every second (in a network, every flow when FLOW is not given)."""
    if in_network(server):
        from ..network.client import Api

        views = _network_views(Api(server, ca), flow)
    elif flow is None:
        raise click.UsageError("give the flow (a flow file), or --server URL for a network's")
    else:
        views = _local_views(load_flow(flow), state_dir, broker)
    _show(views, once, as_json)


def _local_views(flow: Flow, state_dir: str | None, broker: str | None) -> Iterator[dict[str, Any]]:
    """The views of the flow's newest run, read from its state directory each interval."""
    root, broker_url, state_url = state_paths(flow, state_dir, broker)
    if not (root / "state.db").exists() and state_dir is None:
        raise ElasticCodeError(
            f"{flow.name} has no state in {root}: run it first (`elasticcode run`), or give "
            "--state-dir"
        )
    store = StateStore(state_url)
    metrics = FlowMetrics(flow)
    queues = [flow.queue_name(c) for c in flow.connections]
    queued = flow_broker(broker_url, flow)
    with asyncio.Runner() as loop:  # one connection to the broker, asked every interval
        loop.run(queued.connect())
        try:
            while True:
                last = store.last_run(flow.name)
                reports = store.worker_reports(last[0]) if last else []
                depths = loop.run(queued.depth(queues)) if queues else {}
                view, _, _ = metrics.update(reports, depths)
                view["run"] = {"id": last[0], "status": last[1]} if last else None
                yield view
                time.sleep(INTERVAL)
        finally:
            loop.run(queued.close())
            store.close()


def _network_views(api: Any, flow: str | None) -> Iterator[dict[str, Any]]:
    params = {"flow": flow} if flow else {}
    for message in api.stream("/metrics/stream", **params):
        if message.get("type") == "metrics":
            yield message


def _show(views: Iterator[dict[str, Any]], once: bool, as_json: bool) -> None:
    if as_json or once:
        shown: dict[str, dict[str, Any]] = {}
        for view in views:
            if once and not view["interval"]:
                continue  # the first reading has totals but no rates yet
            if as_json:
                click.echo(json.dumps(view))
            else:
                Console().print(render(view))
            shown[view["flow"]] = view
            if once:
                return
        return
    latest: dict[str, dict[str, Any]] = {}
    with Live(Group(), refresh_per_second=4, screen=False) as live:
        try:
            for view in views:
                latest[view["flow"]] = view
                live.update(Group(*(render(v) for _, v in sorted(latest.items()))))
        except KeyboardInterrupt:
            pass


def _ms(p: dict[str, Any], key: str) -> str:
    v = p.get(key)
    return "-" if v is None else (f"{v:,.1f}" if v < 1000 else f"{v / 1000:,.1f}s")


def render(view: dict[str, Any]) -> Group:
    """A view as two tables: processors, then connections."""
    at = datetime.datetime.fromtimestamp(view["at"]).strftime("%H:%M:%S")
    procs = Table(title=f"{view['flow']} — {at}", title_justify="left")
    cols = ("processor", "inst", "hosts", "in/s", "out/s", "err/s", "busy", "p50 ms", "p99 ms")
    for col in (*cols, "age p99", "in", "errors", "dead", "status"):
        procs.add_column(
            col, justify="left" if col in ("processor", "hosts", "status") else "right"
        )
    for name, p in view["processors"].items():
        r, t = p["rates"], p["totals"]
        status = p["status"]
        if status in ("error", "failed"):
            status = f"[red]{status}[/]"
        elif status == "back-pressure":
            status = f"[yellow]{status}[/]"
        procs.add_row(
            name,
            str(p["instances"]),
            f"{r['in']:,.0f}",
            f"{r['out']:,.0f}",
            f"{r['errors']:,.0f}",
            f"{p['busy']:.0%}",
            _ms(p["process_ms"], "p50"),
            _ms(p["process_ms"], "p99"),
            _ms(p["latency_ms"], "p99"),
            f"{t['dead']:,}",
            status,
            ",".join(p["hosts"]),
        )
    conns = Table()
    for col in ("connection", "depth", "bytes", "rate/s", "back pressure"):
        conns.add_column(col, justify="left" if col == "connection" else "right")
    for name, c in view["connections"].items():
        conns.add_row(
            name,
            "-" if c["depth"] is None else f"{c['depth']:,}",
            "-" if c["bytes"] is None else f"{c['bytes']:,}",
            f"{c['rate']:,.0f}",
            "[yellow]on[/]" if c["back_pressure"] else "off",
        )
    return Group(procs, conns)


@click.command(epilog=EPILOG)
@click.argument("flow")
@click.option("--since", default="1h", show_default=True, help="How far back: 90s, 15m, 6h, 7d.")
@click.option(
    "--by", type=click.Choice(["processor", "connection"]), default="processor", show_default=True
)
@click.option(
    "--resolution",
    type=click.Choice(["1s", "1m", "1h"]),
    default=None,
    help="Rows of 1 s, 1 min or 1 h [default: the finest kept that long, at most ~2,000 rows].",
)
@where("A network's server (FLOW: a deployed flow's name).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def stats(
    flow: str,
    since: str,
    by: str,
    resolution: str | None,
    state_dir: str | None,
    server: str | None,
    ca: str | None,
    as_json: bool,
) -> None:
    """FLOW's metrics history: per processor (or connection) and interval, messages in and
    out, errors, dead letters, rate, depth, busy share and processing-time percentiles."""
    seconds = parse_duration(since)
    if in_network(server):
        from ..network.client import Api

        params: dict[str, Any] = {"since": seconds, "by": by}
        if resolution:
            params["resolution"] = resolution
        rows = Api(server, ca)("GET", f"/flows/{flow}/stats", params=params)
        name = flow
    else:
        model = load_flow(flow)
        name = model.name
        _, _, state_url = state_paths(model, state_dir)
        store = StateStore(state_url)
        try:
            res = {"1s": 1, "1m": 60, "1h": 3600}[resolution] if resolution else None
            rows = History(store.engine).points(name, time.time() - seconds, None, res, kind=by)
        finally:
            store.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no metrics of {name} in the last {since}", err=True)
        return
    day = datetime.datetime.fromtimestamp(rows[0]["at"]).strftime("%Y-%m-%d")
    title = f"{name}: per {by}, every {rows[0]['resolution']}, from {day}"
    table = Table(title=title, title_justify="left")
    cols = ["time", by, "in", "out", "err", "dead", "rate/s", "depth"]
    if by == "processor":
        cols += ["busy", "p50 ms", "p99 ms"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("time", by) else "right")
    for r in rows:
        cells = [
            datetime.datetime.fromtimestamp(r["at"]).strftime("%H:%M:%S"),
            r["name"],
            f"{r['received']:,}",
            f"{r['emitted']:,}",
            f"{r['errors']:,}",
            f"{r['dead']:,}",
            f"{r['rate']:,.1f}",
            f"{r['depth']:,}",
        ]
        if by == "processor":
            cells += [
                f"{r['busy']:.0%}",
                _ms(r["process_ms"], "p50"),
                _ms(r["process_ms"], "p99"),
            ]
        table.add_row(*cells)
    Console().print(table)


@click.command(epilog=EPILOG)
@click.argument("message_id")
@click.argument("flow", required=False)
@where("A network's server (FLOW: a deployed flow's name; every flow you may read when not given).")
@click.option("--json", "as_json", is_flag=True, help="Print the tree as JSON.")
def trace(
    message_id: str,
    flow: str | None,
    state_dir: str | None,
    server: str | None,
    ca: str | None,
    as_json: bool,
) -> None:
    """The lineage of MESSAGE_ID: the tree of messages it belongs to, from the one that entered
    the flow to every sink, with where each waited, how long it took and where it failed.
    The flow records lineage when its settings say so (lineage: full, or {sampled: 0.01})."""
    if in_network(server):
        from ..network.client import Api

        api = Api(server, ca)
        names = [flow] if flow else [f["name"] for f in api("GET", "/flows")]
        tree = None
        for name in names:
            try:
                tree = api("GET", f"/flows/{name}/trace/{message_id}")
                break
            except ElasticCodeError as exc:
                if len(names) == 1 or "no lineage" not in str(exc):
                    raise
        if tree is None:
            raise ElasticCodeError(f"no lineage of message {message_id!r} in any flow you may read")
    else:
        if flow is None:
            raise click.UsageError("give the flow (a flow file), or --server URL for a network's")
        model = load_flow(flow)
        _, _, state_url = state_paths(model, state_dir)
        store = StateStore(state_url)
        try:
            node = lineage.trace(store.engine, model.name, message_id)
        finally:
            store.close()
        if node is None:
            raise ElasticCodeError(
                f"no lineage of message {message_id!r} in {model.name}: its lineage is "
                "recorded when the flow's settings say lineage: full (or sampled: SHARE)"
            )
        tree = node.as_dict()
    if as_json:
        click.echo(json.dumps(tree, indent=2))
    else:
        Console().print(render_trace(tree, message_id))


def render_trace(node: dict[str, Any], asked: str, into: Tree | None = None) -> Tree:
    """A lineage tree as text: each message with its events, then the messages it led to."""
    label = f"[bold]{node['id']}[/]" + (" [cyan](asked)[/]" if node["id"] == asked else "")
    branch = Tree(label) if into is None else into.add(label)
    for e in node["events"]:
        branch.add(_describe(e))
    for child in node["children"]:
        render_trace(child, asked, branch)
    return branch


def _describe(e: dict[str, Any]) -> str:
    at = datetime.datetime.fromtimestamp(e["at"]).strftime("%H:%M:%S.%f")[:-3]
    who = f"{e['processor']}[{e['instance']}] on {e['host']} at {at}"
    kind = e["event"]
    if kind in ("created", "routed"):
        verb = "created by" if kind == "created" else "emitted by"
        return f"{verb} {who} to port {e.get('port')} ({e.get('size', 0):,} bytes)"
    timing = f"waited {e.get('wait', 0) * 1000:,.1f} ms, took {e.get('duration', 0) * 1000:,.1f} ms"
    if kind == "processed":
        n = e.get("outputs", 0)
        return f"processed by {who}: {timing}, {n} output(s){' (fork)' if n > 1 else ''}"
    if kind == "dropped":
        return f"ended at {who}: {timing}, nothing emitted"
    attempt = f" (attempt {e['attempt']})" if e.get("attempt") else ""
    return f"[red]{kind}[/] by {who}{attempt}: {e.get('error', '')}"


@click.command("export-history")
@click.argument("flow")
@click.option("--since", default="1d", show_default=True, help="How far back: 15m, 6h, 7d.")
@click.option("--until", "until_ago", default="0s", show_default=True, help="Up to how long ago.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet"]),
    default="csv",
    show_default=True,
    help="Parquet needs the export extra (pyarrow).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="The folder to write metrics.FORMAT and lineage.FORMAT into.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="One host: where the flow keeps its state [default: ./.elasticcode/FLOW-NAME].",
)
@click.option(
    "--db",
    "db_url",
    default=None,
    metavar="URL",
    help="A network's state store (FLOW: a deployed flow's name) [default: $ELASTICCODE_DB for a flow name].",
)
def export_history(
    flow: str,
    since: str,
    until_ago: str,
    fmt: str,
    output: str,
    state_dir: str | None,
    db_url: str | None,
) -> None:
    """Write FLOW's metrics history and lineage of a time range to CSV or Parquet files, for
    analysis elsewhere (their columns: docs/metrics.md). On one host FLOW is the flow file;
    for a network, give its state store with --db and FLOW as the deployed flow's name."""
    from ..metrics.export import export

    db_url = db_url or (os.environ.get("ELASTICCODE_DB") if not Path(flow).exists() else None)
    if db_url:
        name, url = flow, db_url
    else:
        model = load_flow(flow)
        name, (_, _, url) = model.name, state_paths(model, state_dir)
    now = time.time()
    start, end = now - parse_duration(since), now - parse_duration(until_ago)
    store = StateStore(url)
    try:
        written = export(
            store.engine,
            name,
            start,
            end,
            Path(output),
            fmt,
            progress=lambda table, n: click.echo(f"{table}: {n:,} rows…", err=True),
        )
    finally:
        store.close()
    for table, (path, n) in written.items():
        click.echo(f"{path}: {n:,} {table} rows")
