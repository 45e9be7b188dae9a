"""Results of processors, kept in any blob store: bounded in size, with expiry, and waited on.

A result is a blob under ``PREFIX/FLOW/KEY`` holding a 12-byte header (a tag and the time it
expires) and the value's bytes. ``get`` never returns an expired result; ``sweep`` deletes
them (run it now and then: a store has no clock of its own). ``wait`` polls with a bounded
exponential backoff, 10 ms doubling to 1 s (with jitter, so that many waiters do not poll in
step): a result that arrives at once is seen at once, and a long wait costs about one read a
second.
"""

from __future__ import annotations

import asyncio
import random
import re
import struct
import time
from typing import Any

import msgpack

from ..errors import StorageError
from .base import BlobMissing, BlobStore, check_key

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
FIRST_POLL = 0.01
LAST_POLL = 1.0
_TAG = b"ECR1"
_HEADER = struct.Struct(">4sd")  # tag, expiry (epoch seconds; 0 for never)
_FLOW = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}")


def decode_result(value: bytes) -> list[Any]:
    """The outputs a processor's result holds (``flow.Results``: a msgpack list)."""
    try:
        outputs = msgpack.unpackb(value, raw=False, strict_map_key=False)
    except Exception as exc:
        raise StorageError(f"a result that is not a processor's outputs: {exc}") from None
    if not isinstance(outputs, list):
        raise StorageError("a result that is not a processor's outputs (not a list)")
    return outputs


def jsonable(value: Any) -> Any:
    """``value`` for JSON: bytes as ``{"base64": ...}``, everything else as it is."""
    if isinstance(value, bytes | bytearray):
        import base64

        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


class ResultTooLarge(StorageError):
    """A result larger than the result store takes."""


class ResultTimeout(StorageError, TimeoutError):
    """No result arrived within the time waited."""


class ResultStore:
    """Results in ``blobs`` under ``prefix``; at most ``max_bytes`` each; kept ``ttl``
    seconds unless ``put`` says otherwise (None: until deleted)."""

    def __init__(
        self,
        blobs: BlobStore,
        *,
        prefix: str = "results",
        max_bytes: int = DEFAULT_MAX_BYTES,
        ttl: float | None = None,
    ) -> None:
        check_key(prefix)
        if max_bytes < 0:
            raise StorageError(f"result store: max_bytes must be >= 0, not {max_bytes}")
        self.blobs = blobs
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.ttl = ttl

    def key(self, flow: str, key: str) -> str:
        """The blob key of one result."""
        return check_key(self._folder(flow) + key)

    def _folder(self, flow: str) -> str:
        if not isinstance(flow, str) or not _FLOW.fullmatch(flow):
            raise StorageError(f"result store: {str(flow)[:100]!r} is not a flow name")
        return f"{self.prefix}/{flow}/"

    async def put(self, flow: str, key: str, value: bytes, ttl: float | None = None) -> None:
        """Keep ``value`` as the result ``key`` of ``flow`` (replacing one there) for ``ttl``
        seconds (default: the store's ``ttl``)."""
        name = self.key(flow, key)
        if len(value) > self.max_bytes:
            raise ResultTooLarge(
                f"result {key!r} of flow {flow!r} is {len(value):,} bytes, over the result "
                f"store's limit of {self.max_bytes:,}: store the data as a blob and return "
                "its key, or raise max_bytes"
            )
        ttl = self.ttl if ttl is None else ttl
        if ttl is not None and ttl <= 0:
            raise StorageError(f"result store: ttl must be > 0 seconds, not {ttl}")
        expires = 0.0 if ttl is None else time.time() + ttl
        await self.blobs.put(name, _HEADER.pack(_TAG, expires) + value)

    async def get(self, flow: str, key: str) -> bytes | None:
        """The result, or None if there is none (never stored, deleted or expired)."""
        name = self.key(flow, key)
        try:
            data = await self.blobs.get(name)
        except BlobMissing:
            return None
        expires = self._expiry(name, data)
        if expires and expires <= time.time():
            return None
        return data[_HEADER.size :]

    async def wait(self, flow: str, key: str, timeout: float) -> bytes:
        """The result once it is there; ``ResultTimeout`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = FIRST_POLL
        while True:
            found = await self.get(flow, key)
            if found is not None:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise ResultTimeout(
                    f"no result {key!r} of flow {flow!r} in {self.blobs.name} after {timeout:g}s"
                )
            await asyncio.sleep(min(left, delay * random.uniform(0.8, 1.0)))
            delay = min(delay * 2, LAST_POLL)

    async def delete(self, flow: str, key: str) -> None:
        await self.blobs.delete(self.key(flow, key))

    async def sweep(self, flow: str | None = None, now: float | None = None) -> int:
        """Delete expired results (of one flow, or all); return how many were deleted."""
        now = time.time() if now is None else now
        prefix = f"{self.prefix}/" if flow is None else self._folder(flow)
        deleted = 0
        for name in await self.blobs.keys(prefix):
            expires = await self._read_expiry(name)
            if expires and expires <= now:
                await self.blobs.delete(name)
                deleted += 1
        return deleted

    async def _read_expiry(self, name: str) -> float | None:
        """The expiry in a result's header, reading no more than its first chunk."""
        chunks = self.blobs.open(name)
        try:
            head = b""
            async for chunk in chunks:
                head += chunk
                if len(head) >= _HEADER.size:
                    break
        except BlobMissing:  # deleted meanwhile
            return None
        finally:
            await chunks.aclose()
        if len(head) < _HEADER.size or head[:4] != _TAG:
            return None  # not a result: not the sweep's to delete
        return float(_HEADER.unpack_from(head)[1])

    def _expiry(self, name: str, data: bytes) -> float:
        if len(data) < _HEADER.size or data[:4] != _TAG:
            raise StorageError(
                f"{name!r} in {self.blobs.name} is not a result (was it written by something"
                " else than the result store?)"
            )
        return float(_HEADER.unpack_from(data)[1])
