"""Bad messages and bad processors on real brokers: one flow whose processor raises on some
messages (poison), hangs on others (time limit), crashes the interpreter on others
(``os._exit``) and leaks memory on every one (``max_memory``). Each bad message ends as a dead
letter, every other message arrives, and the accounting is printed beside the throughput of
the same flow without faults, measured in the same test."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import elasticcode

from .conftest import FlowDir, delete_queues
from .services import service_url

pytestmark = pytest.mark.slow

COUNT = 400

FAULTY = """
import os, time

LEAKED = []

def step(p):
    n = p["n"]
    LEAKED.append(b"x" * 2**20)  # 1 MB kept for ever: restarted over max_memory
    if n % 100 == 7:
        raise ValueError(f"poison {n}")
    if n % 100 == 13:
        while True:
            time.sleep(0.01)
    if n % 100 == 21:
        os._exit(1)
    return p
"""

CLEAN = "def step(p):\n    return p\n"

FLOW = """
name: faults{tag}
processors:
  - {{name: gen, code: "steps:numbers", source: true, config: {{count: {count}}}}}
  - name: work
    code: "{module}:step"
    instances: 2
    prefetch: 10
    timeout: 500ms
    max_memory: 150MB
    retries: {{max: 1, backoff: 10ms}}
  - {{name: sink, code: "steps:sink", instances: 1}}
connections:
  - {{from: gen, to: work}}
  - {{from: work, to: sink}}
"""


@pytest.mark.parametrize("broker", ["rabbitmq", "redis"])
def test_poison_hang_crash_and_leak_on_a_broker(
    fd: FlowDir, sink_module: Callable[[], Path], broker: str
) -> None:
    url = service_url(broker)
    tag = uuid.uuid4().hex[:8]
    sink_module()
    fd.module("faulty", FAULTY)
    fd.module("clean", CLEAN)
    clean = fd.flow(FLOW.format(tag=f"c{tag}", count=COUNT, module="clean"), "clean.yaml")
    flow = fd.flow(FLOW.format(tag=f"f{tag}", count=COUNT, module="faulty"))
    try:
        started = time.monotonic()
        done = fd.run(clean, broker=url, state_dir=fd.root / "clean")
        assert done.status == "finished"
        clean_rate = COUNT / (time.monotonic() - started)
        (fd.root / "sink.log").unlink()

        started = time.monotonic()
        result = fd.run(flow, broker=url)
        rate = COUNT / (time.monotonic() - started)
        assert result.status == "finished"
        bad = {n for n in range(COUNT) if n % 100 in (7, 13, 21)}
        seen = Counter(int(line.split()[1]) for line in fd.lines("sink.log"))
        lost = len(set(range(COUNT)) - bad - set(seen))
        letters = elasticcode.dead_letters(flow, state_dir=fd.state, broker=url)
        print(
            f"\naccounting (poison, hang, os._exit and a leak, {broker}): sent {COUNT} / "
            f"delivered {len(seen)} / duplicates {sum(seen.values()) - len(seen)} / lost {lost}"
            f" / dead letters {len(letters)} (expected {len(bad)}); {rate:,.0f} msg/s against "
            f"{clean_rate:,.0f} without faults"
        )
        assert lost == 0 and not (set(seen) & bad)
        assert len(letters) == len(bad)
        why = " ".join(d.error for d in letters)
        assert "poison" in why and "without completing" in why, why
        assert any("over max_memory" in e for e in result.events)
    finally:
        asyncio.run(delete_queues(url, clean.queues() + flow.queues()))
