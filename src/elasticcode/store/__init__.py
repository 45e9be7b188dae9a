"""The state store: runs, source progress, worker reports, processor state and code pins on
one host (SQLite) or for a whole network (PostgreSQL, beside the control plane's tables)."""

from .state import CodePin, KeyValue, StateStore, WorkerReport, as_report

__all__ = ["CodePin", "KeyValue", "StateStore", "WorkerReport", "as_report"]
