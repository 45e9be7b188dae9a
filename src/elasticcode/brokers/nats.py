"""Durable queues on NATS JetStream: one work-queue stream per queue.

Features
    Queues shared by any number of hosts; file storage that survives a server restart; one
    durable pull consumer per queue, shared by every worker (work-queue semantics); delayed
    retries (NAK with a delay; the server counts deliveries); a dead-letter stream with replay;
    what each consumer holds is recorded, so ``release`` hands a dead worker's messages out
    again at once (the ack wait stays the backstop); operations ride out a server restart.

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
from collections.abc import Iterable, Sequence
from contextlib import suppress
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlunsplit

from ..errors import BrokerError
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
GRACE = 1.0  # how long a fetch waits past its expiry for the end-of-request status
SLICE = 0.05  # how long a fetch waits on each of several input queues in turn
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
        self._rotation = itertools.count()
        self._declared: set[str] = set()
        self._queues: dict[str, str] = {}  # subject -> queue
        #: consumer -> {ack subject: when fetched (ns)} of the deliveries it holds
        self._held: dict[str, dict[str, int]] = {}

    # -- connection -------------------------------------------------------------------------
    async def connect(self) -> None:
        if self._nc is not None:
            return
        nats, errors = require("nats", "nats"), require("nats.errors", "nats")
        self._last_error = ""
        self._no_responders = errors.NoRespondersError
        transient = (getattr(errors, f"{name}Error") for name in TRANSIENT.split())
        self._transient = (TimeoutError, OSError, *transient)
        options: dict[str, Any] = {
            "servers": [self._server],
            "name": "elasticcode",
            "max_reconnect_attempts": 1,  # at first; once connected, reconnect for ever
            "reconnect_time_wait": 0.5,
            "error_cb": self._on_error,
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
            raise BrokerError(msg + why) from None
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
        nc, self._nc = self._nc, None
        if nc is not None:
            with suppress(Exception):
                await nc.close()  # flushes what is buffered, lease records included

    @property
    def nc(self) -> Any:
        if self._nc is None:
            raise BrokerError(f"NATS broker at {self._where} is not connected")
        return self._nc

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = _describe(exc)
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

    async def _send(self, subject: str, data: bytes, headers: Any = None, js: bool = True) -> None:
        """A JetStream publish (``js``), or an acknowledgement the server confirms."""
        try:
            msg = await self.nc.request(subject, data, REQUEST_TIMEOUT, headers=headers)
        except self._no_responders:
            if not js:
                return  # the consumer is gone, and with it what there was to settle
            if (queue := self._queues.get(subject)) is not None:
                await self._call("publish", "STREAM.INFO", queue=queue)  # raises if it is gone
            raise
        if js and "error" in (resp := json.loads(msg.data or b"{}")):
            raise _APIError(self._where, resp["error"])

    async def _publish(self, what: str, items: list[tuple[str, bytes, Any]]) -> None:
        """Publish, many in flight; retry those that fail while the server is away."""
        todo = items

        async def attempt() -> None:
            nonlocal todo
            results: list[Any] = []
            for i in range(0, len(todo), WINDOW):
                sends = (self._send(*item) for item in todo[i : i + WINDOW])
                results += await asyncio.gather(*sends, return_exceptions=True)
            failed = [(item, e) for item, e in zip(todo, results, strict=True) if e is not None]
            todo = [item for item, _ in failed]
            if failed:
                raise next((e for _, e in failed if isinstance(e, BrokerError)), failed[0][1])

        if todo:
            await self._retrying(what, attempt)

    async def _acknowledge(self, what: str, acks: list[tuple[str, bytes]]) -> None:
        """Send acknowledgements at once and confirm the last to each consumer only: the server
        handles a consumer's acknowledgements in order."""
        last = set({_origin(reply): i for i, (reply, _) in enumerate(acks)}.values())

        async def attempt() -> None:
            for reply, payload in (ack for i, ack in enumerate(acks) if i not in last):
                await self.nc.publish(reply, payload)
            await asyncio.gather(*(self._send(*acks[i], js=False) for i in last))

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

    async def publish(self, items: Sequence[tuple[str, bytes]]) -> None:
        limit = min(self.max_message_bytes, self.nc.max_payload)
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
        qs = rotate(list(queues), self._rotation)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        got: list[tuple[str, Any]] = []
        for turn in itertools.count():
            for q in qs:  # one queue: wait on it; several: a quick look at each, then turns
                left = max(0.0, deadline - loop.time())
                wait = left if len(qs) == 1 else min(SLICE, left) if turn else 0.0
                pull = partial(self._pull, q, limit - len(got), wait if wait >= 0.001 else 0.0)
                got += [(q, m) for m in await self._retrying("fetch", pull)]
                if len(got) >= limit:
                    break
            if got or (left := deadline - loop.time()) <= 0:
                break
            if len(qs) == 1:  # answered early without messages (requests pending): ask again
                await asyncio.sleep(min(0.01, left))
        if got:
            now = time.time_ns()
            self._held.setdefault(consumer, {}).update((m.reply, now) for _, m in got)
            await self._record([consumer])
            with suppress(Exception):  # the record must be out before the processor runs
                await self.nc.flush(timeout=1)
        return [Delivery(q, m.data, (m.reply, consumer), m.metadata.num_delivered) for q, m in got]

    async def _pull(self, queue: str, n: int, wait: float) -> list[Any]:
        """What is there at once, else the first to come within ``wait`` and what is there
        by then. (A waiting request for ``n`` would wait until ``n`` have come.)"""
        if not wait or n == 1:
            return await self._pull_once(queue, n, wait)
        first = await self._pull_once(queue, 1, wait)
        return first + await self._pull_once(queue, n - 1, 0.0) if first else []

    async def _pull_once(self, queue: str, n: int, wait: float) -> list[Any]:
        """One pull request: what is there at once, else the first to come within ``wait``."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        request = {"batch": n, "no_wait": True} | ({"expires": int(wait * 1e9)} if wait else {})
        deadline = time.monotonic() + wait + GRACE
        msgs: list[Any] = []
        try:
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{_stream(queue)}.{CONSUMER}"
            await self.nc.publish(subject, json.dumps(request).encode(), reply=inbox)
            with suppress(TimeoutError):
                while len(msgs) < n and (left := deadline - time.monotonic()) > 0:
                    msg = await sub.next_msg(timeout=left)
                    if not msg.reply:  # a status ends the request: 404/408 no (more) messages
                        if (msg.headers or {}).get("Status") == "503":  # no consumer: no queue?
                            await self._call("fetch", "STREAM.INFO", queue=queue)
                        break
                    msgs.append(msg)
        finally:
            with suppress(Exception):
                await sub.unsubscribe()
        return msgs

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
            await self.nc.flush(timeout=REQUEST_TIMEOUT)

        if replies:
            await self._retrying(what, attempt)

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
