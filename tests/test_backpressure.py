"""A slow consumer behind a fast producer, on the embedded queues and on RabbitMQ: back
pressure keeps the queue between them near its limit and the memory of every process bounded
(peak resident set of each one measured), and nothing is dropped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from elasticcode.brokers import open_broker
from elasticcode.supervisor import Supervisor

from .conftest import FlowDir, delete_queues
from .services import service_url
from .test_soak import peak_rss

pytestmark = pytest.mark.slow

COUNT = 4000
LIMIT = 200

STEPS = """
import os, time

OUT = os.open({out!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

def numbers(count):
    for i in range(count):
        yield {{"n": i, "pad": "x" * 2000}}

def slow(payload):
    time.sleep(0.002)
    os.write(OUT, b"%d\\n" % payload["n"])
"""


@pytest.mark.parametrize("broker", ["sqlite", "rabbitmq"])
def test_a_slow_consumer_holds_memory_and_the_queue_bounded(
    fd: FlowDir, sink_module: Callable[[], Path], broker: str
) -> None:
    out = fd.root / "sink.log"
    fd.module("bpsteps", STEPS.format(out=str(out)))
    flow = fd.flow(
        f"""
        name: bp{uuid.uuid4().hex[:8]}
        processors:
          - {{name: fast, code: bpsteps:numbers, source: true, config: {{count: {COUNT}}}}}
          - {{name: slow, code: bpsteps:slow, instances: 1, prefetch: 10}}
        connections:
          - {{from: fast, to: slow, max_messages: {LIMIT}}}
        """
    )
    url = None if broker == "sqlite" else service_url(broker)
    queue = flow.queue_name(flow.connections[0])
    peaks: dict[str, int] = {}
    depth = 0
    done = threading.Event()

    def watch(agent: Supervisor) -> None:
        async def sample() -> None:
            nonlocal depth
            b = open_broker(url or f"sqlite:///{fd.state / 'queues.db'}")
            await b.connect()
            try:
                while not done.is_set():
                    for inst in agent.instances:
                        if inst.pid:
                            peaks[inst.processor] = max(
                                peaks.get(inst.processor, 0), peak_rss(inst.pid)
                            )
                    with contextlib.suppress(Exception):  # not declared yet
                        depth = max(depth, (await b.depth([queue]))[queue][0])
                    await asyncio.sleep(0.05)
            finally:
                await b.close()

        threading.Thread(target=lambda: asyncio.run(sample()), daemon=True).start()

    started = time.monotonic()
    try:
        result = fd.run(flow, broker=url, on_start=watch)
    finally:
        done.set()
        if url:
            asyncio.run(delete_queues(url, flow.queues()))
    seen = Counter(int(n) for n in out.read_bytes().split())
    lost = COUNT - len(set(seen))
    print(
        f"\naccounting (slow consumer, {broker}): sent {COUNT} / delivered {len(seen)} / "
        f"duplicates {sum(seen.values()) - len(seen)} / lost {lost}; "
        f"{time.monotonic() - started:.1f}s; peak queue depth {depth} (max_messages {LIMIT}); "
        "peak RSS "
        + ", ".join(f"{k} {v / 2**20:.0f} MB" for k, v in sorted(peaks.items()))
        + f", runner {peak_rss(os.getpid()) / 2**20:.0f} MB"
    )
    assert result.status == "finished" and lost == 0
    # the producer stops at the limit, give or take what is in flight (a batch, a prefetch)
    assert 0 < depth <= LIMIT + 600
    assert max(peaks.values()) < 150 * 2**20
