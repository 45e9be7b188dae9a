"""Blobs as objects in an S3 bucket, through aiobotocore: AWS or any S3-compatible server.

Features
    One object per blob, ``PREFIX/KEY``. A blob up to ``part_size`` goes up in one
    PutObject; a larger one (or a stream) as a multipart upload of ``part_size`` parts, so
    that memory stays bounded at one part however large the blob; an upload that fails is
    aborted, and S3 shows the object only once it is complete (an overwrite is atomic).
    Reads stream the object in ``chunk_size`` pieces. ``keys`` lists with ListObjectsV2 and
    takes the last write from each object's LastModified (the server's clock). TLS is
    verified by default. Throttling and lost connections are retried by botocore's standard
    retry mode.

URL
    ``s3://BUCKET[/PREFIX]`` with credentials from the usual AWS settings (the ``AWS_*``
    environment variables, ``~/.aws``, an instance role), or
    ``s3://ACCESS_KEY:SECRET_KEY@BUCKET[/PREFIX]`` (better: ``${secret:NAME}`` for the secret
    key). The secret never appears in errors or logs. The bucket must exist.

Options (URL query)
    ``endpoint=URL`` -- an S3-compatible server, e.g. ``https://s3.example.com:9000``
    (default: AWS). ``region=NAME`` (default: the AWS settings, else ``us-east-1``).
    ``tls_ca=PATH`` -- CA bundle to verify the endpoint with. ``addressing=path|virtual`` --
    bucket in the path or in the host name (default: virtual on AWS, path elsewhere).
    ``part_size=BYTES`` -- multipart part size, 5 MiB to 5 GiB (default 8 MiB).
    ``attempts=N`` -- tries per request (default 5).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import StorageError
from .base import BlobStore, require
from .url import StoreURL

OPTIONS = ("endpoint", "region", "tls_ca", "addressing", "part_size", "attempts")
MIN_PART = 5 * 1024 * 1024  # S3's smallest part (but the last)
MAX_PART = 5 * 1024**3
MISSING = {"NoSuchKey", "404", "NotFound"}
REFUSED = {"403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "Forbidden"}


class S3Store(BlobStore):
    schemes = ("s3",)

    def __init__(self, url: str) -> None:
        super().__init__(url)
        options = StoreURL("s3", url, known=OPTIONS)
        parts = options.parts
        self.bucket = parts.hostname or ""
        if not self.bucket:
            raise StorageError("s3 blob store: name the bucket, as in s3://my-bucket/blobs")
        self.prefix = unquote(parts.path).strip("/")
        self.prefix += "/" if self.prefix else ""
        self.endpoint = options.text("endpoint")
        if self.endpoint and urlsplit(self.endpoint).scheme not in ("http", "https"):
            raise StorageError(
                f"s3 blob store: endpoint must be an http(s):// URL, not {self.endpoint!r}"
            )
        self.region = options.text("region")
        self.tls_ca = options.text("tls_ca")
        self.addressing = options.choice(
            "addressing", "path" if self.endpoint else "virtual", ("path", "virtual")
        )
        self.part_size = options.integer("part_size", 8 * 1024 * 1024, MIN_PART, MAX_PART)
        self.attempts = options.integer("attempts", 5, 1, 20)
        self._key = unquote(parts.username or "") or None
        self._secret = unquote(parts.password or "")
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._errors: Any = None

    async def connect(self) -> None:
        if self._client is not None:
            return
        session_mod = require("aiobotocore.session", "s3")
        config_mod = require("aiobotocore.config", "s3")
        self._errors = require("botocore.exceptions", "s3")
        session = session_mod.get_session()
        config = config_mod.AioConfig(
            retries={"max_attempts": self.attempts, "mode": "standard"},
            s3={"addressing_style": self.addressing},
            connect_timeout=10,
            read_timeout=60,
        )
        options: dict[str, Any] = {
            "region_name": self.region or session.get_config_variable("region") or "us-east-1",
            "config": config,
            "verify": self.tls_ca or True,
        }
        if self.endpoint:
            options["endpoint_url"] = self.endpoint
        if self._key:
            options["aws_access_key_id"] = self._key
            options["aws_secret_access_key"] = self._secret
        stack = contextlib.AsyncExitStack()
        try:
            client = await stack.enter_async_context(session.create_client("s3", **options))
            await client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            await stack.aclose()
            raise self._error("connecting", exc) from None
        self._client, self._stack = client, stack

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StorageError(f"{self.name} is not connected; call connect() first")
        return self._client

    def _error(self, doing: str, exc: BaseException) -> StorageError:
        if self._errors is not None and isinstance(exc, self._errors.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code"))
            hint = ""
            if code in REFUSED:
                hint = "; the credentials were refused, or may not use this bucket"
            elif code in ("NoSuchBucket", "404") and doing == "connecting":
                hint = f"; does the bucket {self.bucket!r} exist?"
            exc = RuntimeError(f"{code}: {error.get('Message') or exc}{hint}")
        return self.error(doing, exc)

    def _missing(self, exc: BaseException) -> bool:
        if self._errors is None or not isinstance(exc, self._errors.ClientError):
            return False
        return str(exc.response.get("Error", {}).get("Code")) in MISSING

    # -- the primitives ---------------------------------------------------------------------
    async def _write(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        name = self.prefix + key
        buffer = bytearray()
        upload: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                buffer += chunk
                while len(buffer) >= self.part_size:
                    if upload is None:
                        started = await self.client.create_multipart_upload(
                            Bucket=self.bucket, Key=name
                        )
                        upload = started["UploadId"]
                    with memoryview(buffer) as view:  # one copy of the part, not two
                        part = bytes(view[: self.part_size])
                    await self._part(name, upload, parts, part)
                    del buffer[: self.part_size]
            if upload is None:
                await self.client.put_object(Bucket=self.bucket, Key=name, Body=bytes(buffer))
                return
            if buffer or not parts:
                await self._part(name, upload, parts, bytes(buffer))
            await self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except BaseException as exc:
            if upload is not None:  # else its parts would be kept (and billed) for ever
                with contextlib.suppress(Exception):
                    await self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=name, UploadId=upload
                    )
            if isinstance(exc, Exception) and not isinstance(exc, StorageError):
                raise self._error(f"writing {key!r}", exc) from None
            raise

    async def _part(self, name: str, upload: str, parts: list[dict[str, Any]], data: bytes) -> None:
        number = len(parts) + 1
        done = await self.client.upload_part(
            Bucket=self.bucket, Key=name, UploadId=upload, PartNumber=number, Body=data
        )
        parts.append({"ETag": done["ETag"], "PartNumber": number})

    async def _read(self, key: str) -> AsyncIterator[bytes]:
        try:
            response = await self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as exc:
            if self._missing(exc):
                raise self.missing(key) from None
            raise self._error(f"reading {key!r}", exc) from None
        async with response["Body"] as body:
            while True:
                try:
                    chunk = await body.read(self.chunk_size)
                except Exception as exc:
                    raise self._error(f"reading {key!r}", exc) from None
                if not chunk:
                    return
                yield chunk

    async def _stat(self, key: str) -> float | None:
        try:
            head = await self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as exc:
            if self._missing(exc):
                return None
            raise self._error(f"looking up {key!r}", exc) from None
        return float(head["LastModified"].timestamp())

    async def _delete(self, key: str) -> None:
        try:
            await self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as exc:
            if not self._missing(exc):
                raise self._error(f"deleting {key!r}", exc) from None

    async def _list(self, prefix: str) -> AsyncIterator[tuple[str, float]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        try:
            async for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    yield key, float(item["LastModified"].timestamp())
        except Exception as exc:
            raise self._error(f"listing {prefix!r}", exc) from None
