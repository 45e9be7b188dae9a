"""The metrics history: what each processor and connection did, per second, minute and hour,
kept in the state store (PostgreSQL or SQLite) for as long as its resolution's retention says.

``History.record`` takes each interval's deltas (from ``view.FlowMetrics.update``) and writes
one row per processor and connection for every second that has passed; when a minute (an
hour) is over, its seconds (minutes) are added up into one row of the coarser resolution, and
rows older than their retention are deleted. ``History.points`` reads a time range back, at
the finest resolution that still covers it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..errors import ElasticCodeError
from ..store.db import upsert_many
from ..store.tables import metric_points
from ..units import parse_duration
from . import lineage
from .histogram import Histogram
from .view import COUNTS, TIMINGS, Delta, percentiles

#: resolution (seconds) → how long its rows are kept (seconds), unless configured otherwise;
#: 0: the lineage records
RETENTION = {1: 6 * 3600, 60: 14 * 86400, 3600: 400 * 86400, 0: 7 * 86400}
NAMES = {1: "1s", 60: "1m", 3600: "1h", 0: "lineage"}
PRUNE_EVERY = 60.0


def parse_retention(text: str) -> dict[int, int]:
    """``1s=6h,1m=14d,1h=400d,lineage=7d`` (any of them) → {resolution: seconds} (0: the
    lineage), the rest as default."""
    out = dict(RETENTION)
    by_name = {v: k for k, v in NAMES.items()}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, keep = part.partition("=")
        if name.strip() not in by_name or not keep:
            raise ElasticCodeError(
                f"bad history retention {part!r}: write WHAT=DURATION with WHAT one of 1s, "
                "1m, 1h, lineage, e.g. 1s=6h,1m=14d,1h=400d,lineage=7d"
            )
        out[by_name[name.strip()]] = int(parse_duration(keep.strip()))
    return out


@dataclass
class Point:
    """One processor's or connection's row of one interval (summed as rows roll up)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    busy: float = 0.0
    instances: int = 0
    depth: int = 0
    hists: dict[str, Histogram] = field(
        default_factory=lambda: {name: Histogram() for name in TIMINGS}
    )

    def add(self, other: Point) -> None:
        for k, v in other.counts.items():
            self.counts[k] += v
        self.busy += other.busy
        self.instances = max(self.instances, other.instances)
        self.depth = max(self.depth, other.depth)
        for k, h in other.hists.items():
            self.hists[k] = self.hists[k] + h

    def row(self, flow: str, resolution: int, at: int, kind: str, name: str) -> dict[str, Any]:
        hists = {k: h.to_wire() for k, h in self.hists.items() if h.count}
        return {
            "flow": flow,
            "resolution": resolution,
            "at": at,
            "kind": kind,
            "name": name,
            **self.counts,
            "busy": self.busy,
            "instances": self.instances,
            "depth": self.depth,
            "hists": json.dumps(hists, separators=(",", ":")) if hists else None,
        }

    @classmethod
    def of_row(cls, r: Any) -> Point:
        hists = json.loads(r.hists) if r.hists else {}
        return cls(
            {k: int(getattr(r, k)) for k in COUNTS},
            float(r.busy),
            int(r.instances),
            int(r.depth),
            {k: Histogram.from_wire(hists.get(k)) for k in TIMINGS},
        )


class History:
    """The metrics history in one state store."""

    def __init__(self, engine: sa.Engine, retention: dict[int, int] | None = None) -> None:
        self.engine = engine
        self.retention = {**RETENTION, **(retention or {})}
        #: (flow, second) → (kind, name) → point: seconds not yet over
        self._open: dict[tuple[str, int], dict[tuple[str, str], Point]] = {}
        self._pruned = 0.0
        #: (flow, coarse resolution) → the end of what was last rolled up
        self._rolled: dict[tuple[str, int], int] = {}

    def record(
        self,
        view: dict[str, Any],
        deltas: dict[str, Delta],
        now: float | None = None,
    ) -> None:
        """Take one interval of a flow (its view and deltas) in; write what is over."""
        now = time.time() if now is None else now
        flow = view["flow"]
        points = self._open.setdefault((flow, int(now)), {})
        for name, d in deltas.items():
            p = Point(dict(d.counts), d.busy, view["processors"][name]["instances"])
            p.hists = dict(d.hists)
            points.setdefault(("processor", name), Point()).add(p)
        for name, c in view["connections"].items():
            p = Point(instances=0, depth=c["depth"] or 0)
            p.counts["received"] = _taken(deltas, c)
            points.setdefault(("connection", name), Point()).add(p)
        self.flush(now)

    def flush(self, now: float | None = None, everything: bool = False) -> None:
        """Write every second that is over (all of them: ``everything``), roll up the minutes
        and hours that are over, and delete what is past its retention."""
        now = time.time() if now is None else now
        over = [k for k in self._open if everything or k[1] < int(now)]
        if not over:
            return
        points = {
            (flow, second, kind, name): p
            for flow, second in sorted(over, key=lambda k: k[1])
            for (kind, name), p in self._open.pop((flow, second)).items()
        }
        with self.engine.begin() as db:
            # a second already written (a run resumed within it, two servers that both
            # thought they led): what is there is added to, not lost
            t = metric_points.c
            for flow in {k[0] for k in points}:
                seconds = sorted({k[1] for k in points if k[0] == flow})
                for r in db.execute(
                    sa.select(metric_points).where(
                        t.flow == flow, t.resolution == 1, t.at >= seconds[0], t.at <= seconds[-1]
                    )
                ):
                    if (key := (flow, int(r.at), r.kind, r.name)) in points:
                        points[key].add(Point.of_row(r))
            rows = [
                p.row(flow, 1, second, kind, name)
                for (flow, second, kind, name), p in points.items()
            ]
            upsert_many(db, metric_points, rows, list(_KEY))
            for flow in {r["flow"] for r in rows}:
                last = max(r["at"] for r in rows if r["flow"] == flow)
                self._roll_up(db, flow, 1, 60, last, everything)
                self._roll_up(db, flow, 60, 3600, last, everything)
        if now - self._pruned >= PRUNE_EVERY:
            self._pruned = now
            self.prune(now)

    def _roll_up(
        self, db: sa.Connection, flow: str, fine: int, coarse: int, last: int, partial: bool
    ) -> None:
        """Add up the ``fine`` rows of each ``coarse`` interval that is over (or, ``partial``,
        the one under way too) and has none yet, into one row each."""
        end = (last // coarse + (1 if partial else 0)) * coarse
        if not partial and self._rolled.get((flow, coarse)) == end:
            return  # nothing is over since the last time
        self._rolled[(flow, coarse)] = end
        t = metric_points.c
        newest = db.execute(
            sa.select(sa.func.max(t.at)).where(t.flow == flow, t.resolution == coarse)
        ).scalar()
        start = 0 if newest is None else int(newest)
        rows = db.execute(
            sa.select(metric_points).where(
                t.flow == flow, t.resolution == fine, t.at >= start, t.at < end
            )
        ).all()
        if not rows:
            return
        sums: dict[tuple[int, str, str], Point] = {}
        for r in rows:
            at = int(r.at) // coarse * coarse
            sums.setdefault((at, r.kind, r.name), Point()).add(Point.of_row(r))
        values = [p.row(flow, coarse, at, kind, name) for (at, kind, name), p in sums.items()]
        upsert_many(db, metric_points, values, list(_KEY))

    def prune(self, now: float | None = None) -> int:
        """Delete rows past their resolution's retention, and lineage past its own; return
        how many."""
        now = time.time() if now is None else now
        gone = lineage.prune(self.engine, now - self.retention[0])
        with self.engine.begin() as db:
            for resolution, keep in self.retention.items():
                if not resolution:
                    continue
                gone += db.execute(
                    metric_points.delete().where(
                        metric_points.c.resolution == resolution,
                        metric_points.c.at < now - keep,
                    )
                ).rowcount
        return gone

    def points(
        self,
        flow: str,
        since: float,
        until: float | None = None,
        resolution: int | None = None,
        kind: str = "processor",
        names: Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of ``flow`` from ``since`` to ``until`` (epoch seconds), oldest first, each
        with its counts, rates per second, busy share and percentiles; at ``resolution`` or,
        if None, the finest one kept that long (at most about 2,000 intervals)."""
        until = time.time() if until is None else until
        if resolution is None:
            resolution = self.resolution_for(since, until)
        t = metric_points.c
        query = (
            sa.select(metric_points)
            .where(
                t.flow == flow,
                t.resolution == resolution,
                t.kind == kind,
                t.at >= math.floor(since / resolution) * resolution,
                t.at < until,
            )
            .order_by(t.at, t.name)
        )
        if names is not None:
            query = query.where(t.name.in_(list(names)))
        with self.engine.connect() as db:
            rows = db.execute(query).all()
        out = []
        for r in rows:
            p = Point.of_row(r)
            item: dict[str, Any] = {
                "at": int(r.at),
                "resolution": NAMES.get(resolution, f"{resolution}s"),
                "kind": r.kind,
                "name": r.name,
                **p.counts,
                "rate": round(p.counts["received"] / resolution, 3),
                "instances": p.instances,
                "depth": p.depth,
            }
            if kind == "processor":
                item["busy"] = round(min(1.0, p.busy / resolution / max(p.instances, 1)), 3)
                for k, h in p.hists.items():
                    item[f"{k}_ms"] = percentiles(h)
            out.append(item)
        return out

    def resolution_for(self, since: float, until: float) -> int:
        span = max(until - since, 1.0)
        now = time.time()
        for resolution in sorted(r for r in self.retention if r):
            if since >= now - self.retention[resolution] and span / resolution <= 2000:
                return resolution
        return max(r for r in self.retention if r)


_KEY = ("flow", "resolution", "at", "kind", "name")


def _taken(deltas: dict[str, Delta], conn: dict[str, Any]) -> int:
    target = conn["to"].split(".", 1)[0]
    d = deltas.get(target)
    return d.taken.get(conn["queue"], 0) if d is not None else 0
