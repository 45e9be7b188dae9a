"""Soak: 1,000,000 messages through three stages on the embedded default, with a random
worker killed (kill -9) every few seconds. It ends by itself and prints the accounting and the
peak memory of every worker process."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from elasticcode.supervisor import Supervisor

from .conftest import FlowDir

MESSAGES = int(os.environ.get("ELASTICCODE_SOAK_MESSAGES", "1000000"))

STEPS = """
import os

OUT = os.open({out!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

def numbers(count):
    for i in range(count):
        yield {{"n": i}}

def inc(payload):
    return {{**payload, "hops": payload.get("hops", 0) + 1}}

def sink(payload):
    os.write(OUT, b"%d\\n" % payload["n"])
"""


def peak_rss(pid: int) -> int:
    """A process's peak resident set (VmHWM), in bytes; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_soak_a_million_messages_with_random_kills(fd: FlowDir) -> None:
    out = fd.root / "sink.log"
    fd.module("soaksteps", STEPS.format(out=str(out)))
    flow = fd.flow(
        f"""
        name: soak
        processors:
          - {{name: numbers, code: soaksteps:numbers, source: true, config: {{count: {MESSAGES}}}}}
          - {{name: a, code: soaksteps:inc, instances: 2}}
          - {{name: b, code: soaksteps:inc, instances: 2}}
          - {{name: sink, code: soaksteps:sink, instances: 1}}
        connections:
          - {{from: numbers, to: a}}
          - {{from: a, to: b}}
          - {{from: b, to: sink}}
        """
    )
    kills: list[str] = []
    peaks: dict[str, int] = {}
    done = threading.Event()
    rng = random.Random(int(os.environ.get("ELASTICCODE_SOAK_SEED", "7")))

    def chaos(agent: Supervisor) -> None:
        def go() -> None:
            next_kill = time.monotonic() + rng.uniform(2, 5)
            while not done.is_set():
                for inst in agent.instances:
                    if inst.pid:
                        name = f"{inst.processor}[{inst.index}]"
                        peaks[name] = max(peaks.get(name, 0), peak_rss(inst.pid))
                if time.monotonic() >= next_kill:
                    alive = [i for i in agent.instances if i.alive and i.pid]
                    if alive:
                        victim = rng.choice(alive)
                        assert victim.pid is not None
                        os.kill(victim.pid, signal.SIGKILL)
                        kills.append(f"{victim.processor}[{victim.index}]")
                    next_kill = time.monotonic() + rng.uniform(2, 5)
                time.sleep(0.2)

        threading.Thread(target=go, daemon=True).start()

    started = time.monotonic()
    try:
        result = fd.run(flow, on_start=chaos)
    finally:
        done.set()
    seconds = time.monotonic() - started
    seen = Counter(int(line) for line in out.read_bytes().split())
    lost = MESSAGES - len(set(seen) & set(range(MESSAGES)))
    duplicates = sum(c - 1 for c in seen.values() if c > 1)
    print(
        f"\naccounting (soak, embedded): sent {MESSAGES} / delivered {len(seen)} / duplicates "
        f"{duplicates} / lost {lost}; {seconds:.0f}s ({MESSAGES / seconds:,.0f} msg/s), "
        f"{len(kills)} workers killed ({', '.join(sorted(set(kills)))})"
    )
    print(
        "peak RSS per worker: "
        + ", ".join(f"{k} {v / 2**20:.0f} MB" for k, v in sorted(peaks.items()))
    )
    print(f"peak RSS of the runner (this test process): {peak_rss(os.getpid()) / 2**20:.0f} MB")
    assert result.status == "finished"
    assert lost == 0
    assert len(kills) >= 3, "the run ended before the chaos did anything"
    assert max(peaks.values()) < 200 * 2**20, "a worker's memory grew without bound"
