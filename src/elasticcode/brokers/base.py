"""The broker contract: the few primitives every queue backend implements.

Every connection in a flow is a durable queue on a broker. Workers ``fetch`` deliveries with a
prefetch limit, run the processor, then ``settle`` the batch: publish the outputs, acknowledge
the inputs, schedule retries and dead-letter what has failed for good. ``settle`` must not
acknowledge an input before its outputs are durable; a backend that can do all of it in one
transaction (the embedded SQLite broker) overrides it to do so atomically.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import BrokerError
from ..message import DEFAULT_MAX_MESSAGE_BYTES

T = TypeVar("T")


@dataclass(slots=True)
class Delivery:
    """A message handed to one consumer, held by it until settled."""

    queue: str
    body: bytes
    tag: Any
    #: How many times this message has been handed out, this delivery included.
    delivery: int = 1


@dataclass(slots=True)
class QueueStats:
    messages: int = 0
    bytes: int = 0
    in_flight: int = 0


@dataclass(slots=True)
class DeadLetter:
    id: Any
    queue: str
    body: bytes
    error: str
    deliveries: int
    failed_at: float


@dataclass(slots=True)
class Settlement:
    """Everything one consumer decided about one batch."""

    publish: list[tuple[str, bytes]] = field(default_factory=list)
    ack: list[Delivery] = field(default_factory=list)
    #: (delivery, delay in seconds, error text)
    retry: list[tuple[Delivery, float, str]] = field(default_factory=list)
    #: (delivery, error text)
    dead: list[tuple[Delivery, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.publish or self.ack or self.retry or self.dead)


def rotate(items: list[T], turns: Iterator[int]) -> list[T]:
    """``items`` rotated by the next of ``turns``, so that no input queue starves the others."""
    if len(items) < 2:
        return items
    start = next(turns) % len(items)
    return items[start:] + items[:start]


def require(module: str, extra: str) -> Any:
    """Import a backend's driver, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BrokerError(
            f"this broker needs the {module!r} package: pip install 'elasticcode[{extra}]'"
        ) from None


class Broker(abc.ABC):
    """Base class of queue backends. Subclasses implement the abstract primitives.

    The contract, which ``tests/test_broker_contract.py`` checks against every backend:

    * ``publish`` returns only once the broker holds the messages durably (confirmed).
    * ``fetch`` hands a message to one consumer at a time; ``Delivery.delivery`` counts how
      often it has been handed out (1 the first time, +1 on every redelivery or retry).
    * A message is held until ``ack``, ``retry`` or ``dead_letter``; if its consumer dies,
      the message is handed out again (at once after ``release`` or ``release_all``, else
      after a lease/ack timeout).
    * ``retry`` makes a message visible again after a delay; ``dead_letter`` keeps the body
      with the error until ``replay`` puts it back (delivery count reset).
    * ``depth`` counts messages not yet acknowledged. Where ``counts_in_flight`` is False it
      counts only those waiting, not those held by consumers; where ``counts_bytes`` is False
      the byte figure is 0. Where ``peeks_in_flight`` is False, ``peek`` sees waiting
      messages only.
    * Where ``lease`` is set, a held message goes to another consumer after that many seconds
      unless ``extend`` renews it; workers renew what they hold while they work on it.
    * Bodies over ``max_message_bytes`` are refused with a ``BrokerError``.
    * Everything runs in the event loop that called ``connect``.
    """

    #: URL schemes this backend serves.
    schemes: tuple[str, ...] = ()
    #: ``depth`` includes messages held (unacknowledged) by consumers.
    counts_in_flight: bool = True
    #: ``depth`` reports the bytes held in a queue.
    counts_bytes: bool = True
    #: ``peek`` sees messages held by consumers too, not only those waiting.
    peeks_in_flight: bool = True
    #: ``release`` hands back what a consumer in any process held; where False, the broker
    #: returns a dead consumer's messages by itself (on disconnect, or after a timeout).
    releases_held: bool = True
    #: The broker is a distributed store that answers from replicas: ``depth`` may lag behind
    #: for a while, and a message may now and then reach two consumers (Amazon SQS).
    eventually_consistent: bool = False
    #: Seconds a fetched message stays with its consumer before it is handed out again, unless
    #: ``extend`` renews it; None where the broker keeps it for as long as the consumer lives.
    lease: float | None = None

    def __init__(self, url: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.url = url
        self.max_message_bytes = max_message_bytes
        #: What the broker's server may do to accepted messages (lose them on a restart,
        #: evict them): sentences found at ``connect``, for the run to show.
        self.cautions: list[str] = []

    def largest_body(self) -> int:
        """The largest body ``publish`` takes (once connected: a server may set it)."""
        return self.max_message_bytes

    async def __aenter__(self) -> Broker:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:  # noqa: B027 - optional hook
        """Open connections; called once before any other method."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abc.abstractmethod
    async def declare(self, queues: Sequence[str]) -> None:
        """Create the named durable queues if they do not exist."""

    @abc.abstractmethod
    async def publish(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Append bodies to queues; return only once the broker holds them durably."""

    @abc.abstractmethod
    async def fetch(
        self, queues: Sequence[str], limit: int, consumer: str, timeout: float
    ) -> list[Delivery]:
        """Take up to ``limit`` visible messages for ``consumer``, waiting up to ``timeout``."""

    @abc.abstractmethod
    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        """Depth (messages and bytes, in-flight included) of each named queue."""

    async def depth(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(messages, bytes) per queue, for back pressure; backends may make it cheaper."""
        return {q: (s.messages, s.bytes) for q, s in (await self.stats(queues)).items()}

    @abc.abstractmethod
    async def release(self, consumer: str) -> int:
        """Make every message held by a consumer that is gone visible again."""

    async def extend(self, deliveries: Sequence[Delivery]) -> None:  # noqa: B027 - optional
        """Renew the lease of deliveries still being worked on (see ``lease``)."""

    async def check(self) -> list[str]:
        """What the broker knows of messages it may have lost since it was declared (a
        server that came back empty, say): a sentence each; [] for nothing."""
        return []

    async def release_all(self) -> int:
        """Make every message that this host's consumers held in the declared queues visible
        again: for a host's only supervisor, starting after its workers died with it. Where
        ``releases_held`` is False the broker did that itself; the default does nothing."""
        return 0

    @abc.abstractmethod
    async def delete(self, queues: Sequence[str]) -> None:
        """Remove queues with their messages and dead letters."""

    @abc.abstractmethod
    async def purge(self, queue: str) -> int:
        """Drop every message of a queue; return how many were dropped."""

    @abc.abstractmethod
    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        """Return the bodies at the head of a queue without taking them."""

    @abc.abstractmethod
    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """List dead-lettered messages, oldest first."""

    async def dead_letter_count(self, queues: Sequence[str]) -> int:
        """How many dead letters the named queues hold; backends may make it cheaper."""
        return sum([len(await self.dead_letters(q, limit=10**9)) for q in queues])

    @abc.abstractmethod
    async def replay(self, ids: Sequence[Any] | None = None, queue: str | None = None) -> int:
        """Put dead letters back on their queues (all, or those named); return the count."""

    @abc.abstractmethod
    async def settle(self, settlement: Settlement) -> None:
        """Publish outputs (confirmed), then acknowledge, retry or dead-letter the inputs.

        Publishing comes first so that an input is never acknowledged before its outputs are
        durable; a crash in between redelivers the input (at-least-once). A backend that can
        do it all in one transaction should.
        """

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove settled deliveries from their queues."""
        await self.settle(Settlement(ack=list(deliveries)))

    async def retry(self, delivery: Delivery, delay: float, error: str) -> None:
        """Return a delivery to its queue, visible again after ``delay`` seconds."""
        await self.settle(Settlement(retry=[(delivery, delay, error)]))

    async def dead_letter(self, delivery: Delivery, error: str) -> None:
        """Move a delivery to the dead-letter store with the error that ended it."""
        await self.settle(Settlement(dead=[(delivery, error)]))
