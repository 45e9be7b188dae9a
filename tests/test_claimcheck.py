"""The claim check: messages larger than a queue carries travel through the flow's blob store,
arrive intact, and leave nothing behind."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from elasticcode import Flow
from elasticcode.brokers import open_broker
from elasticcode.claimcheck import is_claim
from elasticcode.local import queues as control

from .conftest import FlowDir, kill_worker
from .services import service_url

MB = 2**20

BIG = """
import hashlib
import os

OUT = {out!r}


def make(n, size):
    for i in range(n):
        data = os.urandom(size)
        yield {{"i": i, "data": data, "sha": hashlib.sha256(data).hexdigest(), "hops": 0}}


def step(payload):
    if payload["i"] == 99:
        raise ValueError("ninety-nine is poison")
    if hashlib.sha256(payload["data"]).hexdigest() != payload["sha"]:
        raise ValueError("the payload changed on the way")
    if payload["hops"] == 0:  # in the first stage (a): the test kills a worker of it now
        open(os.path.join(OUT, "a-started"), "a").close()
    payload["hops"] += 1
    return payload


def sink(payload):
    ok = hashlib.sha256(payload["data"]).hexdigest() == payload["sha"]
    with open(os.path.join(OUT, "sink.log"), "a") as f:
        f.write(f"{{payload['i']}} {{len(payload['data'])}} {{ok}} {{payload['hops']}}\\n")
"""

FLOW = """
name: big-{tag}
settings: {{max_message_bytes: 64MB}}
processors:
  - {{name: make, code: big:make, source: true, config: {{n: {n}, size: {size}}}}}
  - {{name: a, code: big:step, instances: 2, prefetch: 1}}
  - {{name: b, code: big:step, instances: 1, prefetch: 1}}
  - {{name: sink, code: big:sink, instances: 1, prefetch: 1}}
connections:
  - {{from: make, to: a}}
  - {{from: a, to: b}}
  - {{from: b, to: sink}}
"""


@pytest.fixture(params=["nats", "sqs"])
def small_broker(request: pytest.FixtureRequest) -> str:
    """Brokers whose own limits (NATS 1 MiB, SQS about 192 KiB) are far below the payloads."""
    url = service_url(request.param)
    return url + "&visibility=5" if request.param == "sqs" else url


def _big_flow(fd: FlowDir, n: int, size: int) -> Flow:
    fd.module("big", BIG.format(out=str(fd.root)))
    return fd.flow(FLOW.format(tag=uuid.uuid4().hex[:8], n=n, size=size))


def _blobs(fd: FlowDir) -> list[Path]:
    return [p for p in (fd.state / "blobs").rglob("*") if p.is_file()]


@pytest.fixture
def cleanup(small_broker: str) -> Iterator[list[Flow]]:
    flows: list[Flow] = []
    yield flows

    async def clean() -> None:
        b = open_broker(small_broker)
        await b.connect()
        for flow in flows:
            await b.delete(flow.queues())
        await b.close()

    asyncio.run(clean())


def test_50_mb_payloads_pass_three_stages_intact_with_a_worker_killed(
    fd: FlowDir, small_broker: str, cleanup: list[Flow]
) -> None:
    n = 4
    flow = _big_flow(fd, n, 50 * MB)
    cleanup.append(flow)
    killed: list[int] = []
    result = fd.run(
        flow,
        broker=small_broker,
        on_start=kill_worker("a", 0, killed, when=lambda: (fd.root / "a-started").exists()),
    )
    assert result.status == "finished", result.events
    assert killed
    lines = [line.split() for line in fd.lines("sink.log")]
    arrived = {int(i) for i, *_ in lines}
    print(f"sent {n} / arrived {len(arrived)} / lines {len(lines)}; killed a worker of a")
    assert arrived == set(range(n))
    assert all(size == str(50 * MB) and ok == "True" and hops == "2" for _, size, ok, hops in lines)
    assert _blobs(fd) == []  # every blob deleted once its message was acknowledged


def test_a_fan_out_stores_a_blob_per_connection_and_a_lost_blob_dead_letters(
    fd: FlowDir,
) -> None:
    fd.module("big", BIG.format(out=str(fd.root)))
    flow = fd.flow(
        """
        name: fan
        settings: {max_message_bytes: 8MB, blob_threshold: 1MB}
        processors:
          - {name: a, code: big:step, retries: {max: 0}}
          - {name: sink, code: big:sink, instances: 1}
          - {name: copy, code: big:sink, instances: 1}
        connections:
          - {from: a, to: sink}
          - {from: a, to: copy, blob_threshold: 4MB}
        """
    )
    import hashlib
    import os

    def payload(i: int, size: int) -> dict[str, object]:
        data = os.urandom(size)
        return {"i": i, "data": data, "sha": hashlib.sha256(data).hexdigest(), "hops": 0}

    control.send(flow, "a", [payload(0, 2 * MB), payload(1, 5 * MB)], state_dir=fd.state)
    assert len(_blobs(fd)) == 2  # sent through the claim check too
    result = fd.run(flow)
    assert result.status == "finished" and not result.dead_letters
    lines = sorted(fd.lines("sink.log"))
    assert len(lines) == 4 and all(" True " in line for line in lines)
    assert _blobs(fd) == []
    # a message whose blob went missing is dead-lettered, saying where it was
    (mid,) = control.send(flow, "a", [payload(2, 3 * MB)], state_dir=fd.state)
    (blob,) = _blobs(fd)
    assert mid in blob.name
    blob.unlink()
    result = fd.run(flow)
    assert result.dead_letters == 1
    (dead,) = control.dead_letters(flow, fd.state)
    assert is_claim(dead.body) and "no longer holds it" in dead.error
    from elasticcode.deadletters import describe

    shown = describe(flow, dead)
    assert shown["message_id"] == mid and "bytes in the blob store" in shown["payload"]
    # a dead letter keeps its blob, through the run's sweep, until it is replayed
    (poison,) = control.send(flow, "a", [payload(99, 3 * MB)], state_dir=fd.state)
    result = fd.run(flow)
    assert result.status == "finished" and result.dead_letters == 2
    (kept,) = _blobs(fd)
    assert poison in kept.name


def test_a_sweep_takes_orphans_of_empty_queues_only(fd: FlowDir) -> None:
    """What a worker killed between acknowledging and deleting leaves is collected; a blob a
    waiting message or a dead letter may need never is."""
    from elasticcode.brokers import Delivery, Settlement, flow_broker
    from elasticcode.claimcheck import ClaimCheckBroker, with_claim_check
    from elasticcode.message import Message, encode

    flow = fd.flow(
        """
        name: sweep
        settings: {blob_threshold: 1KB}
        processors:
          - {name: a, code: m:f}
          - {name: b, code: m:f}
        connections:
          - {from: a, to: b}
        """
    )
    inbox = flow.inbox("a", "input")

    def body(n: int) -> bytes:
        return encode(Message({"n": n, "pad": "x" * 5000}, id=f"{n:032x}"))

    async def go() -> None:
        url = f"sqlite:///{fd.root / 'q.db'}"
        broker = with_claim_check(flow_broker(url, flow), flow, f"file://{fd.root / 'blobs'}")
        assert isinstance(broker, ClaimCheckBroker)
        async with broker:
            await broker.declare(flow.queues())
            await broker.publish([(inbox, body(1)), (inbox, body(2)), (inbox, body(3))])
            got: list[Delivery] = await broker.fetch([inbox], 3, "c", 1.0)
            # 1 acknowledged but its blob not deleted (the worker died), 2 dead-lettered
            await broker.inner.settle(Settlement(ack=[got[0]], dead=[(got[1], "boom")]))
            await broker.release("c")
            assert await broker.sweep(grace=0) == 0  # 3 waits in that queue: nothing goes
            again = await broker.fetch([inbox], 3, "c", 1.0)
            await broker.settle(Settlement(ack=again))  # 3 done, its blob deleted with it
            assert await broker.sweep(grace=0) == 1  # now the queue is empty: 1's orphan
            keys = await broker.store.keys("messages/")
            assert [k.rsplit("/", 1)[1] for k in keys] == [f"{2:032x}"]  # the dead letter's
            assert await broker.sweep(grace=3600) == 0  # and nothing young is ever taken

    asyncio.run(go())
