"""End-to-end throughput and latency of a 3-stage pipeline on the embedded SQLite broker.

The flow is ``source -> s1 -> s2 -> s3``: the source emits N payloads of about 200 bytes, each
stamped with its creation time ``t0``; s1, s2 and s3 each add a field; s3 also records
(t0, arrival time) per message into files in a temporary folder (see ``bench_steps.py``).

Throughput is N / (last arrival at s3 - first ``t0``), so process start-up and shutdown are
left out; the whole-run wall time (``elasticcode.run`` start to return) is printed as well.
Latency is arrival - t0 per message. With an unpaced source the queues fill up to their
back-pressure limit, so latency then measures queueing under saturation; ``--rate`` paces the
source to measure latency at a given load.

Each round runs the flow once per worker count (instances per stage; the source is always one
instance), alternating, so drift on the machine affects every setting alike.

    python benchmarks/pipeline.py                    # 20000 messages, 3 rounds, 1 and 2 workers
    python benchmarks/pipeline.py --messages 5000 --rounds 1 --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

import elasticcode

HERE = Path(__file__).resolve().parent


@dataclass
class Sample:
    workers: int
    messages: int
    received: int
    status: str
    rate: float
    #: (received - 1) / (last arrival - first arrival): the sink's steady-state rate
    sink_rate: float
    p50_ms: float
    p99_ms: float
    wall: float
    #: RunResult.seconds: from the agent's start to the end of the run
    run_seconds: float
    #: run start to the source's first message, and the last arrival to the run's return
    startup: float
    shutdown: float


def build_flow(messages: int, out: Path, prefetch: int | None, rate: float) -> elasticcode.Flow:
    flow = elasticcode.Flow(name="bench", path=["."], base_dir=HERE)
    extra = {} if prefetch is None else {"prefetch": prefetch}
    flow.processor(
        "source",
        "bench_steps:source",
        source=True,
        config={"messages": messages, "rate": rate},
    )
    flow.processor("s1", "bench_steps:stage1", **extra)
    flow.processor("s2", "bench_steps:stage2", **extra)
    flow.processor("s3", "bench_steps:Sink", config={"out": str(out)}, **extra)
    flow.connect("source", "s1")
    flow.connect("s1", "s2")
    flow.connect("s2", "s3")
    return flow


def read_latencies(out: Path) -> tuple[array[float], array[float]]:
    """(t0s, arrivals) from every sink instance's file."""
    pairs = array("d")
    for path in sorted(out.glob("latency-*.bin")):
        pairs.frombytes(path.read_bytes())
    return pairs[0::2], pairs[1::2]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


class Watchdog:
    """Interrupts the run (as Ctrl-C would) if it takes longer than ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._lock = threading.Lock()
        self._armed = True
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._armed = False
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            if self._armed:
                self.fired = True
                os.kill(os.getpid(), signal.SIGINT)


def run_once(
    workers: int,
    messages: int,
    timeout: float,
    prefetch: int | None,
    rate: float,
    keep: bool,
) -> Sample:
    tmp = Path(tempfile.mkdtemp(prefix="ec-bench-"))
    try:
        out = tmp / "latency"
        flow = build_flow(messages, out, prefetch, rate)
        started = time.time()
        with Watchdog(timeout) as dog:
            result = elasticcode.run(flow, state_dir=tmp / "state", workers=workers, progress=None)
        ended = time.time()
        t0s, arrivals = read_latencies(out)
        received = len(arrivals)
        status = "timeout" if dog.fired else result.status
        if result.dead_letters:
            status += f", {result.dead_letters} dead"
        if received:
            first, last = min(t0s), max(arrivals)
            latencies = sorted((a - t) * 1000 for a, t in zip(arrivals, t0s, strict=True))
            rate_seen = received / (last - first) if last > first else float("inf")
            drain = last - min(arrivals)
            sink_rate = (received - 1) / drain if drain > 0 else float("inf")
        else:
            first = last = ended
            latencies, rate_seen, sink_rate = [], 0.0, 0.0
        return Sample(
            workers,
            messages,
            received,
            status,
            rate_seen,
            sink_rate,
            percentile(latencies, 50),
            percentile(latencies, 99),
            ended - started,
            result.seconds,
            first - started,
            ended - last,
        )
    finally:
        if keep:
            print(f"  kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Messages/second end-to-end through source -> s1 -> s2 -> s3 (trivial processors) "
            "on the embedded SQLite broker, with N workers per stage; p50/p99 latency."
        ),
    )
    parser.add_argument(
        "--messages", type=int, default=20_000, help="messages per run (default 20000)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds; each runs every worker count (default 3)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="worker counts (instances per stage) to compare (default: 1 2)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="interrupt a run that takes longer than this many seconds (default 120)",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        default=None,
        help="prefetch of s1..s3 (default: the engine's default)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="pace the source to this many messages/s (default 0: as fast as possible)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep each run's temporary folder (state, logs)"
    )
    args = parser.parse_args(argv)
    if args.messages < 1 or args.rounds < 1 or any(w < 1 for w in args.workers):
        parser.error("--messages, --rounds and --workers must be at least 1")

    print(
        f"{args.messages} messages, {args.rounds} round(s), workers {args.workers}, "
        f"{os.cpu_count()} CPU(s), Python {sys.version.split()[0]}, "
        f"elasticcode {elasticcode.__version__}, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    samples: dict[int, list[Sample]] = {w: [] for w in args.workers}
    for round_no in range(1, args.rounds + 1):
        for w in args.workers:
            s = run_once(w, args.messages, args.timeout, args.prefetch, args.rate, args.keep)
            samples[w].append(s)
            print(
                f"  round {round_no} workers {w}: {s.rate:,.0f} msg/s (sink side "
                f"{s.sink_rate:,.0f}), p50 {s.p50_ms:.1f} ms, p99 {s.p99_ms:.1f} ms, "
                f"wall {s.wall:.2f} s (run {s.run_seconds:.2f} s, start-up {s.startup:.2f} s, "
                f"shutdown {s.shutdown:.2f} s), {s.received}/{s.messages} received, {s.status}",
                flush=True,
            )
            if s.status == "interrupted":  # Ctrl-C (the watchdog reports "timeout")
                return 130

    header = f"{'workers':>7}  {'msgs/s median (min-max)':>26}  {'p50 ms':>8}  {'p99 ms':>8}"
    header += f"  {'wall s':>7}"
    print()
    print(header)
    print("-" * len(header))
    medians: dict[int, float] = {}
    for w, runs in samples.items():
        rates = [s.rate for s in runs]
        medians[w] = statistics.median(rates)
        spread = f"{medians[w]:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
        print(
            f"{w:>7}  {spread:>26}  {statistics.median(s.p50_ms for s in runs):>8.1f}  "
            f"{statistics.median(s.p99_ms for s in runs):>8.1f}  "
            f"{statistics.median(s.wall for s in runs):>7.2f}"
        )
    if 1 in medians and 2 in medians and medians[1] > 0:
        print(f"\nratio 2w/1w: {medians[2] / medians[1]:.2f}")
    bad = [
        s
        for runs in samples.values()
        for s in runs
        if s.status != "finished" or s.received != s.messages
    ]
    if bad:
        print(f"\nWARNING: {len(bad)} run(s) did not finish cleanly or lost messages")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
