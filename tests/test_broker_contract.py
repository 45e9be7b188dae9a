"""The broker contract, run against every backend on its real server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from elasticcode.brokers import Broker, Delivery, Settlement, open_broker
from elasticcode.errors import BrokerError, UnknownBackend

from .services import service_url

T = TypeVar("T")

#: Every backend runs the whole contract; others join this list as they are built.
BACKENDS = ["sqlite", "redis", "rabbitmq", "nats", "sqs"]


_loop: asyncio.AbstractEventLoop | None = None


@pytest.fixture(autouse=True)
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop per test: async clients stay bound to the loop that opened them."""
    global _loop
    _loop = asyncio.new_event_loop()
    yield _loop
    _loop.close()
    _loop = None


def run(coro: Awaitable[T]) -> T:
    assert _loop is not None
    return _loop.run_until_complete(coro)


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queues.db'}?lease=30"
    if request.param == "sqs":  # a dead consumer's messages come back when visibility runs out
        return service_url("sqs") + "&visibility=5"
    return service_url(request.param)


BrokerFactory = Callable[..., Broker]


@pytest.fixture
def names() -> tuple[str, str]:
    """Queue names of this test alone, so that tests on a shared server never meet."""
    tag = uuid.uuid4().hex[:10]
    return f"contract.{tag}.q", f"contract.{tag}.q2"


@pytest.fixture
def make(url: str, names: tuple[str, str]) -> Iterator[BrokerFactory]:
    made: list[Broker] = []

    def factory(**options: Any) -> Broker:
        b = open_broker(url, **options)
        run(b.connect())
        run(b.declare(list(names)))
        made.append(b)
        return b

    yield factory
    for b in made:
        run(b.close())
    cleaner = open_broker(url)
    run(cleaner.connect())
    run(cleaner.delete(list(names)))
    run(cleaner.close())


@pytest.fixture
def Q(names: tuple[str, str]) -> str:
    return names[0]


@pytest.fixture
def Q2(names: tuple[str, str]) -> str:
    return names[1]


def bodies(q: str, n: int, prefix: str = "m") -> list[tuple[str, bytes]]:
    return [(q, f"{prefix}{i}".encode()) for i in range(n)]


def test_publish_fetch_ack(make: BrokerFactory, Q: str) -> None:
    b = make()
    run(b.publish(bodies(Q, 5)))
    got = run(b.fetch([Q], 10, "c1", timeout=1))
    assert [d.body for d in got] == [f"m{i}".encode() for i in range(5)]
    assert all(d.delivery == 1 for d in got)
    if b.counts_in_flight:
        assert run(b.depth([Q]))[Q][0] == 5
    run(b.ack(got))
    assert run(b.depth([Q]))[Q] == (0, 0)
    assert run(b.fetch([Q], 10, "c1", timeout=0.05)) == []


def test_empty_payload_and_limit(make: BrokerFactory, Q: str) -> None:
    b = make(max_message_bytes=1024)
    run(b.publish([(Q, b""), (Q, b"x" * 1024)]))
    assert [len(d.body) for d in run(b.fetch([Q], 10, "c", timeout=1))] == [0, 1024]
    with pytest.raises(BrokerError, match="exceeds the broker limit of 1,024 bytes"):
        run(b.publish([(Q, b"x" * 1025)]))


def test_redelivery_after_consumer_dies(make: BrokerFactory, Q: str) -> None:
    dying, survivor = make(), make()
    run(dying.publish(bodies(Q, 3)))
    held = run(dying.fetch([Q], 2, "dying", timeout=5))
    assert [d.body for d in held] == [b"m0", b"m1"]
    other = run(survivor.fetch([Q], 10, "survivor", timeout=5))
    assert [d.body for d in other] == [b"m2"]
    run(dying.close())  # dies without settling; its agent then releases what it held
    run(survivor.release("dying"))
    again = run(survivor.fetch([Q], 10, "survivor", timeout=30))
    assert [(d.body, d.delivery) for d in again] == [(b"m0", 2), (b"m1", 2)]


def test_competing_consumers_share_without_loss(make: BrokerFactory, Q: str) -> None:
    producer = make()
    consumers = [make() for _ in range(3)]
    run(producer.publish(bodies(Q, 300)))
    seen: list[bytes] = []

    async def consume(b: Broker, name: str) -> None:
        while True:
            got = await b.fetch([Q], 7, name, timeout=0.1)
            if not got:
                return
            seen.extend(d.body for d in got)
            await b.ack(got)

    async def all_of_them() -> None:
        await asyncio.gather(*(consume(b, f"c{i}") for i, b in enumerate(consumers)))

    run(all_of_them())
    sent = sorted(body for _, body in bodies(Q, 300))
    if producer.eventually_consistent:  # SQS: now and then one copy more, never one less
        assert sorted(set(seen)) == sent and len(seen) - len(sent) <= 3
    else:
        assert sorted(seen) == sent


def test_retry_with_delay(make: BrokerFactory, Q: str) -> None:
    b = make()
    run(b.publish(bodies(Q, 1)))
    (d,) = run(b.fetch([Q], 1, "c", timeout=1))
    retried = time.monotonic()
    run(b.retry(d, 1.5, "boom"))  # generous: a loaded CI machine must not reach the delay early
    assert run(b.fetch([Q], 1, "c", timeout=0.05)) == []
    (again,) = run(b.fetch([Q], 1, "c", timeout=10))
    assert time.monotonic() - retried >= 1.4
    assert again.delivery == 2


def test_dead_letter_inspect_and_replay(make: BrokerFactory, Q: str) -> None:
    b = make()
    run(b.publish(bodies(Q, 2)))
    first, second = run(b.fetch([Q], 2, "c", timeout=1))
    run(b.settle(Settlement(ack=[second], dead=[(first, "ValueError: bad input")])))
    assert run(b.depth([Q]))[Q][0] == 0
    (letter,) = run(b.dead_letters(Q))
    assert (letter.queue, letter.body, letter.error, letter.deliveries) == (
        Q,
        b"m0",
        "ValueError: bad input",
        1,
    )
    assert run(b.replay([letter.id])) == 1
    assert run(b.dead_letters(Q)) == []
    assert [d.body for d in run(b.fetch([Q], 5, "c", timeout=1))] == [b"m0"]


def test_settle_publishes_before_ack(make: BrokerFactory, Q: str, Q2: str) -> None:
    b = make()
    run(b.publish(bodies(Q, 2)))
    got = run(b.fetch([Q], 2, "c", timeout=1))
    run(b.settle(Settlement(publish=[(Q2, d.body + b"!") for d in got], ack=got)))
    assert run(b.depth([Q, Q2])) == {Q: (0, 0), Q2: (2, 6 if b.counts_bytes else 0)}
    assert run(b.peek(Q2)) == [b"m0!", b"m1!"]


def test_fetch_from_several_queues(make: BrokerFactory, Q: str, Q2: str) -> None:
    b = make()
    run(b.publish([(Q, b"a"), (Q2, b"b")]))
    got = run(b.fetch([Q, Q2], 10, "c", timeout=1))
    assert sorted((d.queue, d.body) for d in got) == [(Q, b"a"), (Q2, b"b")]


def test_a_waiting_fetch_takes_what_arrives(make: BrokerFactory, Q: str, Q2: str) -> None:
    """A fetch that found nothing and waits hands out a message published meanwhile, as
    its first delivery, held by that consumer until it is acknowledged."""
    b, producer = make(), make()

    async def scenario() -> list[Delivery]:
        waiting = asyncio.ensure_future(b.fetch([Q, Q2], 10, "c", timeout=10))
        await asyncio.sleep(0.3)  # the fetch is waiting by now
        assert not waiting.done()
        await producer.publish([(Q2, b"late")])
        return await waiting

    got = run(scenario())
    assert [(d.queue, d.body, d.delivery) for d in got] == [(Q2, b"late", 1)]
    assert run(producer.fetch([Q, Q2], 10, "other", timeout=0.05)) == []
    run(b.ack(got))
    assert run(b.depth([Q2]))[Q2] == (0, 0)


def test_depth_stats_purge_and_peek(make: BrokerFactory, Q: str) -> None:
    b = make()
    run(b.publish(bodies(Q, 4)))
    run(b.fetch([Q], 1, "c", timeout=1))
    # a backend that cannot see held messages counts and purges the 3 waiting ones
    held = 1 if b.counts_in_flight else 0
    stats = run(b.stats([Q]))[Q]
    size = 2 * (3 + held) if b.counts_bytes else 0
    assert (stats.messages, stats.bytes, stats.in_flight) == (3 + held, size, held)
    assert run(b.peek(Q, 2)) == ([b"m0", b"m1"] if b.peeks_in_flight else [b"m1", b"m2"])
    assert run(b.purge(Q)) == 3 + held
    assert run(b.depth([Q]))[Q] == (0, 0)


def test_survives_reopen(make: BrokerFactory, Q: str, url: str) -> None:
    b = make()
    run(b.publish(bodies(Q, 3)))
    run(b.close())
    again = make()
    assert [d.body for d in run(again.fetch([Q], 10, "c", timeout=1))] == [b"m0", b"m1", b"m2"]


def test_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(UnknownBackend, match=r"No broker for 'sqlit' URLs.*Did you mean sqlite://"):
        open_broker("sqlit:///x.db")
    with pytest.raises(UnknownBackend, match="cannot load broker backend"):
        open_broker("no_such_module:Broker")
