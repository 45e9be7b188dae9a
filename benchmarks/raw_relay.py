"""The raw client ceiling: a 3-hop relay written directly against each broker's client library.

``publisher -> q1 -> relay -> q2 -> relay -> q3 -> consumer``, each role in its own process
(so the relay uses every core, as the engine's workers do). Messages are the same ~200-byte
JSON documents as ``bench_steps.source``, stamped with ``t0`` at creation; each relay adds a
field; the consumer records (t0, arrival). Throughput is N / (last arrival - first t0);
latency is arrival - t0 per message. Consumers and relays are connected and consuming before
the publisher starts, so connection set-up is not measured.

Every broker keeps the engine's guarantees: an input is acknowledged only after its output is
held by the broker, and nothing is lost if a process dies.

* ``sqlite`` -- stdlib sqlite3, one file in WAL mode with ``synchronous=NORMAL`` (the engine's
  default); a relay moves a batch (select, insert outputs, delete inputs) in one transaction,
  writers queued on a file lock.
* ``redis`` -- redis-py (+hiredis), Redis Streams and consumer groups: XREADGROUP a batch, then
  one pipeline of XADDs followed by the XACK. As durable as the server's persistence settings.
* ``rabbitmq`` -- pika's SelectConnection (callbacks, no thread): durable classic queues,
  persistent messages, publisher confirms pipelined (many in flight); an input is acked (with
  ``multiple``) once the confirms of its output and all earlier outputs are in.
  ``--amqp-client aio-pika`` uses aio-pika instead (each message a task awaiting its confirm).
* ``nats`` -- nats-py, JetStream file streams (work-queue retention) with a durable pull
  consumer each: a relay fetches a batch (pull requests answered on a callback inbox, see
  ``Puller``; ``--nats-fetch nats-py`` uses ``PullSubscription.fetch``), publishes its outputs
  with ``publish_async`` (all PubAcks in flight), waits for them, then acks the inputs.

    python benchmarks/raw_relay.py --broker redis rabbitmq nats     # 10000 messages, 3 rounds
    python benchmarks/raw_relay.py --broker redis --rate 15000      # paced, for latency

Queues are named ``ec-raw-<random>-qN`` and deleted after each run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import multiprocessing as mp
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: Broker names -> the loopback URLs of the shared test servers (sqlite: a temporary file).
BROKERS: dict[str, str] = {
    "sqlite": "sqlite://",
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "nats": "nats://127.0.0.1:4222",
}
KINDS = {"sqlite": "sqlite", "redis": "redis", "amqp": "rabbitmq", "nats": "nats"}
#: Publishes (or confirms) a publisher keeps in flight.
WINDOW = 2000
GROUP = "relay"
FILLER = "x" * 96


def resolve(name_or_url: str) -> tuple[str, str, str]:
    """(label, kind, URL) for a broker name (sqlite, redis, rabbitmq, nats) or URL."""
    if name_or_url in BROKERS:
        return name_or_url, name_or_url, BROKERS[name_or_url]
    parts = urlsplit(name_or_url)
    kind = KINDS.get(parts.scheme.lower())
    if kind is None:
        names = ", ".join(BROKERS)
        raise ValueError(
            f"{name_or_url!r}: give a broker name ({names}) or a sqlite://, redis://, "
            "amqp:// or nats:// URL"
        )
    if kind == "sqlite":
        return f"sqlite:{Path(parts.path).name}", kind, name_or_url
    label = f"{kind}@{parts.hostname or 'localhost'}" + (f":{parts.port}" if parts.port else "")
    return label, kind, name_or_url


# -- measuring ------------------------------------------------------------------------------
@dataclass
class Result:
    messages: int
    received: int
    status: str
    #: received / (last arrival - first t0)
    rate: float
    #: (received - 1) / (last arrival - first arrival): the consumer's steady-state rate
    sink_rate: float
    p50_ms: float
    p99_ms: float
    #: from starting the processes to their exit
    wall: float
    #: CPU seconds per process role ("server": the broker's; "machine": all cores, everything
    #: included), from the first message's creation to the last arrival
    cpu: dict[str, float] = field(default_factory=dict)
    #: median latency of each hop, ms: creation -> s1, s1 -> s2, s2 -> arrival
    hops: tuple[float, float, float] = (float("nan"),) * 3
    #: peak resident memory (MB) of the largest process of each role
    rss: dict[str, float] = field(default_factory=dict)
    #: p99 latency of each hop in the steady state, ms (see ``steady_hops``)
    hops99: tuple[float, float, float] = (float("nan"),) * 3

    @classmethod
    def measured(
        cls, messages: int, status: str, times: array[float], wall: float, sampler: CpuSampler
    ) -> Result:
        """A run's result from its (t0, s1, s2, arrival) times and its processes' samples."""
        t0s, s1s, s2s, arrivals = times[0::4], times[1::4], times[2::4], times[3::4]
        rate_seen, sink_rate, p50, p99 = summarize(t0s, arrivals)
        return cls(
            messages,
            len(arrivals),
            status,
            rate_seen,
            sink_rate,
            p50,
            p99,
            wall,
            sampler.between(min(t0s), max(arrivals)) if len(arrivals) else {},
            hops(t0s, s1s, s2s, arrivals),
            sampler.peak_rss(),
            steady_hops(t0s, s1s, s2s, arrivals),
        )


#: Server process names, to read their CPU time from /proc (when it can be read).
SERVERS = {"redis": "redis-server", "rabbitmq": "beam.smp", "nats": "nats-server"}
DEFAULT_PORTS = {"redis": 6379, "rabbitmq": 5672, "nats": 4222}


def server_pids(kind: str, url: str) -> list[int]:
    """The broker server's processes on this host, found by name (and port if several)."""
    name = SERVERS.get(kind)
    if name is None:
        return []
    found: list[tuple[int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            if comm == name:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                found.append((int(entry), cmdline.decode(errors="replace")))
        except OSError:
            continue
    if len(found) > 1:  # e.g. another engineer's server on another port
        port = str(urlsplit(url).port or DEFAULT_PORTS[kind])
        found = [(pid, cmd) for pid, cmd in found if port in cmd.replace(":", " ").split()]
    return [pid for pid, _ in found]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (OSError once it is gone)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


TICKS = os.sysconf("SC_CLK_TCK")


def process_peak_rss(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM), MB (OSError once it is gone)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine_cpu() -> float:
    """CPU seconds every core of this machine has been busy (from /proc/stat; 0 if absent)."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(
                int, f.readline().split()[1:9]
            )
    except (OSError, ValueError):
        return 0.0
    return (user + nice + system + irq + softirq + steal) / TICKS


class CpuSampler:
    """Samples the CPU time of named groups of processes in a thread, every ``every`` s.

    ``between(t0, t1)`` then gives each group's CPU seconds over a window of wall-clock time
    (to a sample interval and a clock tick, 10 ms, per process).
    """

    def __init__(self, every: float = 0.02) -> None:
        self.every = every
        self.groups: dict[str, list[int]] = {}
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._last: dict[int, float] = {}
        self._rss: dict[int, float] = {}  # pid -> peak RSS, MB
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, group: str, pids: Sequence[int]) -> None:
        if not pids:
            return
        with self._lock:
            self.groups.setdefault(group, []).extend(pids)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            groups = {g: list(pids) for g, pids in self.groups.items()}
        now = time.time()
        totals = {"machine": machine_cpu()}
        for group, pids in groups.items():
            total = 0.0
            for pid in pids:
                # once a process has exited (or if it cannot be read), keep its last reading
                with contextlib.suppress(OSError, IndexError, ValueError):
                    self._last[pid] = process_cpu(pid)
                    # a process that has exited reads as 0: keep its last reading
                    self._rss[pid] = max(self._rss.get(pid, 0.0), process_peak_rss(pid))
                total += self._last.get(pid, 0.0)
            totals[group] = total
        self.samples.append((now, totals))

    def peak_rss(self) -> dict[str, float]:
        """Peak resident memory (MB) of the largest process of each group (the server's not)."""
        with self._lock:
            groups = {g: list(pids) for g, pids in self.groups.items() if g != "server"}
        return {
            g: max((self._rss.get(p, 0.0) for p in pids), default=0.0) for g, pids in groups.items()
        }

    def between(self, t0: float, t1: float) -> dict[str, float]:
        if not self.samples:
            return {}
        before = [s for s in self.samples if s[0] <= t0]
        after = [s for s in self.samples if s[0] >= t1]
        start = before[-1][1] if before else self.samples[0][1]
        end = after[0][1] if after else self.samples[-1][1]
        return {g: max(0.0, v - start.get(g, 0.0)) for g, v in end.items()}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def summarize(t0s: Sequence[float], arrivals: Sequence[float]) -> tuple[float, float, float, float]:
    """(rate, sink rate, p50 ms, p99 ms) from per-message creation and arrival times."""
    received = len(arrivals)
    if not received:
        return 0.0, 0.0, float("nan"), float("nan")
    first, last = min(t0s), max(arrivals)
    latencies = sorted((a - t) * 1000 for a, t in zip(arrivals, t0s, strict=True))
    rate = received / (last - first) if last > first else float("inf")
    drain = last - min(arrivals)
    sink_rate = (received - 1) / drain if drain > 0 else float("inf")
    return rate, sink_rate, percentile(latencies, 50), percentile(latencies, 99)


def hops(
    t0s: Sequence[float],
    s1s: Sequence[float],
    s2s: Sequence[float],
    arrivals: Sequence[float],
    q: float = 50,
) -> tuple[float, float, float]:
    """Latency percentile ``q`` (ms) of each hop: creation -> s1, s1 -> s2, s2 -> arrival."""
    out = []
    for before, after in ((t0s, s1s), (s1s, s2s), (s2s, arrivals)):
        out.append(
            percentile(sorted((a - b) * 1000 for a, b in zip(after, before, strict=True)), q)
        )
    return out[0], out[1], out[2]


def steady_hops(
    t0s: Sequence[float], s1s: Sequence[float], s2s: Sequence[float], arrivals: Sequence[float]
) -> tuple[float, float, float]:
    """p99 of each hop in the steady state: the first 10% of messages (by creation), made
    while the processes were still starting, are left out."""
    order = sorted(range(len(t0s)), key=t0s.__getitem__)[len(t0s) // 10 :]
    pick = [[xs[i] for i in order] for xs in (t0s, s1s, s2s, arrivals)]
    return hops(*pick, q=99)


def hops_text(h: tuple[float, float, float], h99: tuple[float, float, float]) -> str:
    p50s = " / ".join(f"{x:.1f}" for x in h)
    p99s = " / ".join(f"{x:.1f}" for x in h99)
    return f"hop p50s {p50s} ms, steady p99s {p99s} ms"


def document(i: int) -> dict[str, Any]:
    """The payload of ``bench_steps.source``: about 200 bytes as JSON."""
    return {
        "seq": i,
        "t0": time.time(),
        "user": f"user-{i % 1000:04d}",
        "kind": "event",
        "tags": ["alpha", "beta", "gamma"],
        "score": i * 0.5,
        "note": FILLER,
    }


def body(i: int) -> bytes:
    return json.dumps(document(i)).encode()


def transform(data: bytes, field: str) -> bytes:
    doc = json.loads(data)
    doc[field] = time.time()
    return json.dumps(doc).encode()


class Pacer:
    """Tells a publisher how many of the next messages are due (all of them when unpaced)."""

    def __init__(self, rate: float, total: int) -> None:
        self.rate = rate
        self.total = total
        self.start = time.time()

    def due(self, sent: int, limit: int) -> int:
        left = min(limit, self.total - sent)
        if self.rate <= 0:
            return left
        return max(0, min(left, int((time.time() - self.start) * self.rate) + 1 - sent))

    def wait(self, sent: int) -> float:
        """Seconds until message number ``sent`` is due."""
        return max(0.0, self.start + sent / self.rate - time.time()) if self.rate > 0 else 0.0


class Recorder:
    """The consumer's (t0, s1, s2, arrival) times, sent to the parent when all have come."""

    def __init__(self, total: int, out: Connection) -> None:
        self.total = total
        self.out = out
        self.times = array("d")

    def add(self, data: bytes) -> None:
        doc = json.loads(data)
        self.times.extend((doc["t0"], doc["s1"], doc["s2"], time.time()))

    @property
    def count(self) -> int:
        return len(self.times) // 4

    @property
    def done(self) -> bool:
        return self.count >= self.total

    def send(self) -> None:
        self.out.send_bytes(self.times.tobytes())


@dataclass
class Job:
    """What one child process does."""

    role: str  # publisher, relay, consumer
    kind: str
    url: str
    queues: list[str]  # input queue first for a relay/consumer; output queue for a publisher
    messages: int
    rate: float
    prefetch: int
    client: str
    field: str = ""
    #: nats: "inbox" (Puller) or "nats-py" (PullSubscription.fetch)
    nats_fetch: str = "inbox"


class Gate:
    """Start-up handshake with the parent: the publisher starts once the others consume."""

    def __init__(self, ready: Event, go: Event) -> None:
        self._ready = ready
        self.go = go

    def ready(self) -> None:
        """A consumer or relay is connected and consuming."""
        self._ready.set()

    def wait(self) -> None:
        """A publisher waits for every other role to be ready."""
        self.go.wait()


# -- SQLite ---------------------------------------------------------------------------------
class SQLiteQueues:
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS raw_relay (seq INTEGER PRIMARY KEY, q TEXT NOT NULL, "
        "body BLOB NOT NULL); CREATE INDEX IF NOT EXISTS ix_raw_relay_q_seq ON raw_relay(q, seq);"
    )

    def __init__(self, url: str) -> None:
        self.path = url.removeprefix("sqlite:///")
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(self.SCHEMA)
        self.lock = os.open(self.path + "-lock", os.O_RDWR | os.O_CREAT, 0o644)

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)

    def take(self, q: str, limit: int) -> list[tuple[int, bytes]]:
        rows = self.db.execute(
            "SELECT seq, body FROM raw_relay WHERE q = ? ORDER BY seq LIMIT ?", (q, limit)
        ).fetchall()
        return [(int(s), bytes(b)) for s, b in rows]

    def close(self) -> None:
        self.db.close()
        os.close(self.lock)


def _sqlite_loop(job: Job, gate: Gate, handle: Callable[[SQLiteQueues, list[bytes]], None]) -> None:
    """Move batches off the input queue, ``handle`` each inside the same transaction."""
    db = SQLiteQueues(job.url)
    gate.ready()
    done, idle = 0, 0
    while done < job.messages:
        with db.write() as conn:
            rows = db.take(job.queues[0], job.prefetch)
            if rows:
                handle(db, [b for _, b in rows])
                conn.executemany("DELETE FROM raw_relay WHERE seq = ?", [(s,) for s, _ in rows])
        if rows:
            done += len(rows)
            idle = 0
        else:  # poll, backing off like the engine's embedded broker
            time.sleep((0.0005, 0.001, 0.002, 0.005)[min(idle, 3)])
            idle += 1
    db.close()


def sqlite_setup(url: str, queues: list[str]) -> None:
    SQLiteQueues(url).close()


def sqlite_cleanup(url: str, queues: list[str]) -> None:
    """Drop what is left of the run's queues (a file of the caller's, not a temporary one)."""
    db = SQLiteQueues(url)
    with db.write() as conn:
        conn.executemany("DELETE FROM raw_relay WHERE q = ?", [(q,) for q in queues])
    db.close()


def sqlite_child(job: Job, gate: Gate, out: Connection) -> None:
    if job.role == "publisher":
        gate.wait()
        db = SQLiteQueues(job.url)
        pacer = Pacer(job.rate, job.messages)
        sent = 0
        while sent < job.messages:
            n = pacer.due(sent, job.prefetch)
            if not n:
                time.sleep(pacer.wait(sent))
                continue
            with db.write() as conn:
                conn.executemany(
                    "INSERT INTO raw_relay (q, body) VALUES (?, ?)",
                    [(job.queues[0], body(i)) for i in range(sent, sent + n)],
                )
            sent += n
        db.close()
    elif job.role == "relay":
        q_out, field = job.queues[1], job.field

        def relay(db: SQLiteQueues, bodies: list[bytes]) -> None:
            db.db.executemany(
                "INSERT INTO raw_relay (q, body) VALUES (?, ?)",
                [(q_out, transform(b, field)) for b in bodies],
            )

        _sqlite_loop(job, gate, relay)
    else:
        rec = Recorder(job.messages, out)

        def record(db: SQLiteQueues, bodies: list[bytes]) -> None:
            for b in bodies:
                rec.add(b)

        _sqlite_loop(job, gate, record)
        rec.send()


# -- Redis Streams --------------------------------------------------------------------------
def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def redis_setup(url: str, queues: list[str]) -> None:
    r = _redis(url)
    for q in queues:
        r.xgroup_create(q, GROUP, id="0", mkstream=True)
    r.close()


def redis_cleanup(url: str, queues: list[str]) -> None:
    r = _redis(url)
    r.delete(*queues)
    r.close()


def redis_child(job: Job, gate: Gate, out: Connection) -> None:
    r = _redis(job.url)
    r.ping()
    if job.role == "publisher":
        gate.wait()
        pacer = Pacer(job.rate, job.messages)
        sent = 0
        while sent < job.messages:
            n = pacer.due(sent, job.prefetch)
            if not n:
                time.sleep(pacer.wait(sent))
                continue
            pipe = r.pipeline(transaction=False)
            for i in range(sent, sent + n):
                pipe.xadd(job.queues[0], {"d": body(i)})
            pipe.execute()
            sent += n
        r.close()
        return
    q_in = job.queues[0]
    rec = Recorder(job.messages, out) if job.role == "consumer" else None
    gate.ready()
    done = 0
    while done < job.messages:
        got = r.xreadgroup(GROUP, job.role, {q_in: ">"}, count=job.prefetch, block=1000)
        if not got:
            continue
        entries = got[0][1]
        ids = [eid for eid, _ in entries]
        if rec is not None:
            for _, fields in entries:
                rec.add(fields[b"d"])
            r.xack(q_in, GROUP, *ids)
        else:
            pipe = r.pipeline(transaction=False)  # run in order: the XACK after the XADDs
            for _, fields in entries:
                pipe.xadd(job.queues[1], {"d": transform(fields[b"d"], job.field)})
            pipe.xack(q_in, GROUP, *ids)
            pipe.execute()
        done += len(entries)
    if rec is not None:
        rec.send()
    r.close()


# -- RabbitMQ -------------------------------------------------------------------------------
def _blocking(url: str) -> Any:
    import pika

    return pika.BlockingConnection(pika.URLParameters(url))


def rabbitmq_setup(url: str, queues: list[str]) -> None:
    conn = _blocking(url)
    ch = conn.channel()
    for q in queues:
        ch.queue_declare(q, durable=True)
    conn.close()


def rabbitmq_cleanup(url: str, queues: list[str]) -> None:
    conn = _blocking(url)
    ch = conn.channel()
    for q in queues:
        ch.queue_delete(q)
    conn.close()


class Confirms:
    """Publisher confirms, matched to what each publish stood for, released in order."""

    def __init__(self) -> None:
        self.seq = 0
        self.pending: deque[tuple[int, Any]] = deque()
        self.upto = 0
        self.singles: set[int] = set()

    def published(self, token: Any) -> None:
        self.seq += 1
        self.pending.append((self.seq, token))

    def confirmed(self, tag: int, multiple: bool) -> list[Any]:
        """Tokens whose publish, and every earlier one, is now confirmed."""
        if multiple:
            self.upto = max(self.upto, tag)
        else:
            self.singles.add(tag)
        out = []
        pending = self.pending
        while pending and (pending[0][0] <= self.upto or pending[0][0] in self.singles):
            seq, token = pending.popleft()
            self.singles.discard(seq)
            out.append(token)
        return out


class PikaRole:
    """One role on a pika SelectConnection: everything runs in pika's callbacks."""

    def __init__(self, job: Job, gate: Gate, out: Connection) -> None:
        import pika

        self.pika = pika
        self.job = job
        self.gate = gate
        self.props = pika.BasicProperties(delivery_mode=2)
        self.confirms = Confirms()
        self.rec = Recorder(job.messages, out) if job.role == "consumer" else None
        self.done = 0  # inputs acked (relay, consumer) or outputs confirmed (publisher)
        self.sent = 0
        self.last_tag = 0
        self.flush_due = False
        self.pacer: Pacer | None = None
        self.error: str | None = None
        self.ch: Any = None
        self.conn = pika.SelectConnection(
            pika.URLParameters(job.url),
            on_open_callback=self._opened,
            on_open_error_callback=self._failed,
            on_close_callback=self._closed,
        )

    def run(self) -> None:
        self.conn.ioloop.start()
        if self.error:
            raise RuntimeError(self.error)
        if self.rec is not None:
            self.rec.send()

    def _failed(self, conn: Any, exc: BaseException) -> None:
        self.error = f"connection failed: {exc!r}"
        self.conn.ioloop.stop()

    def _closed(self, conn: Any, reason: BaseException) -> None:
        finished = self.done >= self.job.messages
        if not finished and self.error is None:
            self.error = f"connection closed: {reason!r}"
        self.conn.ioloop.stop()

    def _opened(self, conn: Any) -> None:
        conn.channel(on_open_callback=self._channel)

    def _channel(self, ch: Any) -> None:
        self.ch = ch
        if self.job.role == "consumer":
            ch.basic_qos(prefetch_count=self.job.prefetch, callback=self._qos)
        else:
            ch.confirm_delivery(self._confirm, callback=self._confirming)

    def _confirming(self, frame: Any) -> None:
        if self.job.role == "publisher":
            self._wait_for_go()
        else:
            self.ch.basic_qos(prefetch_count=self.job.prefetch, callback=self._qos)

    def _qos(self, frame: Any) -> None:
        on_message = self._record if self.job.role == "consumer" else self._relay
        self.ch.basic_consume(self.job.queues[0], on_message, callback=lambda _: self.gate.ready())

    # publisher
    def _wait_for_go(self) -> None:
        if not self.gate.go.is_set():
            self.conn.ioloop.call_later(0.001, self._wait_for_go)
            return
        self.gate.wait()
        self.pacer = Pacer(self.job.rate, self.job.messages)
        self._pump()

    def _pump(self) -> None:
        assert self.pacer is not None
        in_flight = self.sent - self.done
        n = self.pacer.due(self.sent, WINDOW - in_flight)
        for i in range(self.sent, self.sent + n):
            self.ch.basic_publish("", self.job.queues[0], body(i), self.props)
            self.confirms.published(None)
        self.sent += n
        if self.job.rate > 0 and self.sent < self.job.messages:
            self.conn.ioloop.call_later(max(0.0005, self.pacer.wait(self.sent)), self._pump)

    def _confirm(self, frame: Any) -> None:
        m = frame.method
        if isinstance(m, self.pika.spec.Basic.Nack):
            self.error = "a publish was nacked"
            self.conn.close()
            return
        tokens = self.confirms.confirmed(m.delivery_tag, m.multiple)
        if self.job.role == "publisher":
            self.done += len(tokens)
            if self.done >= self.job.messages:
                self.conn.close()
            elif self.job.rate <= 0:
                self._pump()
        elif tokens:  # inputs in order: one ack covers them all
            self.ch.basic_ack(tokens[-1], multiple=True)
            self.done += len(tokens)
            if self.done >= self.job.messages:
                self.conn.close()

    # relay
    def _relay(self, ch: Any, method: Any, props: Any, data: bytes) -> None:
        ch.basic_publish("", self.job.queues[1], transform(data, self.job.field), self.props)
        self.confirms.published(method.delivery_tag)

    # consumer
    def _record(self, ch: Any, method: Any, props: Any, data: bytes) -> None:
        assert self.rec is not None
        self.rec.add(data)
        self.last_tag = method.delivery_tag
        if not self.flush_due:  # ack once per burst read from the socket
            self.flush_due = True
            self.conn.ioloop.call_later(0, self._flush)

    def _flush(self) -> None:
        assert self.rec is not None
        self.flush_due = False
        self.ch.basic_ack(self.last_tag, multiple=True)
        if self.rec.done:
            self.done = self.rec.count
            self.conn.close()


async def _aio_pika_child(job: Job, gate: Gate, out: Connection) -> None:
    import aio_pika

    conn = await aio_pika.connect(job.url)
    ch = await conn.channel(publisher_confirms=job.role != "consumer")
    exchange = ch.default_exchange
    persistent = aio_pika.DeliveryMode.PERSISTENT
    if job.role == "publisher":
        gate.wait()
        pacer = Pacer(job.rate, job.messages)
        sent = 0
        while sent < job.messages:
            n = pacer.due(sent, WINDOW)
            if not n:
                await asyncio.sleep(pacer.wait(sent))
                continue
            msgs = [
                aio_pika.Message(body(i), delivery_mode=persistent) for i in range(sent, sent + n)
            ]
            await asyncio.gather(*(exchange.publish(m, job.queues[0]) for m in msgs))
            sent += n
        await conn.close()
        return
    await ch.set_qos(prefetch_count=job.prefetch)
    queue = await ch.get_queue(job.queues[0], ensure=False)
    rec = Recorder(job.messages, out) if job.role == "consumer" else None
    finished = asyncio.Event()
    done = 0

    async def relay(m: Any) -> None:
        nonlocal done
        out_msg = aio_pika.Message(transform(m.body, job.field), delivery_mode=persistent)
        await exchange.publish(out_msg, job.queues[1])  # returns once confirmed
        await m.ack()
        done += 1
        if done >= job.messages:
            finished.set()

    async def record(m: Any) -> None:
        assert rec is not None
        rec.add(m.body)
        await m.ack()
        if rec.done:
            finished.set()

    await queue.consume(record if rec is not None else relay)
    gate.ready()
    await finished.wait()
    await conn.close()
    if rec is not None:
        rec.send()


def rabbitmq_child(job: Job, gate: Gate, out: Connection) -> None:
    if job.client == "aio-pika":
        asyncio.run(_aio_pika_child(job, gate, out))
    else:
        PikaRole(job, gate, out).run()


# -- NATS JetStream -------------------------------------------------------------------------
def _stream(q: str) -> str:
    return q.replace("-", "_").replace(".", "_")


async def _nats_admin(url: str, queues: list[str], create: bool) -> None:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    for q in queues:
        if create:
            await js.add_stream(
                name=_stream(q), subjects=[q], storage="file", retention="workqueue"
            )
            await js.add_consumer(
                _stream(q), durable_name=GROUP, ack_policy="explicit", max_ack_pending=-1
            )
        else:
            with contextlib.suppress(Exception):
                await js.delete_stream(_stream(q))
    await nc.close()


def nats_setup(url: str, queues: list[str]) -> None:
    asyncio.run(_nats_admin(url, queues, create=True))


def nats_cleanup(url: str, queues: list[str]) -> None:
    asyncio.run(_nats_admin(url, queues, create=False))


class Puller:
    """Pull requests on a durable consumer, delivered to a callback on one inbox.

    The same requests as nats-py's ``PullSubscription.fetch`` (first ``no_wait``, then a
    lingering one), without its per-message ``wait_for``: deliveries are appended to a list
    and one future wakes the fetch.
    """

    def __init__(self, nc: Any, stream: str) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{GROUP}"
        self.inbox = nc.new_inbox()
        self.buffer: list[Any] = []
        self.want = 0
        self.wake: asyncio.Future[None] | None = None

    async def start(self) -> None:
        await self.nc.subscribe(self.inbox, cb=self._arrived)

    async def _arrived(self, msg: Any) -> None:
        if msg.reply:  # a delivery; a status (no messages, request expired) has no reply
            self.buffer.append(msg)
            if len(self.buffer) < self.want:
                return
        elif (msg.headers or {}).get("Status") == "100":  # idle heartbeat
            return
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    async def _request(self, req: dict[str, Any], timeout: float) -> None:
        self.wake = asyncio.get_running_loop().create_future()
        await self.nc.publish(self.subject, json.dumps(req).encode(), reply=self.inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake, timeout)

    async def fetch(self, n: int, wait: float) -> list[Any]:
        """What is there now (up to n), else the first deliveries within ``wait`` seconds."""
        if not self.buffer:
            self.want = n
            await self._request({"batch": n, "no_wait": True}, wait + 1)
        if not self.buffer:
            self.want = 1
            await self._request({"batch": n, "expires": int(wait * 1e9)}, wait + 1)
        got, self.buffer = self.buffer[:n], self.buffer[n:]
        return got


async def _nats_child(job: Job, gate: Gate, out: Connection) -> None:
    import nats
    from nats.errors import TimeoutError as NatsTimeout

    nc = await nats.connect(job.url)
    js = nc.jetstream(publish_async_max_pending=WINDOW)
    if job.role == "publisher":
        gate.wait()
        pacer = Pacer(job.rate, job.messages)
        futures = []
        sent = 0
        while sent < job.messages:
            n = pacer.due(sent, job.prefetch)
            if not n:
                await asyncio.sleep(pacer.wait(sent))
                continue
            for i in range(sent, sent + n):
                futures.append(await js.publish_async(job.queues[0], body(i)))
            sent += n
        await asyncio.gather(*futures)
        await nc.close()
        return
    if job.nats_fetch == "nats-py":
        psub = await js.pull_subscribe_bind(GROUP, _stream(job.queues[0]))

        async def fetch(n: int, wait: float) -> list[Any]:
            try:
                return list(await psub.fetch(batch=n, timeout=wait))
            except (TimeoutError, NatsTimeout):
                return []
    else:
        puller = Puller(nc, _stream(job.queues[0]))
        await puller.start()
        fetch = puller.fetch
    rec = Recorder(job.messages, out) if job.role == "consumer" else None
    gate.ready()
    done = 0
    while done < job.messages:
        msgs = await fetch(job.prefetch, 1.0)
        if rec is not None:
            for m in msgs:
                rec.add(m.data)
        else:
            acks = [
                await js.publish_async(job.queues[1], transform(m.data, job.field)) for m in msgs
            ]
            await asyncio.gather(*acks)
        for m in msgs:
            await m.ack()
        done += len(msgs)
    await nc.flush()
    await nc.close()
    if rec is not None:
        rec.send()


def nats_child(job: Job, gate: Gate, out: Connection) -> None:
    asyncio.run(_nats_child(job, gate, out))


# -- running --------------------------------------------------------------------------------
Admin = Callable[[str, list[str]], None]
Child = Callable[[Job, Gate, Connection], None]
BACKENDS: dict[str, tuple[Admin, Admin, Child]] = {
    "sqlite": (sqlite_setup, sqlite_cleanup, sqlite_child),
    "redis": (redis_setup, redis_cleanup, redis_child),
    "rabbitmq": (rabbitmq_setup, rabbitmq_cleanup, rabbitmq_child),
    "nats": (nats_setup, nats_cleanup, nats_child),
}


def _child(job: Job, ready: Event, go: Event, out: Connection) -> None:
    BACKENDS[job.kind][2](job, Gate(ready, go), out)


def run_relay(
    broker: str,
    messages: int,
    rate: float = 0.0,
    timeout: float = 120.0,
    prefetch: int = 100,
    client: str = "pika",
    nats_fetch: str = "inbox",
) -> Result:
    """Relay ``messages`` through 3 fresh queues on ``broker`` (name or URL) once."""
    _, kind, url = resolve(broker)
    setup, cleanup, _ = BACKENDS[kind]
    tmp = Path(tempfile.mkdtemp(prefix="ec-raw-")) if kind == "sqlite" else None
    if tmp is not None and url == BROKERS["sqlite"]:
        url = f"sqlite:///{tmp / 'queues.db'}"
    tag = uuid.uuid4().hex[:10]
    queues = [f"ec-raw-{tag}-q{i}" for i in (1, 2, 3)]
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    receive, send = ctx.Pipe(duplex=False)
    common = (messages, rate, prefetch, client)
    jobs = [
        Job("consumer", kind, url, [queues[2]], *common),
        Job("relay", kind, url, [queues[1], queues[2]], *common, field="s2"),
        Job("relay", kind, url, [queues[0], queues[1]], *common, field="s1"),
        Job("publisher", kind, url, [queues[0]], *common),
    ]
    for job in jobs:
        job.nats_fetch = nats_fetch
    readies = [ctx.Event() for _ in jobs]
    procs = [
        ctx.Process(target=_child, args=(job, ready, go, send), daemon=True)
        for job, ready in zip(jobs, readies, strict=True)
    ]
    sampler = CpuSampler().__enter__()
    sampler.watch("server", server_pids(kind, url))
    started = time.time()
    deadline = time.monotonic() + timeout
    status = "finished"
    data = b""
    try:
        setup(url, queues)
        for job, p in zip(jobs, procs, strict=True):
            p.start()
            sampler.watch(job.role + (f" {job.field}" if job.field else ""), [p.pid or 0])
        for ready, p in zip(readies[:-1], procs, strict=False):
            while not ready.wait(0.1):
                if not p.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"a {kind} relay process did not start")
        go.set()
        while not receive.poll(0.1):
            if time.monotonic() > deadline:
                status = "timeout"
                break
            if procs[0].exitcode not in (None, 0):
                status = f"consumer exited with {procs[0].exitcode}"
                break
        else:
            data = receive.recv_bytes()
        for p in procs:
            p.join(max(0.1, min(5.0, deadline - time.monotonic())))
        failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
        if failed and status == "finished":
            status = f"a process exited with {failed[0]}"
    except Exception as exc:
        status = f"error: {exc}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        sampler.__exit__()
        receive.close()
        send.close()
        try:
            cleanup(url, queues)
        except Exception as exc:
            print(f"  WARNING: could not delete queues {queues}: {exc}", file=sys.stderr)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    ended = time.time()
    times = array("d")
    times.frombytes(data)
    return Result.measured(messages, status, times, ended - started, sampler)


def cpu_text(cpu: dict[str, float], received: int) -> str:
    """CPU microseconds per message: clients (each role), server, and other processes."""
    if not cpu:
        return "CPU: unknown"
    per = 1e6 / max(1, received)
    roles = {k: v for k, v in cpu.items() if k not in ("server", "machine")}
    clients, server = sum(roles.values()), cpu.get("server", 0.0)
    text = f"CPU us/msg: clients {clients * per:,.0f}"
    if "server" in cpu:
        text += f" + server {server * per:,.0f}"
    if cpu.get("machine"):
        text += f" + other processes {max(0.0, cpu['machine'] - clients - server) * per:,.0f}"
    return text + " (" + ", ".join(f"{k} {v * per:,.0f}" for k, v in roles.items()) + ")"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Messages/second through a 3-hop relay written against each broker's "
        "raw client library (the ceiling for benchmarks/pipeline.py); p50/p99 latency.",
    )
    parser.add_argument(
        "--broker",
        nargs="+",
        default=["redis"],
        metavar="NAME_OR_URL",
        help=f"brokers: {', '.join(BROKERS)} or URLs (default: redis)",
    )
    parser.add_argument("--messages", type=int, default=10_000, help="per run (default 10000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per broker (default 3)")
    parser.add_argument("--rate", type=float, default=0.0, help="pace the publisher (msgs/s)")
    parser.add_argument("--prefetch", type=int, default=100, help="batch/prefetch (default 100)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per run")
    parser.add_argument(
        "--amqp-client", choices=["pika", "aio-pika"], default="pika", help="RabbitMQ client"
    )
    parser.add_argument(
        "--nats-fetch",
        choices=["inbox", "nats-py"],
        default="inbox",
        help="NATS pull: callback inbox (default) or nats-py's PullSubscription.fetch",
    )
    args = parser.parse_args(argv)
    try:
        brokers = [resolve(b) for b in args.broker]
    except ValueError as exc:
        parser.error(str(exc))
    results: dict[str, list[Result]] = {label: [] for label, _, _ in brokers}
    for round_no in range(1, args.rounds + 1):
        for label, _, url in brokers:
            r = run_relay(
                url,
                args.messages,
                args.rate,
                args.timeout,
                args.prefetch,
                args.amqp_client,
                args.nats_fetch,
            )
            results[label].append(r)
            print(
                f"  round {round_no} {label}: {r.rate:,.0f} msg/s (sink side {r.sink_rate:,.0f}), "
                f"p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, wall {r.wall:.2f} s, "
                f"{r.received}/{r.messages} received, {r.status}",
                flush=True,
            )
            print(f"    {hops_text(r.hops, r.hops99)}; {cpu_text(r.cpu, r.received)}", flush=True)
    print(f"\n{'broker':<10}  {'msgs/s median (min-max)':>26}  {'p50 ms':>8}  {'p99 ms':>8}")
    for label, runs in results.items():
        rates = [r.rate for r in runs]
        spread = f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
        print(
            f"{label:<10}  {spread:>26}  {statistics.median(r.p50_ms for r in runs):>8.1f}  "
            f"{statistics.median(r.p99_ms for r in runs):>8.1f}"
        )
    bad = [r for runs in results.values() for r in runs if r.status != "finished"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
