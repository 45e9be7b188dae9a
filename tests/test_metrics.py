"""Metrics: histograms that add up, views from workers' reports (restarts counted from zero),
the history's rollups and retention, a one-host run measured end to end (`stats`, `top`), and
a network's websocket stream, Prometheus scrape and history through a real server."""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from elasticcode.flow import Flow
from elasticcode.local import queues as control
from elasticcode.metrics import BUCKETS, Histogram
from elasticcode.metrics.history import History, parse_retention
from elasticcode.metrics.hub import Subscription
from elasticcode.metrics.view import FlowMetrics
from elasticcode.store import StateStore, WorkerReport

from .network import ELASTICCODE, Network, add_user, free_port, redis_network

FLOW = Flow.from_dict(
    {
        "name": "m",
        "processors": [
            {"name": "src", "code": "steps:gen", "source": True},
            {"name": "work", "code": "steps:work"},
        ],
        "connections": [{"from": "src", "to": "work", "max_messages": 100}],
    }
)


def test_histograms_add_up_and_their_quantiles_fall_in_the_right_bucket() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-6, 1.5) for _ in range(5000)]
    a, b = Histogram(), Histogram()
    for i, v in enumerate(values):
        (a if i % 2 else b).observe(v)
    both = a + b
    assert both.count == 5000 and abs(both.sum - sum(values)) < 1e-6
    assert (both - a).counts == b.counts
    for q in (0.5, 0.9, 0.99):
        exact = sorted(values)[int(q * len(values)) - 1]
        got = both.quantile(q)
        assert got is not None
        # the estimate lies in the bucket that holds the exact quantile
        i = next(i for i, bound in enumerate(BUCKETS) if exact <= bound)
        assert (BUCKETS[i - 1] if i else 0.0) <= got <= BUCKETS[i]
    assert Histogram.from_wire(both.to_wire()).counts == both.counts
    assert Histogram().quantile(0.5) is None


def _report(pid: int, received: int, status: str = "running", **kw: Any) -> WorkerReport:
    process = Histogram()
    for _ in range(received):
        process.observe(0.002)
    r = WorkerReport("w1", 1, "work", 0, pid, status, received=received, emitted=received, **kw)
    r.host = "h1"
    r.metrics = {"process": process.to_wire(), "queues": {"m.src.success-work.input": received}}
    return r


def test_a_view_counts_each_interval_once_and_a_restarted_worker_from_zero() -> None:
    fm = FlowMetrics(FLOW)
    view, events, _ = fm.update([_report(10, 500)], now=100.0)
    assert view["interval"] == 0 and view["processors"]["work"]["totals"]["received"] == 500
    assert view["processors"]["work"]["rates"]["in"] == 0.0  # the first reading: no rates
    view, events, deltas = fm.update([_report(10, 700)], now=102.0)
    work = view["processors"]["work"]
    assert work["rates"]["in"] == 100.0 and deltas["work"].counts["received"] == 200
    assert work["process_ms"]["count"] == 200 and 1.0 <= work["process_ms"]["p50"] <= 2.5
    assert view["connections"]["src.success->work.input"]["rate"] == 100.0
    # the worker restarted (another pid): what it reports now is all new
    view, events, deltas = fm.update([_report(11, 50)], now=103.0)
    assert deltas["work"].counts["received"] == 50
    assert [e["kind"] for e in events] == ["started"]
    view, events, _ = fm.update([_report(11, 60, "back-pressure", dead=2)], now=104.0)
    assert sorted(e["kind"] for e in events) == ["back-pressure-on", "dead-letter"]
    assert view["processors"]["work"]["status"] == "back-pressure"


def test_a_subscription_gets_only_what_it_asked_for() -> None:
    fm = FlowMetrics(FLOW)
    fm.update([_report(10, 1)], now=1.0)
    view, _, _ = fm.update([_report(10, 5)], now=2.0)
    sub = Subscription(flow="m", processor="src")
    assert set(sub.pick(view)["processors"]) == {"src"}  # type: ignore[index]
    assert Subscription(flow="other").pick(view) is None
    assert Subscription(allowed=lambda f: f != "m").pick(view) is None
    conn = Subscription(connection="src.success->work.input").pick(view)
    assert conn is not None and conn["processors"] == {} and len(conn["connections"]) == 1


def test_the_history_rolls_seconds_into_minutes_and_hours_and_forgets_by_retention(
    tmp_path: Path,
) -> None:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    history = History(store.engine, parse_retention("1s=10m"))
    fm = FlowMetrics(FLOW)
    start = 1_800_000_000.0  # a whole hour
    fm.update([_report(10, 0)], now=start - 1)
    for s in range(150):  # 2.5 minutes, 10 messages a second
        view, _, deltas = fm.update([_report(10, 10 * (s + 1))], now=start + s + 0.5)
        history.record(view, deltas, now=start + s + 0.5)
    history.flush(start + 151, everything=True)
    seconds = history.points("m", start, start + 200, resolution=1, names=["work"])
    minutes = history.points("m", start, start + 200, resolution=60, names=["work"])
    hours = history.points("m", start, start + 200, resolution=3600, names=["work"])
    assert len(seconds) == 150 and all(p["received"] == 10 for p in seconds)
    assert [p["received"] for p in minutes] == [600, 600, 300]
    assert [p["received"] for p in hours] == [1500]
    assert minutes[0]["process_ms"]["count"] == 600 and minutes[0]["rate"] == 10.0
    links = history.points("m", start, start + 200, resolution=60, kind="connection")
    assert [p["received"] for p in links] == [600, 600, 300]
    # ten minutes of 1 s rows kept; the minutes and hours stay
    assert history.prune(start + 150 + 600 + 30) > 0
    assert history.points("m", start, start + 200, resolution=1) == []
    assert len(history.points("m", start, start + 200, resolution=60, names=["work"])) == 3
    store.close()


STEPS = """
import time

def gen(n):
    for i in range(n):
        yield {"i": i}

def work(payload):
    time.sleep(0.001)
    return payload

def sink(payload):
    pass
"""


def _flow_dir(tmp_path: Path, n: int) -> Path:
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "flow.yaml").write_text(
        "name: measured\n"
        "processors:\n"
        f"  - {{name: gen, code: steps:gen, source: true, config: {{n: {n}}}}}\n"
        "  - {name: work, code: steps:work, instances: 2}\n"
        "  - {name: sink, code: steps:sink, instances: 1}\n"
        "connections:\n"
        "  - {from: gen, to: work}\n"
        "  - {from: work, to: sink}\n"
    )
    return tmp_path / "flow.yaml"


def _cli(*args: str, cwd: Path) -> str:
    env = {**os.environ, "COLUMNS": "200"}  # a wide terminal: tables unwrapped
    done = subprocess.run([ELASTICCODE, *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_run_is_measured_and_its_history_kept(tmp_path: Path) -> None:
    n = 3000
    flow = _flow_dir(tmp_path, n)
    _cli("run", str(flow), cwd=tmp_path)
    # every message in the history once, whichever resolution is read
    for resolution in ("1s", "1m", "1h"):
        rows = json.loads(
            _cli(
                "stats",
                str(flow),
                "--since",
                "1h",
                "--resolution",
                resolution,
                "--json",
                cwd=tmp_path,
            )
        )
        got = {p: sum(r["received"] for r in rows if r["name"] == p) for p in ("work", "sink")}
        assert got == {"work": n, "sink": n}, resolution
        assert sum(r["emitted"] for r in rows if r["name"] == "gen") == n
    rows = json.loads(_cli("stats", str(flow), "--by", "connection", "--json", cwd=tmp_path))
    assert sum(r["received"] for r in rows if r["name"] == "work.success->sink.input") == n
    # what the workers measured: every message timed; its age at least its wait
    store = StateStore(f"sqlite:///{tmp_path / '.elasticcode/measured/state.db'}")
    reports = store.worker_reports(1)
    store.close()
    sink = next(r for r in reports if r.processor == "sink")
    process = Histogram.from_wire(sink.metrics["process"])
    wait = Histogram.from_wire(sink.metrics["wait"])
    age = Histogram.from_wire(sink.metrics["latency"])
    assert process.count == wait.count == age.count == n
    assert age.sum >= wait.sum > 0
    assert sum(r.bytes_in for r in reports if r.processor == "work") == sum(
        r.bytes_out for r in reports if r.processor == "gen"
    )
    view = json.loads(_cli("top", str(flow), "--json", "--once", cwd=tmp_path).splitlines()[0])
    assert view["v"] == 1 and view["processors"]["sink"]["totals"]["received"] == n
    assert view["run"]["status"] == "finished"
    assert view["connections"]["gen.success->work.input"]["depth"] == 0
    shown = _cli("top", str(flow), "--once", cwd=tmp_path)
    assert "work.success->sink.input" in shown and "p99 ms" in shown


# -- a network ---------------------------------------------------------------------------------


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    yield from redis_network(tmp_path)


def test_a_network_streams_its_metrics_exports_them_to_prometheus_and_keeps_them(
    net: Network,
) -> None:
    server = net.start_server()
    agent_port = free_port()
    net.start_agent("one", capacity=4, extra=["--metrics-port", str(agent_port)])
    net.start_agent("two", capacity=4)
    flow = net.flow_file(
        """
        settings: {lineage: full}
        processors:
          - {name: a, code: steps:inc, instances: 2}
          - {name: sink, code: steps:sink, instances: 1}
        connections:
          - {from: a, to: sink}
        """
    )
    net.cli("apply", str(flow))
    net.wait(lambda: net.running({"a": 2, "sink": 1}), 60, "the flow to run")
    ws_url = server.url.replace("http", "ws", 1) + "/api/v1/metrics/stream"
    seen: list[dict[str, Any]] = []
    done = threading.Event()

    def listen() -> None:
        with connect(
            f"{ws_url}?flow={net.flow_name}&processor=sink", additional_headers=net.headers
        ) as ws:
            while not done.is_set():
                try:
                    seen.append(json.loads(ws.recv(timeout=0.5)))
                except TimeoutError:
                    continue

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    sent = range(4000)
    started = time.time()
    ids = control.send(Flow.load(flow), "a", ({"n": n} for n in sent), broker=net.broker)
    queued = time.time()  # the 4,000 are on the queue: the flow has work from here
    net.account(sent, timeout=90)
    time.sleep(2.5)  # the interval that counts the last of them, pushed
    done.set()
    listener.join(10)
    views = [m for m in seen if m.get("type") == "metrics"]
    assert seen[0]["type"] == "hello" and len(views) >= 3
    assert all(set(v["processors"]) == {"sink"} for v in views)  # what was asked for only
    moving = [v for v in views if v["processors"]["sink"]["rates"]["in"] > 0]
    assert moving, "no view showed the sink taking messages"
    # the counts match what the sink saw, and the rates show while the burst is moving (how
    # soon is printed as a figure; on a loaded machine it can pass two seconds)
    sunk = sum(net.delivered().values())
    assert max(v["processors"]["sink"]["totals"]["received"] for v in views) == sunk
    first = min(v["at"] for v in moving)
    print(
        f"first view with the sink's rate: {first - started:.2f}s after sending began, "
        f"{first - queued:.2f}s after the messages were queued"
    )
    assert first - queued < 15.0
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(views)]
    print(f"views pushed: {len(views)}, interval median {sorted(gaps)[len(gaps) // 2]:.2f}s")
    assert sorted(gaps)[len(gaps) // 2] < 1.6
    # Prometheus: counters per instance and host, summed over the flow's instances
    text = httpx.get(f"{server.url}/api/v1/metrics", headers=net.headers, timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    received = [
        s
        for s in families["elasticcode_messages_received"].samples
        if s.labels["flow"] == net.flow_name and s.name.endswith("_total")
    ]
    assert sum(s.value for s in received if s.labels["processor"] == "a") == len(sent)
    assert {s.labels["host"] for s in received} <= {"host-one", "host-two"}
    buckets = [
        s
        for s in families["elasticcode_processing_seconds"].samples
        if s.name.endswith("_count") and s.labels["flow"] == net.flow_name
    ]
    assert sum(s.value for s in buckets if s.labels["processor"] == "sink") == len(sent)
    assert httpx.get(f"{server.url}/api/v1/metrics", timeout=10).status_code == 401
    # one agent: its own scrape, and the server's stream narrowed to it, say the same
    on_one = sum(
        s.value for s in received if s.labels["processor"] == "a" and s.labels["host"] == "host-one"
    )
    agent_text = httpx.get(f"http://127.0.0.1:{agent_port}/metrics", timeout=10).text
    own = [
        s
        for f in text_string_to_metric_families(agent_text)
        if f.name == "elasticcode_messages_received"
        for s in f.samples
        if s.name.endswith("_total") and s.labels["processor"] == "a"
    ]
    assert {s.labels["host"] for s in own} == {"host-one"}
    assert sum(s.value for s in own) == on_one
    with connect(f"{ws_url}?flow={net.flow_name}&agent=one", additional_headers=net.headers) as ws:
        while (m := json.loads(ws.recv(timeout=10)))["type"] != "metrics":
            pass
    assert m["host"] == "host-one"
    assert m["processors"]["a"]["totals"]["received"] == on_one
    assert m["processors"]["a"]["hosts"] in ([], ["host-one"])
    # the history, written by the leader, through the API and the CLI
    rows = net.api(
        "GET", f"/flows/{net.flow_name}/stats", params={"since": time.time() - started + 5}
    )
    assert sum(r["received"] for r in rows if r["name"] == "sink") == len(sent)
    net.env["COLUMNS"] = "200"  # a wide terminal: tables unwrapped
    out = net.cli("stats", net.flow_name, "--server", server.url, "--since", "5m").stdout
    assert "sink" in out and "p99 ms" in out
    top = net.cli("top", net.flow_name, "--server", server.url, "--json", "--once").stdout
    view = json.loads(top.splitlines()[0])
    assert view["processors"]["sink"]["totals"]["received"] >= len(sent)
    assert view["processors"]["a"]["instances"] == 2
    # lineage, written by the flow's workers as the flow's own database role, across a
    # fan-out, a retry and a join
    (net.root / "hops.py").write_text(HOPS.format(out=str(net.root / "hops")))
    (net.root / "hops").mkdir()
    hops = net.root / "hops.yaml"
    hops.write_text(f"name: {net.flow_name}h\n" + HOPS_FLOW)
    net.cli("apply", str(hops))
    hop_ids = control.send(Flow.load(hops), "fan", ({"n": n} for n in range(20)), broker=net.broker)
    joins = net.root / "hops" / "sink.log"
    net.wait(
        lambda: joins.exists() and len(joins.read_text().splitlines()) >= 20,
        90,
        "20 joined messages at the sink",
    )
    time.sleep(1.5)  # the workers write lineage with their reports, twice a second
    joined = json.loads(net.cli("trace", hop_ids[5], "--server", server.url, "--json").stdout)
    _check_hops(joined, hop_ids[5])
    # the simple flow's trace: a message through a and the sink

    tree = json.loads(
        net.cli("trace", ids[7], net.flow_name, "--server", server.url, "--json").stdout
    )
    assert tree["id"] == ids[7] and [e["event"] for e in tree["events"]] == ["processed"]
    assert tree["events"][0]["host"] in ("host-one", "host-two")
    assert tree["events"][0]["revision"] == 1  # the deployed revision its worker runs
    (child,) = tree["children"]
    assert [e["event"] for e in child["events"]] == ["routed", "dropped"]


# -- lineage ------------------------------------------------------------------------------------

LINEAGE_STEPS = """
def gen(n):
    for i in range(n):
        yield {"i": i}

def split(payload):
    yield {**payload, "half": 0}
    yield {**payload, "half": 1}

def picky(payload):
    if payload["i"] == 3 and payload["half"] == 1:
        raise ValueError("three is odd")
    return payload

def sink(payload):
    pass
"""


def _lineage_flow(tmp_path: Path, lineage: str, n: int) -> Path:
    (tmp_path / "steps.py").write_text(LINEAGE_STEPS)
    (tmp_path / "flow.yaml").write_text(
        "name: lin\n"
        f"settings: {{lineage: {lineage}}}\n"
        "processors:\n"
        f"  - {{name: gen, code: steps:gen, source: true, config: {{n: {n}}}}}\n"
        "  - {name: split, code: steps:split, instances: 1}\n"
        "  - {name: picky, code: steps:picky, instances: 1, retries: {max: 1, backoff: 10ms}}\n"
        "  - {name: sink, code: steps:sink, instances: 1}\n"
        "connections:\n"
        "  - {from: gen, to: split}\n"
        "  - {from: split, to: picky}\n"
        "  - {from: picky, to: sink}\n"
    )
    return tmp_path / "flow.yaml"


def _lineage_rows(tmp_path: Path) -> list[Any]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / '.elasticcode/lin/state.db'}")
    with engine.connect() as db:
        rows = db.execute(sa.text("SELECT * FROM lineage")).all()
    engine.dispose()
    return rows


def test_a_message_is_traced_from_its_source_to_every_sink_and_where_it_failed(
    tmp_path: Path,
) -> None:
    flow = _lineage_flow(tmp_path, "full", 10)
    subprocess.run([ELASTICCODE, "run", str(flow)], cwd=tmp_path, capture_output=True)
    rows = _lineage_rows(tmp_path)
    dead = [r for r in rows if r.event == "dead-lettered"]
    assert len(dead) == 1 and "three is odd" in dead[0].error
    tree = json.loads(_cli("trace", dead[0].message_id, str(flow), "--json", cwd=tmp_path))
    # the tree starts at the source's message: created, then forked in two by split
    assert [e["event"] for e in tree["events"]] == ["created", "processed"]
    assert tree["events"][1]["processor"] == "split" and tree["events"][1]["outputs"] == 2
    failed, fine = sorted(tree["children"], key=lambda c: c["id"] != dead[0].message_id)
    assert [e["event"] for e in failed["events"]] == ["routed", "retried", "dead-lettered"]
    assert failed["children"] == []
    assert [e["event"] for e in fine["events"]] == ["routed", "processed"]
    (end,) = fine["children"]
    assert [e["event"] for e in end["events"]] == ["routed", "dropped"]
    assert end["events"][1]["processor"] == "sink" and end["events"][1]["wait"] >= 0
    # every message of the run: 10 created, each in 2 halves, 19 reaching the sink
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.event] = counts.get(r.event, 0) + 1
    assert counts == {
        "created": 10, "processed": 29, "routed": 39, "dropped": 19, "retried": 1,
        "dead-lettered": 1,
    }  # fmt: skip
    shown = _cli("trace", end["id"], str(flow), cwd=tmp_path)
    assert "(asked)" in shown and "dead-lettered by picky[0]" in shown and "(fork)" in shown
    missing = subprocess.run(
        [ELASTICCODE, "trace", "0" * 32, str(flow)], cwd=tmp_path, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no lineage of message" in missing.stderr
    # exported for mining: the same rows as CSV and as Parquet
    import pyarrow.parquet as pq

    for fmt in ("csv", "parquet"):
        out = _cli(
            "export-history", str(flow), "--format", fmt, "-o", str(tmp_path / fmt), cwd=tmp_path
        )
        assert f"lineage.{fmt}: {len(rows)} lineage rows" in out
    with open(tmp_path / "csv" / "lineage.csv") as f:
        exported = list(csv.DictReader(f))
    assert len(exported) == len(rows) and {r["event"] for r in exported} == set(counts)
    table = pq.read_table(tmp_path / "parquet" / "lineage.parquet")
    assert table.num_rows == len(rows) and "duration" in table.column_names
    points = pq.read_table(tmp_path / "parquet" / "metrics.parquet").to_pylist()
    assert sum(p["received"] for p in points if p["resolution"] == 1 and p["name"] == "sink") == 19
    # the documentation's analysis of an export answers its question
    analyze = Path(__file__).parents[1] / "examples" / "metrics" / "analyze.py"
    answer = subprocess.run(
        [sys.executable, str(analyze), str(tmp_path / "parquet")], capture_output=True, text=True
    )
    assert answer.returncode == 0, answer.stderr
    assert "dominates the latency" in answer.stdout and "/s" in answer.stdout


def test_sampled_lineage_keeps_whole_trees(tmp_path: Path) -> None:
    flow = _lineage_flow(tmp_path, "{sampled: 0.25}", 400)
    subprocess.run([ELASTICCODE, "run", str(flow)], cwd=tmp_path, capture_output=True)
    rows = _lineage_rows(tmp_path)
    created = {r.message_id for r in rows if r.event == "created"}
    assert 50 <= len(created) <= 150  # about a quarter of 400
    # every traced source message's halves and their ends are there; nothing of the others
    halves = {r.message_id for r in rows if r.event == "routed" and r.parent in created}
    assert len(halves) == 2 * len(created)
    assert {r.parent for r in rows if r.event == "routed" and r.processor == "split"} == created
    ends = [r for r in rows if r.event == "dropped"]
    assert len(ends) == 2 * len(created) - (
        1 if any(r.event == "dead-lettered" for r in rows) else 0
    )


def test_a_run_serves_its_metrics_when_asked(tmp_path: Path) -> None:
    flow = _flow_dir(tmp_path, 4000)
    port = free_port()
    proc = subprocess.Popen(
        [ELASTICCODE, "run", str(flow), "--forever", "--quiet", "--metrics-port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ws = connect(f"ws://127.0.0.1:{port}/metrics/stream?processor=work", open_timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "no endpoint"
                time.sleep(0.2)
        with ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            views = []
            while not views or views[-1]["processors"]["work"]["totals"]["received"] < 4000:
                m = json.loads(ws.recv(timeout=10))
                if m["type"] == "metrics":
                    assert set(m["processors"]) == {"work"}
                    views.append(m)
        assert any(v["processors"]["work"]["rates"]["in"] > 0 for v in views)

        def received() -> dict[str, float]:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            return {
                s.labels["processor"]: s.value
                for f in text_string_to_metric_families(text)
                if f.name == "elasticcode_messages_received"
                for s in f.samples
                if s.labels["instance"] == "0" and s.name.endswith("_total")
            }

        deadline = time.monotonic() + 30  # the sink, a stage behind, gets there too
        while received().get("sink") != 4000:
            assert time.monotonic() < deadline, f"the scrape says {received()}"
            time.sleep(0.2)
        # the example client of the documentation, against the same stream
        client = Path(__file__).parents[1] / "examples" / "metrics" / "client.py"
        shown = subprocess.run(
            [sys.executable, str(client), f"ws://127.0.0.1:{port}/metrics/stream", "--views", "2"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shown.returncode == 0, shown.stderr
        assert "measured.work:" in shown.stdout and "instance(s)" in shown.stdout
    finally:
        proc.send_signal(2)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


HOPS = """
import os

from elasticcode import Output

OUT = {out!r}

def fan(payload):
    yield Output(payload, "left")
    yield Output(payload, "right")

def flaky(payload, ctx):
    if ctx.message.delivery == 1:
        raise RuntimeError("the first try fails")
    return payload

def sink(payload):
    with open(os.path.join(OUT, "sink.log"), "a") as f:
        f.write(f"{{payload['a']['n']}} {{os.getpid()}} -\\n")
"""

HOPS_FLOW = """
settings: {lineage: full}
processors:
  - {name: fan, code: hops:fan, outputs: [left, right], instances: 1}
  - {name: flaky, code: hops:flaky, retries: {max: 2, backoff: 10ms}, instances: 1}
  - {name: join, code: "elasticcode.builtins:Join", inputs: [a, b], config: {key: n}, instances: 1}
  - {name: sink, code: hops:sink, instances: 1}
connections:
  - {from: fan.left, to: flaky}
  - {from: flaky, to: join.a}
  - {from: fan.right, to: join.b}
  - {from: join, to: sink}
"""


def _flat(node: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for e in node["events"]:
        yield node["id"], e
    for c in node["children"]:
        yield from _flat(c)


def _check_hops(tree: dict[str, Any], sent_id: str) -> None:
    """Every hop of a message through a fan-out, a retry and a join is in its trace."""
    events = list(_flat(tree))
    assert tree["id"] == sent_id
    fan = [e for mid, e in events if mid == sent_id and e["event"] == "processed"]
    assert fan and fan[0]["processor"] == "fan" and fan[0]["outputs"] == 2
    kinds = [(e["processor"], e["event"]) for _, e in events]
    assert ("flaky", "retried") in kinds and ("flaky", "processed") in kinds
    joined = {(mid, e["parent"]) for mid, e in events if e["event"] == "joined"}
    (child,) = {mid for mid, _ in joined}
    assert len({p for _, p in joined}) == 2  # one record per part joined
    ends = [e for mid, e in events if mid == child and e["event"] == "dropped"]
    assert ends and ends[0]["processor"] == "sink"
    print("trace events:", sorted({f"{p}:{k}" for p, k in kinds}))


def test_a_trace_shows_every_hop_of_a_fan_out_a_retry_and_a_join_on_one_host(
    tmp_path: Path,
) -> None:
    (tmp_path / "hops.py").write_text(HOPS.format(out=str(tmp_path)))
    path = tmp_path / "flow.yaml"
    path.write_text("name: hops\n" + HOPS_FLOW)
    flow = Flow.load(path)
    ids = control.send(flow, "fan", ({"n": n} for n in range(20)), state_dir=tmp_path / "s")
    _cli("run", str(path), "--state-dir", str(tmp_path / "s"), cwd=tmp_path)
    assert len((tmp_path / "sink.log").read_text().splitlines()) == 20
    tree = json.loads(
        _cli("trace", ids[3], str(path), "--state-dir", str(tmp_path / "s"), "--json", cwd=tmp_path)
    )
    _check_hops(tree, ids[3])


def test_a_replayed_dead_letter_is_in_its_lineage(tmp_path: Path) -> None:
    flow = _lineage_flow(tmp_path, "full", 5)
    subprocess.run([ELASTICCODE, "run", str(flow)], cwd=tmp_path, capture_output=True)
    (dead,) = [r for r in _lineage_rows(tmp_path) if r.event == "dead-lettered"]
    _cli("dead-letters", "replay", str(flow), "--all", cwd=tmp_path)
    tree = json.loads(_cli("trace", dead.message_id, str(flow), "--json", cwd=tmp_path))
    events = [e for mid, e in _flat(tree) if mid == dead.message_id]
    assert [e["event"] for e in events][-1] == "replayed"
    assert events[-1]["processor"] == "picky" and "three is odd" in events[-1]["error"]


def test_a_second_written_twice_adds_up(tmp_path: Path) -> None:
    """A run resumed within the second its last one ended in (or two servers that both
    thought they led): the second's counts add up, nothing is refused or lost."""
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    at = 1_800_000_000.2
    for _ in range(2):
        history, fm = History(store.engine), FlowMetrics(FLOW)
        fm.update([_report(10, 0)], now=at - 1)
        view, _, deltas = fm.update([_report(10, 7)], now=at)
        history.record(view, deltas, now=at)
        history.flush(at, everything=True)
    (point,) = history.points("m", at - 5, at + 5, resolution=1, names=["work"])
    assert point["received"] == 14 and point["process_ms"]["count"] == 14
    (minute,) = history.points("m", at - 60, at + 60, resolution=60, names=["work"])
    assert minute["received"] == 14
    store.close()


def test_a_network_lists_and_replays_its_dead_letters_and_their_lineage(net: Network) -> None:
    server = net.start_server()
    net.start_agent("one", capacity=3)
    fixed = net.picky()
    flow = net.deploy(
        """
        settings: {lineage: full}
        processors:
          - {name: picky, code: "picky:picky", retries: {max: 0}, instances: 1}
          - {name: sink, code: steps:sink, instances: 1}
        connections:
          - {from: picky, to: sink}
        """,
        {"picky": 1, "sink": 1},
    )
    ids = control.send(Flow.load(flow), "picky", ({"n": n} for n in range(6)), broker=net.broker)
    net.wait(lambda: len(net.delivered()) == 5, 60, "five messages at the sink")
    listed: list[dict[str, Any]] = []

    def dead_letters() -> bool:
        listed[:] = json.loads(
            net.cli("dead-letters", "list", net.flow_name, "--server", server.url, "--json").stdout
        )
        return len(listed) == 1

    net.wait(dead_letters, 30, "the dead letter to be listed")
    (dead,) = listed
    assert dead["message_id"] == ids[3] and dead["processor"] == "picky"
    assert "ValueError: three is odd" in dead["error"] and '"n": 3' in dead["payload"]
    # message data is for operators: a viewer may see the flow, not its dead letters
    token = add_user(net, "watcher", "viewer")
    refused = httpx.get(
        f"{server.url}/api/v1/flows/{net.flow_name}/dead-letters",
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert refused.status_code == 403
    fixed.touch()
    out = net.cli(
        "dead-letters", "replay", net.flow_name, "--id", str(dead["id"]), "--server", server.url
    )
    assert "replayed 1 message(s)" in out.stdout
    net.account(range(6))
    time.sleep(1.5)  # lineage goes with the workers' reports
    tree = json.loads(
        net.cli("trace", ids[3], net.flow_name, "--server", server.url, "--json").stdout
    )
    events = [e["event"] for mid, e in _flat(tree) if mid == ids[3]]
    assert "dead-lettered" in events and "replayed" in events, events
    assert events.index("replayed") > events.index("dead-lettered")
    assert events[-1] in ("processed", "routed")  # taken again after the replay
    audit = net.api("GET", "/audit", params={"flow": net.flow_name})
    assert any("replayed 1 dead letter(s)" in a["text"] for a in audit)
    gone = json.loads(
        net.cli("dead-letters", "list", net.flow_name, "--server", server.url, "--json").stdout
    )
    assert gone == []
