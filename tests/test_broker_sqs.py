"""The SQS broker beyond the shared contract, against a real SQS-compatible server: URL options,
errors that hide the secret, visibility kept while a message is processed and lost with its
consumer (kill -9), SQS's own redrive to the dead-letter queue, FIFO queues, size limits."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest

from elasticcode.brokers import Broker, Settlement, open_broker
from elasticcode.brokers.sqs import MAX_BODY, SQSBroker
from elasticcode.errors import BrokerError

from .services import service_url


@pytest.fixture
def url() -> str:
    return service_url("sqs")


def option(url: str, *opts: str) -> str:
    return url + "".join(("&" if "?" in url else "?") + o for o in opts)


def on(url: str, test: Callable[..., Awaitable[None]], brokers: int = 1) -> list[str]:
    """Run ``test(queue, *brokers)`` on connected brokers with a queue of its own, deleted after."""
    q = f"sqs-test.{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        made = [open_broker(url) for _ in range(brokers)]
        try:
            for b in made:
                await b.connect()
            await made[0].declare([q])
            await test(q, *made)
        finally:
            await made[0].delete([q])
            for b in made:
                await b.close()

    asyncio.run(main())
    return [q]


def test_options_are_checked() -> None:
    with pytest.raises(BrokerError, match=r"unknown option\(s\) \['colour'\]"):
        open_broker("sqs://h:1?colour=red")
    with pytest.raises(BrokerError, match="visibility must be a number from 2 to 43200"):
        open_broker("sqs://h:1?visibility=1")
    with pytest.raises(BrokerError, match="fifo must be true or false"):
        open_broker("sqs://h:1?fifo=maybe")
    b = open_broker("sqs://h:1?fifo=yes&secure=false&visibility=9")
    assert isinstance(b, SQSBroker)
    assert (b.fifo, b.visibility) == (True, 9)


def test_unreachable_endpoint_names_it_and_hides_the_secret() -> None:
    b = open_broker("sqs://KEY:s3cr3t%2Fx@127.0.0.1:1?secure=false&retry_for=0")
    with pytest.raises(BrokerError, match=r"cannot reach SQS at http://127\.0\.0\.1:1") as err:
        asyncio.run(b.connect())
    assert "s3cr3t" not in str(err.value)


def test_undeclared_queue_says_so(url: str) -> None:
    async def test(q: str, b: Broker) -> None:
        with pytest.raises(BrokerError, match="does not exist; declare it first"):
            await b.publish([("sqs-test.never-declared", b"x")])

    on(url, test)


def test_size_limit_is_sqs_message_limit(url: str) -> None:
    async def test(q: str, b: Broker) -> None:
        await b.publish([(q, b"\x00" * MAX_BODY)])
        (d,) = await b.fetch([q], 1, "c", timeout=5)
        assert d.body == b"\x00" * MAX_BODY
        await b.ack([d])
        with pytest.raises(BrokerError, match="256 KiB message limit"):
            await b.publish([(q, b"x" * (MAX_BODY + 1))])

    on(url, test)


def test_visibility_is_extended_while_held(url: str) -> None:
    async def test(q: str, holder: Broker, other: Broker) -> None:
        await holder.publish([(q, b"slow")])
        (d,) = await holder.fetch([q], 1, "holder", timeout=5)
        # three times the visibility timeout: only the extensions keep it from the other one
        assert await other.fetch([q], 1, "other", timeout=6) == []
        await holder.ack([d])
        assert (await holder.depth([q]))[q] == (0, 0)

    on(option(url, "visibility=2"), test, brokers=2)


CONSUMER = """
import asyncio, sys
from elasticcode.brokers import open_broker

async def main():
    b = open_broker(sys.argv[1])
    await b.connect()
    got = await b.fetch([sys.argv[2]], 5, "doomed", timeout=10)
    print(len(got), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_kill_9_gives_messages_back_after_visibility(url: str) -> None:
    url = option(url, "visibility=2")

    async def test(q: str, b: Broker) -> None:
        await b.publish([(q, b"a"), (q, b"b")])
        code = textwrap.dedent(CONSUMER)
        proc = subprocess.Popen([sys.executable, "-c", code, url, q], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
            assert line.strip() == b"2"
            await asyncio.sleep(2.5)  # longer than the visibility: still held, it is extended
            assert await b.fetch([q], 5, "survivor", timeout=0) == []
            os.kill(proc.pid, signal.SIGKILL)
            died = time.monotonic()
        finally:
            proc.kill()
            proc.communicate()
        got = await b.fetch([q], 5, "survivor", timeout=10)
        got += await b.fetch([q], 5 - len(got), "survivor", timeout=1) if len(got) < 2 else []
        assert sorted((d.body, d.delivery) for d in got) == [(b"a", 2), (b"b", 2)]
        assert time.monotonic() - died < 6
        await b.ack(got)

    on(url, test)


def test_sqs_redrive_policy_moves_a_message_that_is_never_settled(url: str) -> None:
    async def test(q: str, b: Broker) -> None:
        await b.publish([(q, b"crashes-its-consumer")])
        for n in (1, 2):  # received twice, its consumer dying each time
            (d,) = await b.fetch([q], 1, f"c{n}", timeout=5)
            assert d.delivery == n
            await b.release(f"c{n}")
        assert await b.fetch([q], 1, "c3", timeout=1) == []  # SQS moved it on the third receive
        (letter,) = await b.dead_letters(q)
        assert letter.body == b"crashes-its-consumer"
        assert "redrive policy" in letter.error
        assert await b.dead_letter_count([q]) == 1
        assert await b.replay([letter.id]) == 1
        (d,) = await b.fetch([q], 1, "c4", timeout=5)
        assert d.body == b"crashes-its-consumer"
        await b.ack([d])

    on(option(url, "max_receives=2"), test)


def test_dead_letters_keep_the_error_and_survive_listing(url: str) -> None:
    async def test(q: str, b: Broker) -> None:
        await b.publish([(q, b"m0"), (q, b"m1")])
        got = await b.fetch([q], 2, "c", timeout=5)
        await b.settle(Settlement(dead=[(d, f"ValueError: bad {d.body!r}\n\x00") for d in got]))
        for _ in range(2):  # listing puts them back
            letters = await b.dead_letters(q)
            assert sorted(dl.body for dl in letters) == [b"m0", b"m1"]
        assert all(dl.error.startswith("ValueError: bad") for dl in letters)
        assert all(dl.deliveries == 1 for dl in letters)
        assert await b.replay(None, q) == 2
        assert await b.dead_letters(q) == []

    on(url, test)


def test_fifo_queue_keeps_order(url: str) -> None:
    async def test(q: str, b: Broker) -> None:
        sent = [f"m{i}".encode() for i in range(45)]
        await b.publish([(q, body) for body in sent])  # five batches
        seen: list[bytes] = []
        while got := await b.fetch([q], 7, "c", timeout=1):
            if not seen:  # a retried batch comes back first, its deliveries counted
                await b.settle(Settlement(retry=[(d, 0, "boom") for d in got]))
                again = await b.fetch([q], 7, "c", timeout=5)
                assert [(d.body, d.delivery) for d in again] == [(d.body, 2) for d in got]
                got = again
            seen += [d.body for d in got]
            await b.ack(got)
        assert seen == sent

    on(option(url, "fifo=true"), test)


def test_foreign_message_arrives_as_its_text(url: str) -> None:
    async def test(q: str, b: Broker) -> None:
        assert isinstance(b, SQSBroker)
        queue_url = await b._url(q)
        await b.client.send_message(QueueUrl=queue_url, MessageBody="not from elasticcode")
        (d,) = await b.fetch([q], 1, "c", timeout=5)
        assert d.body == b"not from elasticcode"
        await b.ack([d])

    on(url, test)
