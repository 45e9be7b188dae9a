"""A one-host flow's queues from outside a run: send messages in, count them, list and replay
dead letters, read results (``elasticcode send``, ``queues``, ``dead-letters``, ``result``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from .. import deadletters
from ..brokers import Broker, DeadLetter, flow_broker
from ..claimcheck import with_claim_check
from ..errors import FlowError
from ..flow import Flow
from ..message import Message, encode
from ..metrics.lineage import write as write_lineage
from ..storage import ResultStore, open_blob_store
from ..storage.results import decode_result
from ..store import StateStore
from .paths import blobs_url, state_paths

T = TypeVar("T")


def _with_broker(
    flow: Flow,
    state_dir: str | Path | None,
    broker: str | None,
    action: Callable[[Broker], Awaitable[T]],
) -> T:
    root, url, _ = state_paths(flow, state_dir, broker)
    # the state directory's blobs serve the runs of that directory; a broker given by hand
    # may have its workers elsewhere, who could not read them
    blobs = flow.settings.blobs or (None if broker else blobs_url(flow, root))

    async def go() -> T:
        b = with_claim_check(flow_broker(url, flow), flow, blobs)
        await b.connect()
        try:
            await b.declare(flow.queues())
            return await action(b)
        finally:
            await b.close()

    return asyncio.run(go())


def target_queue(flow: Flow, target: str) -> str:
    """The inbox queue of ``processor`` or ``processor.port``."""
    name, _, port = target.partition(".")
    proc = flow.get(name)
    ports = proc.input_ports
    if not ports:
        raise FlowError(
            f"processor {name!r} is a source and takes no input; send to a processor it feeds"
        )
    if not port:
        if len(ports) > 1:
            raise FlowError(
                f"processor {name!r} has several inputs ({', '.join(ports)}); name one as {name}.PORT"
            )
        port = ports[0]
    if port not in ports:
        raise FlowError(
            f"processor {name!r} has no input port {port!r}; its inputs are {', '.join(ports)}"
        )
    return flow.inbox(name, port)


def send(
    flow: Flow,
    target: str,
    payloads: Iterable[Any],
    *,
    attributes: dict[str, Any] | None = None,
    state_dir: str | Path | None = None,
    broker: str | None = None,
) -> list[str]:
    """Queue payloads for a processor's input port; return their message ids.

    The messages wait durably until a run of the flow consumes them.
    """
    queue = target_queue(flow, target)
    now = time.time()
    ids: list[str] = []
    items = []
    for payload in payloads:
        mid = uuid.uuid4().hex
        msg = Message(payload, mid, flow.name, "send", now, (), dict(attributes or {}))
        msg.traced = flow.settings.traces(mid)
        items.append((queue, encode(msg, flow.settings.max_message_bytes)))
        ids.append(msg.id)

    async def publish(b: Broker) -> None:
        for start in range(0, len(items), 1000):
            await b.publish(items[start : start + 1000])

    _with_broker(flow, state_dir, broker, publish)
    return ids


def queue_depths(
    flow: Flow, state_dir: str | Path | None = None, broker: str | None = None
) -> dict[str, tuple[int, int]]:
    return _with_broker(flow, state_dir, broker, lambda b: b.depth(flow.queues()))


def dead_letters(
    flow: Flow, state_dir: str | Path | None = None, broker: str | None = None, limit: int = 100
) -> list[DeadLetter]:
    return _with_broker(flow, state_dir, broker, lambda b: deadletters.listing(b, flow, limit))


def replay(
    flow: Flow,
    ids: list[Any] | None = None,
    state_dir: str | Path | None = None,
    broker: str | None = None,
) -> int:
    """Put dead letters (all of the flow's, or those named) back on their queues. A traced
    message's lineage records that it was replayed."""
    n, rows = _with_broker(flow, state_dir, broker, lambda b: deadletters.replay(b, flow, ids))
    if rows:
        _, _, state_url = state_paths(flow, state_dir)
        store = StateStore(state_url)
        try:
            write_lineage(store.engine, rows)
        finally:
            store.close()
    return n


def result(
    flow: Flow,
    key: str,
    wait: float | None = None,
    state_dir: str | Path | None = None,
) -> list[Any] | None:
    """What a processor that keeps its results (``results:``) emitted for the input whose
    ``key`` attribute (else message id) is ``key``: None if there is none; with ``wait``,
    waits that many seconds for it (``ResultTimeout`` after)."""
    root, _, _ = state_paths(flow, state_dir)

    async def read() -> list[Any] | None:
        async with open_blob_store(blobs_url(flow, root)) as blobs:
            store = ResultStore(blobs)
            found = await (
                store.get(flow.name, key) if wait is None else store.wait(flow.name, key, wait)
            )
        return None if found is None else decode_result(found)

    return asyncio.run(read())
