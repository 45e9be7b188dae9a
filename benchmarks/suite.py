"""The whole benchmark suite in one command: ElasticCode beside Celery 5 and the raw clients.

1. Idle worker memory: the resident memory of a worker that waits for messages.
2. Throughput and latency: the 3-stage pipeline of trivial processors on every broker, with 1
   and 2 workers per stage, beside Celery (RabbitMQ and Redis) and the raw-client relay,
   alternating, several rounds (``pipeline.py --celery``).
3. Scaling: the CPU-bound variant (s2 does about 1 ms of pure-Python work per message) with 1
   and 2 workers per stage, ElasticCode and Celery (``pipeline.py --cpu-ms 1``).
4. Latency at half of peak: the engine with 1 worker per stage paced at half of its median
   rate in step 2, per broker; the p99 of each hop in the steady state (leaving out the first
   10% of messages, made while the workers start).
5. The targets, each with the figure measured in this run.

    python benchmarks/suite.py                              # every broker, about 12 minutes
    python benchmarks/suite.py --broker sqlite redis --rounds 1 --messages 5000

Every run stops the processes it started and deletes its queues; servers are the loopback
ones that pipeline.py names (or URLs).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pipeline
import raw_relay

import elasticcode
from elasticcode.supervisor import Supervisor

TARGETS = {
    "celery": 5.0,  # ElasticCode / Celery throughput, same broker and workers
    "raw": 0.5,  # ElasticCode / raw 3-hop relay, on RabbitMQ and Redis
    "embedded": 10_000,  # msgs/s on the embedded default
    "hop_p99_ms": 5.0,  # at half of peak load
    "scaling": 1.8,  # CPU-bound stage, 2 workers / 1 worker
    "idle_rss_mb": 60.0,
}


def idle_worker_rss(settle: float = 3.0) -> float:
    """Peak resident memory (MB) of a worker that has started and waits for messages."""
    tmp = Path(tempfile.mkdtemp(prefix="ec-idle-"))
    flow = elasticcode.Flow(name="idle", path=["."], base_dir=pipeline.HERE)
    flow.processor("wait", "bench_steps:stage1", instances=2)
    found: list[float] = []

    def measure(agent: Supervisor) -> None:
        def go() -> None:
            time.sleep(settle)
            for inst in agent.instances:
                if inst.pid:
                    found.append(raw_relay.process_peak_rss(inst.pid))
            os.kill(os.getpid(), signal.SIGINT)  # stops the run, as Ctrl-C does

        threading.Thread(target=go, daemon=True).start()

    elasticcode.run(flow, state_dir=tmp / "state", forever=True, progress=None, on_start=measure)
    return max(found) if found else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--broker", nargs="+", default=["sqlite", "redis", "rabbitmq", "nats"], metavar="NAME"
    )
    parser.add_argument("--messages", type=int, default=10_000, help="per engine/raw run")
    parser.add_argument("--celery-messages", type=int, default=3000, help="per Celery run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu-messages", type=int, default=5000, help="per CPU-bound run")
    args = parser.parse_args(argv)
    common = ["--rounds", str(args.rounds), "--celery", "--workers", "1", "2"]
    common += ["--celery-messages", str(args.celery_messages)]
    status = 0

    print("== 1. idle worker memory", flush=True)
    idle = idle_worker_rss()
    print(f"idle worker peak RSS: {idle:.1f} MB\n", flush=True)

    print("== 2. throughput and latency, trivial processors", flush=True)
    code, trivial = pipeline.run(
        pipeline.parse_args(["--broker", *args.broker, "--messages", str(args.messages), *common])
    )
    status |= code

    cpu_brokers = [b for b in args.broker if b in ("sqlite", "redis")] or args.broker[:1]
    print(f"\n== 3. scaling, CPU-bound stage ({' '.join(cpu_brokers)})", flush=True)
    cpu_args = ["--broker", *cpu_brokers, "--messages", str(args.cpu_messages), *common]
    code, cpu = pipeline.run(pipeline.parse_args([*cpu_args, "--cpu-ms", "1"]))
    status |= code

    labels = [raw_relay.resolve(b)[0] for b in args.broker]
    peaks = {label: pipeline.median_rate(trivial, (label, "elasticcode 1w")) for label in labels}
    paced = [f"{label}={peak / 2:.0f}" for label, peak in peaks.items() if peak > 0]
    print("\n== 4. latency at half of peak: elasticcode 1w paced at " + ", ".join(paced))
    half_args = ["--broker", *args.broker, "--messages", str(args.messages), "--rounds", "1"]
    half_args += ["--workers", "1", "--no-raw", "--rate", *paced]
    code, half = pipeline.run(pipeline.parse_args(half_args))
    status |= code

    print("\n== 5. targets (figures from this run)")

    def line(what: str, value: float, target: float, ok: bool, unit: str = "") -> None:
        verdict = "met" if ok else f"MISSED by {abs(value - target) / target:.0%}"
        print(f"  {what:<58} {value:>10,.2f}{unit}  target {target:g}{unit}  {verdict}")

    for label in labels:
        for w in (1, 2):
            ec = pipeline.median_rate(trivial, (label, f"elasticcode {w}w"))
            celery = pipeline.median_rate(trivial, (label, f"celery {w}w"))
            if ec and celery:
                ratio = ec / celery
                line(f"{label} {w}w: ElasticCode / Celery", ratio, TARGETS["celery"], ratio >= 5)
        raw = pipeline.median_rate(trivial, (label, "raw"))
        ec = max(pipeline.median_rate(trivial, (label, f"elasticcode {w}w")) for w in (1, 2))
        if raw and ec and label in ("redis", "rabbitmq"):
            line(f"{label}: ElasticCode (best) / raw 3-hop", ec / raw, 0.5, ec / raw >= 0.5)
    if "sqlite" in labels:
        ec = max(pipeline.median_rate(trivial, ("sqlite", f"elasticcode {w}w")) for w in (1, 2))
        line("embedded default: msgs/s end to end", ec, 10_000, ec >= 10_000)
    for label in labels:
        for s in half.get((label, "elasticcode 1w"), []):
            worst = max(s.hops99)
            text = " / ".join(f"{h:.1f}" for h in s.hops99)
            line(f"{label}: p99 per hop at half of peak ({text} ms)", worst, 5.0, worst <= 5.0)
    for label in cpu_brokers:
        label = raw_relay.resolve(label)[0]
        one = pipeline.median_rate(cpu, (label, "elasticcode 1w"))
        two = pipeline.median_rate(cpu, (label, "elasticcode 2w"))
        if one and two:
            line(
                f"{label}: CPU-bound stage, 2 workers / 1 worker", two / one, 1.8, two / one >= 1.8
            )
    line("idle worker peak RSS", idle, 60.0, idle <= 60.0, " MB")
    peak_rss = [max(s.rss.values()) for runs in trivial.values() for s in runs if s.rss]
    if peak_rss:
        print(f"  (largest process in any run: {max(peak_rss):.0f} MB peak RSS)")
    return status


if __name__ == "__main__":
    sys.exit(main())
