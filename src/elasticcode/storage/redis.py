"""Blobs in Redis, in chunks, through ``redis.asyncio``.

Features
    A blob is stored as chunks of ``chunk_size`` (1 MiB) under keys of its own write,
    ``PREFIX:chunk:VERSION:N``, so that no single command carries more than one chunk
    however large the blob. Once every chunk is in, one server-side script points the blob
    (a hash, ``PREFIX:blob:KEY``) at the new version and indexes it by time of write (a
    sorted set, ``PREFIX:blobs``); the old version's chunks expire a minute later, so that
    a read in progress ends undisturbed (one that takes longer ends with ``BlobMissing``),
    and nothing is left behind if the writer dies. The chunks of a write that never
    finished (a crash) expire after a day.
    One Redis server or a primary with replicas; not Redis Cluster.

Durability
    Redis confirms a write once it is in memory; blobs survive a restart only with
    persistence (``appendonly yes``). A Redis that evicts keys (a ``maxmemory-policy`` other
    than ``noeviction``) may drop chunks: such a blob then reads as missing.

URL
    ``redis://[[user]:password@]host[:port][/db]``, or ``rediss://...`` for TLS. redis-py's
    own query options (``ssl_ca_certs``, ``socket_timeout``, ...) pass through. Passwords
    never appear in errors or logs.

Options (URL query)
    ``prefix=NAME`` -- key prefix (default ``ec``); several stores can share one Redis.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ..errors import StorageError
from .base import BlobStore, require
from .url import StoreURL

#: Seconds the chunks of an unfinished write are kept.
PENDING = 86400
#: Seconds the chunks of a replaced or deleted blob are kept, for reads in progress.
GRACE = 60
DELETE_BATCH = 100

#: Give the chunks of the version a blob hash names GRACE seconds more to live.
_RETIRE = """
local function retire(blob, chunks, grace)
  local old = redis.call('HMGET', blob, 'version', 'chunks')
  if old[1] then
    for i = 0, tonumber(old[2]) - 1 do
      redis.call('EXPIRE', chunks .. old[1] .. ':' .. i, grace)
    end
  end
end
"""
#: Point a blob at a new version (KEYS: blob, index; ARGV: version, chunks, size, written,
#: key, chunk key prefix, grace), retiring the old one.
_SWAP = (
    _RETIRE
    + """
for i = 0, tonumber(ARGV[2]) - 1 do
  local chunk = ARGV[6] .. ARGV[1] .. ':' .. i
  if redis.call('PERSIST', chunk) == 0 and redis.call('EXISTS', chunk) == 0 then
    return redis.error_reply('chunk ' .. i .. ' of the new blob has expired')
  end
end
retire(KEYS[1], ARGV[6], ARGV[7])
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'chunks', ARGV[2], 'size', ARGV[3],
           'written', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
return 1
"""
)
#: Remove a blob (KEYS: blob, index; ARGV: key, chunk key prefix, grace).
_DROP = (
    _RETIRE
    + """
retire(KEYS[1], ARGV[2], ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""
)


class RedisStore(BlobStore):
    schemes = ("redis", "rediss")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        options = StoreURL("redis", url)
        self.where = options.where("localhost", 6379)
        self.prefix = options.text("prefix", "ec") or "ec"
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", self.prefix):
            raise StorageError("redis blob store: prefix must be 1-32 letters, digits, . - _")
        self._client_url = options.passed()
        self._r: Any = None
        self._scripts: dict[str, Any] = {}
        self._errors: Any = None

    async def connect(self) -> None:
        if self._r is not None:
            return
        aioredis = require("redis.asyncio", "redis")
        self._errors = require("redis.exceptions", "redis")
        try:
            r = aioredis.from_url(self._client_url)
        except (ValueError, TypeError) as exc:
            raise StorageError(f"bad redis blob store URL: {self.mask(exc)}") from None
        try:
            await r.ping()
        except Exception as exc:
            await r.aclose()
            raise StorageError(
                f"cannot reach Redis at {self.where}: {self.mask(exc).rstrip('.')}; is it "
                "running, and are the credentials right?"
            ) from None
        self._scripts = {"swap": r.register_script(_SWAP), "drop": r.register_script(_DROP)}
        self._r = r

    async def close(self) -> None:
        r, self._r = self._r, None
        if r is not None:
            await r.aclose()

    @property
    def r(self) -> Any:
        if self._r is None:
            raise StorageError(f"{self.name} is not connected; call connect() first")
        return self._r

    def _blob(self, key: str) -> str:
        return f"{self.prefix}:blob:{key}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:blobs"

    @property
    def _chunks(self) -> str:
        return f"{self.prefix}:chunk:"

    def _chunk(self, version: str, n: int) -> str:
        return f"{self._chunks}{version}:{n}"

    # -- the primitives ---------------------------------------------------------------------
    async def _write(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        version = uuid.uuid4().hex
        count = size = 0
        try:
            async for chunk in chunks:
                await self.r.set(self._chunk(version, count), chunk, ex=PENDING)
                count, size = count + 1, size + len(chunk)
            await self._scripts["swap"](
                keys=[self._blob(key), self._index],
                args=[version, count, size, repr(time.time()), key, self._chunks, GRACE],
            )
        except BaseException as exc:
            await self._drop_chunks(version, count + 1)
            if isinstance(exc, Exception) and not isinstance(exc, StorageError):
                raise self.error(f"writing {key!r}", exc) from None
            raise

    async def _read(self, key: str) -> AsyncIterator[bytes]:
        try:
            version, count = self._version(
                await self.r.hmget(self._blob(key), ["version", "chunks"])
            )
        except self._errors.RedisError as exc:
            raise self.error(f"reading {key!r}", exc) from None
        if version is None:
            raise self.missing(key)
        for n in range(count):
            try:
                chunk = await self.r.get(self._chunk(version, n))
            except self._errors.RedisError as exc:
                raise self.error(f"reading {key!r}", exc) from None
            if chunk is None:
                raise self.missing(key, " (it was replaced or deleted while it was read)")
            yield chunk

    async def _stat(self, key: str) -> float | None:
        try:
            written = await self.r.hget(self._blob(key), "written")
        except self._errors.RedisError as exc:
            raise self.error(f"looking up {key!r}", exc) from None
        return None if written is None else float(written)

    async def _delete(self, key: str) -> None:
        try:
            await self._scripts["drop"](
                keys=[self._blob(key), self._index], args=[key, self._chunks, GRACE]
            )
        except self._errors.RedisError as exc:
            raise self.error(f"deleting {key!r}", exc) from None

    async def _list(self, prefix: str) -> AsyncIterator[tuple[str, float]]:
        try:
            async for member, score in self.r.zscan_iter(self._index, match=_glob(prefix)):
                yield member.decode(), float(score)
        except self._errors.RedisError as exc:
            raise self.error(f"listing {prefix!r}", exc) from None

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _version(found: Any) -> tuple[str | None, int]:
        version, count = (found or [None, None])[:2]
        if version is None:
            return None, 0
        return (version.decode() if isinstance(version, bytes) else str(version)), int(count)

    async def _drop_chunks(self, version: str, count: int) -> None:
        """Delete the chunks of a write that failed (they would expire after PENDING)."""
        names = [self._chunk(version, n) for n in range(count)]
        # nothing refers to them, and they expire by themselves: a failure here is harmless
        with contextlib.suppress(Exception):
            for start in range(0, len(names), DELETE_BATCH):
                await self.r.unlink(*names[start : start + DELETE_BATCH])


def _glob(prefix: str) -> str:
    """A ZSCAN pattern matching the keys that start with ``prefix``."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
