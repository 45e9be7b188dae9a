"""What a run did: per processor, the counts its workers reported; per queue, what is left."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..flow import Flow
from ..store import WorkerReport
from ..supervisor import Instance


@dataclass
class ProcessorTotals:
    name: str
    instances: int = 0
    received: int = 0
    emitted: int = 0
    errors: int = 0
    retried: int = 0
    dead: int = 0
    status: str = ""
    last_error: str | None = None


@dataclass
class RunResult:
    flow: str
    run_id: int
    status: str
    seconds: float
    resumed: bool
    processors: dict[str, ProcessorTotals] = field(default_factory=dict)
    queues: dict[str, int] = field(default_factory=dict)
    #: Dead letters stored for the flow (from this run and earlier ones, until replayed).
    dead_letters: int = 0
    events: list[str] = field(default_factory=list)
    state_dir: Path = Path()


def totals(
    flow: Flow, instances: Iterable[Instance], reports: list[WorkerReport], broken: dict[str, str]
) -> dict[str, ProcessorTotals]:
    """Per processor: its instances (those not being replaced) and its workers' counts added
    up, with the most telling status of any of them."""
    totals = {p.name: ProcessorTotals(p.name) for p in flow.processors}
    for name, problem in broken.items():
        totals[name].status, totals[name].last_error = "error", problem
    for inst in instances:
        totals[inst.processor].instances += not inst.retiring
    statuses: dict[str, set[str]] = {}
    for r in reports:
        t = totals.get(r.processor)
        if t is None:
            continue
        t.received += r.received
        t.emitted += r.emitted
        t.errors += r.errors
        t.retried += r.retried
        t.dead += r.dead
        t.last_error = r.last_error or t.last_error
        statuses.setdefault(r.processor, set()).add(r.status)
    for name, seen in statuses.items():
        for s in ("error", "failed", "back-pressure", "running", "done", "stopped"):
            if s in seen:
                totals[name].status = s
                break
    return totals


def summarize(result: RunResult) -> dict[str, Any]:
    """A JSON-friendly summary of a run."""
    return {
        "flow": result.flow,
        "run": result.run_id,
        "status": result.status,
        "seconds": round(result.seconds, 3),
        "processors": {n: vars(t) for n, t in result.processors.items()},
        "queued": sum(result.queues.values()),
        "dead_letters": result.dead_letters,
    }
