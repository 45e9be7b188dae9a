"""A flow's metrics, one interval at a time, from its workers' reports.

Workers report cumulative counts and histograms (about twice a second). ``FlowMetrics.update``
takes the current reports, subtracts each worker's previous ones and returns a **view**: per
processor and per connection, the interval's rates and percentiles, the totals, the depths and
back-pressure state; and the **events** the interval shows (an instance started, failed or
stopped; back pressure on or off; messages dead-lettered). A restarted worker (a report with
smaller counts) counts from zero. Views are JSON, in the versioned schema that
``docs/metrics.md`` describes; the websocket stream, ``elasticcode top`` and the history all
read them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..flow import Flow
from ..store import WorkerReport
from .histogram import Histogram

#: The version of the view and event schema (``docs/metrics.md``).
SCHEMA = 1
COUNTS = ("received", "emitted", "errors", "retried", "dead", "bytes_in", "bytes_out")
TIMINGS = ("process", "wait", "latency")
#: Statuses from the most telling down: a processor shows the first any instance has.
STATUSES = ("error", "failed", "back-pressure", "running", "starting", "done", "stopped")


@dataclass
class Delta:
    """What one processor (or all of a flow's processors) did in one interval."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    busy: float = 0.0
    #: CPU seconds used in the processor's code, and seconds waited for a CPU meanwhile
    cpu: float = 0.0
    cpu_wait: float = 0.0
    hists: dict[str, Histogram] = field(
        default_factory=lambda: {name: Histogram() for name in TIMINGS}
    )
    #: messages taken from each input queue
    taken: dict[str, int] = field(default_factory=dict)

    def add(self, other: Delta) -> None:
        for k, v in other.counts.items():
            self.counts[k] += v
        self.busy += other.busy
        self.cpu += other.cpu
        self.cpu_wait += other.cpu_wait
        for k, h in other.hists.items():
            self.hists[k] = self.hists[k] + h
        for q, n in other.taken.items():
            self.taken[q] = self.taken.get(q, 0) + n


def _counts(r: WorkerReport) -> dict[str, int]:
    return {k: int(getattr(r, k)) for k in COUNTS}


def _hists(r: WorkerReport) -> dict[str, Histogram]:
    return {k: Histogram.from_wire(r.metrics.get(k)) for k in TIMINGS}


def delta(now: WorkerReport, before: WorkerReport | None) -> Delta:
    """What a worker did between two of its reports (since its start when ``before`` is None
    or the worker started again since)."""
    d = Delta(
        _counts(now),
        now.busy,
        float(now.metrics.get("cpu", 0.0)),
        float(now.metrics.get("cpu_wait", 0.0)),
        _hists(now),
        dict(now.metrics.get("queues", {})),
    )
    if before is None or before.pid != now.pid:
        return d
    earlier = _counts(before)
    if any(v < earlier[k] for k, v in d.counts.items()):  # counting from zero again
        return d
    for k, v in earlier.items():
        d.counts[k] -= v
    d.busy -= before.busy
    d.cpu = max(0.0, d.cpu - float(before.metrics.get("cpu", 0.0)))
    d.cpu_wait = max(0.0, d.cpu_wait - float(before.metrics.get("cpu_wait", 0.0)))
    for k, h in _hists(before).items():
        d.hists[k] = d.hists[k] - h
    for q, n in before.metrics.get("queues", {}).items():
        d.taken[q] = d.taken.get(q, 0) - n
    return d


def percentiles(h: Histogram) -> dict[str, float | int | None]:
    """p50, p90 and p99 in milliseconds, and how many were observed."""

    def ms(q: float) -> float | None:
        v = h.quantile(q)
        return None if v is None else round(v * 1000, 3)

    return {"count": h.count, "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99)}


def status_of(statuses: set[str]) -> str:
    return next((s for s in STATUSES if s in statuses), "starting")


class FlowMetrics:
    """The metrics of one flow, kept from one ``update`` to the next."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self._last: dict[str, WorkerReport] = {}
        self._at: float | None = None
        self._shape: tuple[Flow, Any, dict[str, list[str]]] | None = None

    def _topology(self) -> tuple[list[tuple[Any, str, str, str, str, str]], dict[str, list[str]]]:
        """The flow's connections (each resolved, with its queue) and each processor's input
        queues; worked out once per revision (``flow`` is replaced by the next one)."""
        if self._shape is None or self._shape[0] is not self.flow:
            flow = self.flow
            conns = [(c, flow.queue_name(c), *flow.resolved(c)) for c in flow.connections]
            inputs: dict[str, list[str]] = {
                p.name: [flow.inbox(p.name, port) for port in p.input_ports]
                for p in flow.processors
            }
            for _, queue, _, _, dst, _ in conns:
                inputs[dst].append(queue)
            self._shape = (flow, conns, inputs)
        return self._shape[1], self._shape[2]

    def update(
        self,
        reports: list[WorkerReport],
        depths: dict[str, tuple[int, int]] | None = None,
        now: float | None = None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Delta]]:
        """The view of the interval since the last update, its events, and each processor's
        delta (what the history keeps). ``depths`` (queue → messages, bytes), when the caller
        can read the queues itself; otherwise the depths the upstream workers last read. The
        first update only takes the readings in: its view has totals, no rates."""
        now = time.time() if now is None else now
        first = self._at is None
        interval = 0.0 if self._at is None else max(now - self._at, 1e-9)
        flow = self.flow
        names = [p.name for p in flow.processors]
        deltas = {name: Delta() for name in names}
        totals = {name: Delta() for name in names}
        statuses: dict[str, set[str]] = {name: set() for name in names}
        hosts: dict[str, set[str]] = {name: set() for name in names}
        instances = dict.fromkeys(names, 0)
        holding = dict.fromkeys(names, 0)
        read: dict[str, list[float]] = {}
        events: list[dict[str, Any]] = []
        seen: dict[str, WorkerReport] = {}
        for r in reports:
            if r.processor not in deltas:
                continue  # a processor this revision of the flow no longer has
            seen[r.id] = r
            before = self._last.get(r.id)
            if not first:
                deltas[r.processor].add(delta(r, before))
                events += self._events(r, before)
            totals[r.processor].add(delta(r, None))
            statuses[r.processor].add(r.status)
            if r.status in ("running", "back-pressure", "starting"):
                instances[r.processor] += 1
                if r.host:
                    hosts[r.processor].add(r.host)
            holding[r.processor] += r.holding
            for q, reading in r.metrics.get("depths", {}).items():
                if q not in read or reading[2] > read[q][2]:
                    read[q] = reading
        self._last, self._at = seen, now

        def depth_of(queue: str) -> int | None:
            return depths[queue][0] if depths and queue in depths else _reading(read.get(queue))[0]

        conns, inputs = self._topology()
        processors = {}
        for name in names:
            d, t = deltas[name], totals[name]
            # what waits for it in all its input queues, its inbox too (None: not read)
            known = [n for q in inputs[name] if (n := depth_of(q)) is not None]
            processors[name] = {
                "status": status_of(statuses[name]),
                "instances": instances[name],
                "hosts": sorted(hosts[name]),
                "holding": holding[name],
                "waiting": sum(known) if known else None,
                "totals": dict(t.counts),
                "rates": _rates(d, interval),
                "busy": _share(d.busy, interval, instances[name]),
                # cores its code used, and cores' worth of waiting for a CPU meanwhile
                "cpu": round(d.cpu / interval, 3) if interval else 0.0,
                "cpu_wait": round(d.cpu_wait / interval, 3) if interval else 0.0,
                **{f"{k}_ms": percentiles(h) for k, h in d.hists.items()},
            }
        connections = {}
        for conn, queue, src, out, dst, inp in conns:
            n, size = depths[queue] if depths and queue in depths else _reading(read.get(queue))
            taken = deltas[dst].taken.get(queue, 0)
            connections[f"{src}.{out}->{dst}.{inp}"] = {
                "queue": queue,
                "from": f"{src}.{out}",
                "to": f"{dst}.{inp}",
                "depth": n,
                "bytes": size,
                "max_messages": conn.max_messages,
                "max_bytes": int(conn.max_bytes),
                "back_pressure": n is not None
                and (n >= conn.max_messages or (size or 0) >= conn.max_bytes),
                "rate": round(taken / interval, 2) if interval else 0.0,
            }
        view = {
            "type": "metrics",
            "v": SCHEMA,
            "flow": flow.name,
            "at": round(now, 3),
            "interval": round(interval, 3),
            "processors": processors,
            "connections": connections,
        }
        return view, events, deltas

    def _events(self, r: WorkerReport, before: WorkerReport | None) -> list[dict[str, Any]]:
        """What changed in one worker since its last report, as events."""
        out = []
        was = before.status if before is not None and before.pid == r.pid else None
        if r.status != was:
            kind = {
                "running": "started" if was in (None, "starting") else "back-pressure-off",
                "back-pressure": "back-pressure-on",
                "error": "failed",
                "failed": "failed",
                "stopped": "stopped",
                "done": "done",
            }.get(r.status)
            if kind is not None:
                out.append(self._event(kind, r, r.last_error if kind == "failed" else None))
        dead = r.dead - (before.dead if before is not None and before.pid == r.pid else 0)
        if dead > 0 and before is not None:
            out.append(self._event("dead-letter", r, r.last_error, count=dead))
        return out

    def _event(self, kind: str, r: WorkerReport, error: str | None, **more: Any) -> dict[str, Any]:
        event = {
            "type": "metrics-event",
            "v": SCHEMA,
            "flow": self.flow.name,
            "kind": kind,
            "processor": r.processor,
            "instance": r.instance,
            "host": r.host,
            "at": round(time.time(), 3),
            **more,
        }
        if error:
            event["error"] = error[:500]
        return event


def _rates(d: Delta, interval: float) -> dict[str, float]:
    if not interval:
        return dict.fromkeys(("in", "out", "errors", "dead", "bytes_in", "bytes_out"), 0.0)
    c = d.counts
    return {
        "in": round(c["received"] / interval, 2),
        "out": round(c["emitted"] / interval, 2),
        "errors": round(c["errors"] / interval, 2),
        "dead": round(c["dead"] / interval, 2),
        "bytes_in": round(c["bytes_in"] / interval, 1),
        "bytes_out": round(c["bytes_out"] / interval, 1),
    }


def _share(busy: float, interval: float, instances: int) -> float:
    """The share of the instances' time spent in the processor (reports are taken every
    half second, so one interval's reading may run a little over)."""
    return round(min(1.0, busy / interval / max(instances, 1)), 3) if interval else 0.0


def _reading(r: list[float] | None) -> tuple[int | None, int | None]:
    return (None, None) if r is None else (int(r[0]), int(r[1]))
