"""A message that hangs its processor: the processor's timeout fails that message (retried,
then dead-lettered) and the worker goes on with the rest. Sync, async and command processors."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import elasticcode
from elasticcode.errors import FlowError

from .conftest import FlowDir

PIPE = """
name: hang
processors:
  - {name: gen, code: "steps:numbers", source: true, config: {count: 20}}
  - {name: work, WORK, timeout: 300ms, retries: {max: 1, backoff: 10ms}, instances: 1}
  - {name: sink, code: "steps:sink", instances: 1}
connections:
  - {from: gen, to: work}
  - {from: work, to: sink}
"""

SYNC = """
import time

def step(p):
    if p["n"] % 10 == 3:
        while True:  # pure Python, never returns
            time.sleep(0.01)
    return p
"""

ASYNC = """
import asyncio

async def step(p):
    if p["n"] % 10 == 3:
        await asyncio.sleep(3600)
    return p
"""

BASH = r"""#!/usr/bin/env bash
while IFS= read -r line; do
  [[ $line =~ \"n\":([0-9]+) ]] && n=${BASH_REMATCH[1]}
  (( n % 10 == 3 )) && sleep 3600
  echo "{\"outputs\":[{\"payload\":{\"n\":$n}}]}"
done
"""


@pytest.mark.parametrize("kind", ["sync", "async", "command"])
def test_hanging_message_times_out_and_the_rest_flows(
    fd: FlowDir, sink_module: Callable[[], Path], kind: str
) -> None:
    sink_module()
    if kind == "command":
        script = fd.root / "hang.sh"
        script.write_text(textwrap.dedent(BASH))
        script.chmod(0o755)
        work = "command: ./hang.sh"
    else:
        fd.module("slow", SYNC if kind == "sync" else ASYNC)
        work = 'code: "slow:step"'
    flow = fd.flow(PIPE.replace("WORK", work))
    result = fd.run(flow)
    assert result.status == "finished"
    assert sorted(int(line.split()[1]) for line in fd.lines("sink.log")) == [
        n for n in range(20) if n % 10 != 3
    ]
    letters = elasticcode.dead_letters(flow, state_dir=fd.state)
    assert len(letters) == 2
    assert all("took longer than 0.3s (timeout)" in d.error for d in letters)
    assert all(d.deliveries == 2 for d in letters)


def test_timeout_must_be_positive(fd: FlowDir) -> None:
    with pytest.raises(FlowError, match="timeout must be greater than zero"):
        fd.flow(PIPE.replace("WORK", 'code: "slow:step"').replace("300ms", "0s"))


LEAK = """
LEAKED = []

def step(p):
    LEAKED.append(b"x" * (2 * 2**20))  # 2 MB kept for ever
    return p
"""


def test_leaking_worker_is_restarted_and_nothing_is_lost(
    fd: FlowDir, sink_module: Callable[[], Path]
) -> None:
    sink_module()
    fd.module("leak", LEAK)
    work = 'code: "leak:step", max_memory: 120MB, prefetch: 10'
    text = PIPE.replace("WORK", work).replace("count: 20", "count: 300")
    flow = fd.flow(text.replace("timeout: 300ms, ", ""))
    result = fd.run(flow)
    assert result.status == "finished"
    seen = sorted(int(line.split()[1]) for line in fd.lines("sink.log"))
    assert seen == list(range(300)), (
        f"{len(seen)} delivered; dead letters {result.dead_letters}; "
        f"totals {result.processors}; events {result.events}"
    )
    restarts = sum("restarted: over max_memory" in e for e in result.events)
    assert restarts >= 3, result.events
    assert result.dead_letters == 0
