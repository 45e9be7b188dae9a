"""A fixed-bucket histogram of durations, cheap enough to observe every message.

Every histogram has the same bucket bounds (seconds), so histograms of different workers and
intervals add up and subtract bucket by bucket; the difference of two readings of one worker is
what it saw in between. Quantiles are interpolated inside their bucket, as Prometheus does.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

#: Upper bounds of the buckets, in seconds (the last bucket, above the last bound, is open).
BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
)  # fmt: skip


class Histogram:
    """Counts per bucket (``len(BUCKETS) + 1`` of them) and the sum of what was observed."""

    __slots__ = ("counts", "sum")

    def __init__(self, counts: Sequence[int] | None = None, total: float = 0.0) -> None:
        self.counts = list(counts) if counts is not None else [0] * (len(BUCKETS) + 1)
        self.sum = total

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def to_wire(self) -> list[float]:
        """The counts followed by the sum: how a histogram travels in a report."""
        return [*self.counts, round(self.sum, 6)]

    @classmethod
    def from_wire(cls, data: Sequence[float] | None) -> Histogram:
        if not data or len(data) != len(BUCKETS) + 2:
            return cls()
        return cls([int(c) for c in data[:-1]], float(data[-1]))

    def __add__(self, other: Histogram) -> Histogram:
        return Histogram([a + b for a, b in zip(self.counts, other.counts, strict=True)],
                         self.sum + other.sum)  # fmt: skip

    def __sub__(self, other: Histogram) -> Histogram:
        """What was observed since ``other`` (an earlier reading of the same histogram)."""
        return Histogram([a - b for a, b in zip(self.counts, other.counts, strict=True)],
                         self.sum - other.sum)  # fmt: skip

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0..1) in seconds, or None if nothing was observed."""
        total = self.count
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                low = BUCKETS[i - 1] if i > 0 else 0.0
                high = BUCKETS[i] if i < len(BUCKETS) else BUCKETS[-1]
                return low + (high - low) * max(0.0, rank - seen) / n
            seen += n
        return BUCKETS[-1]

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, count at or below it) per bucket, the last bound infinite."""
        out, running = [], 0
        for bound, n in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def merged(histograms: Iterable[Histogram]) -> Histogram:
    total = Histogram()
    for h in histograms:
        total = total + h
    return total
