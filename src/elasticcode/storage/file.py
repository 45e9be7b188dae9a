"""Blobs as files in a local directory: the embedded default.

Features
    One file per blob, ``ROOT/KEY~`` (the ``~``, which keys cannot hold, keeps a blob ``a``
    and the blobs under ``a/`` apart). A write goes to a temporary file beside the blob
    (``.NAME~.RANDOM``), is fsynced, then renamed over the blob and the directory fsynced:
    a crash leaves the old blob or the new one, never half a blob; temporary files left by
    a crash are never listed (``discard_partial`` removes them).
    Blob files are created 0600 and directories 0700: blobs carry users' data. File I/O runs
    in threads so that the event loop never waits on the disk. A directory on a shared file
    system (NFS) serves several hosts as long as it honours rename and fsync.

URL
    ``file:///absolute/path`` (the directory; created if missing). A relative path is refused,
    since a worker's working directory is not the user's.

Options
    ``fsync=true|false`` -- fsync each blob and its directory before a write returns
    (default true; false only for scratch data).
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

from ..errors import StorageError
from .base import BlobStore
from .url import StoreURL

SUFFIX = "~"
OPTIONS = ("fsync",)


class FileStore(BlobStore):
    schemes = ("file",)

    def __init__(self, url: str) -> None:
        super().__init__(url)
        options = StoreURL("file", url, known=OPTIONS)
        if options.parts.netloc not in ("", "localhost"):
            raise StorageError(f"file blob store: {url!r} names a host; use file:///path")
        path = unquote(options.parts.path)
        if not path.startswith("/"):
            raise StorageError(
                f"file blob store: {url!r} needs an absolute path, as in file:///var/lib/blobs"
            )
        self.root = Path(path)
        self.fsync = options.flag("fsync", True)

    async def connect(self) -> None:
        try:
            await asyncio.to_thread(self.root.mkdir, mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise self.error("creating its directory", exc) from None

    def _path(self, key: str) -> Path:
        return self.root / (key + SUFFIX)

    async def _write(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        path = self._path(key)
        temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        try:
            out = await asyncio.to_thread(self._create, temp)
        except OSError as exc:
            raise self._failed("writing", key, exc) from None
        try:
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(self._finish, out, temp, path)
            finally:
                out.close()
        except BaseException as exc:
            await asyncio.to_thread(temp.unlink, missing_ok=True)
            if isinstance(exc, OSError):
                raise self._failed("writing", key, exc) from None
            raise

    def _create(self, temp: Path) -> BinaryIO:
        temp.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return os.fdopen(fd, "wb")

    def _finish(self, out: BinaryIO, temp: Path, path: Path) -> None:
        out.flush()
        if self.fsync:
            os.fsync(out.fileno())
        os.replace(temp, path)
        if self.fsync:  # the rename itself is durable only once the directory is
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    async def _read(self, key: str) -> AsyncIterator[bytes]:
        try:
            # an open file keeps its bytes even if the blob is replaced meanwhile
            source = await asyncio.to_thread(open, self._path(key), "rb")
        except FileNotFoundError:
            raise self.missing(key) from None
        except NotADirectoryError:
            raise self.missing(key) from None
        except OSError as exc:
            raise self._failed("reading", key, exc) from None
        try:
            while chunk := await asyncio.to_thread(source.read, self.chunk_size):
                yield chunk
        finally:
            source.close()

    async def _stat(self, key: str) -> float | None:
        try:
            return (await asyncio.to_thread(self._path(key).stat)).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None

    async def _delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self._path(key).unlink, missing_ok=True)
        except NotADirectoryError:
            pass
        except OSError as exc:
            raise self._failed("deleting", key, exc) from None

    async def _list(self, prefix: str) -> AsyncIterator[tuple[str, float]]:
        found = await asyncio.to_thread(self._walk, prefix)
        for item in found:
            yield item

    def _walk(self, prefix: str) -> list[tuple[str, float]]:
        # only the directory the prefix points into is walked, not the whole store
        top = self.root / prefix.rpartition("/")[0]
        found = []
        for folder, _, files in os.walk(top):
            base = Path(folder).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith(".") or not name.endswith(SUFFIX):
                    continue
                key = name[: -len(SUFFIX)] if base == "." else f"{base}/{name[: -len(SUFFIX)]}"
                if key.startswith(prefix):
                    try:
                        found.append((key, os.stat(os.path.join(folder, name)).st_mtime))
                    except FileNotFoundError:  # deleted meanwhile
                        continue
        return found

    async def discard_partial(self, prefix: str, older_than: float) -> int:
        return await asyncio.to_thread(self._discard, prefix, older_than)

    def _discard(self, prefix: str, older_than: float) -> int:
        """Temporary files of writes that never finished."""
        top = self.root / prefix.rpartition("/")[0]
        gone = 0
        for folder, _, files in os.walk(top):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    if name.startswith(".") and os.stat(path).st_mtime < older_than:
                        os.unlink(path)
                        gone += 1
                except FileNotFoundError:  # its write finished meanwhile
                    continue
        return gone

    def _failed(self, doing: str, key: str, exc: OSError) -> StorageError:
        if exc.errno == errno.ENOSPC:
            return StorageError(f"{self.name}: disk full {doing} {key!r}; nothing was changed")
        return self.error(f"{doing} {key!r}", exc)
