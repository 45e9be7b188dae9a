"""The metrics in Prometheus' text format (``prometheus-client``, from the ``server`` extra).

Per processor instance (labels ``flow``, ``processor``, ``instance``, ``host``): counters of
messages and bytes in and out, errors, retries, dead letters and time busy, and histograms of
processing time, queue wait and latency since the source message. Per processor (``flow``,
``processor``): instances running. Per connection (``flow``, ``connection``): depth in messages
and bytes and whether back pressure holds. The label values are the flow's names and instance
numbers and the hosts that run them: no label grows with the messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..store import WorkerReport
from .histogram import Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
COUNTERS = (
    ("received", "elasticcode_messages_received", "Messages a processor instance took in"),
    ("emitted", "elasticcode_messages_emitted", "Messages a processor instance emitted"),
    ("errors", "elasticcode_errors", "Messages whose processing failed (each attempt)"),
    ("retried", "elasticcode_retries", "Failed messages handed back for another attempt"),
    ("dead", "elasticcode_dead_letters", "Messages that went to the dead-letter store"),
    ("bytes_in", "elasticcode_received_bytes", "Encoded bytes of the messages taken in"),
    ("bytes_out", "elasticcode_emitted_bytes", "Encoded bytes of the messages emitted"),
    ("busy", "elasticcode_busy_seconds", "Time spent in the processor's code"),
)
HISTOGRAMS = (
    ("process", "elasticcode_processing_seconds", "Time in the processor, per message"),
    ("wait", "elasticcode_queue_wait_seconds", "Time from a message's creation to its fetch"),
    ("latency", "elasticcode_latency_seconds", "Age of a message's data since its source"),
)


class Snapshot:
    """A collector over the reports and views of the moment it is made."""

    def __init__(
        self, reports: dict[str, list[WorkerReport]], views: Iterable[dict[str, Any]]
    ) -> None:
        self.reports = reports
        self.views = list(views)

    def collect(self) -> Iterator[Metric]:
        labels = ["flow", "processor", "instance", "host"]
        counters = {
            key: CounterMetricFamily(name, text, labels=labels) for key, name, text in COUNTERS
        }
        hists = {
            key: HistogramMetricFamily(name, text, labels=labels) for key, name, text in HISTOGRAMS
        }
        for flow, reports in sorted(self.reports.items()):
            # a restarted instance's reports add up: together they only grow
            series: dict[tuple[str, str, str, str], list[WorkerReport]] = {}
            for r in reports:
                series.setdefault((flow, r.processor, str(r.instance), r.host), []).append(r)
            for key, group in sorted(series.items()):
                for attr, counter in counters.items():
                    counter.add_metric(list(key), sum(getattr(r, attr) for r in group))
                for attr, hist in hists.items():
                    h = Histogram()
                    for r in group:
                        h = h + Histogram.from_wire(r.metrics.get(attr))
                    buckets = [(_bound(b), float(n)) for b, n in h.cumulative()]
                    hist.add_metric(list(key), buckets, h.sum)
        yield from counters.values()
        yield from hists.values()
        instances = GaugeMetricFamily(
            "elasticcode_instances",
            "Instances of a processor running",
            labels=["flow", "processor"],
        )
        depth = GaugeMetricFamily(
            "elasticcode_queue_depth",
            "Messages waiting on a connection",
            labels=["flow", "connection"],
        )
        size = GaugeMetricFamily(
            "elasticcode_queue_bytes",
            "Bytes waiting on a connection",
            labels=["flow", "connection"],
        )
        pressure = GaugeMetricFamily(
            "elasticcode_back_pressure",
            "1 while a connection is at its threshold (its upstream waits)",
            labels=["flow", "connection"],
        )
        for view in self.views:
            flow = view["flow"]
            for name, p in view["processors"].items():
                instances.add_metric([flow, name], p["instances"])
            for name, c in view["connections"].items():
                if c["depth"] is not None:
                    depth.add_metric([flow, name], c["depth"])
                    size.add_metric([flow, name], c["bytes"] or 0)
                pressure.add_metric([flow, name], 1.0 if c["back_pressure"] else 0.0)
        yield from (instances, depth, size, pressure)


def exposition(reports: dict[str, list[WorkerReport]], views: Iterable[dict[str, Any]]) -> bytes:
    """The text a Prometheus scrape reads."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(reports, views))
    return generate_latest(registry)


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(b)
