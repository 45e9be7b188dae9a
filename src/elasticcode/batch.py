"""One batch in a worker: the outputs of each input staged and published in parts
(``Staged``), the batch's leases kept while it is worked on (``Held``), and the per-message
timeout of synchronous code (``alarm``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from .brokers import Broker, Delivery
from .errors import BrokerError
from .message import Message
from .processor import PART, Context, Output, parts, parts_sync

#: (parent, outputs, ids, per-port counts) -> queue bodies
Encode = Callable[[Message, list[Output], Iterable[str], dict[str, int]], list[tuple[str, bytes]]]
#: a part of the outputs published (True), or kept for the batch (False)
Publish = Callable[[list[tuple[str, bytes]]], Awaitable[bool]]

log = logging.getLogger("elasticcode.worker")


class Staged:
    """One input's outputs, encoded part by part as the processor produces them. Past
    ``PART`` waiting, they are published at once (confirmed, and after waiting for room
    downstream), so that a huge fan-out is never all in memory; the input is still
    acknowledged only with its batch, after its last output is durable. A message that fails
    after a part went out has that part published: a retry publishes the same ids again."""

    __slots__ = ("counts", "emitted", "encode", "items", "kept", "msg", "publish")

    def __init__(self, msg: Message, encode: Encode, publish: Publish, keep: bool) -> None:
        """``encode``: outputs to queue bodies (``Worker._encode``); ``publish``: publishes a
        part, or says False when the worker is told to stop (the part then stays for the
        batch); ``keep``: the payloads are kept too, for a processor that keeps results."""
        self.msg, self.encode, self.publish = msg, encode, publish
        self.items: list[tuple[str, bytes]] = []
        self.counts: dict[str, int] = {}
        self.emitted = 0
        #: the payloads emitted, for a processor that keeps its results (else None)
        self.kept: list[Any] | None = [] if keep else None

    async def _add(self, part: list[Output]) -> None:
        self.items += self.encode(self.msg, part, (), self.counts)
        self.emitted += len(part)
        if self.kept is not None:
            self.kept += [out.payload for out in part]
        if len(self.items) >= PART and await self.publish(self.items):
            self.items = []

    async def run_async(self, call: Any, payload: Any, ctx: Context) -> None:
        async for part in parts(call(payload, ctx), ctx):
            await self._add(part)

    async def run_sync(self, call: Any, payload: Any, ctx: Context, limit: float | None) -> None:
        """A sync processor, each step of it under the message's timeout (SIGALRM), the
        publishing between steps outside it."""
        deadline = None if limit is None else time.monotonic() + limit
        with alarm(limit):
            produced = parts_sync(call(payload, ctx), ctx)
            part = next(produced, None)
        while part is not None:
            await self._add(part)
            with alarm(None if deadline is None else deadline - time.monotonic()):
                part = next(produced, None)


class Held:
    """Keeps a fetched batch with its worker while the worker is on it: where the broker
    hands messages out again after a lease (``Broker.lease``), the lease of what is not yet
    settled is renewed every third of it, so a long batch is never given to a second worker
    mid-way. Async processors leave the loop free, and a task renews; sync ones hold it, and
    the worker renews between messages (a single message longer than the lease still loses
    it: keep ``timeout`` below the lease)."""

    def __init__(self, broker: Broker, batch: list[Delivery]) -> None:
        self.broker = broker
        self.pending = list(batch)
        self.every = broker.lease / 3 if broker.lease else None
        self.due = time.monotonic() + (self.every or 0.0)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Held:
        if self.every is not None:
            self._task = asyncio.get_running_loop().create_task(self._keep())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def settled(self, done: list[Delivery]) -> None:
        if done:
            gone = {id(d) for d in done}
            self.pending = [d for d in self.pending if id(d) not in gone]

    async def renew_if_due(self) -> None:
        if self.every is None or time.monotonic() < self.due or not self.pending:
            return
        self.due = time.monotonic() + self.every
        try:
            await self.broker.extend(self.pending)
        except BrokerError as exc:  # the broker hands them out again when the lease ends
            log.warning("cannot renew the lease of %d message(s): %s", len(self.pending), exc)

    async def _keep(self) -> None:
        assert self.every is not None
        while True:
            await asyncio.sleep(max(0.0, self.due - time.monotonic()))
            await self.renew_if_due()


class TimedOut(BaseException):  # not an Exception: processor code cannot catch it by accident
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise TimedOut


@contextlib.contextmanager
def alarm(seconds: float | None) -> Iterator[None]:
    """Interrupt the (synchronous) code inside after ``seconds``: SIGALRM raises in it."""
    if seconds is None:
        yield
        return
    if seconds <= 0:
        raise TimedOut
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
