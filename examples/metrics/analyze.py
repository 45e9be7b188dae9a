"""Which processor dominates end-to-end latency, and how throughput varies over time: two
questions answered from an export (``elasticcode export-history FLOW --format parquet -o DIR``)
with DuckDB (``pip install duckdb``).

    python examples/metrics/analyze.py DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import duckdb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where export-history wrote its files")
    args = parser.parse_args()
    lineage = str(args.folder / "lineage.parquet")
    metrics = str(args.folder / "metrics.parquet")
    db = duckdb.connect()

    # 1. Where a message's time goes: per processor, its time queued before it and its time
    #    in it, over every traced message that processor finished with.
    print("share of end-to-end time, per processor (queued before it + in it):")
    rows = db.execute(
        f"""
        SELECT processor,
               count(*) AS messages,
               avg(wait) * 1000 AS wait_ms,
               avg(duration) * 1000 AS in_ms,
               sum(wait + duration) / sum(sum(wait + duration)) OVER () AS share
        FROM read_parquet('{lineage}')
        WHERE event IN ('processed', 'dropped')
        GROUP BY processor
        ORDER BY share DESC
        """
    ).fetchall()
    for name, n, wait_ms, in_ms, share in rows:
        print(f"  {name:<12} {share:6.1%}  waits {wait_ms:8.2f} ms, works {in_ms:8.2f} ms ({n:,})")
    if rows:
        print(f"-> {rows[0][0]} dominates the latency")

    # 2. Throughput by minute: messages taken in per second, per processor.
    print("\nmessages in per second, by minute:")
    for minute, name, rate in db.execute(
        f"""
        SELECT to_timestamp("at")::TIMESTAMP AS minute, name, received / 60.0 AS rate
        FROM read_parquet('{metrics}')
        WHERE resolution = 60 AND kind = 'processor' AND received > 0
        ORDER BY minute, name
        """
    ).fetchall():
        print(f"  {minute:%Y-%m-%d %H:%M}  {name:<12} {rate:10,.1f}/s")


if __name__ == "__main__":
    main()
