"""Celery 5 running the benchmark pipeline (``bench_celery.py``) once, measured like the engine.

One Celery worker per stage (``celery -A bench_celery worker -Q QUEUE``, the prefork pool with
``--concurrency`` = workers per stage, as Celery's documentation starts workers), each
consuming its own queue; ``--without-gossip --without-mingle --without-heartbeat`` leave out
the cluster chatter that the pipeline does not use. A publisher process of its own sends N s1
tasks; s1 sends s2, s2 sends s3, s3 records the times. Acks late, requeue on a lost worker,
persistent messages, publisher confirms on RabbitMQ: the engine's guarantees. Celery speaks
RabbitMQ and Redis (lists, not streams) among this benchmark's brokers.

    python benchmarks/celery_relay.py --broker redis rabbitmq --messages 3000
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from pathlib import Path

import raw_relay

HERE = Path(__file__).resolve().parent
SUPPORTED = ("redis", "rabbitmq")
#: The publisher: N s1 tasks, paced or not, over one producer connection.
PUBLISH = """
import sys, time
import bench_celery, raw_relay

messages, rate = int(sys.argv[1]), float(sys.argv[2])
pacer = raw_relay.Pacer(rate, messages)
with bench_celery.app.producer_or_acquire() as producer:
    for n in range(messages):
        if rate > 0 and (ahead := pacer.wait(n)) > 0:
            time.sleep(ahead)
        bench_celery.s1.apply_async((raw_relay.document(n),), producer=producer)
"""


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def run_celery(
    kind: str,
    url: str,
    messages: int,
    workers: int = 1,
    rate: float = 0.0,
    timeout: float = 120.0,
    cpu_ms: float = 0.0,
) -> raw_relay.Result:
    """Run the pipeline on Celery once; its queues are deleted afterwards."""
    if kind not in SUPPORTED:
        raise ValueError(f"Celery has no {kind} transport in this benchmark ({SUPPORTED})")
    tag = uuid.uuid4().hex[:10]
    queues = [f"ecb-{tag}-s{i}" for i in (1, 2, 3)]
    out = Path(tempfile.mkdtemp(prefix="ec-celery-"))
    env = {
        **os.environ,
        "EC_BENCH_CELERY_BROKER": url,
        "EC_BENCH_CELERY_QUEUES": ",".join(queues),
        "EC_BENCH_CELERY_OUT": str(out),
        "EC_BENCH_CPU_MS": str(cpu_ms),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    sampler = raw_relay.CpuSampler().__enter__()
    sampler.watch("server", raw_relay.server_pids(kind, url))
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    started = time.time()
    deadline = time.monotonic() + timeout
    status = "finished"
    times = array("d")
    try:
        for i, q in enumerate(queues, 1):
            log = open(out / f"worker-s{i}.log", "wb")  # noqa: SIM115
            logs.append(log)
            command = [sys.executable, "-m", "celery", "-A", "bench_celery", "worker"]
            command += ["-Q", q, "-c", str(workers), "-P", "prefork", "-l", "INFO"]
            command += ["-n", f"s{i}-{tag}@%h", "--without-gossip", "--without-mingle"]
            command += ["--without-heartbeat"]
            procs.append(subprocess.Popen(command, env=env, cwd=HERE, stdout=log, stderr=log))
        for i, p in enumerate(procs, 1):  # consuming before the first message goes out
            while b" ready." not in (out / f"worker-s{i}.log").read_bytes():
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Celery worker s{i} did not start; see its log")
                time.sleep(0.1)
            sampler.watch(f"s{i}", [p.pid, *children(p.pid)])
        publisher = subprocess.Popen(
            [sys.executable, "-c", PUBLISH, str(messages), str(rate)], env=env, cwd=HERE
        )
        procs.append(publisher)
        sampler.watch("publisher", [publisher.pid])
        while True:
            got = sum(f.stat().st_size for f in out.glob("latency-*.bin")) // 32
            if got >= messages:
                break
            if time.monotonic() > deadline:
                status = "timeout"
                break
            if any(p.poll() not in (None, 0) for p in procs):
                status = "a Celery process failed; see its log"
                break
            time.sleep(0.05)
    except Exception as exc:
        status = f"error: {exc}"
    finally:
        for p in procs:  # warm shutdown, then kill what lingers
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                for pid in children(p.pid):
                    os.kill(pid, signal.SIGKILL)
                p.kill()
                p.wait(5)
        sampler.__exit__()
        for log in logs:
            log.close()
        for path in sorted(out.glob("latency-*.bin")):
            times.frombytes(path.read_bytes())
        try:
            delete_queues(kind, url, queues)
        except Exception as exc:
            print(f"  WARNING: could not delete Celery queues {queues}: {exc}", file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
    return raw_relay.Result.measured(messages, status, times, time.time() - started, sampler)


def delete_queues(kind: str, url: str, queues: list[str]) -> None:
    from kombu import Connection

    with Connection(url) as conn:
        channel = conn.default_channel
        for q in queues:
            if kind == "rabbitmq":
                channel.queue_delete(q)
            else:
                channel.client.delete(q)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", nargs="+", default=list(SUPPORTED), choices=SUPPORTED)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes per stage")
    parser.add_argument("--rate", type=float, default=0.0, help="pace the publisher (msg/s)")
    parser.add_argument("--cpu-ms", type=float, default=0.0, help="CPU work in s2 (ms)")
    args = parser.parse_args(argv)
    for name in args.broker:
        _, kind, url = raw_relay.resolve(name)
        r = run_celery(kind, url, args.messages, args.workers, args.rate, cpu_ms=args.cpu_ms)
        print(
            f"{name}: {r.rate:,.0f} msg/s, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, "
            f"{r.received}/{r.messages} received, {r.status}; "
            f"{raw_relay.cpu_text(r.cpu, r.received)}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
