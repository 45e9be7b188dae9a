"""End-to-end throughput and latency of a 3-stage pipeline, per broker, beside the raw client.

The flow is ``source -> s1 -> s2 -> s3``: the source emits N payloads of about 200 bytes, each
stamped with its creation time ``t0``; s1, s2 and s3 each add a field; s3 also records
(t0, arrival time) per message into files in a temporary folder (see ``bench_steps.py``).

Throughput is N / (last arrival at s3 - first ``t0``), so process start-up and shutdown are
left out; the whole-run wall time (``elasticcode.run`` start to return) is printed as well.
Latency is arrival - t0 per message. With an unpaced source the queues fill up to their
back-pressure limit, so latency then measures queueing under saturation; ``--rate`` paces the
source to measure latency at a given load.

``--broker`` runs the flow on each broker named (sqlite, the embedded default; redis, rabbitmq
and nats on the loopback test servers; or URLs), and beside it ``raw_relay.py``: the same
3-hop relay written directly against the broker's client library with the same guarantees,
the ceiling the engine is measured against. Each round runs every system on every broker
once, alternating, so drift on the machine affects every setting alike. Flows on a server get
a unique name per run and their queues are deleted afterwards.

    python benchmarks/pipeline.py                    # sqlite: raw, 1 and 2 workers; 3 rounds
    python benchmarks/pipeline.py --broker sqlite redis rabbitmq nats
    python benchmarks/pipeline.py --broker redis nats --rate redis=8000 nats=2000 --rounds 1
    python benchmarks/pipeline.py --messages 5000 --rounds 1 --workers 2 --no-raw
    python benchmarks/pipeline.py --broker sqlite redis --workers 1 --no-raw --lineage off 0.01 full
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import bench_steps  # the sibling scripts (this folder is on sys.path when this one runs)
import celery_relay
import raw_relay

import elasticcode
from elasticcode.brokers import open_broker
from elasticcode.flow import Sampled
from elasticcode.supervisor import Supervisor

HERE = Path(__file__).resolve().parent


@dataclass
class Sample:
    system: str
    messages: int
    received: int
    status: str
    rate: float
    #: (received - 1) / (last arrival - first arrival): the sink's steady-state rate
    sink_rate: float
    p50_ms: float
    p99_ms: float
    wall: float
    #: CPU seconds per process group from the first message's creation to the last arrival
    #: (see raw_relay.CpuSampler): clients by role or processor, "server", "machine"
    cpu: dict[str, float]
    #: median latency of each hop, ms: creation -> s1, s1 -> s2, s2 -> arrival
    hops: tuple[float, float, float]
    #: more about the run, for its progress line
    detail: str = ""
    #: peak resident memory (MB) of the largest process of each role or processor
    rss: dict[str, float] = field(default_factory=dict)
    #: p99 latency of each hop in the steady state, ms
    hops99: tuple[float, float, float] = (float("nan"),) * 3


def build_flow(
    name: str,
    messages: int,
    out: Path,
    prefetch: int | None,
    rate: float,
    cpu_ms: float = 0.0,
    lineage: str = "off",
) -> elasticcode.Flow:
    flow = elasticcode.Flow(name=name, path=["."], base_dir=HERE)
    if lineage != "off":
        share = None if lineage == "full" else float(lineage)
        flow.settings.lineage = "full" if share is None else Sampled(sampled=share)
    extra = {} if prefetch is None else {"prefetch": prefetch}
    flow.processor(
        "source",
        "bench_steps:source",
        source=True,
        config={"messages": messages, "rate": rate},
    )
    flow.processor("s1", "bench_steps:stage1", **extra)
    s2_config = {"cpu_ms": cpu_ms} if cpu_ms else {}
    flow.processor("s2", "bench_steps:stage2", config=s2_config, **extra)
    flow.processor("s3", "bench_steps:Sink", config={"out": str(out)}, **extra)
    flow.connect("source", "s1")
    flow.connect("s1", "s2")
    flow.connect("s2", "s3")
    return flow


def read_latencies(out: Path) -> array[float]:
    """(t0, s1 time, s2 time, arrival) per message, from every sink instance's file."""
    times = array("d")
    for path in sorted(out.glob("latency-*.bin")):
        times.frombytes(path.read_bytes())
    return times


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


async def delete_queues(url: str, queues: list[str]) -> None:
    broker = open_broker(url)
    await broker.connect()
    try:
        await broker.delete(queues)
    finally:
        await broker.close()


def run_once(
    kind: str,
    url: str | None,
    workers: int,
    messages: int,
    timeout: float,
    prefetch: int | None,
    rate: float,
    keep: bool,
    cpu_ms: float = 0.0,
    lineage: str = "off",
) -> Sample:
    """One run of the flow; ``url`` None runs it on the embedded default in a fresh folder."""
    tmp = Path(tempfile.mkdtemp(prefix="ec-bench-"))
    # a server is shared: a unique flow name gives the run queues of its own
    name = "bench" if url is None else f"bench_{uuid.uuid4().hex[:12]}"
    out = tmp / "latency"
    flow = build_flow(name, messages, out, prefetch, rate, cpu_ms, lineage)
    started = time.time()

    def watch(agent: Supervisor) -> None:
        for inst in agent.instances:
            sampler.watch(inst.processor, [inst.pid or 0])

    try:
        with raw_relay.CpuSampler() as sampler, Watchdog(timeout) as dog:
            sampler.watch("runner", [os.getpid()])
            sampler.watch("server", raw_relay.server_pids(kind, url or ""))
            result = elasticcode.run(
                flow,
                state_dir=tmp / "state",
                broker=url,
                workers=workers,
                progress=None,
                on_start=watch,
            )
        ended = time.time()
        times = read_latencies(out)
    finally:
        if url is not None:
            try:
                asyncio.run(delete_queues(url, flow.queues()))
            except Exception as exc:
                print(f"  WARNING: could not delete the queues of {name}: {exc}", file=sys.stderr)
        if keep:
            print(f"  kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    status = "timeout" if dog.fired else result.status
    if result.dead_letters:
        status += f", {result.dead_letters} dead"
    t0s, arrivals = times[0::4], times[3::4]
    first = min(t0s) if len(t0s) else ended
    last = max(arrivals) if len(arrivals) else ended
    sample = from_result(
        f"elasticcode {workers}w",
        raw_relay.Result.measured(messages, status, times, ended - started, sampler),
    )
    sample.detail = (
        f"run {result.seconds:.2f} s, start-up {first - started:.2f} s, "
        f"shutdown {ended - last:.2f} s"
    )
    return sample


def run_raw(
    url: str, messages: int, timeout: float, prefetch: int, rate: float, client: str
) -> Sample:
    return from_result("raw", raw_relay.run_relay(url, messages, rate, timeout, prefetch, client))


def from_result(system: str, r: raw_relay.Result) -> Sample:
    return Sample(
        system,
        r.messages,
        r.received,
        r.status,
        r.rate,
        r.sink_rate,
        r.p50_ms,
        r.p99_ms,
        r.wall,
        r.cpu,
        r.hops,
        rss=r.rss,
        hops99=r.hops99,
    )


def wait_for_quiet(limit: float, busy: float = 0.15) -> float:
    """Wait (up to ``limit`` seconds) until the machine has been under ``busy`` of one core
    for half a second, so that another user's burst does not land in a run; return the wait."""
    started = time.monotonic()
    while True:
        before = raw_relay.machine_cpu()
        time.sleep(0.5)
        if raw_relay.machine_cpu() - before < busy * 0.5 or not before:
            return time.monotonic() - started
        if time.monotonic() - started >= limit:
            return time.monotonic() - started


def source_version() -> str:
    """The commit of the engine's source measured (+ "dirty" if src/ has changes)."""
    root = HERE.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + (" (src/ modified)" if dirty else "")


def parse_rates(tokens: list[str], labels: list[str]) -> dict[str, float]:
    """``--rate 5000`` for every broker, or ``--rate redis=8000 nats=2000`` (others unpaced)."""
    rates = dict.fromkeys(labels, 0.0)
    for token in tokens:
        label, sep, value = token.rpartition("=")
        if sep and label not in rates:
            raise ValueError(f"--rate {token}: {label!r} is not among --broker {' '.join(labels)}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--rate {token}: {value!r} is not a number") from None
        for name in [label] if sep else labels:
            rates[name] = number
    return rates


def cpu_per_message(s: Sample) -> tuple[str, str]:
    """CPU microseconds per message: clients + server (where it can be read), and the other
    processes on the machine in the meantime (a sign of a disturbed run)."""
    if not s.cpu:
        return "?", "?"
    per = 1e6 / max(1, s.received)
    clients = sum(v for k, v in s.cpu.items() if k not in ("server", "machine"))
    server = s.cpu.get("server", 0.0)
    text = f"{clients * per:,.0f}" + (f"+{server * per:,.0f}" if "server" in s.cpu else "")
    other = max(0.0, s.cpu.get("machine", 0.0) - clients - server)
    return text, f"{other * per:,.0f}"


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Messages/second end-to-end through source -> s1 -> s2 -> s3 (trivial processors) "
            "with N workers per stage, on each broker beside a raw-client relay of the same "
            "shape; p50/p99 latency."
        ),
    )
    parser.add_argument(
        "--broker",
        nargs="+",
        default=["sqlite"],
        metavar="NAME_OR_URL",
        help="brokers to compare: sqlite (embedded, in a temporary folder), redis, rabbitmq, "
        "nats (the loopback servers), or URLs (default: sqlite)",
    )
    parser.add_argument(
        "--messages", type=int, default=10_000, help="messages per run (default 10000)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds; each runs every system (default 3)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="worker counts (instances per stage) to compare (default: 1 2)",
    )
    parser.add_argument(
        "--no-raw",
        dest="raw",
        action="store_false",
        help="leave out the raw-client relay (benchmarks/raw_relay.py)",
    )
    parser.add_argument(
        "--amqp-client",
        choices=["pika", "aio-pika"],
        default="pika",
        help="client of the raw RabbitMQ relay (default pika: pipelined confirms)",
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
        help="prefetch of s1..s3 and batch of the raw relay (default: the engine's, 100)",
    )
    parser.add_argument(
        "--rate",
        nargs="+",
        default=[],
        metavar="[BROKER=]RATE",
        help="pace the source to this many messages/s, for every broker or per broker "
        "(default: as fast as possible)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for the machine to be idle (default 20; "
        "0: do not wait)",
    )
    parser.add_argument(
        "--celery",
        action="store_true",
        help="also run the pipeline on Celery 5 with the same worker counts, where it speaks "
        "the broker (redis, rabbitmq): benchmarks/celery_relay.py",
    )
    parser.add_argument(
        "--celery-messages",
        type=int,
        default=None,
        metavar="N",
        help="messages per Celery run (default: --messages); Celery's rate is steady after a "
        "few hundred, and a run of 10,000 takes half a minute",
    )
    parser.add_argument(
        "--cpu-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="the CPU-bound variant: s2 does about MS milliseconds of pure-Python work per "
        "message (leaves out the raw relay; prints the 2w/1w scaling)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep each run's temporary folder (state, logs)"
    )
    parser.add_argument(
        "--lineage",
        nargs="+",
        default=["off"],
        metavar="off|full|SHARE",
        help="the flow's lineage setting: off (default), full, or a share sampled (0.01); "
        "several run side by side as systems of their own",
    )
    args = parser.parse_args(argv)
    if args.messages < 1 or args.rounds < 1 or any(w < 1 for w in args.workers):
        parser.error("--messages, --rounds and --workers must be at least 1")
    try:
        args.brokers = [raw_relay.resolve(b) for b in args.broker]
        args.rates = parse_rates(args.rate, [label for label, _, _ in args.brokers])
    except ValueError as exc:
        parser.error(str(exc))
    return args


Samples = dict[tuple[str, str], list[Sample]]


def run(args: argparse.Namespace) -> tuple[int, Samples]:
    """Every round of every system on every broker; print each run and the table; return
    the exit status (1 if a run lost messages or failed) and the samples."""
    brokers, rates = args.brokers, args.rates
    raw = args.raw and not args.cpu_ms  # the raw relay has no CPU-bound stage
    lineages = args.lineage if args.lineage != ["off"] else [None]
    systems = (["raw"] if raw else []) + [
        f"elasticcode {w}w" + (f" lin={lin}" if lin else "")
        for w in args.workers
        for lin in lineages
    ]
    systems += [f"celery {w}w" for w in args.workers] if args.celery else []

    print(
        f"{args.messages} messages, {args.rounds} round(s), brokers {' '.join(rates)}, "
        f"commit {source_version()}, "
        f"systems {', '.join(systems)}, {os.cpu_count()} CPU(s), "
        f"Python {sys.version.split()[0]}, elasticcode {elasticcode.__version__}, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if any(rates.values()):
        print("paced: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in rates.items() if v))
    if args.cpu_ms:
        started = time.perf_counter()
        bench_steps.burn(args.cpu_ms * 100)
        took = (time.perf_counter() - started) * 10
        print(f"CPU-bound variant: s2 does {args.cpu_ms:g} ms of work (measured {took:.2f} ms)")
    samples: Samples = {
        (label, system): []
        for label, kind, _ in brokers
        for system in systems
        if not system.startswith("celery") or kind in celery_relay.SUPPORTED
    }
    for round_no in range(1, args.rounds + 1):
        for label, kind, url in brokers:
            # the embedded default lives in each run's own folder; a URL is used as given
            ec_url = None if url == raw_relay.BROKERS["sqlite"] else url
            for system in systems:
                if (label, system) not in samples:
                    continue  # Celery on a broker it does not speak
                waited = wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else 0.0
                if waited >= 1:
                    print(f"  (waited {waited:.0f} s for the machine to be idle)", flush=True)
                w = int(system.split()[1].rstrip("w")) if system != "raw" else 1
                lineage = system.split("lin=")[1] if "lin=" in system else "off"
                if system == "raw":
                    prefetch = args.prefetch or 100
                    s = run_raw(
                        url, args.messages, args.timeout, prefetch, rates[label], args.amqp_client
                    )
                elif system.startswith("celery"):
                    n = args.celery_messages or args.messages
                    r = celery_relay.run_celery(
                        kind, url, n, w, rates[label], args.timeout, args.cpu_ms
                    )
                    s = from_result(system, r)
                else:
                    s = run_once(
                        kind,
                        ec_url,
                        w,
                        args.messages,
                        args.timeout,
                        args.prefetch,
                        rates[label],
                        args.keep,
                        args.cpu_ms,
                        lineage,
                    )
                samples[(label, system)].append(s)
                print(
                    f"  round {round_no} {label} {system}: {s.rate:,.0f} msg/s (sink side "
                    f"{s.sink_rate:,.0f}), p50 {s.p50_ms:.1f} ms, p99 {s.p99_ms:.1f} ms, "
                    f"wall {s.wall:.2f} s{', ' if s.detail else ''}{s.detail}, "
                    f"{s.received}/{s.messages} received, {s.status}\n"
                    f"    {raw_relay.hops_text(s.hops, s.hops99)}; {raw_relay.cpu_text(s.cpu, s.received)}; "
                    f"{rss_text(s.rss)}",
                    flush=True,
                )
                if s.status == "interrupted":  # Ctrl-C (the watchdog reports "timeout")
                    return 130, samples

    print_table(samples, [label for label, _, _ in brokers], systems)
    if args.cpu_ms and len(args.workers) > 1:
        print_scaling(samples, [label for label, _, _ in brokers], systems)
    if any(rates.values()):
        print("paced: msgs/s is the pace (ec/raw near 1.00); compare the latencies.")
    bad = [
        s
        for runs in samples.values()
        for s in runs
        if s.status != "finished" or s.received != s.messages
    ]
    if bad:
        print(f"\nWARNING: {len(bad)} run(s) did not finish cleanly or lost messages")
        return 1, samples
    return 0, samples


def rss_text(rss: dict[str, float]) -> str:
    if not rss:
        return "peak RSS: unknown"
    return "peak RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())


def median_rate(samples: dict[tuple[str, str], list[Sample]], key: tuple[str, str]) -> float:
    runs = samples.get(key)
    return statistics.median(s.rate for s in runs) if runs else 0.0


def print_table(
    samples: dict[tuple[str, str], list[Sample]], labels: list[str], systems: list[str]
) -> None:
    header = (
        f"{'broker':<10}  {'system':<24}  {'msgs/s median (min-max)':>26}  {'p50 ms':>8}  "
        f"{'p99 ms':>8}  {'ec/raw':>6}  {'ec/celery':>9}  {'CPU s/1k':>8}  {'RSS MB':>6}  "
        f"{'other':>5}"
    )
    print()
    print(header)
    print("-" * len(header))
    for label in labels:
        raw_median = median_rate(samples, (label, "raw"))
        for system in systems:
            runs = samples.get((label, system))
            if not runs:
                continue
            rates = [s.rate for s in runs]
            median = statistics.median(rates)
            spread = f"{median:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
            ours = system.startswith("elasticcode")
            ratio = f"{median / raw_median:.2f}" if ours and raw_median > 0 else ""
            celery = median_rate(samples, (label, system.replace("elasticcode", "celery")))
            vs_celery = f"{median / celery:.1f}x" if ours and celery > 0 else ""
            mid = sorted(runs, key=lambda s: s.rate)[len(runs) // 2]
            cpu, other = cpu_per_message(mid)
            cpu_s = f"{float(cpu.split('+')[0].replace(',', '')) / 1000:.2f}" if cpu != "?" else "?"
            if "+" in cpu:
                cpu_s += f"+{float(cpu.split('+')[1].replace(',', '')) / 1000:.2f}"
            rss = f"{max(mid.rss.values()):.0f}" if mid.rss else "?"
            print(
                f"{label:<10}  {system:<24}  {spread:>26}  "
                f"{statistics.median(s.p50_ms for s in runs):>8.1f}  "
                f"{statistics.median(s.p99_ms for s in runs):>8.1f}  {ratio:>6}  "
                f"{vs_celery:>9}  {cpu_s:>8}  {rss:>6}  {other:>5}"
            )
    print(
        "\nmsgs/s: messages / (last arrival - first creation); p50/p99: arrival - creation, "
        "medians over rounds;\nec/raw, ec/celery: elasticcode median / raw (or Celery, same "
        "workers) median; CPU s/1k (of the\nmedian run): CPU seconds per 1,000 messages of the "
        "clients (every process of the system) +\nthe broker server, from the first creation to "
        "the last arrival; RSS MB: peak resident memory of the\nlargest process of the system "
        "(the broker's not counted); other: CPU microseconds per message of\nevery other "
        "process on the machine meanwhile (high: the run was disturbed)."
    )


def print_scaling(
    samples: dict[tuple[str, str], list[Sample]], labels: list[str], systems: list[str]
) -> None:
    """The CPU-bound variant: each system's rate with its most workers over its fewest."""
    print("\nscaling (CPU-bound variant):")
    for label in labels:
        for name in ("elasticcode", "celery"):
            counts = sorted(
                int(s.split()[1].rstrip("w"))
                for s in systems
                if s.startswith(name) and (label, s) in samples
            )
            if len(counts) < 2:
                continue
            low = median_rate(samples, (label, f"{name} {counts[0]}w"))
            high = median_rate(samples, (label, f"{name} {counts[-1]}w"))
            if low > 0:
                print(
                    f"  {label:<10} {name:<12} {counts[-1]}w/{counts[0]}w = {high / low:.2f} "
                    f"({high:,.0f} / {low:,.0f} msg/s)"
                )


if __name__ == "__main__":
    sys.exit(main())
