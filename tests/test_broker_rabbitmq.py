"""RabbitMQ backend specifics beyond the shared contract, and a broker restart mid-stream."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import shutil
import socket
import subprocess
import time
import uuid
from urllib.parse import urlsplit

import pytest

from elasticcode.brokers import Broker, Settlement, open_broker
from elasticcode.brokers.rabbitmq import RabbitMQBroker
from elasticcode.errors import BrokerError, BrokerUnreachable

from .services import in_ci, service_url


def with_options(url: str, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


async def opened(url: str, *queues: str) -> Broker:
    b = open_broker(url)
    await b.connect()
    await b.declare(list(queues))
    return b


def test_options_and_connection_errors_hide_the_password() -> None:
    with pytest.raises(BrokerError, match="queue_type must be classic or quorum"):
        open_broker("amqp://guest:guest@127.0.0.1/?queue_type=stream")
    with pytest.raises(BrokerError, match="retry_for must be a number"):
        open_broker("amqp://guest:guest@127.0.0.1/?retry_for=soon")
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = open_broker(f"amqp://user:hunter2secret@127.0.0.1:{port}/")
    with pytest.raises(BrokerError, match=f"cannot connect to RabbitMQ at 127.0.0.1:{port}") as err:
        asyncio.run(b.connect())
    assert "hunter2secret" not in str(err.value)
    assert isinstance(err.value, BrokerUnreachable)  # a worker waits for it to come


def test_the_installed_aiormq_lets_batches_go_out_in_one_write() -> None:
    """The batch publisher drives aiormq's internals: an aiormq without them must fail here,
    not quietly publish one message at a time in production."""
    from elasticcode.brokers import amqp_batch

    url = service_url("rabbitmq")

    async def go() -> None:
        b = open_broker(url)
        await b.connect()
        try:
            assert isinstance(b, RabbitMQBroker)
            ch = await b._channel("pub")
            assert amqp_batch.missing(ch) == [], (
                f"aiormq {importlib.metadata.version('aiormq')} lacks what batch publishing "
                f"needs; it was built for aiormq{amqp_batch.AIORMQ}"
            )
            assert b._batches(ch)
        finally:
            await b.close()

    asyncio.run(go())


def test_acks_out_of_order_and_mixed_delays() -> None:
    url = service_url("rabbitmq")
    q = f"rabbit.{uuid.uuid4().hex[:10]}.q"

    async def scenario() -> None:
        b = await opened(url, q)
        try:
            await b.publish([(q, f"m{i}".encode()) for i in range(6)])
            got = await b.fetch([q], 6, "c", timeout=2)
            await b.ack([got[1], got[3]])
            await b.ack([got[0]])  # now 0, 1 go together (multiple), 3 alone
            await b.ack([got[2], got[4], got[5]])
            assert await b.depth([q]) == {q: (0, 0)}
            await b.publish([(q, b"long"), (q, b"short")])
            long_, short = await b.fetch([q], 2, "c", timeout=2)
            start = time.monotonic()
            await b.settle(Settlement(retry=[(long_, 0.6, "e"), (short, 0.1, "e")]))
            assert await b.depth([q]) == {q: (2, 0)}  # waiting in the delay queue counts
            again = [d for _ in range(2) for d in await b.fetch([q], 1, "c", timeout=3)]
            assert sorted((d.body, d.delivery) for d in again) == [(b"long", 2), (b"short", 2)]
            assert time.monotonic() - start >= 0.5
            await b.settle(Settlement(dead=[(d, "gave up") for d in again]))
            letters = await b.dead_letters()
            assert sorted((x.queue, x.body, x.error, x.deliveries) for x in letters) == [
                (q, b"long", "gave up", 2),
                (q, b"short", "gave up", 2),
            ]
            assert await b.replay(queue=q) == 2
            back = await b.fetch([q], 5, "c", timeout=2)
            assert sorted((d.body, d.delivery) for d in back) == [(b"long", 1), (b"short", 1)]
            await b.ack(back)
        finally:
            await b.delete([q])
            await b.close()

    asyncio.run(scenario())


def test_quorum_queues_count_redeliveries() -> None:
    url = with_options(service_url("rabbitmq"), queue_type="quorum")
    q = f"rabbit.{uuid.uuid4().hex[:10]}.quorum"

    async def scenario() -> None:
        dying, survivor = await opened(url, q), await opened(url, q)
        try:
            await dying.publish([(q, b"x")])
            assert [d.delivery for d in await dying.fetch([q], 1, "dying", timeout=2)] == [1]
            await dying.close()
            (d,) = await survivor.fetch([q], 1, "survivor", timeout=10)
            assert d.delivery == 2
            await survivor.retry(d, 0.05, "again")
            (d,) = await survivor.fetch([q], 1, "survivor", timeout=5)
            assert d.delivery == 3
            await survivor.ack([d])
            assert await survivor.depth([q]) == {q: (0, 0)}
        finally:
            await survivor.delete([q])
            await survivor.close()

    asyncio.run(scenario())


def _queues_as_declared(prefix: str) -> dict[str, tuple[str, str]]:
    """name -> (type, arguments) of the server's queues whose names start with ``prefix``."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("reading queue arguments needs rabbitmqctl on this host")
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "type", "arguments"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    return {r[0]: (r[1], r[2]) for r in rows if len(r) == 3 and r[0].startswith(prefix)}


def test_queues_dead_letter_at_least_once_and_never_drop_past_a_limit() -> None:
    """The default: quorum queues, whose delayed retries come back at least once and whose
    delivery limit sends a message to the dead-letter queue, not away; dead-letter queues
    are classic, which reading never counts against a limit."""
    url = service_url("rabbitmq")
    q = f"rabbit.{uuid.uuid4().hex[:10]}.limit"

    async def scenario() -> None:
        url2 = with_options(url, delivery_limit=2)
        b = await opened(url2, q)
        try:
            declared = _queues_as_declared(q)
            main, dead, delay = declared[q], declared[f"{q}.dead"], declared[f"{q}.delay"]
            assert main[0] == "quorum" and "x-delivery-limit" in main[1]
            assert f"{q}.dead" in main[1] and "at-least-once" in main[1]
            assert delay[0] == "quorum" and "at-least-once" in delay[1]
            assert dead[0] == "classic"
            # handed out past the limit without being settled: dead-lettered by RabbitMQ
            await b.publish([(q, b"never settled")])
            for _ in range(3):
                c = await opened(url2, q)
                assert await c.fetch([q], 1, "dies", timeout=5)
                await c.close()  # its connection gone, RabbitMQ hands it out again
            deadline = time.monotonic() + 10
            while not (letters := await b.dead_letters(q)) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert [d.body for d in letters] == [b"never settled"]
            assert "delivery limit" in letters[0].error
            assert await b.depth([q]) == {q: (0, 0)}
        finally:
            await b.delete([q])
            await b.close()

    asyncio.run(scenario())


def test_listing_dead_letters_loses_none_and_replay_goes_in_parts() -> None:
    url = service_url("rabbitmq")
    q = f"rabbit.{uuid.uuid4().hex[:10]}.dead"

    async def scenario() -> None:
        b = await opened(url, q)
        try:
            await b.publish([(q, str(i).encode()) for i in range(1200)])
            dead = 0
            while dead < 1200:
                got = await b.fetch([q], 500, "c", timeout=5)
                await b.settle(Settlement(dead=[(d, f"bad {d.body.decode()}") for d in got]))
                dead += len(got)
            for _ in range(30):  # listing is reading: the same letters, thirty times, all kept
                assert len(await b.dead_letters(q, limit=20)) == 20
            letters = await b.dead_letters(q, limit=1200)
            some = {d.id for d in letters if int(d.body) % 100 == 7}  # 12, all over the queue
            assert await b.replay(list(some), q) == 12  # three parts of 500, round the queue
            left = await b.dead_letters(q, limit=1200)
            assert len(left) == 1188 and not {d.id for d in left} & some
            assert {d.error for d in left} == {f"bad {d.body.decode()}" for d in left}
            back = await b.fetch([q], 20, "c", timeout=5)
            assert sorted(int(d.body) for d in back) == sorted(
                i for i in range(1200) if i % 100 == 7
            )
            await b.ack(back)
            assert await b.replay(queue=q) == 1188
        finally:
            await b.delete([q])
            await b.close()

    asyncio.run(scenario())


def test_a_queue_of_an_earlier_version_keeps_its_settings_and_says_so() -> None:
    url = service_url("rabbitmq")
    q = f"rabbit.{uuid.uuid4().hex[:10]}.old"

    async def scenario() -> None:
        old = await opened(with_options(url, queue_type="classic"), q)
        assert any("at most once" in c for c in old.cautions)
        await old.close()
        new = await opened(url, q)  # quorum now: the classic queue stays, and it says so
        try:
            assert any(f"queue '{q}' exists with other settings" in c for c in new.cautions)
            await new.publish([(q, b"still works")])
            assert [d.body for d in await new.fetch([q], 1, "c", timeout=5)] == [b"still works"]
        finally:
            await new.delete([q])
            await new.close()

    asyncio.run(scenario())


# -- a broker restart mid-stream ------------------------------------------------------------
async def rabbitmqctl(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    if proc.returncode:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {out.decode()[-500:]}")


async def wait_for_port(host: str, port: int, within: float = 120) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_confirmed_messages_survive_a_broker_restart() -> None:
    """Publish and consume while RabbitMQ restarts: every confirmed message is consumed."""
    url = with_options(service_url("rabbitmq"), retry_for=180)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    if shutil.which("rabbitmqctl") is None or host not in ("127.0.0.1", "localhost"):
        reason = "restarting RabbitMQ needs rabbitmqctl and a broker on this host"
        if in_ci() and not os.environ.get("ELASTICCODE_TEST_RABBITMQ_URL"):
            pytest.fail(reason)
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:10]
    live, parked = f"restart.{tag}.live", f"restart.{tag}.parked"

    async def scenario() -> None:
        producer, consumer = await opened(url, live, parked), await opened(url, live)
        # confirmed before the restart and consumed only after it: must be on disk
        await producer.publish([(parked, f"p{i}".encode()) for i in range(500)])
        confirmed: list[bytes] = []
        seen: set[bytes] = set()
        stop = asyncio.Event()

        async def produce() -> None:
            i = 0
            while not stop.is_set():
                batch = [(live, f"m{i + k}".encode()) for k in range(50)]
                await producer.publish(batch)  # returns only once all 50 are confirmed
                confirmed.extend(body for _, body in batch)
                i += 50
                await asyncio.sleep(0.01)

        async def consume() -> None:
            while not stop.is_set():
                got = await consumer.fetch([live], 20, "restart", timeout=0.2)
                seen.update(d.body for d in got)
                await consumer.ack(got)

        tasks = [asyncio.create_task(produce()), asyncio.create_task(consume())]
        stopped = False
        try:
            await asyncio.sleep(1.5)
            before = len(confirmed)
            stopped = True
            await rabbitmqctl("stop_app")
            await asyncio.sleep(2)
            await rabbitmqctl("start_app")
            stopped = False
            await wait_for_port(host, port)
            resumed_by = time.monotonic() + 120
            while len(confirmed) < before + 1000:  # traffic resumes on its own
                await asyncio.sleep(0.2)
                assert not any(t.done() for t in tasks), [t.exception() for t in tasks]
                assert time.monotonic() < resumed_by, "publishing did not resume"
            stop.set()
            await asyncio.gather(*tasks)
            while got := await consumer.fetch([live], 100, "restart", timeout=1):
                seen.update(d.body for d in got)
                await consumer.ack(got)
            assert set(confirmed) <= seen, f"{len(set(confirmed) - seen)} confirmed messages lost"
            reader = await opened(url, parked)
            kept: list[bytes] = []
            while got := await reader.fetch([parked], 100, "reader", timeout=1):
                kept += [d.body for d in got]
                await reader.ack(got)
            await reader.close()
            assert sorted(kept) == sorted(f"p{i}".encode() for i in range(500))
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if stopped:  # never leave the shared broker down
                await rabbitmqctl("start_app")
                await wait_for_port(host, port)
            await consumer.close()
            await producer.delete([live, parked])
            await producer.close()

    asyncio.run(scenario())
