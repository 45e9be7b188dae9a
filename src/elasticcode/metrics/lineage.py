"""Lineage (provenance): what happened to each traced message, from the source that created
it to every sink, as rows in the state store's ``lineage`` table.

A flow's ``settings.lineage`` says which messages are traced: ``off`` (the default), ``full``,
or ``{sampled: 0.01}``, chosen by the id of the message that enters the flow so that a traced
message's descendants are traced too (the envelope carries the flag). Each worker notes the
events of its traced messages as they happen and writes them with its report, about twice a
second, off its event loop; the events are:

``created``
    a source made the message (``port``: where it went, ``size``).
``routed``
    a processor emitted it (``parent``: the message it came from, ``port``, ``size``).
``joined``
    a join emitted it: one row per part (``parent``) it joined.
``processed``
    a processor took it and finished (``wait``: time queued, ``duration``, ``outputs``: how
    many messages it gave rise to, more than one a fork).
``dropped``
    a processor finished with it and emitted nothing: the message ends there (a sink).
``retried``, ``failed``, ``dead-lettered``
    its processing failed (``error``, ``attempt``): handed back for another attempt, sent to
    the ``failure`` port, or stored as a dead letter.
``replayed``
    a dead letter of it was put back on its queue.

``trace`` reads a message's tree back: up from the message to the one that entered the
flow, then down to every descendant. Lineage is at least once: a redelivered message is
noted again, with its attempt.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..store.tables import lineage

#: Events a worker keeps while it cannot write them; past this many the oldest are dropped
#: (and counted in its log).
BACKLOG = 100_000


class Recorder:
    """One worker's lineage events, noted as they happen, written in batches."""

    def __init__(self, flow: str, processor: str, instance: int, host: str, code: str | None):
        self.common = {
            "flow": flow,
            "processor": processor,
            "instance": instance,
            "host": host,
            "code": code,
            "revision": None,
        }
        self.rows: list[dict[str, Any]] = []
        self.dropped = 0

    def note(self, event: str, message_id: str, **fields: Any) -> None:
        if len(self.rows) >= BACKLOG:
            del self.rows[: BACKLOG // 10]
            self.dropped += BACKLOG // 10
        attrs = fields.pop("attributes", None)
        self.rows.append(
            {
                **self.common,
                "message_id": message_id,
                "event": event,
                "at": time.time(),
                "parent": None,
                "port": None,
                "wait": None,
                "duration": None,
                "size": None,
                "attempt": None,
                "outputs": None,
                "error": None,
                **fields,
                "attributes": json.dumps(sorted(attrs)) if attrs else None,
            }
        )

    def take(self) -> list[dict[str, Any]]:
        rows, self.rows = self.rows, []
        return rows


def write(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    if rows:
        with engine.begin() as db:
            db.execute(lineage.insert(), rows)


def prune(engine: sa.Engine, older_than: float) -> int:
    with engine.begin() as db:
        return int(db.execute(lineage.delete().where(lineage.c.at < older_than)).rowcount)


@dataclass
class Node:
    """One message of a trace: its events in order, and the messages it gave rise to."""

    id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "events": self.events,
            "children": [c.as_dict() for c in self.children],
        }


def trace(engine: sa.Engine, flow: str, message_id: str, limit: int = 10_000) -> Node | None:
    """The tree of the message ``message_id`` belongs to, from the message that entered the
    flow down (at most ``limit`` messages); None if nothing of it was recorded."""
    t = lineage.c
    with engine.connect() as db:

        def rows_of(ids: list[str], column: Any) -> list[Any]:
            out: list[Any] = []
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                out += db.execute(
                    sa.select(lineage).where(t.flow == flow, column.in_(part)).order_by(t.at)
                ).all()
            return out

        # up: to the message without a recorded parent
        root, seen = message_id, {message_id}
        while True:
            parents = {r.parent for r in rows_of([root], t.message_id) if r.parent}
            if not parents or parents & seen:
                break
            root = sorted(parents)[0]
            seen.add(root)
        # down: every descendant, level by level
        events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        kids: dict[str, set[str]] = defaultdict(set)
        level, known = [root], {root}
        while level and len(known) <= limit:
            for r in rows_of(level, t.message_id):
                events[r.message_id].append(_event(r))
            below = []
            for r in rows_of(level, t.parent):
                kids[r.parent].add(r.message_id)
                if r.message_id not in known:
                    known.add(r.message_id)
                    below.append(r.message_id)
            level = below
    if not events:
        return None

    def build(mid: str, path: frozenset[str]) -> Node:
        node = Node(mid, events.get(mid, []))
        node.children = [build(k, path | {k}) for k in sorted(kids.get(mid, ())) if k not in path]
        return node

    return build(root, frozenset({root}))


def _event(r: Any) -> dict[str, Any]:
    out = {
        k: getattr(r, k)
        for k in ("event", "processor", "instance", "host", "at", "parent", "port", "wait",
                  "duration", "size", "attempt", "outputs", "error", "code", "revision")
        if getattr(r, k) is not None
    }  # fmt: skip
    if r.attributes:
        out["attributes"] = json.loads(r.attributes)
    return out
