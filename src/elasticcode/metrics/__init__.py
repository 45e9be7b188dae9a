"""Metrics: what each worker measures (``histogram``), the views built from the workers'
reports every interval (``view``), their Prometheus form (``prometheus``) and the history
kept in the state store (``history``). Workers aggregate and report about twice a second;
nothing here runs per message except ``Histogram.observe``."""

from .histogram import BUCKETS, Histogram

__all__ = ["BUCKETS", "Histogram"]
