"""The blob store contract: the few primitives every blob backend implements.

A blob is a named byte string: a message payload too large for the broker, a processor's
result. A backend implements five primitives (``_write``, ``_read``, ``_stat``, ``_delete``,
``_list``); the base class builds the rest from them: ``put``/``get`` of whole blobs,
streaming ``write``/``open`` for blobs too large to hold in memory, sha256 integrity checks,
key validation, and ``keys(prefix, older_than)`` for collecting orphans.

The contract, which ``tests/test_storage.py`` checks against every backend:

* A write replaces a blob atomically: a reader sees the old blob or the new one, never a mix,
  and a write that fails (or a crash) leaves the old blob in place.
* ``_read`` yields chunks of at most ``chunk_size`` bytes, so memory stays bounded however
  large the blob; a blob overwritten or deleted while it is read ends the read with
  ``BlobMissing`` rather than a mix of two versions.
* ``_delete`` of a missing key is not an error.
* ``_stat`` and ``_list`` report when each blob was last written (seconds since the epoch).
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from typing import Any

from ..errors import StorageError
from ..redact import mask, redact_url, secrets_of

#: Reads and chunked backends move data in pieces of this size.
CHUNK = 1024 * 1024
MAX_KEY = 1024
#: A key is ``/``-separated segments of letters, digits and ``_ . = -``; a segment does not
#: start with ``.`` (so ``..`` cannot climb out of a directory and temporary files cannot
#: collide with blobs) and is at most 200 characters (a file name, with room for a suffix).
_SEGMENT = r"[A-Za-z0-9_=-][A-Za-z0-9_.=-]{0,199}"
KEY = re.compile(rf"{_SEGMENT}(/{_SEGMENT})*")
PREFIX = re.compile(rf"({_SEGMENT}/)*([A-Za-z0-9_=-][A-Za-z0-9_.=-]{{0,199}})?")


class BadKey(StorageError, ValueError):
    """A blob key (or prefix) that the stores refuse."""


class BlobMissing(StorageError, KeyError):
    """No blob under this key (never written, deleted, or replaced while it was read)."""

    def __init__(self, key: str, store: str, why: str = "") -> None:
        self.key = key
        self.store = store
        self.why = why
        super().__init__(f"no blob {key!r} in {store}{why}")

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])

    def __reduce__(self) -> tuple[type[BlobMissing], tuple[str, str, str]]:
        return type(self), (self.key, self.store, self.why)  # crosses processes whole


class _SourceFailed(BaseException):
    """The stream a write was reading from failed. A ``BaseException`` so that no backend's
    handling of its own driver's errors (wrapped as ``StorageError``) takes it for one."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class BlobCorrupt(StorageError):
    """A blob's bytes do not match the sha256 it was stored with."""


def check_key(key: str) -> str:
    """``key``, or ``BadKey`` saying what a key may hold."""
    if not isinstance(key, str) or len(key) > MAX_KEY or not KEY.fullmatch(key):
        raise BadKey(
            f"bad blob key {str(key)[:100]!r}: use '/'-separated names of letters, digits and"
            f" _ . = - (no leading '/', no empty or '.'-first names such as '..'), at most"
            f" {MAX_KEY} characters, e.g. 'flowname/ab12cd'"
        )
    return key


def check_prefix(prefix: str) -> str:
    """``prefix`` ("" for all keys), or ``BadKey``."""
    if not isinstance(prefix, str) or len(prefix) > MAX_KEY or not PREFIX.fullmatch(prefix):
        raise BadKey(
            f"bad blob key prefix {str(prefix)[:100]!r}: a key's beginning such as 'flowname/'"
        )
    return prefix


async def _chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


class BlobStore(abc.ABC):
    """Base class of blob backends. Subclasses implement the five abstract primitives."""

    #: URL schemes this backend serves.
    schemes: tuple[str, ...] = ()
    #: The largest chunk ``_read`` yields (and chunked backends store).
    chunk_size: int = CHUNK

    def __init__(self, url: str) -> None:
        self.url = url
        self.secrets = secrets_of(url)
        #: The store as errors and logs name it: its URL, credentials masked.
        self.name = self.mask(redact_url(url))

    def mask(self, text: object) -> str:
        """``text`` with this store's secrets masked."""
        return mask(text, self.secrets)

    def missing(self, key: str, why: str = "") -> BlobMissing:
        return BlobMissing(key, self.name, why)

    def error(self, doing: str, exc: BaseException) -> StorageError:
        """A driver's failure as a ``StorageError`` naming the store, secrets masked."""
        return StorageError(self.mask(f"{self.name}: {doing} failed: {exc}"))

    async def __aenter__(self) -> BlobStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:  # noqa: B027 - optional hook
        """Open connections; called once before any other method."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- the primitives ---------------------------------------------------------------------
    @abc.abstractmethod
    async def _write(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        """Store the chunks as blob ``key``, replacing any blob there atomically."""

    @abc.abstractmethod
    def _read(self, key: str) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks of at most ``chunk_size``; ``BlobMissing`` if none."""

    @abc.abstractmethod
    async def _stat(self, key: str) -> float | None:
        """When blob ``key`` was last written (epoch seconds), or None if there is none."""

    @abc.abstractmethod
    async def _delete(self, key: str) -> None:
        """Remove blob ``key``; nothing happens if there is none."""

    @abc.abstractmethod
    def _list(self, prefix: str) -> AsyncIterator[tuple[str, float]]:
        """(key, last write) of every blob whose key starts with ``prefix``."""

    # -- built from them --------------------------------------------------------------------
    async def put(self, key: str, data: bytes, sha256: str | None = None) -> str:
        """Store ``data`` under ``key`` (replacing what was there); return its sha256 (hex).

        With ``sha256``, the data is checked against it first and refused on a mismatch."""
        check_key(key)
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and sha256.lower() != digest:
            raise BlobCorrupt(f"not storing {key!r}: its sha256 is {digest}, not {sha256}")
        await self._write(key, _chunked(bytes(data), self.chunk_size))
        return digest

    async def write(self, key: str, chunks: AsyncIterable[bytes]) -> str:
        """Store a stream of chunks under ``key`` without holding it all in memory; return
        its sha256 (hex). An error of the stream itself comes out as it was raised, and the
        blob is left as it was."""
        check_key(key)
        digest = hashlib.sha256()

        async def hashed() -> AsyncIterator[bytes]:
            source = aiter(chunks)
            while True:
                try:
                    chunk = await anext(source)
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise _SourceFailed(exc) from exc
                digest.update(chunk)
                for start in range(0, len(chunk), self.chunk_size):
                    yield bytes(chunk[start : start + self.chunk_size])

        try:
            await self._write(key, hashed())
        except _SourceFailed as failed:
            raise failed.error.with_traceback(failed.error.__traceback__) from None
        return digest.hexdigest()

    async def open(self, key: str, sha256: str | None = None) -> AsyncGenerator[bytes, None]:
        """The blob's bytes as an async iterator of chunks, for blobs too large for memory.

        With ``sha256``, the last chunk comes only once the whole blob is checked: a blob
        that does not match raises ``BlobCorrupt`` instead."""
        check_key(key)
        digest = hashlib.sha256() if sha256 is not None else None
        reader = self._read(key)
        try:
            async for chunk in reader:
                if digest is not None:
                    digest.update(chunk)
                yield chunk
        finally:
            # a reader left early (a consumer that stopped) releases its file or connection now
            if (aclose := getattr(reader, "aclose", None)) is not None:
                await aclose()
        if digest is not None and sha256 is not None:
            self._verify(key, digest.hexdigest(), sha256)

    async def get(self, key: str, sha256: str | None = None) -> bytes:
        """The whole blob; ``BlobMissing`` if there is none, ``BlobCorrupt`` if ``sha256`` is
        given and does not match."""
        data = b"".join([chunk async for chunk in self.open(key)])
        if sha256 is not None:
            self._verify(key, hashlib.sha256(data).hexdigest(), sha256)
        return data

    async def exists(self, key: str) -> bool:
        return await self._stat(check_key(key)) is not None

    async def modified(self, key: str) -> float:
        """When blob ``key`` was last written (epoch seconds); ``BlobMissing`` if none."""
        found = await self._stat(check_key(key))
        if found is None:
            raise self.missing(key)
        return found

    async def delete(self, key: str) -> None:
        """Remove blob ``key``; deleting a blob that is not there is not an error."""
        await self._delete(check_key(key))

    async def keys(self, prefix: str = "", older_than: float | None = None) -> list[str]:
        """The keys under ``prefix``, sorted; with ``older_than`` (epoch seconds), only those
        last written before it (the orphans a collector may delete)."""
        check_prefix(prefix)
        found = [
            key
            async for key, written in self._list(prefix)
            if key.startswith(prefix) and (older_than is None or written < older_than)
        ]
        return sorted(found)

    async def discard_partial(self, prefix: str, older_than: float) -> int:
        """Remove what writes under ``prefix`` that never finished (a process killed
        mid-write) left, if older than ``older_than`` (epoch seconds); return how many. A
        backend whose writes leave nothing behind has nothing to do."""
        return 0

    def _verify(self, key: str, actual: str, expected: str) -> None:
        if actual != expected.lower():
            raise BlobCorrupt(
                f"blob {key!r} in {self.name} is corrupt: its sha256 is {actual}, not the"
                f" {expected} it was stored with"
            )


def require(module: str, extra: str) -> Any:
    """Import a backend's driver, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise StorageError(
            f"this blob store needs the {module!r} package: pip install 'elasticcode[{extra}]'"
        ) from None
