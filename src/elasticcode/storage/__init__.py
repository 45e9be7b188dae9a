"""Blob and result stores, chosen by URL scheme or by ``module:Class`` for a user's own.

``open_blob_store(url)`` builds (does not yet connect) the store a URL names; use it as
``async with open_blob_store(url) as blobs: ...``. ``ResultStore`` keeps processors' results,
with expiry and a size bound, in any blob store. See ``docs/storage.md``.
"""

from __future__ import annotations

from typing import Any

from ..backends import backend_class
from ..errors import StorageError
from ..secret import resolve
from .base import BadKey, BlobCorrupt, BlobMissing, BlobStore, check_key
from .results import ResultStore, ResultTimeout, ResultTooLarge

__all__ = [
    "BadKey",
    "BlobCorrupt",
    "BlobMissing",
    "BlobStore",
    "ResultStore",
    "ResultTimeout",
    "ResultTooLarge",
    "StorageError",
    "UnknownStore",
    "blob_store_class",
    "check_key",
    "open_blob_store",
]

#: scheme -> "module:Class" (imported lazily so that optional drivers stay optional)
BACKENDS: dict[str, str] = {
    "file": "elasticcode.storage.file:FileStore",
    "s3": "elasticcode.storage.s3:S3Store",
    "redis": "elasticcode.storage.redis:RedisStore",
    "rediss": "elasticcode.storage.redis:RedisStore",
    "sqlite": "elasticcode.storage.sql:SQLStore",
    "postgresql": "elasticcode.storage.sql:SQLStore",
    "postgres": "elasticcode.storage.sql:SQLStore",
}


class UnknownStore(StorageError):
    """A blob store URL names a scheme that no backend serves."""


def blob_store_class(url: str) -> type[BlobStore]:
    found: type[BlobStore] = backend_class(url, BACKENDS, BlobStore, "blob store", UnknownStore)
    return found


def open_blob_store(url: str, **options: Any) -> BlobStore:
    """Build (not yet connect) the blob store a URL names, with ``${secret:NAME}``
    references put in (from the environment; see ``elasticcode.secret``)."""
    resolved = resolve(url, where="the blob store")
    return blob_store_class(resolved)(resolved, **options)
