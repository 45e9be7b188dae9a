"""Redis-only broker checks that the shared contract cannot make on every backend."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid

import pytest
import redis.asyncio as aioredis

from elasticcode.brokers import open_broker
from elasticcode.errors import BrokerError, BrokerUnreachable

from .services import service_url

#: How the test machine runs its Redis (no persistence: a restart loses every key).
START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def _with(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


def test_unreachable_server_is_named_without_the_password() -> None:
    b = open_broker("redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(
        BrokerError, match=r"cannot reach Redis at 127\.0\.0\.1:1: .*is it running"
    ) as err:
        asyncio.run(b.connect())
    assert "hunter2" not in str(err.value)
    assert isinstance(err.value, BrokerUnreachable)  # a worker waits for it to come


def test_expired_lease_is_handed_out_again() -> None:
    """A consumer that holds a message past its lease loses it; its late ack is ignored."""
    queue = f"lease.{uuid.uuid4().hex[:10]}.q"

    async def scenario() -> None:
        b = open_broker(_with(service_url("redis"), "lease=0.2"))
        await b.connect()
        try:
            await b.declare([queue])
            await b.publish([(queue, b"m")])
            (slow,) = await b.fetch([queue], 1, "slow", timeout=1)
            assert await b.fetch([queue], 1, "other", timeout=0.05) == []
            (again,) = await b.fetch([queue], 1, "other", timeout=2)
            assert (again.body, again.delivery) == (b"m", 2)
            await b.ack([slow])  # too late: "other" holds it now
            assert await b.depth([queue]) == {queue: (1, 1)}
            await b.ack([again])
            assert await b.depth([queue]) == {queue: (0, 0)}
        finally:
            await b.delete([queue])
            await b.close()

    asyncio.run(scenario())


def _answers() -> bool:
    probe = subprocess.run(["redis-cli", "-p", "6379", "ping"], capture_output=True, text=True)
    return probe.stdout.strip() == "PONG"


def _start_redis() -> None:
    """Start the machine's Redis (after a shutdown) and wait until it answers."""
    deadline = time.monotonic() + 20
    while not _answers():
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not come back within 20s")
        subprocess.run(START, check=False, capture_output=True)
        time.sleep(0.3)


@pytest.mark.slow
def test_a_fetch_whose_answer_was_lost_is_handed_out_again_at_once() -> None:
    """The connection drops after Redis ran a fetch and before its answer arrived: the
    entries it took are pending for the consumer, which never saw them. The retried fetch
    hands them out at once instead of after the lease; what the consumer holds stays its."""
    queue = f"lost.{uuid.uuid4().hex[:10]}.q"

    async def scenario() -> None:
        b = open_broker(service_url("redis"))  # lease 300 s: waiting it out would fail
        await b.connect()
        try:
            await b.declare([queue])
            await b.publish([(queue, b"held"), (queue, b"lost")])
            (held,) = await b.fetch([queue], 1, "c", timeout=1)
            # a fetch for "c" that Redis ran, whose answer nobody read
            r = b._client  # type: ignore[attr-defined]
            stream = b._stream(queue)  # type: ignore[attr-defined]
            await r.xreadgroup("elasticcode", "c", {stream: ">"}, count=1)
            # and the connection is gone before the next call
            mine = await r.client_id()
            other = aioredis.Redis.from_url(service_url("redis"))
            await other.client_kill_filter(_id=mine)
            await other.aclose()
            got = await b.fetch([queue], 10, "c", timeout=1)
            assert [d.body for d in got] == [b"lost"]
            assert await b.fetch([queue], 10, "c", timeout=0.1) == []  # "held" stays held
            await b.ack([held, *got])
            assert await b.depth([queue]) == {queue: (0, 0)}
        finally:
            await b.delete([queue])
            await b.close()

    asyncio.run(scenario())


def test_reconnects_after_a_server_restart() -> None:
    """Redis is shut down while the broker is in use and started again 1.5s later.

    The test machine's Redis runs without persistence, so the restart loses every message;
    this test can therefore check only that the broker rides out the outage (a publish made
    while Redis is down waits and retries until it is back) and then works again, including
    the consumer group it recreates for its declared queue, not that messages survive.
    """
    url = service_url("redis")
    if not url.startswith("redis://127.0.0.1:6379") or shutil.which("redis-server") is None:
        pytest.skip("restarts only the local Redis on 127.0.0.1:6379 started by redis-server")
    url = _with(url, "retry_for=30")
    queue = f"restart.{uuid.uuid4().hex[:10]}.q"

    async def scenario() -> float:
        b = open_broker(url)
        await b.connect()
        try:
            await b.declare([queue])
            await b.publish([(queue, b"before")])
            assert [d.body for d in await b.fetch([queue], 10, "c", timeout=1)] == [b"before"]
            subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], check=False)

            def start_later() -> None:
                time.sleep(1.5)
                _start_redis()

            restarted = asyncio.get_running_loop().run_in_executor(None, start_later)
            started = time.monotonic()
            await b.publish([(queue, b"after")])  # Redis is down: retries until it is back
            waited = time.monotonic() - started
            await restarted
            got = await b.fetch([queue], 10, "c", timeout=5)
            assert [(d.body, d.delivery) for d in got] == [(b"after", 1)]
            assert await b.depth([queue]) == {queue: (1, 5)}
            await b.ack(got)
            assert await b.depth([queue]) == {queue: (0, 0)}
            await b.delete([queue])
            return waited
        finally:
            await b.close()

    try:
        waited = asyncio.run(scenario())
    finally:
        _start_redis()  # whatever happened, leave the shared Redis running
    assert waited >= 1.0, "the publish should have waited for the restarted server"
