"""Blobs in a SQL database (PostgreSQL or SQLite), through SQLAlchemy, in tables of their own.

Features
    Two tables: ``TABLE`` (one row per blob: its current version, chunk count, size and time
    of write) and ``TABLE_chunks`` (the bytes, one row per ``chunk_size`` chunk of a
    version), so that no statement carries more than one chunk however large the blob. A
    write inserts its chunks under a new version, then one short transaction points the blob
    at it and deletes the old version's chunks: a reader sees the old blob or the new one,
    and one overwritten while it reads ends with ``BlobMissing``. Writers of one key are
    serialized (a PostgreSQL advisory lock; SQLite's write lock). The tables are created on
    ``connect`` if missing. SQLAlchemy's engine is synchronous: each statement runs in a
    thread, so the event loop never waits on the database.

URL
    ``postgresql://[user[:password]@]host[:port]/database`` (psycopg 3; its query options
    such as ``sslmode=verify-full`` pass through), or ``sqlite:///relative/path.db`` /
    ``sqlite:////absolute/path.db``. The password never appears in errors or logs.

Options (URL query)
    ``table=NAME`` -- the blob table's name (default ``ec_blobs``); the chunks go to
    ``NAME_chunks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import sqlalchemy as sa

from ..errors import StorageError
from .base import BlobStore
from .url import StoreURL


class SQLStore(BlobStore):
    schemes = ("postgresql", "postgres", "sqlite")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        options = StoreURL("sql", url)
        table = options.text("table", "ec_blobs") or "ec_blobs"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,40}", table):
            raise StorageError("sql blob store: table must be a name of letters, digits and _")
        try:  # SQLAlchemy's own reading: it keeps sqlite:////absolute paths as they are
            engine_url = sa.engine.make_url(url).difference_update_query(["table"])
        except sa.exc.ArgumentError:
            raise StorageError(f"sql blob store: cannot read the URL {self.name!r}") from None
        self.sqlite = engine_url.get_backend_name() == "sqlite"
        if not self.sqlite:
            engine_url = engine_url.set(drivername="postgresql+psycopg")
        self._engine_url = engine_url
        self.meta = sa.MetaData()
        self.blobs = sa.Table(
            table,
            self.meta,
            sa.Column("key", sa.String(1024), primary_key=True),
            sa.Column("version", sa.String(32), nullable=False),
            sa.Column("chunks", sa.Integer, nullable=False),
            sa.Column("size", sa.BigInteger, nullable=False),
            sa.Column("written", sa.Float, nullable=False, index=True),
        )
        self.chunks = sa.Table(
            f"{table}_chunks",
            self.meta,
            sa.Column("version", sa.String(32), primary_key=True),
            sa.Column("seq", sa.Integer, primary_key=True),
            sa.Column("data", sa.LargeBinary, nullable=False),
        )
        self._engine: sa.Engine | None = None

    async def connect(self) -> None:
        if self._engine is None:
            self._engine = await self._run("connecting", self._open)

    def _open(self) -> sa.Engine:
        engine = sa.create_engine(self._engine_url, pool_pre_ping=True)
        if self.sqlite:
            _immediate(engine)
        try:
            with contextlib.suppress(sa.exc.IntegrityError, sa.exc.ProgrammingError):
                self.meta.create_all(engine)  # another process may create them at once
            self.meta.create_all(engine)
        except Exception:
            engine.dispose()
            raise
        return engine

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.dispose)

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            raise StorageError(f"{self.name} is not connected; call connect() first")
        return self._engine

    async def _run(self, doing: str, call: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(call, *args)
        except sa.exc.SQLAlchemyError as exc:
            raise self.error(doing, getattr(exc, "orig", None) or exc) from None

    # -- the primitives ---------------------------------------------------------------------
    async def _write(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        version = uuid.uuid4().hex
        count = size = 0
        try:
            async for chunk in chunks:
                await self._run(f"writing {key!r}", self._insert, version, count, chunk)
                count, size = count + 1, size + len(chunk)
            await self._run(f"writing {key!r}", self._swap, key, version, count, size)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._drop, version)
            raise

    def _insert(self, version: str, seq: int, data: bytes) -> None:
        with self.engine.begin() as db:
            db.execute(self.chunks.insert().values(version=version, seq=seq, data=data))

    def _swap(self, key: str, version: str, count: int, size: int) -> None:
        row = {"version": version, "chunks": count, "size": size, "written": time.time()}
        with self._locked(key) as db:
            old = db.scalar(sa.select(self.blobs.c.version).where(self.blobs.c.key == key))
            if old is None:
                db.execute(self.blobs.insert().values(key=key, **row))
            else:
                db.execute(self.blobs.update().where(self.blobs.c.key == key).values(**row))
                db.execute(self.chunks.delete().where(self.chunks.c.version == old))

    def _drop(self, version: str) -> None:
        with self.engine.begin() as db:
            db.execute(self.chunks.delete().where(self.chunks.c.version == version))

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[sa.Connection]:
        """A transaction that holds the key's write lock (SQLite: the database's)."""
        with self.engine.connect() as db:
            db.execution_options(ec_immediate=True)
            with db.begin():
                if not self.sqlite:
                    lock = sa.text("SELECT pg_advisory_xact_lock(:a, :b)")
                    db.execute(lock, {"a": 0x6563, "b": zlib.crc32(key.encode()) - 2**31})
                yield db

    async def _read(self, key: str) -> AsyncIterator[bytes]:
        found = await self._run(f"reading {key!r}", self._head, key)
        if found is None:
            raise self.missing(key)
        version, count = found
        for seq in range(count):
            chunk = await self._run(f"reading {key!r}", self._chunk, version, seq)
            if chunk is None:
                raise self.missing(key, " (it was replaced or deleted while it was read)")
            yield chunk

    def _head(self, key: str) -> tuple[str, int] | None:
        with self.engine.connect() as db:
            b = self.blobs.c
            row = db.execute(sa.select(b.version, b.chunks).where(b.key == key)).first()
        return None if row is None else (row[0], row[1])

    def _chunk(self, version: str, seq: int) -> bytes | None:
        with self.engine.connect() as db:
            c = self.chunks.c
            data = db.scalar(sa.select(c.data).where(c.version == version, c.seq == seq))
        return None if data is None else bytes(data)

    async def _stat(self, key: str) -> float | None:
        def stat() -> float | None:
            with self.engine.connect() as db:
                b = self.blobs.c
                return db.scalar(sa.select(b.written).where(b.key == key))

        return await self._run(f"looking up {key!r}", stat)  # type: ignore[no-any-return]

    async def _delete(self, key: str) -> None:
        def delete() -> None:
            with self._locked(key) as db:
                b = self.blobs.c
                old = db.scalar(sa.delete(self.blobs).where(b.key == key).returning(b.version))
                if old is not None:
                    db.execute(self.chunks.delete().where(self.chunks.c.version == old))

        await self._run(f"deleting {key!r}", delete)

    async def _list(self, prefix: str) -> AsyncIterator[tuple[str, float]]:
        def listed() -> list[tuple[str, float]]:
            b = self.blobs.c
            query = sa.select(b.key, b.written).where(b.key.startswith(prefix, autoescape=True))
            with self.engine.connect() as db:
                return [(k, float(w)) for k, w in db.execute(query)]

        for item in await self._run(f"listing {prefix!r}", listed):
            yield item


def _immediate(engine: sa.Engine) -> None:
    """Make SQLite transactions that read, then write (``ec_immediate``) take the write lock
    at BEGIN: a deferred one can fail with "database is locked" instead of waiting its turn."""

    @sa.event.listens_for(engine, "connect")
    def connected(dbapi: Any, _record: Any) -> None:
        dbapi.isolation_level = None  # SQLAlchemy, not the driver, says when to begin
        dbapi.execute("PRAGMA journal_mode=WAL")
        dbapi.execute("PRAGMA busy_timeout=30000")

    @sa.event.listens_for(engine, "begin")
    def begin(db: sa.Connection) -> None:
        immediate = db.get_execution_options().get("ec_immediate")
        db.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
