"""How much room full lineage takes, per million messages, and how retention bounds it.

Runs the pipeline benchmark's 3-stage flow (source -> s1 -> s2 -> s3) on the embedded default
with ``settings.lineage: full``, then measures the ``lineage`` table and its indexes in the
run's SQLite state file (``dbstat``) and the metrics history beside it, and prints bytes per
message and per million messages. Retention: the rows older than the configured age are
deleted by the history's pruning (every minute while a run or server goes); the bound is
(messages per second) x (retention) x (bytes per message).

    python benchmarks/lineage_storage.py [--messages 20000]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pipeline  # noqa: E402  (the sibling benchmark's flow)

import elasticcode  # noqa: E402
from elasticcode.metrics.history import History  # noqa: E402
from elasticcode.store import StateStore  # noqa: E402


def table_bytes(db: Path, prefixes: tuple[str, ...]) -> int:
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
    return sum(size for name, size in rows if name.startswith(prefixes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ec-lineage-"))
    flow = pipeline.build_flow("lineage", args.messages, tmp / "latency", None, 0.0, 0.0, "full")
    started = time.perf_counter()
    result = elasticcode.run(flow, state_dir=tmp / "state")
    took = time.perf_counter() - started
    db = tmp / "state" / "state.db"
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT COUNT(*) FROM lineage").fetchone()[0]
        points = c.execute("SELECT COUNT(*) FROM metric_points").fetchone()[0]
    lineage = table_bytes(db, ("lineage",))
    history = table_bytes(db, ("metric_points",))
    n = args.messages
    print(f"{n:,} messages through 3 stages, lineage full, run {result.status} in {took:.1f} s")
    print(
        f"lineage: {rows:,} rows ({rows / n:.1f} per message), {lineage / 2**20:.1f} MiB with its"
    )
    print(f"  indexes: {lineage / n:,.0f} bytes per message, {lineage / n * 1e6 / 2**30:.2f} GiB "
          "per million messages")  # fmt: skip
    print(f"metrics history: {points:,} rows, {history / 2**10:,.0f} KiB (by time, not by message)")
    store = StateStore(f"sqlite:///{db}")
    gone = History(store.engine, {0: 0}).prune(time.time() + 1)
    store.close()
    print(f"retention: pruning with lineage=0s deleted {gone:,} rows")
    rate = n / took
    for days in (1, 7):
        bound = rate * 86400 * days * lineage / n
        print(f"  bound at {rate:,.0f} msgs/s sustained, lineage={days}d: {bound / 2**30:,.1f} GiB")


if __name__ == "__main__":
    main()
