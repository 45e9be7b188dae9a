"""Durable queues on NATS JetStream: one work-queue stream per queue.

Features
    Queues shared by any number of hosts; file storage that survives a server restart; one
    durable pull consumer per queue, shared by every worker (work-queue semantics); delayed
    retries (NAK with a delay; the server counts deliveries); a dead-letter stream with replay;
    what each consumer holds is recorded, so ``release`` hands a dead worker's messages out
    again at once (the ack wait stays the backstop); operations ride out a server restart.
    Messages the server sent to a connection that dropped before they arrived reach no one:
    the server hands them out again when their ack wait runs out.

Connection string
    ``nats://[user:password@]host[:port]`` (or ``nats://token@host:port``); ``tls://...``
    for TLS, verified against the system's CAs unless ``tls_ca`` names a bundle. Needs
    nats-server 2.9 or newer with JetStream enabled (``-js``).

Options (URL query; durations in seconds, or written as 30s, 500ms, 2m)
    ``ack_wait=SECONDS`` -- how long a fetched message stays with its consumer before the server
    hands it out again (default 300). A consumer known to be dead is released at once.
    ``max_deliver=N`` -- deliveries after which the server drops a message (default -1, never:
    workers dead-letter by themselves). ``retry_for=SECONDS`` -- how long an operation retries
    while the server is unreachable (default 30). ``creds=PATH`` -- a NATS credentials file.
    ``tls_ca=PATH`` -- CA bundle for TLS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import os
import re
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlunsplit

from ..errors import BrokerError, BrokerUnreachable
from .base import Broker, DeadLetter, Delivery, QueueStats, Settlement, require, rotate
from .retry import Retrying
from .url import BrokerURL

log = logging.getLogger(__name__)
T = TypeVar("T")
_Stored = tuple[int, bytes, dict[str, str]]  # sequence, body, headers

CONSUMER = "ec"
DEAD_STREAM, DEAD_SUBJECTS = "EC_DEAD_LETTERS", "ec.dead"
LEASE_STREAM, LEASE_SUBJECTS = "EC_LEASES", "ec.lease"
#: Bytes a stream stores per message besides subject and body (JetStream's file/memory store).
OVERHEAD = {"file": 30, "memory": 16}
LEASES = {"max_msgs_per_subject": 1, "max_age": 86400 * 10**9}  # one record per consumer
REQUEST_TIMEOUT = 5.0
GRACE = 1.0  # how long past its expiry a pull request may take to end (after that: lost)
WINDOW = 1000  # publishes in flight at once
MAX_ERROR = 8192
OPTIONS = ("ack_wait", "max_deliver", "retry_for", "creds", "tls_ca")
TRANSIENT = "NoResponders ConnectionReconnecting OutboundBufferLimit StaleConnection FlushTimeout"


class _APIError(BrokerError):
    def __init__(self, where: str, error: dict[str, Any]) -> None:
        self.code, self.err_code = int(error.get("code", 0)), int(error.get("err_code", 0))
        super().__init__(f"NATS broker at {where}: {error.get('description', error)}")


class NATSBroker(Broker):
    schemes = ("nats", "tls")
    lease: float = 300.0

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._options = options = BrokerURL("nats", url, known=OPTIONS)
        self._where = options.where("127.0.0.1", 4222)
        parts = options.parts
        self._server = urlunsplit((parts.scheme, parts.netloc, "", "", ""))  # may hold secrets
        self.ack_wait = self.lease = options.seconds("ack_wait", 300, low=0.001)
        self.max_deliver = options.integer("max_deliver", -1, low=-1)
        self.retry_for = options.seconds("retry_for", 30)
        self._creds, self._tls_ca = options.text("creds"), options.text("tls_ca")
        self._retrying = Retrying(
            f"NATS broker at {self._where}",
            self.retry_for,
            transient=self._is_transient,
            failed=self._failed,
            mask=options.mask,
            log=log,
        )
        self._nc: Any = None
        self._no_responders: type[Exception] = LookupError
        self._transient: tuple[type[BaseException], ...] = (TimeoutError, OSError)
        self._last_error = ""
        self._last_exc: BaseException | None = None
        self._rotation = itertools.count()
        #: queue -> its pull requests and what they delivered (see _Puller)
        self._pullers: dict[str, _Puller] = {}
        self._arrival = asyncio.Event()
        self._fetching = 0  # fetches under way (each records what it took when it ends)
        self._consumer: str | None = None  # the last to fetch: what arrives later is its
        self._recorder: asyncio.Task[None] | None = None
        self._declared: set[str] = set()
        self._queues: dict[str, str] = {}  # subject -> queue
        #: consumer -> {ack subject: when fetched (ns)} of the deliveries it holds
        self._held: dict[str, dict[str, int]] = {}

    # -- connection -------------------------------------------------------------------------
    async def connect(self) -> None:
        if self._nc is not None:
            return
        nats, errors = require("nats", "nats"), require("nats.errors", "nats")
        self._last_error, self._last_exc = "", None
        self._no_responders = errors.NoRespondersError
        transient = (getattr(errors, f"{name}Error") for name in TRANSIENT.split())
        self._transient = (TimeoutError, OSError, *transient)
        options: dict[str, Any] = {
            "servers": [self._server],
            "name": "elasticcode",
            "max_reconnect_attempts": 1,  # at first; once connected, reconnect for ever
            "reconnect_time_wait": 0.5,
            "error_cb": self._on_error,
            "reconnected_cb": self._on_reconnected,
        }
        if self._creds:
            options["user_credentials"] = self._creds
        if self._tls_ca or self._server.startswith("tls:"):
            options["tls"] = ssl.create_default_context(cafile=self._tls_ca)
        try:
            nc = await nats.connect(**options)
        except Exception as exc:
            msg = f"cannot connect to the NATS server at {self._where}: "
            why = self._options.mask(self._last_error or _describe(exc))
            away = isinstance(self._last_exc or exc, OSError | TimeoutError)
            raise (BrokerUnreachable if away else BrokerError)(msg + why) from None
        nc.options["max_reconnect_attempts"] = -1
        self._nc = nc
        try:
            await self._api("INFO")
        except Exception as exc:
            await self.close()
            js = isinstance(exc, self._no_responders)
            why = "it does not run JetStream; start it with -js" if js else _describe(exc)
            why = self._options.mask(why)
            raise BrokerError(f"NATS server at {self._where}: {why}") from None
        await self._ensure(DEAD_STREAM, f"{DEAD_SUBJECTS}.>")
        await self._ensure(LEASE_STREAM, f"{LEASE_SUBJECTS}.>", **LEASES)

    async def close(self) -> None:
        buffered = [m.reply for p in self._pullers.values() for m in p.ready]
        if buffered and self._nc is not None:  # delivered here, never handed out: give back
            with suppress(Exception):
                await self._tell("close", buffered, b"-NAK")
        self._pullers.clear()
        nc, self._nc = self._nc, None
        if nc is not None:
            with suppress(Exception):
                await nc.close()  # flushes what is buffered, lease records included

    @property
    def nc(self) -> Any:
        if self._nc is None:
            raise BrokerError(f"NATS broker at {self._where} is not connected")
        return self._nc

    async def _on_reconnected(self) -> None:
        """The server forgot the pull requests of the old connection."""
        for puller in self._pullers.values():
            puller.forget()
        self._arrival.set()

    async def _on_error(self, exc: Exception) -> None:
        self._last_error, self._last_exc = _describe(exc), exc
        log.debug("NATS broker at %s: %s", self._where, self._last_error)

    def _is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, _APIError):
            return exc.code == 503  # JetStream not ready (yet, or again)
        return isinstance(exc, self._transient)

    def _failed(self, what: str, exc: BaseException, gave_up: bool) -> BaseException:
        late = f" for {self.retry_for:g}s" if gave_up else ""
        why = self._options.mask(_describe(exc))
        return BrokerError(f"NATS broker at {self._where}: {what} failed{late}: {why}")

    async def _api(self, subject: str, req: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = b"" if req is None else json.dumps(req).encode()
        msg = await self.nc.request(f"$JS.API.{subject}", payload, timeout=REQUEST_TIMEOUT)
        resp: dict[str, Any] = json.loads(msg.data)
        if "error" in resp:
            raise _APIError(self._where, resp["error"])
        return resp

    async def _call(self, what: str, api: str, req: Any = None, queue: str | None = None) -> Any:
        """A JetStream API call, retried; on a queue's stream (``api`` + its name) if named."""
        try:
            subject = api if queue is None else f"{api}.{_stream(queue)}"
            return await self._retrying(what, partial(self._api, subject, req))
        except _APIError as exc:
            if queue is not None and exc.err_code == 10059:  # stream not found
                raise BrokerError(f"queue {queue!r} does not exist; declare it first") from None
            raise

    async def _publish(self, what: str, items: list[tuple[str, bytes, Any]]) -> None:
        """Publish to JetStream with the acknowledgements of up to ``WINDOW`` in flight at once
        (each a request on the client's shared reply inbox); publish again what failed while
        the server was away."""
        todo = items

        async def attempt() -> None:
            nonlocal todo
            results: list[Any] = []
            for i in range(0, len(todo), WINDOW):
                sends = (self._store(*item) for item in todo[i : i + WINDOW])
                results += await asyncio.gather(*sends, return_exceptions=True)
            failed = [(item, e) for item, e in zip(todo, results, strict=True) if e is not None]
            todo = [item for item, _ in failed]
            if not failed:
                return
            gone = [item for item, e in failed if isinstance(e, self._no_responders)]
            if gone:  # no stream takes that subject
                if (queue := self._queues.get(gone[0][0])) is not None:
                    await self._call("publish", "STREAM.INFO", queue=queue)  # raises if gone
                # the stream is there: JetStream was not taking messages yet (a restart)
                raise ConnectionError("JetStream did not answer for the stream (starting up?)")
            raise next((e for _, e in failed if isinstance(e, BrokerError)), failed[0][1])

        if todo:
            await self._retrying(what, attempt)

    async def _store(self, subject: str, data: bytes, headers: Any = None) -> None:
        """One JetStream publish, answered when the stream has stored it."""
        msg = await self.nc.request(subject, data, REQUEST_TIMEOUT, headers=headers)
        if "error" in (resp := json.loads(msg.data or b"{}")):
            raise _APIError(self._where, resp["error"])

    async def _acknowledge(self, what: str, acks: list[tuple[str, bytes]]) -> None:
        """Send acknowledgements at once and have the server confirm the last to each
        consumer: it handles a consumer's acknowledgements in order, so once that answers,
        every one is in (the queues' depths count without them)."""
        last = set({_origin(reply): i for i, (reply, _) in enumerate(acks)}.values())

        async def confirmed(reply: str, payload: bytes) -> None:
            with suppress(self._no_responders):  # the consumer is gone, and what it held
                await self.nc.request(reply, payload, REQUEST_TIMEOUT)

        async def attempt() -> None:
            for reply, payload in (ack for i, ack in enumerate(acks) if i not in last):
                await self.nc.publish(reply, payload)
            await asyncio.gather(*(confirmed(*acks[i]) for i in last))

        if acks:
            await self._retrying(what, attempt)

    # -- contract ---------------------------------------------------------------------------
    async def _ensure(self, name: str, subject: str, **config: Any) -> None:
        config |= {"name": name, "subjects": [subject], "storage": "file"}
        try:
            await self._call("declare", f"STREAM.CREATE.{name}", config)
        except _APIError as exc:
            if exc.err_code != 10058:  # 10058: exists with another configuration; keep it
                raise

    async def declare(self, queues: Sequence[str]) -> None:
        await asyncio.gather(*(self._declare(q) for q in set(queues) - self._declared))

    async def _declare(self, queue: str) -> None:
        stream = _stream(queue)
        await self._ensure(stream, self._subject(queue), retention="workqueue", description=queue)
        config = dict(durable_name=CONSUMER, ack_policy="explicit", max_ack_pending=-1)
        config |= dict(ack_wait=int(self.ack_wait * 1e9), max_deliver=self.max_deliver)
        req = {"stream_name": stream, "config": config}
        await self._call("declare", f"CONSUMER.DURABLE.CREATE.{stream}.{CONSUMER}", req)
        self._declared.add(queue)

    def _subject(self, queue: str) -> str:
        subject = f"ec.q.{_hash(queue)}"
        self._queues[subject] = queue
        return subject

    def largest_body(self) -> int:
        return min(self.max_message_bytes, int(self.nc.max_payload))

    async def publish(self, items: Sequence[tuple[str, bytes]]) -> None:
        limit = self.largest_body()
        for _, body in items:
            if len(body) > limit:
                why = " (the NATS server's max_payload)" if limit < self.max_message_bytes else ""
                raise BrokerError(
                    f"message of {len(body):,} bytes exceeds the broker limit of {limit:,} bytes{why}"
                )
        await self._publish("publish", [(self._subject(q), body, None) for q, body in items])

    async def fetch(
        self, queues: Sequence[str], limit: int, consumer: str, timeout: float
    ) -> list[Delivery]:
        """What the input queues have (up to ``limit``), asked of each at once; if none has
        anything, the first to come on any of them within ``timeout``."""
        pullers = [await self._puller(q) for q in rotate(list(queues), self._rotation)]
        self._consumer = consumer
        self._fetching += 1
        try:
            got = await self._retrying("fetch", partial(self._gather, pullers, limit, timeout))
        finally:
            self._fetching -= 1
        if got:  # each delivery went into what the consumer holds as it came (_delivered)
            await self._record([consumer])
            with suppress(Exception):  # the record must be in before the processor runs
                await self._barrier()
        return [Delivery(q, m.data, (m.reply, consumer), m.metadata.num_delivered) for q, m in got]

    async def _puller(self, queue: str) -> _Puller:
        puller = self._pullers.get(queue)
        if puller is None:
            puller = self._pullers[queue] = _Puller(self.nc, queue, self._delivered)
            await puller.start()
        return puller

    def _delivered(self, msg: Any) -> None:
        """A puller received a delivery (``msg``) or the end of a request (None): wake the
        fetch that waits. A delivery that comes after its fetch returned (a request stays
        open until filled or expired) is this process's to hand out: into the lease record,
        so that ``release`` gives it back if this process dies."""
        self._arrival.set()
        if msg is None or self._consumer is None:
            return
        self._held.setdefault(self._consumer, {})[msg.reply] = time.time_ns()
        if not self._fetching and (self._recorder is None or self._recorder.done()):
            self._recorder = asyncio.ensure_future(self._record_soon())

    async def _record_soon(self) -> None:
        await asyncio.sleep(0)  # what else arrives with it goes into the same record
        if self._consumer is not None:
            await self._record([self._consumer])

    async def _gather(
        self, pullers: list[_Puller], limit: int, timeout: float
    ) -> list[tuple[str, Any]]:
        """Deliveries arrive while a fetch runs: a request that waits asks for one message,
        what comes with it is asked for without waiting, and those requests end before the
        fetch returns. (A waiting request for more would go on delivering while the
        processor runs.) Only the waiting request of another input queue may still bring
        its one message later; ``_delivered`` records it."""
        if not any(p.ready for p in pullers):  # what is there now, on every queue
            await self._ask_now(pullers, limit)
        if any(p.ready for p in pullers) or timeout <= 0:
            return _take(pullers, limit)
        deadline = time.monotonic() + timeout
        while True:  # nothing: wait on every queue at once for the first to come
            self._arrival.clear()
            if have := sum(len(p.ready) for p in pullers):
                await self._ask_now(pullers, limit - have)  # and what came with it
                return _take(pullers, limit)
            if (left := deadline - time.monotonic()) <= 0:
                return []
            for p in pullers:  # one open request each: those that ended are asked again
                if not p.open:
                    await p.ask(1, expires=left)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), left)
            await self._gone(pullers)

    async def _ask_now(self, pullers: list[_Puller], n: int) -> None:
        """Ask each queue without a request open for up to ``n`` of what it has now, and
        wait until each of those requests has ended."""
        if n <= 0:
            return
        asked = [p for p in pullers if not p.open]
        for p in asked:
            await p.ask(n)
        await _ended(asked, REQUEST_TIMEOUT)
        await self._gone(pullers)

    async def _gone(self, pullers: list[_Puller]) -> None:
        """A queue whose consumer the server does not know: say so if its stream is gone."""
        for p in pullers:
            if p.missing:
                p.missing = False
                await self._call("fetch", "STREAM.INFO", queue=p.queue)  # raises if it is gone

    async def _record(self, consumers: Iterable[str]) -> None:
        """Record what each consumer holds (fire and forget), for ``release`` to hand back."""
        for consumer in set(consumers):
            held = self._held.get(consumer) or self._held.pop(consumer, {})
            with suppress(Exception):
                await self.nc.publish(_lease_subject(consumer), _encode(held))

    async def settle(self, settlement: Settlement) -> None:
        if settlement.publish:
            await self.publish(settlement.publish)
        now = time.time()
        await self._publish("dead-letter", [self._letter(d, e, now) for d, e in settlement.dead])
        acks = [(d.tag[0], b"+TERM") for d, _ in settlement.dead]
        acks += [(d.tag[0], _nak(delay)) for d, delay, _ in settlement.retry]
        acks += [(d.tag[0], b"+ACK") for d in settlement.ack]
        await self._acknowledge("acknowledge", acks)
        done = [d for d, _ in settlement.dead] + [d for d, _, _ in settlement.retry]
        for d in (done := done + list(settlement.ack)):
            self._held.get(d.tag[1], {}).pop(d.tag[0], None)
        await self._record(d.tag[1] for d in done)

    def _letter(self, d: Delivery, error: str, now: float) -> tuple[str, bytes, Any]:
        room = max(0, min(MAX_ERROR, (self.nc.max_payload - len(d.body) - 1024) // 6))
        meta = {"queue": d.queue, "error": error[:room], "deliveries": d.delivery, "failed_at": now}
        return f"{DEAD_SUBJECTS}.{_hash(d.queue)}", d.body, {"Ec-Dead": json.dumps(meta)}

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        """An in-progress acknowledgement of each: the server's ack wait starts over."""
        await self._tell("extend", [d.tag[0] for d in deliveries], b"+WPI")

    async def _tell(self, what: str, replies: list[str], payload: bytes) -> None:
        """Send ``payload`` to each ack subject without waiting for the server to confirm: for
        what may no longer be pending (the server answers nothing then), and where the ack
        wait is the backstop."""

        async def attempt() -> None:
            for reply in replies:
                await self.nc.publish(reply, payload)
            await self._barrier()

        if replies:
            await self._retrying(what, attempt)

    async def _barrier(self) -> None:
        """Until the server has read all this connection sent before: a request to a subject
        nobody takes comes back at once as "no responders", and a connection is read in order.
        (Not ``nc.flush()``: its PING overtakes what waits in the client's buffer, and its
        timeout leaves a cancelled waiter behind that later stops the client's reader.)"""
        with suppress(self._no_responders):
            await self.nc.request(self.nc.new_inbox(), b"", timeout=REQUEST_TIMEOUT)

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        depths = await self.depth(queues)
        api = (self._call("stats", f"CONSUMER.INFO.{_stream(q)}.{CONSUMER}") for q in queues)
        held = [int(c.get("num_ack_pending", 0)) for c in await asyncio.gather(*api)]
        return {q: QueueStats(*depths[q], n) for q, n in zip(queues, held, strict=True)}

    async def depth(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        infos = await asyncio.gather(*(self._call("depth", "STREAM.INFO", queue=q) for q in queues))
        return {q: _depth(info) for q, info in zip(queues, infos, strict=True)}

    async def release(self, consumer: str) -> int:
        subject = _lease_subject(consumer)
        held = self._held.pop(consumer, {}) | await self._lease(subject)
        return await self._release(held, subject, {})

    async def release_all(self) -> int:
        """Release what this host's consumers hold on the declared queues: for the host's only
        agent after a restart (other flows' consumers on this host keep theirs)."""
        prefix = f"{LEASE_SUBJECTS}.{_hash(os.uname().nodename)[:8]}"
        req = {"subjects_filter": f"{prefix}.*"}
        info = await self._call("release", f"STREAM.INFO.{LEASE_STREAM}", req)
        streams, count = {_stream(q) for q in self._declared}, 0
        for subject in info["state"].get("subjects") or {}:
            held = await self._lease(subject)
            ours = {r: at for r, at in held.items() if _origin(r)[0] in streams}
            if ours:
                rest = {r: at for r, at in held.items() if r not in ours}
                count += await self._release(ours, subject, rest)
        return count

    async def _lease(self, subject: str) -> dict[str, int]:
        found = await self._get(LEASE_STREAM, {"last_by_subj": subject})
        lines = found[1].decode().splitlines() if found else []
        return {reply: int(at) for reply, at in (line.split() for line in lines)}

    async def _release(self, held: dict[str, int], subject: str, keep: dict[str, int]) -> int:
        # a lease older than the ack wait may be someone else's by now: the server redelivered it
        since = time.time_ns() - int(self.ack_wait * 1e9)
        fresh = [reply for reply, at in held.items() if at > since]
        await self._tell("release", fresh, b"-NAK")  # a dead consumer's: some may be settled
        with suppress(Exception):
            await self.nc.publish(subject, _encode(keep))  # what is left of the record
        return len(fresh)

    async def delete(self, queues: Sequence[str]) -> None:
        for q in queues:
            try:
                await self._call("delete", f"STREAM.DELETE.{_stream(q)}")
            except _APIError as exc:
                if exc.err_code != 10059:  # not found: already gone
                    raise
            dead = {"filter": f"{DEAD_SUBJECTS}.{_hash(q)}"}
            await self._call("delete", f"STREAM.PURGE.{DEAD_STREAM}", dead)
            self._declared.discard(q)

    async def purge(self, queue: str) -> int:
        return int((await self._call("purge", "STREAM.PURGE", {}, queue)).get("purged", 0))

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        await self._call("peek", "STREAM.INFO", queue=queue)
        found = await self._scan(_stream(queue), self._subject(queue), limit)
        return [body for _, body, _ in found]

    async def _get(self, stream: str, req: dict[str, Any]) -> _Stored | None:
        """A stored message; None where there is none."""
        try:
            resp = await self._call("read", f"STREAM.MSG.GET.{stream}", req)
        except _APIError as exc:
            if exc.err_code == 10037:  # no message found
                return None
            raise
        msg = resp["message"]
        lines = base64.b64decode(msg.get("hdrs", "")).decode().split("\r\n")[1:]
        headers = {k.strip(): v.strip() for k, sep, v in (h.partition(":") for h in lines) if sep}
        return int(msg["seq"]), base64.b64decode(msg.get("data", "")), headers

    async def _scan(self, stream: str, subject: str, limit: int) -> list[_Stored]:
        """Up to ``limit`` stored messages on a subject, oldest first."""
        out: list[_Stored] = []
        while len(out) < limit:
            req = {"seq": out[-1][0] + 1 if out else 1, "next_by_subj": subject}
            if (found := await self._get(stream, req)) is None:
                break
            out.append(found)
        return out

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        subject = f"{DEAD_SUBJECTS}.{_hash(queue) if queue is not None else '>'}"
        return [_dead(*found) for found in await self._scan(DEAD_STREAM, subject, limit)]

    async def dead_letter_count(self, queues: Sequence[str]) -> int:
        async def count(q: str) -> int:
            req = {"subjects_filter": f"{DEAD_SUBJECTS}.{_hash(q)}"}
            info = await self._call("count", f"STREAM.INFO.{DEAD_STREAM}", req)
            return sum((info["state"].get("subjects") or {}).values())

        return sum(await asyncio.gather(*map(count, queues)))

    async def replay(self, ids: Sequence[Any] | None = None, queue: str | None = None) -> int:
        if ids is None:
            letters = await self.dead_letters(queue, limit=sys.maxsize)
        else:
            found = [await self._get(DEAD_STREAM, {"seq": int(i)}) for i in ids]
            letters = [_dead(*f) for f in found if f is not None]
            letters = [dl for dl in letters if queue is None or dl.queue == queue]
        await self.publish([(dl.queue, dl.body) for dl in letters])
        for dl in letters:
            await self._call(
                "replay", f"STREAM.MSG.DELETE.{DEAD_STREAM}", {"seq": dl.id, "no_erase": True}
            )
        return len(letters)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stream(queue: str) -> str:
    """A valid, deterministic stream name: a readable part and a hash of the queue name."""
    return f"EC_{re.sub(r'[^A-Za-z0-9_-]', '_', queue)[:32]}_{_hash(queue)}"


def _lease_subject(consumer: str) -> str:
    host = consumer.split(":", 1)[0]  # workers and agents name consumers host:...
    return f"{LEASE_SUBJECTS}.{_hash(host)[:8]}.{_hash(consumer)}"


def _encode(held: dict[str, int]) -> bytes:
    return "\n".join(f"{reply} {at}" for reply, at in held.items()).encode()


def _origin(reply: str) -> tuple[str, str]:
    """(stream, consumer) of an ack subject: $JS.ACK.[domain.account.]stream.consumer...."""
    t = reply.split(".")
    i = 2 if len(t) == 9 else 4
    return t[i], t[i + 1]


def _nak(delay: float) -> bytes:
    return b'-NAK {"delay": %d}' % int(delay * 1e9) if delay > 0 else b"-NAK"


def _depth(info: dict[str, Any]) -> tuple[int, int]:
    """Messages and body bytes: the stream's bytes less its fixed per-message overhead."""
    state, config = info["state"], info["config"]
    n = int(state["messages"])
    per = OVERHEAD.get(config.get("storage", "file"), 30) + len(config["subjects"][0])
    return n, max(0, int(state["bytes"]) - n * per)


def _dead(seq: int, body: bytes, headers: dict[str, str]) -> DeadLetter:
    meta = json.loads(headers.get("Ec-Dead", "{}"))
    error, at = meta.get("error", ""), float(meta.get("failed_at", 0))
    return DeadLetter(seq, meta.get("queue", ""), body, error, int(meta.get("deliveries", 0)), at)


class _Puller:
    """One queue's pull requests, their deliveries received by this connection on one inbox
    (by callback, into ``ready``), as the raw client does it: no subscription, and no wait,
    per request. At most one request is open at a time; the server ends one by filling it
    or with a status (404 no messages, 408 expired, 409)."""

    def __init__(self, nc: Any, queue: str, arrived: Callable[[Any], None]) -> None:
        self.nc, self.queue, self._arrived_cb = nc, queue, arrived
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{_stream(queue)}.{CONSUMER}"
        self.inbox = nc.new_inbox()
        self.ready: deque[Any] = deque()
        self.left = 0  # deliveries the open request may still bring (0: none open)
        self.until = 0.0  # when the server must have ended it (later: lost, as in a restart)
        self.ended = asyncio.Event()
        self.ended.set()
        self.missing = False  # the server said it has no such consumer

    @property
    def open(self) -> bool:
        return self.left > 0 and time.monotonic() < self.until

    async def start(self) -> None:
        await self.nc.subscribe(self.inbox, cb=self._arrived)

    def forget(self) -> None:
        self.left = 0
        self.ended.set()

    async def _arrived(self, msg: Any) -> None:
        delivered = None
        if msg.reply:
            self.ready.append(msg)
            self.left = max(0, self.left - 1)
            delivered = msg
        else:
            status = (msg.headers or {}).get("Status")
            if status == "100":  # an idle heartbeat
                return
            self.missing = status == "503"
            self.left = 0
        if not self.left:
            self.ended.set()
        self._arrived_cb(delivered)

    async def ask(self, batch: int, expires: float | None = None) -> None:
        request: dict[str, Any] = {"batch": batch}
        request |= {"no_wait": True} if expires is None else {"expires": int(expires * 1e9)}
        self.left = batch
        self.until = time.monotonic() + (expires or 0.0) + GRACE
        self.ended.clear()
        await self.nc.publish(self.subject, json.dumps(request).encode(), reply=self.inbox)


def _take(pullers: list[_Puller], limit: int) -> list[tuple[str, Any]]:
    got: list[tuple[str, Any]] = []
    for p in pullers:
        while p.ready and len(got) < limit:
            got.append((p.queue, p.ready.popleft()))
    return got


async def _ended(pullers: list[_Puller], timeout: float) -> None:
    """Until each of ``pullers``' requests is ended (a request the server lost, as on a
    reconnection, counts as ended after ``timeout``)."""
    waits = [p.ended.wait() for p in pullers if not p.ended.is_set()]
    if not waits:
        return
    try:
        await asyncio.wait_for(asyncio.gather(*waits), timeout)
    except TimeoutError:
        for p in pullers:
            p.forget()
