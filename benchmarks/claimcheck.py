"""Large messages with and without the claim check: throughput and peak memory.

A 3-stage flow (``make -> a -> b -> sink``, one worker each, prefetch 1 for payloads of 1 MB
and up) moves N payloads of each size, on each broker, once with the claim check (the
default: above 256 KiB through the run's blob store, its ``blobs`` folder) and once with it off
(``blob_threshold`` above the payload: the payload travels in the queue). Each setting runs as
a fresh ``elasticcode run``; its rate is N / the run's wall time (workers' start included, the
same for both), its peak RSS that of its largest process (``wait4``'s ``ru_maxrss`` over the
run and every worker). Sizes and brokers alternate in one run, so drift touches both alike.

    .venv/bin/python benchmarks/claimcheck.py
    .venv/bin/python benchmarks/claimcheck.py --broker sqlite redis --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ELASTICCODE = str(Path(sys.executable).with_name("elasticcode"))
BROKERS = {"sqlite": None, "redis": "redis://127.0.0.1:6379/0", "nats": "nats://127.0.0.1:4222"}
#: (label, bytes, messages)
SIZES = [("1 KB", 1_000, 5_000), ("1 MB", 1_000_000, 300), ("50 MB", 50_000_000, 8)]

STEPS = """
import os


def make(n, size):
    data = os.urandom(size)
    for i in range(n):
        yield {"i": i, "data": data}


def step(payload):
    return payload


def sink(payload):
    pass
"""

FLOW = """
name: {name}
settings: {{max_message_bytes: 64MB, blob_threshold: {threshold}}}
processors:
  - {{name: make, code: big:make, source: true, config: {{n: {n}, size: {size}}}}}
  - {{name: a, code: big:step, instances: 1{prefetch}}}
  - {{name: b, code: big:step, instances: 1{prefetch}}}
  - {{name: sink, code: big:sink, instances: 1{prefetch}}}
connections:
  - {{from: make, to: a}}
  - {{from: a, to: b}}
  - {{from: b, to: sink}}
"""


def one(folder: Path, broker: str, size: int, n: int, claim: bool) -> tuple[float, float]:
    """(messages per second, peak RSS in MB) of one run."""
    name = f"cc-{uuid.uuid4().hex[:8]}"
    threshold = "256KB" if claim else "1GB"
    prefetch = ", prefetch: 1" if size >= 1_000_000 else ""
    (folder / "flow.yaml").write_text(
        FLOW.format(name=name, threshold=threshold, n=n, size=size, prefetch=prefetch)
    )
    cmd = [ELASTICCODE, "run", "flow.yaml", "--quiet", "--state-dir", str(folder / name)]
    url = BROKERS[broker]
    if url:
        cmd += ["--broker", url + (f"?prefix={name}" if broker == "redis" else "")]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - started
    err = proc.stderr.read().decode() if proc.stderr else ""
    if status != 0:
        raise SystemExit(f"{broker} {size} claim={claim}: the run failed: {err}")
    return n / took, usage.ru_maxrss / 1024  # kilobytes on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", nargs="+", default=["sqlite", "redis"], choices=BROKERS)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    results: dict[tuple[str, str, bool], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ec-claim-") as tmp:
        folder = Path(tmp)
        (folder / "big.py").write_text(STEPS)
        for r in range(args.rounds):
            for label, size, n in SIZES:
                for broker in args.broker:
                    for claim in (True, False) if r % 2 == 0 else (False, True):
                        got = one(folder, broker, size, n, claim)
                        results.setdefault((label, broker, claim), []).append(got)
                        print(
                            f"  {broker:<7} {label:>6} claim check {'on ' if claim else 'off'}: "
                            f"{got[0]:9.1f} msgs/s  peak RSS {got[1]:7.0f} MB",
                            flush=True,
                        )
    print(f"\n{'broker':<8} {'size':>6} {'msgs/s on':>10} {'off':>10} {'on/off':>7} "
          f"{'RSS MB on':>10} {'off':>7}")  # fmt: skip
    for label, _, _ in SIZES:
        for broker in args.broker:
            on = results[(label, broker, True)]
            off = results[(label, broker, False)]
            rate_on = statistics.median(x[0] for x in on)
            rate_off = statistics.median(x[0] for x in off)
            print(
                f"{broker:<8} {label:>6} {rate_on:>10.1f} {rate_off:>10.1f} "
                f"{rate_on / rate_off:>7.2f} {max(x[1] for x in on):>10.0f} "
                f"{max(x[1] for x in off):>7.0f}"
            )
    print("\nmsgs/s: messages / the run's wall time (worker start included); RSS: the largest")
    print("process of the run. 1 KB is below the threshold: the claim check only looks at it.")


if __name__ == "__main__":
    main()
