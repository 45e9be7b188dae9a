"""The same flows, unchanged, on every broker: each run end to end against the real server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from elasticcode import Flow
from elasticcode.brokers import open_broker

from .conftest import FlowDir, kill_worker
from .services import service_url
from .test_examples import ENRICHMENT, check_enriched_orders, run_to_end
from .test_run import PIPELINE, accounting


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
