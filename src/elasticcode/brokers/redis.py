"""Durable queues on Redis Streams (Redis 6.2 or later), through ``redis.asyncio``.

Features
    One stream per queue with one consumer group: competing consumers, each message held by
    one consumer until it is settled. A consumer that dies without settling only delays its
    messages: they go to another consumer once their lease runs out, or at once after
    ``release``. Acknowledged entries are deleted, so ``depth`` (messages and bytes, held and
    delayed ones included) costs O(1). ``settle`` is atomic: outputs are published and inputs
    acknowledged, retried or dead-lettered in one server-side script. Delayed retries wait in
    a sorted set; dead letters keep body, error and delivery count in a stream of their own
    until replayed. Lost connections are retried with backoff (see ``retry_for``). One Redis
    server or a primary with replicas; not Redis Cluster.

Durability
    Redis confirms a write once it is in memory. Messages survive a Redis restart only with
    persistence: with ``appendonly yes`` and ``appendfsync always`` every confirmed write is
    on disk; ``appendfsync everysec`` (Redis' default for AOF) may lose the last second on a
    crash, RDB snapshots alone more. ``wait=N`` also waits until N replicas have each write.

Connection string
    ``redis://[[user]:password@]host[:port][/db]``, or ``rediss://...`` for TLS. redis-py's
    own query options (``ssl_ca_certs``, ``ssl_cert_reqs``, ``socket_timeout``, ...) pass
    through. Passwords never appear in errors or logs.

Options (URL query; durations in seconds, or written as 30s, 500ms, 2m)
    ``lease=SECONDS`` -- how long a fetched message stays with its consumer before it is
    handed out again (default 300). A consumer known to be dead is released at once.
    ``retry_for=SECONDS`` -- how long an operation retries while Redis cannot be reached,
    with backoff, before it fails (default 30). ``connect`` fails at once.
    ``wait=N`` -- after each write, wait until N replicas confirm it (Redis ``WAIT``; default
    0), for up to ``wait_timeout=SECONDS`` (default 5), else fail.
    ``prefix=NAME`` -- key prefix (default ``ec``): keys are ``NAME:q:{queue}`` and so on.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ..errors import BrokerError, BrokerUnreachable
from .base import Broker, DeadLetter, Delivery, QueueStats, Settlement, require, rotate
from .redis_scripts import GROUP, RELEASED, SCRIPTS
from .retry import Retrying
from .url import BrokerURL

log = logging.getLogger("elasticcode.brokers.redis")
T = TypeVar("T")

#: Longest single blocking read: new retries, released or expired messages show up by then.
MAX_BLOCK = 1.0


class RedisBroker(Broker):
    schemes = ("redis", "rediss")
    lease: float = 300.0
    counts_in_flight = True
    counts_bytes = True

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._aioredis = require("redis.asyncio", "redis")
        self._errors = require("redis.exceptions", "redis")
        self._options = BrokerURL("redis", url)
        self._where = self._options.where("localhost", 6379)
        self.lease = self._options.seconds("lease", 300)
        self.retry_for = self._options.seconds("retry_for", 30)
        self.wait = self._options.integer("wait", 0, low=0)
        self.wait_timeout = self._options.seconds("wait_timeout", 5)
        self.prefix = self._options.text("prefix", "ec") or "ec"
        self._client_url = self._options.passed()  # the rest is redis-py's
        e = self._errors
        self._retrying = Retrying(
            f"Redis at {self._where}",
            self.retry_for,
            transient=lambda exc: (
                isinstance(exc, e.ConnectionError | e.TimeoutError | OSError)
                and not isinstance(exc, e.AuthenticationError | e.AuthorizationError)
            ),
            failed=self._failed,
            mask=self._options.mask,
            log=log,
            first=0.05,
            most=1.0,
        )
        self._r: Any = None
        self._scripts: dict[str, Any] = {}
        self._declared: dict[str, None] = {}  # an ordered set
        self._epoch: Any = None  # the server's mark when this broker declared (see check)
        self._rotation = itertools.count()
        #: consumer -> queue -> entry ids fetched and not yet settled (see ``_return_lost``)
        self._held: dict[str, dict[str, set[str]]] = {}

    def _mask(self, text: object) -> str:
        return self._options.mask(text)

    def _failed(self, what: str, exc: BaseException, gave_up: bool) -> BaseException:
        e = self._errors
        if isinstance(exc, e.AuthenticationError | e.AuthorizationError):
            return BrokerError(f"Redis at {self._where} refused the credentials: {self._mask(exc)}")
        if gave_up:
            return BrokerError(
                f"cannot reach Redis at {self._where}: {self._mask(exc).rstrip('.')}; is it "
                f"running? (gave up after retrying for {self.retry_for:g}s)"
            )
        if isinstance(exc, e.ResponseError):
            hint = "; declare the queue first" if "NOGROUP" in str(exc) else ""
            return BrokerError(f"Redis at {self._where}: {self._mask(exc)}{hint}")
        return exc

    # -- keys -------------------------------------------------------------------------------
    def _stream(self, q: str) -> str:
        return f"{self.prefix}:q:{{{q}}}"

    def _keys(self, q: str, *kinds: str) -> list[str]:
        """Keys of one queue: the stream ("") and its "bytes", "delayed" and "dead" keys."""
        return [self._stream(q) + (f":{k}" if k else "") for k in kinds]

    @property
    def _seq(self) -> str:
        return f"{self.prefix}:dead:seq"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:dead:index"

    # -- connection -------------------------------------------------------------------------
    async def connect(self) -> None:
        if self._r is not None:
            return
        retry = require("redis.asyncio.retry", "redis").Retry
        backoff = require("redis.backoff", "redis").NoBackoff
        try:  # our own loop retries; the client's must not hide outages
            r = self._aioredis.from_url(self._client_url, retry=retry(backoff(), 0))
        except (ValueError, TypeError) as exc:
            raise BrokerError(f"bad redis broker URL: {self._mask(exc)}") from None
        self._scripts = {name: r.register_script(text) for name, text in SCRIPTS.items()}
        try:
            await r.ping()
        except Exception as exc:
            await r.aclose()
            if isinstance(exc, TypeError):  # an option redis-py does not know
                raise BrokerError(f"bad redis broker URL option: {self._mask(exc)}") from None
            if isinstance(exc, self._errors.AuthenticationError | self._errors.AuthorizationError):
                raise BrokerError(
                    f"Redis at {self._where} refused the credentials: {self._mask(exc)}"
                ) from None
            away = isinstance(
                exc, self._errors.ConnectionError | self._errors.TimeoutError | OSError
            )
            raise (BrokerUnreachable if away else BrokerError)(
                f"cannot reach Redis at {self._where}: {self._mask(exc).rstrip('.')}; "
                "is it running?"
            ) from None
        self._r = r
        await self._read_cautions()

    async def _read_cautions(self) -> None:
        """What this Redis may do to accepted messages, from its own settings."""
        try:
            config: dict[str, str] = {}
            for key in ("appendonly", "appendfsync", "save", "maxmemory", "maxmemory-policy"):
                config |= {k: str(v) for k, v in (await self._r.config_get(key)).items()}
        except self._errors.ResponseError as exc:  # CONFIG may be forbidden (managed Redis)
            self.cautions = [
                f"Redis at {self._where} does not show its settings ({exc}): make sure it "
                "writes every message to disk (appendonly yes, appendfsync always) and evicts "
                "nothing (maxmemory-policy noeviction), or it can lose accepted messages"
            ]
        else:
            self.cautions = _cautions(self._where, config)
        for caution in self.cautions:
            log.warning("%s", caution)

    async def close(self) -> None:
        if self._r is not None:
            r, self._r = self._r, None
            await r.aclose()

    @property
    def _client(self) -> Any:
        if self._r is None:
            raise BrokerError("redis broker is not connected; call connect() first")
        return self._r

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run one Redis operation, retrying with backoff while Redis cannot be reached."""
        self._client  # noqa: B018 - fails early when not connected
        regrouped = False

        async def once() -> T:
            nonlocal regrouped
            try:
                return await fn(*args, **kwargs)
            except self._errors.ResponseError as exc:
                # a restarted Redis without persistence lost the consumer groups
                if "NOGROUP" not in str(exc) or not self._declared or regrouped:
                    raise
                regrouped = True
                log.error(
                    "Redis at %s lost its consumer groups: it restarted without its data, and "
                    "the messages it held are gone (see the run's report)",
                    self._where,
                )
                await self._create_groups(list(self._declared))
                return await fn(*args, **kwargs)

        what = getattr(fn, "__name__", None)
        what = what or next((f"{n} script" for n, x in self._scripts.items() if x is fn), "call")
        return await self._retrying(what, once)

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._call(self._scripts[name], keys=keys, args=args)

    async def _write(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a writing script; with ``wait=N``, also wait for N replicas to confirm it."""
        if not self.wait:
            return await self._script(name, keys, args)

        async def go() -> Any:
            pipe = self._client.pipeline(transaction=False)
            await self._scripts[name](keys=keys, args=args, client=pipe)
            pipe.wait(self.wait, int(self.wait_timeout * 1000))
            return await pipe.execute()

        result, replicas = await self._call(go)
        if replicas < self.wait:
            raise BrokerError(
                f"only {replicas} of {self.wait} Redis replica(s) confirmed a write within "
                f"{self.wait_timeout:g}s (wait={self.wait})"
            )
        return result

    async def _create_groups(self, queues: Sequence[str]) -> None:
        await self._script("declare", [self._stream(q) for q in queues], [GROUP])

    # -- contract ---------------------------------------------------------------------------
    async def declare(self, queues: Sequence[str]) -> None:
        if queues:
            await self._create_groups(queues)
            self._declared.update(dict.fromkeys(queues))
            if self._epoch is None:  # this server's mark: gone means it came back empty
                await self._call(self._client.set, self._epoch_key, uuid.uuid4().hex, nx=True)
                self._epoch = await self._call(self._client.get, self._epoch_key)

    @property
    def _epoch_key(self) -> str:
        return f"{self.prefix}:epoch"

    async def check(self) -> list[str]:
        """Whether Redis lost what it held since this broker declared its queues: its mark
        gone means it restarted without its data (or was flushed)."""
        if self._epoch is None:
            return []
        now = await self._call(self._client.get, self._epoch_key)
        if now == self._epoch:
            return []
        loss = (
            f"Redis at {self._where} lost the queues' data: it restarted without persistence "
            "(or was flushed), and the messages it held are gone. Messages sent since are "
            "safe; give Redis appendonly yes and appendfsync always to keep this from "
            "happening again"
        )
        log.error("%s", loss)
        self._epoch = None
        await self.declare(list(self._declared))
        return [loss]

    async def publish(self, items: Sequence[tuple[str, bytes]]) -> None:
        await self.settle(Settlement(publish=list(items)))

    async def fetch(
        self, queues: Sequence[str], limit: int, consumer: str, timeout: float
    ) -> list[Delivery]:
        queues = list(queues)
        if limit <= 0 or not queues:
            return []
        queues = rotate(queues, self._rotation)
        keys = [k for q in queues for k in self._keys(q, "", "delayed")]
        args = [GROUP, consumer, limit, int(self.lease * 1000)]
        deadline = time.monotonic() + timeout
        lost = False

        async def taking(take: Callable[[], Awaitable[Any]]) -> Any:
            nonlocal lost
            if lost:  # the answer to the last try may never have arrived, with what it took
                await self._return_lost(consumer, queues)
                lost = False
            try:
                return await take()
            except Exception:
                lost = True
                raise

        async def fetch() -> Any:
            return await taking(lambda: self._scripts["fetch"](keys=keys, args=args))

        async def take_new(block: int) -> Any:
            # new entries, taken as they come in one blocking read; due retries and what
            # expired or released consumers held come through the script above
            streams = dict.fromkeys((self._stream(q) for q in queues), ">")
            return await taking(
                lambda: self._client.xreadgroup(GROUP, consumer, streams, limit, block)
            )

        held = self._held.setdefault(consumer, {})

        def delivery(queue: str, eid: Any, body: Any, n: int) -> Delivery:
            entry = _text(eid)
            held.setdefault(queue, set()).add(entry)
            return Delivery(queue, bytes(body), (entry, consumer), n)

        by_stream = {self._stream(q): q for q in queues}
        while True:
            got, *idle = await self._call(fetch)
            if got:
                return [delivery(queues[i - 1], eid, body, int(n)) for i, eid, body, n in got]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            wake = idle[0]
            if wake >= 0:
                left = min(left, wake / 1000)
            block = max(1, int(min(left, MAX_BLOCK) * 1000))
            out = [
                delivery(by_stream[_text(stream)], eid, f[b"b"], int(f.get(b"n", 0)) + 1)
                for stream, entries in await self._call(take_new, block) or ()
                for eid, f in entries
                if f  # (an entry deleted meanwhile has no fields)
            ]
            if out:
                return out

    def _check(self, items: Sequence[tuple[str, bytes]]) -> None:
        for _, body in items:
            if len(body) > self.max_message_bytes:
                raise BrokerError(
                    f"message of {len(body):,} bytes exceeds the broker limit of "
                    f"{self.max_message_bytes:,} bytes"
                )

    async def settle(self, settlement: Settlement) -> None:
        self._check(settlement.publish)
        numbers: dict[str, int] = {}
        #: (queue, owner) -> the four lists of a section: P, A, R, D fields
        sections: dict[tuple[str, str], tuple[list[Any], ...]] = {}

        def section(queue: str, owner: str) -> tuple[list[Any], ...]:
            numbers.setdefault(queue, len(numbers) + 1)
            return sections.setdefault((queue, owner), ([], [], [], []))

        for queue, body in settlement.publish:
            section(queue, "")[0].append(body)
        for d in settlement.ack:
            section(d.queue, d.tag[1])[1].extend((d.tag[0], len(d.body)))
        for d, delay, _ in settlement.retry:
            section(d.queue, d.tag[1])[2].extend((d.tag[0], max(0, int(delay * 1000)), d.delivery))
        for d, error in settlement.dead:
            section(d.queue, d.tag[1])[3].extend((d.tag[0], len(d.body), d.delivery, error))
        if not sections:
            return
        args: list[Any] = [GROUP, len(numbers), *numbers]
        for (queue, owner), (p, a, r, dead) in sections.items():
            args += [numbers[queue], owner, len(p), len(a) // 2, len(r) // 3, len(dead) // 4]
            args += [*p, *a, *r, *dead]
        keys = [self._seq, self._index]
        keys += [k for q in numbers for k in self._keys(q, "", "bytes", "delayed", "dead")]
        await self._write("settle", keys, args)
        settled = [*settlement.ack, *(d for d, _ in settlement.dead)]
        for d in settled + [d for d, _, _ in settlement.retry]:
            self._held.get(d.tag[1], {}).get(d.queue, set()).discard(d.tag[0])

    async def _return_lost(self, consumer: str, queues: Sequence[str]) -> None:
        """Release what is pending for ``consumer`` in ``queues`` beyond what it was handed:
        entries a fetch took whose answer was lost with the connection (else they would wait
        out the lease). Runs inside a retried operation, so it does not retry by itself."""
        held = self._held.get(consumer, {})
        args: list[Any] = [GROUP, RELEASED, consumer]
        for q in queues:
            args += [len(held.get(q, ())), *held.get(q, ())]
        keys = [self._stream(q) for q in queues]
        n = await self._scripts["return_lost"](keys=keys, args=args)
        if n:
            log.info("%s: %d message(s) of a fetch whose answer was lost released", self._where, n)

    async def _depth(self, queues: Sequence[str], stats: bool) -> list[list[int]]:
        keys = [k for q in queues for k in self._keys(q, "", "delayed", "bytes")]
        if not keys:
            return []
        rows = await self._script("depth", keys, [GROUP, "stats" if stats else "", RELEASED])
        return [[int(v) for v in row] for row in rows]

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        rows = await self._depth(queues, stats=True)
        return {q: QueueStats(*row) for q, row in zip(queues, rows, strict=True)}

    async def depth(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        rows = await self._depth(queues, stats=False)
        return {q: (row[0], row[1]) for q, row in zip(queues, rows, strict=True)}

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        by: dict[str, dict[str, list[str]]] = {}  # consumer -> queue -> entry ids
        for d in deliveries:
            by.setdefault(d.tag[1], {}).setdefault(d.queue, []).append(d.tag[0])
        for consumer, queues in by.items():
            args: list[Any] = [GROUP, consumer]
            for ids in queues.values():
                args += [len(ids), *ids]
            await self._script("extend", [self._stream(q) for q in queues], args)

    async def release(self, consumer: str) -> int:
        if consumer:
            self._held.pop(consumer, None)
        else:
            self._held.clear()
        keys = [self._stream(q) for q in self._declared]
        return int(await self._script("release", keys, [GROUP, RELEASED, consumer]))

    async def release_all(self) -> int:
        """Release every message held in this broker's declared queues (after a restart)."""
        return await self.release("")

    async def delete(self, queues: Sequence[str]) -> None:
        for q in queues:
            keys = [*self._keys(q, "", "delayed", "bytes", "dead"), self._index]
            await self._write("delete", keys, [])
            self._declared.pop(q, None)

    async def purge(self, queue: str) -> int:
        keys = self._keys(queue, "", "delayed", "bytes")
        return int(await self._write("purge", keys, [GROUP]))

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        rows = await self._call(self._client.xrange, self._stream(queue), count=limit)
        return [bytes(fields.get(b"b", b"")) for _, fields in rows]

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        for q in [queue] if queue is not None else list(self._declared):
            (dead,) = self._keys(q, "dead")
            rows = await self._call(self._client.xrange, dead, count=limit)
            out += [
                DeadLetter(
                    int(_text(eid).partition("-")[0]),
                    q,
                    bytes(f.get(b"b", b"")),
                    _text(f.get(b"e", b"")),
                    int(f.get(b"d", 0)),
                    float(f.get(b"t", 0)),
                )
                for eid, f in rows
            ]
        return sorted(out, key=lambda d: int(d.id))[:limit]

    async def replay(self, ids: Sequence[Any] | None = None, queue: str | None = None) -> int:
        jobs: dict[str, list[str]] = {}
        if ids is None:
            jobs = {q: ["*"] for q in ([queue] if queue is not None else self._declared)}
        elif ids:
            numbers = [str(int(i)) for i in ids]
            owners = await self._call(self._client.hmget, self._index, numbers)
            for n, owner in zip(numbers, owners, strict=True):
                if owner is not None and queue in (None, _text(owner)):
                    jobs.setdefault(_text(owner), []).append(n)
        total = 0
        for q, args in jobs.items():
            keys = [self._index, *self._keys(q, "", "bytes", "dead")]
            total += int(await self._write("replay", keys, args))
        return total


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cautions(where: str, config: dict[str, str]) -> list[str]:
    """What a Redis with these settings may do to accepted messages (see the docstring's
    Durability)."""
    out = []
    if config.get("appendonly") != "yes":
        snapshots = (
            f"its last snapshot (save {config.get('save')!r})"
            if config.get("save")
            else "it started"
        )
        out.append(
            f"Redis at {where} keeps no append-only file (appendonly no): a restart can lose "
            f"every message accepted since {snapshots}; set appendonly yes and appendfsync always"
        )
    elif config.get("appendfsync") != "always":
        out.append(
            f"Redis at {where} writes to disk only every so often (appendfsync "
            f"{config.get('appendfsync')}): a crash can lose the last second's messages; set "
            "appendfsync always"
        )
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction" and config.get("maxmemory", "0") != "0":
        out.append(
            f"Redis at {where} evicts keys when full (maxmemory-policy {policy}): it can drop "
            "queued messages; set maxmemory-policy noeviction"
        )
    return out
