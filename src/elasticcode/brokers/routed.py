"""Several brokers behind one: for flows whose connections name brokers of their own.

Every queue lives on one broker: the one its connection names, else the default. Settling a
batch publishes every output first (each broker confirming its own), then acknowledges,
retries or dead-letters each input on the broker it came from, so an input is never
acknowledged before its outputs are durable, wherever they went (at-least-once; the embedded
broker's single transaction holds only within one broker). Dead-letter ids are
``N:ID``, N numbering the brokers, so that ids of different brokers never meet.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import BrokerError
from .base import Broker, DeadLetter, Delivery, QueueStats, Settlement, rotate

#: How long a fetch over several brokers waits on each of them in turn.
SLICE = 0.05


class RoutedBroker(Broker):
    def __init__(self, url: str, brokers: dict[str, Broker], routes: dict[str, str]) -> None:
        """``brokers``: URL -> broker, the default (``url``) included; ``routes``: queue -> URL."""
        super().__init__(url, max_message_bytes=brokers[url].max_message_bytes)
        self._urls = list(brokers)
        self._brokers = list(brokers.values())
        self._default = self._urls.index(url)
        self._routes = {q: self._urls.index(u) for q, u in routes.items()}
        self._rotation = itertools.count()
        for flag in ("counts_in_flight", "counts_bytes", "peeks_in_flight", "releases_held"):
            setattr(self, flag, all(getattr(b, flag) for b in self._brokers))
        self.eventually_consistent = any(b.eventually_consistent for b in self._brokers)
        leases = [b.lease for b in self._brokers if b.lease is not None]
        self.lease = min(leases) if leases else None

    def largest_body(self) -> int:
        return min(b.largest_body() for b in self._brokers)

    def _index(self, queue: str) -> int:
        return self._routes.get(queue, self._default)

    def _split(self, queues: Iterable[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = {}
        for q in queues:
            groups.setdefault(self._index(q), []).append(q)
        return groups

    async def connect(self) -> None:
        for b in self._brokers:
            await b.connect()
            self.cautions += b.cautions

    async def close(self) -> None:
        errors = []
        for b in self._brokers:
            try:
                await b.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    async def declare(self, queues: Sequence[str]) -> None:
        for i, qs in self._split(queues).items():
            await self._brokers[i].declare(qs)

    async def publish(self, items: Sequence[tuple[str, bytes]]) -> None:
        groups: dict[int, list[tuple[str, bytes]]] = {}
        for q, body in items:
            groups.setdefault(self._index(q), []).append((q, body))
        await asyncio.gather(*(self._brokers[i].publish(g) for i, g in groups.items()))

    async def fetch(
        self, queues: Sequence[str], limit: int, consumer: str, timeout: float
    ) -> list[Delivery]:
        groups = list(self._split(queues).items())
        if len(groups) == 1:
            ((i, qs),) = groups
            return await self._brokers[i].fetch(qs, limit, consumer, timeout)
        groups = rotate(groups, self._rotation)  # no broker starves the others
        loop = asyncio.get_running_loop()
        deadline, wait = loop.time() + timeout, 0.0  # a quick look at each, then turns
        while True:
            for i, qs in groups:
                got = await self._brokers[i].fetch(qs, limit, consumer, wait)
                if got:
                    return got
            if (left := deadline - loop.time()) <= 0:
                return []
            wait = min(SLICE, left)

    async def settle(self, settlement: Settlement) -> None:
        await self.publish(settlement.publish)  # every output durable before any input goes
        parts: dict[int, Settlement] = {}

        def part(d: Delivery) -> Settlement:
            return parts.setdefault(self._index(d.queue), Settlement())

        for d in settlement.ack:
            part(d).ack.append(d)
        for d, delay, error in settlement.retry:
            part(d).retry.append((d, delay, error))
        for d, error in settlement.dead:
            part(d).dead.append((d, error))
        await asyncio.gather(*(self._brokers[i].settle(s) for i, s in parts.items()))

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        out: dict[str, QueueStats] = {}
        for i, qs in self._split(queues).items():
            out |= await self._brokers[i].stats(qs)
        return {q: out[q] for q in queues}

    async def depth(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for i, qs in self._split(queues).items():
            out |= await self._brokers[i].depth(qs)
        return {q: out[q] for q in queues}

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        groups: dict[int, list[Delivery]] = {}
        for d in deliveries:
            groups.setdefault(self._index(d.queue), []).append(d)
        await asyncio.gather(*(self._brokers[i].extend(ds) for i, ds in groups.items()))

    async def check(self) -> list[str]:
        return [line for b in self._brokers for line in await b.check()]

    async def release(self, consumer: str) -> int:
        return sum([await b.release(consumer) for b in self._brokers])

    async def release_all(self) -> int:
        return sum([await b.release_all() for b in self._brokers])

    async def delete(self, queues: Sequence[str]) -> None:
        for i, qs in self._split(queues).items():
            await self._brokers[i].delete(qs)

    async def purge(self, queue: str) -> int:
        return await self._brokers[self._index(queue)].purge(queue)

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        return await self._brokers[self._index(queue)].peek(queue, limit)

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        indexes = range(len(self._brokers)) if queue is None else [self._index(queue)]
        out = []
        for i in indexes:
            for dl in await self._brokers[i].dead_letters(queue, limit):
                dl.id = f"{i}:{dl.id}"
                out.append(dl)
        return sorted(out, key=lambda dl: dl.failed_at)[:limit]

    async def dead_letter_count(self, queues: Sequence[str]) -> int:
        counts = [self._brokers[i].dead_letter_count(qs) for i, qs in self._split(queues).items()]
        return sum(await asyncio.gather(*counts))

    async def replay(self, ids: Sequence[Any] | None = None, queue: str | None = None) -> int:
        indexes = range(len(self._brokers)) if queue is None else [self._index(queue)]
        if ids is None:
            return sum([await self._brokers[i].replay(None, queue) for i in indexes])
        by_broker: dict[int, list[str]] = {}
        for full in ids:
            i, sep, own = str(full).partition(":")
            if not (sep and i.isdigit() and int(i) < len(self._brokers)):
                raise BrokerError(
                    f"dead letter {full!r}: this flow's queues are on several brokers, so its "
                    "dead letters are named N:ID; list them to see their names"
                )
            by_broker.setdefault(int(i), []).append(own)
        return sum(
            [
                await self._brokers[i].replay(own, queue)
                for i, own in by_broker.items()
                if i in indexes
            ]
        )
