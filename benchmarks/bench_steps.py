"""Processors for ``benchmarks/pipeline.py``: a source, two pass-through stages and a sink.

``stage2`` has a CPU-bound variant (``cpu_ms``: about that many milliseconds of pure-Python
work per message), for the scaling benchmark.

They live in their own module so that the worker processes can import them (the benchmark
flow's ``path`` points at this folder). Each stage adds one field, the time it handled the
message; the sink records, per message, the time the source created it (``t0`` in the
payload), the times s1 and s2 handled it and the time it arrived, as four float64 in
``<out>/latency-<pid>.bin``.
"""

from __future__ import annotations

import os
import time
from array import array
from collections.abc import Iterator
from typing import Any, BinaryIO

#: Messages' times buffered by the sink before it appends them to its file.
FLUSH_EVERY = 4096


def source(messages: int = 20_000, rate: float = 0.0) -> Iterator[dict[str, Any]]:
    """Yield ``messages`` payloads of about 200 bytes, stamped with ``t0`` (epoch seconds).

    ``rate`` > 0 paces the source to that many messages per second (for latency at a given
    load); 0 produces as fast as the engine takes them.
    """
    filler = "x" * 96
    now = time.time
    start = now()
    for i in range(messages):
        if rate > 0:
            ahead = start + i / rate - now()
            if ahead > 0:
                time.sleep(ahead)
        yield {
            "seq": i,
            "t0": now(),
            "user": f"user-{i % 1000:04d}",
            "kind": "event",
            "tags": ["alpha", "beta", "gamma"],
            "score": i * 0.5,
            "note": filler,
        }


def stage1(payload: dict[str, Any]) -> dict[str, Any]:
    payload["s1"] = time.time()
    return payload


def stage2(payload: dict[str, Any], cpu_ms: float = 0.0) -> dict[str, Any]:
    """With ``cpu_ms`` > 0, the CPU-bound variant: about that much pure-Python work first."""
    if cpu_ms:
        burn(cpu_ms)
    payload["s2"] = time.time()
    return payload


#: Iterations of ``burn``'s loop per millisecond of one core of the benchmark machine (2 cores,
#: Python 3.11): a fixed amount of work, so that a loaded core takes longer, as real work does.
LOOPS_PER_MS = 26_000


def burn(ms: float) -> int:
    """About ``ms`` milliseconds of pure-Python arithmetic, holding the GIL throughout."""
    x = 0
    for i in range(int(ms * LOOPS_PER_MS)):
        x += i * i % 7
    return x


class Sink:
    """Last stage: records (t0, s1, s2, arrival) per message; emits nothing."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.buffer = array("d")
        self.file: BinaryIO | None = None

    def setup(self) -> None:
        os.makedirs(self.out, exist_ok=True)
        self.file = open(os.path.join(self.out, f"latency-{os.getpid()}.bin"), "ab")  # noqa: SIM115

    def process(self, payload: dict[str, Any]) -> None:
        payload["s3"] = 3
        buffer = self.buffer
        buffer.extend((payload["t0"], payload["s1"], payload["s2"], time.time()))
        if len(buffer) >= 4 * FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if self.file is not None and self.buffer:
            self.buffer.tofile(self.file)
            self.file.flush()
            self.buffer = array("d")

    def teardown(self) -> None:
        self._flush()
        if self.file is not None:
            self.file.close()
            self.file = None
