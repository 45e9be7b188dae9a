"""The claim check: messages too large for a queue travel through a blob store.

A message whose encoded size is above its connection's ``blob_threshold`` (the flow's
``settings.blob_threshold``, 256 KiB by default) is written to the flow's blob store under
``messages/FLOW/QUEUE/MESSAGE_ID`` before it is published, and the queue carries a reference of about
200 bytes with the blob's size and sha256. The worker that takes it fetches the blob (checked
against the sha256) just before its processor runs, so the processor sees the payload as if
it had travelled inline, and a processor that handles one message at a time holds one blob in
memory at a time, whatever its prefetch. Once the input is acknowledged its blob is deleted; a
retried or dead-lettered message keeps it (a replay fetches it again).

Why nothing is lost or left behind:

- stored before published: the blob is durable before its reference is, so a reference never
  points at nothing. A crash in between leaves a blob that the next attempt overwrites (an
  output's id, and so its key, is derived from its input's);
- one blob per queue: a fan-out of a large message stores a copy per connection, so the
  consumer of one never deletes it from under another;
- deleted only after the acknowledgement is durable. A crash between the two leaves an orphan:
  ``sweep`` deletes the old blobs of empty queues that no dead letter names (a one-host run
  sweeps when its queues are drained and every ten minutes while it runs; a network's leader
  every ten minutes).

Back-pressure thresholds (``max_bytes``) count the references, not the blobs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import msgpack

from .brokers import Broker, DeadLetter, Delivery, QueueStats, Settlement
from .errors import MessageError
from .flow import Flow
from .storage import BlobMissing, BlobStore, StorageError, open_blob_store

log = logging.getLogger(__name__)

#: A reference's first bytes: a msgpack array of 6 whose first item is this string.
MARK = "ec-claim"
HEAD = b"\x96\xa8" + MARK.encode()
#: Where claim-checked messages are kept in the store (results are under ``results/``).
PREFIX = "messages"
#: How old a blob must be before a sweep may take it for an orphan (seconds), and how often
#: a long-running flow is swept: a message taken more than this long before its processor
#: runs on it would lose its blob.
SWEEP_GRACE = 3600.0
SWEEP_EVERY = 600.0


def with_claim_check(broker: Broker, flow: Flow, blobs: str | None = None) -> Broker:
    """``broker`` with the flow's claim check, when it has a blob store (``blobs``, else its
    ``settings.blobs``); ``broker`` itself when it has none."""
    url = blobs or flow.settings.blobs
    if not url:
        return broker
    return ClaimCheckBroker(broker, open_blob_store(url), flow)


def is_claim(body: bytes) -> bool:
    return body.startswith(HEAD)


def reference(key: str, sha256: str, size: int, message_id: str) -> bytes:
    body: bytes = msgpack.packb([MARK, 1, key, sha256, size, message_id], use_bin_type=True)
    return body


def read_reference(body: bytes) -> tuple[str, str, int, str]:
    """(key, sha256, size, message id) of a reference; ``MessageError`` if it is not one."""
    try:
        mark, version, key, sha256, size, message_id = msgpack.unpackb(body, raw=False)
    except Exception as exc:
        raise MessageError(f"malformed claim-check reference ({len(body)} bytes): {exc}") from None
    if mark != MARK or version != 1:
        raise MessageError("malformed claim-check reference: not version 1")
    return str(key), str(sha256), int(size), str(message_id)


def message_id(body: bytes) -> str | None:
    """The id in an encoded envelope, read from its first bytes (the payload is not decoded)."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(body[:512])
    try:
        unpacker.read_array_header()
        unpacker.unpack()  # the wire version
        return str(unpacker.unpack())
    except Exception:
        return None


class ClaimCheckBroker(Broker):
    """A flow's broker with its large messages kept in ``store`` (see the module's text)."""

    def __init__(self, inner: Broker, store: BlobStore, flow: Flow) -> None:
        super().__init__(inner.url, max_message_bytes=inner.max_message_bytes)
        self.inner, self.store, self.flow = inner, store, flow
        for flag in ("counts_in_flight", "counts_bytes", "peeks_in_flight", "releases_held"):
            setattr(self, flag, getattr(inner, flag))
        self.eventually_consistent = inner.eventually_consistent
        self.lease = inner.lease
        default = flow.settings.blob_threshold
        self.thresholds = {
            flow.queue_name(c): default if c.blob_threshold is None else c.blob_threshold
            for c in flow.connections
        }
        self.default_threshold = default
        #: blobs stored and deleted by this process (for its report)
        self.stored = self.deleted = 0

    def largest_body(self) -> int:
        return self.inner.largest_body()

    async def connect(self) -> None:
        await self.inner.connect()
        self.cautions = self.inner.cautions
        # what the broker itself cannot carry goes to the store too, whatever the threshold
        limit = self.inner.largest_body()
        self.thresholds = {q: min(t, limit) for q, t in self.thresholds.items()}
        self.default_threshold = min(self.default_threshold, limit)
        try:
            await self.store.connect()
        except BaseException:
            await self.inner.close()
            raise

    async def close(self) -> None:
        try:
            await self.inner.close()
        finally:
            await self.store.close()

    # -- what the claim check changes -----------------------------------------------------------
    async def _check_in(self, items: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        out = []
        for queue, body in items:
            over = len(body) > self.thresholds.get(queue, self.default_threshold)
            if over and not is_claim(body):
                mid = message_id(body)
                if mid is None:
                    raise MessageError(f"a message for {queue} is not an envelope")
                key = f"{PREFIX}/{self.flow.name}/{queue}/{mid}"
                sha256 = await self.store.put(key, body)
                self.stored += 1
                body = reference(key, sha256, len(body), mid)
            out.append((queue, body))
        return out

    async def resolve(self, body: bytes) -> bytes:
        """The envelope a reference stands for (``body`` itself when it is none). A blob that
        is missing or corrupt raises ``MessageError`` saying so: the message is then
        dead-lettered, with its reference, as an undecodable one."""
        if not is_claim(body):
            return body
        key, sha256, size, _ = read_reference(body)
        try:
            return await self.store.get(key, sha256)
        except BlobMissing:
            raise MessageError(
                f"its {size:,}-byte body was stored in the blob store {self.store.name} as "
                f"{key!r}, which no longer holds it (deleted by hand, or by a retention rule?)"
            ) from None
        except StorageError as exc:
            raise MessageError(f"its body could not be read from the blob store: {exc}") from None

    async def publish(self, items: Sequence[tuple[str, bytes]]) -> None:
        await self.inner.publish(await self._check_in(items))

    async def settle(self, settlement: Settlement) -> None:
        settlement.publish = await self._check_in(settlement.publish)
        await self.inner.settle(settlement)
        await self._forget([d.body for d in settlement.ack])

    async def _forget(self, bodies: Sequence[bytes]) -> None:
        """Delete the blobs of acknowledged references (a failure leaves an orphan for
        ``sweep``; the acknowledgement stands)."""
        for body in bodies:
            if is_claim(body):
                key = read_reference(body)[0]
                try:
                    await self.store.delete(key)
                    self.deleted += 1
                except StorageError as exc:
                    log.warning("blob %s left for the sweep: %s", key, exc)

    async def sweep(self, grace: float = SWEEP_GRACE) -> int:
        """Delete the orphans among this flow's blobs, and what unfinished writes left, older
        than ``grace`` seconds; return how many. A blob is an orphan when its queue is empty
        (no message there can refer to it) and no dead letter names it; the blobs of a queue
        with messages waiting are left for a later sweep, so no queue is read through."""
        cutoff = time.time() - grace
        mine = f"{PREFIX}/{self.flow.name}/"
        partial = await self.store.discard_partial(mine, cutoff)
        old = await self.store.keys(mine, older_than=cutoff)
        if not old:
            return partial
        queues = sorted({key.split("/")[2] for key in old})
        depths = await self.inner.depth(queues)
        empty = {q for q in queues if depths[q][0] == 0}
        named: set[str] = set()
        for q in empty:
            bodies = [d.body for d in await self.inner.dead_letters(q, 10**9)]
            named.update(read_reference(b)[0] for b in bodies if is_claim(b))
        gone = [key for key in old if key.split("/")[2] in empty and key not in named]
        for key in gone:
            await self.store.delete(key)
        return partial + len(gone)

    # -- the rest is the inner broker's ---------------------------------------------------------
    async def declare(self, queues: Sequence[str]) -> None:
        await self.inner.declare(queues)

    async def fetch(
        self, queues: Sequence[str], limit: int, consumer: str, timeout: float
    ) -> list[Delivery]:
        return await self.inner.fetch(queues, limit, consumer, timeout)

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        return await self.inner.stats(queues)

    async def depth(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        return await self.inner.depth(queues)

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        await self.inner.extend(deliveries)

    async def check(self) -> list[str]:
        return await self.inner.check()

    async def release(self, consumer: str) -> int:
        return await self.inner.release(consumer)

    async def release_all(self) -> int:
        return await self.inner.release_all()

    async def delete(self, queues: Sequence[str]) -> None:
        await self.inner.delete(queues)

    async def purge(self, queue: str) -> int:
        return await self.inner.purge(queue)

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        return await self.inner.peek(queue, limit)

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self.inner.dead_letters(queue, limit)

    async def dead_letter_count(self, queues: Sequence[str]) -> int:
        return await self.inner.dead_letter_count(queues)

    async def replay(self, ids: Sequence[Any] | None = None, queue: str | None = None) -> int:
        return await self.inner.replay(ids, queue)
