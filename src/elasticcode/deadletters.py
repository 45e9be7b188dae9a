"""A flow's dead letters from outside its workers: list them and put them back on their queues.

One host's CLI and a network's server share this: each opens the flow's broker its own way
(secrets from the environment, or from the server's vault) and hands it here. Replaying a
traced message notes a ``replayed`` event in its lineage, written to the state store of the
flow (the run's SQLite, or the network's PostgreSQL) by the caller.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .brokers import Broker, DeadLetter
from .claimcheck import is_claim, read_reference
from .errors import MessageError
from .flow import Flow
from .message import decode
from .metrics.lineage import Recorder

#: Dead letters per queue that a replay reads first, to note the traced ones in the lineage.
REPLAY_NOTED = 100_000
#: Characters of a payload shown in a listing.
PREVIEW = 200


async def listing(broker: Broker, flow: Flow, limit: int = 100) -> list[DeadLetter]:
    """The flow's oldest ``limit`` dead letters, over all its queues."""
    out: list[DeadLetter] = []
    for q in flow.queues():
        out += await broker.dead_letters(q, limit)
    return sorted(out, key=lambda d: d.failed_at)[:limit]


async def replay(
    broker: Broker, flow: Flow, ids: Sequence[Any] | None = None, host: str | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """Put dead letters (all of the flow's, or those named) back on their queues. Returns how
    many, and the lineage rows of the traced ones (for ``metrics.lineage.write``)."""
    letters: list[DeadLetter] = []
    if flow.settings.lineage != "off":
        wanted = None if ids is None else {str(i) for i in ids}
        for q in flow.queues():
            found = await broker.dead_letters(q, REPLAY_NOTED)
            letters += [d for d in found if wanted is None or str(d.id) in wanted]
    if ids is not None:
        n = await broker.replay(list(ids))
    else:
        n = sum([await broker.replay(None, q) for q in flow.queues()])
    return n, _lineage(flow, letters, host or os.uname().nodename)


def describe(flow: Flow, d: DeadLetter, traceback: bool = False) -> dict[str, Any]:
    """A dead letter as JSON: where it waits, what ended it, and the start of its payload."""
    owners = _owners(flow)
    entry: dict[str, Any] = {
        "id": d.id,
        "queue": d.queue,
        "processor": owners.get(d.queue),
        "deliveries": d.deliveries,
        "failed_at": d.failed_at,
        "error": d.error if traceback else d.error.splitlines()[0] if d.error else "",
        "size": len(d.body),
    }
    if is_claim(d.body):  # its body is in the flow's blob store
        key, _, size, mid = read_reference(d.body)
        entry.update(message_id=mid, payload=f"<{size:,} bytes in the blob store as {key}>")
        return entry
    try:
        msg = decode(d.body)
    except MessageError:
        entry.update(message_id=None, payload=f"<{len(d.body)} undecodable bytes>")
        return entry
    entry["message_id"] = msg.id
    entry["attributes"] = sorted(msg.attributes)
    entry["payload"] = json.dumps(msg.payload, default=repr)[:PREVIEW]
    return entry


def _owners(flow: Flow) -> dict[str, str]:
    return {q: p.name for p in flow.processors for q in flow.inputs_of(p.name)}


def _lineage(flow: Flow, letters: list[DeadLetter], host: str) -> list[dict[str, Any]]:
    owners = _owners(flow)
    rows: list[dict[str, Any]] = []
    for d in letters:
        try:
            msg = decode(d.body)
        except MessageError:
            continue
        if msg.traced:
            rec = Recorder(flow.name, owners.get(d.queue, "?"), -1, host, None)
            first = d.error.splitlines()[0] if d.error else ""
            rec.note("replayed", msg.id, attempt=d.deliveries, error=first)
            rows += rec.take()
    return rows
