"""RabbitMQ queues (AMQP 0-9-1) through aio-pika.

Features
    Durable queues (quorum queues by default, or classic), persistent messages, publisher
    confirms with all of a batch in flight at once. One consumer per input queue pushes up to
    ``prefetch`` messages ahead into a local buffer; acks go several at once where contiguous.
    Delayed retries through ``{queue}.delay`` (per-message TTL, then dead-lettered back);
    dead letters in ``{queue}.dead``, with replay. The connection recovers after a broker
    restart, and operations it cut off are retried. Where AMQP has no exact figure:

    * Delivery count: a header counts retries; a redelivery after a consumer died adds one
      (``redelivered``: several count as one on classic queues; quorum queues'
      ``x-delivery-count`` is exact). Peeked messages come back redelivered, counting one more.
    * ``depth``/``stats`` count messages waiting in a queue and its delay queue, not those
      held by consumers (``counts_in_flight``), and no bytes (``counts_bytes``); ``peek``
      (``basic.get``, then requeue) and ``purge`` see waiting messages only.
    * ``release`` returns 0: RabbitMQ requeues what a consumer held once its connection
      closes (at once for a dead process, after the heartbeat timeout for a lost host).
    * A retry delay is a minimum: RabbitMQ expires per-message TTLs only at the head of a
      queue, so a short delay queued behind a longer one waits for it.
    * ``dead_letters``/``replay`` without a queue cover the queues this object declared.
      Dead-letter queues are classic queues, so that listing them (``basic.get``, then
      requeue) never counts against a delivery limit; replay goes through a queue in parts
      of ``REPLAY_PART``, so it holds no more than that unacknowledged.
    * At-least-once: a settlement cut off by a connection loss is redelivered. Quorum queues
      (the default) hand expired delay messages back at least once, with a delivery limit
      declared (``delivery_limit``) whose overflow goes to the dead-letter queue, never
      dropped; classic queues hand delay messages back at most once (a broker crash at that
      moment can lose one), which the broker says at start.

Connection string
    ``amqp://user:password@host:5672/vhost``, or ``amqps://`` for TLS (with aio-pika's
    ``cafile``, ``certfile``, ``keyfile``, ``no_verify_ssl``). Passwords never show in errors
    or logs.

Options (URL query; durations in seconds, or written as 30s, 500ms, 2m)
    ``queue_type=quorum|classic`` -- the type of the queues declared (default quorum: see
    At-least-once). ``delivery_limit=N`` -- deliveries after which a quorum queue moves a
    message to its dead-letter queue by itself (default 100: a backstop; workers give up
    after a processor's retries).
    ``prefetch=N`` -- messages pushed ahead to each consumer (default: the fetch limit).
    ``retry_for=SECONDS`` -- how long an operation waits for a lost connection (default 30).
    Others (``heartbeat``, ``reconnect_interval`` (default 1), ...) go to aio-pika.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import BrokerError, BrokerUnreachable
from . import amqp_batch
from .amqp_batch import Outgoing, publish_batch
from .base import Broker, DeadLetter, Delivery, QueueStats, Settlement, require, rotate
from .retry import Retrying
from .url import BrokerURL

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractRobustConnection
    from aiormq.abc import AbstractChannel as Wire
    from aiormq.abc import DeliveredMessage

log = logging.getLogger("elasticcode.brokers.rabbitmq")
T = TypeVar("T")

COUNT = "x-ec-deliveries"  # deliveries before this copy was published
ERROR = "x-ec-error"
FAILED_AT = "x-ec-failed-at"  # milliseconds since the epoch
LINGER = 0.002  # after a first delivery, gather those right behind it for this long
MAX_ERROR_CHARS = 16_000  # headers travel in one frame (128 KiB by default)
REPLAY_PART = 500  # dead letters a replay holds unacknowledged at a time


def delay_queue(queue: str) -> str:
    return f"{queue}.delay"


def dead_queue(queue: str) -> str:
    return f"{queue}.dead"


class _Consuming:
    """The consumer channel and what it holds; replaced after every reconnection."""

    def __init__(self, channel: Wire, wake: asyncio.Event) -> None:
        self.channel = channel
        self.tags: dict[str, str] = {}  # queue -> consumer tag
        self.ready: dict[str, deque[DeliveredMessage]] = {}  # pushed, not yet fetched
        self.outstanding: dict[int, str] = {}  # unacknowledged delivery tags, in order
        self.qos = 0
        channel.on_consumer_cancel_callbacks.add(self._cancelled)
        channel.closing.add_done_callback(lambda _: wake.set())

    def _cancelled(self, frame: Any) -> None:  # by RabbitMQ, e.g. the queue was deleted
        self.tags = {q: t for q, t in self.tags.items() if t != frame.consumer_tag}


class RabbitMQBroker(Broker):
    schemes = ("amqp", "amqps")
    counts_in_flight = False
    peeks_in_flight = False
    releases_held = False
    counts_bytes = False

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._aio = require("aio_pika", "rabbitmq")
        aiormq = require("aiormq", "rabbitmq")
        self._errors, self._properties = aiormq.exceptions, aiormq.spec.Basic.Properties
        self._options = options = BrokerURL("rabbitmq", url)
        self.queue_type = options.choice("queue_type", "quorum", ("classic", "quorum"))
        self.delivery_limit = options.integer("delivery_limit", 100, low=1)
        self.prefetch = options.integer("prefetch", 0, low=0)
        self.retry_for = options.seconds("retry_for", 30)
        secure = options.parts.scheme == "amqps"
        self.where = f"RabbitMQ at {options.where('localhost', 5671 if secure else 5672)}"
        self._url = options.passed(reconnect_interval="1")  # the rest is aio-pika's
        self._retrying = Retrying(
            self.where,
            self.retry_for,
            transient=self._cut_off,
            failed=self._failed,
            mask=options.mask,
            log=log,
            pause=self._reconnected,
        )
        self._transient = (OSError, self._errors.ChannelInvalidStateError)
        self._conn: AbstractRobustConnection | None = None
        self._channels: dict[str, AbstractChannel] = {}
        self._lock = asyncio.Lock()  # opening channels
        self._get_lock = asyncio.Lock()  # basic.get without ack on the ops channel
        self._cons: _Consuming | None = None
        self._arrived = asyncio.Event()
        self._known: dict[str, None] = {}  # queues declared through this object, in order
        self._rotation = itertools.count()
        self._batching: bool | None = None  # see _batches

    # -- connection -------------------------------------------------------------------------
    def _scrub(self, exc: BaseException) -> str:
        return self._options.mask(f"{type(exc).__name__}: {exc}")

    async def connect(self) -> None:
        if self._conn is None:
            try:
                self._conn = await self._aio.connect_robust(
                    self._url, timeout=15, client_properties={"connection_name": "elasticcode"}
                )
            except Exception as exc:
                auth = type(exc).__name__ == "ProbableAuthenticationError"
                away = isinstance(exc, OSError | TimeoutError) and not auth
                error = BrokerUnreachable if away else BrokerError
                raise error(f"cannot connect to {self.where} ({self._scrub(exc)})") from None
            self._read_cautions()

    def _read_cautions(self) -> None:
        """What this server does with the queues as declared, from its version."""
        transport = self._conn.transport if self._conn is not None else None
        wire = transport.connection if transport is not None else None
        properties = getattr(wire, "server_properties", None) or {}
        version = str(properties.get("version", ""))
        major_minor = tuple(int(x) for x in version.split(".")[:2] if x.isdigit())
        self.cautions = []
        if self.queue_type == "classic":
            self.cautions.append(
                f"{self.where}: classic queues hand delayed retries back at most once (a "
                "broker crash at that moment can lose one); queue_type=quorum does it at "
                "least once"
            )
        elif major_minor and major_minor < (3, 10):
            self.cautions.append(
                f"{self.where} is RabbitMQ {version}: its quorum queues dead-letter at most "
                "once (at-least-once needs 3.10); upgrade it"
            )
        for caution in self.cautions:
            log.warning("%s", caution)

    async def close(self) -> None:
        conn, self._conn, self._cons = self._conn, None, None
        self._channels.clear()
        if conn is not None:
            try:
                await conn.close()
            except Exception as exc:  # a broken connection must not fail a shutdown
                log.debug("closing the connection to %s: %s", self.where, self._scrub(exc))

    async def _channel(self, role: str) -> Wire:
        """The open channel for a role ("pub" has publisher confirms), reopened if closed."""
        ch = self._channels.get(role)
        if ch is None or ch.is_closed:
            async with self._lock:
                ch = self._channels.get(role)
                if ch is None or ch.is_closed:
                    await self.connect()
                    confirm = role == "pub"
                    ch = self._aio.Channel(
                        self._conn, publisher_confirms=confirm, on_return_raises=confirm
                    )
                    await ch.initialize()
                    self._channels[role] = ch
        return await ch.get_underlay_channel()

    def _up(self) -> bool:
        conn = self._conn
        transport = conn.transport if conn is not None else None
        up = transport is not None and not transport.connection.is_closed
        return up and conn is not None and conn.connected.is_set()

    def _cut_off(self, exc: BaseException) -> bool:
        """Whatever fails while the connection is down is the connection's doing."""
        if isinstance(exc, BrokerError):
            return False
        return not self._up() or isinstance(exc, self._transient)

    def _failed(self, what: str, exc: BaseException, gave_up: bool) -> BaseException:
        if gave_up:
            return BrokerError(
                f"{self.where} unavailable for {self.retry_for:g}s; {what} failed "
                f"({self._scrub(exc)})"
            )
        return exc  # not the connection's doing, nor an AMQP error (see _retry): a bug

    async def _reconnected(self, pause: float, left: float) -> None:
        """Wait for the connection to be back (up to ``left``), then ``pause`` more at most."""
        started = time.monotonic()
        if self._conn is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._conn.connected.wait(), left)
        await asyncio.sleep(min(pause, max(0.0, left - (time.monotonic() - started))))

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]], queue: str = "") -> T:
        """Run ``op``; if the connection is lost meanwhile, wait for it and run it again."""

        async def guarded() -> T:
            try:
                return await op()
            except self._errors.AMQPError as exc:
                if self._cut_off(exc):
                    raise
                raise self._error(exc, queue) from None

        return await self._retrying(what, guarded)

    def _error(self, exc: BaseException, queue: str) -> BrokerError:
        e = self._errors
        if isinstance(exc, e.ChannelNotFoundEntity | e.PublishError):
            return BrokerError(f"queue {queue!r} does not exist on {self.where}; declare it first")
        if isinstance(exc, e.ChannelPreconditionFailed):
            return BrokerError(
                f"queue {queue!r} exists on {self.where} with other settings "
                f"({self._scrub(exc)}); delete it, or set queue_type= to match it"
            )
        return BrokerError(f"{self.where}, queue {queue!r}: {self._scrub(exc)}")

    async def _each(
        self, what: str, queues: Iterable[str], op: Callable[[Wire, str], Awaitable[T]]
    ) -> list[T]:
        """``op(ops channel, queue)`` for each queue, each retried across reconnections."""
        out = []
        for q in queues:

            async def go(q: str = q) -> T:
                return await op(await self._channel("ops"), q)

            out.append(await self._retry(what, go, q))
        return out

    # -- declaring and publishing ------------------------------------------------------------
    def _arguments(self, q: str, kind: str) -> dict[str, Any]:
        """The arguments of the queue (``kind``: main, delay or dead) that serves ``q``."""
        if kind == "dead":  # classic: reading it (get, requeue) counts against no limit
            return {}
        if self.queue_type == "classic":
            return (
                {}
                if kind == "main"
                else {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q}
            )
        # quorum: dead-letter at least once, to the dead-letter queue from the main queue
        # past the delivery limit, back to the main queue from the delay queue
        target = dead_queue(q) if kind == "main" else q
        args: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": target,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        if kind == "main":
            args["x-delivery-limit"] = self.delivery_limit
        return args

    async def declare(self, queues: Sequence[str]) -> None:
        async def declare(ch: Wire, q: str) -> None:
            for name, kind in ((dead_queue(q), "dead"), (q, "main"), (delay_queue(q), "delay")):
                try:
                    await ch.queue_declare(name, durable=True, arguments=self._arguments(q, kind))
                except self._errors.ChannelPreconditionFailed as exc:
                    ch = await self._keep_as_it_is(name, exc)

        await self._each("declare", queues, declare)
        self._known.update(dict.fromkeys(queues))

    async def _keep_as_it_is(self, name: str, exc: BaseException) -> Wire:
        """A queue declared before with other settings (by an earlier version, or by hand):
        it stays as it is, and the broker says what that means. Returns a channel to go on
        with (the refusal closed the one it came on)."""
        ch = await self._channel("ops")
        await ch.queue_declare(name, passive=True)
        caution = (
            f"{self.where}: queue {name!r} exists with other settings than this version "
            f"declares ({self._scrub(exc)}); it keeps them. For quorum queues' at-least-once "
            "retries and delivery limit, delete it when it is empty and run again; or set "
            "queue_type=classic to match an older classic queue"
        )
        if caution not in self.cautions:
            self.cautions.append(caution)
            log.warning("%s", caution)
        return ch

    async def publish(self, items: Sequence[tuple[str, bytes]]) -> None:
        for _, body in items:
            if len(body) > self.max_message_bytes:
                raise BrokerError(
                    f"message of {len(body):,} bytes exceeds the broker limit of "
                    f"{self.max_message_bytes:,} bytes"
                )
        await self._send([Outgoing(q, body) for q, body in items])

    async def _send(self, items: Sequence[Outgoing]) -> None:
        """Publish persistent messages with all confirms in flight at once; publish again
        what a lost connection cut off (a lost confirm may duplicate one: at-least-once)."""
        pending = list(items)

        async def one(ch: Wire, out: Outgoing) -> None:
            # aiormq gives each a random message_id (returns are matched by it; the dead
            # letters' ids for replay)
            props = self._properties(
                delivery_mode=2, headers=out.headers, expiration=out.expiration
            )
            await ch.basic_publish(
                out.body, routing_key=out.queue, properties=props, mandatory=True
            )

        async def attempt() -> None:
            nonlocal pending
            ch = await self._channel("pub")
            if self._batches(ch):
                results = await publish_batch(ch, pending, self._properties)
            else:
                sends = (one(ch, o) for o in pending)
                results = await asyncio.gather(*sends, return_exceptions=True)
            cut = [(o, r) for o, r in zip(pending, results, strict=True) if r is not None]
            for out, exc in cut:  # unroutable (queue missing) or refused: no use retrying
                if not isinstance(exc, (*self._transient, asyncio.CancelledError)):
                    raise self._error(exc, out.queue)
            pending = [out for out, _ in cut]
            if pending:
                raise self._errors.ChannelInvalidStateError(f"publish cut off: {cut[0][1]!r}")

        if pending:
            await self._retry("publish", attempt)

    def _batches(self, ch: Wire) -> bool:
        """Whether this aiormq lets batches go out in one write (see ``amqp_batch``)."""
        if self._batching is None:
            lacking = amqp_batch.missing(ch)
            self._batching = not lacking
            if lacking:
                log.warning(
                    "%s: publishing one message at a time, slower: this aiormq lacks %s, which "
                    "batch publishing needs; install aiormq%s (pip install 'elasticcode[rabbitmq]')",
                    self.where,
                    ", ".join(lacking),
                    amqp_batch.AIORMQ,
                )
        return self._batching

    # -- consuming ---------------------------------------------------------------------------
    async def _consume(self, queues: Sequence[str], limit: int, consumer: str) -> _Consuming:
        """The consumer channel, with a consumer on each of ``queues``."""
        cons = self._cons
        if cons is None or cons.channel.is_closed:  # what the old channel held was requeued
            cons = self._cons = _Consuming(await self._channel("consume"), self._arrived)
        missing = [q for q in queues if q not in cons.tags]
        if missing:  # a missing queue would close the consumer channel: check on another
            await self._each("fetch", missing, lambda ch, q: ch.queue_declare(q, passive=True))
            prefetch = self.prefetch or max(1, limit)
            if cons.qos != prefetch:  # applies to consumers started from now on
                await cons.channel.basic_qos(prefetch_count=prefetch)
                cons.qos = prefetch
            for q in missing:
                tag = f"{consumer[:150]}|{q[:80]}|{uuid.uuid4().hex[:8]}"
                ready = cons.ready.setdefault(q, deque())

                async def received(m: DeliveredMessage, q: str = q, ready: Any = ready) -> None:
                    cons.outstanding[m.delivery_tag or 0] = q
                    ready.append(m)
                    self._arrived.set()

                await cons.channel.basic_consume(q, received, consumer_tag=tag)
                cons.tags[q] = tag
        return cons

    async def fetch(
        self, queues: Sequence[str], limit: int, consumer: str, timeout: float
    ) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        consume = functools.partial(self._consume, queues, limit, consumer)
        cons = await self._retry("fetch", consume)
        out: list[Delivery] = []
        while len(out) < limit:
            self._arrived.clear()
            if cons.channel.is_closed:  # reconnected: consume again
                cons = await self._retry("fetch", consume)
            more = self._take(cons, queues, limit - len(out))
            out += more
            if more:
                continue
            # wait for a first delivery, then briefly for the rest of its burst
            left = LINGER if out else deadline - time.monotonic()
            try:
                await asyncio.wait_for(self._arrived.wait(), max(0.0, left))
            except TimeoutError:
                break
        return out

    def _take(self, cons: _Consuming, queues: Sequence[str], limit: int) -> list[Delivery]:
        if cons.channel.is_closed:  # RabbitMQ requeued what it had pushed
            return []
        queues = rotate(list(queues), self._rotation)
        out: list[Delivery] = []
        for q in queues:
            ready = cons.ready.get(q)
            while ready and len(out) < limit:
                m = ready.popleft()
                out.append(Delivery(q, m.body, (cons, m.delivery_tag), _deliveries(m)))
        return out

    # -- settling ----------------------------------------------------------------------------
    def _holds(self, d: Delivery) -> bool:
        """Whether a delivery is still ours: those of a closed channel were requeued."""
        cons = self._cons
        return cons is not None and d.tag[0] is cons and d.tag[1] in cons.outstanding

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        cons = self._cons
        tags = {d.tag[1] for d in deliveries if self._holds(d)}
        if cons is None or not tags:
            return
        prefix = list(itertools.takewhile(tags.__contains__, cons.outstanding))
        for t in tags:
            del cons.outstanding[t]
        try:
            if prefix:  # one ack covers every outstanding delivery up to the last of these
                await cons.channel.basic_ack(prefix[-1], multiple=True)
            for t in tags.difference(prefix):
                await cons.channel.basic_ack(t)
        except self._transient as exc:
            log.info("%s: ack lost (%s); redelivery follows", self.where, self._scrub(exc))

    async def settle(self, settlement: Settlement) -> None:
        """Outputs first, then retried and dead-lettered copies (all confirmed), then acks."""
        if settlement.publish:
            await self.publish(settlement.publish)
        moved: list[Outgoing] = []
        now = int(time.time() * 1000)
        for d, error in settlement.dead:  # a requeued delivery comes back by itself: no copy
            if self._holds(d):
                info = {COUNT: d.delivery, ERROR: error[:MAX_ERROR_CHARS], FAILED_AT: now}
                moved.append(Outgoing(dead_queue(d.queue), d.body, info))
        for d, delay, error in settlement.retry:
            if self._holds(d):
                info, ms = {COUNT: d.delivery, ERROR: error[:MAX_ERROR_CHARS]}, round(delay * 1000)
                to, expiration = (delay_queue(d.queue), str(ms)) if ms > 0 else (d.queue, None)
                moved.append(Outgoing(to, d.body, info, expiration))
        await self._send(moved)
        dead = [d for d, _ in settlement.dead]
        await self.ack([*settlement.ack, *dead, *(d for d, _, _ in settlement.retry)])

    async def release(self, consumer: str) -> int:
        """Nothing to do: RabbitMQ requeued what the consumer held when its connection closed."""
        return 0

    # -- inspecting and managing -------------------------------------------------------------
    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        async def count(ch: Wire, q: str) -> QueueStats:
            waiting = await ch.queue_declare(q, passive=True)
            delayed = await ch.queue_declare(delay_queue(q), passive=True)
            return QueueStats((waiting.message_count or 0) + (delayed.message_count or 0))

        return dict(zip(queues, await self._each("depth", queues, count), strict=True))

    async def dead_letter_count(self, queues: Sequence[str]) -> int:
        async def count(ch: Wire, q: str) -> int:
            return (await ch.queue_declare(dead_queue(q), passive=True)).message_count or 0

        return sum(await self._each("count dead letters", queues, count))

    async def purge(self, queue: str) -> int:
        async def purge(ch: Wire, q: str) -> int:
            done = [await ch.queue_purge(name) for name in (q, delay_queue(q))]
            return sum(p.message_count or 0 for p in done)

        return (await self._each("purge", [queue], purge))[0]

    async def delete(self, queues: Sequence[str]) -> None:
        async def delete(ch: Wire, q: str) -> None:
            for name in (q, delay_queue(q), dead_queue(q)):
                await ch.queue_delete(name)  # RabbitMQ cancels our consumers on it

        await self._each("delete", queues, delete)
        for q in queues:
            self._known.pop(q, None)

    async def _look(self, queue: str, limit: int) -> list[DeliveredMessage]:
        """Up to ``limit`` messages at the head of a queue, read with ``basic.get`` and put
        back in place (``nack``, requeue)."""

        async def go() -> list[DeliveredMessage]:
            async with self._get_lock:
                ch = await self._channel("ops")
                taken = await self._get(ch, queue, limit)
                if taken and not ch.is_closed:
                    await ch.basic_nack(taken[-1].delivery_tag or 0, multiple=True, requeue=True)
                return taken

        return await self._retry("read", go, queue)

    async def _get(self, ch: Wire, queue: str, limit: int) -> list[DeliveredMessage]:
        taken: list[DeliveredMessage] = []
        while len(taken) < limit:
            m = await ch.basic_get(queue)
            if m.delivery_tag is None:  # Basic.GetEmpty
                break
            taken.append(m)
        return taken

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        return [m.body for m in await self._look(queue, limit)]

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        letters = [
            _letter(q, m)
            for q in ([queue] if queue is not None else list(self._known))
            for m in await self._look(dead_queue(q), limit)
        ]
        return sorted(letters, key=lambda letter: letter.failed_at)[:limit]

    async def replay(self, ids: Sequence[Any] | None = None, queue: str | None = None) -> int:
        wanted = None if ids is None else {str(i) for i in ids}
        replayed = 0
        for q in [queue] if queue is not None else list(self._known):
            replayed += await self._replay(q, wanted)
            if wanted is not None and not wanted:
                break
        return replayed

    async def _replay(self, q: str, wanted: set[str] | None) -> int:
        """Once round ``q``'s dead-letter queue, a part at a time: the wanted letters (all,
        for None) go to ``q`` with their delivery count reset, the others to the back of the
        dead-letter queue as they were; each part published (confirmed), then acknowledged.
        The round ends where the first letter put back comes round again, or the queue ends."""
        dead = dead_queue(q)
        moved, first_back = 0, None

        async def part() -> tuple[bool, str | None]:
            nonlocal moved
            async with self._get_lock:
                ch = await self._channel("ops")
                taken = await self._get(ch, dead, REPLAY_PART)
                ids = [_id(m) for m in taken]
                end = ids.index(first_back) if first_back in ids else len(taken)
                ahead, again = taken[:end], taken[end:]
                chosen = [m for m in ahead if wanted is None or _id(m) in wanted]
                back = [
                    Outgoing(dead, m.body, m.header.properties.headers, None, _id(m))
                    for m in ahead
                    if m not in chosen
                ]
                await self._send([Outgoing(q, m.body) for m in chosen] + back)
                if ahead:
                    await ch.basic_ack(ahead[-1].delivery_tag or 0, multiple=True)
                if again:  # round the whole queue: those go back where they were
                    await ch.basic_nack(again[-1].delivery_tag or 0, multiple=True, requeue=True)
                if wanted is not None:
                    wanted.difference_update(_id(m) for m in chosen)
                moved += len(chosen)
                done = not taken or bool(again) or (wanted is not None and not wanted)
                return done, (back[0].message_id if back else None)

        while True:
            done, put_back = await self._retry("replay", part, dead)
            first_back = first_back or put_back
            if done:
                return moved


def _id(m: DeliveredMessage) -> str:
    return m.header.properties.message_id or ""


def _deliveries(m: DeliveredMessage) -> int:
    """How often a message has been handed out, this delivery included (see above)."""
    headers = m.header.properties.headers or {}
    before, returned = headers.get(COUNT), headers.get("x-delivery-count")  # quorum: exact
    count = before if isinstance(before, int) else 0
    return count + 1 + (returned if isinstance(returned, int) else int(bool(m.redelivered)))


def _letter(queue: str, m: DeliveredMessage) -> DeadLetter:
    headers = m.header.properties.headers or {}
    error, failed, count = headers.get(ERROR, ""), headers.get(FAILED_AT), headers.get(COUNT)
    error = error.decode() if isinstance(error, bytes) else str(error)
    if not error and headers.get("x-death"):  # moved by RabbitMQ itself, past the limit
        error = "handed out more often than the queue's delivery limit, never settled"
        count = headers.get("x-delivery-count", count)
    count, at = (
        count if isinstance(count, int) else 0,
        failed / 1000 if isinstance(failed, int) else 0.0,
    )
    return DeadLetter(_id(m), queue, m.body, error, count, at)
