"""Paths that lost or doubled messages without a fault to show them: outputs a source emits
while it runs, batches that outlast their lease, commands that wait their turn, fan-out too
large to hold, and brokers that can forget what they accepted."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from elasticcode.brokers import Settlement, open_broker

from .conftest import FlowDir, delete_queues
from .network import free_port
from .services import service_url, unavailable


def test_what_a_generator_source_emits_while_it_runs_arrives(fd: FlowDir) -> None:
    """``ctx.emit`` between the items a source yields: every one published, in order."""
    fd.module(
        "steps",
        f"""
        import os
        OUT = {str(fd.root)!r}

        def numbers(ctx):
            for i in range(50):
                ctx.emit({{"n": i, "how": "emitted"}})
                yield {{"n": i, "how": "yielded"}}
            ctx.emit({{"n": 50, "how": "emitted"}})

        def sink(payload):
            with open(os.path.join(OUT, "sink.log"), "a") as f:
                f.write(f"{{payload['n']}} {{payload['how']}}\\n")
        """,
    )
    flow = fd.flow(
        """
        name: emitting
        processors:
          - {name: gen, code: "steps:numbers", source: true}
          - {name: sink, code: "steps:sink", instances: 1}
        connections:
          - {from: gen, to: sink}
        """
    )
    result = fd.run(flow)
    assert result.status == "finished"
    seen = Counter(fd.lines("sink.log"))
    assert sum(seen.values()) == 101
    assert all(seen[f"{i} emitted"] == 1 for i in range(51))
    assert all(seen[f"{i} yielded"] == 1 for i in range(50))


SLOW = """
import os, time
OUT = {out!r}

def numbers(count):
    for i in range(count):
        yield {{"n": i}}

def slow(payload, ctx):
    time.sleep({sleep})
    with open(os.path.join(OUT, "seen.log"), "a") as f:
        f.write(f"{{payload['n']}} {{ctx.message.delivery}} {{os.getpid()}}\\n")
"""


@pytest.mark.parametrize("broker", ["sqlite", "redis", "nats"])
def test_a_batch_that_outlasts_its_lease_stays_its_workers(fd: FlowDir, broker: str) -> None:
    """Leases of 1 s, a batch of 6 messages of 0.5 s each: without the lease extended while
    the batch is processed, the other worker takes the rest of it and both process it."""
    fd.module("steps", SLOW.format(out=str(fd.root), sleep=0.5))
    options = {"sqlite": "lease=1", "redis": "lease=1", "nats": "ack_wait=1"}[broker]
    if broker == "sqlite":
        url = f"sqlite:///{fd.root / 'queues.db'}?{options}"
    else:
        base = service_url(broker)
        url = f"{base}{'&' if '?' in base else '?'}{options}"
        if broker == "redis":
            url += f"&prefix=lease{uuid.uuid4().hex[:6]}"
    name = f"lease{uuid.uuid4().hex[:6]}"
    flow = fd.flow(
        f"""
        name: {name}
        processors:
          - {{name: gen, code: "steps:numbers", source: true, config: {{count: 12}}}}
          - {{name: slow, code: "steps:slow", instances: 2, prefetch: 6}}
        connections:
          - {{from: gen, to: slow}}
        """
    )
    try:
        result = fd.run(flow, broker=url)
    finally:
        if broker != "sqlite":
            asyncio.run(delete_queues(url, flow.queues()))
    assert result.status == "finished"
    rows = [line.split() for line in fd.lines("seen.log")]
    counts = Counter(int(n) for n, _, _ in rows)
    assert sorted(counts) == list(range(12))
    assert all(c == 1 for c in counts.values()), f"processed twice: {counts}"
    assert all(int(d) == 1 for _, d, _ in rows), "a message was handed out again mid-batch"


def test_a_command_waiting_its_turn_does_not_time_out(fd: FlowDir) -> None:
    """A command takes one message at a time; the timeout is for its own message, not for
    the wait behind the rest of the batch."""
    (fd.root / "slowcat.sh").write_text(
        "#!/usr/bin/env bash\nwhile read -r line; do sleep 0.3; echo '{\"outputs\": []}'; done\n"
    )
    (fd.root / "slowcat.sh").chmod(0o755)
    fd.module(
        "steps",
        """
        def numbers():
            for i in range(10):
                yield {"n": i}
        """,
    )
    flow = fd.flow(
        """
        name: cmdwait
        processors:
          - {name: gen, code: "steps:numbers", source: true}
          - {name: cat, command: ./slowcat.sh, instances: 1, prefetch: 10, timeout: 1s}
        connections:
          - {from: gen, to: cat}
        """
    )
    result = fd.run(flow)
    assert result.status == "finished"
    assert result.processors["cat"].errors == 0, result.processors["cat"].last_error


@pytest.mark.parametrize("count", [1000, 300_000])
def test_a_huge_fan_out_is_settled_in_parts(fd: FlowDir, count: int) -> None:
    """One input, 300,000 outputs: published in parts as they come (each part confirmed),
    the input acknowledged after the last; the worker's memory stays bounded."""
    fd.module(
        "steps",
        f"""
        import os
        OUT = {str(fd.root)!r}

        def rss():  # resident kB now; a forked worker starts with its parent's pages
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

        def one():
            yield {{"n": 0}}

        def explode(payload):
            start = peak = rss()
            for i in range({count}):
                yield {{"i": i, "pad": "x" * 500}}
                if i % 5000 == 0:
                    peak = max(peak, rss())
            with open(os.path.join(OUT, "growth.txt"), "w") as f:
                f.write(str(max(peak, rss()) - start))

        def count(payload, ctx):
            pass
        """,
    )
    flow = fd.flow(
        """
        name: fanout
        processors:
          - {name: gen, code: "steps:one", source: true}
          - {name: explode, code: "steps:explode", instances: 1}
          - {name: sink, code: "steps:count", instances: 1, prefetch: 1000}
        connections:
          - {from: gen, to: explode}
          - {from: explode, to: sink, max_messages: 20000}
        """
    )
    result = fd.run(flow)
    assert result.status == "finished"
    assert result.processors["sink"].received == count
    grew_mb = int((fd.root / "growth.txt").read_text()) / 1024
    print(f"fan-out of {count:,}: the exploding worker grew by {grew_mb:.0f} MB at most")
    # in parts it grows by a few MB; holding all 300,000 outputs at once, by some 85 MB
    assert grew_mb < 40, f"the worker held the whole fan-out: it grew by {grew_mb:.0f} MB"


# -- Redis that forgets ---------------------------------------------------------------------------
def _redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """A redis-server of the test's own, without persistence, answering on ``port``."""
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--save", ""),
            *("--appendonly", "no", "--dir", str(folder)),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    ping = ["redis-cli", "-p", str(port), "ping"]
    while subprocess.run(ping, capture_output=True).stdout.strip() != b"PONG":
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    return proc


def test_redis_that_can_lose_or_evict_messages_is_reported(tmp_path: Path) -> None:
    """At start: a Redis that keeps nothing on disk is named as one that can lose accepted
    messages. After it restarted empty: the loss is reported, not papered over."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    q = f"forget.{uuid.uuid4().hex[:6]}"
    procs = [_redis(port, tmp_path)]

    async def go() -> tuple[list[str], list[str], list[str]]:
        b = open_broker(url)
        await b.connect()
        try:
            await b.declare([q])
            await b.publish([(q, b"accepted")])
            before = await b.check()
            procs[0].terminate()  # gone, and back with nothing
            procs[0].wait(10)
            procs.append(_redis(port, tmp_path))
            return list(b.cautions), before, await b.check()
        finally:
            await b.close()

    try:
        cautions, before, after = asyncio.run(go())
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    text = " ".join(cautions)
    assert "appendonly" in text and "lose" in text, cautions
    assert before == []
    assert after and "lost" in after[0] and "restarted" in after[0], after


def test_broker_settle_in_parts_keeps_the_input_until_the_last(fd: FlowDir) -> None:
    """The contract the fan-out rests on: publishing part of a batch's outputs early changes
    nothing about when its input is acknowledged."""
    url = f"sqlite:///{fd.root / 'q.db'}"

    async def go() -> None:
        b = open_broker(url)
        await b.connect()
        await b.declare(["in", "out"])
        await b.publish([("in", b"x")])
        (d,) = await b.fetch(["in"], 1, "c", 1.0)
        await b.publish([("out", b"part 1")])
        assert (await b.depth(["in"]))["in"][0] == 1  # still held, not acknowledged
        await b.settle(Settlement(publish=[("out", b"part 2")], ack=[d]))
        assert (await b.depth(["in", "out"])) == {"in": (0, 0), "out": (2, 12)}
        await b.close()

    asyncio.run(go())
