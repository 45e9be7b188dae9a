"""The NATS JetStream broker beyond the shared contract: queue names, URL options, connection
errors, release after kill -9, and (slow) a restart of the real server mid-stream."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest

from elasticcode.brokers import Broker, Settlement, open_broker
from elasticcode.brokers.nats import NATSBroker, _stream
from elasticcode.errors import BrokerError, BrokerUnreachable

from .services import service_url

HOST = os.uname().nodename


@pytest.fixture
def url() -> str:
    return service_url("nats")


def option(url: str, opt: str) -> str:
    return url + ("&" if "?" in url else "?") + opt


def unique(n: int = 1) -> list[str]:
    tag = uuid.uuid4().hex[:10]
    return [f"nats-test.{tag}.q{i}" for i in range(n)]


def on(
    url: str,
    queues: list[str],
    test: Callable[..., Awaitable[None]],
    brokers: int = 1,
    declare: list[str] | None = None,
) -> None:
    """Run ``test(*brokers)`` on connected brokers, the first having declared the queues
    (or those named); delete the queues afterwards."""

    async def main() -> None:
        made = [open_broker(url) for _ in range(brokers)]
        try:
            for b in made:
                await b.connect()
            await made[0].declare(queues if declare is None else declare)
            await test(*made)
        finally:
            await made[0].delete(queues)
            for b in made:
                await b.close()

    asyncio.run(main())


def test_queue_names_map_to_distinct_valid_streams() -> None:
    names = ["flow.proc.out", "flow_proc_out", "flow-proc-out", "a b/c*>", "x" * 300, "ünï.code"]
    streams = [_stream(n) for n in names]
    assert len(set(streams)) == len(names)
    assert all(re.fullmatch(r"EC_[A-Za-z0-9_-]{1,60}", s) for s in streams)
    assert _stream("flow.proc.out") == streams[0]


def test_url_options_are_checked() -> None:
    b = NATSBroker("nats://127.0.0.1:4222?ack_wait=5&retry_for=1&max_deliver=10")
    assert (b.ack_wait, b.retry_for, b.max_deliver) == (5, 1, 10)
    with pytest.raises(BrokerError, match="unknown option"):
        NATSBroker("nats://127.0.0.1?ackwait=5")
    with pytest.raises(BrokerError, match="ack_wait must be a number"):
        NATSBroker("nats://127.0.0.1?ack_wait=soon")


def test_connection_failure_names_the_server_but_no_secrets() -> None:
    broker = open_broker("nats://alice:s3cret@127.0.0.1:1")  # nothing listens on port 1
    with pytest.raises(BrokerError) as err:
        asyncio.run(broker.connect())
    assert re.match(r"cannot connect to the NATS server at 127\.0\.0\.1:1: ", str(err.value))
    assert "s3cret" not in str(err.value) and "alice" not in str(err.value)
    assert isinstance(err.value, BrokerUnreachable)  # a worker waits for it to come


def test_unknown_queue_fails_fast(url: str) -> None:
    async def test(b: Broker) -> None:
        started = time.monotonic()
        with pytest.raises(BrokerError, match="does not exist; declare it first"):
            await b.publish([("nats-test.never-declared", b"x")])
        with pytest.raises(BrokerError, match="does not exist; declare it first"):
            await b.depth(["nats-test.never-declared"])
        assert time.monotonic() - started < 5

    on(url, [], test)


def test_fetch_waits_on_every_input_queue(url: str) -> None:
    q1, q2 = queues = unique(2)

    async def test(b: Broker) -> None:
        async def later() -> None:
            await asyncio.sleep(0.3)
            await b.publish([(q2, b"late")])

        task = asyncio.create_task(later())
        started = time.monotonic()
        got = await b.fetch([q1, q2], 10, "c", timeout=3)
        await task
        assert [(d.queue, d.body) for d in got] == [(q2, b"late")]
        assert time.monotonic() - started < 1

    on(url, queues, test)


def test_dead_letters_keep_multiline_errors_and_replay_by_queue(url: str) -> None:
    q1, q2 = queues = unique(2)

    async def test(b: Broker) -> None:
        await b.publish([(q1, b"a"), (q2, b"b")])
        got = await b.fetch([q1, q2], 10, "c", timeout=1)
        error = 'ValueError: "bad"\nTraceback (most recent call last):\n  ünïcode ✓'
        await b.settle(Settlement(dead=[(d, error) for d in got]))
        letters = [dl for dl in await b.dead_letters(limit=10**6) if dl.queue in queues]
        assert sorted((dl.queue, dl.body, dl.error) for dl in letters) == [
            (q1, b"a", error),
            (q2, b"b", error),
        ]
        assert await b.dead_letter_count(queues) == 2
        assert await b.replay(queue=q2) == 1
        assert await b.dead_letter_count(queues) == 1
        assert [dl.body for dl in await b.dead_letters(q1)] == [b"a"]
        assert await b.dead_letters(q2) == []
        assert [(d.body, d.delivery) for d in await b.fetch([q2], 5, "c", timeout=1)] == [(b"b", 1)]

    on(url, queues, test)


CHILD = """
import asyncio, sys
from elasticcode.brokers import open_broker

async def main():
    b = open_broker(sys.argv[1])
    await b.connect()
    got = await b.fetch([sys.argv[2]], 2, sys.argv[3], timeout=10)
    print(len(got), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_release_after_kill_9_hands_messages_out_at_once(url: str) -> None:
    (q,) = queues = unique()
    consumer = f"{HOST}:nats-test:0:{uuid.uuid4().hex[:8]}"

    async def test(b: Broker) -> None:
        await b.publish([(q, b"m0"), (q, b"m1"), (q, b"m2")])
        command = [sys.executable, "-c", CHILD, url, q, consumer]
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
            try:
                assert child.stdout is not None and child.stdout.readline().strip() == "2"
            finally:
                child.kill()
        assert await b.release(consumer) == 2
        assert await b.release(consumer) == 0
        got = await b.fetch([q], 10, "survivor", timeout=2)
        assert sorted((d.body, d.delivery) for d in got) == [(b"m0", 2), (b"m1", 2), (b"m2", 1)]

    on(url, queues, test)


def test_release_all_releases_this_hosts_leases_on_declared_queues_only(url: str) -> None:
    ours, theirs = unique(2)
    consumer = f"{HOST}:nats-test:1:{uuid.uuid4().hex[:8]}"

    async def test(b: NATSBroker, other: Broker, dying: Broker) -> None:
        await other.declare([theirs])
        await b.publish([(ours, b"a"), (theirs, b"b")])
        assert len(await dying.fetch([ours, theirs], 10, consumer, timeout=1)) == 2
        await dying.close()  # dies without settling
        assert await b.release_all() == 1  # b declared only ours
        assert [(d.body, d.delivery) for d in await b.fetch([ours], 5, "c", timeout=5)] == [
            (b"a", 2)
        ]
        assert await other.fetch([theirs], 5, "c", timeout=0.2) == []  # still held
        assert await other.release(consumer) == 1
        # (a fetch returns as soon as the message comes: the time allowed is for a busy host)
        assert [d.body for d in await other.fetch([theirs], 5, "c", timeout=5)] == [b"b"]

    on(url, [ours, theirs], test, brokers=3, declare=[ours])


# -- a real server restart ------------------------------------------------------------------
SERVER = "/usr/sbin/nats-server"
START = ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", SERVER, "--"]
START += ["-a", "127.0.0.1", "-p", "4222", "-js", "-sd", "/var/lib/nats-server"]
START += ["-l", "/var/log/nats-server.log"]
STOP = ["start-stop-daemon", "--stop", "--oknodo", "--retry", "TERM/15/KILL/5", "--exec", SERVER]


def answers(timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 4222), timeout=timeout):
            return True
    except OSError:
        return False


def restart_server() -> None:
    try:
        subprocess.run(STOP, check=True, capture_output=True)
        time.sleep(1.0)
    finally:
        subprocess.run(START, check=True, capture_output=True)
        deadline = time.monotonic() + 30
        while not answers() and time.monotonic() < deadline:
            time.sleep(0.1)
    assert answers(), "nats-server did not come back"


@pytest.mark.slow
def test_server_restart_loses_no_confirmed_message(url: str) -> None:
    if not (shutil.which("start-stop-daemon") and os.access(SERVER, os.X_OK)):
        pytest.skip(f"needs start-stop-daemon and {SERVER} to restart the server")
    if not re.match(r"nats://127\.0\.0\.1:4222\b", url):
        pytest.skip("restarts only the local server on 127.0.0.1:4222")
    (q,) = queues = unique()
    # A fetch answered just as the server went down reaches no consumer: the server hands those
    # messages out again once the ack wait runs out. A short ack wait lets the test see that.
    ack_wait = 15
    url = option(option(url, "retry_for=60"), f"ack_wait={ack_wait}")

    async def test(b: Broker, consumer: Broker) -> None:
        confirmed = [f"before{i}".encode() for i in range(200)]
        await b.publish([(q, body) for body in confirmed])
        held = await b.fetch([q], 50, "held-over-the-restart", timeout=2)
        consumed: list[bytes] = []
        stop = asyncio.Event()

        async def produce() -> None:
            for n in range(0, 10**9, 20):
                if stop.is_set():
                    return
                batch = [f"during{n + i}".encode() for i in range(20)]
                await b.publish([(q, body) for body in batch])
                confirmed.extend(batch)  # only what publish confirmed
                await asyncio.sleep(0.01)

        async def consume() -> None:
            while not stop.is_set():
                got = await consumer.fetch([q], 10, "during-the-restart", timeout=0.25)
                await consumer.ack(got)
                consumed.extend(d.body for d in got)

        tasks = [asyncio.create_task(produce()), asyncio.create_task(consume())]
        await asyncio.sleep(0.5)
        await asyncio.get_running_loop().run_in_executor(None, restart_server)
        await asyncio.sleep(1.0)  # publish and consume a while on the restarted server
        stop.set()
        await asyncio.gather(*tasks)
        await b.ack(held)  # acknowledgements of deliveries from before the restart still count
        deadline = time.monotonic() + ack_wait + 10
        while (await b.depth([q]))[q][0] and time.monotonic() < deadline:
            got = await b.fetch([q], 500, "drain", timeout=1)
            consumed.extend(d.body for d in got)
            await b.ack(got)
        acked = {d.body for d in held}
        assert not acked & set(consumed), "acknowledged before/after the restart, yet redelivered"
        missing = [body for body in confirmed if body not in acked and body not in consumed]
        assert missing == [], f"{len(missing)} confirmed message(s) lost in the restart"
        assert any(body.startswith(b"during") for body in consumed)
        assert await b.depth([q]) == {q: (0, 0)}

    on(url, queues, test, brokers=2)
