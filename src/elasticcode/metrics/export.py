"""Export a flow's metrics history and lineage for a time range, for analysis elsewhere: CSV
(the standard library) or Parquet (``pyarrow``, the ``export`` extra). The columns are the
state store's (``docs/metrics.md`` describes them); histograms stay JSON text in ``hists``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..errors import ElasticCodeError
from ..store.tables import lineage, metric_points

#: Rows read from the database at a time.
CHUNK = 10_000
TABLES = {"metrics": metric_points, "lineage": lineage}


def export(
    engine: sa.Engine,
    flow: str,
    since: float,
    until: float,
    out_dir: Path,
    fmt: str = "csv",
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, tuple[Path, int]]:
    """Write ``metrics.FMT`` and ``lineage.FMT`` of ``flow`` between ``since`` and ``until``
    (epoch seconds) into ``out_dir``; return, per table, the file and how many rows."""
    if fmt not in ("csv", "parquet"):
        raise ElasticCodeError(f"cannot export as {fmt!r}: choose csv or parquet")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, table in TABLES.items():
        path = out_dir / f"{name}.{fmt}"
        count = [0]
        chunks = _counted(_chunks(engine, table, flow, since, until), count, name, progress)
        (_csv if fmt == "csv" else _parquet)(path, table, chunks)
        written[name] = (path, count[0])
    return written


def _chunks(
    engine: sa.Engine, table: sa.Table, flow: str, since: float, until: float
) -> Iterator[list[dict[str, Any]]]:
    query = (
        sa.select(table)
        .where(table.c.flow == flow, table.c.at >= since, table.c.at < until)
        .order_by(table.c.at)
    )
    with engine.connect() as db:
        result = db.execution_options(stream_results=True).execute(query).mappings()
        while rows := result.fetchmany(CHUNK):
            yield [dict(r) for r in rows]


def _counted(
    chunks: Iterator[list[dict[str, Any]]],
    count: list[int],
    name: str,
    progress: Callable[[str, int], None] | None,
) -> Iterator[list[dict[str, Any]]]:
    """``chunks``, their rows added up in ``count[0]`` and reported to ``progress``."""
    for rows in chunks:
        yield rows
        count[0] += len(rows)
        if progress is not None:
            progress(name, count[0])


def _csv(path: Path, table: sa.Table, chunks: Iterator[list[dict[str, Any]]]) -> None:
    with open(path, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=[c.name for c in table.columns])
        out.writeheader()
        for rows in chunks:
            out.writerows(rows)


def _parquet(path: Path, table: sa.Table, chunks: Iterator[list[dict[str, Any]]]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ElasticCodeError(
            "Parquet needs pyarrow: pip install 'elasticcode[export]' (or export as csv)"
        ) from None
    kinds = {
        sa.String: pa.string(),
        sa.Text: pa.string(),
        sa.Integer: pa.int64(),
        sa.BigInteger: pa.int64(),
        sa.Float: pa.float64(),
    }
    schema = pa.schema(
        [pa.field(c.name, kinds[type(c.type)], nullable=c.nullable) for c in table.columns]
    )
    with pq.ParquetWriter(path, schema) as writer:
        wrote = False
        for rows in chunks:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            wrote = True
        if not wrote:
            writer.write_table(schema.empty_table())
