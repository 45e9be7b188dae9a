"""Amazon SQS queues (standard or FIFO) through aiobotocore, on AWS or an SQS-compatible server.

Features
    One SQS queue per queue, with a dead-letter queue beside it (``NAME-dead``). Publishes go
    out in batches of ten, many at once; a publish returns only once SQS has accepted every
    message. A fetched message stays invisible to other consumers while it is processed: the
    broker extends its visibility timeout every third of ``visibility`` until it is settled, so
    a consumer that dies (kill -9, a lost host) stops extending it and the message is handed
    out again at most ``visibility`` seconds later. Acks are batched deletes; a retry makes the
    message visible again after its delay; the delivery count is SQS's receive count. Dead
    letters carry the error and delivery count as message attributes; a message that SQS
    itself moves after ``max_receives`` receives (the redrive policy: a backstop for a message
    that keeps killing its consumers) is listed too. Lost connections and throttling are
    retried with backoff (see ``retry_for``). Where SQS has no exact figure:

    * ``depth``/``stats`` are SQS's approximate counts: waiting, in-flight and delayed
      messages (``counts_in_flight``), no bytes (``counts_bytes``). On AWS they may lag
      behind by up to a minute, and a standard queue now and then hands a message to two
      consumers (``eventually_consistent``): a run decides it is drained only once the
      workers, too, have been idle for a while.
    * ``peek`` and ``dead_letters`` receive messages and put them straight back: they see
      only waiting messages (``peeks_in_flight`` is False), and each look counts as one more
      receive in the delivery count.
    * ``release`` hands back what consumers of this same broker object hold; a consumer in
      another process that died gives its messages back when their visibility runs out
      (``releases_held`` is False).
    * ``purge`` uses SQS's PurgeQueue, which AWS allows once a minute per queue.

FIFO queues
    With ``fifo=true`` queues are FIFO queues (``.fifo``), all messages of a queue in one
    message group: strictly in order, one batch in flight per queue at a time, each message
    sent with its own deduplication id; batches to one queue go out one after another.
    Consumers of a FIFO queue therefore take turns rather than run in parallel.

Connection string
    ``sqs://`` for AWS itself (region and credentials from the usual AWS settings: the
    ``AWS_*`` environment variables, ``~/.aws``, an instance role), or
    ``sqs://[ACCESS_KEY:SECRET_KEY@]HOST[:PORT]`` for another endpoint (HTTPS; ``secure=false``
    for plain HTTP, as for a local test server). The secret never appears in errors or logs.

Options (URL query; durations in seconds, or written as 30s, 500ms, 2m)
    ``region=NAME`` (default: the AWS settings, else ``us-east-1``). ``secure=true|false``.
    ``tls_ca=PATH`` -- CA bundle to verify the endpoint with. ``visibility=SECONDS`` -- how
    long a consumer that stopped extending its messages keeps them (default 30).
    ``max_receives=N`` -- the redrive policy: receives after which SQS moves a message to the
    dead-letter queue by itself (default 100; 0 for none). ``retry_for=SECONDS`` -- how long an
    operation retries while SQS cannot be reached (default 30). ``fifo=true|false``.
    ``prefix=NAME`` -- queue name prefix (default ``ec``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote

from ..errors import BrokerError
from .base import Broker, DeadLetter, Delivery, QueueStats, Settlement, require, rotate
from .retry import Retrying
from .url import BrokerURL

log = logging.getLogger("elasticcode.brokers.sqs")
T = TypeVar("T")

OPTIONS: tuple[str, ...] = ("region", "secure", "tls_ca", "visibility", "max_receives")
OPTIONS += ("retry_for", "fifo", "prefix")
#: SQS's largest message; a body travels base64-encoded behind a one-letter tag.
SQS_MAX_MESSAGE = 262_144
MAX_BODY = (SQS_MAX_MESSAGE - 1) // 4 * 3
BATCH = 10  # entries per SQS batch call
MAX_LONG_POLL = 20
MAX_VISIBILITY = 43_200  # 12 hours
MAX_ERROR = 8192
GROUP = "elasticcode"  # the message group of FIFO queues
#: Error codes that mean: try again later.
TRANSIENT_CODES = {"ThrottlingException", "Throttling", "RequestThrottled", "ServiceUnavailable"}
TRANSIENT_CODES |= {"InternalError", "InternalFailure", "KmsThrottled"}
NO_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
#: Error codes that mean: the credentials are wrong or not allowed.
REFUSED = {"InvalidClientTokenId", "SignatureDoesNotMatch", "AccessDenied", "InvalidSecurity"}
REFUSED |= {"AccessDeniedException", "UnrecognizedClientException"}


class _Unsent(Exception):
    """Entries of a batch call that SQS reported as failed for a reason worth retrying."""

    def __init__(self, failed: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(failed)} entries failed: {failed[0]}")
        self.failed = failed


class SQSBroker(Broker):
    schemes = ("sqs",)
    counts_in_flight = True
    counts_bytes = False
    peeks_in_flight = False
    releases_held = False
    eventually_consistent = True

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._options = options = BrokerURL("sqs", url, known=OPTIONS)
        parts = options.parts
        options.where("", 443)  # a bad port says so now
        secure = options.flag("secure", True)
        self.fifo = options.flag("fifo", False)
        self.visibility = int(options.seconds("visibility", 60, low=2, high=MAX_VISIBILITY))
        self.max_receives = options.integer("max_receives", 100, low=0, high=1000)
        self.retry_for = options.seconds("retry_for", 30, high=86400)
        self.prefix = options.text("prefix", "ec") or "ec"
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,16}", self.prefix):
            raise BrokerError("sqs broker: prefix must be 1-16 letters, digits, '-' or '_'")
        self._region = options.text("region")
        self._tls_ca = options.text("tls_ca")
        self._endpoint: str | None = None
        if parts.hostname:
            scheme = "https" if secure else "http"
            port = f":{parts.port}" if parts.port else ""
            self._endpoint = f"{scheme}://{parts.hostname}{port}"
        self._where = self._endpoint or "AWS"
        self._key = unquote(parts.username or "") or None
        self._secret = unquote(parts.password or "")
        self._retrying = Retrying(
            f"SQS at {self._where}",
            self.retry_for,
            transient=self._transient,
            failed=self._failed,
            mask=options.mask,
            log=log,
        )
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._errors: Any = None
        self._urls: dict[str, str] = {}  # queue name -> SQS queue URL (dead-letter queues too)
        self._declared: dict[str, None] = {}  # an ordered set
        #: consumer -> {receipt handle: queue} of the messages it holds
        self._held: dict[str, dict[str, str]] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._rotation = itertools.count()

    def _mask(self, text: object) -> str:
        return self._options.mask(text)

    # -- names ------------------------------------------------------------------------------
    def _name(self, queue: str, dead: bool = False) -> str:
        """A valid, deterministic SQS queue name: a readable part and a hash of the name."""
        readable = re.sub(r"[^A-Za-z0-9_-]", "_", queue)[:32]
        digest = hashlib.sha256(queue.encode()).hexdigest()[:16]
        return f"{self.prefix}-{readable}-{digest}{'-dead' if dead else ''}" + (
            ".fifo" if self.fifo else ""
        )

    # -- connection -------------------------------------------------------------------------
    async def connect(self) -> None:
        if self._client is not None:
            return
        session_mod = require("aiobotocore.session", "sqs")
        config_mod = require("aiobotocore.config", "sqs")
        self._errors = require("botocore.exceptions", "sqs")
        session = session_mod.get_session()
        region = self._region or session.get_config_variable("region") or "us-east-1"
        config = config_mod.AioConfig(
            max_pool_connections=64,
            retries={"max_attempts": 1, "mode": "standard"},  # our own loop retries
            connect_timeout=5,
            read_timeout=MAX_LONG_POLL + 10,
        )
        options: dict[str, Any] = {"region_name": region, "config": config}
        if self._endpoint:
            options["endpoint_url"] = self._endpoint
        if self._key:
            options["aws_access_key_id"] = self._key
            options["aws_secret_access_key"] = self._secret
        if self._tls_ca:
            options["verify"] = self._tls_ca
        stack = contextlib.AsyncExitStack()
        try:
            client = await stack.enter_async_context(session.create_client("sqs", **options))
            await client.list_queues(QueueNamePrefix=self.prefix, MaxResults=1)
        except Exception as exc:
            await stack.aclose()
            raise BrokerError(self._describe("connect", exc)) from None
        self._client, self._stack = client, stack

    async def close(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise BrokerError("sqs broker is not connected; call connect() first")
        return self._client

    def _describe(self, what: str, exc: BaseException) -> str:
        e = self._errors
        if e is not None and isinstance(exc, e.ClientError):
            error = exc.response.get("Error", {})
            code, text = error.get("Code", ""), error.get("Message", "")
            if code in REFUSED:
                return f"SQS at {self._where} refused the credentials ({code}): {self._mask(text)}"
            return f"SQS at {self._where}: {what} failed: {code}: {self._mask(text)}"
        if e is not None and isinstance(exc, e.NoCredentialsError):
            return (
                f"SQS at {self._where}: no AWS credentials; put them in the URL "
                "(sqs://KEY:SECRET@host) or in the usual AWS settings"
            )
        why = self._mask(exc).rstrip(".") or type(exc).__name__
        return f"cannot reach SQS at {self._where}: {what} failed: {why}; is it running?"

    def _transient(self, exc: BaseException) -> bool:
        e = self._errors
        if isinstance(exc, _Unsent):
            return True
        if isinstance(exc, e.ClientError):
            error, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
            return error.get("Code") in TRANSIENT_CODES or int(meta.get("HTTPStatusCode", 0)) >= 500
        return isinstance(exc, e.ConnectionError | e.HTTPClientError | OSError | TimeoutError)

    def _failed(self, what: str, exc: BaseException, gave_up: bool) -> BaseException:
        if isinstance(exc, _Unsent):
            return BrokerError(f"SQS at {self._where}: {what} failed: {exc.failed[0]}")
        e = self._errors
        if isinstance(exc, e.ClientError) and exc.response.get("Error", {}).get("Code") in NO_QUEUE:
            return BrokerError(
                f"SQS at {self._where}: {what}: the queue does not exist; declare it first"
            )
        return BrokerError(self._describe(what, exc))

    async def _call(self, what: str, op: str, **params: Any) -> Any:
        """One SQS API call, retried with backoff while SQS cannot be reached or throttles."""
        fn: Callable[..., Awaitable[Any]] = getattr(self.client, op)
        return await self._retrying(what, lambda: fn(**params))

    async def _batch(self, what: str, op: str, url: str, entries: list[dict[str, Any]]) -> None:
        """A batch call over any number of entries, ten at a time, all at once; entries SQS
        reports as failed for a reason worth retrying are sent again."""

        async def one(chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
            resp = await self._call(what, op, QueueUrl=url, Entries=chunk)
            return list(resp.get("Failed") or [])

        todo = [dict(e, Id=str(i)) for i, e in enumerate(entries)]

        async def attempt() -> None:
            nonlocal todo
            chunks = [todo[i : i + BATCH] for i in range(0, len(todo), BATCH)]
            if self.fifo and op == "send_message_batch":  # in order: one batch after another
                failed = [f for chunk in chunks for f in await one(chunk)]
            else:
                failed = [f for fs in await asyncio.gather(*map(one, chunks)) for f in fs]
            refused = [f for f in failed if f.get("SenderFault")]
            if refused and op == "send_message_batch":
                f = refused[0]
                raise BrokerError(
                    f"SQS at {self._where}: {what} refused a message: {f.get('Code')}: "
                    f"{self._mask(f.get('Message', ''))}"
                )
            for f in refused:
                # a receipt SQS no longer honours: the message went back to its queue (its
                # visibility ran out) and is handed out again; at-least-once still holds
                log.debug("SQS %s: %s: %s", what, f.get("Code"), f.get("Message"))
            if again := [f for f in failed if not f.get("SenderFault")]:
                by_id = {e["Id"]: e for e in todo}
                todo = [by_id[f["Id"]] for f in again]
                raise _Unsent(again)

        if todo:
            await self._retrying(what, attempt)

    # -- queues -----------------------------------------------------------------------------
    async def _url(self, queue: str, dead: bool = False) -> str:
        name = self._name(queue, dead)
        if (url := self._urls.get(name)) is None:
            resp = await self._call("find queue", "get_queue_url", QueueName=name)
            url = self._urls[name] = str(resp["QueueUrl"])
        return url

    async def _create(self, name: str, attributes: dict[str, str]) -> str:
        if self.fifo:
            attributes = {**attributes, "FifoQueue": "true"}
        try:
            resp = await self._call(
                "declare", "create_queue", QueueName=name, Attributes=attributes
            )
        except BrokerError as exc:
            if "QueueAlreadyExists" not in str(exc):  # exists with other settings: keep them
                raise
            resp = await self._call("declare", "get_queue_url", QueueName=name)
        url = self._urls[name] = str(resp["QueueUrl"])
        return url

    async def declare(self, queues: Sequence[str]) -> None:
        await asyncio.gather(*(self._declare(q) for q in dict.fromkeys(queues)))
        self._declared.update(dict.fromkeys(queues))

    async def _declare(self, queue: str) -> None:
        dead = await self._create(
            self._name(queue, dead=True), {"MessageRetentionPeriod": "1209600"}
        )
        attributes = {
            "VisibilityTimeout": str(self.visibility),
            "MessageRetentionPeriod": "1209600",  # 14 days, SQS's longest
            "MaximumMessageSize": str(SQS_MAX_MESSAGE),
        }
        if self.max_receives:
            resp = await self._call(
                "declare", "get_queue_attributes", QueueUrl=dead, AttributeNames=["QueueArn"]
            )
            arn = resp["Attributes"]["QueueArn"]
            policy = {"deadLetterTargetArn": arn, "maxReceiveCount": self.max_receives}
            attributes["RedrivePolicy"] = json.dumps(policy)
        await self._create(self._name(queue), attributes)

    async def delete(self, queues: Sequence[str]) -> None:
        for q in queues:
            for dead in (False, True):
                with contextlib.suppress(BrokerError):  # already gone
                    url = await self._url(q, dead)
                    await self._call("delete", "delete_queue", QueueUrl=url)
                self._urls.pop(self._name(q, dead), None)
            self._declared.pop(q, None)

    # -- messages ---------------------------------------------------------------------------
    def _entry(self, body: bytes, attributes: dict[str, Any] | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {"MessageBody": "b" + base64.b64encode(body).decode()}
        if attributes:
            entry["MessageAttributes"] = attributes
        if self.fifo:
            entry["MessageGroupId"] = GROUP
            entry["MessageDeduplicationId"] = uuid.uuid4().hex
        return entry

    def largest_body(self) -> int:
        return min(self.max_message_bytes, MAX_BODY)

    async def publish(self, items: Sequence[tuple[str, bytes]]) -> None:
        limit = self.largest_body()
        by_queue: dict[str, list[dict[str, Any]]] = {}
        for q, body in items:
            if len(body) > limit:
                why = " (SQS's 256 KiB message limit, base64-encoded)" if limit == MAX_BODY else ""
                raise BrokerError(
                    f"message of {len(body):,} bytes exceeds the broker limit of {limit:,} bytes{why}"
                )
            by_queue.setdefault(q, []).append(self._entry(body))
        await self._send_all("publish", by_queue)

    async def _send_all(self, what: str, by_queue: dict[str, list[dict[str, Any]]]) -> None:
        async def send(q: str, entries: list[dict[str, Any]]) -> None:
            await self._batch(what, "send_message_batch", await self._url(q), entries)

        await asyncio.gather(*(send(q, entries) for q, entries in by_queue.items()))

    async def _receive(
        self, url: str, n: int, wait: int, visibility: int | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {
            "QueueUrl": url,
            "MaxNumberOfMessages": min(BATCH, n),
            "WaitTimeSeconds": wait,
            "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
            "MessageAttributeNames": ["All"],
        }
        if visibility is not None:
            params["VisibilityTimeout"] = visibility
        resp = await self._call("fetch", "receive_message", **params)
        return list(resp.get("Messages") or [])

    async def _take(self, url: str, n: int, wait: int) -> list[dict[str, Any]]:
        """Up to ``n`` messages: one long poll, then (when it came back full) more at once."""
        got = await self._receive(url, n, wait)
        if len(got) == BATCH and n > BATCH:
            more = await asyncio.gather(
                *(self._receive(url, min(BATCH, n - k), 0) for k in range(BATCH, n, BATCH))
            )
            got += [m for ms in more for m in ms]
        return got

    async def fetch(
        self, queues: Sequence[str], limit: int, consumer: str, timeout: float
    ) -> list[Delivery]:
        qs = list(queues)
        if limit <= 0 or not qs:
            return []
        qs = rotate(qs, self._rotation)
        urls = [await self._url(q) for q in qs]
        deadline = time.monotonic() + timeout
        pause = 0.02
        while True:
            left = deadline - time.monotonic()
            # SQS long-polls in whole seconds and one queue at a time; shorter waits poll
            wait = min(MAX_LONG_POLL, int(left)) if len(qs) == 1 and left >= 1 else 0
            got: list[tuple[str, dict[str, Any]]] = []
            for q, url in zip(qs, urls, strict=True):
                got += [(q, m) for m in await self._take(url, limit - len(got), wait)]
                if len(got) >= limit:
                    break
            if got:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            if not wait:
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, 0.2)
        held = self._held.setdefault(consumer, {})
        out = []
        for q, m in got:
            held[m["ReceiptHandle"]] = q
            count = int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1))
            out.append(Delivery(q, _body(m), (m["ReceiptHandle"], consumer), count))
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(self._keep())
        return out

    async def _keep(self) -> None:
        """Extend the visibility of every message held here until it is settled."""
        while True:
            await asyncio.sleep(self.visibility / 3)
            by_queue: dict[str, list[str]] = {}
            for held in self._held.values():
                for receipt, q in held.items():
                    by_queue.setdefault(q, []).append(receipt)
            try:
                await self._change(by_queue, self.visibility, "extend visibility")
            except BrokerError as exc:
                log.warning("%s", exc)

    async def _change(self, by_queue: dict[str, list[str]], seconds: int, what: str) -> None:
        async def change(q: str, receipts: list[str]) -> None:
            entries = [{"ReceiptHandle": r, "VisibilityTimeout": seconds} for r in receipts]
            await self._batch(what, "change_message_visibility_batch", await self._url(q), entries)

        await asyncio.gather(*(change(q, rs) for q, rs in by_queue.items() if rs))

    async def settle(self, settlement: Settlement) -> None:
        if settlement.publish:
            await self.publish(settlement.publish)
        if settlement.dead:
            now = time.time()
            letters: dict[str, list[dict[str, Any]]] = {}
            for d, error in settlement.dead:
                room = SQS_MAX_MESSAGE - len(d.body) * 4 // 3 - 1024  # what the body leaves
                attrs = {
                    "ec-queue": _text(d.queue),
                    "ec-error": _text(error[: max(0, min(MAX_ERROR, room))]),
                    "ec-deliveries": {"DataType": "Number", "StringValue": str(d.delivery)},
                    "ec-failed-at": {"DataType": "Number", "StringValue": repr(now)},
                }
                letters.setdefault(d.queue, []).append(self._entry(d.body, attrs))

            async def bury(q: str, entries: list[dict[str, Any]]) -> None:
                url = await self._url(q, dead=True)
                await self._batch("dead-letter", "send_message_batch", url, entries)

            await asyncio.gather(*(bury(q, entries) for q, entries in letters.items()))
        deletes: dict[str, list[dict[str, Any]]] = {}
        for d in [*settlement.ack, *(d for d, _ in settlement.dead)]:
            deletes.setdefault(d.queue, []).append({"ReceiptHandle": d.tag[0]})
        retries: dict[int, dict[str, list[str]]] = {}
        for d, delay, _ in settlement.retry:
            seconds = max(0, min(MAX_VISIBILITY, math.ceil(delay)))  # a delay is a minimum
            retries.setdefault(seconds, {}).setdefault(d.queue, []).append(d.tag[0])

        async def remove(q: str, entries: list[dict[str, Any]]) -> None:
            await self._batch("acknowledge", "delete_message_batch", await self._url(q), entries)

        await asyncio.gather(
            *(remove(q, entries) for q, entries in deletes.items()),
            *(self._change(by_queue, s, "retry") for s, by_queue in retries.items()),
        )
        settled = [*settlement.ack, *(d for d, _ in settlement.dead)]
        settled += [d for d, _, _ in settlement.retry]
        for d in settled:
            self._held.get(d.tag[1], {}).pop(d.tag[0], None)

    async def release(self, consumer: str) -> int:
        held = self._held.pop(consumer, {})
        by_queue: dict[str, list[str]] = {}
        for receipt, q in held.items():
            by_queue.setdefault(q, []).append(receipt)
        await self._change(by_queue, 0, "release")
        return len(held)

    # -- inspecting and managing ------------------------------------------------------------
    async def _counts(self, url: str) -> tuple[int, int, int]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        names.append("ApproximateNumberOfMessagesDelayed")
        resp = await self._call("depth", "get_queue_attributes", QueueUrl=url, AttributeNames=names)
        a = resp.get("Attributes", {})
        visible, hidden, delayed = (int(a.get(name, 0)) for name in names)
        return visible, hidden, delayed

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        async def one(q: str) -> QueueStats:
            visible, hidden, delayed = await self._counts(await self._url(q))
            return QueueStats(visible + hidden + delayed, 0, hidden)

        return dict(zip(queues, await asyncio.gather(*map(one, queues)), strict=True))

    async def dead_letter_count(self, queues: Sequence[str]) -> int:
        async def one(q: str) -> int:
            return sum(await self._counts(await self._url(q, dead=True)))

        return sum(await asyncio.gather(*map(one, queues)))

    async def purge(self, queue: str) -> int:
        url = await self._url(queue)
        count = sum(await self._counts(url))
        await self._call("purge", "purge_queue", QueueUrl=url)
        return count

    async def _look(self, url: str, limit: int) -> list[dict[str, Any]]:
        """Receive up to ``limit`` waiting messages, kept invisible until ``_put_back``."""
        seen: dict[str, dict[str, Any]] = {}
        while len(seen) < limit:
            got = await self._receive(url, limit - len(seen), 0, visibility=MAX_LONG_POLL * 3)
            fresh = [m for m in got if m["MessageId"] not in seen]
            if not fresh:
                break
            seen.update((m["MessageId"], m) for m in fresh)
        return sorted(seen.values(), key=_sent)

    async def _put_back(self, url: str, messages: Iterable[dict[str, Any]]) -> None:
        entries = [{"ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0} for m in messages]
        if entries:
            await self._batch("put back", "change_message_visibility_batch", url, entries)

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        url = await self._url(queue)
        found = await self._look(url, limit)
        await self._put_back(url, found)
        return [_body(m) for m in found]

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        for q in [queue] if queue is not None else list(self._declared):
            url = await self._url(q, dead=True)
            found = await self._look(url, limit)
            await self._put_back(url, found)
            out += [_dead(q, m) for m in found]
        return sorted(out, key=lambda d: d.failed_at)[:limit]

    async def replay(self, ids: Sequence[Any] | None = None, queue: str | None = None) -> int:
        wanted = None if ids is None else {str(i) for i in ids}
        total = 0
        for q in [queue] if queue is not None else list(self._declared):
            url = await self._url(q, dead=True)
            found = await self._look(url, 10**9 if wanted is None else 10**6)
            chosen = [m for m in found if wanted is None or m["MessageId"] in wanted]
            try:
                await self._send_all("replay", {q: [self._entry(_body(m)) for m in chosen]})
                entries = [{"ReceiptHandle": m["ReceiptHandle"]} for m in chosen]
                await self._batch("replay", "delete_message_batch", url, entries)
            finally:
                await self._put_back(url, [m for m in found if m not in chosen])
            total += len(chosen)
        return total


def _text(value: str) -> dict[str, str]:
    """A string message attribute: characters SQS takes, never empty."""
    return {"DataType": "String", "StringValue": _UNSENDABLE.sub("?", value) or "-"}


_UNSENDABLE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _body(m: dict[str, Any]) -> bytes:
    """The bytes a message carries; a message that another program sent: its text."""
    text = str(m.get("Body", ""))
    if text.startswith("b"):
        with contextlib.suppress(ValueError):
            return base64.b64decode(text[1:], validate=True)
    return text.encode()


def _sent(m: dict[str, Any]) -> int:
    return int(m.get("Attributes", {}).get("SentTimestamp", 0))


def _dead(queue: str, m: dict[str, Any]) -> DeadLetter:
    attrs = {k: v.get("StringValue", "") for k, v in (m.get("MessageAttributes") or {}).items()}
    receives = int(m.get("Attributes", {}).get("ApproximateReceiveCount", 0))
    if "ec-error" in attrs:
        error, deliveries = attrs["ec-error"], int(float(attrs.get("ec-deliveries", 0)))
        failed_at = float(attrs.get("ec-failed-at", 0))
    else:  # moved by SQS's redrive policy: it never reached a worker's error handling
        deliveries = receives
        error = "moved by SQS after max_receives receives without being settled (redrive policy)"
        failed_at = _sent(m) / 1000
    return DeadLetter(m["MessageId"], queue, _body(m), error, deliveries, failed_at)
