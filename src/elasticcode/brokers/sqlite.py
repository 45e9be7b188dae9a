"""Embedded durable queues in one SQLite file (WAL mode).

Features
    Durable queues shared by any number of processes on one host; leases instead of open
    connections, so a consumer that dies without settling only delays its messages; an
    atomic ``settle`` (outputs published and inputs acknowledged in one transaction); delayed
    retries; a dead-letter table with replay; O(1) queue depth kept by triggers.

Connection string
    ``sqlite:///relative/path/queues.db`` or ``sqlite:////absolute/path/queues.db``
    (SQLAlchemy's form).

Options (URL query; durations in seconds, or written as 30s, 500ms, 2m)
    ``synchronous=normal|full`` -- ``normal`` (default) survives any process crash; ``full``
    also survives power loss, at a cost in throughput.
    ``lease=SECONDS`` -- how long a fetched message stays invisible to other consumers before
    it is handed out again (default 300). A consumer known to be dead is released at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import BrokerError, DiskFull
from .base import Broker, DeadLetter, Delivery, QueueStats, Settlement, rotate
from .url import BrokerURL

SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    messages INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    qid INTEGER NOT NULL REFERENCES queues(id),
    body BLOB NOT NULL,
    size INTEGER NOT NULL,
    visible_at REAL NOT NULL DEFAULT 0,
    owner TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX IF NOT EXISTS ix_messages_qid_seq ON messages(qid, seq);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    qid INTEGER NOT NULL REFERENCES queues(id),
    body BLOB NOT NULL,
    error TEXT NOT NULL,
    deliveries INTEGER NOT NULL,
    failed_at REAL NOT NULL
);
"""

OPTIONS = ("synchronous", "lease")
#: Idle polling backs off from the first to the last step, in seconds...
POLL_STEPS = (0.0005, 0.001, 0.002, 0.005)
#: ...once this long has passed since a fetch last got messages: while they flow, gaps
#: between them are short, and a message that lands in one waits the first step at most.
POLL_FLOWING = 0.05
#: A connection checkpoints the WAL (outside the write lock) after this many commits.
CHECKPOINT_EVERY = 64


class SQLiteBroker(Broker):
    schemes = ("sqlite",)
    lease: float = 300.0

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        options = BrokerURL("sqlite", url, known=OPTIONS)
        path = options.parts.path
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise BrokerError(
                "sqlite broker URL has no file path; use sqlite:///relative.db or "
                "sqlite:////absolute/path.db"
            )
        self.path = Path(path)
        self.synchronous = options.choice("synchronous", "normal", ("normal", "full")).upper()
        self.lease = options.seconds("lease", 300)
        self._db: sqlite3.Connection | None = None
        self._lock = -1
        self._commits = 0
        self._qids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._rotation = itertools.count()
        self._got_at = 0.0  # when a fetch last got messages (monotonic)

    # -- connection -------------------------------------------------------------------------
    async def connect(self) -> None:
        self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(
                    self.path, isolation_level=None, timeout=60, check_same_thread=False
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={self.synchronous}")
                db.execute("PRAGMA busy_timeout=60000")
                db.execute("PRAGMA wal_autocheckpoint=0")  # see _Transaction.__exit__
                db.execute("PRAGMA journal_size_limit=67108864")
                db.executescript(SCHEMA)
                # Writers queue on a file lock: the kernel wakes the next one the moment the
                # lock is free, where SQLite's own busy handler would sleep and poll.
                self._lock = os.open(f"{self.path}-lock", os.O_RDWR | os.O_CREAT, 0o644)
            except (sqlite3.Error, OSError) as exc:
                raise BrokerError(f"cannot open the queue database {self.path}: {exc}") from None
            self._db = db
        return self._db

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
            os.close(self._lock)
            self._lock = -1

    def _write(self) -> _Transaction:
        """``with self._write() as db:`` runs the block in one write transaction."""
        return _Transaction(self)

    @property
    def db(self) -> sqlite3.Connection:
        return self._connect()

    def _qid(self, queue: str) -> int:
        qid = self._qids.get(queue)
        if qid is None:
            row = self.db.execute("SELECT id FROM queues WHERE name = ?", (queue,)).fetchone()
            if row is None:
                raise BrokerError(f"queue {queue!r} does not exist; declare it first")
            qid = self._qids[queue] = row[0]
            self._names[qid] = queue
        return qid

    def _name(self, qid: int) -> str:
        name = self._names.get(qid)
        if name is None:
            self._names[qid] = name = self.db.execute(
                "SELECT name FROM queues WHERE id = ?", (qid,)
            ).fetchone()[0]
        return name

    # -- contract ---------------------------------------------------------------------------
    async def declare(self, queues: Sequence[str]) -> None:
        with self._write() as db:
            db.executemany("INSERT OR IGNORE INTO queues(name) VALUES (?)", [(q,) for q in queues])

    async def publish(self, items: Sequence[tuple[str, bytes]]) -> None:
        with self._write():
            self._insert(items)

    def _insert(self, items: Sequence[tuple[str, bytes]]) -> None:
        for _, body in items:
            if len(body) > self.max_message_bytes:
                raise BrokerError(
                    f"message of {len(body):,} bytes exceeds the broker limit of "
                    f"{self.max_message_bytes:,} bytes"
                )
        rows = [(self._qid(q), body, len(body)) for q, body in items]
        self.db.executemany("INSERT INTO messages(qid, body, size) VALUES (?, ?, ?)", rows)
        self._count(rows, +1)

    def _count(self, rows: Sequence[tuple[int, bytes, int]], sign: int) -> None:
        """Move the per-queue counters by the (qid, body, size) rows added or removed."""
        totals: dict[int, list[int]] = {}
        for qid, _, size in rows:
            total = totals.get(qid)
            if total is None:
                totals[qid] = [1, size]
            else:
                total[0] += 1
                total[1] += size
        self.db.executemany(
            "UPDATE queues SET messages = messages + ?, bytes = bytes + ? WHERE id = ?",
            [(sign * n, sign * size, qid) for qid, (n, size) in totals.items()],
        )

    def _recount(self, qids: Sequence[int]) -> None:
        self.db.executemany(
            "UPDATE queues SET (messages, bytes) = (SELECT count(*), coalesce(sum(size), 0) "
            "FROM messages WHERE qid = queues.id) WHERE id = ?",
            [(qid,) for qid in qids],
        )

    async def fetch(
        self, queues: Sequence[str], limit: int, consumer: str, timeout: float
    ) -> list[Delivery]:
        qids = [self._qid(q) for q in queues]
        qids = rotate(qids, self._rotation)
        deadline = time.monotonic() + timeout
        steps = iter(POLL_STEPS)
        step = POLL_STEPS[0]
        while True:
            got = self._claim(qids, limit, consumer)
            now = time.monotonic()
            if got:
                self._got_at = now
                return got
            if now >= deadline:
                return []
            if now - self._got_at >= POLL_FLOWING:
                step = next(steps, step)
            await asyncio.sleep(min(step, max(0.0, deadline - now)))

    def _claim(self, qids: list[int], limit: int, consumer: str) -> list[Delivery]:
        db = self.db
        now = time.time()
        ready = [
            qid
            for qid in qids
            if db.execute(
                "SELECT 1 FROM messages WHERE qid = ? AND visible_at <= ? LIMIT 1", (qid, now)
            ).fetchone()
        ]
        if not ready:
            return []
        out: list[Delivery] = []
        with self._write():
            for qid in ready:
                rows = db.execute(
                    "UPDATE messages SET owner = ?, visible_at = ?, deliveries = deliveries + 1 "
                    "WHERE seq IN (SELECT seq FROM messages WHERE qid = ? AND visible_at <= ? "
                    "ORDER BY seq LIMIT ?) RETURNING seq, body, deliveries",
                    (consumer, now + self.lease, qid, now, limit - len(out)),
                ).fetchall()
                name = self._name(qid)
                rows.sort()
                out.extend(Delivery(name, body, (seq, consumer), n) for seq, body, n in rows)
                if len(out) >= limit:
                    break
        return out

    def _ack(self, deliveries: Sequence[Delivery]) -> None:
        removed = self.db.executemany(
            "DELETE FROM messages WHERE seq = ? AND owner = ?", [d.tag for d in deliveries]
        ).rowcount
        rows = [(self._qid(d.queue), d.body, len(d.body)) for d in deliveries]
        if removed == len(deliveries):
            self._count(rows, -1)
        else:  # some leases had expired and were taken over: count those queues afresh
            self._recount(list({qid for qid, _, _ in rows}))

    def _retry(self, items: Sequence[tuple[Delivery, float, str]]) -> None:
        now = time.time()
        self.db.executemany(
            "UPDATE messages SET owner = NULL, visible_at = ?, error = ? WHERE seq = ? AND owner = ?",
            [(now + delay, error, *d.tag) for d, delay, error in items],
        )

    def _dead(self, items: Sequence[tuple[Delivery, str]]) -> None:
        now = time.time()
        for d, error in items:
            seq, owner = d.tag
            self.db.execute(
                "INSERT INTO dead_letters(qid, body, error, deliveries, failed_at) "
                "SELECT qid, body, ?, deliveries, ? FROM messages WHERE seq = ? AND owner = ?",
                (error, now, seq, owner),
            )
        self._ack([d for d, _ in items])

    async def settle(self, settlement: Settlement) -> None:
        with self._write():
            if settlement.publish:
                self._insert(settlement.publish)
            if settlement.dead:
                self._dead(settlement.dead)
            if settlement.retry:
                self._retry(settlement.retry)
            if settlement.ack:
                self._ack(settlement.ack)

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        db = self.db
        held = dict(
            db.execute(
                "SELECT qid, count(*) FROM messages "
                "WHERE owner IS NOT NULL AND visible_at > ? GROUP BY qid",
                (time.time(),),
            ).fetchall()
        )
        out = {}
        for q in queues:
            qid = self._qid(q)
            messages, size = db.execute(
                "SELECT messages, bytes FROM queues WHERE id = ?", (qid,)
            ).fetchone()
            out[q] = QueueStats(messages, size, held.get(qid, 0))
        return out

    async def depth(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        db = self.db
        return {
            q: db.execute(
                "SELECT messages, bytes FROM queues WHERE id = ?", (self._qid(q),)
            ).fetchone()
            for q in queues
        }

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        until = time.time() + self.lease
        with self._write() as db:
            db.executemany(
                "UPDATE messages SET visible_at = ? WHERE seq = ? AND owner = ?",
                [(until, *d.tag) for d in deliveries],
            )

    async def release(self, consumer: str) -> int:
        with self._write() as db:
            return db.execute(
                "UPDATE messages SET owner = NULL, visible_at = 0 WHERE owner = ?", (consumer,)
            ).rowcount

    async def release_all(self) -> int:
        """Release every lease: for a host's only agent after a restart."""
        with self._write() as db:
            return db.execute(
                "UPDATE messages SET owner = NULL, visible_at = 0 WHERE owner IS NOT NULL"
            ).rowcount

    async def delete(self, queues: Sequence[str]) -> None:
        with self._write() as db:
            for q in queues:
                row = db.execute("SELECT id FROM queues WHERE name = ?", (q,)).fetchone()
                if row is None:
                    continue
                db.execute("DELETE FROM messages WHERE qid = ?", row)
                db.execute("DELETE FROM dead_letters WHERE qid = ?", row)
                db.execute("DELETE FROM queues WHERE id = ?", row)
                self._qids.pop(q, None)
                self._names.pop(row[0], None)

    async def purge(self, queue: str) -> int:
        with self._write() as db:
            qid = self._qid(queue)
            n = db.execute("DELETE FROM messages WHERE qid = ?", (qid,)).rowcount
            self._recount([qid])
            return int(n)

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        rows = self.db.execute(
            "SELECT body FROM messages WHERE qid = ? ORDER BY seq LIMIT ?",
            (self._qid(queue), limit),
        ).fetchall()
        return [r[0] for r in rows]

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        sql = "SELECT id, qid, body, error, deliveries, failed_at FROM dead_letters"
        args: tuple[Any, ...] = ()
        if queue is not None:
            sql += " WHERE qid = ?"
            args = (self._qid(queue),)
        rows = self.db.execute(sql + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [DeadLetter(i, self._name(q), b, e, n, t) for i, q, b, e, n, t in rows]

    async def dead_letter_count(self, queues: Sequence[str]) -> int:
        qids = [self._qid(q) for q in queues]
        (n,) = self.db.execute(
            f"SELECT count(*) FROM dead_letters WHERE qid IN ({','.join('?' * len(qids))})", qids
        ).fetchone()
        return int(n)

    async def replay(self, ids: Sequence[Any] | None = None, queue: str | None = None) -> int:
        where, args = "1", []
        if ids is not None:
            where = f"id IN ({','.join('?' * len(ids))})"
            args = [int(i) for i in ids]
        if queue is not None:
            where += " AND qid = ?"
            args.append(self._qid(queue))
        with self._write() as db:
            rows = db.execute(
                f"DELETE FROM dead_letters WHERE {where} RETURNING qid, body", args
            ).fetchall()
            added = [(qid, body, len(body)) for qid, body in rows]
            db.executemany("INSERT INTO messages(qid, body, size) VALUES (?, ?, ?)", added)
            self._count(added, +1)
        return len(rows)


class _Transaction:
    """One write transaction under the broker's file lock; checkpoints after the lock is free."""

    __slots__ = ("broker", "db")

    def __init__(self, broker: SQLiteBroker) -> None:
        self.broker = broker
        self.db = broker.db

    def __enter__(self) -> sqlite3.Connection:
        fcntl.flock(self.broker._lock, fcntl.LOCK_EX)
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            fcntl.flock(self.broker._lock, fcntl.LOCK_UN)
            _raise_if_full(exc, self.broker.path)
            raise BrokerError(f"queue database is not writable ({exc})") from exc
        return self.db

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is None:
                try:
                    self.db.execute("COMMIT")
                    return
                except sqlite3.Error as err:
                    exc = err
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                _raise_if_full(exc, self.broker.path)
                raise BrokerError(
                    f"queue database write failed ({exc}); nothing was changed"
                ) from exc
        finally:
            fcntl.flock(self.broker._lock, fcntl.LOCK_UN)
            broker = self.broker
            broker._commits += 1
            if broker._commits % CHECKPOINT_EVERY == 0:
                # Copy the WAL into the database without holding up writers (PASSIVE).
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _raise_if_full(exc: sqlite3.Error, path: object) -> None:
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        raise DiskFull(
            f"the disk holding the queue database {path} is full; nothing was changed. Free "
            "some space there, then run the flow again: it resumes where it stopped"
        ) from exc
