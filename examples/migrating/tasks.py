"""The tasks of a Celery application (or the task functions of a PyFi processor), as
ElasticCode processors: the same functions, with the wiring moved into flow.yaml."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_calls = itertools.count()


def tick(batch: int = 4) -> Iterator[dict[str, int]]:
    """Celery beat's job: called on a schedule (``source: {interval, count}``), it yields the
    numbers of one batch (each becomes a message)."""
    start = next(_calls) * batch
    yield from ({"n": n} for n in range(start, start + batch))


def square(payload: dict[str, Any]) -> dict[str, Any]:
    return {"n": payload["n"], "value": payload["n"] ** 2}


def cube(payload: dict[str, Any]) -> dict[str, Any]:
    return {"n": payload["n"], "value": payload["n"] ** 3}


def total(payload: dict[str, Any]) -> dict[str, Any]:
    """The chord's callback: the join hands it both results of one number."""
    return {
        "n": payload["square"]["n"],
        "sum": payload["square"]["value"] + payload["cube"]["value"],
    }


class Results:
    """Where the results go (instead of a result backend): one JSON line per number."""

    def __init__(self, path: str = "out/results.jsonl") -> None:
        self.path = Path(path)

    def setup(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def process(self, payload: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(payload) + "\n")
