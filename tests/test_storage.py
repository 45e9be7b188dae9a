"""The blob store contract and the result store, run against every backend on its real server.

``MemoryStore`` below is a whole backend in one class: the five primitives are all a store
needs to pass the contract, and ``tests.test_storage:MemoryStore`` runs it as a user's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from elasticcode.errors import StorageError
from elasticcode.storage import (
    BadKey,
    BlobCorrupt,
    BlobMissing,
    BlobStore,
    ResultStore,
    ResultTimeout,
    ResultTooLarge,
    UnknownStore,
    open_blob_store,
)

from .services import service_url

T = TypeVar("T")
MiB = 1024 * 1024
BACKENDS = ["file", "sqlite", "postgresql", "redis", "s3", "custom"]
#: A store of your own to run the contract against (an empty one: the suite deletes every
#: key it finds there), e.g. ELASTICCODE_TEST_BLOB_URL=mypackage.store:MyStore
OWN = os.environ.get("ELASTICCODE_TEST_BLOB_URL")
BACKENDS += ["own"] if OWN else []


# --8<-- [start:memory]
class MemoryStore(BlobStore):
    """Blobs in a dict: the smallest backend that passes the contract."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.blobs: dict[str, tuple[bytes, float]] = {}

    async def _write(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        data = b"".join([chunk async for chunk in chunks])  # all or nothing
        self.blobs[key] = (data, time.time())

    async def _read(self, key: str) -> AsyncIterator[bytes]:
        if key not in self.blobs:
            raise self.missing(key)
        data = self.blobs[key][0]
        for start in range(0, len(data), self.chunk_size):
            yield data[start : start + self.chunk_size]

    async def _stat(self, key: str) -> float | None:
        return self.blobs[key][1] if key in self.blobs else None

    async def _delete(self, key: str) -> None:
        self.blobs.pop(key, None)

    async def _list(self, prefix: str) -> AsyncIterator[tuple[str, float]]:
        for key, (_, written) in list(self.blobs.items()):
            yield key, written


# --8<-- [end:memory]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    from .network import postgres_database

    yield from postgres_database()


def _redis_cleanup(url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    try:
        for name in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.unlink(name)
    finally:
        r.close()


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store of this test alone, emptied afterwards (tests on a shared server never meet)."""
    tag = uuid.uuid4().hex[:10]
    kind = request.param
    if kind == "file":
        yield f"file://{tmp_path / 'blobs'}"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'blobs.db'}"
    elif kind == "custom":
        yield "tests.test_storage:MemoryStore"
    elif kind == "own" and OWN:
        yield OWN
        asyncio.run(_empty(OWN))
    elif kind == "postgresql":
        url = request.getfixturevalue("postgres") + f"?table=t{tag}"
        yield url
        asyncio.run(_empty(url))
    elif kind == "redis":
        base = service_url("redis")
        yield f"{base}{'&' if '?' in base else '?'}prefix=ectest{tag}"
        _redis_cleanup(base, f"ectest{tag}")
    else:
        base, _, query = service_url("s3").partition("?")
        url = f"{base}/test-{tag}?{query}"
        yield url
        asyncio.run(_empty(url))


async def _empty(url: str) -> None:
    async with open_blob_store(url) as store:
        for key in await store.keys():
            await store.delete(key)


def using(url: str, body: Callable[[BlobStore], Awaitable[T]]) -> T:
    """Run ``body`` with the store connected, in an event loop of its own."""

    async def go() -> T:
        async with open_blob_store(url) as store:
            return await body(store)

    return asyncio.run(go())


async def _stream(total: int, piece: int = MiB) -> AsyncIterator[bytes]:
    """``total`` bytes, made as they are sent, so that the test itself holds only a piece."""
    for n in range(0, total, piece):
        yield (n // piece % 251).to_bytes(1, "big") * min(piece, total - n)


# -- the blob contract ------------------------------------------------------------------------
def test_put_get_overwrite_delete(url: str) -> None:
    async def body(store: BlobStore) -> None:
        assert not await store.exists("flow/a1")
        digest = await store.put("flow/a1", b"first")
        assert digest == hashlib.sha256(b"first").hexdigest()
        assert await store.get("flow/a1") == b"first"
        assert await store.exists("flow/a1")
        await store.put("flow/a1", b"second, longer")
        assert await store.get("flow/a1") == b"second, longer"
        assert abs(await store.modified("flow/a1") - time.time()) < 30
        await store.put("flow/empty", b"")
        assert await store.get("flow/empty") == b""
        big = os.urandom(3 * MiB + 17)  # several chunks, the last a short one
        await store.put("flow/big", big)
        assert await store.get("flow/big") == big
        await store.delete("flow/a1")
        await store.delete("flow/a1")  # idempotent
        await store.delete("flow/never")
        assert not await store.exists("flow/a1")
        with pytest.raises(BlobMissing):
            await store.get("flow/a1")

    using(url, body)


def test_missing_names_key_and_store(url: str) -> None:
    async def body(store: BlobStore) -> None:
        with pytest.raises(BlobMissing) as caught:
            await store.get("flow/none")
        text = str(caught.value)
        assert "flow/none" in text and store.name in text
        assert caught.value.key == "flow/none"
        assert all(secret not in text for secret in store.secrets)
        with pytest.raises(BlobMissing):
            await store.modified("flow/none")
        with pytest.raises(BlobMissing):
            [c async for c in store.open("flow/none")]

    using(url, body)


def test_keys_by_prefix_and_age(url: str) -> None:
    async def body(store: BlobStore) -> None:
        for key in ("f1/a", "f1/b", "f1/b/c", "f2/a"):
            await store.put(key, b"x")
        await asyncio.sleep(1.1)  # S3 keeps the time of write to the second
        cut = time.time()
        await asyncio.sleep(1.1)
        await store.put("f1/new", b"x")
        assert await store.keys("f1/") == ["f1/a", "f1/b", "f1/b/c", "f1/new"]
        assert await store.keys("f1/b") == ["f1/b", "f1/b/c"]
        assert await store.keys("f1/", older_than=cut) == ["f1/a", "f1/b", "f1/b/c"]
        assert await store.keys("f3/") == []
        assert set(await store.keys()) == {"f1/a", "f1/b", "f1/b/c", "f1/new", "f2/a"}
        assert await store.get("f1/b") == b"x" and await store.get("f1/b/c") == b"x"

    using(url, body)


def test_failed_write_keeps_the_old_blob(url: str) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"y" * MiB
        yield b"y" * MiB
        raise OSError("the producer died")

    async def body(store: BlobStore) -> None:
        await store.put("flow/keep", b"old")
        with pytest.raises(OSError, match="producer died"):
            await store.write("flow/keep", failing())
        assert await store.get("flow/keep") == b"old"
        with pytest.raises(OSError):
            await store.write("flow/fresh", failing())
        assert not await store.exists("flow/fresh")
        assert await store.keys("flow/") == ["flow/keep"]

    using(url, body)


def test_streams_a_large_blob_in_bounded_memory(url: str) -> None:
    size = 50 * MiB
    expected = hashlib.sha256()
    for piece in [(n % 251).to_bytes(1, "big") * MiB for n in range(50)]:
        expected.update(piece)

    async def body(store: BlobStore) -> tuple[int, int]:
        tracemalloc.start()
        try:
            digest = await store.write("flow/large", _stream(size))
            _, wrote_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            got, seen = hashlib.sha256(), 0
            async for chunk in store.open("flow/large", sha256=digest):
                assert len(chunk) <= store.chunk_size
                got.update(chunk)
                seen += len(chunk)
            _, read_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert digest == expected.hexdigest() == got.hexdigest()
        assert seen == size
        return wrote_peak, read_peak

    wrote_peak, read_peak = using(url, body)
    if url.startswith("tests."):
        return  # the in-memory store holds every blob whole, by design
    # a part (S3: 8 MiB, copied once for the request) or a chunk at a time, never the blob
    assert wrote_peak < 32 * MiB, f"writing 50 MiB took {wrote_peak / MiB:.1f} MiB"
    assert read_peak < 16 * MiB, f"reading 50 MiB took {read_peak / MiB:.1f} MiB"


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "a/../b", "..", "a/.hidden", "a b", "a/", "x" * 2000, "é"]
)
def test_bad_keys_are_refused(url: str, key: str) -> None:
    async def body(store: BlobStore) -> None:
        for call in (store.put(key, b"x"), store.get(key), store.exists(key), store.delete(key)):
            with pytest.raises(BadKey, match="bad blob key"):
                await call
        with pytest.raises(BadKey):
            await store.keys("../")

    using(url, body)


def test_integrity(url: str) -> None:
    async def body(store: BlobStore) -> None:
        digest = await store.put("flow/sum", b"payload")
        assert await store.get("flow/sum", sha256=digest) == b"payload"
        assert await store.get("flow/sum", sha256=digest.upper()) == b"payload"
        with pytest.raises(BlobCorrupt, match="flow/sum"):
            await store.get("flow/sum", sha256="0" * 64)
        with pytest.raises(BlobCorrupt):
            [chunk async for chunk in store.open("flow/sum", sha256="0" * 64)]
        with pytest.raises(BlobCorrupt, match="not storing"):
            await store.put("flow/other", b"payload", sha256="0" * 64)
        assert not await store.exists("flow/other")

    using(url, body)


# -- the result store, over every backend -----------------------------------------------------
def test_results(url: str) -> None:
    async def body(store: BlobStore) -> None:
        results = ResultStore(store, max_bytes=1000)
        assert await results.get("flow1", "k1") is None
        await results.put("flow1", "k1", b"value")
        assert await results.get("flow1", "k1") == b"value"
        assert await results.get("flow2", "k1") is None
        with pytest.raises(ResultTooLarge, match="1,001 bytes, over the result store's limit"):
            await results.put("flow1", "k2", b"x" * 1001)
        assert await results.get("flow1", "k2") is None
        await results.put("flow1", "short", b"v", ttl=0.3)
        await results.put("flow1", "long", b"v", ttl=3600)
        assert await results.get("flow1", "short") == b"v"
        await asyncio.sleep(0.4)
        assert await results.get("flow1", "short") is None  # expired: never returned
        assert await results.sweep() == 1
        assert not await store.exists(results.key("flow1", "short"))
        assert await results.get("flow1", "long") == b"v"
        assert await results.sweep(now=time.time() + 7200) == 1
        assert await results.get("flow1", "k1") == b"value"  # no ttl: kept

        async def later() -> None:
            await asyncio.sleep(0.3)
            await results.put("flow1", "late", b"arrived")

        started = time.monotonic()
        task = asyncio.create_task(later())
        assert await results.wait("flow1", "late", timeout=10) == b"arrived"
        assert time.monotonic() - started < 2
        await task
        started = time.monotonic()
        with pytest.raises(ResultTimeout, match="no result 'never' of flow 'flow1'"):
            await results.wait("flow1", "never", timeout=0.5)
        assert 0.45 < time.monotonic() - started < 1.5

    using(url, body)


# -- backend by backend -----------------------------------------------------------------------
def test_wait_backs_off(tmp_path: Path) -> None:
    polls = 0

    async def body(store: BlobStore) -> None:
        nonlocal polls
        results = ResultStore(store)
        real = results.get

        async def counted(flow: str, key: str) -> bytes | None:
            nonlocal polls
            polls += 1
            return await real(flow, key)

        results.get = counted  # type: ignore[method-assign]
        with pytest.raises(ResultTimeout):
            await results.wait("flow", "none", timeout=3)

    using(f"file://{tmp_path}", body)
    # 10 ms doubling to 1 s: about 9 polls in 3 s, where a 10 ms poll would make 300
    assert 6 <= polls <= 14


def test_file_store_files(tmp_path: Path) -> None:
    root = tmp_path / "blobs"

    async def body(store: BlobStore) -> None:
        digest = await store.put("flow/deep/blob1", b"data")
        path = root / "flow" / "deep" / "blob1~"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE((root / "flow" / "deep").stat().st_mode) == 0o700
        (path.parent / ".blob2~.0123abcd").write_bytes(b"half")  # a crash's leftover
        assert await store.keys() == ["flow/deep/blob1"]
        path.write_bytes(b"dat4")  # flipped on disk
        with pytest.raises(BlobCorrupt, match="corrupt"):
            await store.get("flow/deep/blob1", sha256=digest)

    using(f"file://{root}", body)
    with pytest.raises(StorageError, match="names a host; use file:///path"):
        open_blob_store("file://relative/path")


def test_urls_choose_backends() -> None:
    with pytest.raises(UnknownStore, match=r"Known schemes: file, .*s3.* Did you mean sqlite://"):
        open_blob_store("sqlit:///blobs.db")
    with pytest.raises(UnknownStore, match="not a subclass"):
        open_blob_store("tests.test_storage:using")
    with pytest.raises(UnknownStore, match="cannot load"):
        open_blob_store("tests.nowhere:Store")
    with pytest.raises(StorageError, match=r"s3 blob store: unknown option\(s\) \['colour'\]"):
        open_blob_store("s3://bucket?colour=red")
    with pytest.raises(StorageError, match="s3 blob store: part_size must be a whole number"):
        open_blob_store("s3://bucket?part_size=1")
    assert type(open_blob_store("tests.test_storage:MemoryStore")) is MemoryStore


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:hunter2secret@127.0.0.1:1/0",
        "postgresql://user:hunter2secret@127.0.0.1:1/db",
        "s3://KEY:hunter2secret@bucket?endpoint=http://127.0.0.1:1&attempts=1",
        "s3://KEY:hunter2secret@bucket?colour=hunter2secret",
    ],
)
def test_secrets_are_masked(url: str) -> None:
    async def go() -> None:
        async with open_blob_store(url):
            pass

    with pytest.raises(StorageError) as caught:
        asyncio.run(go())
    assert "hunter2secret" not in str(caught.value)


def test_secret_references(monkeypatch: pytest.MonkeyPatch) -> None:
    url = service_url("s3")
    secret = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    referenced = url.replace(f":{secret}@", ":${secret:EC_TEST_S3_KEY}@")
    monkeypatch.setenv("ELASTICCODE_SECRET_EC_TEST_S3_KEY", secret)

    async def body(store: BlobStore) -> None:
        assert await store.keys("nothing-here/") == []

    using(referenced, body)
    monkeypatch.setenv("ELASTICCODE_SECRET_EC_TEST_S3_KEY", "wrong-" + secret)
    with pytest.raises(StorageError, match="credentials were refused") as caught:
        using(referenced, body)
    assert secret not in str(caught.value)
