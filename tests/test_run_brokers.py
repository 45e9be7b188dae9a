"""The same flows, unchanged, on every broker: each run end to end against the real server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import elasticcode
from elasticcode import Flow
from elasticcode.brokers import open_broker
from elasticcode.errors import BrokerError

from .conftest import FlowDir, kill_worker
from .services import service_url
from .test_examples import (
    ENRICHMENT,
    check_enriched_orders,
    run_csv_clean,
    run_to_end,
    run_wordcount,
)
from .test_run import CLI, PIPELINE, POISON, accounting


@pytest.fixture(params=["redis", "rabbitmq", "nats", "sqs"])
def broker(request: pytest.FixtureRequest) -> str:
    url = service_url(request.param)
    # SQS hands a killed worker's messages out again once their visibility runs out
    return url + "&visibility=5" if request.param == "sqs" else url


@pytest.fixture
def own_queues(broker: str) -> Iterator[Callable[[Flow], Flow]]:
    """Give a flow a name of its own, and delete its queues from the server afterwards."""
    flows: list[Flow] = []

    def rename(flow: Flow) -> Flow:
        flow.name = f"{flow.name}-{uuid.uuid4().hex[:8]}"
        flows.append(flow)
        return flow

    yield rename

    async def clean() -> None:
        b = open_broker(broker)
        await b.connect()
        for flow in flows:
            await b.delete(flow.queues())
        await b.close()

    asyncio.run(clean())


def test_pipeline_with_a_worker_killed(
    fd: FlowDir, sink_module: Callable[[], Path], broker: str, own_queues: Callable[[Flow], Flow]
) -> None:
    sink_module()
    fd.module("slow", "import time\n\ndef step(p):\n    time.sleep(0.001)\n    return p\n")
    # enough that the kill lands mid-run; the local SQS test server (moto) slows down with
    # every message it holds, so it gets fewer
    count = 400 if broker.startswith("sqs:") else 3000
    flow = own_queues(
        fd.flow(
            PIPELINE.replace("COUNT", str(count)).replace(
                '"steps:inc", instances: 2', '"slow:step", instances: 2'
            )
        )
    )
    killed: list[int] = []
    result = fd.run(flow, broker=broker, on_start=kill_worker("work", after=1.5, killed=killed))
    assert result.status == "finished"
    assert killed
    accounting(fd, count)


def test_enrichment_example_with_join(
    tmp_path: Path, broker: str, own_queues: Callable[[Flow], Flow]
) -> None:
    flow = own_queues(Flow.load(ENRICHMENT / "flow.yaml"))
    out = tmp_path / "orders.jsonl"
    flow.get("store").config = {"path": str(out)}
    assert run_to_end(flow, tmp_path, broker=broker) == {}
    check_enriched_orders(flow, out)


def test_wordcount_example(tmp_path: Path, broker: str, own_queues: Callable[[Flow], Flow]) -> None:
    run_wordcount(tmp_path, broker, own_queues)


def test_csv_clean_example(tmp_path: Path, broker: str, own_queues: Callable[[Flow], Flow]) -> None:
    run_csv_clean(tmp_path, broker, own_queues)


def test_connections_on_brokers_of_their_own(fd: FlowDir, sink_module: Callable[[], Path]) -> None:
    """One connection on Redis, the rest on the embedded default: a worker killed mid-run loses
    nothing, dead letters on either broker are listed and replayed by their N:ID names."""
    redis_py = pytest.importorskip("redis")
    prefix = f"ecroute{uuid.uuid4().hex[:8]}"
    redis_url = f"{service_url('redis')}?prefix={prefix}"
    sink_module()
    fd.module("poison", POISON)
    pipeline = PIPELINE.replace("COUNT", "2000").replace(
        '"steps:inc", instances: 2, prefetch: 20',
        '"poison:step", instances: 2, prefetch: 20, retries: {max: 0}',
    )
    flow = fd.flow(
        pipeline.replace(
            "{from: work, to: sink}", f"{{from: work, to: sink, broker: '{redis_url}'}}"
        )
    )
    assert flow.broker_routes() == {"pipe.work.success-sink.input": redis_url}
    assert Flow.from_dict(flow.to_dict()).to_dict() == flow.to_dict()  # the field round-trips
    client = redis_py.Redis.from_url(service_url("redis"))
    try:
        killed: list[int] = []
        result = fd.run(flow, on_start=kill_worker("sink", after=1.0, killed=killed))
        assert result.status == "finished" and killed
        assert client.keys(f"{prefix}:q:*"), "the routed connection's queue is not on Redis"
        rows = [line.split() for line in fd.lines("sink.log")]
        assert {int(n) for _, n in rows} == {n for n in range(2000) if n % 10 != 3}
        letters = elasticcode.dead_letters(flow, state_dir=fd.state, limit=1000)
        assert len(letters) == 200 and all(str(dl.id).startswith("0:") for dl in letters)
        assert elasticcode.replay(flow, [letters[0].id], state_dir=fd.state) == 1
        with pytest.raises(BrokerError, match="named N:ID"):
            elasticcode.replay(flow, ["7"], state_dir=fd.state)
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()


def _descendants(pid: int) -> list[int]:
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return children + [d for c in children for d in _descendants(c)]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["embedded", "redis", "rabbitmq"])
def test_kill_9_of_the_agent_and_its_workers_then_rerun(
    fd: FlowDir, sink_module: Callable[[], Path], where: str
) -> None:
    """The whole run (the agent and every worker) killed at once mid-flow; the next run resumes
    from the durable queues and every message arrives."""
    sink_module()
    fd.module("slow", "import time\n\ndef step(p):\n    time.sleep(0.001)\n    return p\n")
    name = f"agentkill{uuid.uuid4().hex[:8]}"
    text = PIPELINE.replace("name: pipe", f"name: {name}").replace("COUNT", "2000")
    flow = fd.flow(text.replace('"steps:inc", instances: 2', '"slow:step", instances: 2'))
    url = None if where == "embedded" else service_url(where)
    cmd = [CLI, "run", str(fd.root / "flow.yaml"), "--state-dir", str(fd.state), "--quiet"]
    cmd += ["--broker", url] if url else []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(fd.lines("sink.log")) < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        victims = [proc.pid, *_descendants(proc.pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(30)
        before = len(fd.lines("sink.log"))
        assert 0 < before < 2000 and len(victims) >= 4, "the kill did not land mid-run"
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        accounting(fd, 2000)
    finally:
        if url:
            asyncio.run(_delete(url, flow))


async def _delete(url: str, flow: Flow) -> None:
    b = open_broker(url)
    await b.connect()
    await b.delete(flow.queues())
    await b.close()
